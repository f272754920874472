package pgfront

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/spokeproxy/spokeproxy/internal/rawconn"
)

// frameReader reads PostgreSQL messages as frames (type byte, length,
// body) without decoding them, so the relay forwards what it does not
// need to look at as bytes. A frame is valid until the next call that
// reads (next or wait). A read interrupted by a deadline keeps what it
// got: the next call resumes the same message, so a watcher that is
// stopped with a deadline never splits one.
type frameReader struct {
	r     io.Reader
	buf   []byte
	start int // buf[start:end] is read and not yet returned
	end   int
	size  int // the buffer size to return to after an oversized frame
	max   int // maximum body length; 0 means no limit
}

func newFrameReader(r io.Reader, size, max int) *frameReader {
	return &frameReader{r: r, buf: make([]byte, size), size: size, max: max}
}

// buffered is the number of bytes read from the connection and not yet
// returned as frames.
func (f *frameReader) buffered() int { return f.end - f.start }

// complete reports whether a whole frame is buffered, so that next will
// not read from the connection.
func (f *frameReader) complete() bool {
	n := f.end - f.start
	if n < 5 {
		return false
	}
	length := int(int32(binary.BigEndian.Uint32(f.buf[f.start+1:])))
	return length >= 4 && n >= 1+length
}

// fill reads until at least n bytes are buffered.
func (f *frameReader) fill(n int) error {
	if f.start == f.end {
		f.start, f.end = 0, 0
		if len(f.buf) > f.size && n <= f.size {
			f.buf = make([]byte, f.size) // drop an oversized buffer once it is empty
		}
	}
	if f.end-f.start >= n {
		return nil
	}
	if len(f.buf)-f.start < n {
		if len(f.buf) < n {
			nb := make([]byte, n)
			f.end = copy(nb, f.buf[f.start:f.end])
			f.buf = nb
		} else {
			f.end = copy(f.buf, f.buf[f.start:f.end])
		}
		f.start = 0
	}
	for f.end-f.start < n {
		m, err := f.r.Read(f.buf[f.end:])
		f.end += m
		if err != nil {
			if f.end-f.start >= n {
				return nil
			}
			if errors.Is(err, io.EOF) {
				if f.end > f.start {
					return io.ErrUnexpectedEOF
				}
				return io.EOF
			}
			return err
		}
	}
	return nil
}

// sendThenFill writes what w holds and reads the first bytes that come
// back: in one call on a connection that can arm its read before the
// write (rawconn.WriteReader), skipping a read attempt that could only
// find nothing. w must hold a request the peer answers.
func (f *frameReader) sendThenFill(w *msgWriter) error {
	wr, ok := f.r.(rawconn.WriteReader)
	if !ok || w.err != nil || len(w.buf) == 0 || f.start != f.end {
		return w.flush() // and next reads as usual
	}
	f.start, f.end = 0, 0
	if len(f.buf) > f.size {
		f.buf = make([]byte, f.size)
	}
	n, err := wr.WriteRead(w.buf, f.buf)
	w.reset()
	f.end = n
	return err
}

// wait blocks until at least one byte of a message is readable.
func (f *frameReader) wait() error { return f.fill(1) }

// next returns the next message: its type byte and the whole frame
// (type, length and body), valid until the next read.
func (f *frameReader) next() (byte, []byte, error) {
	if err := f.fill(5); err != nil {
		return 0, nil, err
	}
	h := f.buf[f.start : f.start+5]
	length := int(int32(binary.BigEndian.Uint32(h[1:])))
	if length < 4 {
		return 0, nil, fmt.Errorf("invalid message length: %d", length)
	}
	body := length - 4
	if f.max > 0 && body > f.max {
		return 0, nil, &pgproto3.ExceededMaxBodyLenErr{MaxExpectedBodyLen: f.max, ActualBodyLen: body}
	}
	if err := f.fill(5 + body); err != nil {
		return 0, nil, err
	}
	frame := f.buf[f.start : f.start+5+body : f.start+5+body]
	f.start += 5 + body
	return frame[0], frame, nil
}

