package pgfront

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spokeproxy/spokeproxy/lab"
)

// TestLabPGSessionIsolation: a session default isolation level, however
// the session got it (SET SESSION CHARACTERISTICS, SET
// default_transaction_isolation, the startup packet, a role setting), is
// honoured as if BEGIN named it: a REPEATABLE READ or SERIALIZABLE
// read-write transaction runs on the hub from BEGIN, a REPEATABLE READ
// READ ONLY one stays on the standby, a SERIALIZABLE one never does (and
// neither do autocommit reads under a SERIALIZABLE default: a standby
// refuses them). RESET returns to the login default.
func TestLabPGSessionIsolation(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)

	// where runs sql in a transaction opened with begin and reports
	// whether it ran on the standby and at which isolation level.
	where := func(t *testing.T, c *pgx.Conn, begin string) (standby bool, iso string) {
		t.Helper()
		ctx := ctxT(t)
		if _, err := c.Exec(ctx, begin); err != nil {
			t.Fatalf("%s: %v", begin, err)
		}
		if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery(), current_setting('transaction_isolation')").Scan(&standby, &iso); err != nil {
			t.Fatalf("read after %s: %v", begin, err)
		}
		if _, err := c.Exec(ctx, "COMMIT"); err != nil {
			t.Fatal(err)
		}
		return standby, iso
	}
	autocommit := func(t *testing.T, c *pgx.Conn) (standby bool) {
		t.Helper()
		if err := c.QueryRow(ctxT(t), "SELECT pg_is_in_recovery()").Scan(&standby); err != nil {
			t.Fatalf("autocommit read: %v", err)
		}
		return standby
	}
	check := func(t *testing.T, c *pgx.Conn, begin string, wantStandby bool, wantIso string) {
		t.Helper()
		standby, iso := where(t, c, begin)
		if standby != wantStandby || iso != wantIso {
			t.Errorf("%s: ran on the standby %v at %q, want standby %v at %q", begin, standby, iso, wantStandby, wantIso)
		}
	}

	for _, set := range []string{
		"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
		"SET default_transaction_isolation = 'repeatable read'",
	} {
		t.Run(set, func(t *testing.T) {
			ctx := ctxT(t)
			for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
				c := f.connect(t, func(cc *pgx.ConnConfig) { cc.DefaultQueryExecMode = mode })
				check(t, c, "BEGIN", true, "read committed")
				if _, err := c.Exec(ctx, set); err != nil {
					t.Fatal(err)
				}
				check(t, c, "BEGIN", false, "repeatable read")
				check(t, c, "BEGIN READ ONLY", true, "repeatable read")
				check(t, c, "BEGIN ISOLATION LEVEL READ COMMITTED", true, "read committed")
				if !autocommit(t, c) {
					t.Error("autocommit read under a REPEATABLE READ default left the standby")
				}
				if _, err := c.Exec(ctx, "RESET default_transaction_isolation"); err != nil {
					t.Fatal(err)
				}
				check(t, c, "BEGIN", true, "read committed")
			}
		})
	}

	t.Run("serializable", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		if _, err := c.Exec(ctx, "SET default_transaction_isolation = serializable"); err != nil {
			t.Fatal(err)
		}
		check(t, c, "BEGIN", false, "serializable")
		check(t, c, "BEGIN READ ONLY", false, "serializable")
		if autocommit(t, c) {
			t.Error("autocommit read under a SERIALIZABLE default ran on the standby")
		}
		if _, err := c.Exec(ctx, "RESET ALL"); err != nil {
			t.Fatal(err)
		}
		check(t, c, "BEGIN", true, "read committed")
		if !autocommit(t, c) {
			t.Error("autocommit read after RESET ALL left the standby")
		}
	})

	t.Run("startup options", func(t *testing.T) {
		c := f.connect(t, func(cc *pgx.ConnConfig) {
			cc.RuntimeParams["options"] = `-c default_transaction_isolation=repeatable\ read`
		})
		check(t, c, "BEGIN", false, "repeatable read")
		check(t, c, "BEGIN READ ONLY", true, "repeatable read")
		c2 := f.connect(t, func(cc *pgx.ConnConfig) { cc.RuntimeParams["default_transaction_isolation"] = "serializable" })
		check(t, c2, "BEGIN READ ONLY", false, "serializable")
		if autocommit(t, c2) {
			t.Error("autocommit read under a SERIALIZABLE startup default ran on the standby")
		}
	})

	t.Run("role setting", func(t *testing.T) {
		ctx := ctxT(t)
		hub, err := pgconn.Connect(ctx, l.HubSuperDSN(lab.AppDatabase))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { hub.Close(context.Background()) }) // after the RESET below
		alter := func(sql string) {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if _, err := hub.Exec(ctx, sql).ReadAll(); err != nil {
				t.Fatal(err)
			}
			if err := l.WaitReplicaCaughtUp(ctx, 10*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		alter("ALTER ROLE app IN DATABASE appdb SET default_transaction_isolation = 'repeatable read'")
		t.Cleanup(func() { alter("ALTER ROLE app IN DATABASE appdb RESET default_transaction_isolation") })
		c := f.connect(t, nil)
		check(t, c, "BEGIN", false, "repeatable read")
		// RESET returns to the role's default, not to read committed.
		if _, err := c.Exec(ctx, "SET default_transaction_isolation = 'read committed'"); err != nil {
			t.Fatal(err)
		}
		check(t, c, "BEGIN", true, "read committed")
		if _, err := c.Exec(ctx, "RESET default_transaction_isolation"); err != nil {
			t.Fatal(err)
		}
		check(t, c, "BEGIN", false, "repeatable read")
	})

	t.Run("hub down", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		if _, err := c.Exec(ctx, "SET default_transaction_isolation = 'repeatable read'"); err != nil {
			t.Fatal(err)
		}
		f.cut(t)
		// As with BEGIN ISOLATION LEVEL REPEATABLE READ: the transaction
		// opens locally so its reads go on; its first write gets 25006.
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var iso string
		if err := tx.QueryRow(ctx, "SELECT current_setting('transaction_isolation')").Scan(&iso); err != nil || iso != "repeatable read" {
			t.Fatalf("read in a REPEATABLE READ transaction during the outage: %q %v", iso, err)
		}
		_, err = tx.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'refused')")
		wantCode(t, err, "25006")
		_ = tx.Rollback(ctx)

		// Such a transaction keeps its replica snapshot: once the hub is
		// back, its first write cannot move it there; 40001 says retry.
		tx, err = c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var standby bool
		if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standby); err != nil || !standby {
			t.Fatalf("REPEATABLE READ transaction during the outage: standby %v %v", standby, err)
		}
		if err := l.ResetWAN(); err != nil {
			t.Fatal(err)
		}
		f.waitHub(t, true)
		_, err = tx.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'snapshot moved')")
		wantCode(t, err, "40001")
		_ = tx.Rollback(ctx)
		check(t, c, "BEGIN", false, "repeatable read") // the retry runs on the hub

		f.cut(t)
		if _, err := c.Exec(ctx, "SET default_transaction_isolation = serializable"); err != nil {
			t.Fatal(err)
		}
		_, err = c.Exec(ctx, "BEGIN")
		wantCode(t, err, "25006")
	})
}

