package ldapfront

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"

	ber "github.com/go-asn1-ber/asn1-ber"
)

// Op is the application tag of an LDAPMessage's protocolOp (RFC 4511 section 4.2).
type Op uint8

// Protocol operations by their application tag.
const (
	OpBindRequest           Op = 0
	OpBindResponse          Op = 1
	OpUnbindRequest         Op = 2
	OpSearchRequest         Op = 3
	OpSearchResultEntry     Op = 4
	OpSearchResultDone      Op = 5
	OpModifyRequest         Op = 6
	OpModifyResponse        Op = 7
	OpAddRequest            Op = 8
	OpAddResponse           Op = 9
	OpDelRequest            Op = 10
	OpDelResponse           Op = 11
	OpModifyDNRequest       Op = 12
	OpModifyDNResponse      Op = 13
	OpCompareRequest        Op = 14
	OpCompareResponse       Op = 15
	OpAbandonRequest        Op = 16
	OpSearchResultReference Op = 19
	OpExtendedRequest       Op = 23
	OpExtendedResponse      Op = 24
	OpIntermediateResponse  Op = 25
)

var opNames = map[Op]string{
	OpBindRequest: "bind", OpBindResponse: "bind_response", OpUnbindRequest: "unbind",
	OpSearchRequest: "search", OpSearchResultEntry: "search_entry", OpSearchResultDone: "search_done",
	OpModifyRequest: "modify", OpModifyResponse: "modify_response", OpAddRequest: "add",
	OpAddResponse: "add_response", OpDelRequest: "delete", OpDelResponse: "delete_response",
	OpModifyDNRequest: "modify_dn", OpModifyDNResponse: "modify_dn_response", OpCompareRequest: "compare",
	OpCompareResponse: "compare_response", OpAbandonRequest: "abandon",
	OpSearchResultReference: "search_reference", OpExtendedRequest: "extended",
	OpExtendedResponse: "extended_response", OpIntermediateResponse: "intermediate",
}

// String names the operation; the names are bounded and usable as metric labels.
func (o Op) String() string {
	if n, ok := opNames[o]; ok {
		return n
	}
	return fmt.Sprintf("op_%d", uint8(o))
}

// responseOp is the response op that ends a request op, for the ops that have one.
func (o Op) responseOp() (Op, bool) {
	switch o {
	case OpBindRequest, OpModifyRequest, OpAddRequest, OpDelRequest, OpModifyDNRequest, OpCompareRequest:
		return o + 1, true
	case OpSearchRequest:
		return OpSearchResultDone, true
	case OpExtendedRequest:
		return OpExtendedResponse, true
	}
	return 0, false
}

// isFinal reports whether a response op ends its operation (entries, references and
// intermediate responses do not).
func (o Op) isFinal() bool {
	switch o {
	case OpSearchResultEntry, OpSearchResultReference, OpIntermediateResponse:
		return false
	}
	return true
}

// OIDs the front recognises.
const (
	OIDNoticeOfDisconnection = "1.3.6.1.4.1.1466.20036"
	OIDCancel                = "1.3.6.1.1.8"
	OIDStartTLS              = "1.3.6.1.4.1.1466.20037"
	OIDWhoAmI                = "1.3.6.1.4.1.4203.1.11.3"
	OIDPasswordModify        = "1.3.6.1.4.1.4203.1.11.1"
	OIDStartTxn              = "1.3.6.1.1.21.1"
	OIDEndTxn                = "1.3.6.1.1.21.3"
	OIDDontUseCopy           = "1.3.6.1.1.22"
	OIDPostRead              = "1.3.6.1.1.13.2"
	OIDProxiedAuthz          = "2.16.840.1.113730.3.4.18"
	OIDSyncRequest           = "1.3.6.1.4.1.4203.1.9.1.1"
	OIDTxnSpec               = "1.3.6.1.1.21.2"
)

// Control is one LDAP control (RFC 4511 section 4.1.11).
type Control struct {
	OID      string
	Critical bool
	Value    []byte
	HasValue bool
}

