package pgfront

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spokeproxy/spokeproxy/lab"
	"github.com/spokeproxy/spokeproxy/metrics"
)

// requests reads spokeproxy_requests_total{protocol="pg",route,kind}.
func (f *front) requests(t *testing.T, route, kind string) float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "spokeproxy_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["protocol"] == metrics.Postgres && labels["route"] == route && labels["kind"] == kind {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func (f *front) waitReplica(t *testing.T, up bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); f.site.Snapshot().Replica.Up != up; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("site did not see the replica up=%v: %+v", up, f.site.Snapshot().Replica)
		}
	}
}

// standbyRead runs an autocommit read and reports whether the standby
// answered it.
func standbyRead(t *testing.T, c *pgx.Conn) bool {
	t.Helper()
	var standby bool
	if err := c.QueryRow(ctxT(t), "SELECT pg_is_in_recovery()").Scan(&standby); err != nil {
		t.Fatalf("read: %v", err)
	}
	return standby
}

// TestLabPGReplicaLoss: the local standby stops under open sessions. An
// idle session's next read is answered by the hub (its replica connection
// is found dead when used, before anything reached the client), in the
// simple and the extended protocol; a transaction open on the standby is
// lost (08006, then 25P02 until ROLLBACK) and the session goes on. Once
// the standby is back the sessions read locally again.
func TestLabPGReplicaLoss(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	ctx := ctxT(t)
	simple := f.connect(t, func(cc *pgx.ConnConfig) { cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol })
	extended := f.connect(t, nil)
	inTxn := f.connect(t, nil)
	for _, c := range []*pgx.Conn{simple, extended, inTxn} {
		if !standbyRead(t, c) {
			t.Fatal("read before the stop not on the standby")
		}
	}
	if _, err := inTxn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := inTxn.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil {
		t.Fatal(err)
	}
	viaHub := f.requests(t, metrics.RouteHub, "read")

	restart := stopReplica(t, l)
	for name, c := range map[string]*pgx.Conn{"simple": simple, "extended": extended} {
		if standbyRead(t, c) {
			t.Errorf("%s: read with the standby stopped answered by a standby", name)
		}
	}
	if got := f.requests(t, metrics.RouteHub, "read") - viaHub; got < 2 {
		t.Errorf("reads routed to the hub while the standby is down: %v, want 2", got)
	}
	// The transaction that was open on the standby is gone.
	err := inTxn.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n)
	wantCode(t, err, "08006")
	_, err = inTxn.Exec(ctx, "SELECT 1")
	wantCode(t, err, "25P02")
	if _, err := inTxn.Exec(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if standbyRead(t, inTxn) {
		t.Error("read after the lost transaction answered by a standby")
	}
	// Writes and new sessions go on.
	if _, err := simple.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'standby down')"); err != nil {
		t.Fatal(err)
	}
	if standbyRead(t, f.connect(t, nil)) {
		t.Error("new session's read with the standby stopped answered by a standby")
	}
	// The probes see the standby down before it returns, as they would
	// any restart longer than a probe interval.
	f.waitReplica(t, false)

	restart(f)
	// Sessions whose reconnect failed while the standby was down try again
	// at once now that the routing core has seen it come up: no backoff
	// to wait out (reconnectReplica).
	local := f.requests(t, metrics.RouteLocal, "read")
	for name, c := range map[string]*pgx.Conn{"simple": simple, "extended": extended, "after a lost transaction": inTxn} {
		if !standbyRead(t, c) {
			t.Errorf("%s: read after the standby restarted not local", name)
		}
	}
	if got := f.requests(t, metrics.RouteLocal, "read") - local; got < 3 {
		t.Errorf("local reads after the restart: %v, want 3", got)
	}
	// The session's SETs reach the new replica connection.
	if _, err := extended.Exec(ctx, "SET application_name = 'after the loss'"); err != nil {
		t.Fatal(err)
	}
	var name string
	var standby bool
	if err := extended.QueryRow(ctx, "SELECT current_setting('application_name'), pg_is_in_recovery()").Scan(&name, &standby); err != nil || name != "after the loss" || !standby {
		t.Errorf("SET after the reconnect: %q on the standby %v, %v", name, standby, err)
	}
}

