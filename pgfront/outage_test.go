package pgfront

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spokeproxy/spokeproxy/lab"
)

// On Shutdown an idle session gets PostgreSQL's 57P01 at once, and a
// session in a transaction may finish it (its COMMIT succeeds) and gets
// 57P01 at its next idle point; Shutdown returns without waiting out its
// deadline.
func TestLabPGDrain(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	ctx := ctxT(t)
	idle := f.connect(t, nil)
	busy := f.connect(t, nil)
	if _, err := idle.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := busy.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := busy.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'during the drain')"); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	shut := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shut <- f.srv.Shutdown(sctx)
	}()

	// The idle session is ended by the proxy with 57P01: only the busy one
	// stays registered.
	for deadline := time.Now().Add(5 * time.Second); f.srv.sessionCount() != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still open 5s into the drain, want only the one in a transaction", f.srv.sessionCount())
		}
	}
	_, err := idle.Exec(ctx, "SELECT 1")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || pgErr.Message != adminShutdownMessage {
		t.Fatalf("idle session during the drain: %v, want 57P01 %q", err, adminShutdownMessage)
	}

	// The transaction still commits, then its session ends the same way.
	if _, err := busy.Exec(ctx, "COMMIT"); err != nil {
		t.Fatalf("COMMIT of a transaction open at Shutdown: %v", err)
	}
	_, err = busy.Exec(ctx, "SELECT 1")
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" {
		t.Fatalf("session after its transaction ended, during the drain: %v, want 57P01", err)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Fatalf("Shutdown: %v (it had to force sessions closed)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return 10s after every session ended")
	}
	t.Logf("drain with one idle and one transaction session took %s", time.Since(start).Round(time.Millisecond))

	check := l.HubAppDSN()
	hub, err := pgconn.Connect(ctx, check)
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close(ctx)
	res := hub.ExecParams(ctx, "SELECT count(*) FROM notes WHERE body = 'during the drain'", nil, nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "1" {
		t.Fatalf("the transaction committed during the drain is not on the hub: %v %v", res.Rows, res.Err)
	}
}

// A drill refuses new writes but does not cut a statement already running
// on the healthy hub, nor report a link failure that did not happen.
func TestLabPGDrillSparesStatementsInFlight(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	f.waitHub(t, true)
	ctx := ctxT(t)
	c := f.connect(t, nil)
	mustExec(ctx, t, c, "BEGIN", "INSERT INTO notes (account_id, body) VALUES (1, 'in flight at a drill')")
	super, err := pgconn.Connect(ctx, l.HubSuperDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(ctx)
	go func() {
		// Start the drill once pg_sleep below is running on the hub.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			res := super.ExecParams(ctx, "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(1)'", nil, nil, nil, nil).Read()
			if res.Err == nil && len(res.Rows) > 0 {
				break
			}
		}
		f.site.StartDrill(time.Minute)
	}()
	if _, err := c.Exec(ctx, "SELECT pg_sleep(1)"); err != nil {
		t.Fatalf("a hub statement running when the drill started: %v", err)
	}
	if !f.site.Snapshot().Drill {
		t.Fatal("the drill did not start during the statement")
	}
	if !f.site.Snapshot().Hub.Up {
		t.Error("the drill made the routing core see the healthy hub down")
	}
	f.site.StopDrill()
	if _, err := c.Exec(ctx, "COMMIT"); err != nil {
		t.Fatalf("COMMIT after the drill: %v", err)
	}
}

// A COMMIT sent in one query with other statements, whose answer the WAN
// swallows, is reported as outcome unknown (08007), never as a failure.
func TestLabPGLostCommitInAMultiStatementQuery(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	f.waitHub(t, true)
	ctx := ctxT(t)
	c := f.connect(t, nil)
	mustExec(ctx, t, c, "BEGIN", "INSERT INTO notes (account_id, body) VALUES (1, 'before the lost commit')")
	if err := l.Blackhole(lab.LinkPG); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.ClearToxics(lab.LinkPG) })
	// No arguments: pgx sends this as one simple Query.
	_, err := c.Exec(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = 1; COMMIT")
	wantCode(t, err, "08007")
	// The transaction is over whatever happened: the session goes on.
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil || n == 0 {
		t.Fatalf("read after the lost COMMIT: %d %v", n, err)
	}
}

// A hub backend terminated under a request (pg_terminate_backend, an
// idle timeout at the hub) ends only that connection: its FATAL is not
// relayed (a client told FATAL drops its session), the request gets
// 08007, the session goes on with a new hub connection, and the site does
// not go read-only for one lost backend.
func TestLabPGHubBackendTerminated(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	f.waitHub(t, true)
	ctx := ctxT(t)
	super := superConn(t, l.HubSuperDSN(lab.AppDatabase))
	c := f.connect(t, nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			var n int
			if err := super.QueryRow(ctx, "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%terminated under%' AND pid <> pg_backend_pid()").Scan(&n); err != nil || n > 0 {
				return
			}
		}
	}()
	_, err := c.Exec(ctx, "INSERT INTO notes (account_id, body) SELECT 1, 'terminated under' FROM pg_sleep(1)")
	<-done
	pe := wantCode(t, err, "08007")
	if pe.Severity != "ERROR" {
		t.Errorf("the lost request got %s, want an ERROR the session survives", pe.Severity)
	}
	if !f.site.Snapshot().Hub.Up {
		t.Error("one terminated hub backend made the site read-only")
	}
	var standby bool
	if err := c.QueryRow(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'after the terminated backend') RETURNING pg_is_in_recovery()").Scan(&standby); err != nil || standby {
		t.Fatalf("write after the hub backend was terminated: %v (on the standby %v)", err, standby)
	}
}

