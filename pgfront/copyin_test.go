package pgfront

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/spokeproxy/spokeproxy/lab"
)

// rawClient is a session through the front driven message by message:
// pgconn logs in (SCRAM), then hands over its socket.
type rawClient struct {
	t  *testing.T
	fe *pgproto3.Frontend
	hc *pgconn.HijackedConn
}

func (f *front) raw(t *testing.T) *rawClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pc, err := pgconn.Connect(ctx, f.dsn(lab.AppUser, lab.AppPassword))
	if err != nil {
		t.Fatalf("connect through proxy: %v", err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hc.Conn.Close() })
	return &rawClient{t: t, fe: hc.Frontend, hc: hc}
}

func (c *rawClient) send(msgs ...pgproto3.FrontendMessage) {
	c.t.Helper()
	for _, m := range msgs {
		c.fe.Send(m)
	}
	if err := c.fe.Flush(); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// expect reads messages until one of type want arrives (each within 10 s)
// and returns it; any other message than those named in skip fails the
// test. An ErrorResponse not wanted fails with its SQLSTATE.
func expect[T pgproto3.BackendMessage](c *rawClient, skip ...string) T {
	c.t.Helper()
	for {
		_ = c.hc.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		msg, err := c.fe.Receive()
		if err != nil {
			var zero T
			c.t.Fatalf("waiting for %T: %v", zero, err)
		}
		if m, ok := msg.(T); ok {
			return m
		}
		name := fmt.Sprintf("%T", msg)
		ok := false
		for _, s := range skip {
			ok = ok || strings.HasSuffix(name, "."+s)
		}
		if !ok {
			var zero T
			if e, isErr := msg.(*pgproto3.ErrorResponse); isErr {
				c.t.Fatalf("waiting for %T: error %s %s", zero, e.Code, e.Message)
			}
			c.t.Fatalf("waiting for %T: got %s %+v", zero, name, msg)
		}
	}
}

// query runs a simple query and returns its rows' first column.
func (c *rawClient) query(sql string) []string {
	c.t.Helper()
	c.send(&pgproto3.Query{String: sql})
	var out []string
	for {
		_ = c.hc.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		msg, err := c.fe.Receive()
		if err != nil {
			c.t.Fatalf("%s: %v", sql, err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			out = append(out, string(m.Values[0]))
		case *pgproto3.ErrorResponse:
			c.t.Fatalf("%s: %s %s", sql, m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return out
		}
	}
}

func copyRows(tag string, n int) []pgproto3.FrontendMessage {
	var msgs []pgproto3.FrontendMessage
	for i := 0; i < n; i++ {
		msgs = append(msgs, &pgproto3.CopyData{Data: []byte(fmt.Sprintf("1\t%s %d\n", tag, i))})
	}
	return msgs
}

const copyNotes = "COPY notes (account_id, body) FROM STDIN"

// COPY FROM STDIN through the extended protocol, as real clients send it:
// libpq's PQsendQueryParams and tokio-postgres send Sync right after the
// Execute and another after CopyDone (the server ignores Sync during
// COPY); a client may also Flush and wait for CopyInResponse. Each runs
// on the hub with its data streamed, and the session's next read on the
// replica sees the rows.
func TestLabPGCopyInExtended(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	stamp := time.Now().UnixNano()

	count := func(c *rawClient, tag string) {
		t.Helper()
		got := c.query(fmt.Sprintf("SELECT count(*)::text || ' ' || pg_is_in_recovery()::text FROM notes WHERE body LIKE '%s %%'", tag))
		if len(got) != 1 || got[0] != "3 true" {
			t.Fatalf("rows after the COPY: %q, want 3 read on the standby", got)
		}
	}

	t.Run("sync before and after the data", func(t *testing.T) {
		c := f.raw(t)
		tag := fmt.Sprintf("sync-%d", stamp)
		c.send(&pgproto3.Parse{Query: copyNotes}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'},
			&pgproto3.Execute{}, &pgproto3.Sync{})
		expect[*pgproto3.CopyInResponse](c, "ParseComplete", "BindComplete", "NoData")
		c.send(append(copyRows(tag, 3), &pgproto3.CopyDone{}, &pgproto3.Sync{})...)
		if cc := expect[*pgproto3.CommandComplete](c); string(cc.CommandTag) != "COPY 3" {
			t.Fatalf("command tag %q", cc.CommandTag)
		}
		if z := expect[*pgproto3.ReadyForQuery](c); z.TxStatus != 'I' {
			t.Fatalf("ReadyForQuery %c", z.TxStatus)
		}
		count(c, tag)
	})

	t.Run("flush and wait for CopyInResponse", func(t *testing.T) {
		c := f.raw(t)
		tag := fmt.Sprintf("flush-%d", stamp)
		c.send(&pgproto3.Parse{Query: copyNotes}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
		expect[*pgproto3.CopyInResponse](c, "ParseComplete", "BindComplete")
		c.send(copyRows(tag, 3)...)
		c.send(&pgproto3.CopyDone{}, &pgproto3.Flush{})
		if cc := expect[*pgproto3.CommandComplete](c); string(cc.CommandTag) != "COPY 3" {
			t.Fatalf("command tag %q", cc.CommandTag)
		}
		c.send(&pgproto3.Sync{})
		if z := expect[*pgproto3.ReadyForQuery](c); z.TxStatus != 'I' {
			t.Fatalf("ReadyForQuery %c", z.TxStatus)
		}
		count(c, tag)
	})

	t.Run("streamed", func(t *testing.T) {
		// The hub has processed rows while the client still holds CopyDone:
		// the proxy streams, it does not collect the data first.
		c := f.raw(t)
		tag := fmt.Sprintf("stream-%d", stamp)
		c.send(&pgproto3.Parse{Query: copyNotes}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
		expect[*pgproto3.CopyInResponse](c, "ParseComplete", "BindComplete")
		c.send(copyRows(tag, 5000)...)
		hub, err := pgconn.Connect(ctxT(t), l.HubSuperDSN(lab.AppDatabase))
		if err != nil {
			t.Fatal(err)
		}
		defer hub.Close(context.Background())
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			res := hub.ExecParams(ctxT(t), "SELECT coalesce(max(tuples_processed), 0)::text FROM pg_stat_progress_copy", nil, nil, nil, nil).Read()
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			if string(res.Rows[0][0]) != "0" {
				t.Logf("hub processed %s rows before CopyDone", res.Rows[0][0])
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the hub saw no row of the COPY before CopyDone: the data is not streamed")
			}
		}
		c.send(&pgproto3.CopyDone{}, &pgproto3.Sync{})
		if cc := expect[*pgproto3.CommandComplete](c); string(cc.CommandTag) != "COPY 5000" {
			t.Fatalf("command tag %q", cc.CommandTag)
		}
		expect[*pgproto3.ReadyForQuery](c)
	})

	t.Run("flush, then sync after CopyDone", func(t *testing.T) {
		c := f.raw(t)
		tag := fmt.Sprintf("flushsync-%d", stamp)
		c.send(&pgproto3.Parse{Query: copyNotes}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
		expect[*pgproto3.CopyInResponse](c, "ParseComplete", "BindComplete")
		c.send(append(copyRows(tag, 3), &pgproto3.CopyDone{}, &pgproto3.Sync{})...)
		if cc := expect[*pgproto3.CommandComplete](c); string(cc.CommandTag) != "COPY 3" {
			t.Fatalf("command tag %q", cc.CommandTag)
		}
		expect[*pgproto3.ReadyForQuery](c)
		count(c, tag)
	})

	t.Run("bad row", func(t *testing.T) {
		c := f.raw(t)
		c.send(&pgproto3.Parse{Query: copyNotes}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
		expect[*pgproto3.CopyInResponse](c, "ParseComplete", "BindComplete")
		c.send(&pgproto3.CopyData{Data: []byte("not a number\tx\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
		e := expect[*pgproto3.ErrorResponse](c)
		if e.Code != "22P02" {
			t.Fatalf("bad row: %s %s, want 22P02", e.Code, e.Message)
		}
		if z := expect[*pgproto3.ReadyForQuery](c); z.TxStatus != 'I' {
			t.Fatalf("ReadyForQuery %c", z.TxStatus)
		}
		if got := c.query("SELECT 1"); len(got) != 1 || got[0] != "1" {
			t.Fatalf("read after a failed COPY: %q", got)
		}
	})

	t.Run("link cut during the data", func(t *testing.T) {
		c := f.raw(t)
		tag := fmt.Sprintf("cut-%d", stamp)
		c.send(&pgproto3.Parse{Query: copyNotes}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		expect[*pgproto3.CopyInResponse](c, "ParseComplete", "BindComplete")
		c.send(copyRows(tag, 3)...)
		f.cut(t)
		c.send(append(copyRows(tag, 3), &pgproto3.CopyDone{}, &pgproto3.Sync{})...)
		// The COPY never reached its Sync: it did not commit, and the
		// client is told the hub connection is gone (not "outcome unknown").
		e := expect[*pgproto3.ErrorResponse](c, "ParameterStatus")
		if e.Code != "08006" {
			t.Fatalf("COPY cut mid-way: %s %s, want 08006", e.Code, e.Message)
		}
		if z := expect[*pgproto3.ReadyForQuery](c, "ParameterStatus"); z.TxStatus != 'I' {
			t.Fatalf("ReadyForQuery %c", z.TxStatus)
		}
		if got := c.query("SELECT pg_is_in_recovery()::text"); len(got) != 1 || got[0] != "true" {
			t.Fatalf("read after the cut COPY: %q", got)
		}
		hub, err := pgconn.Connect(ctxT(t), l.HubAppDSN())
		if err != nil {
			t.Fatal(err)
		}
		defer hub.Close(context.Background())
		res := hub.ExecParams(ctxT(t), "SELECT count(*)::text FROM notes WHERE body LIKE $1", [][]byte{[]byte(tag + " %")}, nil, nil, nil).Read()
		if res.Err != nil || string(res.Rows[0][0]) != "0" {
			t.Fatalf("rows of the cut COPY on the hub: %v %v", res.Rows, res.Err)
		}
	})

	t.Run("hub down: refused, session usable", func(t *testing.T) {
		c := f.raw(t)
		f.cut(t)
		c.send(&pgproto3.Parse{Query: copyNotes}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
		e := expect[*pgproto3.ErrorResponse](c, "ParseComplete", "BindComplete")
		if e.Code != "25006" {
			t.Fatalf("COPY FROM STDIN with the hub down: %s %s, want 25006", e.Code, e.Message)
		}
		// A client that streams its data anyway: ignored, as PostgreSQL
		// ignores CopyData outside COPY.
		c.send(append(copyRows("refused", 2), &pgproto3.CopyDone{}, &pgproto3.Sync{})...)
		if z := expect[*pgproto3.ReadyForQuery](c, "ParameterStatus"); z.TxStatus != 'I' {
			t.Fatalf("ReadyForQuery %c", z.TxStatus)
		}
		if got := c.query("SELECT pg_is_in_recovery()::text"); len(got) != 1 || got[0] != "true" {
			t.Fatalf("read after the refused COPY: %q", got)
		}
	})
}
