package ldapfront

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spokeproxy/spokeproxy/internal/sitetest"
	"github.com/spokeproxy/spokeproxy/lab"
	"github.com/spokeproxy/spokeproxy/metrics"
	"github.com/spokeproxy/spokeproxy/routing"
)

// front is a Server on 127.0.0.1:0 in front of a lab, with its routing Site.
type front struct {
	addr string
	url  string
	site *routing.Site
	srv  *Server
	m    *metrics.LDAPFront
	reg  *prometheus.Registry
	lab  *lab.Lab
}

func startFront(t testing.TB, l *lab.Lab, mutate func(*Config)) *front {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	reg := prometheus.NewRegistry()
	policy := routing.DefaultPolicy()
	site := sitetest.Start(t, routing.Config{
		Protocol: routing.LDAP,
		Hubs:     []string{l.WANLDAPURL()},
		Replica:  l.ReplicaLDAPURL(),
		BaseDN:   lab.BaseDN,
		Policy:   policy,
		Logger:   logger,
	})
	ctx, cancel := context.WithCancel(context.Background())
	cfg := Config{ReplicaURL: l.ReplicaLDAPURL(), BaseDN: lab.BaseDN, Consistency: policy.Consistency, WaitTimeout: policy.WaitTimeout}
	if mutate != nil {
		mutate(&cfg)
	}
	m := metrics.NewLDAP(reg, nil)
	srv := New(cfg, site, m, logger)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(ctx, ln) }()
	f := &front{addr: ln.Addr().String(), url: "ldap://" + ln.Addr().String(), site: site, srv: srv, m: m, reg: reg, lab: l}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		cancel()
		if err := <-serveDone; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	f.waitHub(t, true)
	return f
}

// waitHub waits until the Site sees the hub up (and the replica up) or the hub down.
func (f *front) waitHub(t testing.TB, up bool) { t.Helper(); f.waitSite(t, up, up) }

// waitSite waits until the Site sees the hub up or down, and the replica up
// when replicaUp.
func (f *front) waitSite(t testing.TB, up, replicaUp bool) {
	t.Helper()
	sitetest.Wait(t, f.site, up, replicaUp)
}

// cut disables the WAN link to the hub and waits until the Site sees it down;
// the link is restored at cleanup.
func (f *front) cut(t *testing.T) {
	t.Helper()
	if err := f.lab.SetLink(lab.LinkLDAP, false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.lab.ResetWAN(); err != nil {
			t.Errorf("reset WAN: %v", err)
		}
		f.waitSite(t, true, false)
	})
	f.waitHub(t, false)
}

func (f *front) dial(t testing.TB, dn, pw string) *ldap.Conn {
	t.Helper()
	c, err := ldap.DialURL(f.url)
	if err != nil {
		t.Fatalf("dial proxy: %v", err)
	}
	c.SetTimeout(10 * time.Second)
	t.Cleanup(func() { c.Close() })
	if dn != "" {
		if err := c.Bind(dn, pw); err != nil {
			t.Fatalf("bind %s through the proxy: %v", dn, err)
		}
	}
	return c
}

var uniq atomic.Int64

func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano()%1e9, uniq.Add(1))
}

