package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spokeproxy/spokeproxy/lab"
	"github.com/spokeproxy/spokeproxy/proxy"
)

// TestDrillCommand runs `spokeproxy drill` against a running lab with
// spokeproxy in front: it passes through the drill endpoint and with the
// WAN really cut, and fails with exit 1 naming the step when the link it
// was told to cut does not exist or when the WAN API cuts nothing.
func TestDrillCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and slapd")
	}
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tokenFile, []byte("drill-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l := lab.ForTest(t, lab.Options{Proxy: tokenProxy(tokenFile)})
	info := filepath.Join(l.Dir(), "lab.json")
	if err := l.WriteInfo(info); err != nil {
		t.Fatal(err)
	}
	drill := func(t *testing.T, args ...string) (int, string, string) {
		t.Helper()
		code, out, errs := runCmd(append([]string{"drill", "-lab", info, "-admin-token-file", tokenFile}, args...)...)
		t.Logf("spokeproxy drill %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errs)
		return code, out, errs
	}

	t.Run("drill endpoint", func(t *testing.T) {
		code, out, _ := drill(t)
		if code != 0 || !strings.Contains(out, "PASS: ") || strings.Contains(out, "FAIL") {
			t.Fatalf("drill against a healthy lab: exit %d", code)
		}
		for _, step := range []string{"pg writes refused with 25006", "ldap writes refused with 52", "pg reads go on",
			"metrics: hub down, writes refused", "pg replica caught up", "ldap replica caught up"} {
			if !strings.Contains(out, "PASS  "+step) {
				t.Errorf("the report lacks a passing %q step", step)
			}
		}
	})

	t.Run("drill endpoint without the admin token", func(t *testing.T) {
		code, out, _ := runCmd("drill", "-lab", info, "-protocol", "ldap")
		if code != 1 || !strings.Contains(out, "FAIL  hub made unreachable (drill endpoint)") || !strings.Contains(out, "401") {
			t.Fatalf("drill without the token: exit %d\n%s", code, out)
		}
	})

	t.Run("WAN cut, JSON report", func(t *testing.T) {
		code, out, _ := drill(t, "-wan", "-json")
		var rep drillReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("-json output: %v", err)
		}
		if code != 0 || !rep.Passed || rep.Method != "WAN cut" || len(rep.Steps) < 15 {
			t.Fatalf("drill with the WAN cut: exit %d, report %+v", code, rep)
		}
		for _, s := range rep.Steps {
			if strings.Contains(s.Name, "refused with") {
				t.Logf("detection: %s %.3fs (%s)", s.Name, s.Seconds, s.Detail)
			}
		}
	})

	t.Run("WAN blackhole", func(t *testing.T) {
		// A silent link is found by probes, not by the data path: about
		// probe_timeout x down_after, which the lab's generated config sets
		// to 1 s x 3 (slower than the defaults, against flaky CI), so the
		// bound here is 6 s and the figure is logged.
		code, out, _ := drill(t, "-wan", "-wan-mode", "blackhole", "-detect", "6s")
		if code != 0 || !strings.Contains(out, "hub made unreachable by WAN blackhole") || !strings.Contains(out, "PASS  pg writes refused with 25006") {
			t.Fatalf("drill with the WAN blackholed: exit %d", code)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "refused with") {
				t.Logf("MEASURED blackhole detection: %s", strings.TrimSpace(line))
			}
		}
	})

	t.Run("link that does not exist", func(t *testing.T) {
		code, out, _ := drill(t, "-protocol", "pg", "-wan-api", l.ToxiproxyAPI(), "-wan-link-pg", "wan_nosuch")
		if code != 1 {
			t.Fatalf("exit %d, want 1", code)
		}
		if !strings.Contains(out, "FAIL  hub made unreachable (WAN cut)") || !strings.Contains(out, "wan_nosuch") {
			t.Errorf("the report does not name the failed step and the link")
		}
	})

	t.Run("WAN API that cuts nothing", func(t *testing.T) {
		// Answers like toxiproxy and accepts every change, but nothing is cut.
		fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			name := strings.TrimPrefix(r.URL.Path, "/proxies/")
			fmt.Fprintf(w, `{"name":%q,"listen":"127.0.0.1:1","upstream":"127.0.0.1:2","enabled":true,"toxics":[]}`, name)
		}))
		defer fake.Close()
		code, out, _ := drill(t, "-protocol", "pg", "-wan-api", fake.URL, "-detect", "1s")
		if code != 1 {
			t.Fatalf("exit %d, want 1", code)
		}
		if !strings.Contains(out, "FAIL  pg writes refused with 25006") || !strings.Contains(out, "a write was accepted") {
			t.Errorf("the report does not name the failed step and why")
		}
		if !strings.Contains(out, "PASS  hub made unreachable") {
			t.Errorf("the fake API's cut should have looked successful")
		}
	})
}

func TestDrillUsage(t *testing.T) {
	for _, args := range [][]string{
		{"drill"},                            // nothing to drill
		{"drill", "-pg", "postgres://x@y/z"}, // no admin URL
		{"drill", "-admin", "http://a", "-ldap", "ldap://x"}, // no DN
		{"drill", "-wan"}, // -wan without -lab
		{"drill", "-protocol", "smtp", "-admin", "http://a", "-pg", "postgres://x@y/z"},
		{"drill", "-admin", "http://a", "-pg", "postgres://x@y/z", "-wan-api", "http://t"}, // no link name
	} {
		if code, _, errs := runCmd(args...); code != 2 || errs == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 with a message", args, code, errs)
		}
	}
	// A password on the command line is visible in ps: there is no flag
	// for it, and the usage names the file flag instead.
	code, _, errs := runCmd("drill", "-admin", "http://a", "-ldap", "ldap://x", "-ldap-dn", "cn=x", "-ldap-password", "secret")
	if code != 2 || !strings.Contains(errs, "-ldap-password-file") {
		t.Errorf("-ldap-password: exit %d, stderr %q; want 2 and a usage naming -ldap-password-file", code, errs)
	}
}

// tokenProxy is labProxy with admin.token_file set, so the drill endpoint
// needs the bearer token.
func tokenProxy(tokenFile string) func(ctx context.Context, l *lab.Lab) (lab.ProxyEndpoints, io.Closer, error) {
	return func(ctx context.Context, l *lab.Lab) (lab.ProxyEndpoints, io.Closer, error) {
		path := filepath.Join(l.Dir(), "spokeproxy.yaml")
		if err := os.WriteFile(path, l.ProxyConfigYAML("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"), 0o600); err != nil {
			return lab.ProxyEndpoints{}, nil, err
		}
		cfg, err := proxy.LoadConfig(path)
		if err != nil {
			return lab.ProxyEndpoints{}, nil, err
		}
		cfg.Admin.TokenFile = tokenFile
		srv, err := proxy.New(cfg, proxy.Options{Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(), Version: "test"})
		if err != nil {
			return lab.ProxyEndpoints{}, nil, err
		}
		if err := srv.Start(ctx); err != nil {
			return lab.ProxyEndpoints{}, nil, err
		}
		a := srv.Addrs()
		return lab.ProxyEndpoints{PG: a.Postgres, LDAP: a.LDAP, Admin: a.Admin}, closerFunc(func() error {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		}), nil
	}
}
