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

// settingBoth reads a setting through the session on the standby (a
// read) and on the hub (beside a write); unset reads as "".
func settingBoth(t *testing.T, run func(string) ([][]byte, error), name string) (standby, hub string) {
	t.Helper()
	return valueBoth(t, run, "coalesce(current_setting('"+name+"', true), '')")
}

// valueBoth evaluates expr through the session on the standby (a read)
// and on the hub (beside a write).
func valueBoth(t *testing.T, run func(string) ([][]byte, error), expr string) (standby, hub string) {
	t.Helper()
	for _, q := range []struct{ sql, inRecovery string }{
		{"SELECT " + expr + ", pg_is_in_recovery()", "t"},
		{"INSERT INTO notes (account_id, body) VALUES (1, 'setting probe') RETURNING " + expr + ", pg_is_in_recovery()", "f"},
	} {
		row, err := run(q.sql)
		if err != nil {
			t.Fatalf("%s: %v", q.sql, err)
		}
		if string(row[1]) != q.inRecovery {
			t.Fatalf("%s ran with pg_is_in_recovery() %s", q.sql, row[1])
		}
		if q.inRecovery == "t" {
			standby = string(row[0])
		} else {
			hub = string(row[0])
		}
	}
	return standby, hub
}

// lastRow runs q as one simple Query on pc and returns its last result's
// first row.
func lastRow(ctx context.Context, pc *pgconn.PgConn) func(string) ([][]byte, error) {
	return func(q string) ([][]byte, error) {
		rr, err := pc.Exec(ctx, q).ReadAll()
		if err != nil {
			return nil, err
		}
		for i := len(rr) - 1; i >= 0; i-- {
			if len(rr[i].Rows) > 0 {
				return rr[i].Rows[0], nil
			}
		}
		return nil, fmt.Errorf("%s: no rows", q)
	}
}

