package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spokeproxy/spokeproxy/lab"
	"github.com/spokeproxy/spokeproxy/proxy"
)

// unstartedServer builds a site whose backends do not exist; drills need
// no running probes.
func unstartedServer(t *testing.T, withLDAP bool) *proxy.Server {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pw"), []byte("x\n"), 0o600)
	src := `
site: s
admin: {listen: "127.0.0.1:0"}
postgres:
  listen: "127.0.0.1:0"
  replica: {address: "127.0.0.1:1"}
  hubs: [{address: "127.0.0.1:2"}]
  auth: {password_file: pw}
`
	if withLDAP {
		src += `
ldap:
  listen: "127.0.0.1:0"
  base_dn: dc=example,dc=org
  replica: {url: "ldap://127.0.0.1:3"}
  hubs: [{url: "ldap://127.0.0.1:4"}]
`
	}
	cfg, err := proxy.ParseConfig(filepath.Join(dir, "c.yaml"), []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(cfg, proxy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

func TestStartDrillValidates(t *testing.T) {
	srv := unstartedServer(t, false)
	for _, bad := range []struct {
		protocol string
		d        time.Duration
		want     string
	}{
		{"pg", 0, "positive duration"},
		{"pg", -time.Minute, "positive duration"},
		{"pg", proxy.MaxDrill + time.Second, "longer than the maximum"},
		{"ldap", time.Minute, `"ldap" is not configured`},
		{"smtp", time.Minute, "want pg, ldap or both"},
	} {
		_, err := srv.StartDrill(bad.protocol, bad.d)
		if !proxy.IsDrillError(err) || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("StartDrill(%q, %s) = %v, want a DrillError mentioning %q", bad.protocol, bad.d, err, bad.want)
		}
	}
	states, err := srv.StartDrill("pg", time.Minute)
	if err != nil || len(states) != 1 || !states[0].Active || time.Until(states[0].Until) < 50*time.Second {
		t.Fatalf("StartDrill(pg, 1m) = %+v, %v", states, err)
	}
	states, err = srv.StopDrill("pg")
	if err != nil || states[0].Active {
		t.Fatalf("StopDrill(pg) = %+v, %v", states, err)
	}
}

func TestDrillEndsByItselfAndSaysSo(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pw"), []byte("x\n"), 0o600)
	cfg, err := proxy.ParseConfig(filepath.Join(dir, "c.yaml"), []byte(`
site: s
postgres:
  replica: {address: "127.0.0.1:1"}
  hubs: [{address: "127.0.0.1:2"}]
  auth: {password_file: pw}
`))
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedLog
	logger, _ := proxy.NewLogger(&logs, proxy.LogConfig{Level: "info"})
	srv, err := proxy.New(cfg, proxy.Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.StartDrill("pg", 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the drill's end in the log", func() bool {
		return strings.Contains(logs.String(), `msg="drill ended by itself: the hub is no longer forced down" site=s protocol=pg after=100ms`)
	})
	// A drill stopped by hand does not claim to have ended by itself.
	srv.StartDrill("pg", 100*time.Millisecond)
	srv.StopDrill("pg")
	time.Sleep(300 * time.Millisecond)
	if n := strings.Count(logs.String(), "drill ended by itself"); n != 1 {
		t.Errorf("%d 'ended by itself' lines, want 1:\n%s", n, logs.String())
	}
}

func TestStartDrillBothProtocols(t *testing.T) {
	srv := unstartedServer(t, true)
	states, err := srv.StartDrill("", time.Minute)
	if err != nil || len(states) != 2 || !states[0].Active || !states[1].Active {
		t.Fatalf("StartDrill(both) = %+v, %v", states, err)
	}
	states, _ = srv.StopDrill("ldap")
	for _, s := range states {
		if s.Active != (s.Protocol == "pg") {
			t.Errorf("after stopping ldap's drill: %+v", states)
		}
	}
}

// TestDrillAgainstTheLab starts a drill through the admin API of a site in
// front of the lab: writes are refused exactly as with a cut link (25006,
// 52), reads go on, metrics and /status say so, and the drill ends by
// itself. The live /metrics scrape must pass `promtool check metrics`.
func TestDrillAgainstTheLab(t *testing.T) {
	if testing.Short() {
		t.Skip("runs PostgreSQL and slapd")
	}
	promtool := mustPromtool(t)
	l := lab.ForTest(t, lab.Options{})
	path := filepath.Join(l.Dir(), "spokeproxy.yaml")
	if err := os.WriteFile(path, l.ProxyConfigYAML("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(l.Dir(), "admin.token")
	if err := os.WriteFile(tokenFile, []byte("drill-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := proxy.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Admin.TokenFile = tokenFile
	reg := prometheus.NewRegistry()
	var logs lockedLog
	// Debug level: the most the site ever logs, all of which must stay free
	// of credentials (checked at the end).
	logger, _ := proxy.NewLogger(&logs, proxy.LogConfig{Level: "debug"})
	srv, err := proxy.New(cfg, proxy.Options{Registry: reg, Version: "test", Logger: logger, RefusalLogInterval: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		srv.Shutdown(sctx)
	})
	addrs := srv.Addrs()
	admin := "http://" + addrs.Admin
	hubsUp := func() bool {
		return gauge(t, reg, "spokeproxy_hub_up", "pg") == 1 && gauge(t, reg, "spokeproxy_hub_up", "ldap") == 1
	}
	waitFor(t, "both hubs up", hubsUp)

	pg, err := pgx.Connect(ctx, "postgres://app:apppass@"+addrs.Postgres+"/appdb?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close(context.Background())
	ld, err := ldap.DialURL("ldap://" + addrs.LDAP)
	if err != nil {
		t.Fatal(err)
	}
	defer ld.Close()
	if err := ld.Bind(lab.UserDN, lab.UserPassword); err != nil {
		t.Fatal(err)
	}

	post := func(token, body string) int {
		req, _ := http.NewRequest("POST", admin+"/drill", strings.NewReader(body))
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
	if code := post("", `{"protocol":"both","duration":"3s"}`); code != 401 {
		t.Fatalf("drill without the token = %d, want 401", code)
	}
	if !hubsUp() {
		t.Fatal("an unauthorized drill request changed the hub state")
	}
	refusedPG := counter(t, reg, "spokeproxy_writes_refused_total", "pg")
	refusedLDAP := counter(t, reg, "spokeproxy_writes_refused_total", "ldap")
	started := time.Now()
	if code := post("drill-token", `{"protocol":"both","duration":"3s"}`); code != 200 {
		t.Fatalf("POST /drill = %d", code)
	}
	for _, p := range []string{"pg", "ldap"} {
		if g := gauge(t, reg, "spokeproxy_drill_active", p); g != 1 {
			t.Errorf("spokeproxy_drill_active{protocol=%s} = %v during the drill", p, g)
		}
		if g := gauge(t, reg, "spokeproxy_hub_up", p); g != 0 {
			t.Errorf("spokeproxy_hub_up{protocol=%s} = %v during the drill", p, g)
		}
		if g := series(t, reg, "spokeproxy_hub_down_reason", map[string]string{"protocol": p, "reason": "drill"}); g != 1 {
			t.Errorf("spokeproxy_hub_down_reason{protocol=%s,reason=drill} = %v during the drill", p, g)
		}
	}
	_, err = pg.Exec(ctx, "INSERT INTO notes(account_id, body) VALUES (1, 'drill')")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" || !strings.Contains(pgErr.Message, "read-only") {
		t.Errorf("write during the drill: %v, want SQLSTATE 25006 saying read-only", err)
	}
	var n int
	if err := pg.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil || n == 0 {
		t.Errorf("read during the drill: %d, %v", n, err)
	}
	modify := ldap.NewModifyRequest(lab.UserDN, nil)
	modify.Replace("description", []string{"drill"})
	if err := ld.Modify(modify); !ldap.IsErrorWithCode(err, ldap.LDAPResultUnavailable) {
		t.Errorf("LDAP write during the drill: %v, want 52", err)
	}
	if _, err := ld.Search(ldap.NewSearchRequest(lab.UserDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=*)", []string{"cn"}, nil)); err != nil {
		t.Errorf("LDAP read during the drill: %v", err)
	}
	if got := counter(t, reg, "spokeproxy_writes_refused_total", "pg"); got != refusedPG+1 {
		t.Errorf("writes_refused_total{pg} went %v -> %v, want +1", refusedPG, got)
	}
	if got := counter(t, reg, "spokeproxy_writes_refused_total", "ldap"); got != refusedLDAP+1 {
		t.Errorf("writes_refused_total{ldap} went %v -> %v, want +1", refusedLDAP, got)
	}
	if _, body := httpGet(t, admin+"/status"); strings.Count(body, `"active": true`) != 2 {
		t.Errorf("/status does not show both drills active:\n%s", body)
	}
	if code, body := httpGet(t, admin+"/readyz"); code != 200 {
		t.Errorf("/readyz during a drill = %d %q: reads are served", code, body)
	}
	// Refused writes are summarised in the log, one line per protocol per
	// interval.
	waitFor(t, "the refused-write summary", func() bool {
		return strings.Contains(logs.String(), `msg="writes refused" site=lab-spoke protocol=ldap refused=1`)
	})
	if n := strings.Count(logs.String(), `msg="writes refused" site=lab-spoke protocol=pg refused=1`); n != 1 {
		t.Errorf("%d pg refused-write summaries for one refusal, want 1:\n%s", n, logs.String())
	}
	// Logins, binds and refusals went through the site: no password of any
	// of them is in its log.
	for name, secret := range map[string]string{"app": lab.AppPassword, "LDAP user": lab.UserPassword,
		"LDAP admin": l.AdminPassword(), "auth role": l.AuthPassword(), "admin token": "drill-token"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the %s password reached the site's log", name)
		}
	}

	// The live scrape, mid-drill, is what promtool checks.
	_, scrape := httpGet(t, admin+"/metrics")
	check := exec.Command(promtool, "check", "metrics")
	check.Stdin = strings.NewReader(scrape)
	var out bytes.Buffer
	check.Stdout, check.Stderr = &out, &out
	if err := check.Run(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out.String())
	}

	// Nobody stops it: it ends by itself.
	waitFor(t, "the drill to end by itself", hubsUp)
	ended := time.Since(started)
	t.Logf("drill of 3s ended by itself after %s", ended.Round(time.Millisecond))
	if ended < 3*time.Second-50*time.Millisecond {
		t.Errorf("drill ended after %s, before its 3s", ended)
	}
	if g := gauge(t, reg, "spokeproxy_drill_active", "pg"); g != 0 {
		t.Errorf("spokeproxy_drill_active{protocol=pg} = %v after the drill", g)
	}
	if g := series(t, reg, "spokeproxy_hub_down_reason", map[string]string{"protocol": "pg", "reason": "drill"}); g != 0 {
		t.Errorf("spokeproxy_hub_down_reason{protocol=pg,reason=drill} = %v after the drill", g)
	}
	if g := series(t, reg, "spokeproxy_hub_writable_endpoints", map[string]string{"protocol": "pg"}); g != 1 {
		t.Errorf("spokeproxy_hub_writable_endpoints{protocol=pg} = %v, want 1", g)
	}
	if _, err := pg.Exec(ctx, "INSERT INTO notes(account_id, body) VALUES (1, 'after the drill')"); err != nil {
		t.Errorf("write after the drill: %v", err)
	}
	modify.Replace("description", []string{"after the drill"})
	if err := ld.Modify(modify); err != nil {
		t.Errorf("LDAP write after the drill: %v", err)
	}

	// Drain (what SIGTERM does): a transaction open when it starts may still
	// commit, new clients are refused, and at the deadline every client is
	// gone.
	tx, err := pg.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO notes(account_id, body) VALUES (1, 'before the drain')"); err != nil {
		t.Fatal(err)
	}
	const drain = 2 * time.Second
	drainStart := time.Now()
	drained := make(chan error, 1)
	go func() {
		sctx, c := context.WithTimeout(context.Background(), drain)
		defer c()
		drained <- srv.Shutdown(sctx)
	}()
	waitFor(t, "the PostgreSQL listener to close", func() bool {
		c, err := net.DialTimeout("tcp", addrs.Postgres, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	if _, err := tx.Exec(ctx, "INSERT INTO notes(account_id, body) VALUES (1, 'during the drain')"); err != nil {
		t.Errorf("statement of a running transaction during the drain: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Errorf("commit during the drain: %v", err)
	}
	var derr error
	select {
	case derr = <-drained:
	case <-time.After(drain + 10*time.Second):
		t.Fatal("Shutdown did not return after its deadline")
	}
	took := time.Since(drainStart)
	t.Logf("drain with an idle PostgreSQL client and a bound LDAP client: %s, Shutdown: %v", took.Round(time.Millisecond), derr)
	_, pgAfter := pg.Exec(context.Background(), "SELECT 1")
	_, ldAfter := ld.Search(ldap.NewSearchRequest(lab.UserDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=*)", []string{"cn"}, nil))
	t.Logf("after the drain: PostgreSQL client sees %v; LDAP client sees %v", pgAfter, ldAfter)
	if pgAfter == nil || ldAfter == nil {
		t.Errorf("clients still served after the drain: pg %v, ldap %v", pgAfter, ldAfter)
	}
}

// mustPromtool finds promtool (Debian's prometheus package, installed by
// make test-prereqs) or fails the test loudly.
func mustPromtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found (%v): install Debian's prometheus package, or run make test-prereqs", err)
	}
	return p
}

// series reads the gauge or counter of name whose labels include want; -1
// when there is none.
func series(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue next
				}
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

// lockedLog is a log destination safe to read while the server writes.
type lockedLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestSplitBrainSignalAgainstTheLab promotes the hub-site standby while the
// primary still runs: the metrics the SpokeproxySplitBrain alert reads
// (hub_down_reason{reason="split_brain"}, hub_writable_endpoints) must say
// so, and writes are refused.
func TestSplitBrainSignalAgainstTheLab(t *testing.T) {
	if testing.Short() {
		t.Skip("runs PostgreSQL and slapd")
	}
	l := lab.ForTest(t, lab.Options{HubStandby: true})
	path := filepath.Join(l.Dir(), "spokeproxy.yaml")
	if err := os.WriteFile(path, l.ProxyConfigYAML("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := proxy.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srv, err := proxy.New(cfg, proxy.Options{Registry: reg, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		srv.Shutdown(sctx)
	})
	pgLabels := map[string]string{"protocol": "pg"}
	waitFor(t, "one writable pg hub", func() bool {
		return gauge(t, reg, "spokeproxy_hub_up", "pg") == 1 && series(t, reg, "spokeproxy_hub_writable_endpoints", pgLabels) == 1
	})
	if err := l.PromoteHubStandby(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "split brain in the metrics", func() bool {
		return series(t, reg, "spokeproxy_hub_down_reason", map[string]string{"protocol": "pg", "reason": "split_brain"}) == 1
	})
	if n := series(t, reg, "spokeproxy_hub_writable_endpoints", pgLabels); n != 2 {
		t.Errorf("spokeproxy_hub_writable_endpoints{protocol=pg} = %v during a split brain, want 2", n)
	}
	if g := gauge(t, reg, "spokeproxy_hub_up", "pg"); g != 0 {
		t.Errorf("spokeproxy_hub_up{protocol=pg} = %v during a split brain", g)
	}
	pg, err := pgx.Connect(ctx, "postgres://app:apppass@"+srv.Addrs().Postgres+"/appdb?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close(context.Background())
	_, err = pg.Exec(ctx, "INSERT INTO notes(account_id, body) VALUES (1, 'split')")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" || !strings.Contains(pgErr.Message, "split brain") {
		t.Errorf("write during a split brain: %v, want 25006 naming the split brain", err)
	}
}
