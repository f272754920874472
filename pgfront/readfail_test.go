package pgfront

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/spokeproxy/spokeproxy/lab"
)

// A read that the standby refuses with 25006 after some of its rows
// reached the client (a function that writes, called on a late row) is
// not re-run on the hub: the client has the rows and gets the standby's
// error, cleanly, and the session goes on. Flushed (the client waits for
// the rows before its Sync), synced, and as a simple Query.
func TestLabPGReadFailsAfterRows(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	ctx := ctxT(t)
	hub, err := pgconn.Connect(ctx, l.HubAppDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close(context.Background())
	if _, err := hub.Exec(ctx, `CREATE OR REPLACE FUNCTION late_note(b text) RETURNS bigint LANGUAGE sql AS
		$$ INSERT INTO notes (account_id, body) VALUES (1, b) RETURNING id $$`).ReadAll(); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReplicaCaughtUp(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// 3000 rows fill the standby's 8 KiB send buffer several times over
	// before the last one writes.
	query := func(tag string) string {
		return fmt.Sprintf("SELECT i, CASE WHEN i = 3000 THEN late_note('%s') END FROM generate_series(1, 3000) i", tag)
	}
	onHub := func(t *testing.T, tag string) {
		t.Helper()
		res := hub.ExecParams(ctx, "SELECT count(*)::text FROM notes WHERE body = $1", [][]byte{[]byte(tag)}, nil, nil, nil).Read()
		if res.Err != nil || string(res.Rows[0][0]) != "0" {
			t.Fatalf("the read was re-run on the hub: %v rows %v", res.Rows, res.Err)
		}
	}
	// rowsThenError reads DataRows up to an ErrorResponse, which must be
	// the standby's 25006, with rows before it.
	rowsThenError := func(t *testing.T, c *rawClient) {
		t.Helper()
		rows := 0
		for {
			_ = c.hc.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			msg, err := c.fe.Receive()
			if err != nil {
				t.Fatalf("after %d rows: %v", rows, err)
			}
			switch m := msg.(type) {
			case *pgproto3.DataRow:
				rows++
			case *pgproto3.ErrorResponse:
				if m.Code != "25006" {
					t.Fatalf("after %d rows: %s %s, want the standby's 25006", rows, m.Code, m.Message)
				}
				if rows == 0 {
					t.Fatal("the error came before any row: this test needs rows delivered first")
				}
				t.Logf("%d rows, then %s: %s", rows, m.Code, m.Message)
				return
			case *pgproto3.ParseComplete, *pgproto3.BindComplete, *pgproto3.RowDescription:
			default:
				t.Fatalf("after %d rows: unexpected %T", rows, msg)
			}
		}
	}
	usable := func(t *testing.T, c *rawClient) {
		t.Helper()
		if got := c.query("SELECT pg_is_in_recovery()::text"); len(got) != 1 || got[0] != "true" {
			t.Fatalf("read after the failed read: %q", got)
		}
	}
	stamp := time.Now().UnixNano()

	for _, mode := range []string{"flushed", "synced", "simple"} {
		t.Run(mode, func(t *testing.T) {
			c := f.raw(t)
			tag := fmt.Sprintf("late %s %d", mode, stamp)
			before := counterValue(t, f.m.SafetyNetReruns)
			switch mode {
			case "flushed":
				c.send(&pgproto3.Parse{Query: query(tag)}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Flush{})
				rowsThenError(t, c)
				c.send(&pgproto3.Sync{})
			case "synced":
				c.send(&pgproto3.Parse{Query: query(tag)}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
				rowsThenError(t, c)
			case "simple":
				c.send(&pgproto3.Query{String: query(tag)})
				rowsThenError(t, c)
			}
			if z := expect[*pgproto3.ReadyForQuery](c); z.TxStatus != 'I' {
				t.Fatalf("ReadyForQuery %c", z.TxStatus)
			}
			if got := counterValue(t, f.m.SafetyNetReruns) - before; got != 0 {
				t.Errorf("safety net re-runs: %v, want 0 (rows had reached the client)", got)
			}
			onHub(t, tag)
			usable(t, c)
		})
	}
}
