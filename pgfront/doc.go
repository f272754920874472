// Package pgfront is spokeproxy's PostgreSQL wire front: it accepts
// PostgreSQL clients, authenticates them, and relays each routing unit (a
// simple Query, or an extended-protocol batch up to Sync) to the local hot
// standby or to the hub, as the routing core decides. DESIGN.md section 4
// is the contract.
//
// # Types
//
//   - Server (server.go): New(Config, Site, *metrics.PG, *slog.Logger),
//     Serve(ctx, net.Listener), Shutdown(ctx), Reconfigure(Config) (a
//     reload: sessions read the Config through an atomic pointer). Owns the
//     listeners, the connection limit and the proxy-owned cancel keys.
//     Past Shutdown's deadline every session's context ends, which sets
//     deadlines on its client and active backend connections: never a
//     Close from another goroutine, which would wait for the session
//     (rawconn.ArmedReader).
//   - Site: the few methods of *routing.Site the front uses.
//   - session (session.go): one client connection after login; owns its
//     replica and hub backendConns and all transaction state. Everything
//     but the active backend (read by the cancel path) is owned by the
//     session goroutine.
//   - Classifier (classify.go, lexer.go): a real lexer (nested comments,
//     dollar quotes, E'...' strings, quoted identifiers) and a statement
//     classifier. Unknown means write: a write sent to the hub is slow, a
//     write sent to the standby fails.
//   - Secret, scramServer, scramClient (scram.go): SCRAM-SHA-256 without
//     passwords.
//
// # Login
//
//	client                    spokeproxy                      replica (hub later)
//	SSLRequest     ------->   'S' + TLS, or 'N'
//	StartupMessage ------->   auth query on the replica  --->  (usename, passwd)
//	               <-------   AuthenticationSASL
//	SASLInitial    ------->   server-first (salt, iterations of the verifier)
//	SASLResponse   ------->   check proof against StoredKey;
//	                          ClientKey = proof XOR ClientSignature
//	                          StartupMessage as the same role --->
//	                          SCRAM client side with ClientKey <-->
//	               <-------   SASLFinal, AuthenticationOk, ParameterStatus
//	                          (in_hot_standby=off while the hub is up),
//	                          BackendKeyData (replica PID, proxy secret),
//	                          ReadyForQuery
//
// The client's proof yields its ClientKey, and ClientKey is all the
// client side of SCRAM needs when salt and iteration count are fixed,
// which they are for every server sharing the role's verifier (the hub
// and its physical standbys). The proxy never sees or stores a password.
// md5: PostgreSQL's md5 response is md5(secret || salt) where secret is
// the stored md5(password || user), so holding the secret suffices both
// to check a client and to answer a backend's md5 challenge; the proxy
// does both for roles whose secret is md5. A backend that asks for SCRAM
// from an md5 role (pg_hba scram-sha-256) fails the login with a message
// telling the operator to reset the password as SCRAM. Wrong password and
// unknown role both get PostgreSQL's 28P01 "password authentication
// failed for user" (unknown roles run the exchange against a mock
// verifier so nothing leaks before the proof).
//
// The auth query (authLookup, auth.go) runs on a small pool of the auth
// role's connections: lookups of different roles never wait for each
// other, concurrent logins of one role share one query, and each query
// is bounded by BackendTimeout and abandoned when the routing core judges
// its server down, the hub being asked next. Connections idle for
// authIdleTimeout close, so those opened on the hub while the replica was
// down do not hold hub backends after the outage.
//
// # Routing
//
//	unit arrives ---- pinned / hub transaction ------------------> hub
//	    |------------ replica transaction: reads, SET LOCAL, ----> replica
//	    |             savepoints, COMMIT
//	    |------------ replica transaction: first write ----------> ROLLBACK queued on the replica,
//	    |                                                         BEGIN + SET LOCALs, savepoints + unit pipelined to the hub
//	    |------------ idle: read (after WaitFor(session pos)) ----> replica (25006 before any row: re-run on hub)
//	    |------------ idle: write ------------------------------> hub, "SELECT pg_current_wal_lsn()" pipelined
//	    |                                                         behind it, result consumed: the session position
//	    '------------ idle: SET/RESET, set_config() ------------> replica, and the hub if attached
//	                                                              (replayed when it attaches)
//
// A session-level SET or set_config() made inside a transaction is held
// until the transaction ends: only the backend holding the transaction has it (and the hub, in
// the replay, if a transaction on the replica moves there). How the
// transaction ended is read from the CommandComplete tag of the unit's
// first end: COMMIT (or PREPARE TRANSACTION), and it
// is kept for the session, applied on the other backend (queued for the
// hub) and followed if it changes the transaction defaults; ROLLBACK
// (also what a COMMIT of a failed transaction answers), and it is
// forgotten, as PostgreSQL undid it where it ran, so the two backends stay
// alike. Savepoints are followed too: SAVEPOINT is replayed with the SET
// LOCALs when a transaction moves to the hub (a RELEASE or ROLLBACK TO
// after the first write finds it there), and a ROLLBACK TO forgets the
// SETs it undid. The same holds for a transaction that begins and ends
// within one Query or extended batch ("BEGIN; SET ...; ROLLBACK"), and for
// the implicit transaction of a Query or batch, which commits at a COMMIT
// in it or at its end, unless a statement fails. DEALLOCATE ALL is not transactional: it runs on the
// other backend at once. A transaction on the replica that failed stays
// there until it ends or rolls back to a savepoint: its statements get
// PostgreSQL's 25P02, a write does not move it (a unit that ends it or
// rolls back to a savepoint and then writes, "ROLLBACK TO a; INSERT ...",
// runs its write on the hub). After a failure, what completed before it
// in the same Query or batch (pgjdbc's autosave SAVEPOINT) is followed.
//
// COMMIT or ROLLBACK AND CHAIN opens the next transaction at once on the
// same backend. For the replay on the hub the front keeps the client's
// BEGIN and SET TRANSACTION's isolation and access mode, forgets the ended
// transaction's SET LOCALs, and settles its SETs as above, as PostgreSQL
// carries them. On the hub, the position is not read behind a unit whose
// last COMMIT chains (that query would open the new transaction, take its
// snapshot and make a following SET TRANSACTION fail): the end of the
// chain reads it, a ROLLBACK too.
//
// While the hub is unavailable a write gets 25006 at once, naming the hub;
// inside a transaction on the replica the refusal is raised there (a DO
// block raising 25006), so the transaction is aborted exactly as a
// standby's own refusal would abort it. A hub transaction cut mid-way gets
// 08006 and the session answers 25P02 until ROLLBACK (a ROLLBACK, simple,
// extended or pipelined, succeeds, even the first statement to find the
// transaction lost; drivers drop a connection whose rollback fails, and
// nothing the lost transaction set for itself outlives it; ROLLBACK or
// COMMIT AND CHAIN gets 25P02, as no backend holds a transaction like the
// lost one to open again, and answering it as a ROLLBACK would leave the
// client's next statements committing one by one); a COMMIT or
// autocommit write whose answer is lost gets 08007, unless it was lost
// before its Sync was sent (a flushed extended batch, which commits at
// Sync): 08006. A hub backend's own FATAL (terminated, shut down) is not
// relayed, as a client told FATAL drops its session: the request gets
// 08006 or 08007 as for a cut, the session goes on with a new hub
// connection, and one lost backend is not reported to the routing core
// as a hub failure (its probes see a real shutdown). A hub exchange stops
// waiting as soon as the routing core's probes see the hub down (a
// blackholed link is acknowledged by the WAN and never fails a read).
//
// # set_config()
//
// A read that calls set_config() changes a setting on the backend that
// runs it only. The classifier keeps each call whose arguments are plain
// literals or bare parameters, and the front repeats it, rendered with
// the Bind's parameters, as SET is repeated: a session-level call, once
// its unit (or the transaction it ran in) has committed, on the other
// backend and on any hub connection attached later; one made in a
// transaction on the replica (PostgREST's
// request.jwt.claims, a row-level security policy's tenant) with the
// transaction's SET LOCALs, replayed on the hub if the transaction moves
// there, so the hub's policies see what the client set. A call the front
// cannot repeat (a computed value, an escape string) pins the session to
// the hub. Extended-protocol SET LOCALs in a transaction on the replica
// are kept for the same replay. Values are rendered dollar-quoted, so no
// byte of them is special whatever the client encoding (Shift JIS and
// Big5 characters may hold a backslash byte), standard_conforming_strings
// or backslash_quote say. Repeats to the hub, like mirrored SETs, are
// queued ahead of its next request: no WAN round trip, and nothing to
// hang on while the link is dead. Only the last value of each setting is
// kept for connections made later. The repeat follows the text: a call
// in a branch that did not run (WHERE false, a CASE arm), or undone by a
// ROLLBACK later in the same Query, is repeated all the same, and a
// parameter declared char(n) or name is repeated as sent.
//
// # Transaction defaults
//
// A BEGIN that names no isolation level or access mode gets the session's
// defaults, and is routed as if it named them: a REPEATABLE READ or
// SERIALIZABLE read-write transaction on the hub from BEGIN (one snapshot),
// a REPEATABLE READ READ ONLY one on the replica, a SERIALIZABLE one never
// there (a standby refuses it); so are autocommit reads under a
// SERIALIZABLE default, while the hub is reachable (otherwise the standby
// answers with its own 0A000). The defaults at login (postgresql.conf of
// the standby, role and database settings, startup options and -c) come
// from the replica login: default_transaction_read_only from its
// ParameterStatus, default_transaction_isolation from a SHOW sent as soon
// as the login is authenticated (answered when the backend is ready, so
// it costs no round trip). From then on the session's own SET SESSION
// CHARACTERISTICS, SET default_transaction_* and RESET (ALL), DISCARD ALL,
// and set_config() of default_transaction_*, are followed when they run
// outside an explicit transaction, or when the transaction they ran in
// (alone in their statement) commits. While the
// hub is unreachable a REPEATABLE READ read-write transaction opens on the
// replica so its reads go on; it keeps that snapshot, so its first write
// gets 25006, or 40001 (retry) if the hub has come back meanwhile.
//
// # Replica loss
//
// A session whose replica connection dies does not end. The loss is seen
// when the connection is next used: an error reading or writing it, or
// the FATAL a shutdown or a terminated backend left on it (not relayed).
// A unit outside a transaction that had handed nothing to the client yet
// (the 25006 safety net's rule; nothing on a standby writes) is planned
// again without it: reads go to the hub while the routing core allows it
// (replica.when_unavailable: hub) or get 08006 (refuse); a FATAL alone
// does not mark the replica down for the site, so a terminated backend is
// simply replaced. Otherwise the unit gets 08006 as an ERROR; a
// transaction open on the replica is gone with it (25P02 until ROLLBACK or
// COMMIT, as for a cut hub transaction). Between transactions, a session
// without a replica connection (lost, or down at login) opens one again
// once the routing core sees the replica up, replays its SETs there and
// prepares its statements again when used; a failed attempt waits a
// second. Sessions that log in while the replica is down are served by
// the hub (the auth query then runs on the hub too), unless
// RefuseWhenReplicaDown. The process ID the client got at login stays the
// first replica connection's (cancels still reach whichever backend runs
// the query); pg_backend_pid() names the current one.
//
// LISTEN pins the session to the hub; while such a session is idle a
// watcher relays the hub's NotificationResponses (it only peeks while
// waiting, so stopping it never splits a message; it writes to the client
// outside its lock, and a write that fails, a slow client's included,
// ends the session).
//
// A pinned session's state lives on its one hub connection, so losing
// that connection (the hub restarted or failed over, the backend was
// terminated, the hub list moved) ends the session with a FATAL 08006 at
// its next safe point, or at once when a LISTEN watcher sees it, rather
// than letting it go on without its state on a fresh connection. While
// the hub is merely unavailable (an outage, a drill) the session's
// statements are refused and the connection is kept, so a session whose
// connection outlives the outage keeps its state; a hub transaction open
// then is lost (08006) and a ROLLBACK is sent ahead at once, releasing
// its locks while the link works (a drill). Notifications that arrive
// between the watcher's stop and the next statement are relayed before
// its answer (settleIdle), not taken for a dead connection. A refused
// pinning statement does not pin.
//
// Hub connections are dialled through Site.DialHub (the routing core's
// keepalive and TCP_USER_TIMEOUT) and, with Config.HubTLS, upgraded with
// SSLRequest and a verified TLS handshake (never a silent downgrade).
// They are opened on a session's first need (a read-only
// session never touches the WAN). When a session ends idle, its hub
// connection is reset (DISCARD ALL) and pooled for the next session of the
// same role, database and startup parameters, so that one's first write
// costs no WAN login. Idle and pooled connections are checked with a
// non-blocking MSG_PEEK before use: one that died (hub restart, failover)
// is replaced instead of carrying a write whose outcome would be unknown.
// A pooled connection unused for HubPoolIdleTimeout is closed (a timer
// reaps the pool), and one HubPoolMaxAge after its login is closed rather
// than reused, so the hub's backends are not held for roles that stopped
// writing, and role settings changed at the hub reach new sessions. At
// each change of the hub's state (watchHubPool) the pooled connections
// that change made useless are closed at once: all of them while the hub
// is down (not during a drill), those to an endpoint that is no longer the
// hub, and those the other end closed, so backend_connections{target="hub"}
// follows an outage.
//
// # Relay
//
// Backend answers are read as frames (frameReader, wire.go: the 5-byte
// header, then the body) and forwarded as bytes; only ReadyForQuery's
// status, an ErrorResponse's SQLSTATE, ParameterStatus and the position
// query's row are looked at. They are buffered and written to the client
// once per turn: when what arrived from the backend is used up, not per
// message. The session goroutine does all of it (no handoff per message).
// Client messages are read as frames too (parseFront: checked as
// pgproto3's decoders check them, only the fields routing needs picked
// out, nothing decoded or re-encoded); an extended batch's messages are
// copied into a per-session buffer reused from batch to batch, and a
// Parse that repeats a statement's text reuses its entry and
// classification. The proxy's own messages are encoded in place
// (msgWriter). A pgbench -S transaction so costs the proxy no heap
// allocation in the extended and prepared modes, and about 4 in the
// simple one (the query text, kept in the classification cache).
// Plain TCP client and replica connections read and write through
// internal/rawconn (raw calls on the non-blocking socket, which spare the
// runtime's monitor thread a wake-up per message after idle: a quarter
// of the proxy's CPU per pgbench transaction). A request goes out with
// rawconn.WriteRead: the read of its answer is armed before the write, so
// the read attempt that would find the socket still empty (a system call
// for nothing, dear on a virtual machine) is skipped. The client is read
// through a rawconn.ArmedReader, which keeps the wait for its next message
// armed between reads and so skips the same empty read after each answer:
// a pgbench -S transaction costs the proxy 2 reads and 2 writes (4.4 reads
// before these two).
//
// Flush without Sync (libpq's PQsendFlushRequest, pgx's pipeline): the
// batch so far is routed as a unit is, sent with a Flush, and its answers
// relayed as soon as each of its messages is answered (or the first
// error). The unit stays on that backend until its Sync, except that a
// part that must run on the hub ends a part in flight on the replica
// (with a Sync whose ReadyForQuery is dropped) and starts on the hub, as
// a transaction moves at its first write. A flushed read's answers are
// not held, so the 25006 safety net does not apply to it.
//
// COPY FROM STDIN runs on the hub with the client's CopyData streamed
// (written on every 64 KiB and at CopyDone). Through the extended
// protocol the server ignores Flush and Sync during COPY and answers the
// Execute only after the client's next Flush or Sync, so the unit stays in
// flight until the client's Sync after CopyDone, whether it sent Sync
// right after the Execute (libpq's PQsendQueryParams, tokio-postgres) or
// Flush and waited for CopyInResponse; its read-your-writes position query
// follows that Sync. A hub lost while the data streams, or before that
// Sync, cannot have committed the COPY: 08006, not 08007. Behind a simple
// Query of several statements holding a COPY, or a COPY that failed
// before its data, the position query is sent after the unit's
// ReadyForQuery (one round trip more): a later COPY in the Query would
// take it for data.
//
// # Read-your-writes position
//
// The position query goes behind every hub unit in which something
// commits (a COMMIT, a write outside a transaction, the safety net's
// re-run of a read that wrote) and that ends outside a transaction. A
// unit that commits and leaves a transaction open (COMMIT AND CHAIN,
// "INSERT ...; BEGIN; LOCK ...") does not get it, as it would take that
// transaction's snapshot and make a SET TRANSACTION fail: the position is
// owed, and learnt when that transaction ends (at its COMMIT or ROLLBACK,
// or with a round trip of its own after an end the front did not see,
// such as a PREPARE TRANSACTION). A pinned session learns positions only
// under consistency: site (its reads run on the hub). A read that comes
// with SETs in one Query waits for the position as a lone read does. A
// FunctionCall (libpq's large objects) outside a transaction runs on the
// hub; inside a transaction on the replica it moves the transaction there
// as a write does, unless that transaction is READ ONLY (from its BEGIN,
// the session default or a SET TRANSACTION, as pg_dump sends) and the
// call reads a large object (lo_open, loread, lo_lseek, lo_tell, lo_close):
// then the standby runs it, in the transaction's snapshot. When the link fails between a write's answer and its
// position query's, the session's next local read first asks the hub for
// its current position (a newer one covers the lost one); with the hub
// unreachable the read is treated as a wait that timed out
// (consistency.on_timeout).
//
// Named prepared statements are prepared on a backend only when a batch
// there uses them (the client's Parse is kept and injected before the
// Bind, its ParseComplete dropped); Close of a statement prepared on the
// other backend is queued there.
//
// Results stream: the relay writes to the client whenever no whole
// backend message is left in its read buffer. A client that takes
// nothing of what is written to it for WriteTimeout (default 30s; it
// stopped reading a large result) is closed, which ends its backend
// connections (log line, metric slow_clients). The deadline is set only
// when the client's socket is full (rawconn.TryWriter), so clients that
// keep up pay nothing for it; over TLS it is set once per write.
//
// # Not done yet
//
//   - A flushed unit (Flush before Sync) whose replica connection dies is
//     not run again elsewhere: it gets 08006 (see Replica loss).
//   - Under consistency: site, a write whose position query's answer was
//     cut (the link failing between the two answers) is acknowledged
//     without waiting for the standby.
//   - A transaction opened by a Query of several statements ("BEGIN;
//     SELECT ...") keeps that whole Query as its BEGIN: when it moves to
//     the hub the Query runs again there (a volatile read twice). A SET
//     TRANSACTION ISOLATION LEVEL REPEATABLE READ beside other statements
//     does not move the transaction to the hub at once, as a lone one
//     does: its first write moves it, with a new snapshot.
//   - A session SET in the Query that opens a transaction ("BEGIN; SET
//     x ...; SELECT") is not applied to the other backend when the
//     transaction commits. In one Query, SETs are repeated on the other
//     backend before set_config() calls, whatever their order. A read
//     beside a SET does not go to the hub under a SERIALIZABLE session
//     default, as a lone read does (the standby answers 0A000). Kept SETs
//     are not merged by setting, so a session that sets search_path on
//     every request keeps a growing list for connections made later.
//   - A position owed by a unit that committed and left a hub transaction
//     open ("INSERT ...; BEGIN") is forgotten if that transaction is lost.
//   - Under consistency: site, COMMIT AND CHAIN is acknowledged before
//     the standby has the commit (its position is learnt only when the
//     chained transaction ends); in session mode the session's reads are
//     not affected, as they run in that transaction on the hub.
//   - In an extended batch a Bind is paired with
//     the next Execute by position, not by portal name: a batch that binds
//     two portals before executing them in another order can have a
//     savepoint or SET followed that did not run.
//   - Pooled hub connections keep the role and database settings of their
//     login until HubPoolMaxAge; only a changed default isolation level
//     retires them sooner.
//   - pgbench -S throughput through the proxy is below PgBouncer's on the
//     shared, virtualised 2-core machine (BenchmarkPGBenchSelect on a quiet
//     machine: 0.5-0.6 of direct and 0.8-0.85 of PgBouncer, which itself
//     reaches only 0.55-0.65 of direct, so 0.85 of direct is out of reach
//     for any proxy there). Per transaction the proxy makes about the
//     system calls PgBouncer makes (5.2 to its 4.8: 2 reads, 2 writes, 0.7
//     poller waits) and as many context switches (0.8 to 0.6), yet spends
//     39-45 µs of CPU to PgBouncer's 28-30. perf puts the difference in
//     the kernel's send and wake-up path (a write costs the proxy about
//     1.5 times what it costs PgBouncer: the runtime's threads run on both
//     cores, so more wake-ups cross CPUs) and in the runtime's scheduler
//     (findRunnable, about a tenth of the proxy's CPU). With GOMAXPROCS=1
//     the same benchmark took 33-40 µs and reached 0.9-0.97 of PgBouncer,
//     but fell behind when other processes loaded the machine.
package pgfront
