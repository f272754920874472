package proxy

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/spokeproxy/spokeproxy/internal/testcert"
)

// A rotated certificate is served after SIGHUP's reload without a restart;
// a broken one is refused and the running one stays.
func TestReloadRotatesListenerCertificates(t *testing.T) {
	dir := t.TempDir()
	first := testcert.New(t)
	certFile, _ := first.Write(t, dir, "front")
	os.WriteFile(filepath.Join(dir, "pw"), []byte("x\n"), 0o600)
	src := []byte(`
site: s
admin: {listen: "127.0.0.1:0"}
postgres:
  listen: "127.0.0.1:0"
  tls: {cert_file: front.crt, key_file: front.key}
  replica: {address: "127.0.0.1:1"}
  hubs: [{address: "127.0.0.1:2"}]
  auth: {password_file: pw}
`)
	cfg, err := ParseConfig(filepath.Join(dir, "c.yaml"), src)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	served := func() []byte {
		c, err := srv.certs["postgres.tls"].get(nil)
		if err != nil {
			t.Fatal(err)
		}
		return c.Certificate[0]
	}
	if !bytes.Equal(served(), first.TLS.Certificate[0]) {
		t.Fatal("the listener does not serve the configured certificate")
	}

	second := testcert.New(t)
	second.Write(t, dir, "front")
	res, err := srv.Reload(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(served(), second.TLS.Certificate[0]) {
		t.Error("after the reload the listener still serves the old certificate")
	}
	if !slices.Contains(res.Applied, "postgres.tls.cert_file (content)") || len(res.NeedRestart) != 0 {
		t.Errorf("reload result = %+v, want the certificate applied and nothing needing a restart", res)
	}

	// Nothing changed: nothing to apply.
	if res, err := srv.Reload(cfg); err != nil || len(res.Applied)+len(res.NeedRestart) != 0 {
		t.Errorf("a reload without changes = %+v, %v", res, err)
	}

	os.WriteFile(certFile, []byte("not a certificate"), 0o644)
	if _, err := srv.Reload(cfg); err == nil {
		t.Error("a reload with a broken certificate was accepted")
	}
	if !bytes.Equal(served(), second.TLS.Certificate[0]) {
		t.Error("a broken certificate replaced the running one")
	}
}
