package pgfront

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spokeproxy/spokeproxy/lab"
)

func selfSignedTLS(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

func TestLabPGClientTLS(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, func(c *Config) { c.TLS = selfSignedTLS(t) })
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
