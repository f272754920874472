package ldapfront

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/spokeproxy/spokeproxy/metrics"
	"github.com/spokeproxy/spokeproxy/routing"
)

// Site is the part of *routing.Site the front uses: route decisions, failure
// reports from the data path, waiting for the replica, and WAN dials.
type Site interface {
	Decide(r routing.Request) routing.Decision
	ReportHubFailure(endpoint string, err error)
	ReportReplicaFailure(err error)
	WaitFor(ctx context.Context, pos routing.Position) error
	DialHub(ctx context.Context, endpoint string) (net.Conn, error)
}

var _ Site = (*routing.Site)(nil)

// hubWatcher is the optional part of a Site that announces state changes
// (*routing.Site has it). With it, hub connections are dropped as soon as the
// Site judges the hub unusable, so a write in flight on a silently dead link
// gets 80 within the probes' detection time instead of hanging.
type hubWatcher interface {
	Changes() <-chan struct{}
	HubUnavailable() error
}

var _ hubWatcher = (*routing.Site)(nil)

// hubSuspector is the optional part of a Site that tells an idle hub
// connection closed by its peer (an idle timeout) from a failure by
// probing first (*routing.Site has it).
type hubSuspector interface {
	SuspectHub(endpoint string, err error)
}

var _ hubSuspector = (*routing.Site)(nil)

// errNoticeOfDisconnection: a backend sent the unsolicited Notice of
// Disconnection and is closing the connection.
var errNoticeOfDisconnection = errors.New("notice of disconnection")

// Config is the LDAP front's runtime configuration. The proxy package maps its
// file configuration onto it; zero values take the documented defaults. The
// listeners are the caller's: Serve takes a net.Listener (wrap it with
// tls.NewListener for LDAPS).
type Config struct {
	// ReplicaURL is the local syncrepl consumer: ldap://host:port or ldaps://.
	ReplicaURL string
	// ReplicaTLS is used for an ldaps:// ReplicaURL.
	ReplicaTLS *tls.Config
	// BaseDN is the replicated suffix whose contextCSN is the replication position.
	BaseDN string

	// TLS terminates StartTLS from clients; nil refuses StartTLS with protocolError.
	TLS *tls.Config
	// HubTLS is used for StartTLS on ldap:// hub URLs when HubStartTLS is set
	// (ldaps:// hubs are wrapped by Site.DialHub).
	HubTLS      *tls.Config
	HubStartTLS bool

	// Consistency is the read-your-writes mode; WaitTimeout bounds a read's wait
	// for the session's position (session) or a write acknowledgement's wait
	// for the replica (site). Default 2s.
	Consistency routing.Consistency
	WaitTimeout time.Duration

	// ProxyAuthDN and ProxyAuthPassword are the identity writes after a SASL
	// bind use on the hub, with the Proxied Authorization control naming the
	// client. Empty: such writes are refused.
	ProxyAuthDN       string
	ProxyAuthPassword string

	// RefuseTransactions answers Start Transaction (RFC 5805) with
	// unwillingToPerform instead of relaying it to the hub, for a hub
	// whose slapd does not survive transactions (see docs/operations.md).
	// A transaction already open when it is turned on by a reload can
	// still run its operations and End Transaction.
	RefuseTransactions bool

	MaxPDUSize      int64         // largest client message, default 4 MiB
	MaxResponseSize int64         // largest backend message, default 64 MiB
	MaxOutstanding  int           // operations in flight per connection, default 64; beyond: busy (51)
	IdleTimeout     time.Duration // close a connection with nothing in flight after this, default 15m
	MaxConnections  int           // default 1000
	DialTimeout     time.Duration // replica and hub dial plus bind, default 5s

	// WriteTimeout bounds each write to a client. A client that stops reading
	// its responses (a large search it never consumes) would otherwise hold its
	// replica and hub connections, and a server thread behind them, forever;
	// after WriteTimeout without progress its session ends. Default 30s.
	WriteTimeout time.Duration
}

