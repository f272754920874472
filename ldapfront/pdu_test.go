package ldapfront

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"
)

// msg builds an LDAPMessage with the given op and optional controls.
func msg(id int64, op *ber.Packet, ctls ...Control) []byte {
	m := ber.NewSequence("LDAPMessage")
	m.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, id, "id"))
	m.AppendChild(op)
	if len(ctls) > 0 {
		cs := ber.Encode(ber.ClassContext, ber.TypeConstructed, 0, nil, "Controls")
		for _, c := range ctls {
			cs.AppendChild(encodeControl(c))
		}
		m.AppendChild(cs)
	}
	return m.Bytes()
}

func str(v string) *ber.Packet {
	return ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, v, "")
}

func simpleBind(id int64, dn, pw string) []byte {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ber.Tag(OpBindRequest), nil, "bind")
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, 3, "version"))
	op.AppendChild(str(dn))
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, pw, "simple"))
	return msg(id, op)
}

func saslBind(id int64, mech string) []byte {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ber.Tag(OpBindRequest), nil, "bind")
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, 3, "version"))
	op.AppendChild(str(""))
	sc := ber.Encode(ber.ClassContext, ber.TypeConstructed, 3, nil, "sasl")
	sc.AppendChild(str(mech))
	op.AppendChild(sc)
	return msg(id, op)
}

func extended(id int64, oid string, value []byte, ctls ...Control) []byte {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ber.Tag(OpExtendedRequest), nil, "ext")
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, oid, "name"))
	if value != nil {
		op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 1, string(value), "value"))
	}
	return msg(id, op, ctls...)
}

func cancelValue(target int64) []byte {
	s := ber.NewSequence("cancel")
	s.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, target, "cancelID"))
	return s.Bytes()
}

func abandon(id, target int64) []byte {
	return msg(id, ber.NewInteger(ber.ClassApplication, ber.TypePrimitive, ber.Tag(OpAbandonRequest), target, "abandon"))
}

func deleteReq(id int64, dn string, ctls ...Control) []byte {
	return msg(id, ber.NewString(ber.ClassApplication, ber.TypePrimitive, ber.Tag(OpDelRequest), dn, "del"), ctls...)
}

func unbind(id int64) []byte {
	return msg(id, ber.Encode(ber.ClassApplication, ber.TypePrimitive, ber.Tag(OpUnbindRequest), nil, "unbind"))
}

func searchReq(id int64, base string, ctls ...Control) []byte {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ber.Tag(OpSearchRequest), nil, "search")
	op.AppendChild(str(base))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, 0, "scope"))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, 0, "deref"))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, 0, "size"))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, 0, "time"))
	op.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, false, "typesOnly"))
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 7, "objectClass", "present"))
	op.AppendChild(ber.NewSequence("attrs"))
	return msg(id, op, ctls...)
}

func modifyReq(id int64, dn string, ctls ...Control) []byte {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ber.Tag(OpModifyRequest), nil, "modify")
	op.AppendChild(str(dn))
	op.AppendChild(ber.NewSequence("changes"))
	return msg(id, op, ctls...)
}

func read1(t *testing.T, b []byte, max int64) (*PDU, error) {
	t.Helper()
	return ReadPDU(bufio.NewReader(bytes.NewReader(b)), max)
}

