package proxy

import (
	"os"
	"path/filepath"
	"strings"
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

func TestExposureWarnings(t *testing.T) {
	safe := &Config{
		Postgres: &PostgresConfig{HubTLS: PostgresHubTLS{Mode: "verify-full"}},
		LDAP:     &LDAPConfig{Hubs: []LDAPBackend{{URL: "ldaps://hub:636"}, {URL: "ldap://hub2:389"}}, HubTLS: LDAPHubTLS{StartTLS: true}},
	}
	if w := exposureWarnings(safe, "", true); len(w) != 0 {
		t.Errorf("a TLS-everywhere config with a loopback admin API got warnings: %q", w)
	}
	open := &Config{
		Postgres: &PostgresConfig{HubTLS: PostgresHubTLS{Mode: "disable"}},
		LDAP:     &LDAPConfig{Hubs: []LDAPBackend{{URL: "ldaps://hub:636"}, {URL: "ldap://hub2:389"}}},
	}
	w := exposureWarnings(open, "", false)
	want := []string{"admin API listens beyond loopback", "ldap hub ldap://hub2:389", "postgres.hub_tls.mode is disable"}
	if len(w) != len(want) {
		t.Fatalf("warnings = %q, want one each about %q", w, want)
	}
	for i, s := range want {
		if !strings.Contains(w[i], s) {
			t.Errorf("warning %d = %q, want it about %q", i, w[i], s)
		}
	}
	if w := exposureWarnings(open, "token", false); len(w) != 2 {
		t.Errorf("with a token the admin warning must go: %q", w)
	}
}
