package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is one spoke site's configuration, as read from its YAML file
// (testdata/spokeproxy.example.yaml documents every key). The doc comments
// of its fields are the reference; keep the example in step.
//
// A Config is immutable once loaded: a reload builds a new one and replaces
// it whole.
type Config struct {
	// Site names this spoke in /status, logs and error messages.
	Site        string            `yaml:"site"`
	Log         LogConfig         `yaml:"log"`
	Admin       AdminConfig       `yaml:"admin"`
	Link        LinkConfig        `yaml:"link"`
	Consistency ConsistencyConfig `yaml:"consistency"`
	Replica     ReplicaConfig     `yaml:"replica"`
	// Postgres is nil when the site runs no PostgreSQL front.
	Postgres *PostgresConfig `yaml:"postgres"`
	// LDAP is nil when the site runs no LDAP front.
	LDAP *LDAPConfig `yaml:"ldap"`
}

// LogConfig selects the log level and format.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info, warn or error
	Format string `yaml:"format"` // text or json
}

// AdminConfig is the admin HTTP server.
type AdminConfig struct {
	Listen string `yaml:"listen"`
	// TokenFile holds a bearer token the drill controls require; empty means none.
	TokenFile string `yaml:"token_file"`
}

// LinkConfig sets how the health of hub and replica endpoints is judged.
type LinkConfig struct {
	ProbeInterval time.Duration `yaml:"probe_interval"`
	ProbeTimeout  time.Duration `yaml:"probe_timeout"`
	DownAfter     int           `yaml:"down_after"`
	UpAfter       int           `yaml:"up_after"`
	// FlapWindow damps a flapping link: each further loss of an endpoint
	// within this window doubles the successes it needs to come back up
	// (at most 8 x UpAfter); a negative window turns damping off.
	FlapWindow     time.Duration `yaml:"flap_window"`
	TCPKeepalive   time.Duration `yaml:"tcp_keepalive"`
	TCPUserTimeout time.Duration `yaml:"tcp_user_timeout"`
}

// Consistency modes.
const (
	ConsistencySession = "session"
	ConsistencySite    = "site"
	ConsistencyNone    = "none"
)

// ConsistencyConfig sets read-your-writes.
type ConsistencyConfig struct {
	Mode        string        `yaml:"mode"`
	WaitTimeout time.Duration `yaml:"wait_timeout"`
	// OnTimeout is what a read does once WaitTimeout has passed: "hub" or "error".
	OnTimeout string `yaml:"on_timeout"`
}

// ReplicaConfig sets when a local replica is fit to serve reads.
type ReplicaConfig struct {
	MaxLag time.Duration `yaml:"max_lag"`
	// WhenUnavailable is "hub" (read from the hub while it is reachable) or "refuse".
	WhenUnavailable string `yaml:"when_unavailable"`
}

// TLSFiles names a certificate and its key.
type TLSFiles struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Enabled reports whether both files are set.
func (t TLSFiles) Enabled() bool { return t.CertFile != "" && t.KeyFile != "" }

// PostgresConfig is the PostgreSQL front.
type PostgresConfig struct {
	Listen         string            `yaml:"listen"`
	TLS            TLSFiles          `yaml:"tls"`
	Replica        PostgresBackend   `yaml:"replica"`
	Hubs           []PostgresBackend `yaml:"hubs"`
	HubTLS         PostgresHubTLS    `yaml:"hub_tls"`
	Auth           PostgresAuth      `yaml:"auth"`
	Transactions   string            `yaml:"transactions"` // lazy or hub
	HubFunctions   []string          `yaml:"hub_functions"`
	MaxConnections int               `yaml:"max_connections"`
	MaxMessageSize ByteSize          `yaml:"max_message_size"`
	StartupTimeout time.Duration     `yaml:"startup_timeout"`
	// WriteTimeout ends a session whose client has taken nothing the proxy
	// wrote to it for this long (it stopped reading a large result),
	// releasing its backend connections.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	HubPoolSize  int           `yaml:"hub_pool_size"`
	// HubPoolIdleTimeout closes a pooled hub connection unused this long;
	// HubPoolMaxAge retires one this long after its login.
	HubPoolIdleTimeout time.Duration `yaml:"hub_pool_idle_timeout"`
	HubPoolMaxAge      time.Duration `yaml:"hub_pool_max_age"`
}

