// Package routing is the protocol-neutral core of spokeproxy: it knows
// whether the hub can take writes and whether the local replica can answer
// reads, and decides where each request goes.
//
// Main types:
//
//   - Position (LSN for PostgreSQL, CSN and CSNSet for LDAP): replication
//     positions with Covers, the order read-your-writes needs; Later merges
//     a session's positions.
//   - Decide: a pure function over a Snapshot, a Request and a Policy that
//     returns a Decision: local, hub, wait-then-local or refuse, with a Reason
//     whose text is bounded (error messages and metric labels).
//   - Site: one protocol's live view, built from a plain Config by NewSite
//     and driven by Run(ctx). Reconfigure (reconfigure.go) swaps in new
//     timings, thresholds, policy, hub TLS and hub candidates while it runs
//     (CheckHubTLS first tries new hub TLS against the hubs seen up);
//     hot paths read the settings through an atomic pointer to an immutable
//     snapshot. Every other method is safe for concurrent use.
//
// # Health
//
// Every hub candidate and the local replica has one goroutine that probes it
// with a real protocol request under Config.ProbeTimeout over a persistent
// monitoring connection (dropped after a failure and redialled next time):
// PostgreSQL `SELECT pg_is_in_recovery(), <WAL position>`, LDAP a base
// search of the suffix for contextCSN. Never a TCP connect: a blackholed WAN
// link still accepts TCP at a middlebox. Each endpoint has a hysteresis state
// machine (DownAfter failures, UpAfter successes, see link) with flap
// damping: repeated flaps within Config.FlapWindow double the successes a
// DOWN endpoint needs (up to 8 x UpAfter), so a flapping link does not flap
// the site, while a single outage still recovers after UpAfter. After a failure
// of an UP endpoint the next probe follows at once, so a silent link is
// confirmed within about two probe timeouts; otherwise probes come every
// ProbeInterval. A front that sees a hub connection fail calls
// ReportHubFailure and the endpoint turns DOWN at once; only probes bring
// it back. One that sees an idle hub connection closed by its peer, with
// nothing in flight (a server's idle timeout, or a cut showing first),
// calls SuspectHub instead: the endpoint is probed at once and turns DOWN
// at once only if that probe fails. Every connection to a hub (DialHub, DialContext, the probes) has
// TCP keepalive and TCP_USER_TIMEOUT set.
//
// # The writable hub
//
// PostgreSQL: the candidate that is UP and not in recovery. None: writes are
// refused (hub unreachable, or "no writable hub" while only standbys
// answer); a promotion is followed at the promoted server's next probe. Two
// or more at once: split brain, writes refused naming them all. At start the
// hub stays "starting" until every candidate has answered or failed once,
// so a split brain present then is not missed by taking the first primary
// to answer (an unreachable candidate fails within ProbeTimeout). LDAP: the
// first UP candidate in the configured order. Hub candidates are providers
// by configuration; with a monitor identity (Config.BindDN) the probe also
// asks, once per connection, a write guarded by an Assertion control that
// can never hold: a syncrepl consumer answers it with a referral and is not
// writable, a provider answers assertionFailed and nothing changes.
//
// # Positions, waiting and lag
//
// The replica's probe is also its position poller: one per replica, every
// ProbeInterval, or every FastPollInterval while anyone waits in WaitFor,
// which returns as soon as a poll shows the position applied (bounded by
// its context). Lag in seconds is the time since the replica last reached a
// hub position sampled at a known time (the writable hub's probe samples
// its current position): zero while the replica holds the newest sample of
// a hub that is up, growing while the hub is unreachable (nothing newer is
// known). It never uses now() - pg_last_xact_replay_timestamp(), which grows
// on an idle hub. PostgreSQL lag in bytes is the newest hub LSN minus the
// replica's replay LSN. A replica lagging beyond Policy.MaxLag is stale while
// the hub is usable; during an outage it serves reads as the best the site
// has.
//
// Errors are typed with predicates: IsHubUnavailable, IsReplicaUnavailable,
// IsWaitTimeout. The fronts turn them into protocol-native errors at their
// edge. Metrics are recorded through metrics.Routing; Status is the /status
// view. routing imports only metrics among spokeproxy's packages.
package routing
