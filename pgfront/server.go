package pgfront

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spokeproxy/spokeproxy/internal/rawconn"
	"github.com/spokeproxy/spokeproxy/metrics"
	"github.com/spokeproxy/spokeproxy/routing"
)

// Site is what the front needs from the routing core; *routing.Site
// satisfies it. Tests of the relay may pass a small fake.
type Site interface {
	Snapshot() routing.Snapshot
	Decide(r routing.Request) routing.Decision
	HubUnavailable() error
	ReportHubFailure(endpoint string, err error)
	ReportReplicaFailure(err error)
	WaitFor(ctx context.Context, pos routing.Position) error
	Changes() <-chan struct{}
	DialHub(ctx context.Context, endpoint string) (net.Conn, error)
}

// Config is the PostgreSQL front's runtime configuration. The proxy
// package maps its file config onto it; zero values take the defaults
// named on each field.
type Config struct {
	// Site names this spoke in error messages ("site spoke-berlin is read-only").
	Site string
	// ReplicaAddr is the local hot standby, host:port. Required.
	ReplicaAddr string
	// TLS, when set, is offered to clients that send SSLRequest; without it
	// the proxy answers 'N'.
	TLS *tls.Config
	// HubTLS, when set, is required on every hub connection (SSLRequest,
	// then a TLS handshake; a hub that answers 'N' is an error). Its
	// ServerName defaults to the hub's host; set RootCAs for verify-full.
	HubTLS *tls.Config

	// AuthUser and AuthPassword log in to the replica to run AuthQuery, which
	// takes the role name as $1 and returns (usename, passwd). AuthDatabase
	// is the database it runs in (default "postgres").
	AuthUser     string
	AuthPassword string
	AuthQuery    string
	AuthDatabase string

	// LazyTransactions starts explicit transactions on the replica and moves
	// them to the hub at their first write (config transactions: lazy, the
	// default in proxy); false sends every read-write transaction to the
	// hub from BEGIN (transactions: hub).
	LazyTransactions bool
	// HubFunctions are extra functions whose callers must run on the hub.
	HubFunctions []string

	// Consistency is the read-your-writes mode; WaitTimeout bounds a read's
	// wait for the session position (default 2s); OnTimeoutHub reads from
	// the hub after the wait, else the read fails.
	Consistency  routing.Consistency
	WaitTimeout  time.Duration
	OnTimeoutHub bool

	// MaxConnections bounds client connections (default 1000; beyond it
	// 53300). MaxMessageSize bounds one client message (default 64 MiB;
	// beyond it 08P01 and close). StartupTimeout bounds TLS, startup and
	// authentication (default 10s).
	MaxConnections int
	MaxMessageSize int
	StartupTimeout time.Duration
	// BackendTimeout bounds dialing and logging in to a backend (default 10s).
	BackendTimeout time.Duration
	// WriteTimeout ends a session whose client has taken nothing of what
	// the proxy writes to it for this long (it stopped reading a large
	// result), releasing its backends; default 30s.
	WriteTimeout time.Duration
	// RefuseWhenReplicaDown refuses logins while the local replica is
	// unreachable (replica.when_unavailable: refuse); by default such
	// sessions are served by the hub while it is reachable.
	RefuseWhenReplicaDown bool
	// ClassifierCacheEntries bounds the classification cache (default 10000).
	ClassifierCacheEntries int
	// HubPoolSize is how many idle, authenticated hub connections are kept
	// per role, database and startup parameters for later sessions
	// (default 4; negative disables the pool).
	HubPoolSize int
	// HubPoolIdleTimeout closes a pooled hub connection nobody took for
	// this long (default 10m), so roles that stopped writing do not hold
	// hub backends. HubPoolMaxAge retires one this long after its login
	// (default 1h): role and database settings changed at the hub since
	// (ALTER ROLE ... SET) reach new sessions.
	HubPoolIdleTimeout time.Duration
	HubPoolMaxAge      time.Duration
}