// Validate reports every problem of c at once, naming the field.
func (c Config) Validate() error {
	var errs []error
	if c.ReplicaURL == "" {
		errs = append(errs, errors.New("ldapfront: ReplicaURL is required"))
	} else if u, err := url.Parse(c.ReplicaURL); err != nil || (u.Scheme != "ldap" && u.Scheme != "ldaps") || u.Host == "" {
		errs = append(errs, fmt.Errorf("ldapfront: ReplicaURL %q: want ldap://host:port or ldaps://host:port", c.ReplicaURL))
	}
	if c.BaseDN == "" {
		errs = append(errs, errors.New("ldapfront: BaseDN is required (its contextCSN is the replication position)"))
	}
	if (c.ProxyAuthDN == "") != (c.ProxyAuthPassword == "") {
		errs = append(errs, errors.New("ldapfront: ProxyAuthDN and ProxyAuthPassword go together"))
	}
	switch c.Consistency {
	case routing.ConsistencySession, routing.ConsistencySite, routing.ConsistencyNone:
	default:
		errs = append(errs, fmt.Errorf("ldapfront: Consistency %d is not session, site or none", c.Consistency))
	}
	if c.TLS != nil && len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil {
		errs = append(errs, errors.New("ldapfront: TLS has no certificate"))
	}
	for name, v := range map[string]int64{"MaxPDUSize": c.MaxPDUSize, "MaxResponseSize": c.MaxResponseSize,
		"MaxOutstanding": int64(c.MaxOutstanding), "MaxConnections": int64(c.MaxConnections),
		"WaitTimeout": int64(c.WaitTimeout), "IdleTimeout": int64(c.IdleTimeout), "DialTimeout": int64(c.DialTimeout),
		"WriteTimeout": int64(c.WriteTimeout)} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("ldapfront: %s must not be negative", name))
		}
	}
	if c.MaxPDUSize > math.MaxInt32 {
		errs = append(errs, errors.New("ldapfront: MaxPDUSize above 2 GiB"))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.WaitTimeout <= 0 {
		c.WaitTimeout = 2 * time.Second
	}
	if c.MaxPDUSize <= 0 {
		c.MaxPDUSize = 4 << 20
	}
	if c.MaxResponseSize <= 0 {
		c.MaxResponseSize = 64 << 20
	}
	if c.MaxOutstanding <= 0 {
		c.MaxOutstanding = 64
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 15 * time.Minute
	}
	if c.MaxConnections <= 0 {
		c.MaxConnections = 1000
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 30 * time.Second
	}
	return c
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("ldapfront: server closed")

// Server is the LDAP front. Build it with New; Serve it on any number of
// listeners; Shutdown ends every session with a Notice of Disconnection.
type Server struct {
	// cfg is the current configuration: sessions load it per use without
	// a lock; Reconfigure replaces it whole.
	cfg      atomic.Pointer[Config]
	reconfMu sync.Mutex // serialises Reconfigure
	site     Site
	m        *metrics.LDAPFront
	log      *slog.Logger

	replicaAddr  string
	replicaLDAPS bool

	mu        sync.Mutex // guards everything below
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	closed    bool
	syncOK    bool // the replica's root DSE lists the Sync Request control
	syncAt    time.Time
	wg        sync.WaitGroup // one per running session

	countersMu sync.RWMutex
	counters   map[opLabels]metrics.OperationCounter
}

// opLabels are the labels an operation is counted by.
type opLabels struct{ name, route, kind string }

// countOp counts one operation in the metrics. Each label combination's
// series are looked up once (they are few: op names and routes are bounded).
func (s *Server) countOp(name, route, kind string) {
	if s.m == nil {
		return
	}
	k := opLabels{name, route, kind}
	s.countersMu.RLock()
	c, ok := s.counters[k]
	s.countersMu.RUnlock()
	if !ok {
		c = s.m.OperationCounter(name, route, kind)
		s.countersMu.Lock()
		s.counters[k] = c
		s.countersMu.Unlock()
	}
	c.Inc()
}

// New builds a Server. m and logger may be nil (no metrics, no logs).
func New(cfg Config, site Site, m *metrics.LDAPFront, logger *slog.Logger) *Server {
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		site: site, m: m, log: logger.With("front", "ldap"),
		listeners: make(map[net.Listener]struct{}),
		sessions:  make(map[*session]struct{}),
		counters:  make(map[opLabels]metrics.OperationCounter),
	}
	s.cfg.Store(&cfg)
	s.replicaAddr, s.replicaLDAPS = ldapHostPort(cfg.ReplicaURL)
	return s
}

// config returns the current configuration; callers must not modify it.
func (s *Server) config() *Config { return s.cfg.Load() }

// Reconfigure replaces the configuration of a running front without
// dropping a client; cfg must pass Validate. What sessions read per use
// takes effect at once: consistency and its wait, size and in-flight
// limits, idle and write timeouts, dial timeout, MaxConnections, and the
// hub TLS of new hub connections. ReplicaURL, ReplicaTLS, BaseDN, TLS and
// the proxy-auth identity keep the values New was given: the listeners and
// the replication position depend on them.
//
// A session whose hub connection goes to an endpoint that is no longer the
// Site's hub moves at its next hub operation; operations already in flight
// on the old connection get their answers first (see retireWhenDone).
func (s *Server) Reconfigure(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	s.reconfMu.Lock()
	defer s.reconfMu.Unlock()
	old := s.config()
	cfg = cfg.withDefaults()
	cfg.ReplicaURL, cfg.ReplicaTLS, cfg.BaseDN, cfg.TLS = old.ReplicaURL, old.ReplicaTLS, old.BaseDN, old.TLS
	cfg.ProxyAuthDN, cfg.ProxyAuthPassword = old.ProxyAuthDN, old.ProxyAuthPassword
	s.cfg.Store(&cfg)
	return nil
}

