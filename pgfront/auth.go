package pgfront

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/spokeproxy/spokeproxy/routing"
)

// credentials are what a session holds to log in upstream as its client's
// role: the role's secret and, after a SCRAM login, the ClientKey derived
// from the client's proof. Neither is a password; both stay in memory and
// out of logs.
type credentials struct {
	user      string
	secret    Secret
	clientKey []byte
}

// authError is a failed client login (wrong password, unknown role, role
// without a usable secret); the client gets PostgreSQL's 28P01 wording and
// reason goes to the log only.
type authError struct{ reason string }

func (e *authError) Error() string { return "pgfront: authentication failed: " + e.reason }

// errNoRole: the auth query returned no row (or a NULL secret).
var errNoRole = errors.New("pgfront: no such role or no password")

// authLookup reads role secrets with the auth query: on the local replica
// (so logins work during a WAN outage), or on the hub while the replica
// cannot answer. A lookup must never hold up logins of other roles: each
// runs on a connection of its own (kept idle for the next one, up to
// authConnsMax per server), concurrent lookups of the same role share one
// query, and every query is bounded by BackendTimeout and cut short when
// the routing core judges its server down, so a replica that stops
// answering (blackholed) costs a login one probe cycle, not a TCP timeout.
type authLookup struct {
	cfg  Config
	site Site
	// hubConfig dials the writable hub for a lookup there; nil: no fallback.
	hubConfig func(ctx context.Context) (*pgx.ConnConfig, error)

	replica, hub *authConns

	ctx    context.Context // ends at close: lookups in flight stop
	cancel context.CancelFunc

	mu       sync.Mutex           // guards inflight
	inflight map[string]*authCall // lookups running, by role
}

// authCall is one lookup that concurrent logins of its role share.
type authCall struct {
	done    chan struct{} // closed once sec and err are set
	sec     Secret
	err     error
	waiters int // logins waiting for it (guarded by authLookup.mu; for tests)
}

// authConnsMax bounds the auth role's connections to one server: as many
// lookups of different roles run at once; more wait for one to end.
const authConnsMax = 8

// authIdleTimeout closes an auth connection nobody used for this long. A
// burst of logins leaves several idle, and the hub's are only used while
// the replica is down: kept forever they would hold backends at the hub,
// one set per spoke, and WAN keepalives, long after the outage. (A
// variable for tests.)
var authIdleTimeout = time.Minute

func newAuthLookup(cfg Config, site Site, hubConfig func(ctx context.Context) (*pgx.ConnConfig, error)) *authLookup {
	a := &authLookup{cfg: cfg, site: site, hubConfig: hubConfig, inflight: make(map[string]*authCall),
		replica: newAuthConns(authIdleTimeout), hub: newAuthConns(authIdleTimeout)}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	return a
}

// close stops the lookups in flight and closes the idle connections.
func (a *authLookup) close() {
	a.cancel()
	a.replica.close()
	a.hub.close()
}

func (a *authLookup) connConfig(context.Context) (*pgx.ConnConfig, error) {
	host, portStr, err := net.SplitHostPort(a.cfg.ReplicaAddr)
	if err != nil {
		return nil, fmt.Errorf("pgfront: replica address %q: %w", a.cfg.ReplicaAddr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("pgfront: replica address %q: bad port", a.cfg.ReplicaAddr)
	}
	cc, err := pgx.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, err
	}
	cc.Host = host
	cc.Port = uint16(port)
	cc.User = a.cfg.AuthUser
	cc.Password = a.cfg.AuthPassword
	cc.Database = a.cfg.AuthDatabase
	cc.ConnectTimeout = a.cfg.BackendTimeout
	cc.RuntimeParams["application_name"] = "spokeproxy auth"
	return cc, nil
}

// lookup returns the role's secret, errNoRole if it has none. It waits for
// the role's lookup in flight if there is one, else starts it; ctx ends
// only this caller's wait.
func (a *authLookup) lookup(ctx context.Context, role string) (Secret, error) {
	a.mu.Lock()
	c := a.inflight[role]
	if c == nil {
		c = &authCall{done: make(chan struct{})}
		a.inflight[role] = c
		go func() {
			c.sec, c.err = a.run(role)
			a.mu.Lock()
			delete(a.inflight, role)
			a.mu.Unlock()
			close(c.done)
		}()
	}
	c.waiters++
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		c.waiters--
		a.mu.Unlock()
	}()
	select {
	case <-c.done:
		return c.sec, c.err
	case <-ctx.Done():
		return Secret{}, &replicaError{op: "look up the role", err: ctx.Err()}
	}
}

