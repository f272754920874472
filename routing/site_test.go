package routing

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/spokeproxy/spokeproxy/metrics"
)

// fakeProber answers what the test last set.
type fakeProber struct {
	mu     sync.Mutex
	res    ProbeResult
	err    error
	probes int
	closed bool
}

func (f *fakeProber) set(res ProbeResult, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.res, f.err = res, err
}

func (f *fakeProber) Probe(ctx context.Context) (ProbeResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.probes++
	return f.res, f.err
}

func (f *fakeProber) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type fakeSite struct {
	*Site
	clock   *fakeClock
	probers map[string]*fakeProber
	reg     *prometheus.Registry
}

func newFakeSite(t testing.TB, proto Protocol, hubs ...string) *fakeSite {
	t.Helper()
	fs := &fakeSite{
		clock:   &fakeClock{now: time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC)},
		probers: map[string]*fakeProber{},
		reg:     prometheus.NewRegistry(),
	}
	cfg := Config{
		Protocol:      proto,
		Hubs:          hubs,
		Replica:       "replica",
		BaseDN:        "dc=example,dc=org",
		ProbeInterval: 250 * time.Millisecond,
		DownAfter:     2,
		UpAfter:       2,
		Policy:        DefaultPolicy(),
		Metrics:       metrics.NewRouting(fs.reg),
		Now:           fs.clock.Now,
		NewProber: func(t Target, endpoint string) Prober {
			p := &fakeProber{}
			fs.probers[endpoint] = p
			return p
		},
	}
	s, err := NewSite(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fs.Site = s
	return fs
}

func (fs *fakeSite) ep(addr string) *endpoint {
	if addr == fs.replica.addr {
		return fs.replica
	}
	return fs.hubByAddr(addr)
}

// probe sets what addr answers and runs one probe of it, 250 ms later.
func (fs *fakeSite) probe(addr string, res ProbeResult, err error) {
	fs.clock.Add(250 * time.Millisecond)
	fs.probers[addr].set(res, err)
	fs.probeOnce(context.Background(), fs.ep(addr))
}

var errRefused = errors.New("connection refused")

func TestSiteFollowsPrimaryAndRefusesSplitBrain(t *testing.T) {
	fs := newFakeSite(t, Postgres, "a:5432", "b:5432")
	primary := func(l LSN) ProbeResult { return ProbeResult{Writable: true, Position: l} }
	standby := func(l LSN) ProbeResult { return ProbeResult{Writable: false, Position: l} }

	if err := fs.HubUnavailable(); !IsHubUnavailable(err) || !strings.Contains(err.Error(), "starting") {
		t.Fatalf("before any probe: %v, want hub unavailable (starting)", err)
	}
	fs.probe("a:5432", primary(10), nil)
	// b not probed yet: a may not be the only primary.
	if err := fs.HubUnavailable(); !IsHubUnavailable(err) || !strings.Contains(err.Error(), "starting") {
		t.Fatalf("a primary, b never probed: %v, want hub unavailable (starting)", err)
	}
	fs.probe("b:5432", standby(10), nil)
	if err := fs.HubUnavailable(); err != nil {
		t.Fatalf("a primary, b standby: %v", err)
	}
	if d := fs.Decide(Request{Kind: KindWrite}); d.Route != RouteHub || d.Hub != "a:5432" {
		t.Fatalf("write decision %+v, want hub a", d)
	}

	// a is lost: one failure is not enough, two are.
	fs.probe("a:5432", ProbeResult{}, errRefused)
	if fs.Snapshot().Hub.Endpoint != "a:5432" || !fs.Snapshot().Hub.Up {
		t.Fatal("one failed probe turned the hub down")
	}
	fs.probe("a:5432", ProbeResult{}, errRefused)
	snap := fs.Snapshot()
	if snap.Hub.Up || snap.Hub.Reason != ReasonNoPrimary {
		t.Fatalf("a down, b standby: hub %+v, want down with no primary", snap.Hub)
	}
	err := fs.HubUnavailable()
	if !IsHubUnavailable(err) || !errors.Is(err, errRefused) || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("HubUnavailable = %v", err)
	}

	// b is promoted: followed at its next probe.
	fs.probe("b:5432", primary(20), nil)
	if d := fs.Decide(Request{Kind: KindWrite}); d.Route != RouteHub || d.Hub != "b:5432" {
		t.Fatalf("after promotion: %+v, want hub b", d)
	}

	// a comes back still thinking it is primary: split brain.
	fs.probe("a:5432", primary(15), nil)
	fs.probe("a:5432", primary(15), nil)
	d := fs.Decide(Request{Kind: KindWrite})
	if d.Route != RouteRefuse || d.Reason != ReasonSplitBrain || d.Hub != "a:5432,b:5432" {
		t.Fatalf("two primaries: %+v, want refuse for split brain naming both", d)
	}
	if err := fs.HubUnavailable(); !IsHubUnavailable(err) || !strings.Contains(err.Error(), "split brain") {
		t.Fatalf("HubUnavailable on split brain = %v", err)
	}
	// a rejoins as a standby: b alone again.
	fs.probe("a:5432", standby(20), nil)
	if d := fs.Decide(Request{Kind: KindWrite}); d.Route != RouteHub || d.Hub != "b:5432" {
		t.Fatalf("a rejoined as standby: %+v, want hub b", d)
	}
}

