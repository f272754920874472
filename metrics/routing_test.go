package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRoutingPulledState(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := NewRouting(reg)
	r.InitProtocol(Postgres)
	r.InitProtocol(LDAP)
	pg := RoutingState{Protocol: Postgres, HubUp: true, HubEndpoint: "hub:5432", ReplicaUp: true, LagKnown: true, LagSeconds: 0.25, LagBytes: 4096}
	r.Watch(func() RoutingState { return pg })
	r.Watch(func() RoutingState {
		return RoutingState{Protocol: LDAP, HubUp: false, ReplicaUp: true, LagBytes: -1, DrillActive: true}
	})
	r.Transition(Postgres, StateDown)
	r.ProbeDuration(LDAP, TargetHub).Observe(0.01)

	err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP spokeproxy_drill_active 1 while an operator drill forces the hub down for this proxy.
# TYPE spokeproxy_drill_active gauge
spokeproxy_drill_active{protocol="ldap"} 1
spokeproxy_drill_active{protocol="pg"} 0
# HELP spokeproxy_hub_info The current writable hub endpoint; the value is always 1.
# TYPE spokeproxy_hub_info gauge
spokeproxy_hub_info{endpoint="hub:5432",protocol="pg"} 1
# HELP spokeproxy_hub_up 1 if a writable hub is usable for this protocol (0 while down, split brain or drill).
# TYPE spokeproxy_hub_up gauge
spokeproxy_hub_up{protocol="ldap"} 0
spokeproxy_hub_up{protocol="pg"} 1
# HELP spokeproxy_link_transitions_total Changes of the hub link state (to up or down), per protocol, drills included.
# TYPE spokeproxy_link_transitions_total counter
spokeproxy_link_transitions_total{protocol="ldap",to="down"} 0
spokeproxy_link_transitions_total{protocol="ldap",to="up"} 0
spokeproxy_link_transitions_total{protocol="pg",to="down"} 1
spokeproxy_link_transitions_total{protocol="pg",to="up"} 0
# HELP spokeproxy_replica_up 1 if the local replica answers probes.
# TYPE spokeproxy_replica_up gauge
spokeproxy_replica_up{protocol="ldap"} 1
spokeproxy_replica_up{protocol="pg"} 1
# HELP spokeproxy_replication_lag_bytes Hub WAL position minus the local replica's replay position (PostgreSQL).
# TYPE spokeproxy_replication_lag_bytes gauge
spokeproxy_replication_lag_bytes{protocol="pg"} 4096
# HELP spokeproxy_replication_lag_seconds Time since the local replica last reached a hub position sampled at a known time (0 when it holds the latest sample while the hub is up).
# TYPE spokeproxy_replication_lag_seconds gauge
spokeproxy_replication_lag_seconds{protocol="pg"} 0.25
`), "spokeproxy_drill_active", "spokeproxy_hub_info", "spokeproxy_hub_up", "spokeproxy_link_transitions_total",
		"spokeproxy_replica_up", "spokeproxy_replication_lag_bytes", "spokeproxy_replication_lag_seconds")
	if err != nil {
		t.Fatal(err)
	}
	// State is pulled at scrape time, never cached.
	pg.HubUp = false
	if got := testutil.ToFloat64(gaugeOf(t, reg, "spokeproxy_hub_up", Postgres)); got != 0 {
		t.Fatalf("hub_up after the state changed: %v", got)
	}
	if n := testutil.CollectAndCount(r.probeDuration); n != 4 {
		t.Fatalf("%d probe duration series, want hub and replica for both protocols", n)
	}
	problems, err := testutil.CollectAndLint(r)
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
}

// gaugeOf re-exposes one series of a gathered gauge for testutil.ToFloat64.
func gaugeOf(t *testing.T, reg *prometheus.Registry, name, protocol string) prometheus.Gauge {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "protocol" && lp.GetValue() == protocol {
					g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "copy"})
					g.Set(m.GetGauge().GetValue())
					return g
				}
			}
		}
	}
	t.Fatalf("no %s{protocol=%q}", name, protocol)
	return nil
}
