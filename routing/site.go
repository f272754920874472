package routing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spokeproxy/spokeproxy/metrics"
)

// Prober runs one real protocol request against one endpoint under the
// context's deadline. It keeps its monitoring connection between probes and
// drops it after a failure, so the next probe redials. Probe and Close are
// called from one goroutine at a time.
type Prober interface {
	Probe(ctx context.Context) (ProbeResult, error)
	Close() error
}

// ProbeResult is what a successful probe learned.
type ProbeResult struct {
	Writable bool     // PostgreSQL: not in recovery; LDAP: a configured provider that answered
	Position Position // the endpoint's current (hub) or applied (replica) position; may be nil
}

// endpoint is one probed server. The fields after kick are guarded by
// Site.mu; prober is used only by the endpoint's own probe goroutine (and,
// before that goroutine starts, by the reconfiguration that adds it).
type endpoint struct {
	target Target
	addr   string
	prober Prober
	kick   chan struct{} // buffered(1): probe now

	stop    context.CancelFunc // ends the probe goroutine; nil until it runs
	removed bool               // a reconfiguration dropped this hub candidate
	rebuild bool               // the hub TLS changed: a new prober before the next probe
	// suspect: the data path saw an idle connection to it closed (see
	// SuspectHub); the next probe's failure counts as a report.
	suspect   error
	link      *link
	writable  bool
	pos       Position
	posAt     time.Time
	lastProbe time.Time
	lastDur   time.Duration
}

// hubSample is a hub position and the time it was sampled: the start of the
// probe, so that "the replica reached it" means the replica holds at least
// what the hub held at that time.
type hubSample struct {
	pos Position
	at  time.Time
}

type waiter struct {
	pos  Position
	done chan struct{}
}

// Site is one protocol's live view of its hub candidates and local replica:
// probes, the link state machines with hysteresis, the replica position
// poller and waiters, lag, and drills. Build it with NewSite, run it with
// Run, change its settings and hub candidates with Reconfigure; every other
// method is safe for concurrent use.
type Site struct {
	protocol Protocol
	log      *slog.Logger
	now      func() time.Time
	metrics  *metrics.Routing // may be nil
	replica  *endpoint

	// live is the current settings: hot paths (Decide, dials, probes) load
	// it without a lock; Reconfigure replaces it whole.
	live atomic.Pointer[settings]
	// reconfMu serialises Reconfigure calls.
	reconfMu sync.Mutex

	mu sync.Mutex // guards everything below and the guarded endpoint fields
	// hubs are the hub candidates in order of preference.
	hubs []*endpoint
	// runCtx is Run's context while Run runs (nil before and after):
	// endpoints added by Reconfigure start probing under it.
	runCtx context.Context
	probes sync.WaitGroup // probe goroutines; Add only under mu with runCtx set
	// hub is the protocol-level hub state as last computed.
	hubUp       bool
	hubEndpoint string
	hubReason   Reason
	hubSince    time.Time
	effectiveUp bool // hubUp && no drill: what metrics and Changes report
	drillUntil  time.Time
	drillTimer  *time.Timer
	changes     chan struct{}
	waiters     map[*waiter]struct{}
	// samples are hub positions the replica has not reached yet, oldest
	// first; covered is the newest one it has reached.
	samples    []hubSample
	covered    hubSample
	hasCovered bool
	hubPos     Position // the newest hub sample
}

const maxSamples = 4096

// settings is one immutable generation of a Site's configuration and the
// WAN dialer made from it.
type settings struct {
	cfg    Config
	dialer *net.Dialer
}

func newSettings(cfg Config) *settings {
	return &settings{cfg: cfg, dialer: wanDialer(cfg.TCPKeepAlive, cfg.TCPUserTimeout)}
}

