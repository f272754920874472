package metrics

import "github.com/prometheus/client_golang/prometheus"

// PG holds the metrics only the PostgreSQL front records. The shared front
// metrics (requests, refused writes, causal waits, connections, WAN bytes)
// live in Front; the lead wires its Postgres view into Front.
type PG struct {
	// Front is the shared front metrics' Postgres view. Nil means the front
	// records them nowhere (tests that do not care).
	Front *FrontProtocol

	SafetyNetReruns prometheus.Counter // reads refused by the standby (25006) and re-run on the hub
	SessionsPinned  prometheus.Counter // sessions pinned to the hub by a hub-only object
	AuthFailures    prometheus.Counter // client logins refused (wrong password, unknown role)
	Cancels         prometheus.Counter // CancelRequests forwarded to a backend
	ProtocolErrors  prometheus.Counter // client connections closed for a protocol violation
	HubPoolHits     prometheus.Counter // first hub use of a session served by a warm pooled connection
	SlowClients     prometheus.Counter // client connections closed for not reading their results within write_timeout
}

// NewPG registers the PostgreSQL front's own metrics with reg.
func NewPG(reg prometheus.Registerer) *PG {
	m := &PG{
		SafetyNetReruns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spokeproxy_pg_safety_net_reruns_total",
			Help: "Autocommit statements classified as reads that the standby refused with 25006 and that were re-run on the hub.",
		}),
		SessionsPinned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spokeproxy_pg_sessions_pinned_total",
			Help: "Client sessions pinned to the hub by a hub-only object (temp table, LISTEN, session advisory lock, WITH HOLD cursor, SQL PREPARE).",
		}),
		AuthFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spokeproxy_pg_auth_failures_total",
			Help: "Client logins refused by the proxy's SCRAM or md5 check.",
		}),
		Cancels: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spokeproxy_pg_cancel_requests_total",
			Help: "CancelRequests matched to a session and forwarded to the backend running its query.",
		}),
		ProtocolErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spokeproxy_pg_protocol_errors_total",
			Help: "Client connections closed because of a protocol violation (malformed or oversized message, bad startup packet).",
		}),
		HubPoolHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spokeproxy_pg_hub_pool_hits_total",
			Help: "Sessions whose first hub request used a warm, already authenticated hub connection instead of dialling and logging in over the WAN.",
		}),
		SlowClients: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spokeproxy_pg_slow_clients_total",
			Help: "Client connections closed because the client did not read its results within write_timeout.",
		}),
	}
	reg.MustRegister(m.SafetyNetReruns, m.SessionsPinned, m.AuthFailures, m.Cancels, m.ProtocolErrors, m.HubPoolHits, m.SlowClients)
	return m
}
