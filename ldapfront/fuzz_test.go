package ldapfront

import (
	"bufio"
	"bytes"
	"io"
	"reflect"
	"testing"
)

// FuzzReadPDU checks that no input panics the framer or the decoder, that an
// accepted message's Raw is exactly the bytes consumed, and that re-encoding an
// accepted message (as the relay does when it adds a control) decodes to the same
// routing view, whether the light or the full decoder read it.
func FuzzReadPDU(f *testing.F) {
	for _, s := range [][]byte{
		simpleBind(1, "uid=alice,ou=people,dc=example,dc=org", "pw"),
		saslBind(2, "EXTERNAL"),
		searchReq(3, "dc=example,dc=org", Control{OID: OIDSyncRequest, Critical: true, Value: []byte{0x30, 0x03, 0x0a, 0x01, 0x03}, HasValue: true}),
		modifyReq(4, "cn=x", Control{OID: OIDDontUseCopy, Critical: true}),
		deleteReq(5, "cn=y"),
		abandon(6, 3),
		extended(7, OIDCancel, cancelValue(3)),
		extended(8, OIDPasswordModify, []byte{0x30, 0x00}),
		unbind(9),
		EncodeNoticeOfDisconnection(ResultProtocolError, "x"),
		{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff},
		{0x30, 0x80, 0x00, 0x00},
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bufio.NewReader(bytes.NewReader(in))
		p, err := ReadPDU(r, 1<<16)
		if err != nil {
			return
		}
		if !bytes.HasPrefix(in, p.Raw) {
			t.Fatalf("Raw is not a prefix of the input")
		}
		rest, _ := io.ReadAll(r)
		if len(in)-len(rest) != len(p.Raw) {
			t.Fatalf("consumed %d bytes, Raw has %d", len(in)-len(rest), len(p.Raw))
		}
		if _, err := peekResponse(p.Raw); err != nil {
			t.Fatalf("peekResponse rejects an accepted message: %v", err)
		}
		pkt, err := p.decoded()
		if err != nil {
			return // a light-decoded op whose body is not BER: relayed unchanged, the server answers
		}
		again, err := DecodePDU(rebuild(pkt, existingControls(pkt)))
		if err != nil {
			t.Fatalf("re-encoded message does not decode: %v", err)
		}
		again.Raw, again.packet, p.Raw, p.packet = nil, nil, nil, nil
		if !reflect.DeepEqual(again, p) {
			t.Fatalf("round trip changed the decode:\n%+v\n%+v", again, p)
		}
	})
}
