package pgfront

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spokeproxy/spokeproxy/lab"
)

// A role whose secret lookup hangs (here: an auth query that sleeps for
// that role, on the real replica and hub) must not hold up logins of other
// roles; concurrent logins of the stuck role share one query, and the
// lookup ends at BackendTimeout on each server instead of never.
func TestLabAuthLookupStuckRoleDoesNotBlockOthers(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	ctx := ctxT(t)
	hub, err := pgx.Connect(ctx, l.HubSuperDSN(lab.AppDatabase))
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close(ctx)
	// Runs as the auth role (SECURITY INVOKER), which may call get_auth.
	if _, err := hub.Exec(ctx, `CREATE FUNCTION public.slow_get_auth(p text) RETURNS TABLE (usename name, passwd text)
		LANGUAGE sql AS $$
		SELECT pg_sleep(CASE WHEN p = 'stuck_role' THEN 600 ELSE 0 END);
		SELECT * FROM spokeproxy.get_auth(p) $$`); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReplicaCaughtUp(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	const timeout = 2 * time.Second
	f := startFront(t, l, func(c *Config) {
		c.AuthQuery = "SELECT usename, passwd FROM public.slow_get_auth($1)"
		c.BackendTimeout = timeout
	})
	replica, err := pgx.Connect(ctx, l.ReplicaSuperDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Close(ctx)

	const stuckLogins = 3
	start := time.Now()
	errs := make(chan error, stuckLogins)
	var wg sync.WaitGroup
	for range stuckLogins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := pgx.Connect(ctx, f.dsn("stuck_role", "x"))
			if err == nil {
				c.Close(ctx)
			}
			errs <- err
		}()
	}
	defer wg.Wait()
	waitFor(t, "three logins of stuck_role waiting for its lookup", func() bool { return f.srv.auth.waiting("stuck_role") == stuckLogins })
	running := 0
	waitFor(t, "the stuck lookup's query on the replica", func() bool {
		if err := replica.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = 'spokeproxy auth' AND state = 'active' AND query LIKE '%slow_get_auth%'`).Scan(&running); err != nil {
			t.Fatal(err)
		}
		return running > 0
	})
	if running != 1 {
		t.Errorf("%d auth queries running on the replica for %d logins of one role; want 1 shared", running, stuckLogins)
	}

	// Another role logs in at once meanwhile.
	t0 := time.Now()
	lctx, cancel := context.WithTimeout(ctx, timeout/2)
	defer cancel()
	c, err := pgx.Connect(lctx, f.dsn(lab.AppUser, lab.AppPassword))
	if err != nil {
		t.Fatalf("login of another role while a lookup hangs: %v (after %v)", err, time.Since(t0))
	}
	var one int
	if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("session of another role: %v", err)
	}
	c.Close(ctx)
	if waiting := f.srv.auth.waiting("stuck_role"); waiting != stuckLogins {
		t.Fatalf("the stuck lookup ended early (%d waiting); the login above proves nothing", waiting)
	}

	// The stuck lookup gives up: BackendTimeout on the replica, then as
	// much on the hub, where the same query hangs too.
	for range stuckLogins {
		err := <-errs
		if err == nil || !strings.Contains(err.Error(), "no answer within") {
			t.Errorf("login with a hanging lookup: %v; want a failure naming the timeout", err)
		}
	}
	if took := time.Since(start); took > 4*timeout+2*time.Second {
		t.Errorf("the hanging lookup took %v to fail; want about 2 x BackendTimeout (%v)", took, timeout)
	}
}

// Idle auth connections close after authIdleTimeout (here those a burst of
// logins left on the replica; the hub's, opened while the replica was
// down, share the code): the server's pg_stat_activity shows them gone.
func TestLabAuthIdleConnectionsClose(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	ctx := ctxT(t)
	saved := authIdleTimeout
	authIdleTimeout = 500 * time.Millisecond
	t.Cleanup(func() { authIdleTimeout = saved })
	f := startFront(t, l, nil)
	f.waitHub(t, true)
	replica, err := pgx.Connect(ctx, l.ReplicaSuperDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Close(ctx)
	authBackends := func() int {
		var n int
		if err := replica.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'spokeproxy auth'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := pgx.Connect(ctx, f.dsn(lab.AppUser, lab.AppPassword))
			if err != nil {
				t.Error(err)
				return
			}
			c.Close(ctx)
		}()
	}
	wg.Wait()
	if n := f.srv.auth.replica.idleCount(); n == 0 || authBackends() != n {
		t.Fatalf("after a burst of logins: %d idle auth connections, %d auth backends on the replica", n, authBackends())
	}
	waitFor(t, "the idle auth connections to close", func() bool { return f.srv.auth.replica.idleCount() == 0 && authBackends() == 0 })

	// A lookup made again dials anew and works.
	c, err := pgx.Connect(ctx, f.dsn(lab.AppUser, lab.AppPassword))
	if err != nil {
		t.Fatalf("login after the idle auth connections closed: %v", err)
	}
	c.Close(ctx)
	if n := f.srv.auth.replica.idleCount(); n != 1 {
		t.Errorf("%d idle auth connections after one login, want 1", n)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
