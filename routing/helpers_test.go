package routing_test

import (
	"io"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func stringsReader(s string) io.Reader { return strings.NewReader(s) }

// transitionCount reads spokeproxy_link_transitions_total{to=to} from reg.
func transitionCount(t *testing.T, reg *prometheus.Registry, to string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "spokeproxy_link_transitions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "to" && lp.GetValue() == to {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no transitions series to %q", to)
	return 0
}