// A hub transaction lost to an outage ends with the client's ROLLBACK,
// whether it is the first statement to find it lost or comes after the
// 08006, and whether it is sent as a simple Query or through the extended
// protocol (pgjdbc): the session goes on.
func TestLabPGRollbackOfALostTransaction(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	f.waitHub(t, true)
	ctx := ctxT(t)
	c := f.connect(t, nil)
	hubTxn := func() {
		t.Helper()
		mustExec(ctx, t, c, "BEGIN", "INSERT INTO notes (account_id, body) VALUES (1, 'lost to a drill')")
	}
	hubTxn()
	f.site.StartDrill(time.Minute)
	_, err := c.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'during the drill')")
	wantCode(t, err, "08006")
	if err := c.PgConn().ExecParams(ctx, "ROLLBACK", nil, nil, nil, nil).Read().Err; err != nil {
		t.Errorf("extended-protocol ROLLBACK after the 08006: %v", err)
	}
	f.site.StopDrill()
	f.waitHub(t, true)
	hubTxn()
	f.site.StartDrill(time.Minute)
	if err := c.PgConn().ExecParams(ctx, "ROLLBACK", nil, nil, nil, nil).Read().Err; err != nil {
		t.Errorf("extended-protocol ROLLBACK that first finds the transaction lost: %v", err)
	}
	f.site.StopDrill()
	if !standbyRead(t, c) {
		t.Error("read after the lost transactions not on the standby")
	}

	// A pipelined ROLLBACK (Flush, then Sync), with a Close of a prepared
	// statement in front of it as pgjdbc sends them: the statement is gone
	// for good, its name free again.
	pc := c.PgConn()
	if _, err := pc.Prepare(ctx, "doomed", "SELECT 1", nil); err != nil {
		t.Fatal(err)
	}
	hubTxn()
	f.site.StartDrill(time.Minute)
	pl := pc.StartPipeline(ctx)
	pl.SendDeallocate("doomed")
	pl.SendQueryParams("ROLLBACK", nil, nil, nil, nil)
	pl.SendFlushRequest()
	if err := pl.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		got, err := pl.GetResults()
		if rr, ok := got.(*pgconn.ResultReader); ok && err == nil {
			err = rr.Read().Err
		}
		if err != nil {
			t.Errorf("pipelined Close and ROLLBACK of a lost transaction, answer %d: %v", i, err)
		}
	}
	if err := pl.Sync(); err != nil {
		t.Errorf("Sync after the pipelined ROLLBACK: %v", err)
	}
	if err := pl.Close(); err != nil {
		t.Errorf("pipeline close: %v", err)
	}
	f.site.StopDrill()
	if _, err := pc.Prepare(ctx, "doomed", "SELECT 2", nil); err != nil {
		t.Errorf("preparing a name the client closed with its ROLLBACK: %v", err)
	}

	// ROLLBACK AND CHAIN cannot open a transaction like the lost one: it
	// fails (a plain ROLLBACK answer would leave the client's next
	// statements committing one by one while it believes them in a
	// transaction), and the plain ROLLBACK after it ends the lost one.
	hubTxn()
	f.site.StartDrill(time.Minute)
	_, err = c.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'during the drill')")
	wantCode(t, err, "08006")
	_, err = c.Exec(ctx, "ROLLBACK AND CHAIN")
	wantCode(t, err, "25P02")
	if st := pc.TxStatus(); st != 'E' {
		t.Errorf("after ROLLBACK AND CHAIN of a lost transaction: status %q, want 'E'", st)
	}
	if _, err := c.Exec(ctx, "ROLLBACK"); err != nil {
		t.Errorf("ROLLBACK after the refused ROLLBACK AND CHAIN: %v", err)
	}
	if st := pc.TxStatus(); st != 'I' {
		t.Errorf("after the ROLLBACK: status %q, want 'I'", st)
	}
	f.site.StopDrill()
	f.waitHub(t, true)

	// What the lost transaction set for itself does not reach the next.
	mustExec(ctx, t, c, "BEGIN", "SELECT set_config('app.tenant', 'alice', true)", "INSERT INTO notes (account_id, body) VALUES (1, 'alice')")
	f.site.StartDrill(time.Minute)
	if _, err := c.Exec(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	f.site.StopDrill()
	if _, err := c.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	var tenant string
	if err := c.QueryRow(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'bob') RETURNING coalesce(current_setting('app.tenant', true), '')").Scan(&tenant); err != nil {
		t.Fatal(err)
	}
	if tenant != "" {
		t.Errorf("a transaction after a lost one sees app.tenant = %q, set by the lost one", tenant)
	}
	if _, err := c.Exec(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
}

// Shutdown's deadline ends a session busy on a backend at once: nothing
// waits for the statement, nor for a client connection whose reader
// holds its socket.
func TestLabPGShutdownForcesBusySessions(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	ctx := ctxT(t)
	c := f.connect(t, nil)
	busy := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "SELECT pg_sleep(10)")
		busy <- err
	}()
	time.Sleep(300 * time.Millisecond)
	sctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := f.srv.Shutdown(sctx)
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with a busy session past its deadline: %v, want the deadline", err)
	}
	if took > 3*time.Second {
		t.Errorf("Shutdown took %s with a 200ms deadline", took.Round(time.Millisecond))
	}
	select {
	case err := <-busy:
		if err == nil {
			t.Error("the busy statement succeeded through a forced shutdown")
		}
	case <-time.After(5 * time.Second):
		t.Error("the busy client was not answered 5s after the forced shutdown")
	}
	t.Logf("Shutdown(200ms) with a session in pg_sleep(10) returned after %s", took.Round(time.Millisecond))
}
