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
// and the addresses the front listens on, and what a reload rebuilds the
// part's settings from besides the config file.
type protocolPart struct {
	name    string // metrics.Postgres or metrics.LDAP
	site    *routing.Site
	front   frontend
	listen  string
	tlsLn   string      // optional second listener wrapped in TLS (LDAPS)
	tlsConf *tls.Config // for tlsLn

	pg   *pgfront.Server   // the front, when name is metrics.Postgres
	ldap *ldapfront.Server // the front, when name is metrics.LDAP

	secrets  partSecrets
	frontTLS *tls.Config // the listener's; its certificate rotates through Server.certs
	hubTLS   *tls.Config // to the hubs; nil for none (PostgreSQL hub_tls.mode disable)
	rm       *metrics.Routing
}

// section is the part's config section: "postgres" or "ldap".
func (p *protocolPart) section() string {
	if p.name == metrics.Postgres {
		return "postgres"
	}
	return "ldap"
}

// partSecrets are a part's passwords, read from their files at start and
// kept in memory; a reload keeps them (a restart re-reads them).
type partSecrets struct {
	pgAuth    string // postgres.auth.password_file
	monitor   string // ldap.monitor.password_file
	proxyAuth string // ldap.proxy_auth.password_file
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
func (s *Server) siteConfig(c *Config, protocol routing.Protocol, m *metrics.Routing) routing.Config {
	l := c.Link
	return routing.Config{
		Protocol:       protocol,
		ProbeInterval:  l.ProbeInterval,
		ProbeTimeout:   l.ProbeTimeout,
		DownAfter:      l.DownAfter,
		UpAfter:        l.UpAfter,
		FlapWindow:     l.FlapWindow,
		TCPKeepAlive:   l.TCPKeepalive,
		TCPUserTimeout: l.TCPUserTimeout,
		Policy:         policy(c),
		Logger:         s.logger,
		Metrics:        m,
	}
}

// pgSettings maps the config onto the PostgreSQL part's routing and front
// settings. New builds the part from them; a reload rebuilds them from the
// reloaded config and hands them to the running site and front.
func (s *Server) pgSettings(c *Config, p *protocolPart) (routing.Config, pgfront.Config) {
	pg := c.Postgres
	rc := s.siteConfig(c, routing.Postgres, p.rm)
	rc.Replica = pg.Replica.Address
	for _, h := range pg.Hubs {
		rc.Hubs = append(rc.Hubs, h.Address)
	}
	rc.User, rc.Password, rc.Database = pg.Auth.User, p.secrets.pgAuth, "postgres"
	rc.HubTLS = p.hubTLS
	pol := policy(c)
	fc := pgfront.Config{
		Site:               c.Site,
		ReplicaAddr:        pg.Replica.Address,
		TLS:                p.frontTLS,
		HubTLS:             p.hubTLS,
		AuthUser:           pg.Auth.User,
		AuthPassword:       p.secrets.pgAuth,
		AuthQuery:          pg.Auth.Query,
		LazyTransactions:   pg.Transactions == "lazy",
		HubFunctions:       pg.HubFunctions,
		Consistency:        pol.Consistency,
		WaitTimeout:        pol.WaitTimeout,
		OnTimeoutHub:       pol.OnTimeoutHub,
		MaxConnections:     pg.MaxConnections,
		MaxMessageSize:     int(pg.MaxMessageSize),
		StartupTimeout:     pg.StartupTimeout,
		WriteTimeout:       pg.WriteTimeout,
		HubPoolSize:        pg.HubPoolSize,
		HubPoolIdleTimeout: pg.HubPoolIdleTimeout,
		HubPoolMaxAge:      pg.HubPoolMaxAge,
		// Logins need the replica's auth query; with "refuse" a site
		// does not fall back to the hub for them either.
		RefuseWhenReplicaDown: c.Replica.WhenUnavailable == "refuse",
	}
	return rc, fc
}

// ldapSettings is pgSettings for the LDAP part.
func (s *Server) ldapSettings(c *Config, p *protocolPart) (routing.Config, ldapfront.Config) {
	l := c.LDAP
	rc := s.siteConfig(c, routing.LDAP, p.rm)
	rc.Replica = l.Replica.URL
	for _, h := range l.Hubs {
		rc.Hubs = append(rc.Hubs, h.URL)
	}
	rc.BaseDN = l.BaseDN
	if l.Monitor.Configured() {
		rc.BindDN, rc.BindPassword = l.Monitor.BindDN, p.secrets.monitor
	}
	rc.HubTLS, rc.HubStartTLS = p.hubTLS, l.HubTLS.StartTLS
	fc := ldapfront.Config{
		ReplicaURL:     l.Replica.URL,
		BaseDN:         l.BaseDN,
		TLS:            p.frontTLS,
		HubTLS:         p.hubTLS,
		HubStartTLS:    l.HubTLS.StartTLS,
		Consistency:    policy(c).Consistency,
		WaitTimeout:    c.Consistency.WaitTimeout,
		MaxPDUSize:     int64(l.MaxPDUSize),
		MaxOutstanding: l.MaxOutstanding,
		IdleTimeout:    l.IdleTimeout,
		WriteTimeout:   l.WriteTimeout,
		MaxConnections: l.MaxConnections,

		RefuseTransactions: l.Transactions == "refuse",
	}
	if l.ProxyAuth.Configured() {
		fc.ProxyAuthDN, fc.ProxyAuthPassword = l.ProxyAuth.BindDN, p.secrets.proxyAuth
	}
	return rc, fc
}

// hubTLSFor builds a part's TLS to its hubs from the config.
func hubTLSFor(name string, c *Config) (*tls.Config, error) {
	if name == metrics.Postgres {
		t, err := postgresHubTLS(c.Postgres.HubTLS)
		if err != nil {
			return nil, fmt.Errorf("postgres.hub_tls: %w", err)
		}
		return t, nil
	}
	t, err := clientTLS(c.LDAP.HubTLS.CAFile, c.LDAP.HubTLS.ServerName)
	if err != nil {
		return nil, fmt.Errorf("ldap.hub_tls: %w", err)
	}
	return t, nil
}

// buildParts creates the routing sites and fronts the config asks for.
// Secrets are read from their files here, once; they stay in memory.
func (s *Server) buildParts() ([]*protocolPart, error) {
	var parts []*protocolPart
	front := metrics.NewFront(s.reg)
	rm := metrics.NewRouting(s.reg)

	if pg := s.cfg.Postgres; pg != nil {
		p := &protocolPart{name: metrics.Postgres, listen: pg.Listen, rm: rm}
		var err error
		if p.secrets.pgAuth, err = ReadSecretFile(pg.Auth.PasswordFile); err != nil {
			return nil, fmt.Errorf("postgres.auth.password_file: %w", err)
		}
		if p.hubTLS, err = hubTLSFor(p.name, s.cfg); err != nil {
			return nil, err
		}
		if p.frontTLS, err = s.serverTLS("postgres.tls", pg.TLS); err != nil {
			return nil, fmt.Errorf("postgres.tls: %w", err)
		}
		rc, fc := s.pgSettings(s.cfg, p)
		if p.site, err = routing.NewSite(rc); err != nil {
			return nil, err
		}
		m := metrics.NewPG(s.reg)
		m.Front = front.Protocol(metrics.Postgres)
		p.pg = pgfront.New(fc, p.site, m, s.logger.With("front", "pg"))
		p.front = p.pg
		parts = append(parts, p)
	}

	if l := s.cfg.LDAP; l != nil {
		p := &protocolPart{name: metrics.LDAP, listen: l.Listen, tlsLn: l.LDAPSListen, rm: rm}
		var err error
		if l.Monitor.Configured() {
			if p.secrets.monitor, err = ReadSecretFile(l.Monitor.PasswordFile); err != nil {
				return nil, fmt.Errorf("ldap.monitor.password_file: %w", err)
			}
		}
		if l.ProxyAuth.Configured() {
			if p.secrets.proxyAuth, err = ReadSecretFile(l.ProxyAuth.PasswordFile); err != nil {
				return nil, fmt.Errorf("ldap.proxy_auth.password_file: %w", err)
			}
		}
		if p.hubTLS, err = hubTLSFor(p.name, s.cfg); err != nil {
			return nil, err
		}
		if p.frontTLS, err = s.serverTLS("ldap.tls", l.TLS); err != nil {
			return nil, fmt.Errorf("ldap.tls: %w", err)
		}
		p.tlsConf = p.frontTLS
		rc, fc := s.ldapSettings(s.cfg, p)
		if p.site, err = routing.NewSite(rc); err != nil {
			return nil, err
		}
		p.ldap = ldapfront.New(fc, p.site, metrics.NewLDAP(s.reg, front), s.logger)
		p.front = p.ldap
		parts = append(parts, p)
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
