package ldapfront

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	toxiclient "github.com/Shopify/toxiproxy/v2/client"
	"github.com/go-ldap/ldap/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/spokeproxy/spokeproxy/lab"
	"github.com/spokeproxy/spokeproxy/routing"
)

// TestLabConsistencyOverASlowWAN checks read-your-writes (session) and held
// acknowledgements (site) with 25 ms each way on the WAN, and a write in
// flight when the link is cut.
func TestLabConsistencyOverASlowWAN(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	session := startFront(t, l, nil)
	site := startFront(t, l, func(c *Config) { c.Consistency = routing.ConsistencySite })
	if err := l.AddLatency(lab.LinkLDAP, 25*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.ResetWAN() })

	t.Run("session reads its own writes", func(t *testing.T) {
		c := session.dial(t, lab.UserDN, lab.UserPassword)
		for i := range 10 {
			desc := uniqueName(fmt.Sprintf("s%d", i))
			m := ldap.NewModifyRequest(lab.UserDN, nil)
			m.Replace("description", []string{desc})
			if err := c.Modify(m); err != nil {
				t.Fatal(err)
			}
			if got := searchOne(t, c, lab.UserDN, "description").GetAttributeValue("description"); got != desc {
				t.Fatalf("write %d: read %q, want %q", i, got, desc)
			}
		}
		if got := metricValue(t, session.reg, "spokeproxy_ldap_operations_total", map[string]string{"op": "search", "route": "hub"}); got != 0 {
			t.Fatalf("%v reads went to the hub; read-your-writes should wait for the replica", got)
		}
		if got := metricValue(t, session.reg, "spokeproxy_ldap_operations_total", map[string]string{"op": "search", "route": "local"}); got != 10 {
			t.Fatalf("local reads = %v, want 10", got)
		}
		waits := metricValue(t, session.reg, "spokeproxy_causal_wait_seconds", nil)
		t.Logf("%v of 10 reads waited for the replica", waits)
		if testutil.ToFloat64(session.m.WANBytesFromHub) == 0 {
			t.Fatal("no WAN bytes counted for the writes")
		}
	})

	t.Run("site mode acknowledges once the replica has the write", func(t *testing.T) {
		c := site.dial(t, lab.UserDN, lab.UserPassword)
		direct, err := ldap.DialURL(l.ReplicaLDAPURL())
		if err != nil {
			t.Fatal(err)
		}
		defer direct.Close()
		for i := range 5 {
			desc := uniqueName(fmt.Sprintf("site%d", i))
			m := ldap.NewModifyRequest(lab.UserDN, nil)
			m.Replace("description", []string{desc})
			if err := c.Modify(m); err != nil {
				t.Fatal(err)
			}
			// Any client at the site, even one reading the consumer directly,
			// sees the write once it is acknowledged.
			if got := searchOne(t, direct, lab.UserDN, "description").GetAttributeValue("description"); got != desc {
				t.Fatalf("write %d acknowledged but the replica has %q, want %q", i, got, desc)
			}
		}
	})

	// The hub connection dies between a Delete's answer and the contextCSN
	// read behind it: the session's next read asks the hub (on a new
	// connection) for its contextCSN and waits for the replica to have it,
	// rather than reading the entry the replica may still hold (its
	// syncrepl connection, on the same link, was cut too).
	t.Run("contextCSN read lost after a delete", func(t *testing.T) {
		c := session.dial(t, lab.AdminDN, l.AdminPassword())
		add := addPerson(uniqueName("csn-lost"))
		if err := c.Add(add); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitLDAPReplicaCaughtUp(context.Background(), 5*time.Second); err != nil {
			t.Fatal(err)
		}
		p, err := l.Toxiproxy().Proxy(lab.LinkLDAP)
		if err != nil {
			t.Fatal(err)
		}
		// The DelResponse (14 bytes with a message ID below 128) passes,
		// what follows on every connection of the link is cut.
		if _, err := p.AddToxic("cut_after_delete", "limit_data", "downstream", 1, toxiclient.Attributes{"bytes": 14}); err != nil {
			t.Fatal(err)
		}
		derr := c.Del(ldap.NewDelRequest(add.DN, nil))
		if err := p.RemoveToxic("cut_after_delete"); err != nil {
			t.Fatal(err)
		}
		if derr != nil {
			t.Fatalf("delete: %v", derr)
		}
		session.waitHub(t, true)
		_, err = c.Search(ldap.NewSearchRequest(add.DN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"cn"}, nil))
		if !ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
			t.Fatalf("read of the deleted entry: %v, want noSuchObject (32)", err)
		}
	})

	t.Run("write in flight when the link is cut", func(t *testing.T) {
		rc := dialRaw(t, session.addr)
		rc.send(simpleBind(1, lab.UserDN, lab.UserPassword))
		if code, _ := rc.result(1); code != 0 {
			t.Fatalf("bind: %d", code)
		}
		rc.send(modifyReq(2, lab.UserDN)) // opens the hub connection: 2 round trips
		if code, _ := rc.result(2); code != 0 {
			t.Fatalf("warm-up modify: %d", code)
		}
		// The read after the cut must find the session's write on the replica.
		if err := l.WaitLDAPReplicaCaughtUp(context.Background(), 5*time.Second); err != nil {
			t.Fatal(err)
		}
		// Slow the hub's answers down so that the cut surely comes first.
		p, err := l.Toxiproxy().Proxy(lab.LinkLDAP)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.AddToxic("slow_answers", "latency", "downstream", 1, toxiclient.Attributes{"latency": 500}); err != nil {
			t.Fatal(err)
		}
		rc.send(modifyReq(3, lab.UserDN))
		time.Sleep(20 * time.Millisecond) // the request is on the wire, its response 500 ms away
		cut := time.Now()
		if err := l.SetLink(lab.LinkLDAP, false); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.ResetWAN(); session.waitHub(t, true) })
		code, diag := rc.result(3)
		took := time.Since(cut)
		if code != ResultOther || !strings.Contains(diag, "outcome unknown") {
			t.Fatalf("write in flight at the cut: %d %q", code, diag)
		}
		t.Logf("in-flight write answered 80 %v after the cut", took.Round(time.Millisecond))
		if took > time.Second {
			t.Errorf("the data path took %v to notice a reset link (target 100 ms)", took)
		}
		session.waitHub(t, false)
		rc.send(modifyReq(4, lab.UserDN))
		if code, _ := rc.result(4); code != ResultUnavailable {
			t.Fatalf("write after the cut: %d", code)
		}
		rc.send(searchReq(5, lab.UserDN))
		if code, _ := rc.result(5); code != 0 {
			t.Fatalf("read after the cut: %d", code)
		}
	})
}

