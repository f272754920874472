// Package metrics owns every Prometheus metric spokeproxy exports: its
// name, help text, unit and labels, in one place, so that dashboards and
// alert rules (deploy/) have a single reference.
//
// Nothing here registers with the global registry. Each constructor takes a
// prometheus.Registerer built in main (or in a test), so several proxies can
// run in one process and tests start from a clean registry:
//
//	reg := prometheus.NewRegistry()
//	front := metrics.NewFront(reg)           // shared by both fronts, labelled by protocol
//	pg := front.Protocol(metrics.Postgres)   // the PostgreSQL front's view
//
// Label values are bounded: protocol, route, kind, direction and target take
// values from fixed sets defined here or in the recording package; never a
// user name, DN or SQL text.
//
// Files: metrics.go holds the metrics shared by both fronts and build
// information; routing.go those of the routing core; pg.go and ldap.go those
// specific to one front.
package metrics
