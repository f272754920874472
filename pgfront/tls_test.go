package pgfront

import (
	"crypto/tls"
	"net"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/spokeproxy/spokeproxy/internal/testcert"
	"github.com/spokeproxy/spokeproxy/lab"
)

func TestLabPGClientTLS(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, func(c *Config) { c.TLS = &tls.Config{Certificates: []tls.Certificate{testcert.New(t).TLS}} })
	ctx := ctxT(t)
	for _, mode := range []string{"require", "disable"} {
		cc, err := pgx.ParseConfig(f.dsn(lab.AppUser, lab.AppPassword))
		if err != nil {
			t.Fatal(err)
		}
		cc.TLSConfig = nil
		if mode == "require" {
			cc.TLSConfig = &tls.Config{InsecureSkipVerify: true}
		}
		c, err := pgx.ConnectConfig(ctx, cc)
		if err != nil {
			t.Fatalf("sslmode=%s: %v", mode, err)
		}
		_, isTLS := c.PgConn().Conn().(*tls.Conn)
		if isTLS != (mode == "require") {
			t.Errorf("sslmode=%s: TLS %v", mode, isTLS)
		}
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil || n < 3 {
			t.Errorf("sslmode=%s: query: %d %v", mode, n, err)
		}
		c.Close(ctx)
	}
	// libpq with sslmode=require (it fails unless the proxy answers 'S').
	if out := f.runTool(t, "SELECT 'tls ok';\n", "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-f", "-", "sslmode=require"); out != "tls ok\n" {
		t.Errorf("psql sslmode=require: %q", out)
	}
}

func TestLabPGHubTLS(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	ctx := ctxT(t)
	crt := testcert.New(t)
	pool := crt.Pool
	if err := l.EnableHubPGTLS(ctx, crt.CertPEM, crt.KeyPEM); err != nil {
		t.Fatal(err)
	}
	super, err := pgx.Connect(ctx, l.HubSuperDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(ctx)

	f := startFront(t, l, func(c *Config) { c.HubTLS = &tls.Config{RootCAs: pool} })
	c := f.connect(t, nil)
	var ssl bool
	if err := c.QueryRow(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'over tls') RETURNING (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())").Scan(&ssl); err != nil || !ssl {
		t.Fatalf("write over TLS to the hub: ssl=%v err=%v", ssl, err)
	}

	// With the replica down, logins look the role's secret up on the hub:
	// that lookup crosses the WAN and must use the hub TLS settings too.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	h := startFront(t, l, func(c *Config) { c.HubTLS = &tls.Config{RootCAs: pool}; c.ReplicaAddr = dead })
	h.waitHub(t, true)
	e := h.connect(t, nil)
	if _, err := e.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("a session logged in through the hub lookup: %v", err)
	}
	var lookups int
	var allSSL bool
	if err := super.QueryRow(ctx, `SELECT count(*), coalesce(bool_and(s.ssl), false) FROM pg_stat_activity a
		JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'spokeproxy auth'`).Scan(&lookups, &allSSL); err != nil {
		t.Fatal(err)
	}
	if lookups == 0 || !allSSL {
		t.Fatalf("auth lookups on the hub: %d connections, all over TLS: %v; want at least one, all TLS", lookups, allSSL)
	}

	// A hub whose certificate the configured CA does not sign is refused.
	otherPool := testcert.New(t).Pool
	g := startFront(t, l, func(c *Config) { c.HubTLS = &tls.Config{RootCAs: otherPool} })
	d := g.connect(t, nil)
	if _, err := d.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'wrong ca')"); err == nil {
		t.Fatal("write through a hub with an untrusted certificate succeeded")
	}
}
