// Package lab runs a real, throwaway hub-and-spoke topology in one
// directory: the same servers spokeproxy meets in production, used both by
// `spokeproxy lab` and by every integration test, so the two never drift.
//
//	spoke site                          WAN (toxiproxy)        hub site
//	PostgreSQL hot standby  <-- streaming --- wan_pg ------  PostgreSQL primary
//	slapd consumer (+syncprov) <- syncrepl -- wan_ldap ----  slapd provider (syncprov)
//	spokeproxy (Options.Proxy)  --- writes -- wan_pg/ldap -> hub
//	                                          wan_pg_2 ----  PostgreSQL hub-site standby
//	                                                         (Options.HubStandby)
//
// Start brings it up (a few seconds) and returns a *Lab; Close stops every
// process it started and waits for them. ForTest does both around a test.
//
// What runs:
//   - toxiproxy (github.com/Shopify/toxiproxy/v2), embedded in-process, its
//     HTTP API on a loopback port (Lab.ToxiproxyAPI) so toxiproxy-cli or
//     curl can cut links and add toxics; links LinkPG, LinkLDAP (and LinkPG2).
//     Lab.SetLink (hard cut), Lab.AddLatency, Lab.Blackhole (silent loss),
//     Lab.ClearToxics and Lab.ResetWAN cover the common cases.
//   - PostgreSQL 15 (Debian's /usr/lib/postgresql/15/bin): a hub primary
//     (initdb --no-sync, fsync off, SCRAM over TCP, trust on the Unix
//     socket) seeded from testdata/lab/appdb.sql (role app/apppass owning
//     appdb), the proxy's auth role AuthUser with a generated password in
//     Lab.AuthPasswordFile and the SECURITY DEFINER function
//     spokeproxy.get_auth (PgBouncer's auth_query pattern) in every
//     database; and a spoke hot standby cloned with pg_basebackup through
//     wan_pg, streaming through it. As root every PostgreSQL binary runs as
//     the postgres user.
//   - OpenLDAP slapd from generated slapd.conf files, in the foreground: a
//     provider (mdb, syncprov, serverID 1) seeded from
//     testdata/lab/seed.ldif, and a refreshAndPersist consumer through
//     wan_ldap with the same rootdn/rootpw and ACLs, a cascading syncprov,
//     and updateref to the provider through wan_ldap.
//   - spokeproxy, if Options.Proxy starts it (with Lab.ProxyConfigYAML).
//
// Lab.Info is what lab.json holds (Lab.WriteInfo writes it, in exactly the
// shape of issue 2) and Lab.Summary the text for a person. Accessors give
// tests what they need: addresses, superuser DSNs over the Unix socket,
// app DSNs, LDAP URLs and identities, PIDs, log files.
// Lab.WaitReplicaCaughtUp waits by LSN, Lab.WaitLDAPReplicaCaughtUp by
// contextCSN. Failover, StopHubPrimary,
// PromoteHubStandby and RepointSpoke script a hub failover (promoting the
// standby while the primary still runs makes a split brain).
//
// Server control by role, for tests: StopHubPG, StartHubPG, RestartHubPG,
// StopReplicaPG, StartReplicaPG, StopHubLDAP, StartHubLDAP,
// StopReplicaLDAP and StartReplicaLDAP. A stop returns once the server and
// its children have exited; a start once the server answers a real request.
// They are serialised with Close, which stops whatever they started; after
// Close they return ErrClosed. Tests never signal PIDs or reach into the
// directory layout. EnableHubPGTLS turns TLS on at the hub primary with a
// given certificate, the same way.
//
// Layout of the lab directory (a reused directory is cleared of these
// names, and only these, before a start; a live lab there is refused):
//
//	pg/hub, pg/spoke, pg/hub2   data directories (owned by postgres as root)
//	pg/run                      Unix sockets (a short temp dir if the path is long)
//	pg/pgpass                   the replication role's password (0600)
//	ldap/hub, ldap/spoke        slapd.conf (0600) and the mdb database
//	pg-*.log, ldap-*.log        each server's output, tools included
//	toxiproxy.log               the WAN's log
//	pg-auth.password            the auth role's password (0600)
//	lab.json                    written by the caller with WriteInfo
//
// Readiness is always judged by a real request (a query, a search), never
// by sleeping. Every server's output goes to a log file in the lab
// directory; a start failure is a *StartError carrying that log's tail,
// and a missing binary a *PrerequisiteError naming the Debian package.
package lab