func TestSiteStartsWithSplitBrainOrUnreachableCandidate(t *testing.T) {
	primary := ProbeResult{Writable: true, Position: LSN(10)}
	// Two primaries at start: refused from the first verdict, never one
	// picked in between.
	fs := newFakeSite(t, Postgres, "a:5432", "b:5432")
	fs.probe("a:5432", primary, nil)
	if sn := fs.Snapshot(); sn.Hub.Up || sn.Hub.Reason != ReasonStarting {
		t.Fatalf("a primary, b not probed: %+v, want starting", sn.Hub)
	}
	fs.probe("b:5432", primary, nil)
	if sn := fs.Snapshot(); sn.Hub.Up || sn.Hub.Reason != ReasonSplitBrain || sn.Hub.Endpoint != "a:5432,b:5432" {
		t.Fatalf("two primaries at start: %+v, want split brain", sn.Hub)
	}
	// An unreachable candidate holds the start only until its first
	// failure; and a standby answering first is "starting", not "no
	// writable hub", while the primary is still unprobed.
	fs = newFakeSite(t, Postgres, "a:5432", "b:5432", "c:5432")
	fs.probe("c:5432", ProbeResult{Position: LSN(10)}, nil)
	if sn := fs.Snapshot(); sn.Hub.Up || sn.Hub.Reason != ReasonStarting {
		t.Fatalf("only a standby probed: %+v, want starting", sn.Hub)
	}
	fs.probe("a:5432", primary, nil)
	fs.probe("b:5432", ProbeResult{}, errRefused)
	if sn := fs.Snapshot(); !sn.Hub.Up || sn.Hub.Endpoint != "a:5432" {
		t.Fatalf("a primary, b unreachable, c standby: %+v, want a", sn.Hub)
	}
}

func TestSiteLDAPPrefersFirstProvider(t *testing.T) {
	fs := newFakeSite(t, LDAP, "ldap://p1:389", "ldap://p2:389")
	ok := ProbeResult{Writable: true, Position: CSNSet{}}
	fs.probe("ldap://p2:389", ok, nil)
	if s := fs.Snapshot(); !s.Hub.Up || s.Hub.Endpoint != "ldap://p2:389" {
		t.Fatalf("only p2 known: %+v", s.Hub)
	}
	fs.probe("ldap://p1:389", ok, nil)
	if s := fs.Snapshot(); s.Hub.Endpoint != "ldap://p1:389" {
		t.Fatalf("both up: hub %q, want the first configured", s.Hub.Endpoint)
	}
	// A consumer listed by mistake (answers writes with a referral) is skipped.
	fs.probe("ldap://p1:389", ProbeResult{Writable: false, Position: CSNSet{}}, nil)
	if s := fs.Snapshot(); s.Hub.Endpoint != "ldap://p2:389" {
		t.Fatalf("p1 not writable: hub %q, want p2", s.Hub.Endpoint)
	}
	// The data path reports p2 by host:port: matched to the URL.
	fs.ReportHubFailure("p2:389", errRefused)
	if s := fs.Snapshot(); s.Hub.Up {
		t.Fatalf("after report: %+v, want down", s.Hub)
	}
}

