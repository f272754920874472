package routing

import (
	"context"
	"crypto/tls"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/spokeproxy/spokeproxy/metrics"
)

// New thresholds judge the next probe; the link keeps its state and counts.
func TestReconfigureRetunesHysteresis(t *testing.T) {
	fs := newFakeSite(t, Postgres, "a:5432")
	primary := ProbeResult{Writable: true, Position: LSN(10)}
	fs.probe("a:5432", primary, nil)
	if err := fs.HubUnavailable(); err != nil {
		t.Fatal(err)
	}
	cfg := *fs.config()
	cfg.DownAfter, cfg.UpAfter = 1, 3
	if err := fs.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	fs.probe("a:5432", ProbeResult{}, errRefused)
	if err := fs.HubUnavailable(); err == nil {
		t.Fatal("down_after 1: one failed probe left the hub up")
	}
	for i := 1; i <= 3; i++ {
		fs.probe("a:5432", primary, nil)
		if up := fs.HubUnavailable() == nil; up != (i == 3) {
			t.Fatalf("up_after 3: after %d successes up = %v", i, up)
		}
	}
	if got := fs.Status().Endpoints[0].ConsecSuccess; got != 3 {
		t.Errorf("consecutive successes = %d, want 3 (counts survive a reconfiguration)", got)
	}
}

// presetProbers hands out fake probers whose answers the test sets by
// address, before or after the Site asks for them.
type presetProbers struct {
	mu      sync.Mutex
	answers map[string]ProbeResult
	made    map[string][]*fakeProber
}

func (p *presetProbers) new(_ Target, addr string) Prober {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := &fakeProber{res: p.answers[addr]}
	p.made[addr] = append(p.made[addr], f)
	return f
}

func (p *presetProbers) all(addr string) []*fakeProber {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*fakeProber(nil), p.made[addr]...)
}