// BindRequest is the decoded part of a BindRequest. Password is kept in memory
// only and never logged; String redacts it.
type BindRequest struct {
	Version   int64
	DN        string
	Simple    bool   // simple authentication (else SASL)
	Password  []byte // simple password; empty for anonymous or unauthenticated binds
	Mechanism string // SASL mechanism
}

// String describes the bind without its credentials.
func (b *BindRequest) String() string {
	if b.Simple {
		return fmt.Sprintf("simple bind dn=%q password=%t", b.DN, len(b.Password) > 0)
	}
	return fmt.Sprintf("sasl bind dn=%q mechanism=%q", b.DN, b.Mechanism)
}

// PDU is one LDAPMessage as read from the wire: the raw bytes, relayed unchanged,
// plus the light decode routing needs.
type PDU struct {
	Raw       []byte // the whole message, tag and length included
	MessageID int64
	Op        Op
	Controls  []Control

	ExtOID    string       // ExtendedRequest requestName / ExtendedResponse responseName
	ExtValue  []byte       // ExtendedRequest requestValue
	Bind      *BindRequest // for OpBindRequest
	TargetID  int64        // Abandon's target, or Cancel's cancelID
	HasTarget bool

	packet *ber.Packet // the decoded message; nil for responses framed only
}

// Control returns the control with that OID, if present.
func (p *PDU) Control(oid string) (Control, bool) {
	for _, c := range p.Controls {
		if c.OID == oid {
			return c, true
		}
	}
	return Control{}, false
}

// MalformedError says why a PDU could not be read. It is a protocol error: the
// connection gets a Notice of Disconnection and is closed.
type MalformedError struct {
	Reason string
	Err    error // underlying decoder error, if any
}

func (e *MalformedError) Error() string {
	if e.Err != nil {
		return "ldap: malformed message: " + e.Reason + ": " + e.Err.Error()
	}
	return "ldap: malformed message: " + e.Reason
}

func (e *MalformedError) Unwrap() error { return e.Err }

// TooLargeError says a PDU declared a length above the configured cap; nothing of
// its body was read or allocated.
type TooLargeError struct {
	Length, Max int64
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("ldap: message of %d bytes exceeds max_pdu_size %d", e.Length, e.Max)
}

// IsMalformed reports whether err is a protocol error in the peer's bytes
// (malformed or too large), as opposed to an IO error.
func IsMalformed(err error) bool {
	var m *MalformedError
	var t *TooLargeError
	return errors.As(err, &m) || errors.As(err, &t)
}

// IsTooLarge reports whether err is a PDU above the size cap.
func IsTooLarge(err error) bool {
	var t *TooLargeError
	return errors.As(err, &t)
}

func malformed(reason string, err error) error { return &MalformedError{Reason: reason, Err: err} }