func (c Config) withDefaults() Config {
	if c.AuthDatabase == "" {
		c.AuthDatabase = "postgres"
	}
	if c.AuthQuery == "" {
		c.AuthQuery = "SELECT usename, passwd FROM pg_shadow WHERE usename = $1"
	}
	if c.WaitTimeout <= 0 {
		c.WaitTimeout = 2 * time.Second
	}
	if c.MaxConnections <= 0 {
		c.MaxConnections = 1000
	}
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = 64 << 20
	}
	if c.StartupTimeout <= 0 {
		c.StartupTimeout = 10 * time.Second
	}
	if c.BackendTimeout <= 0 {
		c.BackendTimeout = 10 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 30 * time.Second
	}
	if c.HubPoolSize == 0 {
		c.HubPoolSize = 4
	}
	if c.HubPoolIdleTimeout <= 0 {
		c.HubPoolIdleTimeout = 10 * time.Minute
	}
	if c.HubPoolMaxAge <= 0 {
		c.HubPoolMaxAge = time.Hour
	}
	if c.ClassifierCacheEntries <= 0 {
		c.ClassifierCacheEntries = 10000
	}
	if c.Site == "" {
		c.Site = "this spoke"
	}
	return c
}

// Server is the PostgreSQL front. Create it with New, run it with Serve,
// stop it with Shutdown.
type Server struct {
	// cfg is the current configuration: sessions load it per use without
	// a lock; Reconfigure replaces it whole.
	cfg        atomic.Pointer[Config]
	site       Site
	m          *metrics.PG
	front      *metrics.FrontProtocol
	log        *slog.Logger
	classifier atomic.Pointer[Classifier] // replaced when HubFunctions change
	auth       *authLookup
	reconfMu   sync.Mutex // serialises Reconfigure

	nconns atomic.Int64 // client connections counted against MaxConnections

	mu        sync.Mutex // guards the fields below
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	sessions  map[cancelKey]*session // by the proxy-owned BackendKeyData
	hubPool   map[string][]*backendConn
	hubReaper *time.Timer // armed while the pool holds a connection
	watching  bool        // watchHubPool runs (started by Serve, until its ctx or Shutdown)
	shutdown  bool

	// draining ends when Shutdown starts: idle sessions then get 57P01 at
	// once, and sessions in a transaction when it ends.
	draining     context.Context
	stopDraining context.CancelFunc
	// forced ends when Shutdown's deadline passes: every session's context
	// ends with it, which interrupts what it is waiting for.
	forced     context.Context
	forceStops context.CancelFunc

	wg sync.WaitGroup // one per client connection goroutine, and the pool watcher
}

// cancelKey is a BackendKeyData pair.
type cancelKey struct {
	pid    uint32
	secret uint32
}

// New returns a server. m may be nil (metrics recorded nowhere).
func New(cfg Config, site Site, m *metrics.PG, logger *slog.Logger) *Server {
	cfg = cfg.withDefaults()
	if m == nil {
		m = metrics.NewPG(prometheus.NewRegistry())
	}
	front := m.Front
	if front == nil {
		front = metrics.NewFront(prometheus.NewRegistry()).Protocol(metrics.Postgres)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		site:      site,
		m:         m,
		front:     front,
		log:       logger,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[net.Conn]struct{}),
		sessions:  make(map[cancelKey]*session),
		hubPool:   make(map[string][]*backendConn),
	}
	s.cfg.Store(&cfg)
	s.classifier.Store(newClassifier(cfg))
	s.draining, s.stopDraining = context.WithCancel(context.Background())
	s.forced, s.forceStops = context.WithCancel(context.Background())
	s.auth = newAuthLookup(cfg, site, s.hubAuthConfig)
	return s
}

func newClassifier(cfg Config) *Classifier {
	return NewClassifier(cfg.HubFunctions, cfg.ClassifierCacheEntries, 16<<20)
}

// config returns the current configuration; callers must not modify it.
func (s *Server) config() *Config { return s.cfg.Load() }

