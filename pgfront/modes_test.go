package pgfront

import (
	"context"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spokeproxy/spokeproxy/lab"
	"github.com/spokeproxy/spokeproxy/routing"
)

func TestLabPGModes(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})

	t.Run("consistency site", func(t *testing.T) {
		f := startFront(t, l, func(c *Config) { c.Consistency = routing.ConsistencySite })
		ctx := ctxT(t)
		c := f.connect(t, nil)
		replica, err := pgx.Connect(ctx, l.ReplicaAppDSN())
		if err != nil {
			t.Fatal(err)
		}
		defer replica.Close(ctx)
		// Slow replication down so that, without the held acknowledgement,
		// a direct read on the standby would miss the row.
		if err := l.AddLatency(lab.LinkPG, 20*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.ClearToxics(lab.LinkPG) })
		for i := 0; i < 3; i++ {
			var id int64
			if err := c.QueryRow(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'site mode') RETURNING id").Scan(&id); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := replica.QueryRow(ctx, "SELECT count(*) FROM notes WHERE id = $1", id).Scan(&n); err != nil || n != 1 {
				t.Fatalf("site mode: another client at the site does not see row %d right after the ack (n=%d err=%v)", id, n, err)
			}
		}
	})

	t.Run("transactions hub", func(t *testing.T) {
		f := startFront(t, l, func(c *Config) { c.LazyTransactions = false })
		ctx := ctxT(t)
		c := f.connect(t, nil)
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var recov bool
		if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&recov); err != nil || recov {
			t.Fatalf("transactions: hub: first read on the standby=%v err=%v", recov, err)
		}
		_ = tx.Rollback(ctx)
		tx, err = c.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&recov); err != nil || !recov {
			t.Fatalf("READ ONLY transaction left the standby: %v %v", recov, err)
		}
		_ = tx.Rollback(ctx)
		// A session default of READ ONLY keeps plain BEGINs local too.
		if _, err := c.Exec(ctx, "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"); err != nil {
			t.Fatal(err)
		}
		tx, err = c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&recov); err != nil || !recov {
			t.Fatalf("default READ ONLY transaction left the standby: %v %v", recov, err)
		}
		_ = tx.Rollback(ctx)
		if _, err := c.Exec(ctx, "SET default_transaction_read_only = off"); err != nil {
			t.Fatal(err)
		}
		// SERIALIZABLE runs on the hub in any mode.
		tx, err = c.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable})
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&recov); err != nil || recov {
			t.Fatalf("SERIALIZABLE on the standby=%v err=%v", recov, err)
		}
		_ = tx.Rollback(ctx)
	})

	t.Run("warm hub pool", func(t *testing.T) {
		f := startFront(t, l, nil)
		ctx := ctxT(t)
		a := f.connect(t, nil)
		if _, err := a.Exec(ctx, "SET statement_timeout = 1234"); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := a.QueryRow(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'pool a') RETURNING current_setting('statement_timeout')").Scan(&got); err != nil || got != "1234ms" {
			t.Fatalf("session SET replayed on the hub: %q %v", got, err)
		}
		a.Close(ctx)
		// The closed session returns its hub connection to the pool.
		for deadline := time.Now().Add(5 * time.Second); f.srv.pooledHubs() == 0; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("closed session did not return its hub connection to the pool")
			}
		}
		b := f.connect(t, nil)
		if err := b.QueryRow(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'pool b') RETURNING current_setting('statement_timeout')").Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != "0" {
			t.Errorf("pooled hub connection kept the previous session's setting: statement_timeout=%q", got)
		}
		if hits := counterValue(t, f.m.HubPoolHits); hits != 1 {
			t.Errorf("hub pool hits %v, want 1", hits)
		}
	})

	t.Run("pooled hub connections age out", func(t *testing.T) {
		ctx := ctxT(t)
		hub, err := pgx.Connect(ctx, l.HubSuperDSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer hub.Close(context.Background())
		appBackends := func() int {
			var n int
			if err := hub.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", lab.AppUser).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		pool := func(f *front) {
			t.Helper()
			c := f.connect(t, nil)
			if _, err := c.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'pooled')"); err != nil {
				t.Fatal(err)
			}
			c.Close(ctx)
			waitFor(t, "the session's hub connection in the pool", func() bool { return f.srv.pooledHubs() == 1 })
		}

		// Unused for HubPoolIdleTimeout: closed, and gone from the hub.
		f := startFront(t, l, func(c *Config) { c.HubPoolIdleTimeout = 300 * time.Millisecond })
		pool(f)
		if n := appBackends(); n != 1 {
			t.Fatalf("%d backends of %s on the hub with one pooled connection", n, lab.AppUser)
		}
		waitFor(t, "the idle pooled connection to close", func() bool { return f.srv.pooledHubs() == 0 && appBackends() == 0 })

		// A cut resets it: closed as soon as the hub is seen down, not
		// at its idle timeout, and the gauge follows.
		h := startFront(t, l, nil)
		pool(h)
		if got := counterValue(t, h.m.Front.HubConnections); got != 1 {
			t.Fatalf("hub connections gauge %v with one pooled connection", got)
		}
		h.cut(t)
		waitFor(t, "the pooled connection the cut reset to close", func() bool { return h.srv.pooledHubs() == 0 })
		if got := counterValue(t, h.m.Front.HubConnections); got != 0 {
			t.Errorf("hub connections gauge %v after the cut closed the pooled one", got)
		}
		if err := l.ResetWAN(); err != nil {
			t.Fatal(err)
		}
		h.waitHub(t, true)

		// HubPoolMaxAge after its login: not reused.
		g := startFront(t, l, func(c *Config) { c.HubPoolMaxAge = 300 * time.Millisecond })
		pool(g)
		time.Sleep(400 * time.Millisecond)
		c := g.connect(t, nil)
		if _, err := c.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'after the pooled one aged')"); err != nil {
			t.Fatal(err)
		}
		if hits := counterValue(t, g.m.HubPoolHits); hits != 0 {
			t.Errorf("a pooled hub connection older than HubPoolMaxAge was reused (%v hits)", hits)
		}
	})

	t.Run("pinning and no leaks", func(t *testing.T) {
		f := startFront(t, l, nil)
		ctx := ctxT(t)
		c := f.connect(t, nil)
		mustExec(ctx, t, c, "CREATE TEMP TABLE scratch (a int)", "INSERT INTO scratch VALUES (1)")
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM scratch").Scan(&n); err != nil || n != 1 {
			t.Fatalf("temp table read after pinning: %d %v", n, err)
		}
		if got := counterValue(t, f.m.SessionsPinned); got != 1 {
			t.Errorf("sessions pinned metric %v", got)
		}
		if got := counterValue(t, f.m.Front.WritesRefused); got != 0 {
			t.Errorf("writes refused %v", got)
		}
		c.Close(ctx)
		for deadline := time.Now().Add(5 * time.Second); f.srv.sessionCount() != 0; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d cancel keys still registered after every client left", f.srv.sessionCount())
			}
		}
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := f.srv.Shutdown(sctx); err != nil {
			t.Fatalf("Shutdown had to force sessions closed: %v", err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for {
			buf := make([]byte, 1<<20)
			stacks := string(buf[:runtime.Stack(buf, true)])
			if !strings.Contains(stacks, "pgfront.(*session)") && !strings.Contains(stacks, "pgfront.(*Server).handle") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("session goroutines outlive their connections:\n%s", stacks)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func TestLabPGFailover(t *testing.T) {
	l := lab.ForTest(t, lab.Options{HubStandby: true})
	f := startFrontTB(t, l, func(c *Config) {}, l.WANPGAddr(), l.WANPG2Addr())
	ctx := ctxT(t)
	c := f.connect(t, nil)
	if _, err := c.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'before failover')"); err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := l.Failover(fctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		s := f.site.Snapshot()
		if s.Hub.Up && s.Hub.Endpoint == l.WANPG2Addr() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("site did not follow the promotion: %+v", s.Hub)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The same session writes to the promoted hub: its old hub connection
	// died while idle and is replaced, not used for an uncertain write.
	var id int64
	if err := c.QueryRow(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'after failover') RETURNING id").Scan(&id); err != nil {
		t.Fatalf("write after failover: %v", err)
	}
	var body string
	if err := c.QueryRow(ctx, "SELECT body FROM notes WHERE id = $1", id).Scan(&body); err != nil || body != "after failover" {
		t.Fatalf("read-your-write after failover: %q %v", body, err)
	}
}

func TestLabPGReplicaDown(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	// A replica address nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	f := startFront(t, l, func(c *Config) { c.ReplicaAddr = dead })
	ctx := ctxT(t)
	c := f.connect(t, nil)
	var recov bool
	if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&recov); err != nil || recov {
		t.Fatalf("read with the replica down: standby=%v err=%v (want the hub)", recov, err)
	}
	if _, err := c.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'replica down')"); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(ctx, f.dsn(lab.AppUser, "wrong")); err == nil {
		t.Fatal("wrong password accepted with the replica down")
	} else {
		wantCode(t, err, "28P01")
	}

	// Both down: a clear error at login.
	f.cut(t)
	_, err = pgx.Connect(ctx, f.dsn(lab.AppUser, lab.AppPassword))
	pe := wantCode(t, err, "08006")
	t.Logf("login with replica and hub down: %s", pe.Message)
}
