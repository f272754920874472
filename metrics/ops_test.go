package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestOpsHubDetail(t *testing.T) {
	reg := prometheus.NewRegistry()
	o := NewOps(reg)
	o.WatchHub(func() HubDetail {
		return HubDetail{Protocol: Postgres, DownReason: HubReasonSplitBrain, WritableEndpoints: 2}
	})
	o.WatchHub(func() HubDetail { return HubDetail{Protocol: LDAP, WritableEndpoints: 1} })
	want := `
# HELP spokeproxy_hub_writable_endpoints Hub candidates that answer probes and are writable now; more than 1 for PostgreSQL is a split brain.
# TYPE spokeproxy_hub_writable_endpoints gauge
spokeproxy_hub_writable_endpoints{protocol="ldap"} 1
spokeproxy_hub_writable_endpoints{protocol="pg"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "spokeproxy_hub_writable_endpoints"); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	ones := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "spokeproxy_hub_down_reason" {
			continue
		}
		if n := len(mf.GetMetric()); n != 2*len(HubReasons) {
			t.Errorf("spokeproxy_hub_down_reason has %d series, want every reason for both protocols (%d)", n, 2*len(HubReasons))
		}
		for _, m := range mf.GetMetric() {
			if m.GetGauge().GetValue() == 1 {
				var key []string
				for _, l := range m.GetLabel() {
					key = append(key, l.GetValue())
				}
				ones[strings.Join(key, "/")] = true
			}
		}
	}
	if len(ones) != 1 || !ones["pg/split_brain"] {
		t.Errorf("series at 1: %v, want only pg/split_brain", ones)
	}
}

func TestOpsReloads(t *testing.T) {
	reg := prometheus.NewRegistry()
	o := NewOps(reg)
	if got := testutil.ToFloat64(o.lastReloadOK); got != 1 {
		t.Fatalf("last reload successful = %v at start, want 1", got)
	}
	o.Reloaded(false)
	if got := testutil.ToFloat64(o.lastReloadOK); got != 0 {
		t.Errorf("last reload successful = %v after a failure", got)
	}
	o.Reloaded(true)
	o.Reloaded(true)
	if got := testutil.ToFloat64(o.reloads.WithLabelValues(ReloadSuccess)); got != 2 {
		t.Errorf("reloads{success} = %v, want 2", got)
	}
	if got := testutil.ToFloat64(o.reloads.WithLabelValues(ReloadFailure)); got != 1 {
		t.Errorf("reloads{failure} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(o.lastReloadOK); got != 1 {
		t.Errorf("last reload successful = %v after a success", got)
	}
}