func searchOne(t testing.TB, c *ldap.Conn, dn string, attrs ...string) *ldap.Entry {
	t.Helper()
	res, err := c.Search(ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", attrs, nil))
	if err != nil {
		t.Fatalf("search %s: %v", dn, err)
	}
	if len(res.Entries) != 1 {
		t.Fatalf("search %s: %d entries", dn, len(res.Entries))
	}
	return res.Entries[0]
}

func wantCode(t *testing.T, err error, code uint16, contains string) {
	t.Helper()
	if !ldap.IsErrorWithCode(err, code) {
		t.Fatalf("got %v, want LDAP result %d", err, code)
	}
	if contains != "" && !strings.Contains(err.Error(), contains) {
		t.Fatalf("error %q does not mention %q", err, contains)
	}
}

func addPerson(cn string) *ldap.AddRequest {
	a := ldap.NewAddRequest("cn="+cn+",ou=people,"+lab.BaseDN, nil)
	a.Attribute("objectClass", []string{"person"})
	a.Attribute("cn", []string{cn})
	a.Attribute("sn", []string{"Test"})
	return a
}

// TestLabGoLDAP runs go-ldap through the proxy against the real lab: binds,
// reads, writes with read-your-writes, and the link cut.
func TestLabGoLDAP(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)

	t.Run("read your writes", func(t *testing.T) {
		c := f.dial(t, lab.UserDN, lab.UserPassword)
		for i := range 20 {
			desc := fmt.Sprintf("rev %d %s", i, uniqueName("d"))
			m := ldap.NewModifyRequest(lab.UserDN, nil)
			m.Replace("description", []string{desc})
			if err := c.Modify(m); err != nil {
				t.Fatalf("modify through proxy: %v", err)
			}
			if got := searchOne(t, c, lab.UserDN, "description").GetAttributeValue("description"); got != desc {
				t.Fatalf("read after write %d: got %q, want %q", i, got, desc)
			}
		}
		c = f.dial(t, lab.AdminDN, l.AdminPassword())
		cn := uniqueName("rw")
		if err := c.Add(addPerson(cn)); err != nil {
			t.Fatalf("add: %v", err)
		}
		searchOne(t, c, "cn="+cn+",ou=people,"+lab.BaseDN, "cn")
		if err := c.Del(ldap.NewDelRequest("cn="+cn+",ou=people,"+lab.BaseDN, nil)); err != nil {
			t.Fatalf("delete: %v", err)
		}
		_, err := c.Search(ldap.NewSearchRequest("cn="+cn+",ou=people,"+lab.BaseDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", nil, nil))
		wantCode(t, err, ldap.LDAPResultNoSuchObject, "")
	})

	t.Run("post-read kept when the client asks", func(t *testing.T) {
		c := f.dial(t, lab.UserDN, lab.UserPassword)
		m := ldap.NewModifyRequest(lab.UserDN, []ldap.Control{ldap.NewControlString(OIDPostRead, false, string(postReadControl().Value))})
		m.Replace("description", []string{uniqueName("pr")})
		res, err := c.ModifyWithResult(m)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, ctl := range res.Controls {
			if ctl.GetControlType() == OIDPostRead {
				found = true
			}
		}
		if !found {
			t.Fatalf("client asked for post-read and got controls %v", res.Controls)
		}
		m = ldap.NewModifyRequest(lab.UserDN, nil)
		m.Replace("description", []string{uniqueName("pr")})
		res, err = c.ModifyWithResult(m)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Controls) != 0 {
			t.Fatalf("proxy's own post-read leaked to the client: %v", res.Controls)
		}
	})

	t.Run("bad password", func(t *testing.T) {
		c, err := ldap.DialURL(f.url)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		wantCode(t, c.Bind(lab.UserDN, "wrong"), ldap.LDAPResultInvalidCredentials, "")
		// Still usable, anonymous: reads work, writes are refused by the hub's ACL.
		searchOne(t, c, lab.BaseDN, "dc")
	})

	t.Run("anonymous write refused by the hub", func(t *testing.T) {
		c := f.dial(t, "", "")
		m := ldap.NewModifyRequest(lab.UserDN, nil)
		m.Replace("description", []string{"anon"})
		err := c.Modify(m)
		if !ldap.IsErrorWithCode(err, ldap.LDAPResultInsufficientAccessRights) && !ldap.IsErrorWithCode(err, ldap.LDAPResultStrongAuthRequired) {
			t.Fatalf("anonymous modify: got %v, want 50 from the hub", err)
		}
	})

	t.Run("link cut", func(t *testing.T) {
		c := f.dial(t, lab.UserDN, lab.UserPassword)
		m := ldap.NewModifyRequest(lab.UserDN, nil)
		m.Replace("description", []string{uniqueName("before")})
		if err := c.Modify(m); err != nil { // opens the hub connection
			t.Fatal(err)
		}
		// Let the consumer have that write before the cut: a session whose
		// last write never reached the replica cannot read its own write
		// during the outage, and gets 52 after wait_timeout (routing's policy).
		if err := f.lab.WaitLDAPReplicaCaughtUp(context.Background(), 5*time.Second); err != nil {
			t.Fatal(err)
		}
		f.cut(t)
		searchOne(t, c, lab.UserDN, "cn") // reads go on locally
		m.Replace("description", []string{uniqueName("during")})
		wantCode(t, c.Modify(m), ldap.LDAPResultUnavailable, "read-only")
		wantCode(t, c.Add(addPerson(uniqueName("cut"))), ldap.LDAPResultUnavailable, l.WANLDAPURL())
		searchOne(t, c, lab.UserDN, "cn") // and the connection is still usable
		// A new client binds and reads during the outage.
		c2 := f.dial(t, lab.BobDN, lab.BobPassword)
		searchOne(t, c2, lab.BobDN, "cn")
		wantCode(t, c2.Del(ldap.NewDelRequest("cn=x,"+lab.BaseDN, nil)), ldap.LDAPResultUnavailable, "")
	})

	t.Run("writes resume after the link returns", func(t *testing.T) {
		c := f.dial(t, lab.UserDN, lab.UserPassword)
		f.cut(t)
		m := ldap.NewModifyRequest(lab.UserDN, nil)
		m.Replace("description", []string{"x"})
		wantCode(t, c.Modify(m), ldap.LDAPResultUnavailable, "")
		if err := f.lab.ResetWAN(); err != nil {
			t.Fatal(err)
		}
		f.waitHub(t, true)
		if err := c.Modify(m); err != nil {
			t.Fatalf("modify after the link returned: %v", err)
		}
	})
}