// TestLabSilentLink checks that a write in flight when the WAN goes silent
// (a blackhole: no RST, and toxiproxy still ACKs, so no TCP timeout fires) is
// answered 80 once the Site's probes judge the hub down. It has a lab of its
// own: toxiproxy's embedded server can panic adding a toxic to links that
// lived through earlier toxic removals.
func TestLabSilentLink(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	session := startFront(t, l, func(c *Config) { c.DialTimeout = 10 * time.Second })
	rc := dialRaw(t, session.addr)
	rc.send(simpleBind(1, lab.UserDN, lab.UserPassword))
	rc.result(1)
	rc.send(modifyReq(2, lab.UserDN))
	if code, diag := rc.result(2); code != 0 {
		t.Fatalf("warm-up modify: %d %q", code, diag)
	}
	// A blackhole: no RST, no FIN; toxiproxy still ACKs, so no TCP timeout
	// will ever fire. Only the Site's probes can tell.
	if err := l.Blackhole(lab.LinkLDAP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.ResetWAN(); session.waitHub(t, true) })
	start := time.Now()
	rc.send(modifyReq(3, lab.UserDN))
	code, diag := rc.result(3)
	took := time.Since(start)
	if code != ResultOther || !strings.Contains(diag, "outcome unknown") {
		t.Fatalf("write in flight on a silent link: %d %q", code, diag)
	}
	t.Logf("in-flight write on a blackholed link answered 80 after %v (probes every 100 ms, timeout 1 s, down after 2)", took.Round(time.Millisecond))
	if took > 4*time.Second {
		t.Errorf("took %v: the probes' detection time is about 2 s here", took)
	}
	// A client that needs a new hub connection on the silent link: the TCP
	// connect succeeds, its bind would hang until DialTimeout (10 s here); the
	// Site's verdict ends it sooner.
	fresh := dialRaw(t, session.addr)
	fresh.send(simpleBind(1, lab.BobDN, lab.BobPassword))
	if code, _ := fresh.result(1); code != 0 {
		t.Fatalf("bind on the replica during the blackhole: %d", code)
	}
	_ = l.ResetWAN()
	session.waitHub(t, true)
	if err := l.Blackhole(lab.LinkLDAP); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	fresh.send(modifyReq(2, lab.BobDN))
	code, diag = fresh.result(2)
	took = time.Since(start)
	if code != ResultUnavailable {
		t.Fatalf("write needing a new hub connection on a silent link: %d %q", code, diag)
	}
	t.Logf("write needing a new hub connection on a blackholed link refused after %v", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("took %v: the dial should end when the Site judges the hub down, not at DialTimeout", took)
	}
	rc.send(modifyReq(4, lab.UserDN))
	if code, _ := rc.result(4); code != ResultUnavailable {
		t.Fatalf("next write: %d", code)
	}
}

// metricValue sums the counter values, or histogram sample counts, of the
// series of name whose labels include want.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// TestLabReplicaDown stops the spoke's consumer: reads go to the hub (bound as
// the client) while the link is up, and get 52 once it is cut too.
func TestLabReplicaDown(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	c := f.dial(t, lab.UserDN, lab.UserPassword)
	searchOne(t, c, lab.UserDN, "cn")
	ctx := context.Background()
	if err := l.StopReplicaLDAP(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.StartReplicaLDAP(ctx); err != nil {
			t.Errorf("restart replica: %v", err)
		}
	})
	if got := searchOne(t, c, lab.UserDN, "cn").GetAttributeValue("cn"); got != "Alice Example" {
		t.Fatalf("read from the hub while the replica is down: %q", got)
	}
	// A new client binds (on the hub) and reads too.
	c2 := f.dial(t, lab.BobDN, lab.BobPassword)
	searchOne(t, c2, lab.BobDN, "cn")
	if got := metricValue(t, f.reg, "spokeproxy_ldap_operations_total", map[string]string{"op": "search", "route": "hub"}); got < 2 {
		t.Fatalf("reads routed to the hub: %v", got)
	}
	f.cut(t)
	_, err := c.Search(ldap.NewSearchRequest(lab.UserDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", nil, nil))
	wantCode(t, err, ldap.LDAPResultUnavailable, "")
}
