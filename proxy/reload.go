package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"

	"github.com/spokeproxy/spokeproxy/ldapfront"
	"github.com/spokeproxy/spokeproxy/pgfront"
	"github.com/spokeproxy/spokeproxy/routing"
)

// ReloadResult says what a reload did with each changed key.
type ReloadResult struct {
	// Applied lists the changed keys now in effect (see liveKeys; the
	// admin token is re-read from its file on every reload, changed path
	// or not). A file key whose path is the same but whose content changed
	// (a rotated certificate or hub CA) is listed as "KEY (content)".
	Applied []string
	// NeedRestart lists the changed keys the running site keeps its old
	// values for: listeners, the replica endpoints, the replicated suffix,
	// auth and monitor identities and their secrets, log.format, site.
	// They take effect at the next restart; a rotated secret file is
	// listed as "KEY (content)".
	NeedRestart []string
}

// liveKeys are the keys a reload applies without dropping a client. A
// front's listener certificate and key are live too, while that front
// keeps TLS on (see certsToRotate). Every other key needs a restart:
// listeners are bound once; the replica endpoints and the base DN are what
// positions and the auth lookup are measured against; identities and
// secrets are held by connections that outlive a reload; log.format is the
// handler's. docs/operations.md gives the same list.
var liveKeys = map[string]bool{
	"log.level":        true,
	"admin.token_file": true,

	"link.probe_interval":      true,
	"link.probe_timeout":       true,
	"link.down_after":          true,
	"link.up_after":            true,
	"link.flap_window":         true,
	"link.tcp_keepalive":       true,
	"link.tcp_user_timeout":    true,
	"consistency.mode":         true,
	"consistency.wait_timeout": true,
	"consistency.on_timeout":   true,
	"replica.max_lag":          true,
	"replica.when_unavailable": true,

	"postgres.hubs":                  true,
	"postgres.hub_tls.mode":          true,
	"postgres.hub_tls.ca_file":       true,
	"postgres.hub_tls.server_name":   true,
	"postgres.transactions":          true,
	"postgres.hub_functions":         true,
	"postgres.max_connections":       true,
	"postgres.max_message_size":      true,
	"postgres.startup_timeout":       true,
	"postgres.write_timeout":         true,
	"postgres.hub_pool_size":         true,
	"postgres.hub_pool_idle_timeout": true,
	"postgres.hub_pool_max_age":      true,

	"ldap.hubs":                true,
	"ldap.hub_tls.start_tls":   true,
	"ldap.hub_tls.ca_file":     true,
	"ldap.hub_tls.server_name": true,
	"ldap.max_pdu_size":        true,
	"ldap.max_outstanding":     true,
	"ldap.idle_timeout":        true,
	"ldap.write_timeout":       true,
	"ldap.max_connections":     true,
	"ldap.transactions":        true,
}

// partChange is one protocol part's settings rebuilt from a reloaded
// config, ready to hand to its site and front.
type partChange struct {
	p      *protocolPart
	hubTLS *tls.Config
	rc     routing.Config
	pgc    pgfront.Config
	ldc    ldapfront.Config
}

