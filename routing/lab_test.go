package routing_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/spokeproxy/spokeproxy/lab"
	"github.com/spokeproxy/spokeproxy/metrics"
	"github.com/spokeproxy/spokeproxy/routing"
)

// Detection targets of issue 3, measured against the real lab with the
// documented default probe settings (250 ms interval, 500 ms timeout, 2
// failures down, 2 successes up).
const (
	targetReport    = 100 * time.Millisecond  // hard cut, from the first failed use on the data path
	targetCutProbes = time.Second             // hard cut, by probes alone
	targetBlackhole = 1500 * time.Millisecond // silent link, by probes
	targetRecovery  = 1500 * time.Millisecond // link back, by probes
	// The issue sets no split-brain target; a promotion is seen at the
	// promoted server's next probe (one 250 ms interval), so it is held to
	// the probes-alone target.
	targetSplitBrain = time.Second
)

type siteUnderTest struct {
	*routing.Site
	reg *prometheus.Registry
}

func startSite(t *testing.T, cfg routing.Config) *siteUnderTest {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Metrics = metrics.NewRouting(reg)
	cfg.Policy = routing.DefaultPolicy()
	cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s, err := routing.NewSite(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return &siteUnderTest{Site: s, reg: reg}
}

// testWriter sends the Site's log lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

func pgSite(t *testing.T, l *lab.Lab, hubs ...string) *siteUnderTest {
	return startSite(t, routing.Config{
		Protocol: routing.Postgres,
		Hubs:     hubs,
		Replica:  l.ReplicaPGAddr(),
		User:     lab.AuthUser,
		Password: l.AuthPassword(),
		Database: "postgres",
	})
}

func ldapSite(t *testing.T, l *lab.Lab, hubs ...string) *siteUnderTest {
	return startSite(t, routing.Config{
		Protocol:     routing.LDAP,
		Hubs:         hubs,
		Replica:      l.ReplicaLDAPURL(),
		BaseDN:       lab.BaseDN,
		BindDN:       lab.AdminDN,
		BindPassword: l.AdminPassword(),
	})
}

// waitState waits (at most limit) until cond holds for the Site's snapshot
// and returns the time since from.
func waitState(t *testing.T, s *siteUnderTest, from time.Time, limit time.Duration, what string, cond func(routing.Snapshot) bool) time.Duration {
	t.Helper()
	deadline := time.After(limit)
	for {
		changes := s.Changes()
		if cond(s.Snapshot()) {
			return time.Since(from)
		}
		select {
		case <-changes:
		case <-time.After(2 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%s: not reached within %v; status: %+v", what, limit, s.Status())
		}
	}
}

func hubUp(s routing.Snapshot) bool       { return s.Hub.Up }
func hubDown(s routing.Snapshot) bool     { return !s.Hub.Up }
func replicaDown(s routing.Snapshot) bool { return !s.Replica.Up }
func allUp(s routing.Snapshot) bool       { return s.Hub.Up && s.Replica.Up }

// checkTarget logs a measured detection time and asserts its target, with
// slack for a loaded 2-core machine shared by several test runs: a quarter
// of the target, at least 100 ms.
func checkTarget(t *testing.T, what string, got, target time.Duration) {
	t.Helper()
	note := ""
	if got > target {
		note = " OVER TARGET (within slack)"
	}
	limit := target + max(target/4, 100*time.Millisecond)
	t.Logf("MEASURED %s: %v (target %v)%s", what, got.Round(time.Millisecond), target, note)
	if got > limit {
		t.Errorf("%s took %v, target %v (limit with slack %v)", what, got, target, limit)
	}
}

// inBackground runs f (a lab control call) while the test measures, and
// returns the function that waits for it and fails the test on its error.
func inBackground(t *testing.T, f func() error) (wait func()) {
	done := make(chan error, 1)
	go func() { done <- f() }()
	return func() {
		t.Helper()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestLabPostgres(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	s := pgSite(t, l, l.WANPGAddr())
	waitState(t, s, time.Now(), 10*time.Second, "initial hub and replica up", allUp)
	ctx := context.Background()

	hub, err := pgx.Connect(ctx, l.HubSuperDSN("postgres"))
	must(t, err)
	defer hub.Close(ctx)
	_, err = hub.Exec(ctx, "CREATE TABLE routing_probe_test (n int)")
	must(t, err)
	write := func() routing.LSN {
		t.Helper()
		var text string
		// The position after the commit, as the PostgreSQL front learns it
		// (pg_current_wal_lsn() inside the statement precedes its commit).
		_, err := hub.Exec(ctx, "INSERT INTO routing_probe_test VALUES (1)")
		must(t, err)
		must(t, hub.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&text))
		lsn, err := routing.ParseLSN(text)
		must(t, err)
		return lsn
	}

	t.Run("read your writes", func(t *testing.T) {
		for i := range 5 {
			lsn := write()
			wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			start := time.Now()
			err := s.WaitFor(wctx, lsn)
			took := time.Since(start)
			cancel()
			if err != nil {
				t.Fatalf("WaitFor(%v): %v", lsn, err)
			}
			if !s.ReplicaPosition().Covers(lsn) {
				t.Fatalf("WaitFor returned but the replica is at %v < %v", s.ReplicaPosition(), lsn)
			}
			t.Logf("MEASURED WaitFor %d: %v", i, took.Round(10*time.Microsecond))
			if d := s.Decide(routing.Request{Kind: routing.KindRead, SessionPos: lsn}); d.Route != routing.RouteLocal {
				t.Fatalf("read after WaitFor: %+v", d)
			}
		}
		// A position far ahead is never reached: the wait is bounded.
		wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if err := s.WaitFor(wctx, routing.LSN(1<<62)); !routing.IsWaitTimeout(err) {
			t.Fatalf("WaitFor of an unreachable position: %v", err)
		}
		waitState(t, s, time.Now(), 2*time.Second, "lag measured", func(sn routing.Snapshot) bool {
			return sn.Replica.LagKnown && sn.Replica.LagBytes >= 0
		})
		sn := s.Snapshot()
		t.Logf("MEASURED lag on an idle loopback link: %v, %d bytes", sn.Replica.Lag, sn.Replica.LagBytes)
		if sn.Replica.Lag > time.Second {
			t.Errorf("lag %v on an idle healthy link", sn.Replica.Lag)
		}
	})

	t.Run("cut detected by probes", func(t *testing.T) {
		// A fresh Site per scenario: flap damping remembers earlier outages.
		s := pgSite(t, l, l.WANPGAddr())
		waitState(t, s, time.Now(), 10*time.Second, "up", allUp)
		start := time.Now()
		must(t, l.SetLink(lab.LinkPG, false))
		checkTarget(t, "pg cut by probes", waitState(t, s, start, 5*time.Second, "hub down after cut", hubDown), targetCutProbes)
		if d := s.Decide(routing.Request{Kind: routing.KindWrite}); d.Route != routing.RouteRefuse || d.Reason != routing.ReasonHubDown || d.Hub != l.WANPGAddr() {
			t.Errorf("write during cut: %+v", d)
		}
		if d := s.Decide(routing.Request{Kind: routing.KindRead}); d.Route != routing.RouteLocal {
			t.Errorf("read during cut: %+v", d)
		}
		if err := s.HubUnavailable(); !routing.IsHubUnavailable(err) {
			t.Errorf("HubUnavailable during cut: %v", err)
		} else {
			t.Logf("error during cut: %v", err)
		}
		// /status and /metrics show it.
		st := s.Status()
		if st.Hub.Up || st.Hub.Reason != "hub unreachable" || st.Endpoints[0].State != routing.StateDown || st.Endpoints[0].LastError == "" || st.Endpoints[1].Target != routing.TargetReplica || st.Endpoints[1].State != routing.StateUp {
			t.Errorf("status during cut: %+v", st)
		}
		if err := testutil.GatherAndCompare(s.reg, stringsReader(`
# HELP spokeproxy_hub_up 1 if a writable hub is usable for this protocol (0 while down, split brain or drill).
# TYPE spokeproxy_hub_up gauge
spokeproxy_hub_up{protocol="pg"} 0
# HELP spokeproxy_replica_up 1 if the local replica answers probes.
# TYPE spokeproxy_replica_up gauge
spokeproxy_replica_up{protocol="pg"} 1
`), "spokeproxy_hub_up", "spokeproxy_replica_up"); err != nil {
			t.Error(err)
		}
		if n := transitionCount(t, s.reg, "down"); n < 1 {
			t.Errorf("link_transitions_total{to=down} = %v during a cut", n)
		}
		start = time.Now()
		must(t, l.SetLink(lab.LinkPG, true))
		checkTarget(t, "pg recovery after cut", waitState(t, s, start, 5*time.Second, "hub up after restore", hubUp), targetRecovery)
	})

	t.Run("cut reported by the data path", func(t *testing.T) {
		// A fresh Site per scenario: flap damping remembers earlier outages.
		s := pgSite(t, l, l.WANPGAddr())
		waitState(t, s, time.Now(), 10*time.Second, "up", allUp)
		cfg, err := pgx.ParseConfig(l.WANAppDSN())
		must(t, err)
		cfg.DialFunc = s.DialContext
		conn, err := pgx.ConnectConfig(ctx, cfg)
		must(t, err)
		defer conn.Close(ctx)
		cut := time.Now()
		must(t, l.SetLink(lab.LinkPG, false))
		_, err = conn.Exec(ctx, "SELECT 1")
		if err == nil {
			t.Fatal("query through a cut link succeeded")
		}
		failed := time.Now()
		s.ReportHubFailure(l.WANPGAddr(), err)
		took := waitState(t, s, failed, time.Second, "hub down after report", hubDown)
		t.Logf("MEASURED pg cut to failed use: %v", failed.Sub(cut).Round(time.Microsecond))
		checkTarget(t, "pg cut by data-path report (from the failed use)", took, targetReport)
		must(t, l.SetLink(lab.LinkPG, true))
		checkTarget(t, "pg recovery after reported cut", waitState(t, s, time.Now(), 5*time.Second, "hub up", hubUp), targetRecovery)
	})

	t.Run("blackhole", func(t *testing.T) {
		// A fresh Site per scenario: flap damping remembers earlier outages.
		s := pgSite(t, l, l.WANPGAddr())
		waitState(t, s, time.Now(), 10*time.Second, "up", allUp)
		start := time.Now()
		must(t, l.Blackhole(lab.LinkPG))
		checkTarget(t, "pg blackhole by probes", waitState(t, s, start, 5*time.Second, "hub down in blackhole", hubDown), targetBlackhole)
		start = time.Now()
		must(t, l.ClearToxics(lab.LinkPG))
		checkTarget(t, "pg recovery after blackhole", waitState(t, s, start, 5*time.Second, "hub up after blackhole", hubUp), targetRecovery)
	})

	t.Run("latency 25ms each way", func(t *testing.T) {
		// A fresh Site per scenario: flap damping remembers earlier outages.
		s := pgSite(t, l, l.WANPGAddr())
		waitState(t, s, time.Now(), 10*time.Second, "up", allUp)
		before := transitionCount(t, s.reg, "down")
		must(t, l.AddLatency(lab.LinkPG, 25*time.Millisecond))
		defer func() { must(t, l.ClearToxics(lab.LinkPG)) }()
		// Replication goes through the link too: a write is applied ~26 ms later.
		lsn := write()
		start := time.Now()
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		must(t, s.WaitFor(wctx, lsn))
		cancel()
		t.Logf("MEASURED WaitFor through 25 ms latency: %v", time.Since(start).Round(time.Millisecond))
		time.Sleep(1500 * time.Millisecond) // several probe rounds through the slow link
		st := s.Status()
		if !st.Hub.Up {
			t.Fatalf("hub down under 25 ms latency: %+v", st)
		}
		if after := transitionCount(t, s.reg, "down"); after != before {
			t.Errorf("the hub went down %v times under latency alone", after-before)
		}
		hubProbe := st.Endpoints[0].ProbeSeconds
		t.Logf("MEASURED hub probe through 25 ms each way: %.1f ms; lag %.3f s", hubProbe*1000, st.Replica.LagSeconds)
		if hubProbe < 0.050 {
			t.Errorf("hub probe took %.1f ms, less than the 50 ms round trip: not going through the link?", hubProbe*1000)
		}
	})

	t.Run("probe stall with the lab's proxy settings", func(t *testing.T) {
		// Functional tests run the proxy with lab.Proxy* probe settings so a
		// stall of a few hundred milliseconds (a loaded CI machine under
		// -race) does not mark a healthy hub down. A 200 ms delay each way
		// makes every probe take about 400 ms: the old functional settings
		// (300 ms timeout, 2 failures) lose the hub, the lab's keep it.
		withSettings := func(interval, timeout time.Duration, downAfter int) *siteUnderTest {
			return startSite(t, routing.Config{
				Protocol: routing.Postgres, Hubs: []string{l.WANPGAddr()}, Replica: l.ReplicaPGAddr(),
				User: lab.AuthUser, Password: l.AuthPassword(), Database: "postgres",
				ProbeInterval: interval, ProbeTimeout: timeout, DownAfter: downAfter, UpAfter: lab.ProxyUpAfter,
			})
		}
		robust := withSettings(lab.ProxyProbeInterval, lab.ProxyProbeTimeout, lab.ProxyDownAfter)
		fragile := withSettings(100*time.Millisecond, 300*time.Millisecond, 2)
		waitState(t, robust, time.Now(), 10*time.Second, "up", allUp)
		waitState(t, fragile, time.Now(), 10*time.Second, "up", allUp)
		must(t, l.AddLatency(lab.LinkPG, 200*time.Millisecond))
		defer func() { must(t, l.ClearToxics(lab.LinkPG)) }()
		waitState(t, fragile, time.Now(), 5*time.Second, "hub down with 300 ms probe timeouts", hubDown)
		time.Sleep(2 * time.Second) // several probe rounds through the stall
		if n := transitionCount(t, robust.reg, "down"); n != 0 || !robust.Snapshot().Hub.Up {
			t.Errorf("the lab's probe settings lost the hub under a 400 ms stall: %d transitions down, status %+v", int(n), robust.Status().Hub)
		}
		t.Logf("MEASURED hub probe under a 200 ms each-way stall: %.0f ms", robust.Status().Endpoints[0].ProbeSeconds*1000)
	})

	t.Run("flapping link", func(t *testing.T) {
		// A fresh Site per scenario: flap damping remembers earlier outages.
		s := pgSite(t, l, l.WANPGAddr())
		waitState(t, s, time.Now(), 10*time.Second, "up", allUp)
		type change struct {
			at time.Time
			up bool
		}
		var mu sync.Mutex
		var changes []change
		stop := make(chan struct{})
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			last := true
			for {
				ch := s.Changes()
				if up := s.Snapshot().Hub.Up; up != last {
					mu.Lock()
					changes = append(changes, change{time.Now(), up})
					mu.Unlock()
					last = up
				}
				select {
				case <-ch:
				case <-stop:
					return
				}
			}
		}()
		flips := 0
		for enabled := false; flips < 12; enabled = !enabled {
			must(t, l.SetLink(lab.LinkPG, enabled))
			flips++
			time.Sleep(500 * time.Millisecond)
		}
		must(t, l.SetLink(lab.LinkPG, true))
		close(stop)
		<-watched
		mu.Lock()
		defer mu.Unlock()
		t.Logf("MEASURED flapping: %d link flips every 500 ms, %d hub state changes", flips, len(changes))
		// Flap damping: after its second flap the link needs 4, then 8, then
		// 16 successes in a row, which a 500 ms up phase never gives.
		if len(changes) > 4 {
			t.Errorf("%d state changes for %d link flips: the site flaps with the link", len(changes), flips)
		}
		// Coming back up takes UpAfter (2) probes, one interval (250 ms) apart.
		for i := 1; i < len(changes); i++ {
			if gap := changes[i].at.Sub(changes[i-1].at); changes[i].up && gap < 200*time.Millisecond {
				t.Errorf("hub came back up %v after going down: faster than the hysteresis allows", gap)
			}
		}
		stable := time.Now()
		took := waitState(t, s, stable, 10*time.Second, "up after flapping", hubUp)
		t.Logf("MEASURED recovery once the link is stable after flapping (damped): %v", took.Round(time.Millisecond))
	})

	t.Run("hub postgres restarted", func(t *testing.T) {
		// A fresh Site per scenario: flap damping remembers earlier outages.
		s := pgSite(t, l, l.WANPGAddr())
		waitState(t, s, time.Now(), 10*time.Second, "up", allUp)
		// Detection counts from the shutdown request: the stop returns only
		// once the server has exited, which a loaded machine can delay by
		// seconds after the hub stopped taking connections.
		start := time.Now()
		stopped := inBackground(t, func() error { return l.StopHubPG(ctx) })
		down := waitState(t, s, start, 5*time.Second, "hub down while restarting", hubDown)
		checkTarget(t, "pg hub shutdown detected (from the shutdown request)", down, targetCutProbes)
		stopped()
		// Recovery counts from when the restarted server answers a query
		// (StartHubPG returns then), not from its load-dependent start-up.
		must(t, l.StartHubPG(ctx))
		start = time.Now()
		checkTarget(t, "pg hub back after restart (from answering queries)", waitState(t, s, start, 10*time.Second, "hub up after restart", hubUp), targetRecovery)
	})

	t.Run("local replica stopped", func(t *testing.T) {
		// A fresh Site per scenario: flap damping remembers earlier outages.
		s := pgSite(t, l, l.WANPGAddr())
		waitState(t, s, time.Now(), 10*time.Second, "up", allUp)
		start := time.Now()
		must(t, l.StopReplicaPG(ctx)) // returns once the standby has exited
		gone := time.Now()
		t.Logf("MEASURED pg replica exit after a fast shutdown: %v", gone.Sub(start).Round(time.Millisecond))
		checkTarget(t, "pg replica stopped (from its exit)", waitState(t, s, gone, 5*time.Second, "replica down", replicaDown), targetCutProbes)
		if d := s.Decide(routing.Request{Kind: routing.KindRead}); d.Route != routing.RouteHub || d.Reason != routing.ReasonReplicaDown {
			t.Errorf("read with the replica down: %+v", d)
		}
		if !s.Snapshot().Hub.Up {
			t.Error("hub down because the replica stopped")
		}
		err := testutil.GatherAndCompare(s.reg, stringsReader(`
# HELP spokeproxy_replica_up 1 if the local replica answers probes.
# TYPE spokeproxy_replica_up gauge
spokeproxy_replica_up{protocol="pg"} 0
`), "spokeproxy_replica_up")
		if err != nil {
			t.Error(err)
		}
		must(t, l.StartReplicaPG(ctx)) // returns once it answers in recovery
		start = time.Now()
		checkTarget(t, "pg replica back (from answering queries)", waitState(t, s, start, 5*time.Second, "replica up", allUp), targetRecovery)
		if d := s.Decide(routing.Request{Kind: routing.KindRead}); d.Route != routing.RouteLocal {
			t.Errorf("read with the replica back: %+v", d)
		}
		// The position poller has reconnected: a new write is waited for.
		// (A new hub connection: the hub restart scenario ended the first.)
		hub, err := pgx.Connect(ctx, l.HubSuperDSN("postgres"))
		must(t, err)
		defer hub.Close(ctx)
		var text string
		_, err = hub.Exec(ctx, "INSERT INTO routing_probe_test VALUES (2)")
		must(t, err)
		must(t, hub.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&text))
		lsn, err := routing.ParseLSN(text)
		must(t, err)
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		must(t, s.WaitFor(wctx, lsn))
	})
}

func TestLabLDAP(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	s := ldapSite(t, l, l.WANLDAPURL())
	waitState(t, s, time.Now(), 10*time.Second, "initial hub and replica up", allUp)

	provider, err := ldap.DialURL(l.HubLDAPURL())
	must(t, err)
	defer provider.Close()
	must(t, provider.Bind(lab.AdminDN, l.AdminPassword()))
	for _, ep := range s.Status().Endpoints {
		// The hub is the provider; the consumer is read from only.
		if want := ep.Target == routing.TargetHub; ep.Writable != want {
			t.Errorf("status of %s %s: writable %v, want %v", ep.Target, ep.Endpoint, ep.Writable, want)
		}
	}

	t.Run("read your writes", func(t *testing.T) {
		for i := range 3 {
			dn := "uid=routing" + strconv.Itoa(i) + ",ou=people," + lab.BaseDN
			req := ldap.NewAddRequest(dn, nil)
			req.Attribute("objectClass", []string{"inetOrgPerson"})
			req.Attribute("uid", []string{"routing" + strconv.Itoa(i)})
			req.Attribute("cn", []string{"r"})
			req.Attribute("sn", []string{"r"})
			must(t, provider.Add(req))
			res, err := provider.Search(ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, 0, false, "(objectClass=*)", []string{"entryCSN"}, nil))
			must(t, err)
			csn, err := routing.ParseCSN(res.Entries[0].GetAttributeValue("entryCSN"))
			must(t, err)
			wctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			start := time.Now()
			err = s.WaitFor(wctx, csn)
			cancel()
			if err != nil {
				t.Fatalf("WaitFor(%v): %v", csn, err)
			}
			t.Logf("MEASURED LDAP WaitFor %d: %v", i, time.Since(start).Round(10*time.Microsecond))
			if !s.ReplicaPosition().Covers(csn) {
				t.Fatalf("replica at %v does not cover %v", s.ReplicaPosition(), csn)
			}
		}
		waitState(t, s, time.Now(), 2*time.Second, "lag known", func(sn routing.Snapshot) bool { return sn.Replica.LagKnown })
		t.Logf("MEASURED LDAP lag on an idle link: %v", s.Snapshot().Replica.Lag)
	})

	t.Run("consumer listed as a hub is not writable", func(t *testing.T) {
		wrong := ldapSite(t, l, l.ReplicaLDAPURL())
		waitState(t, wrong, time.Now(), 5*time.Second, "consumer probed", func(sn routing.Snapshot) bool {
			return sn.Hub.Reason == routing.ReasonNoPrimary
		})
	})

	t.Run("cut detected by probes", func(t *testing.T) {
		// A fresh Site per scenario: flap damping remembers earlier outages.
		s := ldapSite(t, l, l.WANLDAPURL())
		waitState(t, s, time.Now(), 10*time.Second, "up", allUp)
		start := time.Now()
		must(t, l.SetLink(lab.LinkLDAP, false))
		checkTarget(t, "ldap cut by probes", waitState(t, s, start, 5*time.Second, "hub down", hubDown), targetCutProbes)
		start = time.Now()
		must(t, l.SetLink(lab.LinkLDAP, true))
		checkTarget(t, "ldap recovery after cut", waitState(t, s, start, 5*time.Second, "hub up", hubUp), targetRecovery)
	})

	t.Run("cut reported by the data path", func(t *testing.T) {
		// A fresh Site per scenario: flap damping remembers earlier outages.
		s := ldapSite(t, l, l.WANLDAPURL())
		waitState(t, s, time.Now(), 10*time.Second, "up", allUp)
		raw, err := s.DialHub(context.Background(), l.WANLDAPURL())
		must(t, err)
		conn := ldap.NewConn(raw, false)
		conn.Start()
		defer conn.Close()
		conn.SetTimeout(2 * time.Second)
		must(t, conn.Bind(lab.AdminDN, l.AdminPassword()))
		must(t, l.SetLink(lab.LinkLDAP, false))
		err = conn.Bind(lab.AdminDN, l.AdminPassword())
		if err == nil {
			t.Fatal("bind through a cut link succeeded")
		}
		failed := time.Now()
		s.ReportHubFailure(l.WANLDAPURL(), err)
		checkTarget(t, "ldap cut by data-path report", waitState(t, s, failed, time.Second, "hub down", hubDown), targetReport)
		must(t, l.SetLink(lab.LinkLDAP, true))
		checkTarget(t, "ldap recovery after reported cut", waitState(t, s, time.Now(), 5*time.Second, "hub up", hubUp), targetRecovery)
	})

	t.Run("blackhole", func(t *testing.T) {
		// A fresh Site per scenario: flap damping remembers earlier outages.
		s := ldapSite(t, l, l.WANLDAPURL())
		waitState(t, s, time.Now(), 10*time.Second, "up", allUp)
		start := time.Now()
		must(t, l.Blackhole(lab.LinkLDAP))
		checkTarget(t, "ldap blackhole by probes", waitState(t, s, start, 5*time.Second, "hub down", hubDown), targetBlackhole)
		start = time.Now()
		must(t, l.ClearToxics(lab.LinkLDAP))
		checkTarget(t, "ldap recovery after blackhole", waitState(t, s, start, 5*time.Second, "hub up", hubUp), targetRecovery)
	})

	t.Run("latency 25ms each way", func(t *testing.T) {
		// A fresh Site per scenario: flap damping remembers earlier outages.
		s := ldapSite(t, l, l.WANLDAPURL())
		waitState(t, s, time.Now(), 10*time.Second, "up", allUp)
		must(t, l.AddLatency(lab.LinkLDAP, 25*time.Millisecond))
		defer func() { must(t, l.ClearToxics(lab.LinkLDAP)) }()
		time.Sleep(1500 * time.Millisecond)
		st := s.Status()
		if !st.Hub.Up {
			t.Fatalf("hub down under 25 ms latency: %+v", st)
		}
		t.Logf("MEASURED LDAP hub probe through 25 ms each way: %.1f ms", st.Endpoints[0].ProbeSeconds*1000)
		if st.Endpoints[0].ProbeSeconds < 0.050 {
			t.Errorf("hub probe took %.1f ms: not through the link?", st.Endpoints[0].ProbeSeconds*1000)
		}
	})

	t.Run("hub slapd restarted", func(t *testing.T) {
		// A fresh Site per scenario: flap damping remembers earlier outages.
		s := ldapSite(t, l, l.WANLDAPURL())
		waitState(t, s, time.Now(), 10*time.Second, "up", allUp)
		must(t, l.StopHubLDAP(context.Background())) // returns once slapd has exited
		gone := time.Now()
		checkTarget(t, "ldap provider stopped (from its exit)", waitState(t, s, gone, 5*time.Second, "hub down", hubDown), targetCutProbes)
		if d := s.Decide(routing.Request{Kind: routing.KindWrite}); d.Route != routing.RouteRefuse || d.Reason != routing.ReasonHubDown {
			t.Errorf("write with the provider stopped: %+v", d)
		}
		must(t, l.StartHubLDAP(context.Background())) // returns once it answers a search
		start := time.Now()
		checkTarget(t, "ldap provider back after restart (from answering searches)", waitState(t, s, start, 5*time.Second, "hub up", hubUp), targetRecovery)
	})

	t.Run("local consumer stopped", func(t *testing.T) {
		// A fresh Site per scenario: flap damping remembers earlier outages.
		s := ldapSite(t, l, l.WANLDAPURL())
		waitState(t, s, time.Now(), 10*time.Second, "up", allUp)
		start := time.Now()
		must(t, l.StopReplicaLDAP(context.Background())) // returns once slapd has exited
		// slapd takes about 1.3 s to exit with syncrepl active and may
		// answer meanwhile: the target counts from its exit.
		gone := time.Now()
		t.Logf("MEASURED ldap consumer exit after SIGTERM: %v", gone.Sub(start).Round(time.Millisecond))
		checkTarget(t, "ldap consumer stopped (from its exit)", waitState(t, s, gone, 5*time.Second, "replica down", replicaDown), targetCutProbes)
		if d := s.Decide(routing.Request{Kind: routing.KindRead}); d.Route != routing.RouteHub || d.Reason != routing.ReasonReplicaDown {
			t.Errorf("read with the consumer down: %+v", d)
		}
		must(t, l.StartReplicaLDAP(context.Background())) // returns once it answers a search
		start = time.Now()
		checkTarget(t, "ldap consumer back (from answering searches)", waitState(t, s, start, 5*time.Second, "replica up", allUp), targetRecovery)
	})
}

