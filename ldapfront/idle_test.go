package ldapfront

import (
	"testing"
	"time"

	"github.com/spokeproxy/spokeproxy/lab"
)

// A hub slapd that closes idle connections (idletimeout) does not make
// the site read-only: the proxy probes the hub before judging it, the hub
// answers, and the session's next write opens a new hub connection.
func TestLabHubIdleTimeout(t *testing.T) {
	l := lab.ForTest(t, lab.Options{HubLDAPIdleTimeout: time.Second})
	f := startFront(t, l, nil)
	c := f.dial(t, lab.AdminDN, l.AdminPassword())
	if err := c.Add(addPerson(uniqueName("idle"))); err != nil {
		t.Fatal(err)
	}
	hubConns := func() float64 {
		return metricValue(t, f.reg, "spokeproxy_backend_connections", map[string]string{"target": "hub"})
	}
	if n := hubConns(); n != 1 {
		t.Fatalf("%v hub connections after a write, want 1", n)
	}
	wentDown := false
	sample := func() {
		if f.site.HubUnavailable() != nil {
			wentDown = true
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	for hubConns() != 0 {
		if time.Since(start) > 10*time.Second {
			t.Fatal("the hub did not close the idle connection within 10s of its 1s idletimeout")
		}
		sample()
	}
	t.Logf("the hub closed the idle connection after %s", time.Since(start).Round(time.Millisecond))
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		sample() // the probe that the close asked for, and its verdict
	}
	if wentDown {
		t.Error("the hub's idle timeout made the site read-only for a moment")
	}
	if err := c.Add(addPerson(uniqueName("idle"))); err != nil {
		t.Fatalf("write after the hub closed the idle connection: %v", err)
	}
}
