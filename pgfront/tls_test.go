package pgfront

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
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

// serverCert makes a self-signed certificate for 127.0.0.1 and returns
// its PEM files' contents and a pool trusting it.
func serverCert(t *testing.T) (certPEM, keyPEM []byte, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{CommonName: "spokeproxy test hub"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), pool
}

func TestLabPGHubTLS(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	certPEM, keyPEM, pool := serverCert(t)
	// Turn TLS on at the hub primary.
	pgUser, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)
	dir := filepath.Join(l.Dir(), "pg", "hub")
	for name, data := range map[string][]byte{"test-server.crt": certPEM, "test-server.key": keyPEM} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	ctx := ctxT(t)
	super, err := pgx.Connect(ctx, l.HubSuperDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(ctx)
	for _, q := range []string{
		"ALTER SYSTEM SET ssl_cert_file = '" + filepath.Join(dir, "test-server.crt") + "'",
		"ALTER SYSTEM SET ssl_key_file = '" + filepath.Join(dir, "test-server.key") + "'",
		"ALTER SYSTEM SET ssl = on",
		"SELECT pg_reload_conf()",
	} {
		if _, err := super.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// The postmaster reloads asynchronously: the first write below retries
	// until the hub offers TLS.

	f := startFront(t, l, func(c *Config) { c.HubTLS = &tls.Config{RootCAs: pool} })
	c := f.connect(t, nil)
	var ssl bool
	var err2 error
	for i := 0; i < 20; i++ {
		err2 = c.QueryRow(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'over tls') RETURNING (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())").Scan(&ssl)
		if err2 == nil {
			break
		}
		f.waitHub(t, true)
	}
	if err2 != nil || !ssl {
		t.Fatalf("write over TLS to the hub: ssl=%v err=%v", ssl, err2)
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
	_, _, otherPool := serverCert(t)
	g := startFront(t, l, func(c *Config) { c.HubTLS = &tls.Config{RootCAs: otherPool} })
	d := g.connect(t, nil)
	if _, err := d.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'wrong ca')"); err == nil {
		t.Fatal("write through a hub with an untrusted certificate succeeded")
	}
}
