// Package ldapfront is spokeproxy's LDAPv3 front: a transparent relay that serves
// reads from the site's local syncrepl consumer, forwards writes to the hub as the
// client's own identity, lets a client read its own writes, and refuses writes with
// result 52 (unavailable) while the hub is unreachable.
//
// It owns BER framing (pdu.go: ReadPDU caps a message's size before allocating and
// decodes only messageID, protocolOp, controls, the extended request name, the
// Bind DN/method and Abandon/Cancel targets), the encoders for the results the
// front produces itself and the Notice of Disconnection (encode.go), sessions, op
// classification, bind handling and relaying (server.go, session.go).
//
// Messages are relayed as bytes: controls, paged results, sorting, persistent and
// sync searches, referrals and unknown extensions pass through untouched. The only
// messages the front rewrites are forwarded writes to which it adds the Post-Read
// control (and their responses, from which it strips it again) and writes after a
// SASL bind, to which it adds the Proxied Authorization control.
//
// Per client connection:
//
//	client --PDU--> session reader --(reads)--> replica conn --> replica reader --+
//	                      |                                                      |
//	                      +--(writes)--> hub conn (dialled on first need,        |
//	                                     bound as the client) --> hub reader ----+--> writer (mutex) --> client
//
// Message IDs pass through unchanged. The first error on any of the three
// connections closes all three; no goroutine outlives its connection.
package ldapfront
