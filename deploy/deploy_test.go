package deploy

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/spokeproxy/spokeproxy/internal/testcert"
	"github.com/spokeproxy/spokeproxy/metrics"
	"github.com/spokeproxy/spokeproxy/proxy"
)

// mustTool finds a binary or fails loudly, naming the Debian package.
func mustTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found (%v): install Debian's %s package, or run make test-prereqs", name, err, pkg)
	}
	return p
}

func runTool(t *testing.T, dir, bin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func TestAlertRules(t *testing.T) {
	promtool := mustTool(t, "promtool", "prometheus")
	out := runTool(t, "prometheus", promtool, "check", "rules", "alerts.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool check rules:\n%s", out)
	}
	runTool(t, "prometheus", promtool, "test", "rules", "alerts_test.yml")
	runTool(t, "prometheus", promtool, "check", "config", "prometheus.yml")

	// The rules the issue asks for are all there.
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	readYAML(t, "prometheus/alerts.yml", &rules)
	have := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			have[r.Alert] = true
		}
	}
	for _, want := range []string{"SpokeproxyHubDown", "SpokeproxyReplicationLagHigh", "SpokeproxyWritesRefused",
		"SpokeproxyReplicaDown", "SpokeproxySplitBrain"} {
		if !have[want] {
			t.Errorf("alerts.yml lacks %s", want)
		}
	}
	// Every alert is unit-tested.
	tests, err := os.ReadFile("prometheus/alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	for a := range have {
		if !strings.Contains(string(tests), "alertname: "+a+"\n") {
			t.Errorf("alerts_test.yml does not test %s", a)
		}
	}
}

// TestRulesAndDashboardNameRealMetrics checks every PromQL expression of the
// alert rules and the dashboard against the metrics spokeproxy registers, so
// a renamed metric cannot leave a silent alert or an empty panel behind.
func TestRulesAndDashboardNameRealMetrics(t *testing.T) {
	known := registeredMetrics(t)
	check := func(where, expr string) {
		for _, name := range regexp.MustCompile(`spokeproxy_[a-zA-Z0-9_]+`).FindAllString(expr, -1) {
			if !known[name] && !known[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")] {
				t.Errorf("%s: %s is not a metric spokeproxy exports (expression %q)", where, name, expr)
			}
		}
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	readYAML(t, "prometheus/alerts.yml", &rules)
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			check("alerts.yml "+r.Alert, r.Expr)
		}
	}

	raw, err := os.ReadFile("grafana/spokeproxy.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&dash); err != nil {
		t.Fatalf("grafana/spokeproxy.json: %v", err)
	}
	if dash.UID == "" {
		t.Error("the dashboard has no uid")
	}
	used := map[string]bool{}
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q has an empty query", p.Title)
			}
			check("dashboard panel "+p.Title, tg.Expr)
			for _, n := range regexp.MustCompile(`spokeproxy_[a-zA-Z0-9_]+`).FindAllString(tg.Expr, -1) {
				used[n] = true
			}
		}
	}
	for _, v := range dash.Templating.List {
		check("dashboard variable", v.Definition)
	}
	// What the issue asks the dashboard to show.
	for what, metric := range map[string]string{
		"hub link per protocol": "spokeproxy_hub_up",
		"replica lag":           "spokeproxy_replication_lag_seconds",
		"refused writes":        "spokeproxy_writes_refused_total",
		"route split":           "spokeproxy_requests_total",
		"causal waits":          "spokeproxy_causal_wait_seconds_bucket",
		"connections":           "spokeproxy_client_connections",
		"WAN bytes":             "spokeproxy_wan_bytes_total",
	} {
		if !used[metric] {
			t.Errorf("the dashboard shows no %s (%s)", what, metric)
		}
	}
}

// registeredMetrics is every metric name a full site registers, read from
// the collectors' descriptions, so pulled gauges that have no value yet
// (lag before the first probe) count too.
func registeredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	rec := &recorder{names: map[string]bool{}}
	front := metrics.NewFront(rec)
	metrics.NewRouting(rec)
	metrics.NewPG(rec)
	metrics.NewLDAP(rec, front)
	metrics.NewOps(rec)
	metrics.NewBuildInfo(rec, "test")
	if len(rec.names) < 20 {
		t.Fatalf("only %d metric names found: %v", len(rec.names), rec.names)
	}
	return rec.names
}