// Reconfigure replaces the configuration of a running front without
// dropping a client. What it reads per use takes effect at once: timeouts
// of waits and backend dials, consistency, transaction handling, hub
// functions, hub TLS (new hub connections), the hub pool size and
// MaxConnections. What a connection takes when it starts (StartupTimeout,
// MaxMessageSize) applies to new connections. ReplicaAddr, TLS, the auth
// role (AuthUser, AuthPassword, AuthQuery, AuthDatabase) and
// ClassifierCacheEntries keep the values New was given: the listener and
// the auth lookup hold them.
//
// Idle hub connections in the pool that are not to the Site's current hub
// are closed (the candidate was removed, or the hub moved), and all of
// them when the hub TLS changed; the auth lookup's hub connection too.
// Sessions keep the hub connection they use until their transaction ends,
// then follow the current hub.
func (s *Server) Reconfigure(cfg Config) {
	s.reconfMu.Lock()
	defer s.reconfMu.Unlock()
	old := s.config()
	cfg = cfg.withDefaults()
	cfg.ReplicaAddr, cfg.TLS = old.ReplicaAddr, old.TLS
	cfg.AuthUser, cfg.AuthPassword, cfg.AuthQuery, cfg.AuthDatabase = old.AuthUser, old.AuthPassword, old.AuthQuery, old.AuthDatabase
	cfg.ClassifierCacheEntries = old.ClassifierCacheEntries
	cfg.HubFunctions = slices.Clone(cfg.HubFunctions)
	if !slices.Equal(cfg.HubFunctions, old.HubFunctions) {
		s.classifier.Store(newClassifier(cfg))
	}
	s.cfg.Store(&cfg)
	tlsChanged := cfg.HubTLS != old.HubTLS
	current := ""
	if s.site.HubUnavailable() == nil {
		current = s.site.Snapshot().Hub.Endpoint
	}
	s.pruneHubPool(func(b *backendConn) bool { return tlsChanged || b.endpoint != current })
	s.auth.dropHub()
}

// pruneHubPool closes the pooled hub connections drop selects.
func (s *Server) pruneHubPool(drop func(*backendConn) bool) {
	var closing []*backendConn
	s.mu.Lock()
	for key, conns := range s.hubPool {
		kept := conns[:0]
		for _, b := range conns {
			if drop(b) {
				closing = append(closing, b)
			} else {
				kept = append(kept, b)
			}
		}
		if len(kept) == 0 {
			delete(s.hubPool, key)
		} else {
			s.hubPool[key] = kept
		}
	}
	s.mu.Unlock()
	for _, b := range closing {
		b.close()
		s.front.HubConnections.Dec()
	}
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("pgfront: server closed")

// Serve accepts client connections on ln until ctx ends or Shutdown is
// called. It closes ln on return.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	if !s.watching {
		s.watching = true
		s.wg.Add(1) // under s.mu, with shutdown checked: Shutdown's Wait sees it
		go func() {
			defer s.wg.Done()
			s.watchHubPool(ctx)
			s.mu.Lock()
			s.watching = false
			s.mu.Unlock()
		}()
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			down := s.shutdown
			s.mu.Unlock()
			if down {
				return ErrServerClosed
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			return err
		}
		if !s.track(conn) {
			conn.Close()
			return ErrServerClosed
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(conn)
			// The session ends with ctx, or when Shutdown forces it.
			hctx, cancel := context.WithCancel(ctx)
			defer cancel()
			stop := context.AfterFunc(s.forced, cancel)
			defer stop()
			s.handle(hctx, conn)
		}()
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Shutdown stops accepting, then waits for client sessions to end until
// ctx is done, then closes the rest. It closes the auth pool.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopDraining()
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		// Interrupt, never Close, from here: a client connection's armed
		// reader holds its socket inside a read until its session reads
		// again, so a Close would wait for the session (see
		// rawconn.ArmedReader). Sessions end through their context; a
		// connection still logging in gets a deadline.
		s.forceStops()
		s.mu.Lock()
		conns := make([]net.Conn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		for _, c := range conns {
			_ = c.SetDeadline(time.Now())
		}
		<-done
	}
	s.auth.close()
	s.mu.Lock()
	pool := s.hubPool
	s.hubPool = make(map[string][]*backendConn)
	if s.hubReaper != nil {
		s.hubReaper.Stop()
		s.hubReaper = nil
	}
	s.mu.Unlock()
	for _, conns := range pool {
		for _, b := range conns {
			b.close()
			s.front.HubConnections.Dec()
		}
	}
	return err
}

