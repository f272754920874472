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
