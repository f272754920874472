package ldapfront

import (
	"fmt"

	ber "github.com/go-asn1-ber/asn1-ber"
)

// Result codes the front produces itself (RFC 4511 appendix A).
const (
	ResultSuccess            = 0
	ResultProtocolError      = 2
	ResultUnwillingToPerform = 53
	ResultBusy               = 51
	ResultUnavailable        = 52
	ResultOther              = 80
	ResultInvalidCredentials = 49
	ResultNoSuchOperation    = 119 // RFC 3909, Cancel of an unknown operation
)

// EncodeResult encodes the LDAPResult that ends the operation started by req,
// with the response op matching req.Op (an ExtendedResponse for extended
// operations). It returns nil for ops without a response (Abandon, Unbind).
func EncodeResult(req *PDU, code int, diagnostic string) []byte {
	respOp, ok := req.Op.responseOp()
	if !ok {
		return nil
	}
	return encodeResult(req.MessageID, respOp, code, "", diagnostic, "")
}

// EncodeNoticeOfDisconnection encodes the unsolicited Notice of Disconnection
// (RFC 4511 section 4.4.1): messageID 0, an ExtendedResponse named
// 1.3.6.1.4.1.1466.20036 carrying code (protocolError, unavailable, ...).
func EncodeNoticeOfDisconnection(code int, diagnostic string) []byte {
	return encodeResult(0, OpExtendedResponse, code, "", diagnostic, OIDNoticeOfDisconnection)
}

func encodeResult(id int64, op Op, code int, matchedDN, diagnostic, respName string) []byte {
	msg := ber.NewSequence("LDAPMessage")
	msg.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, id, "messageID"))
	res := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ber.Tag(op), nil, op.String())
	res.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(code), "resultCode"))
	res.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, matchedDN, "matchedDN"))
	res.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, diagnostic, "diagnosticMessage"))
	if respName != "" {
		res.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 10, respName, "responseName"))
	}
	msg.AppendChild(res)
	return msg.Bytes()
}

func encodeControl(c Control) *ber.Packet {
	p := ber.NewSequence("Control")
	p.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, c.OID, "controlType"))
	if c.Critical {
		p.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, true, "criticality"))
	}
	if c.HasValue {
		p.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, string(c.Value), "controlValue"))
	}
	return p
}

// rebuild re-encodes a decoded message with its controls replaced by ctls (none:
// the controls element is dropped). The messageID and protocolOp keep their
// decoded bytes.
func rebuild(pkt *ber.Packet, ctls []*ber.Packet) []byte {
	msg := ber.NewSequence("LDAPMessage")
	msg.AppendChild(pkt.Children[0])
	msg.AppendChild(pkt.Children[1])
	if len(ctls) > 0 {
		cs := ber.Encode(ber.ClassContext, ber.TypeConstructed, 0, nil, "Controls")
		for _, c := range ctls {
			cs.AppendChild(c)
		}
		msg.AppendChild(cs)
	}
	return msg.Bytes()
}

func existingControls(pkt *ber.Packet) []*ber.Packet {
	if len(pkt.Children) < 3 {
		return nil
	}
	return append([]*ber.Packet(nil), pkt.Children[2].Children...)
}

// WithControls returns the request's bytes with cs appended to its controls.
// The request must have been read by ReadPDU.
func (p *PDU) WithControls(cs ...Control) ([]byte, error) {
	pkt, err := p.decoded()
	if err != nil {
		return nil, err
	}
	all := existingControls(pkt)
	for _, c := range cs {
		all = append(all, encodeControl(c))
	}
	return rebuild(pkt, all), nil
}

// postReadControl asks for entryCSN in the post-read entry (RFC 4527):
// controlValue is an AttributeSelection, a SEQUENCE OF LDAPString.
func postReadControl() Control {
	sel := ber.NewSequence("AttributeSelection")
	sel.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "entryCSN", "attribute"))
	return Control{OID: OIDPostRead, Value: sel.Bytes(), HasValue: true}
}

// proxiedAuthzControl names the client for the Proxied Authorization control
// (RFC 4370): critical, value "dn:<client DN>".
func proxiedAuthzControl(dn string) Control {
	return Control{OID: OIDProxiedAuthz, Critical: true, Value: []byte("dn:" + dn), HasValue: true}
}

// splitPostRead decodes a response, removes its Post-Read control and returns the
// entryCSN values it carried. keep leaves the control in the returned bytes (the
// client asked for it). Responses without the control come back unchanged.
func splitPostRead(raw []byte, keep bool) (out []byte, csns []string, err error) {
	pkt, err := ber.DecodePacketErr(raw)
	if err != nil {
		return raw, nil, malformed("bad BER in response", err)
	}
	if len(pkt.Children) < 3 {
		return raw, nil, nil
	}
	var rest []*ber.Packet
	found := false
	for _, c := range pkt.Children[2].Children {
		ctl, err := decodeControl(c)
		if err != nil {
			return raw, nil, err
		}
		if ctl.OID != OIDPostRead {
			rest = append(rest, c)
			continue
		}
		found = true
		csns, err = entryCSNs(ctl.Value)
		if err != nil {
			return raw, nil, err
		}
	}
	if !found || keep {
		return raw, csns, nil
	}
	return rebuild(pkt, rest), csns, nil
}