// poolKey identifies hub connections a session may share: same role,
// database and startup parameters, same hub endpoint.
func poolKey(endpoint string, params map[string]string) string {
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(endpoint)
	for _, k := range keys {
		b.WriteByte(0)
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(params[k])
	}
	return b.String()
}

// takeHub returns a warm hub connection for key, or nil.
func (s *Server) takeHub(key string) *backendConn {
	for {
		s.mu.Lock()
		conns := s.hubPool[key]
		if len(conns) == 0 {
			s.mu.Unlock()
			return nil
		}
		b := conns[len(conns)-1]
		s.hubPool[key] = conns[:len(conns)-1]
		s.mu.Unlock()
		if time.Since(b.loggedIn) < s.config().HubPoolMaxAge && b.alive() {
			return b
		}
		b.close()
		s.front.HubConnections.Dec()
	}
}

// pooledHubs counts idle pooled hub connections (for tests).
func (s *Server) pooledHubs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, conns := range s.hubPool {
		n += len(conns)
	}
	return n
}

// putHub offers a clean, idle hub connection to the pool; it reports
// false when the pool is full or closed (the caller closes it).
func (s *Server) putHub(key string, b *backendConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown || len(s.hubPool[key]) >= s.config().HubPoolSize || time.Since(b.loggedIn) >= s.config().HubPoolMaxAge {
		return false
	}
	b.pooledAt = time.Now()
	s.hubPool[key] = append(s.hubPool[key], b)
	if s.hubReaper == nil {
		s.hubReaper = time.AfterFunc(s.nextHubExpiryLocked(), s.reapHubPool)
	}
	return true
}

// hubExpired reports whether a pooled hub connection has idled for
// HubPoolIdleTimeout or lived for HubPoolMaxAge. Called under s.mu.
func (s *Server) hubExpired(b *backendConn, now time.Time) bool {
	cfg := s.config()
	return now.Sub(b.pooledAt) >= cfg.HubPoolIdleTimeout || now.Sub(b.loggedIn) >= cfg.HubPoolMaxAge
}

// nextHubExpiryLocked is how long until the first pooled connection
// expires.
func (s *Server) nextHubExpiryLocked() time.Duration {
	cfg := s.config()
	now := time.Now()
	next := cfg.HubPoolIdleTimeout
	for _, conns := range s.hubPool {
		for _, b := range conns {
			next = min(next, b.pooledAt.Add(cfg.HubPoolIdleTimeout).Sub(now), b.loggedIn.Add(cfg.HubPoolMaxAge).Sub(now))
		}
	}
	return max(next, 10*time.Millisecond)
}

// watchHubPool closes, at each change of the Site's hub state, the
// pooled hub connections that change made useless: all of them while the
// hub is down for real (a cut resets them, a blackhole leaves them hanging;
// a drill keeps them), those to an endpoint that is no longer the hub (a
// failover), and any the other end closed. The pool and the hub
// connections gauge then follow an outage instead of waiting for
// HubPoolIdleTimeout. It ends with ctx or when Shutdown starts; the next
// Serve starts it again.
func (s *Server) watchHubPool(ctx context.Context) {
	for {
		// Taken before the state is read, so no change is missed.
		changes := s.site.Changes()
		snap := s.site.Snapshot()
		down := !snap.Hub.Up && !snap.Drill
		s.pruneHubPool(func(b *backendConn) bool {
			return down || (snap.Hub.Up && b.endpoint != snap.Hub.Endpoint) || !b.alive()
		})
		select {
		case <-ctx.Done():
			return
		case <-s.draining.Done():
			return
		case <-changes:
		}
	}
}

// reapHubPool closes the expired pooled hub connections and arms itself
// for the next expiry while any are left.
func (s *Server) reapHubPool() {
	now := time.Now()
	s.pruneHubPool(func(b *backendConn) bool { return s.hubExpired(b, now) })
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hubReaper = nil
	if len(s.hubPool) > 0 && !s.shutdown {
		s.hubReaper = time.AfterFunc(s.nextHubExpiryLocked(), s.reapHubPool)
	}
}

