package pgfront

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spokeproxy/spokeproxy/lab"
)

// A session pinned to the hub (a temporary table, LISTEN) keeps its
// state through a drill, which only refuses its statements; when its hub
// connection is really lost (the hub backend terminated) the session
// ends with 08006, as a direct connection would, instead of going on
// without its state on a fresh connection; and a LISTEN waiting for
// notifications learns of the loss at once instead of waiting forever.
func TestLabPGPinnedHubLost(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	f.waitHub(t, true)
	ctx := ctxT(t)
	super := superConn(t, l.HubSuperDSN(lab.AppDatabase))
	var err error
	hubPID := func(c *pgx.Conn) uint32 {
		t.Helper()
		var pid uint32
		var standby bool
		if err := c.QueryRow(ctx, "SELECT pg_backend_pid(), pg_is_in_recovery()").Scan(&pid, &standby); err != nil || standby {
			t.Fatalf("pinned session's backend: pid %d on the standby %v, %v", pid, standby, err)
		}
		return pid
	}
	terminate := func(pid uint32) { terminateBackend(ctx, t, super, pid) }

	c := f.connect(t, nil)
	mustExec(ctx, t, c, "CREATE TEMP TABLE scratch (a int)", "INSERT INTO scratch VALUES (1)")
	f.site.StartDrill(time.Minute)
	_, err = c.Exec(ctx, "INSERT INTO scratch VALUES (2)")
	wantCode(t, err, "25006")
	f.site.StopDrill()
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM scratch").Scan(&n); err != nil || n != 1 {
		t.Fatalf("temporary table after a drill: %d rows, %v (want the one row from before)", n, err)
	}

	// A drill in the middle of a hub transaction: the transaction is lost
	// (08006, rolled back on the hub at once), the session and its table
	// stay.
	pid := hubPID(c)
	mustExec(ctx, t, c, "BEGIN", "INSERT INTO scratch VALUES (2)")
	f.site.StartDrill(time.Minute)
	_, err = c.Exec(ctx, "INSERT INTO scratch VALUES (3)")
	wantCode(t, err, "08006")
	var state string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if err := super.QueryRow(ctx, "SELECT state FROM pg_stat_activity WHERE pid = $1", pid).Scan(&state); err != nil {
			t.Fatal(err)
		}
		if state == "idle" || time.Now().After(deadline) {
			break
		}
	}
	if state != "idle" {
		t.Errorf("the pinned session's hub backend is %q during the drill, want its lost transaction rolled back", state)
	}
	if _, err := c.Exec(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	// A ROLLBACK that is the first to find the transaction lost succeeds
	// (pgx closes a connection whose Rollback fails, state and all).
	f.site.StopDrill()
	mustExec(ctx, t, c, "BEGIN", "INSERT INTO scratch VALUES (4)")
	f.site.StartDrill(time.Minute)
	if _, err := c.Exec(ctx, "ROLLBACK"); err != nil {
		t.Errorf("ROLLBACK of a hub transaction a drill cut: %v, want it to succeed", err)
	}
	f.site.StopDrill()
	if err := c.QueryRow(ctx, "SELECT count(*) FROM scratch").Scan(&n); err != nil || n != 1 {
		t.Fatalf("temporary table after a drill cut its transaction: %d rows, %v (want the one committed row)", n, err)
	}

	terminate(hubPID(c))
	_, err = c.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'after the pin was lost')")
	wantCode(t, err, "08006")
	_, err = c.Exec(ctx, "SELECT 1")
	if pe := wantCode(t, err, "08006"); !strings.Contains(pe.Message, "terminating the session") || pe.Severity != "FATAL" {
		t.Errorf("after its hub state was lost the session got %s %q, want it ended", pe.Severity, pe.Message)
	}
	var written int
	if err := super.QueryRow(ctx, "SELECT count(*) FROM notes WHERE body = 'after the pin was lost'").Scan(&written); err != nil || written != 0 {
		t.Errorf("the statement after the lost pin ran on the hub %d times (%v), want none", written, err)
	}

	// Notifications that arrive between the idle watcher's stop and the
	// next statement are relayed, not taken for a dead connection.
	var notified atomic.Int64
	busy := f.connect(t, func(cc *pgx.ConnConfig) {
		cc.OnNotification = func(*pgconn.PgConn, *pgconn.Notification) { notified.Add(1) }
	})
	if _, err := busy.Exec(ctx, "LISTEN busy_channel"); err != nil {
		t.Fatal(err)
	}
	stopNotify := make(chan struct{})
	notifying := make(chan struct{})
	go func() {
		defer close(notifying)
		for {
			select {
			case <-stopNotify:
				return
			default:
			}
			_, _ = super.Exec(ctx, "NOTIFY busy_channel, 'x'")
			time.Sleep(2 * time.Millisecond)
		}
	}()
	for i := 0; i < 200; i++ {
		if _, err := busy.Exec(ctx, "SELECT 1"); err != nil {
			t.Errorf("statement %d of a listening session while notifications flow: %v", i, err)
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	close(stopNotify)
	<-notifying
	if notified.Load() == 0 {
		t.Error("no notification reached the listening session")
	}

	listener := f.connect(t, nil)
	if _, err := listener.Exec(ctx, "LISTEN pin_lost"); err != nil {
		t.Fatal(err)
	}
	pid = hubPID(listener)
	terminated := make(chan struct{})
	go func() {
		defer close(terminated)
		time.Sleep(200 * time.Millisecond)
		terminate(pid)
	}()
	defer func() { <-terminated }()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err = listener.WaitForNotification(wctx)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("a LISTEN whose hub connection was lost waited out its deadline")
	}
	pe := wantCode(t, err, "08006")
	if !strings.Contains(pe.Message, "57P01") {
		t.Errorf("the listener's FATAL does not carry what the hub said: %q", pe.Message)
	}
	t.Logf("listener told %s after its hub backend was terminated: %s", time.Since(start).Round(time.Millisecond), pe.Message)
}