// NewSite builds a Site from cfg. It starts nothing: call Run.
func NewSite(cfg Config) (*Site, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Site{
		protocol: cfg.Protocol,
		log:      cfg.Logger.With("protocol", string(cfg.Protocol)),
		now:      cfg.Now,
		metrics:  cfg.Metrics,
		changes:  make(chan struct{}),
		waiters:  make(map[*waiter]struct{}),
	}
	s.live.Store(newSettings(cfg))
	now := s.now()
	s.hubSince = now
	s.hubReason = ReasonStarting
	s.hubEndpoint = cfg.Hubs[0]
	for _, h := range cfg.Hubs {
		s.hubs = append(s.hubs, s.newEndpoint(TargetHub, h, now))
	}
	s.replica = s.newEndpoint(TargetReplica, cfg.Replica, now)
	if cfg.Metrics != nil {
		cfg.Metrics.Watch(s.metricsState)
		cfg.Metrics.InitProtocol(string(cfg.Protocol))
	}
	return s, nil
}

// config returns the current settings; callers must not modify them.
func (s *Site) config() *Config { return &s.live.Load().cfg }

func (s *Site) newEndpoint(t Target, addr string, now time.Time) *endpoint {
	cfg := s.config()
	return &endpoint{target: t, addr: addr, kick: make(chan struct{}, 1), prober: s.newProber(t, addr),
		link: newLink(cfg.DownAfter, cfg.UpAfter, cfg.FlapWindow, now)}
}

// newProber makes the prober of one endpoint from the current settings.
func (s *Site) newProber(t Target, addr string) Prober {
	cfg := s.config()
	switch {
	case cfg.NewProber != nil:
		return cfg.NewProber(t, addr)
	case cfg.Protocol == Postgres:
		return newPGProber(s, t, addr)
	}
	return newLDAPProber(s, t, addr)
}

// Protocol returns the protocol this Site serves.
func (s *Site) Protocol() Protocol { return s.protocol }

// Policy returns the routing policy in effect.
func (s *Site) Policy() Policy { return s.config().Policy }

// Run probes every endpoint until ctx ends, then closes the monitoring
// connections. It returns nil after ctx ends. Call it once.
func (s *Site) Run(ctx context.Context) error {
	s.mu.Lock()
	s.runCtx = ctx
	for _, ep := range s.hubs {
		s.startProbeLocked(ep)
	}
	s.startProbeLocked(s.replica)
	s.mu.Unlock()
	<-ctx.Done()
	s.mu.Lock()
	s.runCtx = nil // no probe starts after this: Wait below sees every Add
	if s.drillTimer != nil {
		s.drillTimer.Stop()
	}
	s.mu.Unlock()
	s.probes.Wait()
	return nil
}

// startProbeLocked starts ep's probe goroutine under Run's context.
func (s *Site) startProbeLocked(ep *endpoint) {
	if s.runCtx == nil {
		return
	}
	ctx, stop := context.WithCancel(s.runCtx)
	ep.stop = stop
	s.probes.Add(1)
	go func() {
		defer s.probes.Done()
		s.probeLoop(ctx, ep)
		ep.prober.Close()
	}()
}

func (s *Site) probeLoop(ctx context.Context, ep *endpoint) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-ep.kick:
		}
		s.mu.Lock()
		rebuild := ep.rebuild
		ep.rebuild = false
		s.mu.Unlock()
		if rebuild {
			// The monitoring connection was made with the old hub TLS:
			// the next probe dials with the new one.
			ep.prober.Close()
			ep.prober = s.newProber(ep.target, ep.addr)
		}
		s.probeOnce(ctx, ep)
		t.Reset(s.nextProbe(ep))
	}
}

// nextProbe is the wait before ep's next probe: fast while someone waits for
// a replica position, short after a failure while the endpoint is still UP
// (so a blackhole is confirmed within two probe timeouts), else the interval.
func (s *Site) nextProbe(ep *endpoint) time.Duration {
	cfg := s.config()
	s.mu.Lock()
	defer s.mu.Unlock()
	if ep.target == TargetReplica && len(s.waiters) > 0 {
		return cfg.FastPollInterval
	}
	if ep.link.state == StateUp && ep.link.fails > 0 {
		return min(cfg.ProbeInterval, 20*time.Millisecond)
	}
	return cfg.ProbeInterval
}

