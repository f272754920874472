package proxy

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const reloadBase = `
site: s
log: {level: info}
admin: {listen: "127.0.0.1:0"}
link: {probe_interval: 250ms}
postgres:
  listen: "127.0.0.1:0"
  replica: {address: "127.0.0.1:1"}
  hubs: [{address: "127.0.0.1:2"}]
  auth: {password_file: pw}
`

func parseIn(t *testing.T, dir, src string) *Config {
	t.Helper()
	cfg, err := ParseConfig(filepath.Join(dir, "c.yaml"), []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestDiffConfig(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pw"), []byte("x\n"), 0o600)
	a := parseIn(t, dir, reloadBase)
	if d := diffConfig(a, parseIn(t, dir, reloadBase)); len(d) != 0 {
		t.Errorf("the same file differs: %v", d)
	}
	b := parseIn(t, dir, strings.NewReplacer(
		"level: info", "level: debug",
		"probe_interval: 250ms", "probe_interval: 200ms",
		`hubs: [{address: "127.0.0.1:2"}]`, `hubs: [{address: "127.0.0.1:2"}, {address: "127.0.0.1:5"}]`,
	).Replace(reloadBase)+"ldap:\n  base_dn: dc=x\n  replica: {url: \"ldap://127.0.0.1:3\"}\n  hubs: [{url: \"ldap://127.0.0.1:4\"}]\n")
	want := []string{"log.level", "link.probe_interval", "postgres.hubs", "ldap"}
	if d := diffConfig(a, b); !reflect.DeepEqual(d, want) {
		t.Errorf("diffConfig = %v, want %v", d, want)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestReloadAppliesLiveKeysAndNamesTheRest(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pw"), []byte("x\n"), 0o600)
	var logs syncBuffer
	logger, level := NewLogger(&logs, LogConfig{Level: "info"})
	reg := prometheus.NewRegistry()
	srv, err := New(parseIn(t, dir, reloadBase), Options{Logger: logger, LogLevel: level, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	drill := func(token string) int {
		req, _ := http.NewRequest("POST", "http://"+srv.Addrs().Admin+"/drill", strings.NewReader(`{"duration":"1s"}`))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := drill(""); code != 200 {
		t.Fatalf("drill without a configured token = %d", code)
	}

	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("t1\n"), 0o600)
	next := parseIn(t, dir, strings.NewReplacer("level: info", "level: debug", "probe_interval: 250ms", "probe_interval: 200ms",
		`admin: {listen: "127.0.0.1:0"}`, `admin: {listen: "127.0.0.1:0", token_file: token}`,
		`replica: {address: "127.0.0.1:1"}`, `replica: {address: "127.0.0.1:3"}`).Replace(reloadBase))
	res, err := srv.Reload(next)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(res.Applied, []string{"log.level", "admin.token_file", "link.probe_interval"}) || !reflect.DeepEqual(res.NeedRestart, []string{"postgres.replica.address"}) {
		t.Errorf("Reload = %+v", res)
	}
	if level.Level() != slog.LevelDebug {
		t.Errorf("log level after the reload = %s, want DEBUG", level.Level())
	}
	// The running configuration took the live keys and kept the rest.
	if run := srv.running.Load(); run.Link.ProbeInterval != 200*time.Millisecond || run.Postgres.Replica.Address != "127.0.0.1:1" {
		t.Errorf("running config after the reload: probe_interval %s, replica %s; want 200ms and the old replica",
			run.Link.ProbeInterval, run.Postgres.Replica.Address)
	}
	if d := diffConfig(srv.running.Load(), next); !reflect.DeepEqual(d, []string{"postgres.replica.address"}) {
		t.Errorf("running config differs from the file in %v, want only what needs a restart", d)
	}
	if code := drill(""); code != 401 {
		t.Errorf("drill without the reloaded token = %d, want 401", code)
	}
	if code := drill("t1"); code != 200 {
		t.Errorf("drill with the reloaded token = %d, want 200", code)
	}
	if !strings.Contains(logs.String(), "need_restart=postgres.replica.address") {
		t.Errorf("the reload log does not name what needs a restart:\n%s", logs.String())
	}

	// A rotated password file (same path, new content) is named: the site
	// holds the old one in memory until a restart.
	os.WriteFile(filepath.Join(dir, "pw"), []byte("y\n"), 0o600)
	res, err = srv.Reload(next)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(res.NeedRestart, "postgres.auth.password_file (content)") {
		t.Errorf("a rotated password file is not named as needing a restart: %+v", res)
	}

	// Same path, new content: rotated on every reload.
	os.WriteFile(tokenFile, []byte("t2\n"), 0o600)
	if _, err := srv.Reload(next); err != nil {
		t.Fatal(err)
	}
	if code := drill("t1"); code != 401 {
		t.Errorf("the old token still works after rotation: %d", code)
	}
	// The token file going missing rejects the reload and keeps t2.
	os.Remove(tokenFile)
	if _, err := srv.Reload(next); err == nil {
		t.Fatal("a reload with an unreadable token file succeeded")
	}
	if code := drill("t2"); code != 200 {
		t.Errorf("the running token stopped working after a rejected reload: %d", code)
	}
	if got := gaugeValue(t, reg, "spokeproxy_config_last_reload_successful"); got != 0 {
		t.Errorf("spokeproxy_config_last_reload_successful = %v after a rejected reload", got)
	}
}

// gaugeValue reads a single-series gauge from reg.
func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no single-series %s", name)
	return 0
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{"127.0.0.1:9187": true, "[::1]:9187": true, "0.0.0.0:9187": false, "192.0.2.7:9187": false} {
		a, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := isLoopback(a); got != want {
			t.Errorf("isLoopback(%s) = %v, want %v", addr, got, want)
		}
	}
}

// withKeys takes exactly the named keys and shares nothing with either
// config: the running one is read concurrently and must never change.
func TestWithKeysTakesOnlyTheKeysAndSharesNothing(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pw"), []byte("x\n"), 0o600)
	base := parseIn(t, dir, reloadBase)
	src := parseIn(t, dir, strings.NewReplacer(
		`hubs: [{address: "127.0.0.1:2"}]`, `hubs: [{address: "127.0.0.1:5"}, {address: "127.0.0.1:6"}]`,
		`replica: {address: "127.0.0.1:1"}`, `replica: {address: "127.0.0.1:3"}`,
		"probe_interval: 250ms", "probe_interval: 200ms").Replace(reloadBase))
	out, err := withKeys(base, src, []string{"postgres.hubs", "link.probe_interval"})
	if err != nil {
		t.Fatal(err)
	}
	if d := diffConfig(out, src); !reflect.DeepEqual(d, []string{"postgres.replica.address"}) {
		t.Errorf("withKeys result differs from src in %v, want only the key not taken", d)
	}
	if d := diffConfig(out, base); !reflect.DeepEqual(d, []string{"link.probe_interval", "postgres.hubs"}) {
		t.Errorf("withKeys result differs from base in %v, want the keys taken", d)
	}
	out.Postgres.Hubs[0].Address = "changed"
	out.Postgres.Listen = "changed"
	if base.Postgres.Listen == "changed" || src.Postgres.Hubs[0].Address == "changed" || base.Postgres.Hubs[0].Address == "changed" {
		t.Error("the result shares memory with its inputs")
	}
	if _, err := withKeys(base, src, []string{"postgres.no_such_key"}); err == nil {
		t.Error("an unknown key was taken")
	}
}
