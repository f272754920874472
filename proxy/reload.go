package proxy

import (
	"fmt"
	"reflect"
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
	// secrets read at start. They take effect at the next restart.
	NeedRestart []string
}

// liveKeys are the keys a reload applies without a restart.
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
	for _, key := range diffConfig(s.running, cfg) {
		if liveKeys[key] {
			res.Applied = append(res.Applied, key)
		} else {
			res.NeedRestart = append(res.NeedRestart, key)
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
	if s.level != nil {
		s.level.Set(parseLevel(cfg.Log.Level))
	}
	running := *s.running
	running.Log.Level = cfg.Log.Level
	running.Admin.TokenFile = cfg.Admin.TokenFile
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
