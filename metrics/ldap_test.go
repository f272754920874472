package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestLDAPOperationCountsBoth(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewLDAP(reg, nil)
	m.Operation("search", RouteLocal, "read")
	m.Operation("add", RouteRefuse, "write")
	m.Operation("add", RouteRefuse, "write")
	want := `
# HELP spokeproxy_ldap_operations_total LDAP operations by operation type (bind, search, add, modify, extended, ...) and route (local, hub, refuse).
# TYPE spokeproxy_ldap_operations_total counter
spokeproxy_ldap_operations_total{op="add",route="refuse"} 2
spokeproxy_ldap_operations_total{op="search",route="local"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "spokeproxy_ldap_operations_total"); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.f.requests.WithLabelValues(LDAP, RouteRefuse, "write")); got != 2 {
		t.Fatalf("shared requests_total{ldap,refuse,write} = %v, want 2", got)
	}
}

func TestNewLDAPSharesFront(t *testing.T) {
	reg := prometheus.NewRegistry()
	front := NewFront(reg)
	pg := front.Protocol(Postgres)
	m := NewLDAP(reg, front) // must not register the shared names twice
	m.WritesRefused.Inc()
	pg.WritesRefused.Inc()
	pg.WritesRefused.Inc()
	if got := testutil.ToFloat64(m.WritesRefused); got != 1 {
		t.Fatalf("ldap writes refused = %v, want 1", got)
	}
}

func TestOperationCounterAndDurationsResolvedOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewLDAP(reg, nil)
	c := m.OperationCounter("search", RouteLocal, "read")
	c.Inc()
	c.Inc()
	m.Operation("search", RouteLocal, "read")
	if got := testutil.ToFloat64(m.operations.WithLabelValues("search", RouteLocal)); got != 3 {
		t.Fatalf("operations_total{search,local} = %v, want 3", got)
	}
	if got := testutil.ToFloat64(m.f.requests.WithLabelValues(LDAP, RouteLocal, "read")); got != 3 {
		t.Fatalf("requests_total{ldap,local,read} = %v, want 3", got)
	}
	m.RequestDuration(RouteLocal).Observe(0.001)
	m.RequestDuration(RouteHub).Observe(0.002)
	m.RequestDuration(RouteHub).Observe(0.003)
	m.RequestDuration(RouteRefuse).Observe(0.004)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "spokeproxy_request_duration_seconds" {
			continue
		}
		for _, pm := range mf.GetMetric() {
			for _, l := range pm.GetLabel() {
				if l.GetName() == "route" {
					got[l.GetValue()] = pm.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	for route, want := range map[string]uint64{RouteLocal: 1, RouteHub: 2, RouteRefuse: 1} {
		if got[route] != want {
			t.Fatalf("request_duration_seconds{ldap,%s} count = %d, want %d (all: %v)", route, got[route], want, got)
		}
	}
}