// An idle hub connection closed by its peer (slapd's idletimeout) only
// asks for a probe: a hub that answers stays up; one that does not turns
// down at once, without waiting for DownAfter failures.
func TestSiteSuspectHubProbesBeforeJudging(t *testing.T) {
	fs := newFakeSite(t, LDAP, "ldap://p1:389")
	ok := ProbeResult{Writable: true, Position: CSNSet{}}
	fs.probe("ldap://p1:389", ok, nil)
	if fs.HubUnavailable() != nil {
		t.Fatal("hub not up after a probe")
	}
	fs.SuspectHub("p1:389", io.EOF)
	if err := fs.HubUnavailable(); err != nil {
		t.Fatalf("a suspicion alone turned the hub down: %v", err)
	}
	select {
	case <-fs.ep("ldap://p1:389").kick:
	default:
		t.Fatal("a suspicion did not ask for a probe at once")
	}
	fs.probe("ldap://p1:389", ok, nil)
	if err := fs.HubUnavailable(); err != nil {
		t.Fatalf("the hub answered the probe, yet it is down: %v", err)
	}
	// Cleared by that probe: a later lone failure waits for DownAfter.
	fs.probe("ldap://p1:389", ProbeResult{}, errRefused)
	if fs.HubUnavailable() != nil {
		t.Fatal("one failure after a cleared suspicion turned the hub down; want DownAfter=2")
	}
	fs.probe("ldap://p1:389", ok, nil)
	fs.SuspectHub("p1:389", io.EOF)
	fs.probe("ldap://p1:389", ProbeResult{}, errRefused)
	err := fs.HubUnavailable()
	if err == nil || !strings.Contains(err.Error(), "idle connection") {
		t.Fatalf("a failed probe after a suspicion: %v, want down at once naming the idle connection", err)
	}
}

func TestSiteReportTurnsDownAtOnceAndProbesConfirmRecovery(t *testing.T) {
	fs := newFakeSite(t, Postgres, "hub:5432")
	fs.probe("hub:5432", ProbeResult{Writable: true, Position: LSN(1)}, nil)
	changes := fs.Changes()
	fs.ReportHubFailure("hub:5432", errRefused)
	select {
	case <-changes:
	default:
		t.Fatal("Changes not signalled by a data-path report")
	}
	err := fs.HubUnavailable()
	if !IsHubUnavailable(err) || !errors.Is(err, errRefused) || !strings.Contains(err.Error(), "hub:5432") {
		t.Fatalf("after report: %v", err)
	}
	select {
	case <-fs.ep("hub:5432").kick:
	default:
		t.Fatal("a report did not ask for a probe at once")
	}
	fs.probe("hub:5432", ProbeResult{Writable: true, Position: LSN(1)}, nil)
	if fs.HubUnavailable() == nil {
		t.Fatal("one probe success brought the hub back; want UpAfter=2")
	}
	fs.probe("hub:5432", ProbeResult{Writable: true, Position: LSN(1)}, nil)
	if err := fs.HubUnavailable(); err != nil {
		t.Fatalf("after two successes: %v", err)
	}
	fs.ReportHubFailure("nosuch:1", errRefused)
	if fs.HubUnavailable() != nil {
		t.Fatal("a report for an unknown endpoint changed the hub")
	}

	fs.probe("replica", ProbeResult{Position: LSN(1)}, nil)
	if !fs.Snapshot().Replica.Up {
		t.Fatal("replica not up after a probe")
	}
	fs.ReportReplicaFailure(errRefused)
	if fs.Snapshot().Replica.Up {
		t.Fatal("replica still up after a report")
	}
	if d := fs.Decide(Request{Kind: KindRead}); d.Route != RouteHub || d.Reason != ReasonReplicaDown {
		t.Fatalf("read with replica down: %+v", d)
	}
}

