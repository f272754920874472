package pgfront

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgproto3"
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

// noReader is the read side of a pgproto3 Frontend or Backend that is
// only used to write: reading goes through a frameReader.
type noReader struct{}

func (noReader) Read([]byte) (int, error) {
	return 0, errors.New("pgfront: read through the frameReader, not pgproto3")
}
