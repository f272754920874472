// Package routing is the protocol-neutral core of spokeproxy: it knows
// whether the hub can take writes and whether the local replica can answer
// reads, and decides where each request goes.
//
// Main types:
//
//   - Position (LSN for PostgreSQL, CSN and CSNSet for LDAP): replication
//     positions with Covers, the order read-your-writes needs.
//   - Decide: a pure function over a Snapshot, a Request and a Policy that
//     returns a Decision: local, hub, wait-then-local or refuse, with a Reason.
//   - Site: one protocol's live view. It probes every hub candidate and the
//     local replica with real protocol requests under a deadline (never a
//     TCP connect: a blackholed WAN link still accepts TCP at a middlebox),
//     runs a hysteresis state machine per endpoint, picks the writable hub
//     (refusing writes on split brain), polls the replica's position (fast
//     only while someone waits in WaitFor), measures lag honestly, and runs
//     drills. Fronts report data-path failures with ReportHubFailure, which
//     turns the state at once.
//
// Errors are typed with predicates: IsHubUnavailable, IsReplicaUnavailable,
// IsWaitTimeout. The fronts turn them into protocol-native errors at their
// edge.
//
// routing imports only metrics among spokeproxy's packages.
package routing