// waiting is the number of logins waiting for role's lookup (for tests).
func (a *authLookup) waiting(role string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c := a.inflight[role]; c != nil {
		return c.waiters
	}
	return 0
}

// run is one lookup: on the replica unless the routing core judges it down
// while the hub is usable, then on the hub if the replica could not answer.
func (a *authLookup) run(role string) (Secret, error) {
	var passwd *string
	var err error = errJudgedDown
	replicaUp := a.site.Snapshot().Replica.Up
	if replicaUp || a.hubConfig == nil || a.site.HubUnavailable() != nil {
		var down func(routing.Snapshot) bool // nil: tried although judged down, as the last resort
		if replicaUp {
			down = func(s routing.Snapshot) bool { return !s.Replica.Up }
		}
		passwd, err = a.query(a.replica, a.connConfig, role, down)
	}
	if err != nil && !errors.Is(err, errNoRole) {
		err = &replicaError{op: "look up the role", err: err}
		if a.hubConfig != nil {
			var herr error
			passwd, herr = a.query(a.hub, a.hubConfig, role, func(s routing.Snapshot) bool { return !s.Hub.Up })
			if herr == nil || errors.Is(herr, errNoRole) {
				err = herr
			} else {
				err = &replicaError{op: "look up the role (and on the hub: " + herr.Error() + ")", err: err.(*replicaError).err}
			}
		}
	}
	if err != nil {
		return Secret{}, err
	}
	sec, err := ParseSecret(*passwd)
	if err != nil {
		return Secret{}, errNoRole
	}
	return sec, nil
}

// errJudgedDown: a server not asked because the routing core judges it down.
var errJudgedDown = errors.New("the routing core judges it down")

// query runs the auth query for role on a connection of conns (dialled
// with cfg when none is idle), within BackendTimeout, giving up as soon
// as down (if not nil) says so of the routing core's snapshot. A query
// that fails on a connection that had idled runs once more on a fresh
// one: the server may have closed it (a restart).
func (a *authLookup) query(conns *authConns, cfg func(context.Context) (*pgx.ConnConfig, error), role string, down func(routing.Snapshot) bool) (*string, error) {
	ctx, cancel := context.WithCancelCause(a.ctx)
	defer cancel(nil)
	ctx, stop := context.WithTimeoutCause(ctx, a.cfg.BackendTimeout, fmt.Errorf("no answer within %v", a.cfg.BackendTimeout))
	defer stop()
	if down != nil {
		// The routing core's probes see a silent server within a probe
		// cycle; the query alone would only see it at its deadline.
		watchDone := make(chan struct{})
		defer close(watchDone)
		go func() {
			for {
				changes := a.site.Changes()
				if down(a.site.Snapshot()) {
					cancel(errJudgedDown)
					return
				}
				select {
				case <-changes:
				case <-watchDone:
					return
				}
			}
		}()
	}
	for try := 0; ; try++ {
		conn, reused, err := conns.get(ctx, cfg)
		if err != nil {
			return nil, withCause(ctx, err)
		}
		var name string
		var passwd *string
		err = conn.QueryRow(ctx, a.cfg.AuthQuery, role).Scan(&name, &passwd)
		if err == nil || errors.Is(err, pgx.ErrNoRows) {
			conns.put(conn)
			if passwd == nil {
				return nil, errNoRole
			}
			return passwd, nil
		}
		conns.discard(conn)
		if !reused || try > 0 || ctx.Err() != nil {
			return nil, withCause(ctx, err)
		}
	}
}

// dropHub closes the idle auth connections to the hub, so the next lookup
// there dials the hub as it is now (a reload may have moved it).
func (a *authLookup) dropHub() { a.hub.dropIdle() }

