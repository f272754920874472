package lab

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spokeproxy/spokeproxy/internal/testcert"
)

func TestEnableHubPGTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l := ForTest(t, Options{})
	cert := testcert.New(t)
	pool := cert.Pool
	if err := l.EnableHubPGTLS(ctx, cert.CertPEM, cert.KeyPEM); err != nil {
		t.Fatalf("EnableHubPGTLS: %v", err)
	}
	// A verified TLS session with the given certificate, through the WAN
	// link too (toxiproxy relays bytes), and still after a restart.
	check := func(addr string) {
		t.Helper()
		cfg, err := pgx.ParseConfig(appDSN(addr) + "?sslmode=disable")
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLSConfig = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatalf("verified TLS to %s: %v", addr, err)
		}
		defer conn.Close(ctx)
		var ssl bool
		if err := conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
			t.Fatalf("session to %s: ssl %v, %v", addr, ssl, err)
		}
	}
	check(l.HubPGAddr())
	check(l.WANPGAddr())
	if err := l.RestartHubPG(ctx); err != nil {
		t.Fatal(err)
	}
	check(l.HubPGAddr())
	// The spoke standby is unchanged (ALTER SYSTEM is not replicated).
	replica := connect(t, l.ReplicaSuperDSN("postgres"))
	var sslSetting string
	if err := replica.QueryRow(ctx, "SHOW ssl").Scan(&sslSetting); err != nil || sslSetting != "off" {
		t.Fatalf("ssl on the spoke standby = %q, %v; want off", sslSetting, err)
	}
	// A new certificate with a key that does not load is never taken for
	// served: the error says so with the hub's own words.
	bctx, bcancel := context.WithTimeout(ctx, 2*time.Second)
	defer bcancel()
	err := l.EnableHubPGTLS(bctx, testcert.New(t).CertPEM, []byte("not a key"))
	var serr *StartError
	if !errors.As(err, &serr) || !strings.Contains(serr.LogTail, "key") {
		t.Fatalf("EnableHubPGTLS with a broken key: %v, want a *StartError showing the hub's complaint", err)
	}
	check(l.HubPGAddr()) // the previous certificate is still served
}
