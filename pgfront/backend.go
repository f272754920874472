package pgfront

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// backendConn is one connection from a session to the replica or the hub,
// logged in as the client's role. It is owned by its session's goroutine;
// only pid, secretKey, endpoint and hub are read by the cancel path.
type backendConn struct {
	conn      net.Conn
	rd        *frameReader // everything the backend sends, as frames
	out       *msgWriter   // to the backend, written once per request
	hub       bool
	endpoint  string
	pid       uint32
	secretKey uint32
	params    map[string]string // ParameterStatus as reported at login and since
	loggedIn  time.Time         // when the login completed
	// sentAhead: simple queries already written (sendAhead) whose answers
	// are still to be read, ahead of the next unit's.
	sentAhead int
	pooledAt  time.Time // when it last went into the hub pool (guarded by Server.mu)

	// prepared holds the protocol-level statement names prepared on this
	// backend ("" is the unnamed statement); pendingClose those the client
	// closed while this backend was not in use: they are closed here before
	// its next request.
	prepared     map[string]bool
	pendingClose []string
	// pendingSQL are simple queries the proxy sends ahead of the next
	// request here, answers dropped: session SETs replayed on a fresh hub
	// connection, the BEGIN of a transaction moving to the hub, the
	// ROLLBACK of the replica transaction it left.
	pendingSQL []string
	// loginIsolation: on a hub connection, the default isolation level its
	// session's replica login reported, which the hub's login shared (same
	// role, database and options); a pooled connection whose value differs
	// from a new session's is stale.
	loginIsolation Isolation
}

func (b *backendConn) target() string {
	if b.hub {
		return "hub"
	}
	return "replica"
}

// alive reports whether an idle backend connection is still open: an
// idle backend sends nothing, so anything readable (the FATAL of a
// shutdown, or EOF) means it is gone. It peeks at the socket without
// blocking (a read deadline in the past would not even try the socket).
// It must only be called between requests, by the goroutine that owns b.
func (b *backendConn) alive() bool {
	if b.rd.buffered() > 0 {
		return false
	}
	raw := b.conn
	if tc, ok := raw.(*tls.Conn); ok {
		raw = tc.NetConn() // an idle TLS peer sends no records either
	}
	if cc, ok := raw.(*countingConn); ok {
		raw = cc.Conn
	}
	sc, ok := raw.(syscall.Conn)
	if !ok {
		return true // not a socket we can peek at: trust it
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	err = rc.Read(func(fd uintptr) bool {
		var buf [1]byte
		_, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK // nothing to read, not closed
		return true
	})
	return err == nil && alive
}

// sendAhead writes a simple query now, between requests, its answer to
// be read (and dropped) with the next unit's. It reports false if the
// connection would not take it within a short bound.
func (b *backendConn) sendAhead(q string) bool {
	b.out.query(q)
	_ = b.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	err := b.out.flush()
	_ = b.conn.SetWriteDeadline(time.Time{})
	if err != nil {
		return false
	}
	b.sentAhead++
	return true
}

func (b *backendConn) close() {
	if b == nil {
		return
	}
	// Terminate politely; the backend ends the session at once either way.
	_ = b.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	b.out.send(&pgproto3.Terminate{})
	_ = b.out.flush()
	b.conn.Close()
}

// startTLS asks a PostgreSQL server for TLS (SSLRequest) and runs the
// handshake; a server that declines is an error, never a silent downgrade.
// hubTLSFor is cfg for one hub endpoint: its ServerName defaults to the
// endpoint's host, so verify-full checks the name the hub is reached by.
func hubTLSFor(cfg *tls.Config, endpoint string) *tls.Config {
	tc := cfg.Clone()
	if tc.ServerName == "" {
		if host, _, err := net.SplitHostPort(endpoint); err == nil {
			tc.ServerName = host
		}
	}
	return tc
}

func startTLS(ctx context.Context, conn net.Conn, cfg *tls.Config, endpoint string) (net.Conn, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
		defer conn.SetDeadline(time.Time{})
	}
	buf, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	if _, err := conn.Write(buf); err != nil {
		return nil, err
	}
	var answer [1]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		return nil, err
	}
	if answer[0] != 'S' {
		return nil, fmt.Errorf("pgfront: hub %s does not offer TLS (answered %q to SSLRequest)", endpoint, answer[0])
	}
	c := tls.Client(conn, hubTLSFor(cfg, endpoint))
	if err := c.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("pgfront: TLS to hub %s: %w", endpoint, err)
	}
	return c, nil
}