// errorCode is the SQLSTATE of an ErrorResponse frame's body, without
// decoding the rest.
func errorCode(body []byte) string { return errorField(body, 'C') }

// errorField returns one field of an ErrorResponse body ("" if absent).
func errorField(body []byte, want byte) string {
	for len(body) > 0 && body[0] != 0 {
		field := body[0]
		body = body[1:]
		i := 0
		for i < len(body) && body[i] != 0 {
			i++
		}
		if field == want {
			return string(body[:i])
		}
		if i < len(body) {
			i++
		}
		body = body[i:]
	}
	return ""
}

// endsSession reports whether an ErrorResponse body is FATAL or PANIC:
// the server closes the connection after it.
func endsSession(body []byte) bool {
	sev := errorField(body, 'V') // not localized; since PostgreSQL 9.6
	if sev == "" {
		sev = errorField(body, 'S')
	}
	return sev == "FATAL" || sev == "PANIC"
}

// decodeBackend decodes a backend message frame into pgproto3's type, for
// the few places (login, notifications) that need its fields.
func decodeBackend(typ byte, frame []byte) (pgproto3.BackendMessage, error) {
	body := frame[5:]
	var m pgproto3.BackendMessage
	switch typ {
	case 'R':
		if len(body) < 4 {
			return nil, errors.New("pgfront: authentication message too short")
		}
		switch binary.BigEndian.Uint32(body) {
		case pgproto3.AuthTypeOk:
			m = &pgproto3.AuthenticationOk{}
		case pgproto3.AuthTypeCleartextPassword:
			m = &pgproto3.AuthenticationCleartextPassword{}
		case pgproto3.AuthTypeMD5Password:
			m = &pgproto3.AuthenticationMD5Password{}
		case pgproto3.AuthTypeSASL:
			m = &pgproto3.AuthenticationSASL{}
		case pgproto3.AuthTypeSASLContinue:
			m = &pgproto3.AuthenticationSASLContinue{}
		case pgproto3.AuthTypeSASLFinal:
			m = &pgproto3.AuthenticationSASLFinal{}
		default:
			return nil, fmt.Errorf("pgfront: unsupported authentication request %d", binary.BigEndian.Uint32(body))
		}
	case 'S':
		m = &pgproto3.ParameterStatus{}
	case 'K':
		m = &pgproto3.BackendKeyData{}
	case 'N':
		m = &pgproto3.NoticeResponse{}
	case 'v':
		m = &pgproto3.NegotiateProtocolVersion{}
	case 'E':
		m = &pgproto3.ErrorResponse{}
	case 'Z':
		m = &pgproto3.ReadyForQuery{}
	case 'A':
		m = &pgproto3.NotificationResponse{}
	case 'D':
		m = &pgproto3.DataRow{}
	default:
		return nil, fmt.Errorf("pgfront: unexpected backend message %q", typ)
	}
	if err := m.Decode(body); err != nil {
		return nil, err
	}
	return m, nil
}

// msgWriter buffers messages for one connection and writes them with one
// call per flush. Messages the relay forwards are appended as the bytes
// they arrived as; the proxy's own are encoded in place. Neither costs an
// allocation once the buffer has grown to the session's usual turn.
type msgWriter struct {
	w   io.Writer
	buf []byte
	err error // an encoding error, reported (and the buffer dropped) by flush
}

// msgWriterKeep is the largest buffer a writer keeps between flushes; a
// larger one (a big row, a long held answer) is dropped after its flush
// so an idle session holds little memory.
const msgWriterKeep = 64 << 10

func newMsgWriter(w io.Writer) *msgWriter { return &msgWriter{w: w} }

// send encodes msg into the buffer.
func (m *msgWriter) send(msg pgproto3.Message) {
	if m.err != nil {
		return
	}
	b, err := msg.Encode(m.buf)
	if err != nil {
		m.err = err
		return
	}
	m.buf = b
}

// raw appends frames that are already encoded.
func (m *msgWriter) raw(frames []byte) {
	if m.err == nil {
		m.buf = append(m.buf, frames...)
	}
}

