package metrics

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
)

// Protocol label values.
const (
	Postgres = "pg"
	LDAP     = "ldap"
)

// Route label values, shared by both fronts.
const (
	RouteLocal  = "local"  // answered by the local replica
	RouteHub    = "hub"    // forwarded to the hub
	RouteRefuse = "refuse" // refused by the proxy itself
)

// Direction label values of WAN byte counters.
const (
	DirectionToHub   = "to_hub"
	DirectionFromHub = "from_hub"
)

// Backend target label values.
const (
	TargetReplica = "replica"
	TargetHub     = "hub"
)

// Front holds the metrics both protocol fronts record, labelled by protocol
// (the names of DESIGN.md section 6). It is created once per registry;
// Protocol gives each front its curried view.
type Front struct {
	requests           *prometheus.CounterVec
	requestDuration    *prometheus.HistogramVec
	writesRefused      *prometheus.CounterVec
	causalWait         *prometheus.HistogramVec
	clientConnections  *prometheus.GaugeVec
	backendConnections *prometheus.GaugeVec
	wanBytes           *prometheus.CounterVec
}

// NewFront registers the shared front metrics with reg.
func NewFront(reg prometheus.Registerer) *Front {
	f := &Front{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spokeproxy_requests_total",
			Help: "Requests (PostgreSQL queries or batches, LDAP operations) by where they were routed and what kind they are.",
		}, []string{"protocol", "route", "kind"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "spokeproxy_request_duration_seconds",
			Help:    "Time from a request's arrival to its final response, by route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"protocol", "route"}),
		writesRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spokeproxy_writes_refused_total",
			Help: "Writes refused because no hub was usable (link down, split brain or drill).",
		}, []string{"protocol"}),
		causalWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "spokeproxy_causal_wait_seconds",
			Help:    "Time reads (or, in site mode, write acknowledgements) waited for the local replica to apply a position (read-your-writes).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"protocol"}),
		clientConnections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spokeproxy_client_connections",
			Help: "Client connections currently open.",
		}, []string{"protocol"}),
		backendConnections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spokeproxy_backend_connections",
			Help: "Connections currently open from the proxy to a replica or hub on behalf of clients.",
		}, []string{"protocol", "target"}),
		wanBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spokeproxy_wan_bytes_total",
			Help: "Bytes the proxy sent to or received from hubs over the WAN on behalf of clients (probes excluded).",
		}, []string{"protocol", "direction"}),
	}
	reg.MustRegister(f.requests, f.requestDuration, f.writesRefused, f.causalWait,
		f.clientConnections, f.backendConnections, f.wanBytes)
	return f
}

// FrontProtocol is one front's view of Front, with the protocol label fixed.
type FrontProtocol struct {
	protocol string
	f        *Front

	WritesRefused      prometheus.Counter
	CausalWait         prometheus.Observer
	ClientConnections  prometheus.Gauge
	ReplicaConnections prometheus.Gauge
	HubConnections     prometheus.Gauge
	WANBytesToHub      prometheus.Counter
	WANBytesFromHub    prometheus.Counter

	// The request duration series of the routes, looked up once.
	durationLocal, durationHub prometheus.Observer
}

// Protocol returns the view for one protocol (Postgres or LDAP). Series are
// created eagerly so that dashboards show zeros rather than gaps.
func (f *Front) Protocol(protocol string) *FrontProtocol {
	p := &FrontProtocol{
		protocol:           protocol,
		f:                  f,
		WritesRefused:      f.writesRefused.WithLabelValues(protocol),
		CausalWait:         f.causalWait.WithLabelValues(protocol),
		ClientConnections:  f.clientConnections.WithLabelValues(protocol),
		ReplicaConnections: f.backendConnections.WithLabelValues(protocol, TargetReplica),
		HubConnections:     f.backendConnections.WithLabelValues(protocol, TargetHub),
		WANBytesToHub:      f.wanBytes.WithLabelValues(protocol, DirectionToHub),
		WANBytesFromHub:    f.wanBytes.WithLabelValues(protocol, DirectionFromHub),
	}
	p.durationLocal = f.requestDuration.WithLabelValues(protocol, RouteLocal)
	p.durationHub = f.requestDuration.WithLabelValues(protocol, RouteHub)
	return p
}

// Request counts one request by route and kind; kind is a bounded value
// chosen by the front (for example "read", "write", "bind").
func (p *FrontProtocol) Request(route, kind string) {
	p.requestCounter(route, kind).Inc()
}

func (p *FrontProtocol) requestCounter(route, kind string) prometheus.Counter {
	return p.f.requests.WithLabelValues(p.protocol, route, kind)
}

// RequestDuration returns the observer of request durations for route.
func (p *FrontProtocol) RequestDuration(route string) prometheus.Observer {
	switch route {
	case RouteLocal:
		return p.durationLocal
	case RouteHub:
		return p.durationHub
	}
	return p.f.requestDuration.WithLabelValues(p.protocol, route)
}

// NewBuildInfo registers spokeproxy_build_info, a constant 1 labelled with the
// version, so dashboards can show which build each site runs.
func NewBuildInfo(reg prometheus.Registerer, version string) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "spokeproxy_build_info",
		Help:        "Build information of the running spokeproxy; the value is always 1.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	g.Set(1)
	reg.MustRegister(g)
}