// login runs the startup and authentication of a fresh backend
// connection as creds.user, with the client's startup parameters. A
// non-empty probe is a simple query sent as soon as authentication
// succeeds, so that it runs when the backend is ready without a round trip
// of its own; the first column of its first row is returned ("" if it
// failed).
func login(ctx context.Context, conn net.Conn, hub bool, endpoint string, params map[string]string, creds *credentials, probe string) (*backendConn, string, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
		defer conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	b := &backendConn{
		conn:     conn,
		rd:       newFrameReader(conn, 16<<10, 0),
		out:      newMsgWriter(conn),
		hub:      hub,
		endpoint: endpoint,
		params:   make(map[string]string),
		prepared: make(map[string]bool),
	}
	sm := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: make(map[string]string)}
	for k, v := range params {
		if k == "replication" || len(k) > 4 && k[:4] == "_pq_" {
			continue
		}
		sm.Parameters[k] = v
	}
	sm.Parameters["user"] = creds.user
	b.out.send(sm)
	if err := b.out.flush(); err != nil {
		return nil, "", err
	}
	var sc *scramClient
	for {
		typ, frame, err := b.rd.next()
		if err != nil {
			return nil, "", err
		}
		msg, err := decodeBackend(typ, frame)
		if err != nil {
			return nil, "", err
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationOk:
			if probe != "" {
				b.out.send(&pgproto3.Query{String: probe})
				if err := b.out.flush(); err != nil {
					return nil, "", err
				}
			}
		case *pgproto3.AuthenticationSASL:
			if creds.clientKey == nil {
				return nil, "", errors.New("pgfront: backend asks for SCRAM but the role's secret is md5; set the role's password again with password_encryption = scram-sha-256")
			}
			ok := false
			for _, mech := range m.AuthMechanisms {
				ok = ok || mech == "SCRAM-SHA-256"
			}
			if !ok {
				return nil, "", fmt.Errorf("pgfront: backend offers SASL mechanisms %v, not SCRAM-SHA-256", m.AuthMechanisms)
			}
			sc = &scramClient{clientKey: creds.clientKey, serverKey: creds.secret.ServerKey}
			b.out.send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(sc.first())})
			if err := b.out.flush(); err != nil {
				return nil, "", err
			}
		case *pgproto3.AuthenticationSASLContinue:
			if sc == nil {
				return nil, "", errSCRAMProtocol
			}
			final, err := sc.final(string(m.Data))
			if err != nil {
				return nil, "", err
			}
			b.out.send(&pgproto3.SASLResponse{Data: []byte(final)})
			if err := b.out.flush(); err != nil {
				return nil, "", err
			}
		case *pgproto3.AuthenticationSASLFinal:
			if sc == nil {
				return nil, "", errSCRAMProtocol
			}
			if err := sc.verify(string(m.Data)); err != nil {
				return nil, "", err
			}
		case *pgproto3.AuthenticationMD5Password:
			if creds.secret.MD5 == "" {
				return nil, "", errors.New("pgfront: backend asks for md5 but the role has a SCRAM secret; use scram-sha-256 in the backend's pg_hba.conf")
			}
			b.out.send(&pgproto3.PasswordMessage{Password: md5Response(creds.secret.MD5, m.Salt)})
			if err := b.out.flush(); err != nil {
				return nil, "", err
			}
		case *pgproto3.AuthenticationCleartextPassword:
			return nil, "", errors.New("pgfront: backend asks for a cleartext password, which the proxy never holds")
		case *pgproto3.ParameterStatus:
			b.params[m.Name] = m.Value
		case *pgproto3.BackendKeyData:
			b.pid = m.ProcessID
			if len(m.SecretKey) >= 4 {
				b.secretKey = uint32(m.SecretKey[0])<<24 | uint32(m.SecretKey[1])<<16 | uint32(m.SecretKey[2])<<8 | uint32(m.SecretKey[3])
			}
		case *pgproto3.NoticeResponse, *pgproto3.NegotiateProtocolVersion:
		case *pgproto3.ErrorResponse:
			return nil, "", newBackendError(m)
		case *pgproto3.ReadyForQuery:
			b.loggedIn = time.Now()
			if probe == "" {
				return b, "", nil
			}
			answer, err := readProbe(b)
			if err != nil {
				return nil, "", err
			}
			return b, answer, nil
		default:
			return nil, "", fmt.Errorf("pgfront: unexpected %T during backend login", msg)
		}
	}
}

// readProbe reads the answer to login's probe up to its ReadyForQuery.
func readProbe(b *backendConn) (string, error) {
	answer := ""
	for {
		typ, frame, err := b.rd.next()
		if err != nil {
			return "", err
		}
		switch typ {
		case 'D':
			if m, err := decodeBackend(typ, frame); err == nil && answer == "" {
				if dr := m.(*pgproto3.DataRow); len(dr.Values) > 0 {
					answer = string(dr.Values[0])
				}
			}
		case 'Z':
			return answer, nil
		}
	}
}
