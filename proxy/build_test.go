package proxy

import (
	"os"
	"path/filepath"
	"testing"
)

func TestPostgresHubTLSModes(t *testing.T) {
	if c, err := postgresHubTLS(PostgresHubTLS{Mode: "disable"}); c != nil || err != nil {
		t.Errorf("disable = %v, %v; want no TLS", c, err)
	}
	c, err := postgresHubTLS(PostgresHubTLS{Mode: "require"})
	if err != nil || c == nil || !c.InsecureSkipVerify {
		t.Errorf("require = %+v, %v; want TLS without certificate checks", c, err)
	}
	c, err = postgresHubTLS(PostgresHubTLS{Mode: "verify-full", ServerName: "hub.example.org"})
	if err != nil || c == nil || c.InsecureSkipVerify || c.ServerName != "hub.example.org" {
		t.Errorf("verify-full = %+v, %v; want verified TLS for hub.example.org", c, err)
	}
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	if _, err := postgresHubTLS(PostgresHubTLS{Mode: "verify-full", CAFile: notPEM}); err == nil {
		t.Error("verify-full with a CA file holding no certificate was accepted")
	}
}
