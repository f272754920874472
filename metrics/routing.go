package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Link transition label values ("to").
const (
	StateUp   = "up"
	StateDown = "down"
)

// RoutingState is one protocol's pulled routing state, read at scrape time
// from the routing core (which this package must not import).
type RoutingState struct {
	Protocol    string // Postgres or LDAP
	HubUp       bool   // a writable hub is usable (false during a drill)
	HubEndpoint string // the current (or last) writable hub endpoint
	ReplicaUp   bool
	LagKnown    bool
	LagSeconds  float64
	LagBytes    float64 // PostgreSQL only; negative when unknown
	DrillActive bool
}

// Routing holds the routing core's metrics: pushed counters and histograms,
// and a collector that reads RoutingState from every watched site at scrape
// time, so hub_up and lag are never stale.
type Routing struct {
	transitions   *prometheus.CounterVec
	probeDuration *prometheus.HistogramVec

	hubUp, replicaUp, lagSeconds, lagBytes, hubInfo, drill *prometheus.Desc

	mu      sync.Mutex // guards sources
	sources []func() RoutingState
}

// NewRouting registers the routing metrics with reg.
func NewRouting(reg prometheus.Registerer) *Routing {
	r := &Routing{
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spokeproxy_link_transitions_total",
			Help: "Changes of the hub link state (to up or down), per protocol, drills included.",
		}, []string{"protocol", "to"}),
		probeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "spokeproxy_probe_duration_seconds",
			Help:    "Duration of health and position probes (failed ones included), by target (hub or replica).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"protocol", "target"}),
		hubUp: prometheus.NewDesc("spokeproxy_hub_up",
			"1 if a writable hub is usable for this protocol (0 while down, split brain or drill).", []string{"protocol"}, nil),
		replicaUp: prometheus.NewDesc("spokeproxy_replica_up",
			"1 if the local replica answers probes.", []string{"protocol"}, nil),
		lagSeconds: prometheus.NewDesc("spokeproxy_replication_lag_seconds",
			"Time since the local replica last reached a hub position sampled at a known time (0 when it holds the latest sample while the hub is up).", []string{"protocol"}, nil),
		lagBytes: prometheus.NewDesc("spokeproxy_replication_lag_bytes",
			"Hub WAL position minus the local replica's replay position (PostgreSQL).", []string{"protocol"}, nil),
		hubInfo: prometheus.NewDesc("spokeproxy_hub_info",
			"The current writable hub endpoint; the value is always 1.", []string{"protocol", "endpoint"}, nil),
		drill: prometheus.NewDesc("spokeproxy_drill_active",
			"1 while an operator drill forces the hub down for this proxy.", []string{"protocol"}, nil),
	}
	reg.MustRegister(r.transitions, r.probeDuration, r)
	return r
}

// Watch adds a source of pulled state, read at every scrape.
func (r *Routing) Watch(state func() RoutingState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sources = append(r.sources, state)
}

// InitProtocol creates a protocol's counter and histogram series at zero, so
// dashboards show zeros rather than gaps.
func (r *Routing) InitProtocol(protocol string) {
	for _, to := range []string{StateUp, StateDown} {
		r.transitions.WithLabelValues(protocol, to)
	}
	for _, target := range []string{TargetHub, TargetReplica} {
		r.probeDuration.WithLabelValues(protocol, target)
	}
}

// Transition counts a hub link state change to StateUp or StateDown.
func (r *Routing) Transition(protocol, to string) {
	r.transitions.WithLabelValues(protocol, to).Inc()
}

// ProbeDuration returns the observer of probe durations for target
// (TargetHub or TargetReplica).
func (r *Routing) ProbeDuration(protocol, target string) prometheus.Observer {
	return r.probeDuration.WithLabelValues(protocol, target)
}

// Describe implements prometheus.Collector for the pulled state.
func (r *Routing) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{r.hubUp, r.replicaUp, r.lagSeconds, r.lagBytes, r.hubInfo, r.drill} {
		ch <- d
	}
}

// Collect implements prometheus.Collector for the pulled state.
func (r *Routing) Collect(ch chan<- prometheus.Metric) {
	r.mu.Lock()
	sources := append([]func() RoutingState(nil), r.sources...)
	r.mu.Unlock()
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	for _, src := range sources {
		s := src()
		ch <- prometheus.MustNewConstMetric(r.hubUp, prometheus.GaugeValue, b(s.HubUp), s.Protocol)
		ch <- prometheus.MustNewConstMetric(r.replicaUp, prometheus.GaugeValue, b(s.ReplicaUp), s.Protocol)
		ch <- prometheus.MustNewConstMetric(r.drill, prometheus.GaugeValue, b(s.DrillActive), s.Protocol)
		if s.LagKnown {
			ch <- prometheus.MustNewConstMetric(r.lagSeconds, prometheus.GaugeValue, s.LagSeconds, s.Protocol)
		}
		if s.LagBytes >= 0 && s.Protocol == Postgres {
			ch <- prometheus.MustNewConstMetric(r.lagBytes, prometheus.GaugeValue, s.LagBytes, s.Protocol)
		}
		if s.HubEndpoint != "" {
			ch <- prometheus.MustNewConstMetric(r.hubInfo, prometheus.GaugeValue, 1, s.Protocol, s.HubEndpoint)
		}
	}
}