func TestSiteLag(t *testing.T) {
	fs := newFakeSite(t, Postgres, "hub:5432")
	hub := func(l LSN) { fs.probe("hub:5432", ProbeResult{Writable: true, Position: l}, nil) }
	rep := func(l LSN) { fs.probe("replica", ProbeResult{Position: l}, nil) }
	if s := fs.Snapshot(); s.Replica.LagKnown || s.Replica.LagBytes != -1 {
		t.Fatalf("lag before any sample: %+v", s.Replica)
	}
	hub(100) // sampled at t0+250ms
	rep(100) // t0+500ms: reached the newest sample
	if s := fs.Snapshot(); !s.Replica.LagKnown || s.Replica.Lag != 0 || s.Replica.LagBytes != 0 {
		t.Fatalf("caught up: %+v", s.Replica)
	}
	// An idle hub: the same position sampled again, lag stays 0.
	hub(100)
	rep(100)
	if s := fs.Snapshot(); s.Replica.Lag != 0 {
		t.Fatalf("idle hub: lag %v, want 0", s.Replica.Lag)
	}
	hubAt100 := fs.clock.Now().Add(-250 * time.Millisecond) // when the last hub(100) ran
	// The hub moves on, the replica does not.
	hub(200)
	hub(300)
	rep(100)
	s := fs.Snapshot()
	if want := fs.clock.Now().Sub(hubAt100); s.Replica.Lag != want || s.Replica.LagBytes != 200 {
		t.Fatalf("behind: lag %v bytes %d, want %v and 200", s.Replica.Lag, s.Replica.LagBytes, want)
	}
	// Reaching 200 (not 300) counts from 200's sample time.
	rep(250)
	s = fs.Snapshot()
	if s.Replica.Lag != 750*time.Millisecond || s.Replica.LagBytes != 50 {
		t.Fatalf("partly caught up: lag %v bytes %d, want 750ms (since 200 was sampled) and 50", s.Replica.Lag, s.Replica.LagBytes)
	}
	// Beyond MaxLag with the hub up, reads go to the hub.
	fs.clock.Add(time.Minute)
	if d := fs.Decide(Request{Kind: KindRead}); d.Route != RouteHub || d.Reason != ReasonReplicaStale {
		t.Fatalf("stale replica: %+v", d)
	}
	rep(300)
	if s := fs.Snapshot(); s.Replica.Lag != 0 {
		t.Fatalf("caught up again: lag %v", s.Replica.Lag)
	}
	// During a hub outage the lag grows from the last reached sample.
	fs.ReportHubFailure("hub:5432", errRefused)
	fs.clock.Add(10 * time.Second)
	if s := fs.Snapshot(); s.Replica.Lag < 10*time.Second {
		t.Fatalf("hub down: lag %v, want at least 10s", s.Replica.Lag)
	}
}

