package pgfront

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/spokeproxy/spokeproxy/lab"
)

func counterValue(_ *testing.T, c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

// terminateBackend ends backend pid through super, a superuser
// connection to its server, and waits up to 5s for it to exit. It may
// run in a goroutine of its own (it only reports with t.Errorf).
func terminateBackend(ctx context.Context, t *testing.T, super *pgx.Conn, pid uint32) {
	var ok bool
	if err := super.QueryRow(ctx, "SELECT pg_terminate_backend($1, 5000)", pid).Scan(&ok); err != nil || !ok {
		t.Errorf("pg_terminate_backend(%d): %v %v", pid, ok, err)
	}
}

// superConn connects as the superuser through dsn, closed at cleanup.
func superConn(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctxT(t), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// mustExec runs each statement on c in turn and fails the test at the
// first error, naming the statement.
func mustExec(ctx context.Context, t *testing.T, c *pgx.Conn, qs ...string) {
	t.Helper()
	for _, q := range qs {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// replayPause holds WAL replay on the lab's standby, so a read that does
// not wait for the session's position cannot see a write that just
// committed on the hub.
type replayPause struct {
	standby  *pgx.Conn
	resuming sync.WaitGroup
}

// newReplayPause connects to the standby as the superuser; replay is
// resumed at cleanup.
func newReplayPause(t *testing.T, l *lab.Lab) *replayPause {
	r := &replayPause{standby: superConn(t, l.ReplicaSuperDSN(lab.AppDatabase))}
	t.Cleanup(func() {
		r.resuming.Wait()
		r.standby.Exec(context.Background(), "SELECT pg_wal_replay_resume()")
	})
	return r
}

func (r *replayPause) pause(ctx context.Context, t *testing.T) {
	t.Helper()
	mustExec(ctx, t, r.standby, "SELECT pg_wal_replay_pause()")
}

// resumeAfter resumes replay after d, in the background; wait waits for it.
func (r *replayPause) resumeAfter(d time.Duration) {
	r.resuming.Go(func() {
		time.Sleep(d)
		r.standby.Exec(context.Background(), "SELECT pg_wal_replay_resume()")
	})
}

func (r *replayPause) wait() { r.resuming.Wait() }