// TestLabPGSetsWithReads: a simple Query of SETs and reads runs once, on
// one backend (the standby, or the hub when the wait for the session's
// position times out), and only its SETs reach the other backend, once
// they committed: a refused or failed Query changes no setting and writes
// nothing later. Reads beside transaction control wait for the position
// too, and a FunctionCall in a READ ONLY transaction stays in its
// snapshot on the standby.
func TestLabPGSetsWithReads(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	short := startFront(t, l, func(c *Config) { c.WaitTimeout = 300 * time.Millisecond })
	refusing := startFront(t, l, func(c *Config) {
		c.WaitTimeout = 300 * time.Millisecond
		c.OnTimeoutHub = false
	})
	hubSuper := superConn(t, l.HubSuperDSN(lab.AppDatabase))
	standby := superConn(t, l.ReplicaSuperDSN(lab.AppDatabase))
	ctx0 := ctxT(t)
	mustExec(ctx0, t, hubSuper, `CREATE FUNCTION public.write_note(b text) RETURNS int LANGUAGE sql
		AS $$ INSERT INTO notes (account_id, body) VALUES (1, b); SELECT 1 $$`)
	waitOnStandby(ctx0, t, standby, "SELECT to_regprocedure('public.write_note(text)') IS NOT NULL")
	notesOnHub := func(ctx context.Context, t *testing.T, body string) int {
		var n int
		if err := hubSuper.QueryRow(ctx, "SELECT count(*) FROM notes WHERE body = $1", body).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// The session creates a table and reads it at once beside a SET: the
	// lagging standby has no such table, the wait times out and the Query
	// runs on the hub; the SET then reaches the standby too.
	t.Run("timed-out wait: the SET reaches both", func(t *testing.T) {
		ctx := ctxT(t)
		c := short.connect(t, nil)
		run := lastRow(ctx, c.PgConn())
		replay := newReplayPause(t, l)
		table := fmt.Sprintf("fresh_%d", time.Now().UnixNano())
		replay.pause(ctx, t)
		mustExec(ctx, t, c, "CREATE TABLE "+table+" (x int)")
		row, err := run("SET application_name = 'after_wait'; SELECT count(*), pg_is_in_recovery() FROM " + table)
		replay.resumeAfter(0)
		replay.wait()
		if err != nil {
			t.Fatal(err)
		}
		if string(row[1]) != "f" {
			t.Fatalf("the read of a table the standby lacks ran with pg_is_in_recovery() %s, want it on the hub", row[1])
		}
		waitOnStandby(ctx, t, standby, "SELECT to_regclass('public."+table+"') IS NOT NULL")
		sb, hub := settingBoth(t, run, "application_name")
		if sb != "after_wait" || hub != "after_wait" {
			t.Errorf("application_name: standby %q, hub %q; want after_wait on both", sb, hub)
		}
	})

	// A hub connection attached by the timed-out wait (the old one was
	// terminated) runs the Query once, not also as a kept SET.
	t.Run("timed-out wait on a new hub connection: the Query runs once", func(t *testing.T) {
		ctx := ctxT(t)
		c := short.connect(t, nil)
		replay := newReplayPause(t, l)
		replay.pause(ctx, t)
		var hubPID uint32
		if err := c.QueryRow(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'hub pid') RETURNING pg_backend_pid()").Scan(&hubPID); err != nil {
			t.Fatal(err)
		}
		terminateBackend(ctx, t, hubSuper, hubPID)
		body := fmt.Sprintf("once %d", time.Now().UnixNano())
		_, err := c.PgConn().Exec(ctx, "SET application_name = 'once'; SELECT write_note('"+body+"')").ReadAll()
		replay.resumeAfter(0)
		replay.wait()
		if err != nil {
			t.Fatal(err)
		}
		if n := notesOnHub(ctx, t, body); n != 1 {
			t.Errorf("one \"SET ...; SELECT write_note(...)\" wrote %d rows on the hub, want 1", n)
		}
	})

	// Under on_timeout: error the Query is refused: its SET is not taken
	// as applied (here it would send every later read to the hub).
	t.Run("refused after the wait: the SET changes nothing", func(t *testing.T) {
		ctx := ctxT(t)
		c := refusing.connect(t, nil)
		pc := c.PgConn()
		replay := newReplayPause(t, l)
		replay.pause(ctx, t)
		mustExec(ctx, t, c, "INSERT INTO notes (account_id, body) VALUES (1, 'refused read')")
		_, err := pc.Exec(ctx, "SET default_transaction_isolation = 'serializable'; SELECT 1").ReadAll()
		replay.resumeAfter(0)
		replay.wait()
		wantCode(t, err, "40001")
		waitOnStandby(ctx, t, standby, "SELECT EXISTS (SELECT 1 FROM notes WHERE body = 'refused read')")
		row, err := lastRow(ctx, pc)("SELECT current_setting('default_transaction_isolation'), pg_is_in_recovery()")
		if err != nil {
			t.Fatal(err)
		}
		if string(row[0]) != "read committed" || string(row[1]) != "t" {
			t.Errorf("after the refused Query: isolation %q, pg_is_in_recovery %s; want read committed, on the standby", row[0], row[1])
		}
	})

	// A "SET ...; SELECT f()" that fails on the standby (f writes: 25006)
	// is not replayed when a hub connection attaches later.
	t.Run("failed on the standby: nothing replayed on the hub", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		body := fmt.Sprintf("failed read %d", time.Now().UnixNano())
		_, err := c.PgConn().Exec(ctx, "SET application_name = 'kept'; SELECT write_note('"+body+"')").ReadAll()
		wantCode(t, err, "25006")
		mustExec(ctx, t, c, "INSERT INTO notes (account_id, body) VALUES (1, 'attaches the hub')")
		if n := notesOnHub(ctx, t, body); n != 0 {
			t.Errorf("the client was told 25006, yet the hub has %d rows the Query wrote", n)
		}
	})

	// With a hub connection attached, the read beside a SET runs on the
	// standby only: its result does not cross the WAN.
	t.Run("hub attached: the read runs on the standby only", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		body := fmt.Sprintf("attaches the hub %d", time.Now().UnixNano())
		mustExec(ctx, t, c, "INSERT INTO notes (account_id, body) VALUES (1, '"+body+"')")
		waitOnStandby(ctx, t, standby, "SELECT EXISTS (SELECT 1 FROM notes WHERE body = '"+body+"')")
		wan := f.wanBytes()
		if _, err := c.PgConn().Exec(ctx, "SET application_name = 'x'; SELECT repeat('x', 100000)").ReadAll(); err != nil {
			t.Fatal(err)
		}
		if d := f.wanBytes() - wan; d > 20000 {
			t.Errorf("SET; SELECT of 100 kB moved %.0f bytes over the WAN: the SELECT ran on the hub too", d)
		}
	})

	// SETs mirrored from one Query are parsed on the other backend under
	// the settings the Query arrived with, as where it ran: a Query that
	// turns standard_conforming_strings off or changes client_encoding
	// leaves the same value on both, whether the hub is attached then or
	// later.
	t.Run("SETs of one Query parse alike on both", func(t *testing.T) {
		for _, tc := range []struct{ name, query, expr string }{
			{"standard_conforming_strings", `SET standard_conforming_strings = off; SET app.parsed = 'a\b'; SELECT 1`, "current_setting('app.parsed')"},
			{"client_encoding", "SET client_encoding = 'LATIN1'; SET app.parsed = '\xc3\xa9'; SELECT 1", "encode(convert_to(current_setting('app.parsed'), 'UTF8'), 'hex')"},
		} {
			for _, attached := range []bool{true, false} {
				ctx := ctxT(t)
				c := f.connect(t, nil)
				pc := c.PgConn()
				if attached {
					mustExec(ctx, t, c, "INSERT INTO notes (account_id, body) VALUES (1, 'attaches the hub')")
				}
				if _, err := pc.Exec(ctx, tc.query).ReadAll(); err != nil {
					t.Fatalf("%s: %v", tc.query, err)
				}
				if sb, hub := valueBoth(t, lastRow(ctx, pc), tc.expr); hub != sb {
					t.Errorf("%s (hub attached before: %v): %q on the standby, %q on the hub", tc.name, attached, sb, hub)
				}
			}
		}
	})

	// A read in one Query with a SET LOCAL, or between BEGIN and COMMIT,
	// waits for the session's position.
	t.Run("reads beside transaction control wait", func(t *testing.T) {
		for _, q := range []string{
			"SET LOCAL statement_timeout = '5s'; SELECT count(*), pg_is_in_recovery() FROM notes WHERE body = '%s'",
			"BEGIN; SELECT count(*), pg_is_in_recovery() FROM notes WHERE body = '%s'; COMMIT",
		} {
			ctx := ctxT(t)
			c := f.connect(t, nil)
			replay := newReplayPause(t, l)
			body := fmt.Sprintf("ryw %d", time.Now().UnixNano())
			replay.pause(ctx, t)
			mustExec(ctx, t, c, "INSERT INTO notes (account_id, body) VALUES (1, '"+body+"')")
			replay.resumeAfter(300 * time.Millisecond)
			row, err := lastRow(ctx, c.PgConn())(fmt.Sprintf(q, body))
			replay.wait()
			if err != nil {
				t.Fatal(err)
			}
			if string(row[0]) != "1" {
				t.Errorf("%.40s... after the session's write: count %s (standby %s), want 1", q, row[0], row[1])
			}
		}
	})

	// pg_dump reads large objects through the fast path (lo_open, loread)
	// in a transaction it makes REPEATABLE READ READ ONLY with a SET
	// TRANSACTION of its own: the calls run in it, on the standby, and its
	// snapshot holds. lo_creat, which the hub allows in a READ ONLY
	// transaction and a standby does not, moves the transaction; so does
	// any call once a plain end and BEGIN left READ ONLY behind.
	t.Run("FunctionCall in a READ ONLY transaction", func(t *testing.T) {
		ctx := ctxT(t)
		var lobj uint32
		if err := hubSuper.QueryRow(ctx, "SELECT lo_from_bytea(0, 'hello')").Scan(&lobj); err != nil {
			t.Fatal(err)
		}
		mustExec(ctx, t, hubSuper, fmt.Sprintf("ALTER LARGE OBJECT %d OWNER TO app", lobj))
		waitOnStandby(ctx, t, standby, fmt.Sprintf("SELECT EXISTS (SELECT 1 FROM pg_largeobject_metadata WHERE oid = %d AND lomowner = 'app'::regrole)", lobj))
		fnOID := func(name string) uint32 {
			var o uint32
			if err := hubSuper.QueryRow(ctx, "SELECT '"+name+"'::regprocedure::oid").Scan(&o); err != nil {
				t.Fatal(err)
			}
			return o
		}
		for _, fn := range []string{"lo_open(oid, integer)", "lo_close(integer)", "loread(integer, integer)", "lo_lseek(integer, integer, integer)", "lo_tell(integer)", "lo_lseek64(integer, bigint, integer)", "lo_tell64(integer)"} {
			if !readsLargeObject(fnOID(fn)) {
				t.Errorf("%s (OID %d) is not taken for a large-object read", fn, fnOID(fn))
			}
		}
		for _, fn := range []string{"lo_creat(integer)", "lowrite(integer, bytea)", "lo_unlink(oid)"} {
			if readsLargeObject(fnOID(fn)) {
				t.Errorf("%s (OID %d) is taken for a large-object read", fn, fnOID(fn))
			}
		}
		i32 := func(v int32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }
		c := f.raw(t)
		call := func(fn uint32, args ...[]byte) []byte {
			fmts := make([]uint16, len(args))
			for i := range fmts {
				fmts[i] = 1
			}
			c.send(&pgproto3.FunctionCall{Function: fn, ArgFormatCodes: fmts, Arguments: args, ResultFormatCode: 1})
			r := expect[*pgproto3.FunctionCallResponse](c)
			expect[*pgproto3.ReadyForQuery](c)
			return append([]byte(nil), r.Result...)
		}
		c.query("BEGIN")
		c.query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
		before := c.query("SELECT count(*)::text || ' ' || pg_is_in_recovery()::text FROM notes")
		mustExec(ctx, t, hubSuper, "INSERT INTO notes (account_id, body) VALUES (1, 'after the snapshot')")
		waitOnStandby(ctx, t, standby, "SELECT EXISTS (SELECT 1 FROM notes WHERE body = 'after the snapshot')")
		fd := call(fnOID("lo_open(oid, integer)"), i32(int32(lobj)), i32(0x00040000)) // INV_READ
		data := call(fnOID("loread(integer, integer)"), fd, i32(100))
		after := c.query("SELECT count(*)::text || ' ' || pg_is_in_recovery()::text FROM notes")
		c.query("COMMIT")
		if string(data) != "hello" {
			t.Errorf("loread: %q, want hello", data)
		}
		if strings.Join(before, "") != strings.Join(after, "") || !strings.HasSuffix(after[0], "true") {
			t.Errorf("a REPEATABLE READ READ ONLY transaction saw %v, then %v after a large-object read: want the same, on the standby", before, after)
		}

		for _, open := range [][]string{{"BEGIN READ ONLY"}, {"BEGIN READ ONLY", "COMMIT; BEGIN"}} {
			for _, q := range open {
				c.query(q)
			}
			if oid := call(fnOID("lo_creat(integer)"), i32(-1)); len(oid) != 4 {
				t.Errorf("lo_creat after %q: %x, want an OID", open, oid)
			}
			c.query("ROLLBACK")
		}
	})
}