// Reload applies what of cfg (already loaded and validated) can change
// without dropping clients, and logs one line saying what was applied and
// what needs a restart. It is all or nothing: everything that can fail (a
// token file or certificate that does not read, a hub CA without a
// certificate, settings the routing core or a front refuses) is done
// before anything changes, and a failure leaves the running configuration
// as it was. New hub TLS settings are tried against every hub candidate
// seen up, and refused if one of them rejects what it accepts now.
// Reconfiguring a site may take up to one probe timeout (two with new hub
// TLS settings): a new hub candidate is probed once before it joins.
func (s *Server) Reload(cfg *Config) (ReloadResult, error) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	running := s.running.Load()
	now := fileDigests(cfg)
	rotate, err := s.certsToRotate(cfg, now)
	if err != nil {
		return s.reject(err)
	}
	var res ReloadResult
	var apply []string           // keys whose new values are taken
	applied := map[string]bool{} // keys taken, by path or content
	for _, key := range diffConfig(running, cfg) {
		if liveKeys[key] || rotate.covers(key) {
			res.Applied = append(res.Applied, key)
			apply = append(apply, key)
			applied[key] = true
		} else {
			res.NeedRestart = append(res.NeedRestart, key)
		}
	}
	for _, key := range sortedKeys(now) {
		was, ok := s.files[key]
		if !ok || was.path != now[key].path || was.sum == now[key].sum || key == "admin.token_file" {
			continue
		}
		if liveKeys[key] || rotate.covers(key) {
			res.Applied = append(res.Applied, key+" (content)")
			applied[key] = true
		} else {
			res.NeedRestart = append(res.NeedRestart, key+" (content)")
		}
	}
	next, err := withKeys(running, cfg, apply)
	if err != nil {
		return s.reject(err)
	}
	token := ""
	if next.Admin.TokenFile != "" {
		if token, err = ReadSecretFile(next.Admin.TokenFile); err != nil {
			return s.reject(fmt.Errorf("admin.token_file: %w", err))
		}
	}
	changes, err := s.rebuildParts(next, applied)
	if err != nil {
		return s.reject(err)
	}

	// Nothing below fails: apply.
	s.token.Store(&token)
	if token == "" && !s.adminLoopback.Load() {
		s.logger.Warn("the admin API listens beyond loopback and the reload left it without admin.token_file: anyone who reaches it can start a drill", "admin", s.Addrs().Admin)
	}
	for section, cert := range rotate {
		s.certs[section].cert.Store(cert)
		for _, k := range []string{section + ".cert_file", section + ".key_file"} {
			applied[k] = true
		}
	}
	if s.level != nil {
		s.level.Set(parseLevel(next.Log.Level))
	}
	for _, ch := range changes {
		if err := ch.p.site.Reconfigure(ch.rc); err != nil {
			// CheckReconfigure passed these settings a moment ago.
			s.logger.Error("routing settings not applied", "protocol", ch.p.name, "err", err)
		}
		if ch.p.pg != nil {
			ch.p.pg.Reconfigure(ch.pgc)
		} else if err := ch.p.ldap.Reconfigure(ch.ldc); err != nil {
			s.logger.Error("LDAP front settings not applied", "err", err) // validated above
		}
		ch.p.hubTLS = ch.hubTLS
	}
	for key := range applied {
		if d, ok := now[key]; ok {
			s.files[key] = d
		} else if strings.HasSuffix(key, "_file") {
			delete(s.files, key)
		}
	}
	s.running.Store(next)
	s.ops.Reloaded(true)
	attrs := []any{"applied", strings.Join(res.Applied, ",")}
	if len(res.NeedRestart) > 0 {
		attrs = append(attrs, "need_restart", strings.Join(res.NeedRestart, ","))
		s.logger.Warn("config reloaded; some changes need a restart and are not in effect", attrs...)
	} else {
		s.logger.Info("config reloaded", attrs...)
	}
	if len(changes) > 0 && slices.ContainsFunc(res.Applied, func(k string) bool { return strings.Contains(k, "hub") }) {
		for _, w := range wanWarnings(next) {
			s.logger.Warn(w)
		}
	}
	return res, nil
}

// reject records a reload that changed nothing.
func (s *Server) reject(err error) (ReloadResult, error) {
	s.ReloadFailed(err)
	return ReloadResult{}, err
}

// rebuildParts builds every part's routing and front settings from next
// and has the routing core and the front check them, changing nothing. A
// part's hub TLS is rebuilt when one of its hub_tls keys was applied (by
// path or content); otherwise the running one is kept, so the probes'
// monitoring connections are not redialled for nothing. Nothing is
// returned when no applied key concerns the parts.
func (s *Server) rebuildParts(next *Config, applied map[string]bool) ([]partChange, error) {
	touched := func(prefix string) bool {
		for k := range applied {
			if strings.HasPrefix(k, prefix) && liveKeys[k] && k != "log.level" && k != "admin.token_file" {
				return true
			}
		}
		return false
	}
	if !touched("") {
		return nil, nil
	}
	var changes []partChange
	for _, p := range s.parts {
		ch := partChange{p: p, hubTLS: p.hubTLS}
		if touched(p.section() + ".hub_tls.") {
			var err error
			if ch.hubTLS, err = hubTLSFor(p.name, next); err != nil {
				return nil, err
			}
		}
		view := *p
		view.hubTLS = ch.hubTLS
		if p.pg != nil {
			ch.rc, ch.pgc = s.pgSettings(next, &view)
		} else {
			ch.rc, ch.ldc = s.ldapSettings(next, &view)
			if err := ch.ldc.Validate(); err != nil {
				return nil, err
			}
		}
		if err := p.site.CheckReconfigure(ch.rc); err != nil {
			return nil, fmt.Errorf("%s: %w", p.section(), err)
		}
		if ch.hubTLS != p.hubTLS {
			if err := p.site.CheckHubTLS(context.Background(), ch.rc); err != nil {
				return nil, fmt.Errorf("%s.hub_tls: %w", p.section(), err)
			}
		}
		changes = append(changes, ch)
	}
	return changes, nil
}

// certRotation maps a TLS section ("postgres.tls") to its new certificate.
type certRotation map[string]*tls.Certificate

// covers reports whether key is the certificate or key file of a rotated
// section.
func (r certRotation) covers(key string) bool {
	for _, suffix := range []string{".cert_file", ".key_file"} {
		if section, ok := strings.CutSuffix(key, suffix); ok {
			return r[section] != nil
		}
	}
	return false
}

