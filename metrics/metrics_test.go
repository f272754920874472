package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestFrontProtocolLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := NewFront(reg)
	pg := f.Protocol(Postgres)
	ldap := f.Protocol(LDAP)

	pg.Request(RouteLocal, "read")
	pg.Request(RouteLocal, "read")
	ldap.Request(RouteHub, "write")
	pg.WritesRefused.Inc()

	want := `
# HELP spokeproxy_requests_total Requests (PostgreSQL queries or batches, LDAP operations) by where they were routed and what kind they are.
# TYPE spokeproxy_requests_total counter
spokeproxy_requests_total{kind="read",protocol="pg",route="local"} 2
spokeproxy_requests_total{kind="write",protocol="ldap",route="hub"} 1
# HELP spokeproxy_writes_refused_total Writes refused because no hub was usable (link down, split brain or drill).
# TYPE spokeproxy_writes_refused_total counter
spokeproxy_writes_refused_total{protocol="ldap"} 0
spokeproxy_writes_refused_total{protocol="pg"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"spokeproxy_requests_total", "spokeproxy_writes_refused_total"); err != nil {
		t.Fatal(err)
	}
}

func TestFrontRegistersOncePerRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewFront(reg)
	defer func() {
		if recover() == nil {
			t.Fatal("registering the front metrics twice in one registry did not panic")
		}
	}()
	NewFront(reg)
}

func TestBuildInfo(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewBuildInfo(reg, "v1.2.3")
	n, err := testutil.GatherAndCount(reg, "spokeproxy_build_info")
	if err != nil || n != 1 {
		t.Fatalf("build info series = %d, %v; want 1", n, err)
	}
}