func TestSiteWaitFor(t *testing.T) {
	fs := newFakeSite(t, Postgres, "hub:5432")
	fs.probe("replica", ProbeResult{Position: LSN(100)}, nil)
	if err := fs.WaitFor(context.Background(), LSN(50)); err != nil {
		t.Fatalf("already applied: %v", err)
	}
	if err := fs.WaitFor(context.Background(), nil); err != nil {
		t.Fatalf("nil position: %v", err)
	}
	if d := fs.nextProbe(fs.replica); d != 250*time.Millisecond {
		t.Fatalf("idle replica polled every %v", d)
	}
	done := make(chan error, 2)
	for range 2 {
		go func() { done <- fs.WaitFor(context.Background(), LSN(200)) }()
	}
	// Wait until both are registered, then check the fast poll.
	for {
		fs.mu.Lock()
		n := len(fs.waiters)
		fs.mu.Unlock()
		if n == 2 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if d := fs.nextProbe(fs.replica); d != 5*time.Millisecond {
		t.Fatalf("replica with waiters polled every %v, want the fast interval", d)
	}
	fs.probe("replica", ProbeResult{Position: LSN(150)}, nil)
	select {
	case err := <-done:
		t.Fatalf("woke at 150 for 200: %v", err)
	default:
	}
	fs.probe("replica", ProbeResult{Position: LSN(200)}, nil)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("WaitFor = %v", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := fs.WaitFor(ctx, LSN(300))
	var we *WaitError
	if !IsWaitTimeout(err) || !errors.As(err, &we) || we.Have != LSN(200) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	fs.mu.Lock()
	n := len(fs.waiters)
	fs.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d waiters left behind", n)
	}
}

func TestSiteDrillStatusAndMetrics(t *testing.T) {
	fs := newFakeSite(t, Postgres, "hub:5432")
	fs.probe("hub:5432", ProbeResult{Writable: true, Position: LSN(100)}, nil)
	fs.probe("replica", ProbeResult{Position: LSN(100)}, nil)
	changes := fs.Changes()
	fs.StartDrill(time.Hour)
	<-changes
	if err := fs.HubUnavailable(); !IsHubUnavailable(err) || !strings.Contains(err.Error(), "drill") {
		t.Fatalf("during drill: %v", err)
	}
	err := testutil.CollectAndCompare(fs.reg, strings.NewReader(`
# HELP spokeproxy_drill_active 1 while an operator drill forces the hub down for this proxy.
# TYPE spokeproxy_drill_active gauge
spokeproxy_drill_active{protocol="pg"} 1
# HELP spokeproxy_hub_up 1 if a writable hub is usable for this protocol (0 while down, split brain or drill).
# TYPE spokeproxy_hub_up gauge
spokeproxy_hub_up{protocol="pg"} 0
# HELP spokeproxy_link_transitions_total Changes of the hub link state (to up or down), per protocol, drills included.
# TYPE spokeproxy_link_transitions_total counter
spokeproxy_link_transitions_total{protocol="pg",to="down"} 1
spokeproxy_link_transitions_total{protocol="pg",to="up"} 1
# HELP spokeproxy_replica_up 1 if the local replica answers probes.
# TYPE spokeproxy_replica_up gauge
spokeproxy_replica_up{protocol="pg"} 1
`), "spokeproxy_drill_active", "spokeproxy_hub_up", "spokeproxy_link_transitions_total", "spokeproxy_replica_up")
	if err != nil {
		t.Fatal(err)
	}
	// The drill ends by itself on the Site's clock.
	fs.clock.Add(2 * time.Hour)
	if err := fs.HubUnavailable(); err != nil {
		t.Fatalf("after the drill's end: %v", err)
	}
	fs.StartDrill(time.Hour)
	fs.StopDrill()
	if err := fs.HubUnavailable(); err != nil {
		t.Fatalf("after StopDrill: %v", err)
	}
	err = testutil.CollectAndCompare(fs.reg, strings.NewReader(`
# HELP spokeproxy_hub_info The current writable hub endpoint; the value is always 1.
# TYPE spokeproxy_hub_info gauge
spokeproxy_hub_info{endpoint="hub:5432",protocol="pg"} 1
# HELP spokeproxy_replication_lag_bytes Hub WAL position minus the local replica's replay position (PostgreSQL).
# TYPE spokeproxy_replication_lag_bytes gauge
spokeproxy_replication_lag_bytes{protocol="pg"} 0
# HELP spokeproxy_replication_lag_seconds Time since the local replica last reached a hub position sampled at a known time (0 when it holds the latest sample while the hub is up).
# TYPE spokeproxy_replication_lag_seconds gauge
spokeproxy_replication_lag_seconds{protocol="pg"} 0
`), "spokeproxy_hub_info", "spokeproxy_replication_lag_bytes", "spokeproxy_replication_lag_seconds")
	if err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(fs.reg, "spokeproxy_probe_duration_seconds"); n != 2 {
		t.Fatalf("%d probe duration series, want hub and replica", n)
	}

	fs.probe("hub:5432", ProbeResult{}, errRefused)
	st := fs.Status()
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	eps := back["endpoints"].([]any)
	if len(eps) != 2 {
		t.Fatalf("status lists %d endpoints: %s", len(eps), raw)
	}
	hub := eps[0].(map[string]any)
	if hub["state"] != "up" || hub["target"] != "hub" || !strings.Contains(hub["last_error"].(string), "connection refused") || hub["consecutive_failures"].(float64) != 1 {
		t.Fatalf("hub endpoint status: %v", hub)
	}
	rep := back["replica"].(map[string]any)
	if rep["position"] != "0/64" || rep["up"] != true || rep["lag_bytes"] != 0.0 || rep["lag_known"] != true {
		t.Fatalf("replica status: %v", rep)
	}
}

// Run drives the probes on its own and stops with its context.
func TestSiteRun(t *testing.T) {
	before := runtime.NumGoroutine()
	fs := newFakeSite(t, Postgres, "hub:5432")
	cfg := *fs.config()
	cfg.ProbeInterval = 10 * time.Millisecond
	fs.live.Store(newSettings(cfg))
	fs.probers["hub:5432"].set(ProbeResult{Writable: true, Position: LSN(10)}, nil)
	fs.probers["replica"].set(ProbeResult{Position: LSN(5)}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error)
	go func() { ran <- fs.Run(ctx) }()

	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	waited := make(chan error)
	go func() { waited <- fs.WaitFor(wctx, LSN(10)) }()
	for fs.HubUnavailable() != nil {
		select {
		case <-wctx.Done():
			t.Fatal("hub never came up")
		case <-fs.Changes():
		case <-time.After(10 * time.Millisecond):
		}
	}
	fs.probers["replica"].set(ProbeResult{Position: LSN(10)}, nil)
	if err := <-waited; err != nil {
		t.Fatalf("WaitFor under Run: %v", err)
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	for addr, p := range fs.probers {
		p.mu.Lock()
		if !p.closed || p.probes == 0 {
			t.Errorf("%s: closed %v after %d probes", addr, p.closed, p.probes)
		}
		p.mu.Unlock()
	}
	// No probe goroutine outlives Run (the helpers above have returned too).
	for i := 0; runtime.NumGoroutine() > before; i++ {
		if i > 1000 {
			t.Fatalf("%d goroutines after Run returned, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestNewSiteValidates(t *testing.T) {
	_, err := NewSite(Config{Protocol: "smtp"})
	if err == nil || !strings.Contains(err.Error(), "protocol") || !strings.Contains(err.Error(), "no hub") || !strings.Contains(err.Error(), "no replica") {
		t.Fatalf("NewSite of an empty config: %v", err)
	}
	_, err = NewSite(Config{Protocol: LDAP, Hubs: []string{"ldap://h:389", "ldap://h"}, Replica: "ldap://r", BaseDN: "dc=x"})
	if err == nil || !strings.Contains(err.Error(), "listed twice") {
		t.Fatalf("NewSite with a hub listed twice: %v", err)
	}
}

// After a failed probe of an UP endpoint the next probe comes at once (so a
// silent link is confirmed within about two probe timeouts); otherwise at
// the interval.
func TestSiteProbeCadence(t *testing.T) {
	fs := newFakeSite(t, Postgres, "hub:5432")
	ep := fs.ep("hub:5432")
	fs.probe("hub:5432", ProbeResult{Writable: true}, nil)
	if d := fs.nextProbe(ep); d != 250*time.Millisecond {
		t.Fatalf("healthy: next probe in %v", d)
	}
	fs.probe("hub:5432", ProbeResult{}, errRefused)
	if d := fs.nextProbe(ep); d != 20*time.Millisecond {
		t.Fatalf("one failure while up: next probe in %v, want 20ms", d)
	}
	fs.probe("hub:5432", ProbeResult{}, errRefused)
	if d := fs.nextProbe(ep); d != 250*time.Millisecond {
		t.Fatalf("down: next probe in %v, want the interval (hysteresis in time)", d)
	}
}

func TestSiteReplicaChangeSignals(t *testing.T) {
	fs := newFakeSite(t, Postgres, "hub:5432")
	ch := fs.Changes()
	fs.probe("replica", ProbeResult{Position: LSN(1)}, nil)
	select {
	case <-ch:
	default:
		t.Fatal("replica coming up did not signal Changes")
	}
	ch = fs.Changes()
	fs.probe("replica", ProbeResult{Position: LSN(2)}, nil)
	select {
	case <-ch:
		t.Fatal("a position change alone signalled Changes")
	default:
	}
}

func TestParseConsistency(t *testing.T) {
	for _, c := range []Consistency{ConsistencySession, ConsistencySite, ConsistencyNone} {
		got, err := ParseConsistency(c.String())
		if err != nil || got != c {
			t.Errorf("ParseConsistency(%q) = %v, %v", c.String(), got, err)
		}
	}
	if _, err := ParseConsistency("eventual"); err == nil || !strings.Contains(err.Error(), "eventual") {
		t.Errorf("ParseConsistency(eventual) error = %v", err)
	}
}

// Fronts ask per request: the decision must not allocate.
func TestSiteDecideDoesNotAllocate(t *testing.T) {
	fs := newFakeSite(t, Postgres, "hub:5432")
	fs.probe("hub:5432", ProbeResult{Writable: true, Position: LSN(100)}, nil)
	fs.probe("replica", ProbeResult{Position: LSN(100)}, nil)
	fs.ReportReplicaFailure(errRefused) // a last error to carry in the snapshot
	fs.probe("replica", ProbeResult{Position: LSN(100)}, nil)
	pos := Position(LSN(50))
	allocs := testing.AllocsPerRun(100, func() {
		fs.Decide(Request{Kind: KindRead, SessionPos: pos})
		fs.HubUnavailable()
	})
	if allocs != 0 {
		t.Errorf("Decide and HubUnavailable allocate %v times per call", allocs)
	}
}

func TestSiteRepeatedReportsDoNotSpinProbes(t *testing.T) {
	fs := newFakeSite(t, Postgres, "hub:5432")
	fs.probe("hub:5432", ProbeResult{Writable: true}, nil)
	ep := fs.ep("hub:5432")
	fs.ReportHubFailure("hub:5432", errRefused)
	<-ep.kick
	fs.ReportHubFailure("hub:5432", errRefused)
	select {
	case <-ep.kick:
		t.Fatal("a report while already down asked for another probe")
	default:
	}
}