// certsToRotate loads the new certificate of every front listener whose TLS
// files changed (path or content) and stays on TLS. A certificate that does
// not load rejects the reload, so a bad rotation never replaces a good one.
// Turning a front's TLS on or off changes its listeners and needs a restart.
func (s *Server) certsToRotate(cfg *Config, now map[string]fileDigest) (certRotation, error) {
	sections := map[string]TLSFiles{}
	if cfg.Postgres != nil {
		sections["postgres.tls"] = cfg.Postgres.TLS
	}
	if cfg.LDAP != nil {
		sections["ldap.tls"] = cfg.LDAP.TLS
	}
	out := certRotation{}
	for section, files := range sections {
		h := s.certs[section]
		if h == nil || !files.Enabled() {
			continue
		}
		changed := false
		for _, k := range []string{section + ".cert_file", section + ".key_file"} {
			if s.files[k] != now[k] {
				changed = true
			}
		}
		if !changed {
			continue
		}
		cert, err := h.parse(files)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", section, err)
		}
		out[section] = cert
	}
	return out, nil
}

// ReloadFailed records a reload whose config was rejected (it did not load
// or validate); the running configuration stays.
func (s *Server) ReloadFailed(err error) {
	s.ops.Reloaded(false)
	s.logger.Error("config reload rejected; the running configuration stays", "err", err)
}

// diffConfig lists the YAML key paths whose values differ between a and b,
// at the depth of leaf values (a list that differs is one key).
func diffConfig(a, b *Config) []string {
	var out []string
	diffValue(reflect.ValueOf(*a), reflect.ValueOf(*b), "", &out)
	return out
}

func diffValue(a, b reflect.Value, path string, out *[]string) {
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				*out = append(*out, path)
			}
			return
		}
		diffValue(a.Elem(), b.Elem(), path, out)
	case reflect.Struct:
		t := a.Type()
		for i := 0; i < t.NumField(); i++ {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			diffValue(a.Field(i), b.Field(i), joinPath(path, name), out)
		}
	default:
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, path)
		}
	}
}

// fileDigest is what a *_file key pointed at when it was read.
type fileDigest struct {
	path string
	sum  [sha256.Size]byte
}

// fileDigests fingerprints every file a config names (keys ending in
// _file), so a reload can tell a rotated certificate or password that the
// running site still holds in memory. Unreadable files are left out: the
// config's own validation reports them.
func fileDigests(c *Config) map[string]fileDigest {
	out := map[string]fileDigest{}
	var walk func(v reflect.Value, path string)
	walk = func(v reflect.Value, path string) {
		switch v.Kind() {
		case reflect.Pointer:
			if !v.IsNil() {
				walk(v.Elem(), path)
			}
		case reflect.Struct:
			t := v.Type()
			for i := 0; i < t.NumField(); i++ {
				name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
				if name == "" || name == "-" {
					continue
				}
				walk(v.Field(i), joinPath(path, name))
			}
		case reflect.String:
			if !strings.HasSuffix(path, "_file") || v.String() == "" {
				return
			}
			if b, err := os.ReadFile(v.String()); err == nil {
				out[path] = fileDigest{path: v.String(), sum: sha256.Sum256(b)}
			}
		}
	}
	walk(reflect.ValueOf(c), "")
	return out
}

func sortedKeys(m map[string]fileDigest) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// withKeys returns a deep copy of base with the values of keys (YAML key
// paths as diffConfig names them, both sides present) taken from src.
func withKeys(base, src *Config, keys []string) (*Config, error) {
	out := deepCopy(reflect.ValueOf(base)).Interface().(*Config)
	for _, key := range keys {
		dst, from := reflect.ValueOf(out).Elem(), reflect.ValueOf(src).Elem()
		for name := range strings.SplitSeq(key, ".") {
			for dst.Kind() == reflect.Pointer {
				if dst.IsNil() || from.IsNil() {
					return nil, fmt.Errorf("reload: %s: its section is not in both configs", key)
				}
				dst, from = dst.Elem(), from.Elem()
			}
			i := yamlField(dst.Type(), name)
			if i < 0 {
				return nil, fmt.Errorf("reload: %s: no such key", key)
			}
			dst, from = dst.Field(i), from.Field(i)
		}
		dst.Set(deepCopy(from))
	}
	return out, nil
}

// yamlField is the index of t's field whose YAML name is name, or -1.
func yamlField(t reflect.Type, name string) int {
	for i := 0; i < t.NumField(); i++ {
		if n, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); n == name {
			return i
		}
	}
	return -1
}

// deepCopy copies a config value: pointers, structs and slices are new,
// so that the copy shares nothing a later change could reach through.
func deepCopy(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return reflect.Zero(v.Type())
		}
		p := reflect.New(v.Type().Elem())
		p.Elem().Set(deepCopy(v.Elem()))
		return p
	case reflect.Struct:
		out := reflect.New(v.Type()).Elem()
		for i := 0; i < v.NumField(); i++ {
			out.Field(i).Set(deepCopy(v.Field(i)))
		}
		return out
	case reflect.Slice:
		if v.IsNil() {
			return reflect.Zero(v.Type())
		}
		out := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := 0; i < v.Len(); i++ {
			out.Index(i).Set(deepCopy(v.Index(i)))
		}
		return out
	}
	return v
}
