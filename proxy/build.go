package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"

	"github.com/spokeproxy/spokeproxy/ldapfront"
	"github.com/spokeproxy/spokeproxy/metrics"
	"github.com/spokeproxy/spokeproxy/pgfront"
	"github.com/spokeproxy/spokeproxy/routing"
)

// frontend is what proxy needs of a protocol front.
type frontend interface {
	Serve(ctx context.Context, ln net.Listener) error
	Shutdown(ctx context.Context) error
}

// protocolPart is one protocol of the site: its routing view, its front
// and the addresses the front listens on.
type protocolPart struct {
	name    string // metrics.Postgres or metrics.LDAP
	site    *routing.Site
	front   frontend
	listen  string
	tlsLn   string      // optional second listener wrapped in TLS (LDAPS)
	tlsConf *tls.Config // for tlsLn
}

// policy maps the consistency and replica sections onto routing's policy.
func policy(c *Config) routing.Policy {
	p := routing.Policy{
		WaitTimeout:           c.Consistency.WaitTimeout,
		OnTimeoutHub:          c.Consistency.OnTimeout == "hub",
		MaxLag:                c.Replica.MaxLag,
		ReplicaUnavailableHub: c.Replica.WhenUnavailable == "hub",
	}
	switch c.Consistency.Mode {
	case ConsistencySite:
		p.Consistency = routing.ConsistencySite
	case ConsistencyNone:
		p.Consistency = routing.ConsistencyNone
	default:
		p.Consistency = routing.ConsistencySession
	}
	return p
}

// siteConfig is the part of routing.Config both protocols share.
func (s *Server) siteConfig(protocol routing.Protocol, m *metrics.Routing) routing.Config {
	l := s.cfg.Link
	return routing.Config{
		Protocol:       protocol,
		ProbeInterval:  l.ProbeInterval,
		ProbeTimeout:   l.ProbeTimeout,
		DownAfter:      l.DownAfter,
		UpAfter:        l.UpAfter,
		FlapWindow:     l.FlapWindow,
		TCPKeepAlive:   l.TCPKeepalive,
		TCPUserTimeout: l.TCPUserTimeout,
		Policy:         policy(s.cfg),
		Logger:         s.logger,
		Metrics:        m,
	}
}