// probeResult is one probe's outcome, before it is recorded.
type probeResult struct {
	start, end time.Time
	res        ProbeResult
	err        error
}

// runProbe probes ep once under the current probe timeout; ok is false
// when ctx ended meanwhile (shutting down or the endpoint removed: not a
// verdict on the endpoint).
func (s *Site) runProbe(ctx context.Context, ep *endpoint) (r probeResult, ok bool) {
	r.start = s.now()
	pctx, cancel := context.WithTimeout(ctx, s.config().ProbeTimeout)
	r.res, r.err = ep.prober.Probe(pctx)
	cancel()
	if ctx.Err() != nil {
		return r, false
	}
	r.end = s.now()
	if s.metrics != nil {
		s.metrics.ProbeDuration(string(s.protocol), string(ep.target)).Observe(r.end.Sub(r.start).Seconds())
	}
	if r.err != nil {
		r.err = fmt.Errorf("probe of %s %s: %w", ep.target, ep.addr, r.err)
	}
	return r, true
}

// recordLocked applies a probe's outcome to ep and reports whether ep's
// state changed.
func (s *Site) recordLocked(ep *endpoint, r probeResult) bool {
	ep.lastProbe, ep.lastDur = r.start, r.end.Sub(r.start)
	old := ep.link.state
	var changed bool
	if suspect := ep.suspect; suspect != nil && r.err != nil {
		// The probe confirms what the data path saw: down at once.
		changed = ep.link.report(fmt.Errorf("%w (after the data path saw %v)", r.err, suspect), r.end)
	} else {
		changed = ep.link.probe(r.err, r.end)
	}
	ep.suspect = nil
	if changed {
		s.logEndpoint(ep, old, r.err)
	}
	if r.err == nil {
		ep.writable = r.res.Writable
		if r.res.Position != nil {
			ep.pos, ep.posAt = r.res.Position, r.start
		}
	}
	return changed
}

func (s *Site) probeOnce(ctx context.Context, ep *endpoint) {
	r, ok := s.runProbe(ctx, ep)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ep.removed {
		return // the verdict came in after a reconfiguration dropped it
	}
	epChanged := s.recordLocked(ep, r)
	s.recomputeLocked(r.end, epChanged && ep.target == TargetReplica)
	res, err, start := r.res, r.err, r.start
	if err != nil {
		return
	}
	if ep.target == TargetReplica {
		s.replicaAdvancedLocked()
		return
	}
	if s.hubUp && ep.addr == s.hubEndpoint && res.Position != nil {
		s.addSampleLocked(hubSample{pos: res.Position, at: start})
	}
}

func (s *Site) logEndpoint(ep *endpoint, old LinkState, err error) {
	attrs := []any{"target", string(ep.target), "endpoint", ep.addr, "from", old.String(), "to", ep.link.state.String()}
	if err != nil {
		attrs = append(attrs, "err", err.Error())
	}
	s.log.Info("endpoint state changed", attrs...)
}