// readFrame reads one BER TLV whose tag must be a universal constructed SEQUENCE
// (an LDAPMessage), capping its declared length at max before allocating. A clean
// EOF before the first byte returns io.EOF.
func readFrame(r *bufio.Reader, max int64) ([]byte, error) {
	tag, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	if tag != 0x30 {
		return nil, malformed(fmt.Sprintf("message tag 0x%02x is not a SEQUENCE", tag), nil)
	}
	var hdr [10]byte
	hdr[0] = tag
	n := 1
	lb, err := r.ReadByte()
	if err != nil {
		return nil, malformed("truncated length", io.ErrUnexpectedEOF)
	}
	hdr[n] = lb
	n++
	var length uint64
	switch {
	case lb < 0x80:
		length = uint64(lb)
	case lb == 0x80:
		// RFC 4511 section 5.1: only the definite form of length is used.
		return nil, malformed("indefinite length", nil)
	case lb == 0xff:
		return nil, malformed("invalid length byte 0xff", nil)
	default:
		k := int(lb & 0x7f)
		if k > 8 {
			return nil, malformed("length of length too large", nil)
		}
		for range k {
			b, err := r.ReadByte()
			if err != nil {
				return nil, malformed("truncated length", io.ErrUnexpectedEOF)
			}
			hdr[n] = b
			n++
			length = length<<8 | uint64(b)
		}
	}
	if length > uint64(math.MaxInt32) || int64(length)+int64(n) > max {
		return nil, &TooLargeError{Length: int64(min(length, uint64(math.MaxInt64-16))) + int64(n), Max: max}
	}
	buf := make([]byte, n+int(length))
	copy(buf, hdr[:n])
	if _, err := io.ReadFull(r, buf[n:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, malformed("truncated message", err)
	}
	return buf, nil
}

// nextFrame is readFrame without the copy when the whole message fits in r's
// buffer: the bytes returned are then r's own and valid only until the next
// read from r (copy what you keep, as with pgproto3's Receive). Anything
// readFrame would reject or must allocate for goes through readFrame, so the
// errors are the same.
func nextFrame(r *bufio.Reader, max int64) ([]byte, error) {
	hdr, err := r.Peek(2)
	if err != nil || hdr[0] != 0x30 {
		return readFrame(r, max)
	}
	n, length := 2, uint64(hdr[1])
	if lb := hdr[1]; lb >= 0x80 {
		k := int(lb & 0x7f)
		if lb == 0x80 || lb == 0xff || k > 8 {
			return readFrame(r, max)
		}
		if hdr, err = r.Peek(2 + k); err != nil {
			return readFrame(r, max)
		}
		length = 0
		for _, b := range hdr[2:] {
			length = length<<8 | uint64(b)
		}
		n += k
	}
	if length > uint64(math.MaxInt32) || int64(length)+int64(n) > max || int(length)+n > r.Size() {
		return readFrame(r, max)
	}
	total := n + int(length)
	buf, err := r.Peek(total)
	if err != nil {
		return readFrame(r, max) // truncated: readFrame reads what is there and says so
	}
	_, _ = r.Discard(total) // buf stays valid: nothing refills r until the next read
	return buf[:total:total], nil
}

// ReadPDU reads one LDAPMessage and decodes what routing needs. max caps the
// message size (tag and length included) before anything is allocated for it.
// A clean EOF between messages is returned as io.EOF; other failures are
// *MalformedError, *TooLargeError or IO errors.
func ReadPDU(r *bufio.Reader, max int64) (*PDU, error) {
	raw, err := readFrame(r, max)
	if err != nil {
		return nil, err
	}
	return DecodePDU(raw)
}

// DecodePDU decodes one complete LDAPMessage held in raw. Search, Compare,
// Add, Modify and ModifyDN requests, the bulk of the traffic, are decoded only
// down to their controls (the servers validate their bodies); every other
// message is decoded whole.
func DecodePDU(raw []byte) (*PDU, error) {
	if p, ok, err := decodeLight(raw); ok || err != nil {
		return p, err
	}
	// LDAP's tags are all in the low-tag-number form; the header walk rejects
	// the high-tag form ber would accept for the same number.
	if _, err := peekResponse(raw); err != nil {
		return nil, err
	}
	pkt, err := ber.DecodePacketErr(raw)
	if err != nil {
		return nil, malformed("bad BER", err)
	}
	if pkt.ClassType != ber.ClassUniversal || pkt.TagType != ber.TypeConstructed || pkt.Tag != ber.TagSequence {
		return nil, malformed("message is not a SEQUENCE", nil)
	}
	if len(pkt.Children) < 2 || len(pkt.Children) > 3 {
		return nil, malformed(fmt.Sprintf("message has %d elements", len(pkt.Children)), nil)
	}
	idp := pkt.Children[0]
	if idp.ClassType != ber.ClassUniversal || idp.TagType != ber.TypePrimitive || idp.Tag != ber.TagInteger {
		return nil, malformed("messageID is not an INTEGER", nil)
	}
	id, err := ber.ParseInt64(idp.Data.Bytes())
	if err != nil || id < 0 || id > math.MaxInt32 {
		return nil, malformed("messageID out of range", err)
	}
	opp := pkt.Children[1]
	if opp.ClassType != ber.ClassApplication || opp.Tag > 30 {
		return nil, malformed("protocolOp is not an application tag", nil)
	}
	p := &PDU{Raw: raw, MessageID: id, Op: Op(opp.Tag), packet: pkt}
	if len(pkt.Children) == 3 {
		cs := pkt.Children[2]
		if cs.ClassType != ber.ClassContext || cs.Tag != 0 || cs.TagType != ber.TypeConstructed {
			return nil, malformed("third element is not controls [0]", nil)
		}
		for _, c := range cs.Children {
			ctl, err := decodeControl(c)
			if err != nil {
				return nil, err
			}
			p.Controls = append(p.Controls, ctl)
		}
	}
	if err := p.decodeOp(opp); err != nil {
		return nil, err
	}
	return p, nil
}

func isUniversal(p *ber.Packet, tag ber.Tag, typ ber.Type) bool {
	return p.ClassType == ber.ClassUniversal && p.Tag == tag && p.TagType == typ
}

func decodeControl(c *ber.Packet) (Control, error) {
	if !isUniversal(c, ber.TagSequence, ber.TypeConstructed) || len(c.Children) < 1 || len(c.Children) > 3 {
		return Control{}, malformed("control is not a SEQUENCE of 1 to 3 elements", nil)
	}
	if !isUniversal(c.Children[0], ber.TagOctetString, ber.TypePrimitive) {
		return Control{}, malformed("controlType is not an OCTET STRING", nil)
	}
	ctl := Control{OID: c.Children[0].Data.String()}
	rest := c.Children[1:]
	if len(rest) > 0 && isUniversal(rest[0], ber.TagBoolean, ber.TypePrimitive) {
		b := rest[0].Data.Bytes()
		if len(b) != 1 {
			return Control{}, malformed("criticality is not a one-byte BOOLEAN", nil)
		}
		ctl.Critical = b[0] != 0
		rest = rest[1:]
	}
	if len(rest) > 0 {
		if len(rest) > 1 || !isUniversal(rest[0], ber.TagOctetString, ber.TypePrimitive) {
			return Control{}, malformed("controlValue is not an OCTET STRING", nil)
		}
		ctl.Value = append([]byte(nil), rest[0].Data.Bytes()...)
		ctl.HasValue = true
	}
	return ctl, nil
}

func (p *PDU) decodeOp(op *ber.Packet) error {
	switch p.Op {
	case OpBindRequest:
		if op.TagType != ber.TypeConstructed || len(op.Children) != 3 {
			return malformed("BindRequest is not a SEQUENCE of 3", nil)
		}
		vp, np, ap := op.Children[0], op.Children[1], op.Children[2]
		if !isUniversal(vp, ber.TagInteger, ber.TypePrimitive) || !isUniversal(np, ber.TagOctetString, ber.TypePrimitive) {
			return malformed("BindRequest version or name has the wrong type", nil)
		}
		v, err := ber.ParseInt64(vp.Data.Bytes())
		if err != nil {
			return malformed("BindRequest version", err)
		}
		b := &BindRequest{Version: v, DN: np.Data.String()}
		switch {
		case ap.ClassType == ber.ClassContext && ap.Tag == 0 && ap.TagType == ber.TypePrimitive:
			b.Simple = true
			b.Password = append([]byte(nil), ap.Data.Bytes()...)
		case ap.ClassType == ber.ClassContext && ap.Tag == 3 && ap.TagType == ber.TypeConstructed:
			if len(ap.Children) < 1 || len(ap.Children) > 2 || !isUniversal(ap.Children[0], ber.TagOctetString, ber.TypePrimitive) {
				return malformed("SaslCredentials", nil)
			}
			b.Mechanism = ap.Children[0].Data.String()
		default:
			return malformed("unknown bind authentication choice", nil)
		}
		p.Bind = b
	case OpUnbindRequest:
		if op.TagType != ber.TypePrimitive || op.Data.Len() != 0 {
			return malformed("UnbindRequest is not NULL", nil)
		}
	case OpAbandonRequest:
		if op.TagType != ber.TypePrimitive {
			return malformed("AbandonRequest is not a primitive INTEGER", nil)
		}
		id, err := ber.ParseInt64(op.Data.Bytes())
		if err != nil || id < 0 || id > math.MaxInt32 {
			return malformed("AbandonRequest messageID out of range", err)
		}
		p.TargetID, p.HasTarget = id, true
	case OpDelRequest:
		if op.TagType != ber.TypePrimitive {
			return malformed("DelRequest is not a primitive LDAPDN", nil)
		}
	case OpExtendedRequest:
		if op.TagType != ber.TypeConstructed || len(op.Children) < 1 || len(op.Children) > 2 {
			return malformed("ExtendedRequest is not a SEQUENCE of 1 or 2", nil)
		}
		np := op.Children[0]
		if np.ClassType != ber.ClassContext || np.Tag != 0 || np.TagType != ber.TypePrimitive {
			return malformed("ExtendedRequest requestName is not [0]", nil)
		}
		p.ExtOID = np.Data.String()
		if len(op.Children) == 2 {
			vp := op.Children[1]
			if vp.ClassType != ber.ClassContext || vp.Tag != 1 || vp.TagType != ber.TypePrimitive {
				return malformed("ExtendedRequest requestValue is not [1]", nil)
			}
			p.ExtValue = append([]byte(nil), vp.Data.Bytes()...)
		}
		if p.ExtOID == OIDCancel {
			id, err := decodeCancelValue(p.ExtValue)
			if err != nil {
				return err
			}
			p.TargetID, p.HasTarget = id, true
		}
	case OpExtendedResponse:
		for _, c := range op.Children {
			if c.ClassType == ber.ClassContext && c.Tag == 10 {
				p.ExtOID = c.Data.String()
			}
		}
	case OpSearchRequest, OpModifyRequest, OpAddRequest, OpModifyDNRequest, OpCompareRequest:
		if op.TagType != ber.TypeConstructed {
			return malformed(p.Op.String()+" request is not constructed", nil)
		}
	}
	return nil
}

// lightOps are the requests DecodePDU does not decode beyond their controls.
func lightOp(tag byte) bool {
	switch Op(tag & 0x1f) {
	case OpSearchRequest, OpCompareRequest, OpAddRequest, OpModifyRequest, OpModifyDNRequest:
		return tag&0xe0 == 0x60 // application, constructed
	}
	return false
}

// decodeLight walks the TLV headers of a message whose op is one of lightOp:
// messageID, the op's extent, and the controls, decoded with ber. ok is false
// for other ops, which the caller decodes whole.
func decodeLight(raw []byte) (p *PDU, ok bool, err error) {
	_, cs, ce, err := tlv(raw, 0)
	if err != nil || ce != len(raw) {
		return nil, false, nil // let the full decoder report it
	}
	tag, is, ie, err := tlv(raw, cs)
	if err != nil || tag != 0x02 || ie == is || ie-is > 5 || ie >= ce || !lightOp(raw[ie]) {
		return nil, false, nil
	}
	id, err := ber.ParseInt64(raw[is:ie])
	if err != nil || id < 0 || id > math.MaxInt32 {
		return nil, true, malformed("messageID out of range", err)
	}
	_, _, oe, err := tlv(raw, ie)
	if err != nil || oe > ce {
		return nil, true, malformed("protocolOp length", err)
	}
	p = &PDU{Raw: raw, MessageID: id, Op: Op(raw[ie] & 0x1f)}
	if oe == ce {
		return p, true, nil
	}
	if raw[oe] != 0xa0 {
		return nil, true, malformed("third element is not controls [0]", nil)
	}
	_, _, ctlEnd, err := tlv(raw, oe)
	if err != nil || ctlEnd != ce {
		return nil, true, malformed("controls length", err)
	}
	cp, err := ber.DecodePacketErr(raw[oe:ce])
	if err != nil {
		return nil, true, malformed("bad BER in controls", err)
	}
	for _, c := range cp.Children {
		ctl, err := decodeControl(c)
		if err != nil {
			return nil, true, err
		}
		p.Controls = append(p.Controls, ctl)
	}
	return p, true, nil
}

// decoded returns the whole decoded message, decoding it now if DecodePDU
// took the light path.
func (p *PDU) decoded() (*ber.Packet, error) {
	if p.packet != nil {
		return p.packet, nil
	}
	pkt, err := ber.DecodePacketErr(p.Raw)
	if err != nil {
		return nil, malformed("bad BER", err)
	}
	if len(pkt.Children) < 2 {
		return nil, malformed("message has too few elements", nil)
	}
	p.packet = pkt
	return pkt, nil
}

// decodeCancelValue decodes cancelRequestValue ::= SEQUENCE { cancelID MessageID } (RFC 3909).
func decodeCancelValue(v []byte) (int64, error) {
	if len(v) == 0 {
		return 0, malformed("Cancel request without a value", nil)
	}
	vp, err := ber.DecodePacketErr(v)
	if err != nil {
		return 0, malformed("Cancel request value", err)
	}
	if !isUniversal(vp, ber.TagSequence, ber.TypeConstructed) || len(vp.Children) != 1 ||
		!isUniversal(vp.Children[0], ber.TagInteger, ber.TypePrimitive) {
		return 0, malformed("Cancel request value is not SEQUENCE { cancelID }", nil)
	}
	id, err := ber.ParseInt64(vp.Children[0].Data.Bytes())
	if err != nil || id < 0 || id > math.MaxInt32 {
		return 0, malformed("cancelID out of range", err)
	}
	return id, nil
}

// ResponseHeader is the light decode of a response read from a backend: enough to
// route it to the client and to know when its operation ends, without decoding
// entries.
type ResponseHeader struct {
	MessageID int64
	Op        Op
}

// peekResponse decodes messageID and protocolOp tag from a framed message without
// decoding the rest.
func peekResponse(raw []byte) (ResponseHeader, error) {
	_, content, _, err := tlv(raw, 0) // the outer SEQUENCE, already framed
	if err != nil {
		return ResponseHeader{}, err
	}
	tag, idStart, idEnd, err := tlv(raw, content)
	if err != nil || tag != 0x02 || idEnd-idStart < 1 || idEnd-idStart > 5 {
		return ResponseHeader{}, malformed("messageID is not a small INTEGER", err)
	}
	id, err := ber.ParseInt64(raw[idStart:idEnd])
	if err != nil || id < 0 || id > math.MaxInt32 {
		return ResponseHeader{}, malformed("messageID out of range", err)
	}
	if idEnd >= len(raw) || raw[idEnd]&0xc0 != 0x40 || raw[idEnd]&0x1f == 0x1f {
		return ResponseHeader{}, malformed("protocolOp is not an application tag", nil)
	}
	return ResponseHeader{MessageID: id, Op: Op(raw[idEnd] & 0x1f)}, nil
}

// tlv reads the low-tag-number TLV header at raw[i:] and returns its tag byte and
// the bounds of its content.
func tlv(raw []byte, i int) (tag byte, start, end int, err error) {
	if i+2 > len(raw) {
		return 0, 0, 0, malformed("truncated header", nil)
	}
	tag = raw[i]
	lb := raw[i+1]
	start = i + 2
	var n uint64
	switch {
	case lb < 0x80:
		n = uint64(lb)
	case lb == 0x80 || lb == 0xff || lb&0x7f > 4:
		return 0, 0, 0, malformed("bad length", nil)
	default:
		k := int(lb & 0x7f)
		if start+k > len(raw) {
			return 0, 0, 0, malformed("truncated length", nil)
		}
		for _, b := range raw[start : start+k] {
			n = n<<8 | uint64(b)
		}
		start += k
	}
	if n > uint64(len(raw)-start) {
		return 0, 0, 0, malformed("length beyond message", nil)
	}
	return tag, start, start + int(n), nil
}