// PostgresBackend is one PostgreSQL server, as host:port.
type PostgresBackend struct {
	Address string `yaml:"address"`
}

// PostgresHubTLS is TLS from the proxy to the PostgreSQL hubs.
type PostgresHubTLS struct {
	// Mode is as libpq's sslmode: disable (no TLS), require (TLS, the
	// certificate not checked) or verify-full (TLS, the certificate checked
	// against CAFile and the hub's host name or ServerName).
	Mode       string `yaml:"mode"`
	CAFile     string `yaml:"ca_file"`
	ServerName string `yaml:"server_name"`
}

// PostgresAuth is the role the proxy uses for its auth query and probes.
type PostgresAuth struct {
	User         string `yaml:"user"`
	PasswordFile string `yaml:"password_file"`
	Query        string `yaml:"query"`
}

// LDAPConfig is the LDAP front.
type LDAPConfig struct {
	Listen         string        `yaml:"listen"`
	LDAPSListen    string        `yaml:"ldaps_listen"`
	TLS            TLSFiles      `yaml:"tls"`
	BaseDN         string        `yaml:"base_dn"`
	Replica        LDAPBackend   `yaml:"replica"`
	Hubs           []LDAPBackend `yaml:"hubs"`
	HubTLS         LDAPHubTLS    `yaml:"hub_tls"`
	Monitor        LDAPIdentity  `yaml:"monitor"`
	ProxyAuth      LDAPIdentity  `yaml:"proxy_auth"`
	MaxPDUSize     ByteSize      `yaml:"max_pdu_size"`
	MaxOutstanding int           `yaml:"max_outstanding"`
	IdleTimeout    time.Duration `yaml:"idle_timeout"`
	// WriteTimeout ends a session whose client has not taken a response
	// for this long, releasing its backend connections.
	WriteTimeout   time.Duration `yaml:"write_timeout"`
	MaxConnections int           `yaml:"max_connections"`
	// Transactions is relay (RFC 5805 transactions go to the hub) or
	// refuse (Start Transaction gets unwillingToPerform).
	Transactions string `yaml:"transactions"`
}

// LDAPBackend is one LDAP server, as an ldap:// or ldaps:// URL.
type LDAPBackend struct {
	URL string `yaml:"url"`
}

// LDAPHubTLS is TLS from the proxy to the LDAP hubs.
type LDAPHubTLS struct {
	StartTLS   bool   `yaml:"start_tls"`
	CAFile     string `yaml:"ca_file"`
	ServerName string `yaml:"server_name"`
}

// LDAPIdentity is a DN and the file holding its password.
type LDAPIdentity struct {
	BindDN       string `yaml:"bind_dn"`
	PasswordFile string `yaml:"password_file"`
}

// Configured reports whether a DN is set.
func (i LDAPIdentity) Configured() bool { return i.BindDN != "" }

// ByteSize is a size in bytes, written in YAML as a plain number or with a
// unit: B, KiB, MiB, GiB (or KB, MB, GB, also powers of 1024).
type ByteSize int64

// UnmarshalYAML parses "64MiB", "512KiB" or "1048576".
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// ParseByteSize parses a size with an optional binary unit.
func ParseByteSize(s string) (ByteSize, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q: want a whole number of bytes, optionally with KiB, MiB or GiB", s)
	}
	return ByteSize(n * mult), nil
}

func (b ByteSize) String() string {
	switch {
	case b >= 1<<30 && b%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", b>>30)
	case b >= 1<<20 && b%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", b>>20)
	case b >= 1<<10 && b%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", b>>10)
	}
	return fmt.Sprintf("%dB", int64(b))
}

// DefaultAuthQuery reads a role's secret through the SECURITY DEFINER
// function a site installs on the hub (PgBouncer's auth_query pattern).
const DefaultAuthQuery = "SELECT usename, passwd FROM spokeproxy.get_auth($1)"