// With replica.when_unavailable: refuse, a session that loses its
// standby gets 08006 for reads (not the hub), keeps writing through the
// hub, and reads locally again once the standby is back.
func TestLabPGReplicaLossRefuse(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, func(c *Config) { c.RefuseWhenReplicaDown = true })
	ctx := ctxT(t)
	c := f.connect(t, nil)
	if _, err := c.Exec(ctx, "SET statement_timeout = 4321"); err != nil {
		t.Fatal(err)
	}
	if !standbyRead(t, c) {
		t.Fatal("read before the stop not on the standby")
	}
	restart := stopReplica(t, l)
	var standby bool
	err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standby)
	wantCode(t, err, "08006")
	if got := counterValue(t, f.m.Front.WritesRefused); got != 0 {
		t.Errorf("a read refused for want of the standby counted as %v refused writes", got)
	}
	if _, err := c.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'standby down, refuse')"); err != nil {
		t.Fatalf("write with the standby down: %v", err)
	}
	restart(f)
	var timeout string
	if err := c.QueryRow(ctx, "SELECT current_setting('statement_timeout'), pg_is_in_recovery()").Scan(&timeout, &standby); err != nil || !standby || timeout != "4321ms" {
		t.Fatalf("read after the standby restarted: statement_timeout %q on the standby %v, %v", timeout, standby, err)
	}
}

// A session's standby backend terminated while the standby stays up (an
// operator's pg_terminate_backend, idle_session_timeout): the FATAL it
// left is not relayed; the next read reconnects to the standby and runs
// there. In a transaction the transaction is lost and the session goes on.
func TestLabPGReplicaBackendTerminated(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	ctx := ctxT(t)
	super, err := pgx.Connect(ctx, l.ReplicaSuperDSN(lab.AppDatabase))
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(context.Background())
	terminate := func(c *pgx.Conn) {
		t.Helper()
		var pid uint32
		if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		terminateBackend(ctx, t, super, pid)
	}

	c := f.connect(t, nil)
	if _, err := c.Exec(ctx, "SET application_name = 'kept'"); err != nil {
		t.Fatal(err)
	}
	terminate(c)
	var name string
	var standby bool
	if err := c.QueryRow(ctx, "SELECT current_setting('application_name'), pg_is_in_recovery()").Scan(&name, &standby); err != nil {
		t.Fatalf("read after the backend was terminated: %v", err)
	}
	if !standby || name != "kept" {
		t.Errorf("read after the backend was terminated: on the standby %v with application_name %q, want the standby and the session's SET", standby, name)
	}
	if !f.site.Snapshot().Replica.Up {
		t.Error("one terminated backend marked the whole replica down")
	}

	if _, err := c.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if !standbyRead(t, c) {
		t.Fatal("transaction's read not on the standby")
	}
	terminate(c)
	_, err = c.Exec(ctx, "SELECT 1")
	wantCode(t, err, "08006")
	if _, err := c.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	if !standbyRead(t, c) {
		t.Error("read after the lost transaction not on the standby")
	}
}

// stopReplica stops the lab's standby and returns what starts it again:
// it waits until the front sees it up and it has caught up with the hub
// (a write made meanwhile must be there before the writing session reads
// there: its read-your-writes wait is shorter than a restarted standby's
// catch-up over the WAN may be). The standby is started at cleanup if
// the test did not.
func stopReplica(t *testing.T, l *lab.Lab) (restart func(f *front)) {
	t.Helper()
	if err := l.StopReplicaPG(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = l.StartReplicaPG(context.Background())
		}
	})
	return func(f *front) {
		t.Helper()
		ctx := ctxT(t)
		if err := l.StartReplicaPG(ctx); err != nil {
			t.Fatal(err)
		}
		restarted = true
		f.waitReplica(t, true)
		if err := l.WaitReplicaCaughtUp(ctx, 15*time.Second); err != nil {
			t.Fatal(err)
		}
	}
}
