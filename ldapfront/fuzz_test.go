package ldapfront

import (
	"bufio"
	"bytes"
	"errors"
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

// FuzzNextFrame checks that the borrowing framer the backend readers use
// returns the same messages and the same kinds of errors as readFrame, over
// a stream of several messages and with a small buffer (so that large and
// straddling messages take both paths).
func FuzzNextFrame(f *testing.F) {
	f.Add(append(append(searchReq(1, "dc=example,dc=org"), entryMsg(1, "cn=x", "cn", "x")...), encodeResult(1, OpSearchResultDone, 0, "", "", "")...))
	f.Add(append(entryMsg(2, "cn=y", "description", string(bytes.Repeat([]byte("y"), 300))), 0x30, 0x81))
	f.Add([]byte{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff})
	f.Add([]byte{0x30, 0x80, 0x00, 0x00})
	f.Add([]byte{0x31, 0x00})
	f.Fuzz(func(t *testing.T, in []byte) {
		const max = 1 << 12
		a := bufio.NewReaderSize(bytes.NewReader(in), 64)
		b := bufio.NewReaderSize(bytes.NewReader(in), 64)
		for i := 0; ; i++ {
			want, werr := readFrame(a, max)
			got, gerr := nextFrame(b, max)
			if (werr == nil) != (gerr == nil) || IsMalformed(werr) != IsMalformed(gerr) || IsTooLarge(werr) != IsTooLarge(gerr) ||
				errors.Is(werr, io.EOF) != errors.Is(gerr, io.EOF) {
				t.Fatalf("message %d: readFrame error %v, nextFrame error %v", i, werr, gerr)
			}
			if werr != nil {
				return
			}
			if !bytes.Equal(want, got) {
				t.Fatalf("message %d: readFrame %x, nextFrame %x", i, want, got)
			}
		}
	})
}