// recomputeLocked derives the protocol-level hub from the endpoints, and
// signals, logs and counts a change; signal forces a Changes wake-up (the
// replica's state changed).
func (s *Site) recomputeLocked(now time.Time, signal bool) {
	up, endpoint, reason := false, s.hubEndpoint, ReasonHubDown
	if !s.candidatesLocked(endpoint) {
		// A reconfiguration removed it: name the first candidate now.
		endpoint = s.hubs[0].addr
	}
	var writable []string
	anyKnown, anyUnknown, anyUp := false, false, false
	for _, ep := range s.hubs {
		if ep.link.state != StateUnknown {
			anyKnown = true
		} else {
			anyUnknown = true
		}
		if ep.link.state == StateUp {
			anyUp = true
			if ep.writable {
				writable = append(writable, ep.addr)
			}
		}
	}
	switch {
	case s.protocol == Postgres && len(writable) <= 1 && anyUnknown:
		// Until every candidate has answered or failed once, the first
		// primary to answer is not known to be the only one: a split brain
		// present at start must not be missed by picking it. A candidate
		// that cannot be reached fails its first probe within ProbeTimeout.
		reason = ReasonStarting
	case len(writable) == 1 || (s.protocol == LDAP && len(writable) > 1):
		// LDAP: the configured providers in order of preference.
		up, endpoint, reason = true, writable[0], ReasonNone
	case len(writable) > 1:
		endpoint, reason = strings.Join(writable, ","), ReasonSplitBrain
	case !anyKnown:
		reason = ReasonStarting
	case anyUp:
		reason = ReasonNoPrimary
	}
	changed := up != s.hubUp || endpoint != s.hubEndpoint || reason != s.hubReason
	if up != s.hubUp {
		s.hubSince = now
	}
	s.hubUp, s.hubEndpoint, s.hubReason = up, endpoint, reason
	if changed {
		attrs := []any{"up", up, "endpoint", endpoint}
		if !up {
			attrs = append(attrs, "reason", reason.String())
		}
		s.log.Info("hub state changed", attrs...)
	}
	s.effectiveLocked(now, changed || signal)
}

// effectiveLocked updates the hub state as fronts and metrics see it (drill
// included) and wakes Changes watchers when anything changed.
func (s *Site) effectiveLocked(now time.Time, changed bool) {
	eff := s.hubUp && !s.drillActiveLocked(now)
	if eff != s.effectiveUp {
		s.effectiveUp = eff
		changed = true
		if s.metrics != nil {
			to := metrics.StateDown
			if eff {
				to = metrics.StateUp
			}
			s.metrics.Transition(string(s.protocol), to)
		}
	}
	if changed {
		close(s.changes)
		s.changes = make(chan struct{})
	}
}

func (s *Site) drillActiveLocked(now time.Time) bool {
	return !s.drillUntil.IsZero() && now.Before(s.drillUntil)
}

func (s *Site) addSampleLocked(h hubSample) {
	s.hubPos = h.pos
	if n := len(s.samples); n > 0 && positionEqual(s.samples[n-1].pos, h.pos) {
		s.samples[n-1].at = h.at // the hub still held this position later
	} else {
		if len(s.samples) >= maxSamples {
			s.samples = s.samples[1:]
		}
		s.samples = append(s.samples, h)
	}
	s.coverSamplesLocked()
}

func positionEqual(a, b Position) bool {
	return a != nil && b != nil && a.Covers(b) && b.Covers(a)
}

// coverSamplesLocked moves the samples the replica has reached out of the
// queue, remembering the newest.
func (s *Site) coverSamplesLocked() {
	pos := s.replica.pos
	if pos == nil {
		return
	}
	i := 0
	for i < len(s.samples) && pos.Covers(s.samples[i].pos) {
		if !s.hasCovered || s.samples[i].at.After(s.covered.at) {
			s.covered, s.hasCovered = s.samples[i], true
		}
		i++
	}
	s.samples = s.samples[i:]
}

// replicaAdvancedLocked wakes the waiters the replica's position now covers.
func (s *Site) replicaAdvancedLocked() {
	s.coverSamplesLocked()
	pos := s.replica.pos
	if pos == nil {
		return
	}
	for w := range s.waiters {
		if pos.Covers(w.pos) {
			close(w.done)
			delete(s.waiters, w)
		}
	}
}

// lagLocked is the honest lag: the time since the replica last reached a hub
// position sampled at a known time. Zero while it holds the newest sample of
// a hub that is up; growing during a hub outage (we cannot know better);
// from the oldest unreached sample when it never reached one (a lower
// bound). Unknown before any sample.
func (s *Site) lagLocked(now time.Time) (time.Duration, bool) {
	switch {
	case len(s.samples) == 0 && s.hasCovered && s.hubUp:
		return 0, true
	case s.hasCovered:
		return max(now.Sub(s.covered.at), 0), true
	case len(s.samples) > 0:
		return max(now.Sub(s.samples[0].at), 0), true
	}
	return 0, false
}

