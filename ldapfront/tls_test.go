package ldapfront

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"

	"github.com/go-ldap/ldap/v3"

	"github.com/spokeproxy/spokeproxy/internal/testcert"
)

func TestStartTLSTerminatedByTheProxy(t *testing.T) {
	crt := testcert.New(t)
	r := startRig(t, nil, nil, func(c *Config) { c.TLS = &tls.Config{Certificates: []tls.Certificate{crt.TLS}} })
	c, err := ldap.DialURL("ldap://" + r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.StartTLS(&tls.Config{RootCAs: crt.Pool, ServerName: "127.0.0.1"}); err != nil {
		t.Fatalf("StartTLS: %v", err)
	}
	if err := c.Bind("uid=alice,dc=example,dc=org", "pw"); err != nil {
		t.Fatalf("bind over TLS: %v", err)
	}
	res, err := c.Search(ldap.NewSearchRequest("dc=example,dc=org", ldap.ScopeBaseObject, 0, 0, 0, false, "(objectClass=*)", nil, nil))
	if err != nil || len(res.Entries) != 1 {
		t.Fatalf("search over TLS: %v %v", res, err)
	}
	// The replica saw the bind in clear on its own connection: TLS ends at the proxy.
	if got := r.replica.requests(OpBindRequest); len(got) != 1 || got[0].Bind.DN != "uid=alice,dc=example,dc=org" {
		t.Fatalf("replica binds: %+v", got)
	}
	if err := c.StartTLS(&tls.Config{RootCAs: crt.Pool, ServerName: "127.0.0.1"}); err == nil {
		t.Fatal("a second StartTLS succeeded")
	}
}

func TestStartTLSNotConfigured(t *testing.T) {
	r := startRig(t, nil, nil, nil)
	c, err := ldap.DialURL("ldap://" + r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.StartTLS(&tls.Config{InsecureSkipVerify: true})
	if !ldap.IsErrorWithCode(err, ldap.LDAPResultProtocolError) {
		t.Fatalf("StartTLS without TLS configured: %v", err)
	}
}

func TestLDAPSListener(t *testing.T) {
	crt := testcert.New(t)
	r := startRig(t, nil, nil, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- r.srv.Serve(context.Background(), tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{crt.TLS}}))
	}()
	c, err := ldap.DialURL("ldaps://"+ln.Addr().String(), ldap.DialWithTLSConfig(&tls.Config{RootCAs: crt.Pool, ServerName: "127.0.0.1"}))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Bind("uid=alice,dc=example,dc=org", "pw"); err != nil {
		t.Fatalf("bind over LDAPS: %v", err)
	}
	c.Close()
	r.stop()
	if err := <-done; err != ErrServerClosed {
		t.Fatalf("Serve(LDAPS) after Shutdown: %v", err)
	}
}

func TestStartTLSToTheHub(t *testing.T) {
	crt := testcert.New(t)
	r := startRigTLS(t, nil, nil, &tls.Config{Certificates: []tls.Certificate{crt.TLS}}, func(c *Config) {
		c.HubStartTLS = true
		c.HubTLS = &tls.Config{RootCAs: crt.Pool}
	})
	c := r.client(t)
	c.send(simpleBind(1, "uid=alice,dc=example,dc=org", "pw"))
	c.result(1)
	c.send(modifyReq(2, "cn=x"))
	if code, diag := c.result(2); code != 0 {
		t.Fatalf("write over StartTLS to the hub: %d %q", code, diag)
	}
	// The fake hub only sees decrypted requests after its handshake: the bind
	// and the write arrived, so both ran inside TLS (StartTLS is answered by
	// the fake itself and not recorded as a request to handle).
	if b := r.hub.requests(OpBindRequest); len(b) != 1 {
		t.Fatalf("hub binds: %d", len(b))
	}
	ext := r.hub.requests(OpExtendedRequest)
	if len(ext) != 1 || ext[0].ExtOID != OIDStartTLS {
		t.Fatalf("hub extended requests: %+v", ext)
	}
	r.hub.mu.Lock()
	first := r.hub.seen[0]
	r.hub.mu.Unlock()
	if first.ExtOID != OIDStartTLS {
		t.Fatal("StartTLS was not the first request on the hub connection")
	}

	// A hub whose certificate is not trusted: the write is refused, not sent in clear.
	r2 := startRigTLS(t, nil, nil, &tls.Config{Certificates: []tls.Certificate{crt.TLS}}, func(c *Config) {
		c.HubStartTLS = true
		c.HubTLS = &tls.Config{RootCAs: x509.NewCertPool()}
	})
	c2 := r2.client(t)
	c2.send(modifyReq(1, "cn=x"))
	if code, _ := c2.result(1); code != ResultUnavailable {
		t.Fatalf("write with an untrusted hub certificate: %d", code)
	}
	if len(r2.hub.requests(OpModifyRequest)) != 0 {
		t.Fatal("the write reached an untrusted hub")
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{ReplicaURL: "ldap://127.0.0.1:389", BaseDN: "dc=x"}).Validate(); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	err := Config{ReplicaURL: "http://x", ProxyAuthDN: "cn=p", Consistency: 7, MaxOutstanding: -1, TLS: &tls.Config{}}.Validate()
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{"ReplicaURL", "BaseDN", "ProxyAuthPassword", "Consistency", "MaxOutstanding", "certificate"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}

func TestStartTLSToTheHubWithoutHubTLSConfig(t *testing.T) {
	crt := testcert.New(t)
	r := startRigTLS(t, nil, nil, &tls.Config{Certificates: []tls.Certificate{crt.TLS}}, func(c *Config) { c.HubStartTLS = true })
	c := r.client(t)
	c.send(modifyReq(1, "cn=x"))
	// System roots do not trust the test certificate: refused, and no panic.
	if code, _ := c.result(1); code != ResultUnavailable {
		t.Fatalf("write: %d", code)
	}
}
