package pgfront

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// chunkReader returns its chunks one Read at a time.
type chunkReader struct{ chunks [][]byte }

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	if r.chunks[0] = r.chunks[0][n:]; len(r.chunks[0]) == 0 {
		r.chunks = r.chunks[1:]
	}
	return n, nil
}

// complete says whether next can return a frame without reading. The
// relay flushes to the client when it cannot: with a result that arrives
// faster than it is relayed, a partial message is nearly always left
// after the last whole one, and flushing only on an empty buffer let the
// whole result pile up in the client write buffer.
func TestFrameReaderComplete(t *testing.T) {
	var stream []byte
	for range 3 {
		stream, _ = (&pgproto3.DataRow{Values: [][]byte{bytes.Repeat([]byte("x"), 100)}}).Encode(stream)
	}
	frame := len(stream) / 3
	rd := newFrameReader(&chunkReader{chunks: [][]byte{
		stream[:frame+10],          // the first frame and the start of the second
		stream[frame+10 : 3*frame], // the rest
	}}, 1024, 0)
	if rd.complete() {
		t.Fatal("complete before anything was read")
	}
	for i, want := range []bool{false, true, false} {
		if _, f, err := rd.next(); err != nil || len(f) != frame {
			t.Fatalf("frame %d: %d bytes, %v", i, len(f), err)
		}
		if got := rd.complete(); got != want {
			t.Errorf("complete after frame %d = %v, want %v (%d bytes buffered)", i, got, want, rd.buffered())
		}
	}
	if rd.buffered() != 0 {
		t.Fatalf("%d bytes left", rd.buffered())
	}
}

// decodeFront decodes a client message with pgproto3, the reference
// parseFront must agree with.
func decodeFront(typ byte, body []byte) (pgproto3.FrontendMessage, error) {
	m := frontendMessage(typ)
	if m == nil || typ == 'F' { // FunctionCall is decoded where the session runs it
		return nil, nil
	}
	return m, m.Decode(body)
}

func frontFrame(typ byte, body []byte) []byte {
	f := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(f[1:], uint32(4+len(body)))
	return append(f, body...)
}

// FuzzParseFront: parseFront accepts exactly the messages pgproto3's
// decoders accept, the fields it picks out are theirs, and the frame it
// forwards is the message as pgproto3 would re-encode it (what the relay
// sent before it forwarded client messages as bytes).
func FuzzParseFront(f *testing.F) {
	enc := func(m pgproto3.FrontendMessage) (byte, []byte) {
		b, _ := m.Encode(nil)
		return b[0], b[5:]
	}
	for _, m := range []pgproto3.FrontendMessage{
		&pgproto3.Query{String: "SELECT 1"},
		&pgproto3.Parse{Name: "s1", Query: "SELECT $1", ParameterOIDs: []uint32{23}},
		&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s1", ParameterFormatCodes: []int16{1},
			Parameters: [][]byte{{0, 0, 0, 7}, nil}, ResultFormatCodes: []int16{0, 1}},
		&pgproto3.Bind{},
		&pgproto3.Describe{ObjectType: 'S', Name: "s1"},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{Portal: "p", MaxRows: 10},
		&pgproto3.Close{ObjectType: 'S', Name: "s1"},
		&pgproto3.Sync{}, &pgproto3.Flush{}, &pgproto3.Terminate{},
		&pgproto3.CopyData{Data: []byte("1\n")}, &pgproto3.CopyDone{}, &pgproto3.CopyFail{Message: "no"},
	} {
		typ, body := enc(m)
		f.Add(typ, body)
		f.Add(typ, append(bytes.Clone(body), 0, 1)) // trailing bytes
		if len(body) > 0 {
			f.Add(typ, body[:len(body)-1]) // cut short
		}
	}
	f.Fuzz(func(t *testing.T, typ byte, body []byte) {
		ref, refErr := decodeFront(typ, body)
		if ref == nil {
			return // types the session handles elsewhere (F, p) or rejects
		}
		frame := frontFrame(typ, body)
		m, err := parseFront(typ, frame)
		if (err != nil) != (refErr != nil) {
			t.Fatalf("%c %q: parseFront error %v, pgproto3 error %v", typ, body, err, refErr)
		}
		if err != nil {
			return
		}
		want, _ := ref.Encode(nil)
		if typ == 'd' {
			want = frame
		}
		if !bytes.Equal(m.frame, want) {
			t.Fatalf("%c %q: forwards %q, pgproto3 re-encodes %q", typ, body, m.frame, want)
		}
		switch r := ref.(type) {
		case *pgproto3.Query:
			if string(m.sql) != r.String {
				t.Fatalf("Query text %q, want %q", m.sql, r.String)
			}
		case *pgproto3.Parse:
			if string(m.name) != r.Name || string(m.sql) != r.Query {
				t.Fatalf("Parse %q %q, want %q %q", m.name, m.sql, r.Name, r.Query)
			}
		case *pgproto3.Bind:
			if string(m.name) != r.PreparedStatement {
				t.Fatalf("Bind statement %q, want %q", m.name, r.PreparedStatement)
			}
		case *pgproto3.Describe:
			if m.obj != r.ObjectType || string(m.name) != r.Name {
				t.Fatalf("Describe %c %q, want %c %q", m.obj, m.name, r.ObjectType, r.Name)
			}
		case *pgproto3.Close:
			if m.obj != r.ObjectType || string(m.name) != r.Name {
				t.Fatalf("Close %c %q, want %c %q", m.obj, m.name, r.ObjectType, r.Name)
			}
		}
	})
}

func TestParseFrontRejects(t *testing.T) {
	for _, tc := range []struct {
		typ  byte
		body string
	}{
		{'Q', "SELECT 1"},          // no terminator
		{'Q', "SELECT\x001\x00"},   // two strings
		{'S', "x"},                 // Sync with a body
		{'B', "\x00s\x00\x00\x01"}, // format code count without codes
		{'Z', ""},                  // a backend message type
	} {
		if _, err := parseFront(tc.typ, frontFrame(tc.typ, []byte(tc.body))); err == nil {
			t.Errorf("%c %q accepted", tc.typ, tc.body)
		}
	}
}

// TestMsgWriterEncodings: the writer's hand-encoded messages are
// pgproto3's encodings.
func TestMsgWriterEncodings(t *testing.T) {
	var got bytes.Buffer
	w := newMsgWriter(&got)
	w.query("SELECT 1")
	w.readyForQuery('T')
	w.sync()
	w.flushMsg()
	w.raw([]byte("raw"))
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}
	var want []byte
	for _, m := range []pgproto3.Message{&pgproto3.Query{String: "SELECT 1"}, &pgproto3.ReadyForQuery{TxStatus: 'T'},
		&pgproto3.Sync{}, &pgproto3.Flush{}} {
		want, _ = m.Encode(want)
	}
	want = append(want, "raw"...)
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("wrote %q, want %q", got.Bytes(), want)
	}
	if err := w.flush(); err != nil || got.Len() != len(want) {
		t.Fatalf("an empty flush wrote or failed: %v", err)
	}
}