// buildParts creates the routing sites and fronts the config asks for.
// Secrets are read from their files here, once; they stay in memory.
func (s *Server) buildParts() ([]*protocolPart, error) {
	var parts []*protocolPart
	front := metrics.NewFront(s.reg)
	rm := metrics.NewRouting(s.reg)

	if pg := s.cfg.Postgres; pg != nil {
		password, err := ReadSecretFile(pg.Auth.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("postgres.auth.password_file: %w", err)
		}
		rc := s.siteConfig(routing.Postgres, rm)
		rc.Replica = pg.Replica.Address
		for _, h := range pg.Hubs {
			rc.Hubs = append(rc.Hubs, h.Address)
		}
		rc.User, rc.Password, rc.Database = pg.Auth.User, password, "postgres"
		hubTLS, err := postgresHubTLS(pg.HubTLS)
		if err != nil {
			return nil, fmt.Errorf("postgres.hub_tls: %w", err)
		}
		rc.HubTLS = hubTLS
		site, err := routing.NewSite(rc)
		if err != nil {
			return nil, err
		}
		frontTLS, err := s.serverTLS("postgres.tls", pg.TLS)
		if err != nil {
			return nil, fmt.Errorf("postgres.tls: %w", err)
		}
		m := metrics.NewPG(s.reg)
		m.Front = front.Protocol(metrics.Postgres)
		p := policy(s.cfg)
		fc := pgfront.Config{
			Site:             s.cfg.Site,
			ReplicaAddr:      pg.Replica.Address,
			TLS:              frontTLS,
			HubTLS:           hubTLS,
			AuthUser:         pg.Auth.User,
			AuthPassword:     password,
			AuthQuery:        pg.Auth.Query,
			LazyTransactions: pg.Transactions == "lazy",
			HubFunctions:     pg.HubFunctions,
			Consistency:      p.Consistency,
			WaitTimeout:      p.WaitTimeout,
			OnTimeoutHub:     p.OnTimeoutHub,
			MaxConnections:   pg.MaxConnections,
			MaxMessageSize:   int(pg.MaxMessageSize),
			StartupTimeout:   pg.StartupTimeout,
			WriteTimeout:     pg.WriteTimeout,
			HubPoolSize:      pg.HubPoolSize,
			// Logins need the replica's auth query; with "refuse" a site
			// does not fall back to the hub for them either.
			RefuseWhenReplicaDown: s.cfg.Replica.WhenUnavailable == "refuse",
		}
		parts = append(parts, &protocolPart{
			name:   metrics.Postgres,
			site:   site,
			front:  pgfront.New(fc, site, m, s.logger.With("front", "pg")),
			listen: pg.Listen,
		})
	}

	if l := s.cfg.LDAP; l != nil {
		rc := s.siteConfig(routing.LDAP, rm)
		rc.Replica = l.Replica.URL
		for _, h := range l.Hubs {
			rc.Hubs = append(rc.Hubs, h.URL)
		}
		rc.BaseDN = l.BaseDN
		if l.Monitor.Configured() {
			pw, err := ReadSecretFile(l.Monitor.PasswordFile)
			if err != nil {
				return nil, fmt.Errorf("ldap.monitor.password_file: %w", err)
			}
			rc.BindDN, rc.BindPassword = l.Monitor.BindDN, pw
		}
		hubTLS, err := clientTLS(l.HubTLS.CAFile, l.HubTLS.ServerName)
		if err != nil {
			return nil, fmt.Errorf("ldap.hub_tls: %w", err)
		}
		rc.HubTLS, rc.HubStartTLS = hubTLS, l.HubTLS.StartTLS
		site, err := routing.NewSite(rc)
		if err != nil {
			return nil, err
		}
		srvTLS, err := s.serverTLS("ldap.tls", l.TLS)
		if err != nil {
			return nil, fmt.Errorf("ldap.tls: %w", err)
		}
		fc := ldapfront.Config{
			ReplicaURL:     l.Replica.URL,
			BaseDN:         l.BaseDN,
			TLS:            srvTLS,
			HubTLS:         hubTLS,
			HubStartTLS:    l.HubTLS.StartTLS,
			Consistency:    policy(s.cfg).Consistency,
			WaitTimeout:    s.cfg.Consistency.WaitTimeout,
			MaxPDUSize:     int64(l.MaxPDUSize),
			MaxOutstanding: l.MaxOutstanding,
			IdleTimeout:    l.IdleTimeout,
			WriteTimeout:   l.WriteTimeout,
			MaxConnections: l.MaxConnections,
		}
		if l.ProxyAuth.Configured() {
			pw, err := ReadSecretFile(l.ProxyAuth.PasswordFile)
			if err != nil {
				return nil, fmt.Errorf("ldap.proxy_auth.password_file: %w", err)
			}
			fc.ProxyAuthDN, fc.ProxyAuthPassword = l.ProxyAuth.BindDN, pw
		}
		parts = append(parts, &protocolPart{
			name:    metrics.LDAP,
			site:    site,
			front:   ldapfront.New(fc, site, metrics.NewLDAP(s.reg, front), s.logger),
			listen:  l.Listen,
			tlsLn:   l.LDAPSListen,
			tlsConf: srvTLS,
		})
	}
	return parts, nil
}

// postgresHubTLS maps hub_tls.mode as libpq reads sslmode; nil for disable.
func postgresHubTLS(c PostgresHubTLS) (*tls.Config, error) {
	switch c.Mode {
	case "require":
		// Encrypted, the certificate not checked: libpq's sslmode=require.
		return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, nil
	case "verify-full":
		return clientTLS(c.CAFile, c.ServerName)
	}
	return nil, nil
}

// serverTLS loads a listener's certificate; nil when none is configured.
// The certificate is served through a holder registered under key (the
// config section), so a reload can rotate it without dropping clients.
func (s *Server) serverTLS(key string, f TLSFiles) (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	h := &certHolder{}
	if err := h.load(f); err != nil {
		return nil, err
	}
	s.certs[key] = h
	return &tls.Config{GetCertificate: h.get, MinVersion: tls.VersionTLS12}, nil
}

// certHolder is a listener's current certificate. Handshakes read it;
// a reload replaces it whole.
type certHolder struct {
	cert atomic.Pointer[tls.Certificate]
}

// parse reads a certificate and its key without installing them.
func (h *certHolder) parse(f TLSFiles) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, err
	}
	return &cert, nil
}

func (h *certHolder) load(f TLSFiles) error {
	c, err := h.parse(f)
	if err != nil {
		return err
	}
	h.cert.Store(c)
	return nil
}

func (h *certHolder) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return h.cert.Load(), nil
}

// clientTLS is the TLS config for connections to hubs: the system roots, or
// the given CA file's. It is used only where TLS is asked for (ldaps://
// URLs, StartTLS).
func clientTLS(caFile, serverName string) (*tls.Config, error) {
	c := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return c, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New(caFile + ": no PEM certificate found")
	}
	c.RootCAs = pool
	return c, nil
}