// ldapHostPort turns an LDAP URL (or host:port) into host:port and whether it is ldaps.
func ldapHostPort(raw string) (string, bool) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return raw, false
	}
	ldaps := u.Scheme == "ldaps"
	if u.Port() == "" {
		port := "389"
		if ldaps {
			port = "636"
		}
		return net.JoinHostPort(u.Hostname(), port), ldaps
	}
	return u.Host, ldaps
}

// Serve accepts clients on ln until ctx ends or Shutdown is called; it returns
// ErrServerClosed then. Each client runs in its own session goroutine.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	if w, ok := s.site.(hubWatcher); ok {
		done := make(chan struct{})
		watching := make(chan struct{})
		go func() { defer close(watching); s.watchHub(w, done) }()
		defer func() { close(done); <-watching }()
	}
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var tempDelay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || ctx.Err() != nil {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				time.Sleep(tempDelay)
				continue
			}
			return err
		}
		tempDelay = 0
		s.mu.Lock()
		if s.closed || len(s.sessions) >= s.config().MaxConnections {
			full := !s.closed
			s.mu.Unlock()
			if full {
				s.log.Warn("refusing client: max_connections reached", "max_connections", s.config().MaxConnections, "client", c.RemoteAddr().String())
			}
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = c.Write(EncodeNoticeOfDisconnection(ResultUnavailable, "spokeproxy: too many connections"))
			c.Close()
			continue
		}
		sess := newSession(s, c)
		s.sessions[sess] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			sess.run(ctx)
			s.mu.Lock()
			delete(s.sessions, sess)
			s.mu.Unlock()
		}()
	}
}

// watchHub drops every session's hub connection whenever the Site says the
// hub is unusable, until done is closed.
func (s *Server) watchHub(w hubWatcher, done <-chan struct{}) {
	for {
		ch := w.Changes()
		if err := w.HubUnavailable(); err != nil {
			s.mu.Lock()
			sessions := make([]*session, 0, len(s.sessions))
			for sess := range s.sessions {
				sessions = append(sessions, sess)
			}
			s.mu.Unlock()
			for _, sess := range sessions {
				sess.dropHub(err)
			}
		}
		select {
		case <-ch:
		case <-done:
			return
		}
	}
}

// Shutdown stops accepting, sends every client a Notice of Disconnection
// (unavailable), closes every session and waits for their goroutines until ctx
// ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	for _, sess := range sessions {
		sess.disconnect(ResultUnavailable, "spokeproxy is shutting down")
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// replicaSupportsSync reports whether the replica's root DSE lists the Sync
// Request control. A positive answer is cached for a minute; failures are not
// cached (sync searches then go to the hub).
func (s *Server) replicaSupportsSync(ctx context.Context) bool {
	s.mu.Lock()
	if !s.syncAt.IsZero() && time.Since(s.syncAt) < time.Minute {
		ok := s.syncOK
		s.mu.Unlock()
		return ok
	}
	s.mu.Unlock()
	ok, err := s.queryRootDSESync(ctx)
	if err != nil {
		s.log.Warn("cannot read the replica's root DSE; sync searches go to the hub", "err", err)
		return false
	}
	s.mu.Lock()
	s.syncOK, s.syncAt = ok, time.Now()
	s.mu.Unlock()
	return ok
}

func (s *Server) queryRootDSESync(ctx context.Context) (bool, error) {
	d := &net.Dialer{Timeout: s.config().DialTimeout}
	opts := []ldap.DialOpt{ldap.DialWithDialer(d)}
	if s.config().ReplicaTLS != nil {
		opts = append(opts, ldap.DialWithTLSConfig(s.config().ReplicaTLS))
	}
	conn, err := ldap.DialURL(s.config().ReplicaURL, opts...)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetTimeout(time.Until(dl))
	} else {
		conn.SetTimeout(s.config().DialTimeout)
	}
	res, err := conn.Search(ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=*)", []string{"supportedControl"}, nil))
	if err != nil {
		return false, err
	}
	if len(res.Entries) != 1 {
		return false, fmt.Errorf("root DSE search returned %d entries", len(res.Entries))
	}
	for _, v := range res.Entries[0].GetAttributeValues("supportedControl") {
		if v == OIDSyncRequest {
			return true, nil
		}
	}
	return false, nil
}