// clientReadBuffer is the size of a client connection's read buffer: a
// turn's messages in one read (longer messages get a buffer of their own
// for as long as they are read).
const clientReadBuffer = 8 << 10

// startupPacketMax is PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
const startupPacketMax = 10000

// Startup codes that are not protocol versions.
const (
	codeCancel = 80877102
	codeSSL    = 80877103
	codeGSSEnc = 80877104
)

// startupError is a startup packet the proxy rejects; it is sent to the
// client as a FATAL ErrorResponse with Code.
type startupError struct {
	Code    string
	Message string
}

func (e *startupError) Error() string { return "pgfront: " + e.Message }

// readStartup reads one startup-phase packet (no type byte) and decodes it
// to *pgproto3.StartupMessage, *pgproto3.SSLRequest,
// *pgproto3.GSSEncRequest or *pgproto3.CancelRequest. A protocol version
// other than 3.x is a *startupError with PostgreSQL's wording; 3.x with
// x > 0 is returned as a StartupMessage with ProtocolVersion kept, so the
// caller can negotiate down to 3.0.
func readStartup(r io.Reader) (pgproto3.FrontendMessage, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[:])))
	if n < 8 || n > startupPacketMax {
		return nil, &startupError{Code: "08P01", Message: "invalid length of startup packet"}
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	code := binary.BigEndian.Uint32(body)
	switch code {
	case codeSSL:
		return &pgproto3.SSLRequest{}, nil
	case codeGSSEnc:
		return &pgproto3.GSSEncRequest{}, nil
	case codeCancel:
		var m pgproto3.CancelRequest
		if err := m.Decode(body); err != nil {
			return nil, &startupError{Code: "08P01", Message: "invalid cancel request"}
		}
		return &m, nil
	}
	major, minor := code>>16, code&0xffff
	if major != 3 {
		return nil, &startupError{Code: "0A000", Message: fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.0", major, minor)}
	}
	m, err := decodeStartupParams(body[4:])
	if err != nil {
		return nil, err
	}
	m.ProtocolVersion = code
	return m, nil
}

// decodeStartupParams decodes the name/value pairs of a StartupMessage.
// It is stricter than pgproto3's decoder about the terminator.
func decodeStartupParams(b []byte) (*pgproto3.StartupMessage, error) {
	m := &pgproto3.StartupMessage{Parameters: make(map[string]string)}
	bad := &startupError{Code: "08P01", Message: "invalid startup packet layout: expected terminator as last byte"}
	for {
		if len(b) == 0 {
			return nil, bad
		}
		if b[0] == 0 {
			if len(b) != 1 {
				return nil, bad
			}
			break
		}
		k, rest, ok := cutNul(b)
		if !ok {
			return nil, bad
		}
		v, rest, ok := cutNul(rest)
		if !ok {
			return nil, bad
		}
		m.Parameters[k] = v
		b = rest
	}
	return m, nil
}

func cutNul(b []byte) (string, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], true
		}
	}
	return "", nil, false
}