func (s *Site) lagBytesLocked() int64 {
	hub, ok1 := s.hubPos.(LSN)
	rep, ok2 := s.replica.pos.(LSN)
	if !ok1 || !ok2 {
		return -1
	}
	if rep >= hub {
		return 0
	}
	return int64(hub - rep)
}

// Snapshot returns the routing state now.
func (s *Site) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshotLocked(s.now())
}

func (s *Site) snapshotLocked(now time.Time) Snapshot {
	lag, known := s.lagLocked(now)
	snap := Snapshot{
		Protocol: s.protocol,
		At:       now,
		Drill:    s.drillActiveLocked(now),
		Hub: HubView{
			Up:       s.hubUp,
			Endpoint: s.hubEndpoint,
			Reason:   s.hubReason,
			Since:    s.hubSince,
		},
		Replica: ReplicaView{
			Up:       s.replica.link.state == StateUp,
			Position: s.replica.pos,
			Lag:      lag,
			LagKnown: known,
			LagBytes: s.lagBytesLocked(),
			Since:    s.replica.link.since,
		},
	}
	snap.Replica.LastErr = s.replica.link.errText
	if ep := s.hubByAddr(s.hubEndpoint); ep != nil {
		snap.Hub.LastErr = ep.link.errText
	}
	return snap
}

func (s *Site) hubByAddr(addr string) *endpoint {
	for _, ep := range s.hubs {
		if ep.addr == addr {
			return ep
		}
	}
	a, _ := hostPort(addr)
	for _, ep := range s.hubs {
		if h, _ := hostPort(ep.addr); h == a {
			return ep
		}
	}
	return nil
}

// Decide routes one request against the current state.
func (s *Site) Decide(r Request) Decision { return Decide(s.Snapshot(), r, s.config().Policy) }

// HubUnavailable returns nil if a hub can take writes now, else a
// *HubUnavailableError naming the hub and the reason.
func (s *Site) HubUnavailable() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.hubUp && !s.drillActiveLocked(now) {
		return nil
	}
	e := &HubUnavailableError{Protocol: s.protocol, Hub: s.hubEndpoint, Reason: s.hubReason}
	if s.drillActiveLocked(now) {
		e.Reason = ReasonDrill
	} else if ep := s.hubByAddr(s.hubEndpoint); ep != nil {
		e.Err = ep.link.lastErr
	}
	return e
}

// ReportHubFailure records that the data path saw a connection to a hub
// endpoint fail at the transport level (reset, refused, timeout, EOF): the
// endpoint turns DOWN at once and is probed right away; only probes bring it
// back. Report transport failures only, never SQL or LDAP result errors.
func (s *Site) ReportHubFailure(endpoint string, err error) {
	if err == nil {
		err = errors.New("connection failed")
	}
	s.mu.Lock()
	ep := s.hubByAddr(endpoint)
	if ep == nil {
		s.mu.Unlock()
		s.log.Warn("failure reported for an unknown hub endpoint", "endpoint", endpoint)
		return
	}
	now := s.now()
	old := ep.link.state
	rerr := fmt.Errorf("data path to hub %s: %w", ep.addr, err)
	changed := ep.link.report(rerr, now)
	if changed {
		s.logEndpoint(ep, old, rerr)
	}
	s.recomputeLocked(now, false)
	s.mu.Unlock()
	if changed {
		kick(ep) // only on the change: reports during an outage must not spin the prober
	}
}

// SuspectHub records that the data path saw an idle connection to a hub
// endpoint closed by its peer, with nothing in flight: that is how a
// server's idle timeout (slapd's idletimeout) looks, and also how a cut
// link may show first. The endpoint is probed at once, and only if that
// probe fails does it turn DOWN (at once, as for ReportHubFailure); a
// hub that answers stays up, so an idle timeout never makes the site
// read-only.
func (s *Site) SuspectHub(endpoint string, err error) {
	if err == nil {
		err = errors.New("connection closed")
	}
	s.mu.Lock()
	ep := s.hubByAddr(endpoint)
	if ep == nil || ep.link.state != StateUp {
		s.mu.Unlock()
		if ep == nil {
			s.ReportHubFailure(endpoint, err) // logs the unknown endpoint
		}
		return
	}
	ep.suspect = fmt.Errorf("an idle connection to hub %s closed: %w", ep.addr, err)
	s.mu.Unlock()
	kick(ep)
}

