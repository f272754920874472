package pgfront

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spokeproxy/spokeproxy/lab"
)

// TestLabPGSetsMirrored: a session SET that runs beside a write in one
// simple Query (routed to the hub) reaches the replica too, and one sent
// through the extended protocol (routed to the replica) reaches the
// attached hub too, as simple-protocol SETs do.
func TestLabPGSetsMirrored(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	c := f.connect(t, nil)
	pc := c.PgConn()
	ctx := ctxT(t)

	// one simple-protocol value from a query, and where it ran
	one := func(t *testing.T, sql string) (value string, standby bool) {
		t.Helper()
		res, err := pc.Exec(ctx, sql).ReadAll()
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		last := res[len(res)-1]
		if last.Err != nil || len(last.Rows) != 1 || len(last.Rows[0]) != 2 {
			t.Fatalf("%s: %+v", sql, last)
		}
		return string(last.Rows[0][0]), string(last.Rows[0][1]) == "t"
	}

	// A SET beside a write: the unit runs on the hub.
	if v, standby := one(t, "SET application_name = 'mirrored'; INSERT INTO notes (account_id, body) VALUES (1, 'sets') RETURNING current_setting('application_name'), pg_is_in_recovery()"); v != "mirrored" || standby {
		t.Fatalf("write beside SET: application_name %q on standby %v, want mirrored on the hub", v, standby)
	}
	if v, standby := one(t, "SELECT current_setting('application_name'), pg_is_in_recovery()"); v != "mirrored" || !standby {
		t.Fatalf("read after it: application_name %q on standby %v, want mirrored on the standby", v, standby)
	}

	// A SET through the extended protocol: the unit runs on the replica,
	// with the hub attached by the write above.
	if _, err := pc.ExecParams(ctx, "SET work_mem = '5MB'", nil, nil, nil, nil).Close(); err != nil {
		t.Fatalf("extended SET: %v", err)
	}
	if v, standby := one(t, "SELECT current_setting('work_mem'), pg_is_in_recovery()"); v != "5MB" || !standby {
		t.Fatalf("read after extended SET: work_mem %q on standby %v, want 5MB on the standby", v, standby)
	}
	if v, standby := one(t, "INSERT INTO notes (account_id, body) VALUES (1, 'sets') RETURNING current_setting('work_mem'), pg_is_in_recovery()"); v != "5MB" || standby {
		t.Fatalf("write after extended SET: work_mem %q on standby %v, want 5MB on the hub", v, standby)
	}

	// A SET in a batch that fails is undone with it, on both.
	if _, err := pc.Exec(ctx, "SET application_name = 'undone'; INSERT INTO no_such_table VALUES (1)").ReadAll(); err == nil {
		t.Fatal("insert into a missing table succeeded")
	}
	if v, _ := one(t, "SELECT current_setting('application_name'), pg_is_in_recovery()"); v != "mirrored" {
		t.Fatalf("after a failed batch with a SET: application_name %q, want mirrored", v)
	}
}

// TestLabPGSetsFollowTheirTransaction: a session SET or set_config() in a
// Query or batch that also ends its transaction reaches the session's
// other backend only when that transaction committed, so the hub and the
// standby agree on what the client set.
func TestLabPGSetsFollowTheirTransaction(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	c := f.connect(t, nil)
	pc := c.PgConn()
	ctx := ctxT(t)

	simple := func(q string) func() error {
		return func() error {
			_, err := pc.Exec(ctx, q).ReadAll()
			return err
		}
	}
	batch := func(qs ...string) func() error {
		return func() error {
			b := &pgconn.Batch{}
			for _, q := range qs {
				b.ExecParams(q, nil, nil, nil, nil)
			}
			_, err := pc.ExecBatch(ctx, b).ReadAll()
			return err
		}
	}
	// Attach the hub connection, so a mirrored SET has somewhere to go.
	settingBoth(t, lastRow(ctx, pc), "application_name")

	for _, tc := range []struct {
		name, key string
		run       func() error
		want      string // the value both backends must show for key
	}{
		{"rolled back in one Query", "app.k1", simple("BEGIN; SET app.k1 = 'yes'; ROLLBACK"), ""},
		{"committed in one Query", "app.k2", simple("BEGIN; SET app.k2 = 'yes'; COMMIT"), "yes"},
		{"rolled back with the open transaction", "app.k3", func() error {
			if _, err := pc.Exec(ctx, "BEGIN").ReadAll(); err != nil {
				return err
			}
			_, err := pc.Exec(ctx, "SELECT 1; SET app.k3 = 'yes'; ROLLBACK").ReadAll()
			return err
		}, ""},
		{"undone by ROLLBACK TO", "app.k4", simple("BEGIN; SAVEPOINT a; SET app.k4 = 'yes'; ROLLBACK TO a; COMMIT"), ""},
		{"committed before a failure", "app.k5", func() error {
			_, err := pc.Exec(ctx, "BEGIN; SET app.k5 = 'yes'; COMMIT; SELECT 1/0").ReadAll()
			wantCode(t, err, "22012")
			return nil
		}, "yes"},
		{"set_config rolled back", "app.k6", simple("BEGIN; SELECT set_config('app.k6', 'yes', false); ROLLBACK"), ""},
		{"extended batch rolled back", "app.k7", batch("BEGIN", "SET app.k7 = 'yes'", "ROLLBACK"), ""},
		{"extended batch committed", "app.k8", batch("BEGIN", "SET app.k8 = 'yes'", "COMMIT"), "yes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(); err != nil {
				t.Fatal(err)
			}
			standby, hub := settingBoth(t, lastRow(ctx, pc), tc.key)
			if hub != tc.want || standby != tc.want {
				t.Errorf("%s: %q on the hub, %q on the standby; want %q on both", tc.key, hub, standby, tc.want)
			}
		})
	}
}