func TestReadPDUDecodes(t *testing.T) {
	crit := Control{OID: OIDDontUseCopy, Critical: true}
	val := Control{OID: "1.2.840.113556.1.4.319", Value: []byte{0x30, 0x05, 0x02, 0x01, 0x02, 0x04, 0x00}, HasValue: true}
	tests := []struct {
		name string
		raw  []byte
		want PDU
	}{
		{"simple bind", simpleBind(1, "uid=alice,dc=example,dc=org", "s3cret"),
			PDU{MessageID: 1, Op: OpBindRequest, Bind: &BindRequest{Version: 3, DN: "uid=alice,dc=example,dc=org", Simple: true, Password: []byte("s3cret")}}},
		{"anonymous bind", simpleBind(2, "", ""),
			PDU{MessageID: 2, Op: OpBindRequest, Bind: &BindRequest{Version: 3, Simple: true}}},
		{"sasl bind", saslBind(3, "EXTERNAL"),
			PDU{MessageID: 3, Op: OpBindRequest, Bind: &BindRequest{Version: 3, Mechanism: "EXTERNAL"}}},
		{"abandon", abandon(4, 77), PDU{MessageID: 4, Op: OpAbandonRequest, TargetID: 77, HasTarget: true}},
		{"cancel", extended(5, OIDCancel, cancelValue(12)),
			PDU{MessageID: 5, Op: OpExtendedRequest, ExtOID: OIDCancel, ExtValue: cancelValue(12), TargetID: 12, HasTarget: true}},
		{"whoami", extended(6, OIDWhoAmI, nil), PDU{MessageID: 6, Op: OpExtendedRequest, ExtOID: OIDWhoAmI}},
		{"delete with controls", deleteReq(2147483647, "cn=x", crit, val),
			PDU{MessageID: 2147483647, Op: OpDelRequest, Controls: []Control{crit, val}}},
		{"unbind", unbind(9), PDU{MessageID: 9, Op: OpUnbindRequest}},
		{"search", searchReq(10, "dc=example,dc=org"), PDU{MessageID: 10, Op: OpSearchRequest}},
		{"search with controls (light path)", searchReq(11, "dc=x", crit, val), PDU{MessageID: 11, Op: OpSearchRequest, Controls: []Control{crit, val}}},
		{"modify with controls (light path)", modifyReq(12, "cn=x", val), PDU{MessageID: 12, Op: OpModifyRequest, Controls: []Control{val}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := read1(t, tt.raw, 1<<20)
			if err != nil {
				t.Fatalf("ReadPDU: %v", err)
			}
			if !bytes.Equal(p.Raw, tt.raw) {
				t.Errorf("Raw differs from input")
			}
			p.Raw, p.packet = nil, nil
			if !reflect.DeepEqual(*p, tt.want) {
				t.Errorf("got %+v\nwant %+v", *p, tt.want)
			}
		})
	}
}

func TestReadPDUSequence(t *testing.T) {
	var in bytes.Buffer
	in.Write(simpleBind(1, "cn=a", "pw"))
	in.Write(searchReq(2, "dc=x"))
	in.Write(unbind(3))
	r := bufio.NewReader(&in)
	for want := int64(1); want <= 3; want++ {
		p, err := ReadPDU(r, 1<<20)
		if err != nil || p.MessageID != want {
			t.Fatalf("message %d: got %v, %v", want, p, err)
		}
	}
	if _, err := ReadPDU(r, 1<<20); !errors.Is(err, io.EOF) {
		t.Fatalf("after last message: got %v, want io.EOF", err)
	}
}

// countingReader counts the bytes read from it, to prove the cap applies before
// the body is read.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestReadPDUCapsBeforeReading(t *testing.T) {
	// A header declaring 2 GiB - 1 followed by nothing: must fail at once, not
	// allocate or wait for the body.
	hdr := []byte{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff}
	_, err := read1(t, hdr, 4<<20)
	var tl *TooLargeError
	if !errors.As(err, &tl) || tl.Max != 4<<20 || !IsMalformed(err) || !IsTooLarge(err) {
		t.Fatalf("got %v, want TooLargeError with max 4MiB", err)
	}
	// Exactly at the cap is accepted, one byte more is refused.
	m := searchReq(1, "dc=example,dc=org")
	if _, err := read1(t, m, int64(len(m))); err != nil {
		t.Fatalf("message of exactly max bytes: %v", err)
	}
	cr := &countingReader{r: bytes.NewReader(m)}
	_, err = ReadPDU(bufio.NewReaderSize(cr, 16), int64(len(m)-1))
	if !IsTooLarge(err) {
		t.Fatalf("message one byte over max: got %v", err)
	}
	if cr.n > 16 {
		t.Errorf("read %d bytes of a refused message, want at most one buffer", cr.n)
	}
}