func TestLabPostgresFailover(t *testing.T) {
	l := lab.ForTest(t, lab.Options{HubStandby: true})
	s := pgSite(t, l, l.WANPGAddr(), l.WANPG2Addr())
	// Both candidates UP first: a standby whose first probe stalled on a
	// loaded machine would otherwise still be DOWN when the primary stops.
	waitState(t, s, time.Now(), 10*time.Second, "primary writable, hub-site standby up and read-only", func(sn routing.Snapshot) bool {
		st := s.Status()
		return sn.Hub.Up && sn.Hub.Endpoint == l.WANPGAddr() && sn.Replica.Up &&
			st.Endpoints[1].State == routing.StateUp && !st.Endpoints[1].Writable
	})
	ctx := context.Background()
	start := time.Now()
	stopped := inBackground(t, func() error { return l.StopHubPrimary(ctx) })
	checkTarget(t, "pg primary stopped (from the shutdown request)", waitState(t, s, start, 5*time.Second, "no writable hub", hubDown), targetCutProbes)
	stopped()
	if r := s.Snapshot().Hub.Reason; r != routing.ReasonNoPrimary {
		t.Errorf("reason with the primary gone and the standby up: %v", r)
	}
	must(t, l.PromoteHubStandby(ctx))
	promoted := time.Now()
	took := waitState(t, s, promoted, 5*time.Second, "promoted standby followed", func(sn routing.Snapshot) bool {
		return sn.Hub.Up && sn.Hub.Endpoint == l.WANPG2Addr()
	})
	checkTarget(t, "pg failover followed after promotion", took, targetRecovery)
	if d := s.Decide(routing.Request{Kind: routing.KindWrite}); d.Route != routing.RouteHub || d.Hub != l.WANPG2Addr() {
		t.Errorf("write after failover: %+v", d)
	}
	must(t, l.RepointSpoke(ctx))
	// The replica follows the new timeline: a write on the new primary is
	// waited for and applied.
	conn, err := pgx.Connect(ctx, l.HubStandbySuperDSN("postgres"))
	must(t, err)
	defer conn.Close(ctx)
	var text string
	_, err = conn.Exec(ctx, "CREATE TABLE after_failover (n int)")
	must(t, err)
	must(t, conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&text))
	lsn, err := routing.ParseLSN(text)
	must(t, err)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	must(t, s.WaitFor(wctx, lsn))
}

