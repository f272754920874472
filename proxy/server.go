package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/spokeproxy/spokeproxy/ldapfront"
	"github.com/spokeproxy/spokeproxy/metrics"
	"github.com/spokeproxy/spokeproxy/pgfront"
	"github.com/spokeproxy/spokeproxy/routing"
)

// Options are what main builds and hands to the server.
type Options struct {
	Logger *slog.Logger
	// Registry receives every metric; nil means a new private registry.
	Registry *prometheus.Registry
	Version  string
	// LogLevel, when set, is the level of Logger's handler (NewLogger
	// returns it); a reload sets it from log.level.
	LogLevel *slog.LevelVar
	// RefusalLogInterval bounds how often refused writes are logged: one
	// summary line per protocol per interval at most. Zero means 10s.
	RefusalLogInterval time.Duration
}

// Addrs are the addresses the server actually listens on.
type Addrs struct {
	Admin    string
	Postgres string // "" when the site runs no PostgreSQL front
	LDAP     string // "" when the site runs no LDAP front
}

// Server is one running spoke site.
type Server struct {
	cfg     *Config
	logger  *slog.Logger
	reg     *prometheus.Registry
	version string
	started time.Time

	parts []*protocolPart // built by New; immutable after
	ops   *metrics.Ops
	level *slog.LevelVar         // nil: log.level changes need a restart
	token atomic.Pointer[string] // the admin bearer token now; "" means none

	reloadMu sync.Mutex // serialises reloads; guards files
	// running is cfg with the reloaded live keys applied: the
	// configuration in effect. Written under reloadMu, read anywhere.
	running atomic.Pointer[Config]
	files   map[string]fileDigest // the *_file contents in effect
	// adminLoopback: the admin API listens on loopback only. Set by Start.
	adminLoopback atomic.Bool
	// certs holds each front listener's certificate by config section
	// ("postgres.tls", "ldap.tls"), for rotation on reload. Filled by New.
	certs map[string]*certHolder

	refusalEvery time.Duration // see Options.RefusalLogInterval

	drillMu   sync.Mutex             // guards drillEnds
	drillEnds map[string]*time.Timer // per protocol: logs a drill's end by itself

	mu     sync.Mutex // guards addrs and cancel
	addrs  Addrs
	cancel context.CancelFunc
	wg     sync.WaitGroup // serving goroutines: admin, fronts, probes
	errs   chan error
}

// New builds a server from a validated config. Nothing listens until Start.
func New(cfg *Config, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	reg := opts.Registry
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics.NewBuildInfo(reg, opts.Version)
	s := &Server{
		cfg:          cfg,
		logger:       opts.Logger.With("site", cfg.Site),
		reg:          reg,
		version:      opts.Version,
		errs:         make(chan error, 4),
		level:        opts.LogLevel,
		refusalEvery: opts.RefusalLogInterval,
	}
	if s.refusalEvery <= 0 {
		s.refusalEvery = 10 * time.Second
	}
	s.running.Store(cfg)
	s.certs = map[string]*certHolder{}
	s.files = fileDigests(cfg) // before buildParts reads them: a change in between shows at the next reload
	parts, err := s.buildParts()
	if err != nil {
		return nil, err
	}
	s.parts = parts
	s.ops = metrics.NewOps(reg)
	for _, p := range parts {
		s.ops.WatchHub(p.hubDetail)
	}
	return s, nil
}

// hubDetail is the part's hub state for the split-brain and why-refused
// metrics.
func (p *protocolPart) hubDetail() metrics.HubDetail {
	snap := p.site.Snapshot()
	d := metrics.HubDetail{Protocol: p.name}
	switch {
	case snap.Drill:
		d.DownReason = metrics.HubReasonDrill
	case snap.Hub.Up:
	case snap.Hub.Reason == routing.ReasonSplitBrain:
		d.DownReason = metrics.HubReasonSplitBrain
	case snap.Hub.Reason == routing.ReasonNoPrimary:
		d.DownReason = metrics.HubReasonNoPrimary
	case snap.Hub.Reason == routing.ReasonStarting:
		d.DownReason = metrics.HubReasonStarting
	default:
		d.DownReason = metrics.HubReasonUnreachable
	}
	for _, ep := range p.site.Status().Endpoints {
		if ep.Target == routing.TargetHub && ep.Writable {
			d.WritableEndpoints++
		}
	}
	return d
}