func TestReadPDUMalformed(t *testing.T) {
	good := searchReq(1, "dc=x")
	tests := []struct {
		name string
		raw  []byte
	}{
		{"not a sequence", []byte{0x31, 0x00}},
		{"indefinite length", []byte{0x30, 0x80, 0x02, 0x01, 0x01, 0x42, 0x00, 0x00, 0x00}},
		{"length 0xff", []byte{0x30, 0xff}},
		{"length of length 9", []byte{0x30, 0x89, 0, 0, 0, 0, 0, 0, 0, 0, 1}},
		{"truncated length", []byte{0x30, 0x82, 0x01}},
		{"truncated body", good[:len(good)-1]},
		{"empty sequence", []byte{0x30, 0x00}},
		{"id not integer", []byte{0x30, 0x05, 0x04, 0x01, 0x01, 0x42, 0x00}},
		{"negative id", []byte{0x30, 0x05, 0x02, 0x01, 0xff, 0x42, 0x00}},
		{"id too large", []byte{0x30, 0x09, 0x02, 0x05, 0x01, 0x00, 0x00, 0x00, 0x00, 0x42, 0x00}},
		{"op not application", []byte{0x30, 0x05, 0x02, 0x01, 0x01, 0x04, 0x00}},
		{"unbind with content", []byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x42, 0x01, 0x00}},
		{"inner length beyond outer", []byte{0x30, 0x05, 0x02, 0x01, 0x01, 0x42, 0x05}},
		{"controls not [0]", append(append([]byte{0x30, 0x07}, unbindBody()...), 0xa1, 0x00)},
		{"control not a sequence", append(append([]byte{0x30, 0x09}, unbindBody()...), 0xa0, 0x02, 0x04, 0x00)},
		{"cancel without value", extended(1, OIDCancel, nil)},
		{"cancel bad value", extended(1, OIDCancel, []byte{0x04, 0x00})},
		{"bind bad choice", bindWithChoice(0x81)},
		{"search then junk", append([]byte{0x30, byte(len(searchReq(1, "x")) - 2 + 2)}, append(searchReq(1, "x")[2:], 0x04, 0x00)...)},
		{"search with bad controls", append([]byte{0x30, byte(len(searchReq(1, "x")) - 2 + 4)}, append(searchReq(1, "x")[2:], 0xa0, 0x02, 0x04, 0x00)...)},
		{"search id too large", []byte{0x30, 0x09, 0x02, 0x05, 0x01, 0x00, 0x00, 0x00, 0x00, 0x63, 0x00}},
		{"search op beyond message", []byte{0x30, 0x05, 0x02, 0x01, 0x01, 0x63, 0x05}},
		{"abandon constructed", []byte{0x30, 0x07, 0x02, 0x01, 0x01, 0x70, 0x02, 0x02, 0x00}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := read1(t, tt.raw, 1<<20)
			if !IsMalformed(err) {
				t.Fatalf("got %v, want a malformed-message error", err)
			}
		})
	}
}

func unbindBody() []byte { return []byte{0x02, 0x01, 0x01, 0x42, 0x00} }

func bindWithChoice(tag byte) []byte {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ber.Tag(OpBindRequest), nil, "bind")
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, 3, "version"))
	op.AppendChild(str(""))
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, ber.Tag(tag&0x1f), "x", ""))
	return msg(1, op)
}