func runPresetSite(t *testing.T, p *presetProbers, hubs ...string) (*Site, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := NewSite(Config{
		Protocol: Postgres, Hubs: hubs, Replica: "replica",
		ProbeInterval: 10 * time.Millisecond, Policy: DefaultPolicy(),
		Metrics: metrics.NewRouting(reg), NewProber: p.new,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitUntil(t, "hub up", func() bool { return s.HubUnavailable() == nil })
	return s, reg
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Replacing the hub candidate by another address of the same primary
// moves writes to it without the hub ever being down, and without a
// moment where both look like primaries.
func TestReconfigureReplacesHubCandidate(t *testing.T) {
	primary := ProbeResult{Writable: true, Position: LSN(10)}
	p := &presetProbers{answers: map[string]ProbeResult{"a:5432": primary, "b:5432": primary, "replica": {Position: LSN(10)}}, made: map[string][]*fakeProber{}}
	s, reg := runPresetSite(t, p, "a:5432")
	changes := s.Changes()

	cfg := *s.config()
	cfg.Hubs = []string{"b:5432"}
	if err := s.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	snap := s.Snapshot()
	if !snap.Hub.Up || snap.Hub.Endpoint != "b:5432" {
		t.Fatalf("right after the reconfiguration the hub is %+v, want up on b", snap.Hub)
	}
	if d := s.Decide(Request{Kind: KindWrite}); d.Route != RouteHub || d.Hub != "b:5432" {
		t.Fatalf("write decision %+v, want hub b", d)
	}
	select {
	case <-changes:
	default:
		t.Error("the move to b did not signal Changes: fronts would not retire connections to a")
	}
	// Up once at start, never down since.
	if err := testutil.CollectAndCompare(reg, strings.NewReader(`
# HELP spokeproxy_link_transitions_total Changes of the hub link state (to up or down), per protocol, drills included.
# TYPE spokeproxy_link_transitions_total counter
spokeproxy_link_transitions_total{protocol="pg",to="down"} 0
spokeproxy_link_transitions_total{protocol="pg",to="up"} 1
`), "spokeproxy_link_transitions_total"); err != nil {
		t.Errorf("the hub went down during the swap: %v", err)
	}
	var eps []string
	for _, e := range s.Status().Endpoints {
		eps = append(eps, e.Endpoint)
	}
	if strings.Join(eps, " ") != "b:5432 replica" {
		t.Errorf("status endpoints = %v, want b and the replica", eps)
	}
	waitUntil(t, "a's prober closed", func() bool {
		f := p.all("a:5432")[0]
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.closed
	})
	b := p.all("b:5432")[0]
	waitUntil(t, "b probed by its own loop", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.probes >= 3
	})
	// A report for the removed candidate changes nothing.
	s.ReportHubFailure("a:5432", errRefused)
	if err := s.HubUnavailable(); err != nil {
		t.Errorf("a failure of the removed candidate turned the hub down: %v", err)
	}
}

// Removing the hub when the remaining candidate is down leaves the hub
// down, named after that candidate.
func TestReconfigureRemovingTheHubFollowsTheRest(t *testing.T) {
	primary := ProbeResult{Writable: true, Position: LSN(10)}
	p := &presetProbers{answers: map[string]ProbeResult{"a:5432": primary, "b:5432": {Position: LSN(10)}, "replica": {Position: LSN(10)}}, made: map[string][]*fakeProber{}}
	s, _ := runPresetSite(t, p, "a:5432", "b:5432")
	cfg := *s.config()
	cfg.Hubs = []string{"b:5432"}
	if err := s.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	snap := s.Snapshot()
	if snap.Hub.Up || snap.Hub.Reason != ReasonNoPrimary || snap.Hub.Endpoint != "b:5432" {
		t.Fatalf("hub %+v, want down (no primary) naming b", snap.Hub)
	}
	// b promoted: followed as on a failover.
	p.all("b:5432")[0].set(primary, nil)
	waitUntil(t, "hub up on b", func() bool { return s.HubUnavailable() == nil && s.Snapshot().Hub.Endpoint == "b:5432" })
}

// A new hub TLS replaces the monitoring connections of the candidates that
// stay; nothing else is rebuilt.
func TestReconfigureHubTLSRebuildsProbers(t *testing.T) {
	primary := ProbeResult{Writable: true, Position: LSN(10)}
	p := &presetProbers{answers: map[string]ProbeResult{"a:5432": primary, "replica": {Position: LSN(10)}}, made: map[string][]*fakeProber{}}
	s, _ := runPresetSite(t, p, "a:5432")
	cfg := *s.config()
	cfg.HubTLS = &tls.Config{ServerName: "hub"}
	if err := s.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a new prober for a", func() bool { return len(p.all("a:5432")) == 2 })
	first := p.all("a:5432")[0]
	first.mu.Lock()
	closed := first.closed
	first.mu.Unlock()
	if !closed {
		t.Error("the prober made with the old TLS was not closed")
	}
	if n := len(p.all("replica")); n != 1 {
		t.Errorf("the replica's prober was rebuilt (%d probers) for a hub TLS change", n)
	}
	if s.HubUnavailable() != nil {
		t.Error("the hub went down over a TLS change its prober answers through")
	}
}

// What a running Site cannot change refuses the whole reconfiguration.
func TestReconfigureRefusesFixedFields(t *testing.T) {
	fs := newFakeSite(t, Postgres, "a:5432")
	cfg := *fs.config()
	cfg.Replica, cfg.Hubs, cfg.DownAfter = "elsewhere:5432", []string{"b:5432"}, 7
	err := fs.Reconfigure(cfg)
	if err == nil || !strings.Contains(err.Error(), "Replica") {
		t.Fatalf("Reconfigure with a new replica = %v, want an error naming Replica", err)
	}
	if got := fs.config(); got.DownAfter != 2 || got.Hubs[0] != "a:5432" {
		t.Errorf("a refused reconfiguration changed the settings: %+v", got)
	}
	if eps := fs.Status().Endpoints; len(eps) != 2 || eps[0].Endpoint != "a:5432" {
		t.Errorf("a refused reconfiguration changed the candidates: %+v", eps)
	}
	cfg = *fs.config()
	cfg.Hubs = []string{"a:5432", "a:5432"}
	if err := fs.CheckReconfigure(cfg); err == nil {
		t.Error("CheckReconfigure accepted a candidate listed twice")
	}
}