// ReportReplicaFailure records that the data path saw the replica
// connection fail: the replica turns DOWN at once until probes confirm it.
func (s *Site) ReportReplicaFailure(err error) {
	if err == nil {
		err = errors.New("connection failed")
	}
	s.mu.Lock()
	now := s.now()
	old := s.replica.link.state
	rerr := fmt.Errorf("data path to replica %s: %w", s.replica.addr, err)
	changed := s.replica.link.report(rerr, now)
	if changed {
		s.logEndpoint(s.replica, old, rerr)
		s.effectiveLocked(now, true)
	}
	s.mu.Unlock()
	if changed {
		kick(s.replica)
	}
}

func kick(ep *endpoint) {
	select {
	case ep.kick <- struct{}{}:
	default:
	}
}

// ReplicaPosition returns the replica's latest applied position (nil if
// never seen).
func (s *Site) ReplicaPosition() Position {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.replica.pos
}

// WaitFor returns nil as soon as the local replica has applied pos, or a
// *WaitError when ctx ends first. While anyone waits, the replica is polled
// every FastPollInterval; one poller serves all waiters.
func (s *Site) WaitFor(ctx context.Context, pos Position) error {
	if pos == nil {
		return nil
	}
	s.mu.Lock()
	if s.replica.pos != nil && s.replica.pos.Covers(pos) {
		s.mu.Unlock()
		return nil
	}
	w := &waiter{pos: pos, done: make(chan struct{})}
	s.waiters[w] = struct{}{}
	first := len(s.waiters) == 1
	s.mu.Unlock()
	if first {
		kick(s.replica) // later waiters ride on the fast cadence the first one started
	}
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		defer s.mu.Unlock()
		select {
		case <-w.done:
			return nil // applied just as the context ended
		default:
		}
		delete(s.waiters, w)
		return &WaitError{Protocol: s.protocol, Want: pos, Have: s.replica.pos, Err: ctx.Err()}
	}
}

// Changes returns a channel closed at the next change of the hub state
// (writable endpoint, up or down, drill) or of the replica's up state.
func (s *Site) Changes() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changes
}

// StartDrill forces the hub DOWN for this proxy only (no network change)
// for d; it ends by itself or with StopDrill.
func (s *Site) StartDrill(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	s.drillUntil = now.Add(d)
	if s.drillTimer != nil {
		s.drillTimer.Stop()
	}
	s.drillTimer = time.AfterFunc(d, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.effectiveLocked(s.now(), false)
	})
	s.log.Info("drill started: hub forced down", "for", d.String())
	s.effectiveLocked(now, true)
}

// StopDrill ends a drill early.
func (s *Site) StopDrill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drillUntil.IsZero() {
		return
	}
	s.drillUntil = time.Time{}
	if s.drillTimer != nil {
		s.drillTimer.Stop()
	}
	s.log.Info("drill stopped")
	s.effectiveLocked(s.now(), true)
}

func (s *Site) metricsState() metrics.RoutingState {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	lag, known := s.lagLocked(now)
	st := metrics.RoutingState{
		Protocol:    string(s.protocol),
		HubUp:       s.hubUp && !s.drillActiveLocked(now),
		ReplicaUp:   s.replica.link.state == StateUp,
		LagKnown:    known,
		LagSeconds:  lag.Seconds(),
		LagBytes:    float64(s.lagBytesLocked()),
		DrillActive: s.drillActiveLocked(now),
	}
	if s.hubUp {
		st.HubEndpoint = s.hubEndpoint
	}
	return st
}
