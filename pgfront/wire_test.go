package pgfront

import (
	"bytes"
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