func TestPasswordNotInString(t *testing.T) {
	p, err := read1(t, simpleBind(1, "cn=admin", "topsecret"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if s := p.Bind.String(); bytes.Contains([]byte(s), []byte("topsecret")) {
		t.Fatalf("BindRequest.String leaks the password: %s", s)
	}
}

func TestPeekResponse(t *testing.T) {
	for _, tc := range []struct {
		raw []byte
		id  int64
		op  Op
	}{
		{encodeResult(7, OpSearchResultDone, 0, "", "", ""), 7, OpSearchResultDone},
		{EncodeNoticeOfDisconnection(ResultProtocolError, "bad"), 0, OpExtendedResponse},
		// liblber encodes sequence lengths in long form.
		{[]byte{0x30, 0x84, 0, 0, 0, 0x0c, 0x02, 0x01, 0x05, 0x69, 0x84, 0, 0, 0, 0x03, 0x0a, 0x01, 0x00}, 5, OpAddResponse},
	} {
		h, err := peekResponse(tc.raw)
		if err != nil || h.MessageID != tc.id || h.Op != tc.op {
			t.Errorf("peekResponse(% x) = %+v, %v; want id %d op %v", tc.raw, h, err, tc.id, tc.op)
		}
	}
	if _, err := peekResponse([]byte{0x30, 0x03, 0x02, 0x05, 0x01}); !IsMalformed(err) {
		t.Errorf("truncated id: got %v", err)
	}
}

func TestEncodeResultDecodes(t *testing.T) {
	req, err := read1(t, modifyReq(42, "cn=x"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	raw := EncodeResult(req, ResultUnavailable, "hub ldap://hub:389 unreachable")
	p, err := read1(t, raw, 1<<20)
	if err != nil {
		t.Fatalf("decoding our own result: %v", err)
	}
	if p.MessageID != 42 || p.Op != OpModifyResponse {
		t.Fatalf("got id %d op %v", p.MessageID, p.Op)
	}
	code, diag, err := resultCode(raw)
	if err != nil || code != ResultUnavailable || diag != "hub ldap://hub:389 unreachable" {
		t.Fatalf("resultCode = %d %q %v", code, diag, err)
	}
	ext, _ := read1(t, extended(5, OIDPasswordModify, nil), 1<<20)
	p, err = read1(t, EncodeResult(ext, ResultBusy, "busy"), 1<<20)
	if err != nil || p.Op != OpExtendedResponse {
		t.Fatalf("extended result: %v %v", p, err)
	}
	ab, _ := read1(t, abandon(6, 1), 1<<20)
	if EncodeResult(ab, 0, "") != nil {
		t.Fatal("Abandon has no response")
	}
}

func TestNoticeOfDisconnection(t *testing.T) {
	p, err := read1(t, EncodeNoticeOfDisconnection(ResultProtocolError, "malformed"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if p.MessageID != 0 || p.Op != OpExtendedResponse || p.ExtOID != OIDNoticeOfDisconnection {
		t.Fatalf("got %+v", p)
	}
	if code, _, _ := resultCode(p.Raw); code != ResultProtocolError {
		t.Fatalf("code %d", code)
	}
}

func TestWithControlAndPostReadSplit(t *testing.T) {
	dontUse := Control{OID: OIDDontUseCopy, Critical: true}
	req, err := read1(t, modifyReq(3, "cn=x", dontUse), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	withPR, err := req.WithControls(postReadControl())
	if err != nil {
		t.Fatal(err)
	}
	out, err := read1(t, withPR, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Controls) != 2 || out.Controls[0].OID != OIDDontUseCopy || out.Controls[1].OID != OIDPostRead {
		t.Fatalf("controls after WithControl: %+v", out.Controls)
	}

	// A ModifyResponse carrying a Post-Read entry with entryCSN, plus another control.
	entry := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ber.Tag(OpSearchResultEntry), nil, "entry")
	entry.AppendChild(str("cn=x"))
	attrs := ber.NewSequence("attrs")
	a := ber.NewSequence("attr")
	a.AppendChild(str("entryCSN"))
	vals := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSet, nil, "vals")
	vals.AppendChild(str("20261123105512.123456Z#000000#001#000"))
	a.AppendChild(vals)
	attrs.AppendChild(a)
	entry.AppendChild(attrs)
	other := Control{OID: "1.2.3.4", Value: []byte("v"), HasValue: true}
	res := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ber.Tag(OpModifyResponse), nil, "res")
	res.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, 0, "code"))
	res.AppendChild(str(""))
	res.AppendChild(str(""))
	raw := msg(3, res, other, Control{OID: OIDPostRead, Value: entry.Bytes(), HasValue: true})

	stripped, csns, err := splitPostRead(raw, false)
	if err != nil || !reflect.DeepEqual(csns, []string{"20261123105512.123456Z#000000#001#000"}) {
		t.Fatalf("splitPostRead: %v %v", csns, err)
	}
	sp, err := read1(t, stripped, 1<<20)
	if err != nil || len(sp.Controls) != 1 || sp.Controls[0].OID != "1.2.3.4" {
		t.Fatalf("stripped response controls: %+v %v", sp, err)
	}
	kept, _, _ := splitPostRead(raw, true)
	if !bytes.Equal(kept, raw) {
		t.Fatal("keep=true must leave the response unchanged")
	}
	plain := encodeResult(4, OpAddResponse, 0, "", "", "")
	if out, csns, err := splitPostRead(plain, false); err != nil || csns != nil || !bytes.Equal(out, plain) {
		t.Fatalf("response without controls changed: %v %v", csns, err)
	}
}

func TestOpIsFinal(t *testing.T) {
	for op, want := range map[Op]bool{OpSearchResultEntry: false, OpSearchResultReference: false,
		OpIntermediateResponse: false, OpSearchResultDone: true, OpExtendedResponse: true, OpAddResponse: true} {
		if op.isFinal() != want {
			t.Errorf("%v.isFinal() = %v", op, !want)
		}
	}
}

func TestProxiedAuthzControl(t *testing.T) {
	req, err := read1(t, deleteReq(1, "cn=x"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	withPA, err := req.WithControls(proxiedAuthzControl("uid=bob,dc=example,dc=org"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := read1(t, withPA, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	c, ok := out.Control(OIDProxiedAuthz)
	if !ok || !c.Critical || string(c.Value) != "dn:uid=bob,dc=example,dc=org" {
		t.Fatalf("proxied authz control: %+v %v", c, ok)
	}
}