// withCause adds why ctx ended (deadline, server judged down) to err.
func withCause(ctx context.Context, err error) error {
	if ctx.Err() == nil {
		return err
	}
	return fmt.Errorf("%w (%w)", err, context.Cause(ctx))
}

// authConns is the auth role's connections to one server: at most
// authConnsMax in use at once, the idle ones kept for the next lookups
// until they have idled for idleTimeout.
type authConns struct {
	slots       chan struct{} // one per connection in use
	idleTimeout time.Duration

	mu     sync.Mutex  // guards idle, reaper, reaperGen and closed
	idle   []idleConn  // oldest first; get takes the newest
	reaper *time.Timer // armed while idle is not empty
	// reaperGen tells the armed reaper from one that fired after it was
	// replaced (dropIdle), which must not arm another.
	reaperGen uint64
	closed    bool
}

type idleConn struct {
	conn  *pgx.Conn
	since time.Time
}

func newAuthConns(idleTimeout time.Duration) *authConns {
	return &authConns{slots: make(chan struct{}, authConnsMax), idleTimeout: idleTimeout}
}

// armReaperLocked arms the reaper to fire after d.
func (p *authConns) armReaperLocked(d time.Duration) {
	p.reaperGen++
	gen := p.reaperGen
	p.reaper = time.AfterFunc(d, func() { p.reap(gen) })
}

// reap closes the connections idle for idleTimeout and, if it is still
// the armed reaper, arms itself again for the oldest one left.
func (p *authConns) reap(gen uint64) {
	p.mu.Lock()
	cutoff := time.Now().Add(-p.idleTimeout)
	n := 0
	for n < len(p.idle) && !p.idle[n].since.After(cutoff) {
		n++
	}
	expired := make([]idleConn, n)
	copy(expired, p.idle[:n])
	p.idle = append(p.idle[:0], p.idle[n:]...)
	if gen == p.reaperGen {
		p.reaper = nil
		if len(p.idle) > 0 && !p.closed {
			p.armReaperLocked(time.Until(p.idle[0].since.Add(p.idleTimeout)))
		}
	}
	p.mu.Unlock()
	for _, ic := range expired {
		closeAuthConn(ic.conn)
	}
}

// idleCount is the number of idle connections (for tests).
func (p *authConns) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// get returns an idle connection (reused) or a new one dialled with cfg.
// The caller gives it back with put or discard.
func (p *authConns) get(ctx context.Context, cfg func(context.Context) (*pgx.ConnConfig, error)) (c *pgx.Conn, reused bool, err error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, false, fmt.Errorf("all %d auth connections busy", authConnsMax)
	}
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		c = p.idle[n-1].conn
		p.idle = p.idle[:n-1]
	}
	p.mu.Unlock()
	if c != nil {
		return c, true, nil
	}
	cc, err := cfg(ctx)
	if err == nil {
		c, err = pgx.ConnectConfig(ctx, cc)
	}
	if err != nil {
		<-p.slots
		return nil, false, err
	}
	return c, false, nil
}

// put keeps a healthy connection for the next lookup.
func (p *authConns) put(c *pgx.Conn) {
	p.mu.Lock()
	closed := p.closed
	if !closed {
		p.idle = append(p.idle, idleConn{conn: c, since: time.Now()})
		if p.reaper == nil {
			p.armReaperLocked(p.idleTimeout)
		}
	}
	p.mu.Unlock()
	if closed {
		closeAuthConn(c)
	}
	<-p.slots
}

// discard closes a connection that failed.
func (p *authConns) discard(c *pgx.Conn) {
	closeAuthConn(c)
	<-p.slots
}

// close closes the idle connections; those in use close when given back.
func (p *authConns) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.dropIdle()
}

// dropIdle closes the idle connections and keeps serving.
func (p *authConns) dropIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	if p.reaper != nil {
		p.reaper.Stop()
		p.reaper = nil
		p.reaperGen++
	}
	p.mu.Unlock()
	for _, ic := range idle {
		closeAuthConn(ic.conn)
	}
}

func closeAuthConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_ = c.Close(ctx)
}