// Start binds every listener and starts serving. It returns once all
// listeners are bound; a bind failure stops whatever had started.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		return errors.New("proxy: server already started")
	}
	token := ""
	if s.cfg.Admin.TokenFile != "" {
		var err error
		if token, err = ReadSecretFile(s.cfg.Admin.TokenFile); err != nil {
			return fmt.Errorf("admin.token_file: %w", err)
		}
	}
	s.token.Store(&token)
	// Bind everything first, so a taken port fails Start before anything runs.
	var bound []net.Listener
	listen := func(key, addr string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, b := range bound {
				b.Close()
			}
			return nil, fmt.Errorf("%s %s: %w", key, addr, err)
		}
		bound = append(bound, ln)
		return ln, nil
	}
	adminLn, err := listen("admin.listen", s.cfg.Admin.Listen)
	if err != nil {
		return err
	}
	type serving struct {
		part *protocolPart
		lns  []net.Listener
	}
	var fronts []serving
	for _, p := range s.parts {
		ln, err := listen(p.name+".listen", p.listen)
		if err != nil {
			return err
		}
		sv := serving{part: p, lns: []net.Listener{ln}}
		if p.tlsLn != "" {
			tln, err := listen(p.name+".ldaps_listen", p.tlsLn)
			if err != nil {
				return err
			}
			sv.lns = append(sv.lns, tls.NewListener(tln, p.tlsConf))
		}
		fronts = append(fronts, sv)
		switch p.name {
		case metrics.Postgres:
			s.addrs.Postgres = ln.Addr().String()
		case metrics.LDAP:
			s.addrs.LDAP = ln.Addr().String()
		}
	}

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	s.started = time.Now()
	s.addrs.Admin = adminLn.Addr().String()
	for _, sv := range fronts {
		site := sv.part.site
		s.run(func() error { return site.Run(runCtx) })
		for _, ln := range sv.lns {
			front := sv.part.front
			s.run(func() error {
				if err := front.Serve(runCtx, ln); err != nil && runCtx.Err() == nil && !isServerClosed(err) {
					return err
				}
				return nil
			})
		}
	}
	admin := &Admin{
		Gatherer:   s.reg,
		Status:     s.status,
		Ready:      s.ready,
		StartDrill: s.StartDrill,
		StopDrill:  s.StopDrill,
		Drills:     s.drillStates,
		TokenSource: func() string {
			return *s.token.Load()
		},
		Logger: s.logger,
	}
	s.run(func() error { return ServeAdmin(runCtx, adminLn, admin.Handler(), s.logger) })
	s.run(func() error { s.logRefusals(runCtx, s.refusalEvery); return nil })
	s.logger.Info("serving", "admin", s.addrs.Admin, "pg", s.addrs.Postgres, "ldap", s.addrs.LDAP)
	s.adminLoopback.Store(isLoopback(adminLn.Addr()))
	for _, w := range exposureWarnings(s.cfg, token, s.adminLoopback.Load()) {
		s.logger.Warn(w, "admin", s.addrs.Admin)
	}
	return nil
}

// exposureWarnings lists what a config leaves open that an operator should
// know about: an admin API beyond loopback without a token, and
// credentials crossing the WAN without TLS.
func exposureWarnings(c *Config, token string, adminLoopback bool) []string {
	var w []string
	if token == "" && !adminLoopback {
		w = append(w, "the admin API listens beyond loopback without admin.token_file: anyone who reaches it can start a drill")
	}
	return append(w, wanWarnings(c)...)
}

// wanWarnings lists what a config sends across the WAN in clear; a reload
// that changes the hubs or their TLS logs it again.
func wanWarnings(c *Config) []string {
	var w []string
	if l := c.LDAP; l != nil && !l.HubTLS.StartTLS {
		for _, h := range l.Hubs {
			if strings.HasPrefix(h.URL, "ldap://") {
				w = append(w, "ldap hub "+h.URL+" without ldap.hub_tls.start_tls: clients' bind passwords cross the WAN in clear")
			}
		}
	}
	if pg := c.Postgres; pg != nil && pg.HubTLS.Mode == "disable" {
		w = append(w, "postgres.hub_tls.mode is disable: queries, results and md5 secrets cross the WAN unencrypted")
	}
	return w
}

