package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Hub-down reason label values of spokeproxy_hub_down_reason: why writes
// are refused. Bounded: one of these, never an endpoint or error text.
const (
	HubReasonUnreachable = "unreachable" // no hub candidate answers (link down)
	HubReasonNoPrimary   = "no_primary"  // hubs answer but none is writable
	HubReasonSplitBrain  = "split_brain" // two or more PostgreSQL hubs claim to be primary
	HubReasonDrill       = "drill"       // an operator drill forces the hub down
	HubReasonStarting    = "starting"    // not probed yet
)

// HubReasons lists every hub-down reason label value.
var HubReasons = []string{HubReasonUnreachable, HubReasonNoPrimary, HubReasonSplitBrain, HubReasonDrill, HubReasonStarting}

// Reload result label values of spokeproxy_config_reloads_total.
const (
	ReloadSuccess = "success"
	ReloadFailure = "failure"
)

// HubDetail is one protocol's hub state in the detail alert rules need,
// pulled at scrape time from the proxy.
type HubDetail struct {
	Protocol string
	// DownReason is one of HubReasons while writes are refused, "" while a
	// hub takes writes.
	DownReason string
	// WritableEndpoints counts hub candidates that are up and writable now
	// (more than one PostgreSQL hub is a split brain).
	WritableEndpoints int
}

// Ops holds the metrics of the process's own lifecycle (config reloads) and
// the hub detail behind the split-brain and why-refused alerts.
type Ops struct {
	reloads        *prometheus.CounterVec
	lastReloadOK   prometheus.Gauge
	lastReloadTime prometheus.Gauge

	downReason, writable *prometheus.Desc

	mu      sync.Mutex // guards sources
	sources []func() HubDetail
}

// NewOps registers the operations metrics with reg. The last reload gauges
// start as a successful load now (the config the process started with).
func NewOps(reg prometheus.Registerer) *Ops {
	o := &Ops{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spokeproxy_config_reloads_total",
			Help: "Configuration reloads (SIGHUP) by result; a failed reload keeps the running configuration.",
		}, []string{"result"}),
		lastReloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "spokeproxy_config_last_reload_successful",
			Help: "1 if the last configuration load (start or SIGHUP) succeeded, 0 if it was rejected.",
		}),
		lastReloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "spokeproxy_config_last_reload_success_timestamp_seconds",
			Help: "Unix time of the last successful configuration load (start or SIGHUP).",
		}),
		downReason: prometheus.NewDesc("spokeproxy_hub_down_reason",
			"1 for the reason writes are refused now (unreachable, no_primary, split_brain, drill, starting), 0 for the others; all 0 while a hub takes writes.",
			[]string{"protocol", "reason"}, nil),
		writable: prometheus.NewDesc("spokeproxy_hub_writable_endpoints",
			"Hub candidates that answer probes and are writable now; more than 1 for PostgreSQL is a split brain.",
			[]string{"protocol"}, nil),
	}
	for _, r := range []string{ReloadSuccess, ReloadFailure} {
		o.reloads.WithLabelValues(r)
	}
	o.lastReloadOK.Set(1)
	o.lastReloadTime.SetToCurrentTime()
	reg.MustRegister(o.reloads, o.lastReloadOK, o.lastReloadTime, o)
	return o
}

// Reloaded records a reload's result.
func (o *Ops) Reloaded(ok bool) {
	if ok {
		o.reloads.WithLabelValues(ReloadSuccess).Inc()
		o.lastReloadOK.Set(1)
		o.lastReloadTime.SetToCurrentTime()
		return
	}
	o.reloads.WithLabelValues(ReloadFailure).Inc()
	o.lastReloadOK.Set(0)
}

// WatchHub adds a source of hub detail, read at every scrape.
func (o *Ops) WatchHub(detail func() HubDetail) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sources = append(o.sources, detail)
}

// Describe implements prometheus.Collector for the pulled hub detail.
func (o *Ops) Describe(ch chan<- *prometheus.Desc) {
	ch <- o.downReason
	ch <- o.writable
}

// Collect implements prometheus.Collector for the pulled hub detail.
func (o *Ops) Collect(ch chan<- prometheus.Metric) {
	o.mu.Lock()
	sources := append([]func() HubDetail(nil), o.sources...)
	o.mu.Unlock()
	for _, src := range sources {
		d := src()
		for _, r := range HubReasons {
			v := 0.0
			if r == d.DownReason {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(o.downReason, prometheus.GaugeValue, v, d.Protocol, r)
		}
		ch <- prometheus.MustNewConstMetric(o.writable, prometheus.GaugeValue, float64(d.WritableEndpoints), d.Protocol)
	}
}
