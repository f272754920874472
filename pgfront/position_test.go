package pgfront

import (
	"context"
	"fmt"
	"testing"
	"time"

	toxiclient "github.com/Shopify/toxiproxy/v2/client"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/spokeproxy/spokeproxy/lab"
	"github.com/spokeproxy/spokeproxy/routing"
)

// waitOnStandby polls the standby until q returns true.
func waitOnStandby(ctx context.Context, t *testing.T, standby *pgx.Conn, q string) {
	t.Helper()
	for {
		var ok bool
		if err := standby.QueryRow(ctx, q).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("standby never got: %s", q)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// readsOwnWrite resumes replay on the standby in a moment and checks that
// the session's next read through c, asked at once, sees the note body it
// wrote (while replay was paused): it waited for the write's position.
func readsOwnWrite(ctx context.Context, t *testing.T, replay *replayPause, c *pgx.Conn, body, after string) {
	t.Helper()
	replay.resumeAfter(300 * time.Millisecond)
	var n int
	var standby bool
	err := c.QueryRow(ctx, "SELECT count(*), pg_is_in_recovery() FROM notes WHERE body = $1", body).Scan(&n, &standby)
	replay.wait()
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("read after %s: count %d (standby %v), want 1", after, n, standby)
	}
}

// TestLabPGPositionCapture: every unit that commits on the hub learns the
// hub's position, so the session's next read on the standby waits for it
// (and, under consistency: site, the write's answer waits); a unit that
// leaves a transaction open does not run the position query inside it.
// Replay is paused on the standby while the write runs: a read that does
// not wait misses it. With units that once hung or escaped their
// transaction: a COPY FROM STDIN that fails to start, a FunctionCall
// (large objects) in a transaction on the replica.
func TestLabPGPositionCapture(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	hubSuper := superConn(t, l.HubSuperDSN(lab.AppDatabase))
	standby := superConn(t, l.ReplicaSuperDSN(lab.AppDatabase))
	ctx0 := ctxT(t)
	// A function that writes but is not on the hub function list: the
	// standby refuses it with 25006 (the safety net's case).
	mustExec(ctx0, t, hubSuper, `CREATE FUNCTION public.add_note(b text) RETURNS int LANGUAGE sql
		AS $$ INSERT INTO notes (account_id, body) VALUES (1, b); SELECT 1 $$`)
	waitOnStandby(ctx0, t, standby, "SELECT to_regprocedure('public.add_note(text)') IS NOT NULL")

	// The safety net re-runs an autocommit "read" that writes on the hub:
	// that run learns the position.
	t.Run("safety net rerun", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		replay := newReplayPause(t, l)
		body := fmt.Sprintf("rerun %d", time.Now().UnixNano())
		replay.pause(ctx, t)
		var one int
		if err := c.QueryRow(ctx, "SELECT add_note($1)", body).Scan(&one); err != nil {
			t.Fatal(err)
		}
		readsOwnWrite(ctx, t, replay, c, body, "a re-run write")
	})

	// "ROLLBACK; INSERT" in a transaction already on the hub: the INSERT
	// commits on its own.
	t.Run("ROLLBACK then write in a hub transaction", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		pc := c.PgConn()
		replay := newReplayPause(t, l)
		mustExec(ctx, t, c, "BEGIN", "INSERT INTO notes (account_id, body) VALUES (1, 'moves the transaction')")
		body := fmt.Sprintf("after rollback %d", time.Now().UnixNano())
		replay.pause(ctx, t)
		if _, err := pc.Exec(ctx, "ROLLBACK; INSERT INTO notes (account_id, body) VALUES (1, '"+body+"')").ReadAll(); err != nil {
			t.Fatal(err)
		}
		readsOwnWrite(ctx, t, replay, c, body, "ROLLBACK; INSERT")
	})

	// A read sent with a SET in one Query waits for the position too.
	t.Run("SET with a read", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		pc := c.PgConn()
		replay := newReplayPause(t, l)
		body := fmt.Sprintf("set then read %d", time.Now().UnixNano())
		replay.pause(ctx, t)
		mustExec(ctx, t, c, "INSERT INTO notes (account_id, body) VALUES (1, '"+body+"')")
		replay.resumeAfter(300 * time.Millisecond)
		rr, err := pc.Exec(ctx, "SET application_name = 'position capture'; SELECT count(*), pg_is_in_recovery() FROM notes WHERE body = '"+body+"'").ReadAll()
		replay.wait()
		if err != nil {
			t.Fatal(err)
		}
		row := rr[len(rr)-1].Rows[0]
		if string(row[0]) != "1" {
			t.Errorf("SET; SELECT after the write: count %s (standby %s), want 1", row[0], row[1])
		}
	})

	// COMMIT AND CHAIN owes its position to the end of the transaction it
	// opened; a PREPARE TRANSACTION (refused in the lab, which ends the
	// transaction too) pays it.
	t.Run("AND CHAIN then PREPARE TRANSACTION", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		pc := c.PgConn()
		replay := newReplayPause(t, l)
		body := fmt.Sprintf("chain then prepare %d", time.Now().UnixNano())
		mustExec(ctx, t, c, "BEGIN", "SELECT 1")
		replay.pause(ctx, t)
		mustExec(ctx, t, c, "INSERT INTO notes (account_id, body) VALUES (1, '"+body+"')", "COMMIT AND CHAIN")
		_, perr := pc.Exec(ctx, "PREPARE TRANSACTION 'chained_then_prepared'").ReadAll()
		t.Logf("PREPARE TRANSACTION: %v, status %c", perr, pc.TxStatus())
		if perr == nil {
			defer hubSuper.Exec(context.Background(), "ROLLBACK PREPARED 'chained_then_prepared'")
		}
		readsOwnWrite(ctx, t, replay, c, body, "COMMIT AND CHAIN; PREPARE TRANSACTION")
	})

	// A FunctionCall inside a transaction open on the replica moves the
	// transaction to the hub, as a write does, rather than running there
	// on its own.
	t.Run("FunctionCall in a replica transaction", func(t *testing.T) {
		ctx := ctxT(t)
		var fnOID uint32
		if err := hubSuper.QueryRow(ctx, "SELECT 'public.add_note(text)'::regprocedure::oid").Scan(&fnOID); err != nil {
			t.Fatal(err)
		}
		c := f.raw(t)
		body := fmt.Sprintf("fastpath %d", time.Now().UnixNano())
		c.query("BEGIN")
		c.query("SELECT 1")
		c.send(&pgproto3.FunctionCall{Function: fnOID, ArgFormatCodes: []uint16{0}, Arguments: [][]byte{[]byte(body)}})
		expect[*pgproto3.FunctionCallResponse](c)
		z := expect[*pgproto3.ReadyForQuery](c)
		if z.TxStatus != 'T' {
			t.Errorf("FunctionCall in a transaction: ReadyForQuery %c, want T", z.TxStatus)
		}
		c.query("ROLLBACK")
		var n int
		if err := hubSuper.QueryRow(ctx, "SELECT count(*) FROM notes WHERE body = $1", body).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("the FunctionCall's write outlived the ROLLBACK of its transaction: %d rows on the hub", n)
		}
	})

	// libpq's large objects (lo_creat, lo_open, lowrite through the
	// fast path, in a transaction as libpq requires).
	t.Run("large object through the fast path", func(t *testing.T) {
		ctx := ctxT(t)
		oid := func(name string) uint32 {
			var o uint32
			if err := hubSuper.QueryRow(ctx, "SELECT '"+name+"'::regprocedure::oid").Scan(&o); err != nil {
				t.Fatal(err)
			}
			return o
		}
		i32 := func(v int32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }
		c := f.raw(t)
		c.query("BEGIN")
		call := func(fn uint32, args ...[]byte) ([]byte, *pgproto3.ErrorResponse) {
			fmts := make([]uint16, len(args))
			for i := range fmts {
				fmts[i] = 1
			}
			c.send(&pgproto3.FunctionCall{Function: fn, ArgFormatCodes: fmts, Arguments: args, ResultFormatCode: 1})
			var out []byte
			var e *pgproto3.ErrorResponse
			for {
				_ = c.hc.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				m, err := c.fe.Receive()
				if err != nil {
					t.Fatal(err)
				}
				switch m := m.(type) {
				case *pgproto3.FunctionCallResponse:
					out = append([]byte(nil), m.Result...)
				case *pgproto3.ErrorResponse:
					cp := *m
					e = &cp
				case *pgproto3.ReadyForQuery:
					return out, e
				}
			}
		}
		lobj, e := call(oid("lo_creat(integer)"), i32(-1))
		if e != nil {
			t.Fatalf("lo_creat: %s %s", e.Code, e.Message)
		}
		fd, e := call(oid("lo_open(oid, integer)"), lobj, i32(0x00020000)) // INV_WRITE
		if e != nil {
			t.Fatalf("lo_open: %s %s", e.Code, e.Message)
		}
		if _, e := call(oid("lowrite(integer, bytea)"), fd, []byte("hello")); e != nil {
			t.Errorf("lowrite on the descriptor lo_open returned in the same transaction: %s %s", e.Code, e.Message)
		}
		c.query("ROLLBACK")
	})

	// A simple Query of several statements that holds COPY FROM STDIN.
	t.Run("write and COPY in one Query", func(t *testing.T) {
		ctx := ctxT(t)
		replay := newReplayPause(t, l)
		c := f.raw(t)
		tag := fmt.Sprintf("multi copy %d", time.Now().UnixNano())
		replay.pause(ctx, t)
		c.send(&pgproto3.Query{String: "INSERT INTO notes (account_id, body) VALUES (1, '" + tag + " a'); " + copyNotes})
		expect[*pgproto3.CopyInResponse](c, "CommandComplete")
		c.send(&pgproto3.CopyData{Data: []byte("1\t" + tag + " b\n")}, &pgproto3.CopyDone{})
		expect[*pgproto3.ReadyForQuery](c, "CommandComplete")
		replay.resumeAfter(300 * time.Millisecond)
		got := c.query("SELECT count(*)::text || ' ' || pg_is_in_recovery()::text FROM notes WHERE body LIKE '" + tag + " %'")
		replay.wait()
		if len(got) != 1 || got[0][:1] != "2" {
			t.Errorf("read after INSERT; COPY: %q, want 2 rows", got)
		}
	})

	// An autocommit COPY FROM STDIN that fails before CopyInResponse is
	// answered (its position query was never sent behind it).
	t.Run("COPY that fails to start", func(t *testing.T) {
		c := f.raw(t)
		c.send(&pgproto3.Query{String: "COPY no_such_table FROM STDIN"})
		gotErr := false
		for {
			_ = c.hc.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			m, err := c.fe.Receive()
			if err != nil {
				t.Fatalf("COPY of a missing table (error seen: %v): no ReadyForQuery: %v", gotErr, err)
			}
			if _, ok := m.(*pgproto3.ErrorResponse); ok {
				gotErr = true
			}
			if _, ok := m.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
	})

	// The same through the extended protocol.
	t.Run("extended COPY that fails to start", func(t *testing.T) {
		c := f.raw(t)
		c.send(&pgproto3.Parse{Query: "COPY no_such_table FROM STDIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		for {
			_ = c.hc.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			m, err := c.fe.Receive()
			if err != nil {
				t.Fatalf("extended COPY of a missing table: no ReadyForQuery: %v", err)
			}
			if _, ok := m.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
	})

	// A unit that leaves a transaction open ("BEGIN; LOCK TABLE") gets no
	// position query: it would take the transaction's snapshot first.
	t.Run("BEGIN; LOCK then SET TRANSACTION", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		pc := c.PgConn()
		if _, err := pc.Exec(ctx, "BEGIN; LOCK TABLE notes IN SHARE MODE").ReadAll(); err != nil {
			t.Fatal(err)
		}
		_, err := pc.Exec(ctx, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").ReadAll()
		pc.Exec(ctx, "ROLLBACK").ReadAll()
		if err != nil {
			t.Errorf("SET TRANSACTION after BEGIN; LOCK TABLE: %v (PostgreSQL accepts it: LOCK takes no snapshot)", err)
		}
	})

	// The link fails after the write's answer, before its position
	// query's: the session's next local read asks the hub (on a new
	// connection) where it is, and waits for that.
	t.Run("position answer lost", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		pc := c.PgConn()
		replay := newReplayPause(t, l)
		mustExec(ctx, t, c, "INSERT INTO notes (account_id, body) VALUES (1, 'attaches the hub connection')")
		px, err := l.Toxiproxy().Proxy(lab.LinkPG)
		if err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf("position lost %d", time.Now().UnixNano())
		replay.pause(ctx, t)
		// CommandComplete "INSERT 0 1" (16 bytes) and ReadyForQuery (6):
		// what comes after, the position query's answer, is cut.
		lostPosition := func(body string) {
			t.Helper()
			if _, err := px.AddToxic("cut_after_unit", "limit_data", "downstream", 1, toxiclient.Attributes{"bytes": 22}); err != nil {
				t.Fatal(err)
			}
			_, werr := pc.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, '"+body+"')").ReadAll()
			if err := px.RemoveToxic("cut_after_unit"); err != nil {
				t.Fatal(err)
			}
			if werr != nil {
				t.Fatalf("the write: %v", werr)
			}
			f.waitHub(t, true)
		}
		lostPosition(body)
		readsOwnWrite(ctx, t, replay, c, body, "a write whose position answer was lost")

		// With the hub unreachable when the read comes, the read goes on
		// locally, as after a wait that timed out (on_timeout: hub).
		lostPosition(body + " then the link is cut")
		f.cut(t)
		var standby bool
		if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standby); err != nil || !standby {
			t.Errorf("read with the position lost and the hub unreachable: standby %v, %v; want it answered locally", standby, err)
		}
	})

	// Under consistency: site a write's acknowledgement waits until the
	// standby has it: other sessions at the site read it at once.
	siteFront := startFront(t, l, func(c *Config) { c.Consistency = routing.ConsistencySite })
	// ackedAfterStandby runs write(body) through a new site-mode session
	// while replay is paused (resumed a moment later) and checks that the
	// standby has the note once the write is answered.
	ackedAfterStandby := func(t *testing.T, what string, setup []string, write func(ctx context.Context, c *pgx.Conn, body string) error) {
		ctx := ctxT(t)
		c := siteFront.connect(t, nil)
		replay := newReplayPause(t, l)
		mustExec(ctx, t, c, setup...)
		body := fmt.Sprintf("site %s %d", what, time.Now().UnixNano())
		replay.pause(ctx, t)
		replay.resumeAfter(300 * time.Millisecond)
		err := write(ctx, c, body)
		var n int
		if err == nil {
			err = standby.QueryRow(ctx, "SELECT count(*) FROM notes WHERE body = $1", body).Scan(&n)
		}
		replay.wait()
		if err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("standby after %s was answered: %d rows, want 1", what, n)
		}
	}
	insert := func(ctx context.Context, c *pgx.Conn, body string) error {
		_, err := c.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, $1)", body)
		return err
	}
	t.Run("site: autocommit write", func(t *testing.T) {
		ackedAfterStandby(t, "an autocommit write", nil, insert)
	})
	t.Run("site: pinned session", func(t *testing.T) {
		ackedAfterStandby(t, "a pinned session's write", []string{"LISTEN position_capture"}, insert)
	})
	t.Run("site: safety net rerun", func(t *testing.T) {
		ackedAfterStandby(t, "a re-run write", nil, func(ctx context.Context, c *pgx.Conn, body string) error {
			var one int
			return c.QueryRow(ctx, "SELECT add_note($1)", body).Scan(&one)
		})
	})
}