// applyDefaults fills what the file left empty. A zero number or duration
// means "the default", as an absent key does.
func (c *Config) applyDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	defDur := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(i *int, v int) {
		if *i == 0 {
			*i = v
		}
	}
	defSize := func(b *ByteSize, v ByteSize) {
		if *b == 0 {
			*b = v
		}
	}
	def(&c.Log.Level, "info")
	def(&c.Log.Format, "text")
	def(&c.Admin.Listen, "127.0.0.1:9187")
	defDur(&c.Link.ProbeInterval, 250*time.Millisecond)
	defDur(&c.Link.ProbeTimeout, 500*time.Millisecond)
	defInt(&c.Link.DownAfter, 2)
	defInt(&c.Link.UpAfter, 2)
	defDur(&c.Link.FlapWindow, 10*time.Second)
	defDur(&c.Link.TCPKeepalive, 5*time.Second)
	defDur(&c.Link.TCPUserTimeout, 3*time.Second)
	def(&c.Consistency.Mode, ConsistencySession)
	defDur(&c.Consistency.WaitTimeout, 2*time.Second)
	def(&c.Consistency.OnTimeout, "hub")
	defDur(&c.Replica.MaxLag, 30*time.Second)
	def(&c.Replica.WhenUnavailable, "hub")
	if p := c.Postgres; p != nil {
		def(&p.Listen, "127.0.0.1:6432")
		def(&p.HubTLS.Mode, "disable")
		def(&p.Auth.User, "spokeproxy_auth")
		def(&p.Auth.Query, DefaultAuthQuery)
		def(&p.Transactions, "lazy")
		defInt(&p.MaxConnections, 1000)
		defSize(&p.MaxMessageSize, 64<<20)
		defDur(&p.StartupTimeout, 10*time.Second)
		defDur(&p.WriteTimeout, 30*time.Second)
		defInt(&p.HubPoolSize, 4)
		defDur(&p.HubPoolIdleTimeout, 10*time.Minute)
		defDur(&p.HubPoolMaxAge, time.Hour)
	}
	if l := c.LDAP; l != nil {
		def(&l.Listen, "127.0.0.1:3389")
		defSize(&l.MaxPDUSize, 4<<20)
		defInt(&l.MaxOutstanding, 64)
		defDur(&l.IdleTimeout, 15*time.Minute)
		defDur(&l.WriteTimeout, 30*time.Second)
		defInt(&l.MaxConnections, 1000)
		def(&l.Transactions, "relay")
	}
}

// ConfigError lists every problem found in a config file, each naming the
// key it is about.
type ConfigError struct {
	File     string
	Problems []string
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problem(s):", e.File, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p)
	}
	return b.String()
}

// LoadConfig reads, strictly decodes, defaults and validates the file at path.
// Any problem gives a *ConfigError listing all of them.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig is LoadConfig on bytes already read; name is used in messages.
func ParseConfig(name string, data []byte) (*Config, error) {
	cerr := &ConfigError{File: name}
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			cerr.Problems = append(cerr.Problems, "the file is empty: at least site and one of postgres or ldap are required")
			return nil, cerr
		}
		cerr.Problems = append(cerr.Problems, "not valid YAML: "+err.Error())
		return nil, cerr
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	checkKeys(doc, reflect.TypeOf(Config{}), "", &cerr.Problems)

	var c Config
	if err := doc.Decode(&c); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			cerr.Problems = append(cerr.Problems, te.Errors...)
		} else {
			cerr.Problems = append(cerr.Problems, err.Error())
		}
	}
	if len(cerr.Problems) > 0 {
		return nil, cerr
	}
	c.resolvePaths(filepath.Dir(name))
	c.applyDefaults()
	cerr.Problems = c.validate()
	if len(cerr.Problems) > 0 {
		return nil, cerr
	}
	return &c, nil
}

