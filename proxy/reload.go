package proxy

import (
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
)

// ReloadResult says what a reload did with each changed key.
type ReloadResult struct {
	// Applied lists the changed keys now in effect (log.level,
	// admin.token_file; the admin token is re-read from its file on every
	// reload, changed path or not).
	Applied []string
	// NeedRestart lists the changed keys the running site keeps its old
	// values for: listeners, backends, thresholds, timeouts, TLS files,
	// secrets read at start. They take effect at the next restart. A file
	// key whose path is the same but whose content changed (a rotated
	// certificate) is listed as "KEY (content)".
	NeedRestart []string
}

// liveKeys are the keys a reload applies without a restart. A front's
// TLS certificate and key are live too, while that front keeps TLS on
// (see rotateCerts).
var liveKeys = map[string]bool{
	"log.level":        true,
	"admin.token_file": true,
}

// Reload applies what of cfg (already loaded and validated) can change
// without dropping clients, and logs one line saying what was applied and
// what needs a restart. A token file that cannot be read rejects the whole
// reload: the running configuration stays.
func (s *Server) Reload(cfg *Config) (ReloadResult, error) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	var res ReloadResult
	rotate, err := s.certsToRotate(cfg)
	if err != nil {
		s.ReloadFailed(err)
		return ReloadResult{}, err
	}
	for _, key := range diffConfig(s.running, cfg) {
		if liveKeys[key] || rotate.covers(key) {
			res.Applied = append(res.Applied, key)
		} else {
			res.NeedRestart = append(res.NeedRestart, key)
		}
	}
	now := fileDigests(cfg)
	for _, key := range sortedKeys(now) {
		was, ok := s.files[key]
		if !ok || was.path != now[key].path || was.sum == now[key].sum || liveKeys[key] {
			continue
		}
		if rotate.covers(key) {
			res.Applied = append(res.Applied, key+" (content)")
		} else {
			res.NeedRestart = append(res.NeedRestart, key+" (content)")
		}
	}
	token := ""
	if cfg.Admin.TokenFile != "" {
		var err error
		if token, err = ReadSecretFile(cfg.Admin.TokenFile); err != nil {
			err = fmt.Errorf("admin.token_file: %w", err)
			s.ReloadFailed(err)
			return ReloadResult{}, err
		}
	}
	s.token.Store(&token)
	if token == "" && !s.adminLoopback.Load() {
		s.logger.Warn("the admin API listens beyond loopback and the reload left it without admin.token_file: anyone who reaches it can start a drill", "admin", s.Addrs().Admin)
	}
	for section, cert := range rotate {
		s.certs[section].cert.Store(cert)
		for _, k := range []string{section + ".cert_file", section + ".key_file"} {
			if d, ok := now[k]; ok {
				s.files[k] = d
			}
		}
	}
	if s.level != nil {
		s.level.Set(parseLevel(cfg.Log.Level))
	}
	running := *s.running
	running.Log.Level = cfg.Log.Level
	running.Admin.TokenFile = cfg.Admin.TokenFile
	if running.Postgres != nil && rotate["postgres.tls"] != nil {
		pg := *running.Postgres
		pg.TLS = cfg.Postgres.TLS
		running.Postgres = &pg
	}
	if running.LDAP != nil && rotate["ldap.tls"] != nil {
		l := *running.LDAP
		l.TLS = cfg.LDAP.TLS
		running.LDAP = &l
	}
	s.running = &running
	s.ops.Reloaded(true)
	attrs := []any{"applied", strings.Join(res.Applied, ",")}
	if len(res.NeedRestart) > 0 {
		attrs = append(attrs, "need_restart", strings.Join(res.NeedRestart, ","))
		s.logger.Warn("config reloaded; some changes need a restart and are not in effect", attrs...)
	} else {
		s.logger.Info("config reloaded", attrs...)
	}
	return res, nil
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
func (s *Server) certsToRotate(cfg *Config) (certRotation, error) {
	sections := map[string]TLSFiles{}
	if cfg.Postgres != nil {
		sections["postgres.tls"] = cfg.Postgres.TLS
	}
	if cfg.LDAP != nil {
		sections["ldap.tls"] = cfg.LDAP.TLS
	}
	now := fileDigests(cfg)
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