// hubAuthConfig is the auth role's connection to the current writable
// hub, dialled through the routing core with the hub TLS settings, for
// lookups while the replica is down.
func (s *Server) hubAuthConfig(ctx context.Context) (*pgx.ConnConfig, error) {
	if err := s.site.HubUnavailable(); err != nil {
		return nil, err
	}
	endpoint := s.site.Snapshot().Hub.Endpoint
	cc, err := pgx.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, err
	}
	host, portStr, err := net.SplitHostPort(endpoint)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, err
	}
	cc.Host, cc.Port = host, uint16(port)
	cc.User, cc.Password, cc.Database = s.config().AuthUser, s.config().AuthPassword, s.config().AuthDatabase
	cc.ConnectTimeout = s.config().BackendTimeout
	cc.RuntimeParams["application_name"] = "spokeproxy auth"
	cc.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) { return s.site.DialHub(ctx, endpoint) }
	if s.config().HubTLS != nil {
		// Role secrets cross the WAN here: they get the hub connections'
		// TLS, and a hub without TLS fails the lookup rather than see them.
		cc.TLSConfig = hubTLSFor(s.config().HubTLS, endpoint)
	}
	return cc, nil
}

// authenticate runs the client's login: SCRAM-SHA-256 against the role's
// verifier, or md5 against an md5 secret (see doc.go for why md5 works
// without the password). It leaves AuthenticationSASLFinal unflushed; the
// caller sends AuthenticationOk once the replica accepted the login.
func (s *Server) authenticate(ctx context.Context, in *frameReader, be *msgWriter, user string) (*credentials, error) {
	sec, err := s.auth.lookup(ctx, user)
	known := true
	if errors.Is(err, errNoRole) {
		known = false
		sec = mockSecret()
	} else if err != nil {
		return nil, err
	}
	if sec.MD5 != "" {
		var salt [4]byte
		_, _ = rand.Read(salt[:])
		be.send(&pgproto3.AuthenticationMD5Password{Salt: salt})
		if err := be.flush(); err != nil {
			return nil, err
		}
		msg, err := receiveAuth(in, pgproto3.AuthTypeMD5Password)
		if err != nil {
			return nil, err
		}
		pm, ok := msg.(*pgproto3.PasswordMessage)
		if !ok {
			return nil, &startupError{Code: "08P01", Message: fmt.Sprintf("expected password response, got message type %T", msg)}
		}
		if pm.Password != md5Response(sec.MD5, salt) {
			return nil, &authError{reason: "md5 password mismatch"}
		}
		return &credentials{user: user, secret: sec}, nil
	}

	be.send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}})
	if err := be.flush(); err != nil {
		return nil, err
	}
	msg, err := receiveAuth(in, pgproto3.AuthTypeSASL)
	if err != nil {
		return nil, err
	}
	init, ok := msg.(*pgproto3.SASLInitialResponse)
	if !ok {
		return nil, &startupError{Code: "08P01", Message: fmt.Sprintf("expected SASL response, got message type %T", msg)}
	}
	if init.AuthMechanism != "SCRAM-SHA-256" {
		return nil, &startupError{Code: "08P01", Message: "client selected an invalid SASL authentication mechanism"}
	}
	srv := &scramServer{secret: sec}
	serverFirst, err := srv.first(string(init.Data))
	if err != nil {
		return nil, &startupError{Code: "08P01", Message: "malformed SCRAM message"}
	}
	be.send(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)})
	if err := be.flush(); err != nil {
		return nil, err
	}
	msg, err = receiveAuth(in, pgproto3.AuthTypeSASLContinue)
	if err != nil {
		return nil, err
	}
	resp, ok := msg.(*pgproto3.SASLResponse)
	if !ok {
		return nil, &startupError{Code: "08P01", Message: fmt.Sprintf("expected SASL response, got message type %T", msg)}
	}
	serverFinal, good, err := srv.final(string(resp.Data))
	if err != nil {
		return nil, &startupError{Code: "08P01", Message: "malformed SCRAM message"}
	}
	if !good || !known {
		reason := "wrong password"
		if !known {
			reason = "unknown role or role without a SCRAM/md5 secret"
		}
		return nil, &authError{reason: reason}
	}
	be.send(&pgproto3.AuthenticationSASLFinal{Data: []byte(serverFinal)})
	return &credentials{user: user, secret: sec, clientKey: srv.clientKey}, nil
}