// checkKeys walks a mapping node against the struct type t and records every
// key that t does not have, with its full path and line, so a typo anywhere
// in the file is reported together with all the others.
func checkKeys(n *yaml.Node, t reflect.Type, path string, problems *[]string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name != "" && name != "-" {
				fields[name] = f.Type
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			ft, ok := fields[key.Value]
			if !ok {
				msg := fmt.Sprintf("%s (line %d): unknown key", joinPath(path, key.Value), key.Line)
				if s := closest(key.Value, fields); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				*problems = append(*problems, msg)
				continue
			}
			checkKeys(val, ft, joinPath(path, key.Value), problems)
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, item := range n.Content {
			checkKeys(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i), problems)
		}
	}
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// closest suggests the known key within edit distance 2 of a typo.
func closest(key string, known map[string]reflect.Type) string {
	names := make([]string, 0, len(known))
	for k := range known {
		names = append(names, k)
	}
	sort.Strings(names)
	best, bestD := "", 3
	for _, k := range names {
		if d := editDistance(key, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// resolvePaths makes every file path relative to dir, the config file's
// directory, so a site's config and its secrets can move together.
func (c *Config) resolvePaths(dir string) {
	if d, err := filepath.Abs(dir); err == nil {
		dir = d
	}
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.Admin.TokenFile)
	if pg := c.Postgres; pg != nil {
		abs(&pg.TLS.CertFile)
		abs(&pg.TLS.KeyFile)
		abs(&pg.HubTLS.CAFile)
		abs(&pg.Auth.PasswordFile)
	}
	if l := c.LDAP; l != nil {
		abs(&l.TLS.CertFile)
		abs(&l.TLS.KeyFile)
		abs(&l.HubTLS.CAFile)
		abs(&l.Monitor.PasswordFile)
		abs(&l.ProxyAuth.PasswordFile)
	}
}

// validate returns every problem of a defaulted config, each naming its key.
func (c *Config) validate() []string {
	var p []string
	bad := func(key, format string, args ...any) {
		p = append(p, key+": "+fmt.Sprintf(format, args...))
	}
	oneOf := func(key, v string, allowed ...string) {
		for _, a := range allowed {
			if v == a {
				return
			}
		}
		bad(key, "%q is not one of %s", v, strings.Join(allowed, ", "))
	}
	hostPort := func(key, v string, required bool) {
		if v == "" {
			if required {
				bad(key, "required")
			}
			return
		}
		if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
			bad(key, "%q is not host:port", v)
		}
	}
	positive := func(key string, v int) {
		if v <= 0 {
			bad(key, "must be positive, got %d", v)
		}
	}
	positiveDur := func(key string, d time.Duration) {
		if d <= 0 {
			bad(key, "must be a positive duration, got %s", d)
		}
	}
	fileReadable := func(key, path string, required bool) {
		if path == "" {
			if required {
				bad(key, "required")
			}
			return
		}
		if _, err := os.Stat(path); err != nil {
			bad(key, "%v", err)
		}
	}
	tlsPair := func(key string, t TLSFiles) {
		if (t.CertFile == "") != (t.KeyFile == "") {
			bad(key, "cert_file and key_file go together")
		}
		fileReadable(key+".cert_file", t.CertFile, false)
		fileReadable(key+".key_file", t.KeyFile, false)
	}

	if c.Site == "" {
		bad("site", "required")
	}
	oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	oneOf("log.format", c.Log.Format, "text", "json")
	hostPort("admin.listen", c.Admin.Listen, true)
	fileReadable("admin.token_file", c.Admin.TokenFile, false)

	positiveDur("link.probe_interval", c.Link.ProbeInterval)
	positiveDur("link.probe_timeout", c.Link.ProbeTimeout)
	positive("link.down_after", c.Link.DownAfter)
	positive("link.up_after", c.Link.UpAfter)
	positiveDur("link.tcp_keepalive", c.Link.TCPKeepalive)
	positiveDur("link.tcp_user_timeout", c.Link.TCPUserTimeout)
	if c.Link.ProbeTimeout > 0 && c.Link.ProbeInterval > 0 && c.Link.ProbeTimeout > 4*c.Link.ProbeInterval {
		bad("link.probe_timeout", "%s is more than four probe intervals (%s): a blackholed link would be noticed late", c.Link.ProbeTimeout, c.Link.ProbeInterval)
	}

	oneOf("consistency.mode", c.Consistency.Mode, ConsistencySession, ConsistencySite, ConsistencyNone)
	positiveDur("consistency.wait_timeout", c.Consistency.WaitTimeout)
	oneOf("consistency.on_timeout", c.Consistency.OnTimeout, "hub", "error")
	positiveDur("replica.max_lag", c.Replica.MaxLag)
	oneOf("replica.when_unavailable", c.Replica.WhenUnavailable, "hub", "refuse")

	if c.Postgres == nil && c.LDAP == nil {
		bad("postgres", "neither postgres nor ldap is configured: nothing to serve")
	}
	if pg := c.Postgres; pg != nil {
		hostPort("postgres.listen", pg.Listen, true)
		tlsPair("postgres.tls", pg.TLS)
		hostPort("postgres.replica.address", pg.Replica.Address, true)
		if len(pg.Hubs) == 0 {
			bad("postgres.hubs", "at least one hub is required")
		}
		seen := map[string]bool{}
		for i, h := range pg.Hubs {
			key := fmt.Sprintf("postgres.hubs[%d].address", i)
			hostPort(key, h.Address, true)
			if seen[h.Address] {
				bad(key, "%q is listed twice", h.Address)
			}
			seen[h.Address] = true
		}
		oneOf("postgres.hub_tls.mode", pg.HubTLS.Mode, "disable", "require", "verify-full")
		if pg.HubTLS.Mode == "verify-full" && pg.HubTLS.CAFile == "" {
			bad("postgres.hub_tls.ca_file", "required with mode verify-full")
		}

		fileReadable("postgres.hub_tls.ca_file", pg.HubTLS.CAFile, false)
		if pg.Auth.User == "" {
			bad("postgres.auth.user", "required")
		}
		fileReadable("postgres.auth.password_file", pg.Auth.PasswordFile, true)
		if !strings.Contains(pg.Auth.Query, "$1") {
			bad("postgres.auth.query", "must take the role name as $1")
		}
		oneOf("postgres.transactions", pg.Transactions, "lazy", "hub")
		positive("postgres.max_connections", pg.MaxConnections)
		if pg.MaxMessageSize < 1<<10 {
			bad("postgres.max_message_size", "%s is too small (at least 1KiB)", pg.MaxMessageSize)
		}
		positiveDur("postgres.startup_timeout", pg.StartupTimeout)
		positiveDur("postgres.write_timeout", pg.WriteTimeout)
		positiveDur("postgres.hub_pool_idle_timeout", pg.HubPoolIdleTimeout)
		positiveDur("postgres.hub_pool_max_age", pg.HubPoolMaxAge)
	}
	if l := c.LDAP; l != nil {
		hostPort("ldap.listen", l.Listen, true)
		hostPort("ldap.ldaps_listen", l.LDAPSListen, false)
		tlsPair("ldap.tls", l.TLS)
		if l.LDAPSListen != "" && !l.TLS.Enabled() {
			bad("ldap.ldaps_listen", "needs ldap.tls.cert_file and key_file")
		}
		if l.BaseDN == "" {
			bad("ldap.base_dn", "required")
		}
		ldapURL := func(key, v string) {
			if v == "" {
				bad(key, "required")
				return
			}
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "ldap" && u.Scheme != "ldaps") || u.Host == "" {
				bad(key, "%q is not an ldap:// or ldaps:// URL", v)
			}
		}
		ldapURL("ldap.replica.url", l.Replica.URL)
		if len(l.Hubs) == 0 {
			bad("ldap.hubs", "at least one hub is required")
		}
		for i, h := range l.Hubs {
			ldapURL(fmt.Sprintf("ldap.hubs[%d].url", i), h.URL)
		}
		fileReadable("ldap.hub_tls.ca_file", l.HubTLS.CAFile, false)
		identity := func(key string, id LDAPIdentity) {
			if id.BindDN != "" {
				fileReadable(key+".password_file", id.PasswordFile, true)
			} else if id.PasswordFile != "" {
				bad(key+".bind_dn", "required when password_file is set")
			}
		}
		identity("ldap.monitor", l.Monitor)
		identity("ldap.proxy_auth", l.ProxyAuth)
		if l.MaxPDUSize < 1<<10 {
			bad("ldap.max_pdu_size", "%s is too small (at least 1KiB)", l.MaxPDUSize)
		}
		positive("ldap.max_outstanding", l.MaxOutstanding)
		positiveDur("ldap.idle_timeout", l.IdleTimeout)
		positiveDur("ldap.write_timeout", l.WriteTimeout)
		positive("ldap.max_connections", l.MaxConnections)
		oneOf("ldap.transactions", l.Transactions, "relay", "refuse")
	}
	return p
}

// ReadSecretFile reads a password or token file, trimming one trailing
// newline. The content is never logged.
func ReadSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimSuffix(string(b), "\n")
	s = strings.TrimSuffix(s, "\r")
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}
