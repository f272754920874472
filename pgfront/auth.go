package pgfront

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
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

// authLookup runs the auth query on the local replica (so logins work
// during a WAN outage) over one connection owned by the auth role, opened
// on first use and reopened after an error. Lookups are serialised: each
// is one local round trip.
type authLookup struct {
	cfg Config

	mu      sync.Mutex // guards conn and hubConn and serialises lookups
	conn    *pgx.Conn  // to the replica
	hubConn *pgx.Conn  // to the hub, only while the replica cannot answer
}

// query runs the auth query over *conn, connecting it with cfg first.
func (a *authLookup) query(ctx context.Context, conn **pgx.Conn, cfg func() (*pgx.ConnConfig, error), role string) (*string, error) {
	if *conn == nil {
		cc, err := cfg()
		if err != nil {
			return nil, err
		}
		c, err := pgx.ConnectConfig(ctx, cc)
		if err != nil {
			return nil, &replicaError{op: "look up the role", err: err}
		}
		*conn = c
	}
	var name string
	var passwd *string
	err := (*conn).QueryRow(ctx, a.cfg.AuthQuery, role).Scan(&name, &passwd)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && passwd == nil) {
		return nil, errNoRole
	}
	if err != nil {
		(*conn).Close(context.Background())
		*conn = nil
		return nil, &replicaError{op: "look up the role", err: err}
	}
	return passwd, nil
}

func newAuthLookup(cfg Config) *authLookup { return &authLookup{cfg: cfg} }

func (a *authLookup) connConfig() (*pgx.ConnConfig, error) {
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

// lookup returns the role's secret, errNoRole if it has none. When the
// replica cannot answer, hub (if not nil) dials the writable hub and the
// query runs there instead, over one connection kept for the purpose.
func (a *authLookup) lookup(ctx context.Context, role string, hub func(ctx context.Context) (*pgx.ConnConfig, error)) (Secret, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	passwd, err := a.query(ctx, &a.conn, a.connConfig, role)
	if err != nil && !errors.Is(err, errNoRole) && hub != nil {
		var herr error
		if passwd, herr = a.query(ctx, &a.hubConn, func() (*pgx.ConnConfig, error) { return hub(ctx) }, role); herr == nil || errors.Is(herr, errNoRole) {
			err = herr
		} else {
			err = &replicaError{op: "look up the role (and on the hub: " + herr.Error() + ")", err: err}
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

func (a *authLookup) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range []**pgx.Conn{&a.conn, &a.hubConn} {
		if *c != nil {
			(*c).Close(context.Background())
			*c = nil
		}
	}
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
	cc.User, cc.Password, cc.Database = s.cfg.AuthUser, s.cfg.AuthPassword, s.cfg.AuthDatabase
	cc.ConnectTimeout = s.cfg.BackendTimeout
	cc.RuntimeParams["application_name"] = "spokeproxy auth"
	cc.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) { return s.site.DialHub(ctx, endpoint) }
	if s.cfg.HubTLS != nil {
		// Role secrets cross the WAN here: they get the hub connections'
		// TLS, and a hub without TLS fails the lookup rather than see them.
		cc.TLSConfig = hubTLSFor(s.cfg.HubTLS, endpoint)
	}
	return cc, nil
}

// authenticate runs the client's login: SCRAM-SHA-256 against the role's
// verifier, or md5 against an md5 secret (see doc.go for why md5 works
// without the password). It leaves AuthenticationSASLFinal unflushed; the
// caller sends AuthenticationOk once the replica accepted the login.
func (s *Server) authenticate(ctx context.Context, be *pgproto3.Backend, user string) (*credentials, error) {
	sec, err := s.auth.lookup(ctx, user, s.hubAuthConfig)
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
		be.Send(&pgproto3.AuthenticationMD5Password{Salt: salt})
		if err := be.Flush(); err != nil {
			return nil, err
		}
		if err := be.SetAuthType(pgproto3.AuthTypeMD5Password); err != nil {
			return nil, err
		}
		msg, err := be.Receive()
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

	be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}})
	if err := be.Flush(); err != nil {
		return nil, err
	}
	if err := be.SetAuthType(pgproto3.AuthTypeSASL); err != nil {
		return nil, err
	}
	msg, err := be.Receive()
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
	be.Send(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)})
	if err := be.Flush(); err != nil {
		return nil, err
	}
	if err := be.SetAuthType(pgproto3.AuthTypeSASLContinue); err != nil {
		return nil, err
	}
	msg, err = be.Receive()
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
	be.Send(&pgproto3.AuthenticationSASLFinal{Data: []byte(serverFinal)})
	return &credentials{user: user, secret: sec, clientKey: srv.clientKey}, nil
}
