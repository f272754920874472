package pgfront

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func startupPacket(code uint32, body []byte) []byte {
	b := make([]byte, 8, 8+len(body))
	binary.BigEndian.PutUint32(b, uint32(8+len(body)))
	binary.BigEndian.PutUint32(b[4:], code)
	return append(b, body...)
}

func TestReadStartup(t *testing.T) {
	params := []byte("user\x00app\x00database\x00appdb\x00\x00")
	cases := []struct {
		name string
		in   []byte
		want string // message type or SQLSTATE
	}{
		{"3.0", startupPacket(3<<16, params), "startup"},
		{"3.2 negotiates down", startupPacket(3<<16|2, params), "startup"},
		{"2.0", startupPacket(2<<16, params), "0A000"},
		{"4.0", startupPacket(4<<16, params), "0A000"},
		{"ssl", startupPacket(codeSSL, nil), "ssl"},
		{"gssenc", startupPacket(codeGSSEnc, nil), "gss"},
		{"cancel", startupPacket(codeCancel, []byte{0, 0, 0, 7, 0, 0, 0, 9}), "cancel"},
		{"no terminator", startupPacket(3<<16, []byte("user\x00app\x00")), "08P01"},
		{"odd pairs", startupPacket(3<<16, []byte("user\x00\x00")), "08P01"},
		{"too long", append([]byte{0, 1, 0, 0}, make([]byte, 70000)...), "08P01"},
		{"too short", []byte{0, 0, 0, 4}, "08P01"},
	}
	for _, tc := range cases {
		msg, err := readStartup(bytes.NewReader(tc.in))
		got := ""
		var se *startupError
		switch m := msg.(type) {
		case *pgproto3.StartupMessage:
			got = "startup"
			if m.Parameters["user"] != "app" || m.Parameters["database"] != "appdb" {
				t.Errorf("%s: parameters %v", tc.name, m.Parameters)
			}
		case *pgproto3.SSLRequest:
			got = "ssl"
		case *pgproto3.GSSEncRequest:
			got = "gss"
		case *pgproto3.CancelRequest:
			got = "cancel"
			if m.ProcessID != 7 {
				t.Errorf("%s: pid %d", tc.name, m.ProcessID)
			}
		}
		if errors.As(err, &se) {
			got = se.Code
		}
		if got != tc.want {
			t.Errorf("%s: got %q (err %v), want %q", tc.name, got, err, tc.want)
		}
	}
}

func FuzzReadStartup(f *testing.F) {
	f.Add(startupPacket(3<<16, []byte("user\x00app\x00\x00")))
	f.Add(startupPacket(codeSSL, nil))
	f.Add(startupPacket(codeCancel, []byte{0, 0, 0, 7, 0, 0, 0, 9}))
	f.Add(startupPacket(2<<16, nil))
	f.Fuzz(func(t *testing.T, in []byte) {
		msg, err := readStartup(bytes.NewReader(in))
		if err == nil && msg == nil {
			t.Fatal("nil message without error")
		}
		if sm, ok := msg.(*pgproto3.StartupMessage); ok && sm.ProtocolVersion>>16 != 3 {
			t.Fatalf("accepted protocol %d", sm.ProtocolVersion)
		}
	})
}