// query appends a simple Query for sql.
func (m *msgWriter) query(sql string) {
	if m.err != nil {
		return
	}
	n := 4 + len(sql) + 1
	m.buf = append(m.buf, 'Q', byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	m.buf = append(m.buf, sql...)
	m.buf = append(m.buf, 0)
}

// readyForQuery appends ReadyForQuery with a transaction status.
func (m *msgWriter) readyForQuery(status byte) {
	if m.err == nil {
		m.buf = append(m.buf, 'Z', 0, 0, 0, 5, status)
	}
}

// sync appends Sync; flushMsg appends Flush.
func (m *msgWriter) sync() {
	if m.err == nil {
		m.buf = append(m.buf, 'S', 0, 0, 0, 4)
	}
}

func (m *msgWriter) flushMsg() {
	if m.err == nil {
		m.buf = append(m.buf, 'H', 0, 0, 0, 4)
	}
}

// flush writes what is buffered in one write.
func (m *msgWriter) flush() error {
	if err := m.err; err != nil {
		m.err = nil
		m.buf = m.buf[:0]
		return err
	}
	if len(m.buf) == 0 {
		return nil
	}
	_, err := m.w.Write(m.buf)
	m.reset()
	return err
}

// reset empties the buffer once written.
func (m *msgWriter) reset() {
	if cap(m.buf) > msgWriterKeep {
		m.buf = nil
	} else {
		m.buf = m.buf[:0]
	}
}

// frontMsg is one client message after login, parsed only as far as the
// session needs it. Its slices point into the frame, valid until the
// client reader's next read.
type frontMsg struct {
	typ   byte
	frame []byte // the whole message; for Parse, Bind and Execute without bytes past their last field
	name  []byte // Parse, Bind: the statement; Describe, Close: the object
	sql   []byte // Query, Parse: the SQL text
	obj   byte   // Describe, Close: 'S' (statement) or 'P' (portal)
}

// invalidFront is a client message the proxy cannot parse.
type invalidFront struct{ what string }

func (e *invalidFront) Error() string { return e.what }

// cstring splits a NUL-terminated string off b.
func cstring(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// parseFront checks a client message as pgproto3's decoders do (what
// they accept, this accepts) and picks out its fields without copying.
// Parse, Bind and Execute followed by bytes past their last field lose
// those bytes, as a decode and re-encode would.
func parseFront(typ byte, frame []byte) (frontMsg, error) {
	m := frontMsg{typ: typ, frame: frame}
	body := frame[5:]
	bad := func(name string) (frontMsg, error) {
		return frontMsg{}, &invalidFront{what: name + " message has an invalid format"}
	}
	trim := func(rest []byte) {
		if len(rest) > 0 {
			m.frame = reframe(frame, len(body)-len(rest))
		}
	}
	switch typ {
	case 'Q':
		if len(body) == 0 || bytes.IndexByte(body, 0) != len(body)-1 {
			return bad("Query")
		}
		m.sql = body[:len(body)-1]
	case 'P':
		var ok bool
		var rest []byte
		if m.name, rest, ok = cstring(body); !ok {
			return bad("Parse")
		}
		if m.sql, rest, ok = cstring(rest); !ok || len(rest) < 2 {
			return bad("Parse")
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+4*n {
			return bad("Parse")
		}
		trim(rest[2+4*n:])
	case 'B':
		_, rest, ok := cstring(body) // the portal
		if !ok {
			return bad("Bind")
		}
		if m.name, rest, ok = cstring(rest); !ok {
			return bad("Bind")
		}
		if len(rest) < 2 {
			return bad("Bind")
		}
		n := int(binary.BigEndian.Uint16(rest))
		if rest = rest[2:]; len(rest) < 2*n+2 {
			return bad("Bind")
		}
		rest = rest[2*n:]
		n = int(binary.BigEndian.Uint16(rest))
		rest = rest[2:]
		for range n {
			if len(rest) < 4 {
				return bad("Bind")
			}
			size := int(int32(binary.BigEndian.Uint32(rest)))
			rest = rest[4:]
			if size == -1 {
				continue
			}
			if size < 0 || len(rest) < size {
				return bad("Bind")
			}
			rest = rest[size:]
		}
		if len(rest) < 2 {
			return bad("Bind")
		}
		n = int(binary.BigEndian.Uint16(rest))
		if rest = rest[2:]; len(rest) < 2*n {
			return bad("Bind")
		}
		trim(rest[2*n:])
	case 'D', 'C':
		what := "Describe"
		if typ == 'C' {
			what = "Close"
		}
		if len(body) < 2 || bytes.IndexByte(body[1:], 0) != len(body)-2 {
			return bad(what)
		}
		m.obj, m.name = body[0], body[1:len(body)-1]
	case 'E':
		_, rest, ok := cstring(body)
		if !ok || len(rest) < 4 {
			return bad("Execute")
		}
		trim(rest[4:])
	case 'S', 'H', 'X', 'c':
		if len(body) != 0 {
			return frontMsg{}, &invalidFront{what: fmt.Sprintf("%s message has %d bytes, want 0", frontName(typ), len(body))}
		}
	case 'f':
		if len(body) == 0 || bytes.IndexByte(body, 0) != len(body)-1 {
			return bad("CopyFail")
		}
	case 'd', 'F', 'p':
		// CopyData is opaque; FunctionCall is decoded where it is run; a
		// password message after login is refused by the session.
	default:
		return frontMsg{}, &invalidFront{what: fmt.Sprintf("unknown message type: %c", typ)}
	}
	return m, nil
}

// reframe returns a copy of frame's first n body bytes as a frame of its own.
func reframe(frame []byte, n int) []byte {
	out := make([]byte, 5+n)
	copy(out, frame[:5+n])
	binary.BigEndian.PutUint32(out[1:], uint32(4+n))
	return out
}

// frontName names a client message type for errors.
func frontName(typ byte) string {
	switch typ {
	case 'S':
		return "Sync"
	case 'H':
		return "Flush"
	case 'X':
		return "Terminate"
	case 'c':
		return "CopyDone"
	case 'F':
		return "FunctionCall"
	case 'p':
		return "PasswordMessage"
	}
	return string(typ)
}

// receiveAuth reads the client's answer to an authentication request: a
// password-type message is decoded as that request's answer, anything
// else as what it is (for the caller's error). Its byte slices are valid
// until the next read.
func receiveAuth(in *frameReader, authType uint32) (pgproto3.FrontendMessage, error) {
	typ, frame, err := in.next()
	if err != nil {
		return nil, err
	}
	var m pgproto3.FrontendMessage
	if typ == 'p' {
		switch authType {
		case pgproto3.AuthTypeSASL:
			m = &pgproto3.SASLInitialResponse{}
		case pgproto3.AuthTypeSASLContinue:
			m = &pgproto3.SASLResponse{}
		default:
			m = &pgproto3.PasswordMessage{}
		}
	} else if m = frontendMessage(typ); m == nil {
		return nil, fmt.Errorf("unknown message type: %c", typ)
	}
	if err := m.Decode(frame[5:]); err != nil {
		return nil, err
	}
	return m, nil
}

// frontendMessage is the pgproto3 type of a client message after startup
// ('p' aside: its type depends on the authentication asked for), or nil
// for a type the protocol does not have.
func frontendMessage(typ byte) pgproto3.FrontendMessage {
	switch typ {
	case 'Q':
		return &pgproto3.Query{}
	case 'P':
		return &pgproto3.Parse{}
	case 'B':
		return &pgproto3.Bind{}
	case 'D':
		return &pgproto3.Describe{}
	case 'E':
		return &pgproto3.Execute{}
	case 'C':
		return &pgproto3.Close{}
	case 'S':
		return &pgproto3.Sync{}
	case 'H':
		return &pgproto3.Flush{}
	case 'X':
		return &pgproto3.Terminate{}
	case 'F':
		return &pgproto3.FunctionCall{}
	case 'd':
		return &pgproto3.CopyData{}
	case 'c':
		return &pgproto3.CopyDone{}
	case 'f':
		return &pgproto3.CopyFail{}
	}
	return nil
}
