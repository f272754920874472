package metrics

import "github.com/prometheus/client_golang/prometheus"

// LDAPFront holds the LDAP front's metrics: its view of the shared front metrics
// (requests, refused writes, causal waits, connections, WAN bytes, labelled
// protocol="ldap") and the ones only LDAP has.
type LDAPFront struct {
	*FrontProtocol

	operations     *prometheus.CounterVec
	HubOnlyBinds   prometheus.Counter
	ProtocolErrors *prometheus.CounterVec
	Busy           prometheus.Counter
	OutcomeUnknown prometheus.Counter
	SlowClients    prometheus.Counter
}

// LDAP protocol error reasons (the "reason" label of
// spokeproxy_ldap_protocol_errors_total).
const (
	LDAPErrMalformed = "malformed"
	LDAPErrTooLarge  = "too_large"
)

// NewLDAP registers the LDAP-only metrics with reg. front is the shared front
// metrics of the same registry (NewFront); when nil, NewLDAP registers them
// itself, for a process or test that runs only the LDAP front.
func NewLDAP(reg prometheus.Registerer, front *Front) *LDAPFront {
	if front == nil {
		front = NewFront(reg)
	}
	m := &LDAPFront{
		FrontProtocol: front.Protocol(LDAP),
		operations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spokeproxy_ldap_operations_total",
			Help: "LDAP operations by operation type (bind, search, add, modify, extended, ...) and route (local, hub, refuse).",
		}, []string{"op", "route"}),
		HubOnlyBinds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spokeproxy_ldap_hub_only_binds_total",
			Help: "Simple binds the local replica rejected (49) that succeeded on the hub; such sessions are served from the hub.",
		}),
		ProtocolErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spokeproxy_ldap_protocol_errors_total",
			Help: "Client connections closed with a Notice of Disconnection (protocolError) because of malformed or oversized messages.",
		}, []string{"reason"}),
		Busy: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spokeproxy_ldap_busy_total",
			Help: "Operations refused with busy (51) because the connection had max_outstanding operations in flight.",
		}),
		OutcomeUnknown: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spokeproxy_ldap_outcome_unknown_total",
			Help: "Writes answered with 80 (outcome unknown) because the hub connection broke while they were in flight.",
		}),
		SlowClients: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spokeproxy_ldap_slow_clients_total",
			Help: "Client connections closed because the client did not read its responses within write_timeout.",
		}),
	}
	for _, r := range []string{LDAPErrMalformed, LDAPErrTooLarge} {
		m.ProtocolErrors.WithLabelValues(r)
	}
	reg.MustRegister(m.operations, m.HubOnlyBinds, m.ProtocolErrors, m.Busy, m.OutcomeUnknown, m.SlowClients)
	return m
}

// Operation counts one LDAP operation by its bounded op name, route and kind
// ("read", "write", "bind", "other"), in both the LDAP-only and the shared
// request counters.
func (m *LDAPFront) Operation(op, route, kind string) {
	m.OperationCounter(op, route, kind).Inc()
}

// OperationCounter is Operation for one op name, route and kind with its
// series looked up once, for callers that count many: WithLabelValues
// hashes the label values on every call.
func (m *LDAPFront) OperationCounter(op, route, kind string) OperationCounter {
	return OperationCounter{operations: m.operations.WithLabelValues(op, route), requests: m.requestCounter(route, kind)}
}

// OperationCounter counts operations of one op name, route and kind.
type OperationCounter struct{ operations, requests prometheus.Counter }

// Inc counts one operation.
func (c OperationCounter) Inc() {
	c.operations.Inc()
	c.requests.Inc()
}
