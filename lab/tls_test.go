package lab

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// selfSigned makes a server certificate for 127.0.0.1 and the pool that
// trusts it.
func selfSigned(t *testing.T) (certPEM, keyPEM []byte, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "lab hub"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), pool
}

func TestEnableHubPGTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l := ForTest(t, Options{})
	certPEM, keyPEM, pool := selfSigned(t)
	if err := l.EnableHubPGTLS(ctx, certPEM, keyPEM); err != nil {
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
	otherCert, _, _ := selfSigned(t)
	bctx, bcancel := context.WithTimeout(ctx, 2*time.Second)
	defer bcancel()
	err := l.EnableHubPGTLS(bctx, otherCert, []byte("not a key"))
	var serr *StartError
	if !errors.As(err, &serr) || !strings.Contains(serr.LogTail, "key") {
		t.Fatalf("EnableHubPGTLS with a broken key: %v, want a *StartError showing the hub's complaint", err)
	}
	check(l.HubPGAddr()) // the previous certificate is still served
}