// handle runs one client connection from its first byte to its close.
func (s *Server) handle(ctx context.Context, conn net.Conn) {
	over := s.nconns.Add(1) > int64(s.config().MaxConnections)
	defer s.nconns.Add(-1)
	s.front.ClientConnections.Inc()
	defer s.front.ClientConnections.Dec()

	log := s.log.With("client", conn.RemoteAddr().String())
	_ = conn.SetDeadline(time.Now().Add(s.config().StartupTimeout))

	var startup *pgproto3.StartupMessage
	tlsDone := false
	for startup == nil {
		msg, err := readStartup(conn)
		if err != nil {
			var se *startupError
			if errors.As(err, &se) {
				s.m.ProtocolErrors.Inc()
				writeFatal(conn, se.Code, se.Message)
			}
			log.Debug("startup failed", "err", err)
			return
		}
		switch m := msg.(type) {
		case *pgproto3.SSLRequest:
			if tlsDone || s.config().TLS == nil {
				if _, err := conn.Write([]byte{'N'}); err != nil {
					return
				}
				continue
			}
			if _, err := conn.Write([]byte{'S'}); err != nil {
				return
			}
			tc := tls.Server(conn, s.config().TLS)
			if err := tc.HandshakeContext(ctx); err != nil {
				log.Debug("client TLS handshake failed", "err", err)
				return
			}
			conn = tc
			tlsDone = true
		case *pgproto3.GSSEncRequest:
			if _, err := conn.Write([]byte{'N'}); err != nil {
				return
			}
		case *pgproto3.CancelRequest:
			s.cancel(ctx, cancelKey{pid: m.ProcessID, secret: binary.BigEndian.Uint32(m.SecretKey)})
			return
		case *pgproto3.StartupMessage:
			startup = m
		}
	}
	if over {
		writeFatal(conn, "53300", "sorry, too many clients already")
		return
	}
	conn = rawconn.Wrap(conn) // see internal/rawconn: raw socket calls skip the runtime's sysmon wake-ups
	cw := &clientWriter{conn: conn}
	var cr io.Reader = conn
	if ar := rawconn.NewArmedReader(conn); ar != nil {
		// The wait for the client's next message stays armed from one read
		// to the next, so none is tried before the message can be there.
		defer ar.Stop()
		cr = ar
	}
	in := newFrameReader(cr, clientReadBuffer, s.config().MaxMessageSize)
	be := newMsgWriter(cw)
	if startup.ProtocolVersion != pgproto3.ProtocolVersion30 {
		// A 3.x client with x > 0: tell it we speak 3.0 (what PostgreSQL 15 does).
		var unrecognized []string
		for k := range startup.Parameters {
			if len(k) > 4 && k[:4] == "_pq_" {
				unrecognized = append(unrecognized, k)
			}
		}
		be.send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unrecognized})
	}
	if _, ok := startup.Parameters["replication"]; ok && startup.Parameters["replication"] != "false" && startup.Parameters["replication"] != "0" {
		sendFatal(be, "08P01", "spokeproxy does not relay replication connections")
		return
	}
	user := startup.Parameters["user"]
	if user == "" {
		sendFatal(be, "28000", "no PostgreSQL user name specified in startup packet")
		return
	}
	log = log.With("user", user, "database", startup.Parameters["database"])

	creds, err := s.authenticate(ctx, in, be, user)
	if err != nil {
		var ae *authError
		if errors.As(err, &ae) {
			s.m.AuthFailures.Inc()
			log.Info("client authentication failed", "reason", ae.reason)
			sendFatal(be, "28P01", fmt.Sprintf("password authentication failed for user %q", user))
		} else {
			log.Warn("client authentication could not complete", "err", err)
			sendError(be, errorResponseFor(err, "FATAL"))
		}
		return
	}
	sess := newSession(s, conn, in, be, startup.Parameters, creds, log)
	defer sess.close()
	defer s.unregister(sess) // start registers the cancel key it sends
	if err := sess.start(ctx); err != nil {
		log.Info("session start failed", "err", err)
		sendError(be, errorResponseFor(err, "FATAL"))
		return
	}
	_ = conn.SetDeadline(time.Time{})
	cw.setTimeout(s.config().WriteTimeout)
	err = sess.run(ctx)
	var ce *clientIOError
	if errors.As(err, &ce) {
		// The client went away in the middle of a unit: the backends may
		// still be sending, so none of them is clean enough to pool.
		sess.broken = true
	}
	var slow *slowClientError
	switch {
	case errors.As(err, &slow):
		s.m.SlowClients.Inc()
		log.Warn("closing a client that does not read its results", "write_timeout", slow.timeout)
	case err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed):
		log.Debug("session ended", "err", err)
	}
}

// clientWriter is what a session's pgproto3.Backend writes through: the
// client connection, bounded by the write timeout once the session runs.
// On a connection from internal/rawconn a write first goes as far as the
// socket takes at once (TryWrite), and only the rest, if any, waits under
// a deadline, so a client that keeps up costs no deadline (a runtime
// timer update) per flush; on TLS a deadline is set before each write.
// A write that times out returns a *slowClientError.
type clientWriter struct {
	conn    net.Conn
	tw      rawconn.TryWriter // conn, when it can write without waiting
	timeout time.Duration     // 0 until setTimeout
}

