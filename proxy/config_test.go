package proxy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestExampleConfigLoads(t *testing.T) {
	c, err := LoadConfig("../testdata/spokeproxy.example.yaml")
	if err != nil {
		t.Fatalf("the documented example does not load: %v", err)
	}
	if c.Site != "spoke-berlin" {
		t.Errorf("site = %q", c.Site)
	}
	if c.Postgres == nil || c.LDAP == nil {
		t.Fatal("example must configure both fronts")
	}
	if got := c.Postgres.MaxMessageSize; got != 64<<20 {
		t.Errorf("postgres.max_message_size = %s, want 64MiB", got)
	}
	if got := c.Link.ProbeInterval; got != 250*time.Millisecond {
		t.Errorf("link.probe_interval = %s", got)
	}
	if !filepath.IsAbs(c.Postgres.Auth.PasswordFile) {
		t.Errorf("password_file %q was not resolved against the config's directory", c.Postgres.Auth.PasswordFile)
	}
	if c.LDAP.Hubs[0].URL != "ldap://hub.example.org:389" {
		t.Errorf("ldap.hubs[0].url = %q", c.LDAP.Hubs[0].URL)
	}
}

// The example documents every default: a file that sets only the required
// keys must load to the same values.
func TestExampleDocumentsTheDefaults(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	minimal := `
site: spoke-berlin
postgres:
  replica: {address: 127.0.0.1:5433}
  hubs: [{address: "hub.example.org:5432"}]
  auth: {password_file: pw}
ldap:
  base_dn: dc=example,dc=org
  replica: {url: "ldap://127.0.0.1:3890"}
  hubs: [{url: "ldap://hub.example.org:389"}]
`
	got, err := ParseConfig(filepath.Join(dir, "min.yaml"), []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	want, err := LoadConfig("../testdata/spokeproxy.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got.Postgres.Auth.PasswordFile = want.Postgres.Auth.PasswordFile
	if g, w := *got.Postgres, *want.Postgres; !equalYAML(t, g, w) {
		t.Errorf("postgres defaults differ from the example:\n got %+v\nwant %+v", g, w)
	}
	if g, w := *got.LDAP, *want.LDAP; !equalYAML(t, g, w) {
		t.Errorf("ldap defaults differ from the example:\n got %+v\nwant %+v", g, w)
	}
	got.Postgres, got.LDAP, want.Postgres, want.LDAP = nil, nil, nil, nil
	if !equalYAML(t, *got, *want) {
		t.Errorf("defaults differ from the example:\n got %+v\nwant %+v", *got, *want)
	}
}

func equalYAML(t *testing.T, a, b any) bool {
	t.Helper()
	return fmtAny(a) == fmtAny(b)
}

func fmtAny(v any) string { return fmt.Sprintf("%+v", v) }

func TestUnknownKeysAreNamedWithTheirPath(t *testing.T) {
	src := `
site: s
admn:
  listen: 127.0.0.1:1
postgres:
  replica: {address: 127.0.0.1:5433}
  hubs:
    - address: h:5432
      adress: h:5433
  hub_tls: {mod: verify-full}
  auth: {password_file: /dev/null}
`
	_, err := ParseConfig("c.yaml", []byte(src))
	var cerr *ConfigError
	if !errors.As(err, &cerr) {
		t.Fatalf("err = %v, want *ConfigError", err)
	}
	for _, want := range []string{
		`admn (line 3): unknown key (did you mean "admin"?)`,
		`postgres.hubs[0].adress (line 9): unknown key (did you mean "address"?)`,
		`postgres.hub_tls.mod (line 10): unknown key (did you mean "mode"?)`,
	} {
		if !contains(cerr.Problems, want) {
			t.Errorf("missing problem %q in:\n%s", want, err)
		}
	}
	if len(cerr.Problems) != 3 {
		t.Errorf("want exactly the 3 unknown keys, got:\n%s", err)
	}
}

func TestValidationReportsEveryProblem(t *testing.T) {
	src := `
log: {level: loud}
link: {down_after: -1, probe_interval: 100ms, probe_timeout: 5s}
consistency: {mode: eventual, on_timeout: wait}
postgres:
  listen: "6432"
  hubs: [{address: "a:1"}, {address: "a:1"}]
  hub_tls: {mode: verify-full}
  auth: {password_file: /nonexistent/pw, query: "SELECT 1"}
  transactions: eager
  max_message_size: 12B
ldap:
  ldaps_listen: 127.0.0.1:636
  replica: {url: "http://x"}
  hubs: []
  proxy_auth: {password_file: pw}
  transactions: never
`
	_, err := ParseConfig("c.yaml", []byte(src))
	var cerr *ConfigError
	if !errors.As(err, &cerr) {
		t.Fatalf("err = %v, want *ConfigError", err)
	}
	for _, key := range []string{
		"site: required",
		"log.level:",
		"link.down_after:",
		"link.probe_timeout:",
		"consistency.mode:",
		"consistency.on_timeout:",
		"postgres.listen:",
		"postgres.replica.address: required",
		"postgres.hubs[1].address:",
		"postgres.hub_tls.ca_file: required with mode verify-full",
		"postgres.auth.password_file:",
		"postgres.auth.query:",
		"postgres.transactions:",
		"postgres.max_message_size:",
		"ldap.ldaps_listen: needs",
		"ldap.base_dn: required",
		"ldap.replica.url:",
		"ldap.hubs: at least one hub",
		"ldap.proxy_auth.bind_dn:",
		"ldap.transactions:",
	} {
		if !hasPrefix(cerr.Problems, key) {
			t.Errorf("no problem starting with %q in:\n%s", key, err)
		}
	}
}

func TestEmptyAndMalformedFiles(t *testing.T) {
	for name, src := range map[string]string{
		"empty":      "",
		"not yaml":   "site: [unclosed",
		"wrong type": "site: s\nlink: {down_after: many}\npostgres: {}\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseConfig("c.yaml", []byte(src))
			var cerr *ConfigError
			if !errors.As(err, &cerr) || len(cerr.Problems) == 0 {
				t.Fatalf("err = %v, want a *ConfigError with problems", err)
			}
		})
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"1024": 1024, "64MiB": 64 << 20, "4 KiB": 4 << 10, "1GB": 1 << 30, "7B": 7} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5MiB", "12TB", "MiB"} {
		if _, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) accepted", in)
		}
	}
}

func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s")
	os.WriteFile(p, []byte("hunter2\n"), 0o600)
	if s, err := ReadSecretFile(p); err != nil || s != "hunter2" {
		t.Fatalf("ReadSecretFile = %q, %v", s, err)
	}
	os.WriteFile(p, []byte("\n"), 0o600)
	if _, err := ReadSecretFile(p); err == nil {
		t.Fatal("an empty secret file was accepted")
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func hasPrefix(list []string, prefix string) bool {
	for _, v := range list {
		if strings.HasPrefix(v, prefix) {
			return true
		}
	}
	return false
}
