package pgfront

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/spokeproxy/spokeproxy/lab"
)

// A batch that parses several statements under the same (unnamed) name,
// as pgjdbc sends BEGIN and its first query, is routed by each Bind's
// statement as it was when the Bind arrived: a write then a read under
// the unnamed name is a write (the hub at once), not two reads that the
// standby's 25006 would have to send back to the hub.
func TestLabPGUnnamedStatementsInOneBatch(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	c := f.raw(t)
	before := counterValue(t, f.m.SafetyNetReruns)
	c.send(
		&pgproto3.Parse{Query: "INSERT INTO notes (account_id, body) VALUES (1, 'unnamed batch') RETURNING pg_is_in_recovery()::text"},
		&pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	row := expect[*pgproto3.DataRow](c, "ParseComplete", "BindComplete")
	if got := string(row.Values[0]); got != "false" {
		t.Fatalf("the INSERT ran with pg_is_in_recovery() = %s, want false (the hub)", got)
	}
	expect[*pgproto3.ReadyForQuery](c, "CommandComplete", "ParseComplete", "BindComplete", "DataRow")
	if got := counterValue(t, f.m.SafetyNetReruns) - before; got != 0 {
		t.Errorf("safety net re-runs %v, want 0: the batch was taken for a read", got)
	}
}