// TestLabPostgresSplitBrain promotes the hub-site standby while the primary
// still runs, so both hub candidates answer pg_is_in_recovery() = false: the
// Site must refuse writes naming both rather than pick one, and say so in
// its snapshot, /status and metrics. Stopping the old primary resolves it.
func TestLabPostgresSplitBrain(t *testing.T) {
	l := lab.ForTest(t, lab.Options{HubStandby: true})
	s := pgSite(t, l, l.WANPGAddr(), l.WANPG2Addr())
	waitState(t, s, time.Now(), 10*time.Second, "primary writable, hub-site standby up and read-only", func(sn routing.Snapshot) bool {
		st := s.Status()
		return sn.Hub.Up && sn.Hub.Endpoint == l.WANPGAddr() && sn.Replica.Up &&
			st.Endpoints[1].State == routing.StateUp && !st.Endpoints[1].Writable
	})
	ctx := context.Background()

	// The primary keeps running: pg_promote on the standby only.
	// PromoteHubStandby returns once pg_promote(wait) says the standby is
	// promoted (and it has created the spoke's slot there); the detection
	// time counts from then, the time from the call is logged too.
	called := time.Now()
	must(t, l.PromoteHubStandby(ctx))
	promoted := time.Now()
	both := l.WANPGAddr() + "," + l.WANPG2Addr()
	took := waitState(t, s, promoted, 5*time.Second, "split brain", func(sn routing.Snapshot) bool {
		return sn.Hub.Reason == routing.ReasonSplitBrain
	})
	t.Logf("MEASURED pg promotion call %v; split brain seen %v after the call", promoted.Sub(called).Round(time.Millisecond), time.Since(called).Round(time.Millisecond))
	checkTarget(t, "pg split brain detected (from the promotion's completion)", took, targetSplitBrain)
	for _, c := range []struct {
		dsn  string
		name string
	}{{l.HubSuperDSN("postgres"), "primary"}, {l.HubStandbySuperDSN("postgres"), "promoted standby"}} {
		conn, err := pgx.Connect(ctx, c.dsn)
		must(t, err)
		var inRecovery bool
		must(t, conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery))
		conn.Close(ctx)
		if inRecovery {
			t.Fatalf("the %s is in recovery: not a split brain", c.name)
		}
	}

	sn := s.Snapshot()
	if sn.Hub.Up || sn.Hub.Endpoint != both {
		t.Errorf("hub view during split brain: %+v, want down naming %s", sn.Hub, both)
	}
	if d := s.Decide(routing.Request{Kind: routing.KindWrite}); d.Route != routing.RouteRefuse || d.Reason != routing.ReasonSplitBrain || d.Hub != both {
		t.Errorf("write during split brain: %+v, want refused for split brain naming %s", d, both)
	}
	if d := s.Decide(routing.Request{Kind: routing.KindRead}); d.Route != routing.RouteLocal {
		t.Errorf("read during split brain: %+v, want local", d)
	}
	err := s.HubUnavailable()
	if !routing.IsHubUnavailable(err) || !strings.Contains(err.Error(), "split brain") ||
		!strings.Contains(err.Error(), l.WANPGAddr()) || !strings.Contains(err.Error(), l.WANPG2Addr()) {
		t.Errorf("HubUnavailable during split brain: %v, want split brain naming both hubs", err)
	} else {
		t.Logf("error during split brain: %v", err)
	}
	st := s.Status()
	if st.Hub.Up || st.Hub.Reason != "split brain" || st.Hub.Endpoint != both {
		t.Errorf("/status hub during split brain: %+v", st.Hub)
	}
	for i, ep := range st.Endpoints[:2] {
		if ep.Target != routing.TargetHub || ep.State != routing.StateUp || !ep.Writable {
			t.Errorf("/status endpoint %d during split brain: %+v, want an UP writable hub", i, ep)
		}
	}
	js, err := json.Marshal(st)
	must(t, err)
	if !strings.Contains(string(js), `"reason":"split brain"`) || !strings.Contains(string(js), `"endpoint":"`+both+`"`) {
		t.Errorf("/status JSON does not say split brain naming both hubs: %s", js)
	}
	if err := testutil.GatherAndCompare(s.reg, stringsReader(`
# HELP spokeproxy_hub_up 1 if a writable hub is usable for this protocol (0 while down, split brain or drill).
# TYPE spokeproxy_hub_up gauge
spokeproxy_hub_up{protocol="pg"} 0
`), "spokeproxy_hub_up"); err != nil {
		t.Error(err)
	}
	if n := transitionCount(t, s.reg, "down"); n < 1 {
		t.Errorf("link_transitions_total{to=down} = %v after a split brain", n)
	}
	if n, err := testutil.GatherAndCount(s.reg, "spokeproxy_hub_info"); err != nil || n != 0 {
		t.Errorf("spokeproxy_hub_info has %d series during split brain (%v): no hub is the writable one", n, err)
	}

	// Fencing the old primary ends it: the promoted server is the hub.
	must(t, l.StopHubPG(ctx))
	stopped := time.Now()
	took = waitState(t, s, stopped, 5*time.Second, "promoted standby is the only writable hub", func(sn routing.Snapshot) bool {
		return sn.Hub.Up && sn.Hub.Endpoint == l.WANPG2Addr()
	})
	checkTarget(t, "pg split brain resolved (from the old primary's exit)", took, targetCutProbes)
	if d := s.Decide(routing.Request{Kind: routing.KindWrite}); d.Route != routing.RouteHub || d.Hub != l.WANPG2Addr() {
		t.Errorf("write after the old primary stopped: %+v", d)
	}
	if err := testutil.GatherAndCompare(s.reg, stringsReader(`
# HELP spokeproxy_hub_info The current writable hub endpoint; the value is always 1.
# TYPE spokeproxy_hub_info gauge
spokeproxy_hub_info{endpoint="`+l.WANPG2Addr()+`",protocol="pg"} 1
`), "spokeproxy_hub_info"); err != nil {
		t.Error(err)
	}
}