// entryCSNs reads the entryCSN values of a Post-Read control value, a
// SearchResultEntry ::= [APPLICATION 4] SEQUENCE { objectName, attributes }.
func entryCSNs(v []byte) ([]string, error) {
	e, err := ber.DecodePacketErr(v)
	if err != nil {
		return nil, malformed("post-read entry", err)
	}
	if len(e.Children) != 2 {
		return nil, malformed(fmt.Sprintf("post-read entry has %d elements", len(e.Children)), nil)
	}
	return entryAttr(e, "entryCSN"), nil
}

// entryAttr returns the values of attribute name in a decoded SearchResultEntry
// ([APPLICATION 4] SEQUENCE { objectName, attributes }).
func entryAttr(e *ber.Packet, name string) []string {
	if len(e.Children) != 2 {
		return nil
	}
	var out []string
	for _, a := range e.Children[1].Children {
		if len(a.Children) != 2 {
			continue
		}
		if !equalFoldASCII(a.Children[0].Data.String(), name) {
			continue
		}
		for _, val := range a.Children[1].Children {
			out = append(out, val.Data.String())
		}
	}
	return out
}

func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// resultCode reads the resultCode of an LDAPResult-shaped response.
func resultCode(raw []byte) (int, string, error) {
	pkt, err := ber.DecodePacketErr(raw)
	if err != nil {
		return 0, "", malformed("bad BER in response", err)
	}
	if len(pkt.Children) < 2 || len(pkt.Children[1].Children) < 3 {
		return 0, "", malformed("response is not an LDAPResult", nil)
	}
	op := pkt.Children[1]
	code, err := ber.ParseInt64(op.Children[0].Data.Bytes())
	if err != nil {
		return 0, "", malformed("resultCode", err)
	}
	return int(code), op.Children[2].Data.String(), nil
}

// encodeSimpleBind encodes a BindRequest for the proxy's own binds on a fresh
// backend connection.
func encodeSimpleBind(id int64, dn string, password []byte) []byte {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ber.Tag(OpBindRequest), nil, "BindRequest")
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(3), "version"))
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, dn, "name"))
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, string(password), "simple"))
	return envelope(id, op)
}

// encodeExtended encodes an ExtendedRequest without a value (StartTLS, WhoAmI).
func encodeExtended(id int64, oid string) []byte {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ber.Tag(OpExtendedRequest), nil, "ExtendedRequest")
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, oid, "requestName"))
	return envelope(id, op)
}

// encodeBaseSearch encodes a base-scope search of dn for the given attributes.
func encodeBaseSearch(id int64, dn string, attrs ...string) []byte {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ber.Tag(OpSearchRequest), nil, "SearchRequest")
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, dn, "baseObject"))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(0), "scope"))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(0), "derefAliases"))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(1), "sizeLimit"))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(0), "timeLimit"))
	op.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, false, "typesOnly"))
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 7, "objectClass", "present"))
	as := ber.NewSequence("attributes")
	for _, a := range attrs {
		as.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, a, "attribute"))
	}
	op.AppendChild(as)
	return envelope(id, op)
}

func envelope(id int64, op *ber.Packet) []byte {
	msg := ber.NewSequence("LDAPMessage")
	msg.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, id, "messageID"))
	msg.AppendChild(op)
	return msg.Bytes()
}

// entryAttrFromMessage returns the values of attribute name in a SearchResultEntry message.
func entryAttrFromMessage(raw []byte, name string) ([]string, error) {
	pkt, err := ber.DecodePacketErr(raw)
	if err != nil {
		return nil, malformed("bad BER in search entry", err)
	}
	if len(pkt.Children) < 2 {
		return nil, malformed("search entry", nil)
	}
	return entryAttr(pkt.Children[1], name), nil
}

// extendedResponseValue returns the responseValue [11] of an ExtendedResponse message.
func extendedResponseValue(raw []byte) (string, error) {
	pkt, err := ber.DecodePacketErr(raw)
	if err != nil {
		return "", malformed("bad BER in extended response", err)
	}
	if len(pkt.Children) < 2 {
		return "", malformed("extended response", nil)
	}
	for _, c := range pkt.Children[1].Children {
		if c.ClassType == ber.ClassContext && c.Tag == 11 {
			return c.Data.String(), nil
		}
	}
	return "", nil
}