// setTimeout bounds the writes from now on (the startup has its own deadline).
func (w *clientWriter) setTimeout(d time.Duration) {
	w.timeout = d
	w.tw, _ = w.conn.(rawconn.TryWriter)
}

func (w *clientWriter) Write(p []byte) (int, error) {
	if w.timeout == 0 {
		return w.conn.Write(p)
	}
	n := 0
	if w.tw != nil {
		var err error
		if n, err = w.tw.TryWrite(p); n == len(p) || err != nil {
			return n, w.slow(err)
		}
	}
	_ = w.conn.SetWriteDeadline(time.Now().Add(w.timeout))
	m, err := w.conn.Write(p[n:])
	n += m
	if w.tw != nil && err == nil {
		_ = w.conn.SetWriteDeadline(time.Time{}) // TryWrite fails at once past a deadline
	}
	return n, w.slow(err)
}

// slow names a write timeout for what it is.
func (w *clientWriter) slow(err error) error {
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return &slowClientError{timeout: w.timeout, err: err}
	}
	return err
}

// slowClientError: the client did not take what the proxy wrote within
// WriteTimeout.
type slowClientError struct {
	timeout time.Duration
	err     error
}

func (e *slowClientError) Error() string {
	return fmt.Sprintf("pgfront: client did not read its results for %v: %v", e.timeout, e.err)
}

func (e *slowClientError) Unwrap() error { return e.err }

func (s *Server) register(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		var b [4]byte
		_, _ = rand.Read(b[:])
		sess.key.secret = binary.BigEndian.Uint32(b[:])
		if _, dup := s.sessions[sess.key]; !dup {
			s.sessions[sess.key] = sess
			return
		}
	}
}

// sessionCount is the number of sessions with a registered cancel key.
func (s *Server) sessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

func (s *Server) unregister(sess *session) {
	s.mu.Lock()
	if s.sessions[sess.key] == sess {
		delete(s.sessions, sess.key)
	}
	s.mu.Unlock()
}

// cancel forwards a CancelRequest to the backend that is running the
// session's current request. Unknown keys are ignored, as PostgreSQL does.
func (s *Server) cancel(ctx context.Context, key cancelKey) {
	s.mu.Lock()
	sess := s.sessions[key]
	s.mu.Unlock()
	if sess == nil {
		return
	}
	b := sess.activeBackend()
	if b == nil {
		return
	}
	s.m.Cancels.Inc()
	ctx, cancel := context.WithTimeout(ctx, s.config().BackendTimeout)
	defer cancel()
	var conn net.Conn
	var err error
	if b.hub {
		conn, err = s.site.DialHub(ctx, b.endpoint)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", b.endpoint)
	}
	if err != nil {
		s.log.Debug("cancel: dial failed", "err", err)
		return
	}
	defer conn.Close()
	var secret [4]byte
	binary.BigEndian.PutUint32(secret[:], b.secretKey)
	buf, _ := (&pgproto3.CancelRequest{ProcessID: b.pid, SecretKey: secret[:]}).Encode(nil)
	_, _ = conn.Write(buf)
	// PostgreSQL closes the connection after a cancel; wait for that so the
	// cancel is delivered before we return.
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = conn.Read(make([]byte, 1))
}

// writeFatal writes a FATAL ErrorResponse before a pgproto3.Backend exists.
func writeFatal(w io.Writer, code, msg string) {
	buf, err := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg}).Encode(nil)
	if err == nil {
		_, _ = w.Write(buf)
	}
}

// adminShutdownMessage is PostgreSQL's own text for 57P01 (admin_shutdown).
const adminShutdownMessage = "terminating connection due to administrator command"

func sendFatal(w *msgWriter, code, msg string) {
	sendError(w, &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg})
}

func sendError(w *msgWriter, e *pgproto3.ErrorResponse) {
	w.send(e)
	_ = w.flush()
}
