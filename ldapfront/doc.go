// Package ldapfront is spokeproxy's LDAPv3 front: a transparent relay that serves
// reads from the site's local syncrepl consumer, forwards writes to the hub as the
// client's own identity, lets a client read its own writes, and refuses writes with
// result 52 (unavailable) while the hub is unreachable.
//
// # Main types
//
//   - Server (server.go): New(Config, Site, *metrics.LDAPFront, *slog.Logger),
//     Serve(ctx, net.Listener) per listener (wrap it with tls.NewListener for
//     LDAPS), Shutdown(ctx) which sends every client a Notice of Disconnection,
//     Reconfigure(Config) for a reload (sessions read the Config through an
//     atomic pointer).
//   - Config: replica URL, base DN, client and hub TLS, consistency mode and
//     wait timeout, proxy_auth identity, limits. The proxy package maps its file
//     configuration onto it.
//   - Site: the part of *routing.Site the front uses (Decide, WaitFor, DialHub,
//     failure reports). When the Site also offers Changes and HubUnavailable,
//     hub connections are dropped the moment it judges the hub down.
//   - PDU (pdu.go): one LDAPMessage read by ReadPDU, which caps its size before
//     allocating and decodes only what routing needs: messageID, protocolOp,
//     controls, the extended request name, the Bind DN, method and password
//     (memory only, never logged) and Abandon/Cancel targets. Errors are typed
//     (*MalformedError, *TooLargeError; IsMalformed, IsTooLarge).
//   - encode.go: the results the front produces itself, the Notice of
//     Disconnection, and the few rewrites it does (controls added to requests,
//     Post-Read stripped from responses).
//
// # Per client connection (session.go, bind.go)
//
//	client --PDU--> session reader --(reads)--> replica conn --> replica reader --+
//	                      |                                                       |
//	                      +--(writes)--> hub conn (dialled through Site.DialHub   |
//	                                     on first need, bound as the client) ---+-+--> one writer --> client
//
// Each backend reader relays responses straight from its read buffer (no copy
// while a message fits in it) into the client's buffered writer, flushing only
// when no further complete message is buffered, so an entry and its result go
// out in one write; requests go to the backend from the session reader. There
// is no goroutine handoff per message. Plain TCP connections (client, replica,
// hub) read and write with raw non-blocking socket calls (internal/rawconn), which
// spares the runtime's per-syscall scheduling work on every relayed message.
// Per search the relay makes about one read and one write per direction, plus
// the read that finds a socket empty before waiting in the poller; nothing on
// that path allocates beyond the request and its op, sets a deadline (a write
// to a client gets WriteTimeout only once it must wait for the client to
// read), or looks up a metric series by its labels.
//
// Messages are relayed as bytes with their message IDs unchanged; controls,
// paged results, sorting, persistent and sync searches, referrals and unknown
// extensions pass through untouched. The first error on the client connection
// closes all three connections; a lost backend connection answers only the
// operations that were in flight on it. No goroutine outlives its connection.
//
// Routing: Search, Compare and WhoAmI go to the replica; Add, Modify, Delete,
// ModifyDN, Password Modify, transactions and unknown extended operations to the
// hub; so do reads carrying Don't Use Copy, and sync searches when the replica's
// root DSE does not list the Sync Request control.
//
// Transactions (RFC 5805): Start Transaction, every operation carrying the
// Transaction Specification control (reads included) and End Transaction run
// on the session's hub connection, where the transaction lives. Operations
// inside a transaction are relayed without the proxy's Post-Read control
// (slapd refuses it there with 53) and without a position read: nothing is
// committed until End Transaction, whose success reads the hub's contextCSN
// like any other extended write. With RefuseTransactions (ldap.transactions:
// refuse) Start Transaction is answered unwillingToPerform (53) by the proxy
// and never reaches the hub. Abandon and Cancel go where
// their target runs; Unbind ends both sides. Where the replica or hub is down,
// routing.Decide says what happens (reads to the hub, or 52).
//
// Identity: a simple Bind is checked on the replica and its answer relayed; the
// hub connection is bound as the same DN when first needed, and a new Bind
// closes it. A bind the replica rejects with 49 is tried on the hub while it is
// up (dialled off the replica's reader, so a slow WAN holds up only that bind's
// answer); such a session is then served from the hub (metric hub_only_binds). SASL
// binds are relayed to the replica; writes after them use proxy_auth with the
// Proxied Authorization control naming the client (learnt with WhoAmI), or are
// refused with 53 and a message saying so.
//
// Read-your-writes: forwarded Add, Modify and ModifyDN carry a Post-Read control
// for entryCSN, removed from the response unless the client asked for it;
// after Delete, Password Modify and other extended writes the hub's contextCSN
// is read on the same connection before the response is sent on. In session
// mode a later read on the connection waits (Site.WaitFor, bounded by
// WaitTimeout) until the replica covers that position; in site mode the write's
// response itself is held until then. When the hub connection dies between a
// write's response and that contextCSN read, the session's next read asks the
// hub for its contextCSN first (a newer one covers the lost one); with the hub
// unusable the read is treated as a wait that timed out (on_timeout).
//
// Failures: a write while the hub is unusable gets 52 naming the hub and saying
// the site is read-only, and the connection stays usable; a write in flight when
// the hub connection breaks (or the Site judges the hub down) gets 80 "outcome
// unknown", and the failure is reported to the Site. A hub connection closed
// by the hub while idle (its idletimeout; EOF or a Notice of Disconnection,
// nothing in flight) is only a suspicion: the Site probes the hub at once and
// the site stays writable if it answers; the session's next write dials anew. Malformed or oversized
// input gets a Notice of Disconnection (protocolError) and a close, without
// disturbing other clients. Beyond MaxOutstanding operations a request gets 51.
// A client that does not take a response within WriteTimeout (default 30s: it
// stopped reading a large search) is closed, which releases its replica and
// hub connections (metric slow_clients).
package ldapfront