// run starts a serving goroutine whose failure ends the server.
func (s *Server) run(serve func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := serve(); err != nil {
			select {
			case s.errs <- err:
			default:
			}
		}
	}()
}

// Errors delivers the first fatal serving error.
func (s *Server) Errors() <-chan error { return s.errs }

// Addrs returns the bound addresses; valid after Start.
func (s *Server) Addrs() Addrs {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs
}

// Shutdown stops accepting, lets running work finish until ctx ends, then
// closes everything. It is safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	cancel := s.cancel
	s.mu.Unlock()
	if cancel == nil {
		return nil
	}
	// Fronts first: they stop accepting and end their sessions cleanly
	// (Notice of Disconnection, 57P01) while routing still answers them.
	// Both fronts drain at the same time, under the same deadline.
	errc := make(chan error, len(s.parts))
	for _, p := range s.parts {
		go func() {
			if err := p.front.Shutdown(ctx); err != nil {
				errc <- fmt.Errorf("%s front: %w", p.name, err)
				return
			}
			errc <- nil
		}()
	}
	var errs []error
	for range s.parts {
		if err := <-errc; err != nil {
			errs = append(errs, err)
		}
	}
	cancel()
	s.drillMu.Lock()
	for _, t := range s.drillEnds {
		t.Stop()
	}
	s.drillMu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	// The fronts have closed every client by now (at the deadline at the
	// latest); probes and the admin server stop within moments, so give
	// them a short grace even when ctx has already run out.
	grace := time.NewTimer(5 * time.Second)
	defer grace.Stop()
	select {
	case <-done:
		return errors.Join(errs...)
	case <-grace.C:
		return errors.Join(append(errs, errors.New("proxy: shutdown: serving goroutines still running 5s after the drain"))...)
	}
}

func isServerClosed(err error) bool {
	return errors.Is(err, pgfront.ErrServerClosed) || errors.Is(err, ldapfront.ErrServerClosed)
}

// Status is the body of /status.
type Status struct {
	Site    string    `json:"site"`
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	// Protocols holds each protocol's routing status by name ("pg", "ldap").
	Protocols map[string]routing.Status `json:"protocols"`
}

func (s *Server) status() any {
	st := Status{Site: s.cfg.Site, Version: s.version, Started: s.started, Protocols: map[string]routing.Status{}}
	for _, p := range s.parts {
		st.Protocols[p.name] = p.site.Status()
	}
	return st
}

// ready reports whether every protocol can serve reads: from its replica,
// or from the hub when the policy sends reads there while the replica is
// unavailable.
func (s *Server) ready() error {
	var errs []error
	for _, p := range s.parts {
		snap := p.site.Snapshot()
		switch {
		case snap.Replica.Up:
		case snap.Hub.Up && !snap.Drill && s.running.Load().Replica.WhenUnavailable == "hub":
		default:
			errs = append(errs, fmt.Errorf("%s: replica down and hub %s unusable", p.name, snap.Hub.Reason))
		}
	}
	return errors.Join(errs...)
}

// logRefusals logs, every interval in which writes were refused, one line
// per protocol with the count and the reason the hub is unusable. The
// fronts count each refusal in spokeproxy_writes_refused_total; this turns
// a burst into a single line.
func (s *Server) logRefusals(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	last := s.refusedCounts()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := s.refusedCounts()
		for _, p := range s.parts {
			n := now[p.name] - last[p.name]
			if n <= 0 {
				continue
			}
			attrs := []any{"protocol", p.name, "refused", int64(n), "in_last", interval.String()}
			if err := p.site.HubUnavailable(); err != nil {
				attrs = append(attrs, "why", err.Error())
			}
			s.logger.Warn("writes refused", attrs...)
		}
		last = now
	}
}

// refusedCounts reads spokeproxy_writes_refused_total by protocol.
func (s *Server) refusedCounts() map[string]float64 {
	out := map[string]float64{}
	mfs, err := s.reg.Gather()
	if err != nil && len(mfs) == 0 {
		return out
	}
	for _, mf := range mfs {
		if mf.GetName() != "spokeproxy_writes_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "protocol" {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// isLoopback reports whether a listener's address is a loopback one.
func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}
