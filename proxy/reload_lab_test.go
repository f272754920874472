package proxy_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spokeproxy/spokeproxy/lab"
	"github.com/spokeproxy/spokeproxy/proxy"
)

// labSite serves a config file against the lab and reloads it as SIGHUP
// does: LoadConfig, then Reload (or ReloadFailed).
type labSite struct {
	t    *testing.T
	srv  *proxy.Server
	reg  *prometheus.Registry
	path string
}

func startLabSite(t *testing.T, l *lab.Lab, yaml string) *labSite {
	t.Helper()
	ls := &labSite{t: t, path: filepath.Join(l.Dir(), "spokeproxy.yaml"), reg: prometheus.NewRegistry()}
	if err := os.WriteFile(ls.path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := proxy.LoadConfig(ls.path)
	if err != nil {
		t.Fatal(err)
	}
	logger, level := proxy.NewLogger(testLog{t}, cfg.Log)
	if ls.srv, err = proxy.New(cfg, proxy.Options{Logger: logger, LogLevel: level, Registry: ls.reg}); err != nil {
		t.Fatal(err)
	}
	if err := ls.srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ls.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	waitFor(t, "both hubs up", func() bool { return ls.hubUp("pg") && ls.hubUp("ldap") })
	return ls
}

// reload writes yaml to the config file and reloads it.
func (ls *labSite) reload(yaml string) (proxy.ReloadResult, error) {
	if err := os.WriteFile(ls.path, []byte(yaml), 0o600); err != nil {
		ls.t.Fatal(err)
	}
	cfg, err := proxy.LoadConfig(ls.path)
	if err != nil {
		ls.srv.ReloadFailed(err)
		return proxy.ReloadResult{}, err
	}
	return ls.srv.Reload(cfg)
}

func (ls *labSite) hubUp(protocol string) bool {
	return gauge(ls.t, ls.reg, "spokeproxy_hub_up", protocol) == 1
}

// downTransitions reads spokeproxy_link_transitions_total{protocol, to="down"}.
func (ls *labSite) downTransitions(protocol string) float64 {
	return series(ls.t, ls.reg, "spokeproxy_link_transitions_total", map[string]string{"protocol": protocol, "to": "down"})
}

// testLog sends the site's log lines to the test log.
type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// withLink rewrites the link settings of a lab-generated config.
func withLink(yaml, interval, timeout string, downAfter string) string {
	return strings.NewReplacer(
		"probe_interval: "+lab.ProxyProbeInterval.String(), "probe_interval: "+interval,
		"probe_timeout: "+lab.ProxyProbeTimeout.String(), "probe_timeout: "+timeout,
		"down_after: 3", "down_after: "+downAfter,
	).Replace(yaml)
}

// blackholeDetection blackholes the PostgreSQL WAN link and returns how
// long the site takes to see the hub down, with the link restored after.
func blackholeDetection(t *testing.T, l *lab.Lab, ls *labSite) time.Duration {
	t.Helper()
	start := time.Now()
	if err := l.Blackhole(lab.LinkPG); err != nil {
		t.Fatal(err)
	}
	for ls.hubUp("pg") {
		if time.Since(start) > 30*time.Second {
			t.Fatal("a blackholed hub was never seen down")
		}
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(start)
	if err := l.ClearToxics(lab.LinkPG); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the hub back up", func() bool { return ls.hubUp("pg") })
	return took
}

// A reload of the probe timing and hysteresis changes how fast a silent
// link is noticed, on the running site and without a restart.
func TestReloadRetunesDetectionAgainstTheLab(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	base := string(l.ProxyConfigYAML("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"))
	// Slow: four probe timeouts of 1s in a row before the hub is down.
	slow := withLink(base, "1s", "1s", "4")
	ls := startLabSite(t, l, slow)
	slowTook := blackholeDetection(t, l, ls)
	t.Logf("blackhole seen after %v with probe_timeout 1s, down_after 4", slowTook.Round(time.Millisecond))
	if slowTook < 3*time.Second {
		t.Fatalf("slow settings noticed a blackhole after %v; the test cannot tell them apart from fast ones", slowTook)
	}

	// Fast: one probe timeout of 200ms; and LDAP transactions turned off.
	fast := withLink(base, "100ms", "200ms", "1")
	offTxn := strings.Replace(fast, "base_dn: "+lab.BaseDN, "base_dn: "+lab.BaseDN+"\n    transactions: refuse", 1)
	if offTxn == fast {
		t.Fatal("the lab's config has no ldap.base_dn line to add ldap.transactions after")
	}
	res, err := ls.reload(offTxn)
	if err != nil {
		t.Fatal(err)
	}
	ld, err := ldap.DialURL("ldap://" + ls.srv.Addrs().LDAP)
	if err != nil {
		t.Fatal(err)
	}
	defer ld.Close()
	if _, err := ld.Extended(ldap.NewExtendedRequest("1.3.6.1.1.21.1", nil)); !ldap.IsErrorWithCode(err, ldap.LDAPResultUnwillingToPerform) {
		t.Errorf("Start Transaction after reloading ldap.transactions: refuse: %v, want unwillingToPerform (53)", err)
	}
	for _, k := range []string{"link.probe_interval", "link.probe_timeout", "link.down_after", "ldap.transactions"} {
		if !slices.Contains(res.Applied, k) {
			t.Errorf("%s not applied: %+v", k, res)
		}
	}
	if len(res.NeedRestart) != 0 {
		t.Errorf("need_restart = %v, want none", res.NeedRestart)
	}
	fastTook := blackholeDetection(t, l, ls)
	t.Logf("blackhole seen after %v with probe_timeout 200ms, down_after 1", fastTook.Round(time.Millisecond))
	if fastTook > 1500*time.Millisecond || fastTook > slowTook/2 {
		t.Errorf("after the reload a blackhole was seen after %v (before: %v): the new timing is not in effect", fastTook, slowTook)
	}
}

// A reload that replaces the hub candidates moves writes to the new ones
// without dropping a client: idle sessions write through the new hub, a
// transaction open on the old one commits there, and the old candidate is
// no longer probed. A reload that fails on the way changes nothing.
func TestReloadMovesTheHubsAgainstTheLab(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	base := string(l.ProxyConfigYAML("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"))
	ls := startLabSite(t, l, base)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	addrs := ls.srv.Addrs()
	dsn := "postgres://app:apppass@" + addrs.Postgres + "/appdb?sslmode=disable"

	idle, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close(context.Background())
	if _, err := idle.Exec(ctx, "INSERT INTO notes(account_id, body) VALUES (1, 'before the reload')"); err != nil {
		t.Fatal(err)
	}
	inTx, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer inTx.Close(context.Background())
	tx, err := inTx.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO notes(account_id, body) VALUES (1, 'reload tx 1')"); err != nil {
		t.Fatal(err)
	}
	ld, err := ldap.DialURL("ldap://" + addrs.LDAP)
	if err != nil {
		t.Fatal(err)
	}
	defer ld.Close()
	if err := ld.Bind(lab.UserDN, lab.UserPassword); err != nil {
		t.Fatal(err)
	}
	modify := ldap.NewModifyRequest(lab.UserDN, nil)
	modify.Replace("description", []string{"before the reload"})
	if err := ld.Modify(modify); err != nil {
		t.Fatal(err)
	}

	moved := strings.NewReplacer(l.WANPGAddr(), l.HubPGAddr(), l.WANLDAPURL(), l.HubLDAPURL()).Replace(base)
	if moved == base {
		t.Fatal("the lab config does not name the WAN hub addresses")
	}

	// A file with the new hubs whose hub CA does not load: rejected whole.
	badCA := filepath.Join(l.Dir(), "not-a-ca.pem")
	os.WriteFile(badCA, []byte("not a certificate\n"), 0o600)
	bad := strings.Replace(withLink(moved, "100ms", "200ms", "1"), "    auth:", "    hub_tls:\n        mode: verify-full\n        ca_file: "+badCA+"\n    auth:", 1)
	if _, err := ls.reload(bad); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("reload with a bad hub CA = %v, want it rejected for the CA", err)
	}
	if _, body := httpGet(t, "http://"+addrs.Admin+"/status"); !strings.Contains(body, l.WANPGAddr()) || strings.Contains(body, l.HubPGAddr()) {
		t.Fatalf("a rejected reload changed the hub candidates:\n%s", body)
	}

	// An LDAP write in flight on the old hub when the hub moves gets its
	// answer from there: the latency keeps it in flight across the reload.
	if err := l.AddLatency(lab.LinkLDAP, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	type result struct {
		err error
		at  time.Time
	}
	inflight := make(chan result, 1)
	go func() {
		m := ldap.NewModifyRequest(lab.UserDN, nil)
		m.Replace("description", []string{"in flight across the reload"})
		err := ld.Modify(m)
		inflight <- result{err, time.Now()}
	}()
	time.Sleep(100 * time.Millisecond)

	pgDowns, ldapDowns := ls.downTransitions("pg"), ls.downTransitions("ldap")
	res, err := ls.reload(moved)
	if err != nil {
		t.Fatal(err)
	}
	modify.Replace("description", []string{"during"})
	if err := ld.Modify(modify); err != nil {
		t.Fatalf("LDAP write on the same connection right after the reload: %v", err)
	}
	secondAt := time.Now()
	first := <-inflight
	if first.err != nil {
		t.Fatalf("the LDAP write in flight on the old hub during the reload: %v, want its own answer", first.err)
	}
	if !first.at.After(secondAt) {
		t.Fatal("the first write was answered before the second was sent: the test did not keep it in flight across the reload")
	}
	if err := l.ClearToxics(lab.LinkLDAP); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Applied, []string{"postgres.hubs", "ldap.hubs"}) || len(res.NeedRestart) != 0 {
		t.Fatalf("reload = %+v, want both hub lists applied and nothing needing a restart", res)
	}
	if !ls.hubUp("pg") || !ls.hubUp("ldap") || ls.downTransitions("pg") != pgDowns || ls.downTransitions("ldap") != ldapDowns {
		t.Fatal("the hubs went down while their candidates were replaced")
	}
	_, body := httpGet(t, "http://"+addrs.Admin+"/status")
	if strings.Contains(body, l.WANPGAddr()) || strings.Contains(body, l.WANLDAPURL()) || !strings.Contains(body, l.HubPGAddr()) {
		t.Fatalf("/status after the reload still lists the old candidates or not the new:\n%s", body)
	}

	// The open transaction finishes on the hub connection it started on.
	if _, err := tx.Exec(ctx, "INSERT INTO notes(account_id, body) VALUES (1, 'reload tx 2')"); err != nil {
		t.Fatalf("the open transaction after the reload: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("COMMIT of the transaction begun before the reload: %v", err)
	}

	// Cut the old path: what still works goes through the new candidates.
	for _, link := range []string{lab.LinkPG, lab.LinkLDAP} {
		if err := l.SetLink(link, false); err != nil {
			t.Fatal(err)
		}
	}
	var id int64
	if err := idle.QueryRow(ctx, "INSERT INTO notes(account_id, body) VALUES (1, 'after the reload') RETURNING id").Scan(&id); err != nil {
		t.Fatalf("write on the idle session after the reload, old link cut: %v", err)
	}
	var n int
	if err := idle.QueryRow(ctx, "SELECT count(*) FROM notes WHERE id = $1", id).Scan(&n); err != nil || n != 1 {
		t.Fatalf("read-your-write through the new hub: %d, %v", n, err)
	}
	if err := idle.QueryRow(ctx, "SELECT count(*) FROM notes WHERE body LIKE 'reload tx %'").Scan(&n); err != nil || n != 2 {
		t.Fatalf("rows of the transaction that straddled the reload: %d, %v; want 2", n, err)
	}
	modify.Replace("description", []string{"after the reload"})
	if err := ld.Modify(modify); err != nil {
		t.Fatalf("LDAP write on the idle connection after the reload, old link cut: %v", err)
	}
	sr, err := ld.Search(ldap.NewSearchRequest(lab.UserDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=*)", []string{"description"}, nil))
	if err != nil || len(sr.Entries) != 1 || sr.Entries[0].GetAttributeValue("description") != "after the reload" {
		t.Fatalf("LDAP read-your-write through the new hub: %v %v", sr, err)
	}
	// The removed candidates are out of the hub state: the cut of their
	// links does not reach it.
	time.Sleep(time.Second)
	if !ls.hubUp("pg") || !ls.hubUp("ldap") {
		t.Error("a hub went down after the links of the removed candidates were cut")
	}
}

// A reload whose hub TLS settings the hubs reject (the lab's hubs speak no
// TLS) is refused whole, naming the hub and why, and the hubs stay up; the
// same reload is accepted while the hub is seen down, where nothing tells
// the new settings' failure from the outage.
func TestReloadRefusesHubTLSTheHubsReject(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	base := string(l.ProxyConfigYAML("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"))
	ls := startLabSite(t, l, base)
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"postgres", strings.Replace(base, "    auth:", "    hub_tls:\n        mode: require\n    auth:", 1),
			"postgres.hub_tls: hub " + l.WANPGAddr() + " refuses the new TLS settings"},
		{"ldap", strings.Replace(base, "    base_dn:", "    hub_tls:\n        start_tls: true\n    base_dn:", 1),
			"ldap.hub_tls: hub " + l.WANLDAPURL() + " refuses the new TLS settings"},
	} {
		if tc.yaml == base {
			t.Fatalf("%s: the lab config has no place for hub_tls", tc.name)
		}
		downs := ls.downTransitions(map[string]string{"postgres": "pg", "ldap": "ldap"}[tc.name])
		_, err := ls.reload(tc.yaml)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: reload with hub TLS the hub does not speak = %v, want it refused with %q", tc.name, err, tc.want)
		}
		t.Logf("%s: %v", tc.name, err)
		if !ls.hubUp("pg") || !ls.hubUp("ldap") || ls.downTransitions(map[string]string{"postgres": "pg", "ldap": "ldap"}[tc.name]) != downs {
			t.Fatalf("%s: the refused reload took a hub down", tc.name)
		}
	}

	// With the PostgreSQL hub seen down, the settings cannot be judged:
	// the reload goes through.
	if err := l.SetLink(lab.LinkPG, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the PostgreSQL hub down", func() bool { return !ls.hubUp("pg") })
	if _, err := ls.reload(strings.Replace(base, "    auth:", "    hub_tls:\n        mode: require\n    auth:", 1)); err != nil {
		t.Fatalf("reload with new hub TLS while the hub is down: %v, want it applied", err)
	}
	if err := l.ResetWAN(); err != nil {
		t.Fatal(err)
	}
}
