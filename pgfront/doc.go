// Package pgfront is spokeproxy's PostgreSQL wire front: it accepts
// PostgreSQL clients, authenticates them, and relays each routing unit (a
// simple Query, or an extended-protocol batch up to Sync) to the local hot
// standby or to the hub, as the routing core decides.
//
// It owns:
//
//   - the SQL classifier (Classifier, lexer.go): a real lexer that knows
//     comments, strings, quoted identifiers and dollar quotes, and a
//     statement classifier whose only job is to say read, write, transaction
//     control, session state or session-pinning. Unknown means write: a
//     write sent to the hub is slow, a write sent to the standby fails.
//
// See DESIGN.md section 4 for the contract.
package pgfront
