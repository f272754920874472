package routing

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spokeproxy/spokeproxy/metrics"
)

// Target says which side of the site an endpoint is on; its values are the
// bounded "target" metric label.
type Target string

const (
	TargetHub     Target = "hub"
	TargetReplica Target = "replica"
)

// Config is everything a Site needs, in plain values, so that the proxy
// package can build it from its own configuration. Zero durations and counts
// take the documented defaults (see withDefaults).
type Config struct {
	Protocol Protocol
	// Hubs are the hub candidates: "host:port" for PostgreSQL, ldap:// or
	// ldaps:// URLs for LDAP, in order of preference.
	Hubs []string
	// Replica is the local replica: "host:port" or an LDAP URL.
	Replica string

	// PostgreSQL probe identity (the auth role), used on replica and hubs.
	User     string
	Password string
	Database string // the database probes connect to; default "postgres"

	// LDAP: the replicated suffix whose contextCSN is the position, and an
	// optional identity for probes (anonymous when BindDN is empty).
	BaseDN       string
	BindDN       string
	BindPassword string

	// HubTLS, when set, is used on every hub connection the Site dials for
	// probes (PostgreSQL TLS; LDAP StartTLS when HubStartTLS, and always for
	// ldaps:// URLs, where DialHub also wraps the connection).
	HubTLS      *tls.Config
	HubStartTLS bool

	ProbeInterval    time.Duration // default 250ms
	ProbeTimeout     time.Duration // default 500ms
	FastPollInterval time.Duration // replica polls while someone waits in WaitFor; default 5ms
	DownAfter        int           // default 2
	UpAfter          int           // default 2
	// FlapWindow: each UP->DOWN transition of an endpoint within this window
	// beyond the first doubles the successes it needs to come back UP (at
	// most 8 x UpAfter), so a flapping link does not flap the site. Default
	// 10s; negative disables damping.
	FlapWindow     time.Duration
	TCPKeepAlive   time.Duration // keepalive idle time on WAN connections; default 5s
	TCPUserTimeout time.Duration // TCP_USER_TIMEOUT on WAN connections; default 3s

	Policy Policy

	Logger  *slog.Logger     // default: discard
	Metrics *metrics.Routing // optional
	Now     func() time.Time // default time.Now; tests inject a clock
	// NewProber overrides the real probes (tests). nil uses PostgreSQL or
	// LDAP probes per Protocol.
	NewProber func(target Target, endpoint string) Prober
}

func (c Config) withDefaults() Config {
	if c.ProbeInterval <= 0 {
		c.ProbeInterval = 250 * time.Millisecond
	}
	if c.ProbeTimeout <= 0 {
		c.ProbeTimeout = 500 * time.Millisecond
	}
	if c.FastPollInterval <= 0 {
		c.FastPollInterval = 5 * time.Millisecond
	}
	if c.DownAfter <= 0 {
		c.DownAfter = 2
	}
	if c.UpAfter <= 0 {
		c.UpAfter = 2
	}
	if c.FlapWindow == 0 {
		c.FlapWindow = 10 * time.Second
	}
	if c.TCPKeepAlive <= 0 {
		c.TCPKeepAlive = 5 * time.Second
	}
	if c.TCPUserTimeout <= 0 {
		c.TCPUserTimeout = 3 * time.Second
	}
	if c.Database == "" {
		c.Database = "postgres"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	switch c.Protocol {
	case Postgres, LDAP:
	default:
		errs = append(errs, fmt.Errorf("routing: protocol %q: want %q or %q", c.Protocol, Postgres, LDAP))
	}
	if len(c.Hubs) == 0 {
		errs = append(errs, errors.New("routing: no hub candidates"))
	}
	seen := map[string]bool{}
	for _, h := range c.Hubs {
		a, _ := hostPort(h)
		if seen[a] {
			errs = append(errs, fmt.Errorf("routing: hub %s listed twice", h))
		}
		seen[a] = true
	}
	if c.Replica == "" {
		errs = append(errs, errors.New("routing: no replica"))
	}
	if c.Protocol == LDAP && c.BaseDN == "" && c.NewProber == nil {
		errs = append(errs, errors.New("routing: LDAP needs the base DN whose contextCSN is probed"))
	}
	return errors.Join(errs...)
}
