package proxy_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spokeproxy/spokeproxy/lab"
	"github.com/spokeproxy/spokeproxy/proxy"
)

// TestSiteAgainstTheLab runs a whole site as `spokeproxy serve` would, from
// the config the lab generates, and checks the contract end to end through
// both fronts: local reads, writes on the hub, read-your-writes, refusal
// with protocol-native errors while the WAN is cut, reads going on, and the
// admin API telling the truth throughout.
func TestSiteAgainstTheLab(t *testing.T) {
	if testing.Short() {
		t.Skip("runs PostgreSQL and slapd")
	}
	l := lab.ForTest(t, lab.Options{})
	path := filepath.Join(l.Dir(), "spokeproxy.yaml")
	if err := os.WriteFile(path, l.ProxyConfigYAML("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := proxy.LoadConfig(path)
	if err != nil {
		t.Fatalf("the lab's generated config does not load: %v", err)
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
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	addrs := srv.Addrs()
	admin := "http://" + addrs.Admin
	waitFor(t, "both hubs up", func() bool {
		return gauge(t, reg, "spokeproxy_hub_up", "pg") == 1 && gauge(t, reg, "spokeproxy_hub_up", "ldap") == 1
	})

	pg, err := pgx.Connect(ctx, "postgres://app:apppass@"+addrs.Postgres+"/appdb?sslmode=disable")
	if err != nil {
		t.Fatalf("connect through the proxy: %v", err)
	}
	defer pg.Close(context.Background())
	var n int
	if err := pg.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil || n == 0 {
		t.Fatalf("read through the proxy: %d, %v", n, err)
	}
	var id int64
	if err := pg.QueryRow(ctx, "INSERT INTO notes(account_id, body) VALUES (1, 'site test') RETURNING id").Scan(&id); err != nil {
		t.Fatalf("write through the proxy: %v", err)
	}
	if err := pg.QueryRow(ctx, "SELECT count(*) FROM notes WHERE id = $1", id).Scan(&n); err != nil || n != 1 {
		t.Fatalf("read-your-write: count = %d, %v", n, err)
	}

	ld, err := ldap.DialURL("ldap://" + addrs.LDAP)
	if err != nil {
		t.Fatal(err)
	}
	defer ld.Close()
	if err := ld.Bind(lab.UserDN, lab.UserPassword); err != nil {
		t.Fatalf("bind through the proxy: %v", err)
	}
	modify := ldap.NewModifyRequest(lab.UserDN, nil)
	modify.Replace("description", []string{"site test"})
	if err := ld.Modify(modify); err != nil {
		t.Fatalf("modify through the proxy: %v", err)
	}
	res, err := ld.Search(ldap.NewSearchRequest(lab.UserDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=*)", []string{"description"}, nil))
	if err != nil || len(res.Entries) != 1 || res.Entries[0].GetAttributeValue("description") != "site test" {
		t.Fatalf("read-your-write over LDAP: %v %v", res, err)
	}

	// Cut the WAN.
	for _, link := range []string{lab.LinkPG, lab.LinkLDAP} {
		if err := l.SetLink(link, false); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "both hubs down", func() bool {
		return gauge(t, reg, "spokeproxy_hub_up", "pg") == 0 && gauge(t, reg, "spokeproxy_hub_up", "ldap") == 0
	})
	_, err = pg.Exec(ctx, "INSERT INTO notes(account_id, body) VALUES (1, 'refused')")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" || !strings.Contains(pgErr.Message, "read-only") {
		t.Fatalf("write during the cut: %v, want SQLSTATE 25006 saying read-only", err)
	}
	if err := pg.QueryRow(ctx, "SELECT count(*) FROM notes WHERE id = $1", id).Scan(&n); err != nil || n != 1 {
		t.Fatalf("read on the same connection during the cut: %d, %v", n, err)
	}
	modify.Replace("description", []string{"refused"})
	if err := ld.Modify(modify); !ldap.IsErrorWithCode(err, ldap.LDAPResultUnavailable) {
		t.Fatalf("LDAP write during the cut: %v, want result 52", err)
	}
	if _, err := ld.Search(ldap.NewSearchRequest(lab.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
		"(uid=bob)", []string{"cn"}, nil)); err != nil {
		t.Fatalf("LDAP read during the cut: %v", err)
	}
	if code, body := httpGet(t, admin+"/readyz"); code != 200 {
		t.Errorf("/readyz during a WAN cut = %d %q: reads are still served locally", code, body)
	}
	if got := counter(t, reg, "spokeproxy_writes_refused_total", "pg"); got < 1 {
		t.Errorf("spokeproxy_writes_refused_total{protocol=pg} = %v", got)
	}
	if _, body := httpGet(t, admin+"/status"); !strings.Contains(body, `"reason": "hub unreachable"`) {
		t.Errorf("/status does not say the hub is unreachable:\n%s", body)
	}

	// Restore: writes work again on the same connections.
	if err := l.ResetWAN(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both hubs up again", func() bool {
		return gauge(t, reg, "spokeproxy_hub_up", "pg") == 1 && gauge(t, reg, "spokeproxy_hub_up", "ldap") == 1
	})
	if _, err := pg.Exec(ctx, "INSERT INTO notes(account_id, body) VALUES (1, 'after the cut')"); err != nil {
		t.Fatalf("write after the link returned: %v", err)
	}
	modify.Replace("description", []string{"after the cut"})
	if err := ld.Modify(modify); err != nil {
		t.Fatalf("LDAP write after the link returned: %v", err)
	}
}

func TestStartFailsOnATakenPort(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("x\n"), 0o600)
	cfg, err := proxy.ParseConfig(filepath.Join(dir, "c.yaml"), []byte(`
site: s
admin: {listen: "127.0.0.1:0"}
postgres:
  listen: "127.0.0.1:0"
  replica: {address: "127.0.0.1:1"}
  hubs: [{address: "127.0.0.1:2"}]
  auth: {password_file: pw}
`))
	if err != nil {
		t.Fatal(err)
	}
	first, err := proxy.New(cfg, proxy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer first.Shutdown(context.Background())
	taken := *cfg
	pgc := *cfg.Postgres
	pgc.Listen = first.Addrs().Postgres
	taken.Postgres = &pgc
	second, err := proxy.New(&taken, proxy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = second.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "pg.listen") {
		second.Shutdown(context.Background())
		t.Fatalf("Start on a taken port: %v, want an error naming pg.listen", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gauge and counter read one series of name by its protocol label.
var gauge, counter = metricValue, metricValue

// metricValue reads one series of name by its protocol label.
func metricValue(t *testing.T, reg *prometheus.Registry, name, protocol string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "protocol" && lp.GetValue() == protocol {
					if m.GetGauge() != nil {
						return m.GetGauge().GetValue()
					}
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