// The session's transaction defaults follow its SET and RESET statements
// from the values it logged in with.
func TestSessionDefaults(t *testing.T) {
	c := NewClassifier(nil, 0, 0)
	cases := []struct {
		loginIso Isolation
		loginRO  bool
		stmts    []string
		iso      Isolation
		ro       bool
	}{
		{IsolationReadCommitted, false, nil, IsolationReadCommitted, false},
		{IsolationReadCommitted, false, []string{"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE"}, IsolationSerializable, false},
		{IsolationReadCommitted, false, []string{"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"}, IsolationRepeatableRead, true},
		{IsolationReadCommitted, false, []string{"SET default_transaction_isolation = 'repeatable read'", "SET statement_timeout = 5"}, IsolationRepeatableRead, false},
		{IsolationReadCommitted, false, []string{"SET default_transaction_isolation = serializable", "RESET default_transaction_isolation"}, IsolationReadCommitted, false},
		{IsolationRepeatableRead, true, []string{"SET default_transaction_isolation TO 'read committed'", "SET default_transaction_read_only = off"}, IsolationReadCommitted, false},
		{IsolationRepeatableRead, true, []string{"SET default_transaction_isolation TO 'read committed'", "SET default_transaction_read_only = off", "RESET ALL"}, IsolationRepeatableRead, true},
		{IsolationRepeatableRead, false, []string{"SET default_transaction_isolation = serializable", "DISCARD ALL"}, IsolationRepeatableRead, false},
		{IsolationRepeatableRead, false, []string{"SET default_transaction_isolation = serializable", "SET default_transaction_isolation TO DEFAULT"}, IsolationRepeatableRead, false},
		{IsolationReadCommitted, false, []string{"SET default_transaction_isolation = serializable", "RESET default_transaction_read_only"}, IsolationSerializable, false},
		{IsolationReadCommitted, false, []string{"SET LOCAL default_transaction_isolation = serializable"}, IsolationReadCommitted, false},
	}
	for _, tc := range cases {
		s := &session{loginIsolation: tc.loginIso, isolation: tc.loginIso, loginReadOnly: tc.loginRO, defaultReadOnly: tc.loginRO}
		for _, q := range tc.stmts {
			for _, st := range c.Classify(q).Stmts {
				s.noteDefaults(st)
			}
		}
		if s.isolation != tc.iso || s.defaultReadOnly != tc.ro {
			t.Errorf("login %v/%v, %q: isolation %v read-only %v, want %v %v", tc.loginIso, tc.loginRO, tc.stmts, s.isolation, s.defaultReadOnly, tc.iso, tc.ro)
		}
	}
	for v, want := range map[string]Isolation{"serializable": IsolationSerializable, "repeatable read": IsolationRepeatableRead,
		"read committed": IsolationReadCommitted, "read uncommitted": IsolationReadUncommitted, "": IsolationDefault} {
		if got := parseIsolation(v); got != want {
			t.Errorf("parseIsolation(%q) = %v, want %v", v, got, want)
		}
	}
}
