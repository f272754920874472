package pgfront

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func counterValue(_ *testing.T, c prometheus.Collector) float64 { return testutil.ToFloat64(c) }