// recorder is a Registerer that records the names its collectors describe.
type recorder struct{ names map[string]bool }

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r *recorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 64)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			r.names[m[1]] = true
		}
	}
	return nil
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		r.Register(c)
	}
}

func (r *recorder) Unregister(prometheus.Collector) bool { return true }

// TestExampleConfig loads deploy/spokeproxy.yaml as `spokeproxy check` and
// `serve` would, with its /etc/spokeproxy files made in a temporary
// directory: a throwaway CA, a server certificate and key, and secrets. The
// TLS files must really load (proxy.New reads them).
func TestExampleConfig(t *testing.T) {
	src, err := os.ReadFile("spokeproxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	text := strings.ReplaceAll(string(src), "/etc/spokeproxy/", dir+"/")
	if strings.Contains(text, "/etc/") {
		t.Fatal("the example names files outside /etc/spokeproxy; the test cannot provide them")
	}
	for _, d := range []string{"secrets", "tls"} {
		os.MkdirAll(filepath.Join(dir, d), 0o700)
	}
	for _, f := range []string{"secrets/admin.token", "secrets/pg-auth.password", "secrets/ldap-monitor.password"} {
		os.WriteFile(filepath.Join(dir, f), []byte("not-a-real-secret\n"), 0o600)
	}
	writeCerts(t, filepath.Join(dir, "tls"))
	path := filepath.Join(dir, "spokeproxy.yaml")
	os.WriteFile(path, []byte(text), 0o600)
	cfg, err := proxy.LoadConfig(path)
	if err != nil {
		t.Fatalf("the example config does not pass check: %v", err)
	}
	if !cfg.Postgres.TLS.Enabled() || !cfg.LDAP.TLS.Enabled() || cfg.LDAP.LDAPSListen == "" || cfg.Admin.TokenFile == "" {
		t.Errorf("the example should show client TLS on both fronts, LDAPS and an admin token: %+v", cfg)
	}
	if cfg.Postgres.HubTLS.Mode != "verify-full" || cfg.LDAP.HubTLS.CAFile == "" {
		t.Errorf("the example should check the hubs' certificates over the WAN: %+v %+v", cfg.Postgres.HubTLS, cfg.LDAP.HubTLS)
	}
	if _, err := proxy.New(cfg, proxy.Options{}); err != nil {
		t.Fatalf("the example config does not build a site: %v", err)
	}
}

// writeCerts makes a server certificate and key, and a CA file the hub
// TLS settings can load (a self-signed certificate is its own CA).
func writeCerts(t *testing.T, dir string) {
	t.Helper()
	c := testcert.New(t, "spokeproxy.spoke.example.org")
	c.Write(t, dir, "spokeproxy")
	if err := os.WriteFile(filepath.Join(dir, "hub-ca.crt"), c.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestSystemdUnit verifies the unit with systemd-analyze (unknown keys are
// reported there) and checks the hardening the issue asks for.
func TestSystemdUnit(t *testing.T) {
	analyze := mustTool(t, "systemd-analyze", "systemd")
	src, err := os.ReadFile("systemd/spokeproxy.service")
	if err != nil {
		t.Fatal(err)
	}
	// verify wants the ExecStart binary to exist.
	unit := filepath.Join(t.TempDir(), "spokeproxy.service")
	os.WriteFile(unit, bytes.ReplaceAll(src, []byte("/usr/local/bin/spokeproxy"), []byte("/bin/true")), 0o644)
	if out := runTool(t, ".", analyze, "verify", unit); strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify:\n%s", out)
	}
	set := map[string][]string{}
	for _, line := range strings.Split(string(src), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			set[k] = append(set[k], v)
		}
	}
	for key, want := range map[string]string{
		"ProtectSystem":         "strict",
		"NoNewPrivileges":       "yes",
		"CapabilityBoundingSet": "",
		"PrivateTmp":            "yes",
		"User":                  "spokeproxy",
		"ExecReload":            "/bin/kill -HUP $MAINPID",
	} {
		if v := set[key]; len(v) != 1 || v[0] != want {
			t.Errorf("%s = %q, want %q", key, v, want)
		}
	}
	if v := set["RestrictAddressFamilies"]; len(v) != 1 || strings.Contains(v[0], "AF_PACKET") || !strings.Contains(v[0], "AF_INET") {
		t.Errorf("RestrictAddressFamilies = %q", v)
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
