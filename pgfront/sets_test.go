package pgfront

import (
	"testing"

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
