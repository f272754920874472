package pgfront

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/spokeproxy/spokeproxy/internal/rawconn"
	"github.com/spokeproxy/spokeproxy/metrics"
	"github.com/spokeproxy/spokeproxy/routing"
)

// preparedStmt is a protocol-level prepared statement the client made; it
// is prepared on each backend only when a batch there uses it.
type preparedStmt struct {
	name  string
	parse []byte // the client's Parse, encoded
	query string // its text
	class Classification
}

// batchMsg is one client message of an extended-protocol batch.
type batchMsg struct {
	// raw is the message as the client sent it. It points into the
	// session's batch buffer: valid until the batch ends (Sync, or a Flush
	// that sends it).
	raw  []byte
	typ  byte   // 'P', 'B', 'D', 'E', 'C', 'S'
	stmt string // statement the message names (Parse, Bind, Describe/Close of a statement)
	// usesStmt: a Bind or a Describe of a statement, which needs the
	// statement prepared on the backend it runs on; ps is that statement as
	// the client had it when the message arrived (a later Parse of the same
	// name in the batch, as pgjdbc sends BEGIN and the query both unnamed,
	// does not change what this message uses). nil if unknown.
	usesStmt bool
	ps       *preparedStmt
	// closesStmt: a Close of a statement (as opposed to a portal).
	closesStmt bool
	// setConfigs: the set_config() calls of a Bind, rendered with its
	// parameters when it arrived (raw does not outlive a flushed batch);
	// setConfigPin: one of them could not be, so the unit pins.
	setConfigs   []setConfigRepeat
	setConfigPin bool
}

// unit is one routing unit: a simple Query or an extended batch up to Sync.
type unit struct {
	simple bool
	query  string     // simple
	msgs   []batchMsg // extended, the last one is Sync
	class  Classification
	fn     bool   // a FunctionCall
	fnOID  uint32 // the function it calls
	raw    []byte
}

// session is one authenticated client connection. All its fields are
// owned by the session goroutine except active, read by the cancel path.
type session struct {
	srv    *Server
	conn   net.Conn
	in     *frameReader // the client's messages
	out    *msgWriter   // to the client, written once per turn
	params map[string]string
	creds  *credentials
	log    *slog.Logger
	key    cancelKey

	replica *backendConn // nil while the session has none (lost, or down at login)
	hub     *backendConn
	// replicaFailed: when a replica reconnect last failed. The next waits
	// a second, unless the routing core saw the replica come up since.
	replicaFailed time.Time

	active atomic.Pointer[backendConn] // backend running the client's current request

	txOn     *backendConn // backend holding the open transaction; nil when idle
	txLost   bool         // the hub transaction was cut: statements fail until ROLLBACK/COMMIT
	txBegin  string       // the client's BEGIN, replayed on the hub when a lazy transaction moves
	txReplay []txStmt     // the open transaction's SETs and savepoints: replayed if it moves to the hub, SETs settled when it ends
	// txSnapshot: the replica transaction is a REPEATABLE READ read-write
	// one, opened there while the hub was unavailable: moving it to the hub
	// would change its snapshot, so it never moves.
	txSnapshot bool
	// txReadOnly: the replica transaction is READ ONLY (its BEGIN, the
	// session's default, or a SET TRANSACTION in it, as pg_dump sends): a
	// FunctionCall in it that reads a large object (pg_dump's lo_open,
	// loread) runs there, in its snapshot, rather than moving it.
	txReadOnly bool
	// txFailed: the open transaction is in a failed state ('E'): on the
	// replica, units that neither end it nor roll back to a savepoint stay
	// there (plan), for PostgreSQL's 25P02.
	txFailed bool
	// hubPosOwed: something committed on the hub in a unit that left the
	// open hub transaction behind it (COMMIT AND CHAIN, "INSERT ...;
	// BEGIN"), and its position was not learnt then: the end of that
	// transaction learns it, a ROLLBACK too.
	hubPosOwed bool
	pinned     bool
	listens    bool // LISTEN ran on the hub: relay notifications while idle
	// pinLost: the hub endpoint whose connection a pinned session lost.
	// Its state there (temporary tables, LISTEN, session advisory locks,
	// held cursors) is gone, so the session ends at its next safe point,
	// as it would have on a direct connection, rather than run on a fresh
	// connection without it.
	pinLost string
	// defaultReadOnly, isolation: what a transaction that names no access
	// mode or isolation level gets (default_transaction_read_only and
	// _isolation), as the replica had them at login (startup options, role
	// and database settings), then as the session's SETs changed them. The
	// login values are what RESET returns to.
	defaultReadOnly bool
	isolation       Isolation
	loginReadOnly   bool
	loginIsolation  Isolation
	sets            []string    // session SET/RESET statements, replayed when a hub connection attaches
	pos             routing.LSN // read-your-writes position; 0 = none
	// posUnknown: a write committed on the hub but the answer to its
	// position query was lost with the connection: the next local read
	// asks the hub for its position first (waitPos).
	posUnknown bool

	stmts map[string]*preparedStmt // by name; "" is the unnamed statement

	changes  <-chan struct{}
	hubShown bool // in_hot_standby last told: off (true) or on (false)

	// runCtx is run's context: its cancellation unblocks the active
	// backend once per session instead of once per exchange.
	runCtx context.Context
	// open is the unit in flight after a Flush without Sync, until its
	// Sync; nil otherwise.
	open *flight
	// idle is set while the session waits for the client with no batch,
	// flushed unit or transaction open: the moment a drain may end it.
	idle atomic.Bool
	// broken: the client failed in the middle of a unit; close pools no
	// backend then.
	broken bool

	// The extended-protocol batch being received (up to Sync or Flush):
	// its messages, and their bytes, copied out of the client reader.
	// Both are reused from batch to batch.
	batch    []batchMsg
	batchBuf []byte
	// Scratch for the unit and flight of a request that is answered
	// within one turn (not kept past it, unlike a flushed flight).
	unitBuf   unit
	flightBuf flight
}

func newSession(srv *Server, conn net.Conn, in *frameReader, out *msgWriter, params map[string]string, creds *credentials, log *slog.Logger) *session {
	p := make(map[string]string, len(params))
	for k, v := range params {
		p[k] = v
	}
	if p["database"] == "" {
		p["database"] = p["user"]
	}
	return &session{srv: srv, conn: conn, in: in, out: out, params: p, creds: creds, log: log, stmts: make(map[string]*preparedStmt)}
}

func (s *session) close() {
	s.replica.close()
	if s.replica != nil {
		s.srv.front.ReplicaConnections.Dec()
	}
	if s.hub != nil && !s.broken && s.txOn == nil && !s.txLost && !s.pinned && s.open == nil && s.srv.config().HubPoolSize > 0 && s.hub.alive() {
		// Reset the connection's session state and offer it to the next
		// session of the same role: its first write then costs no login.
		b := s.hub
		s.hub = nil
		b.pendingSQL, b.pendingClose = nil, nil
		ctx, cancel := context.WithTimeout(context.Background(), s.srv.config().BackendTimeout)
		err := s.silent(ctx, b, "DISCARD ALL")
		cancel()
		b.prepared = make(map[string]bool)
		if err == nil && s.srv.putHub(poolKey(b.endpoint, s.params), b) {
			return
		}
		b.close()
		s.srv.front.HubConnections.Dec()
	}
	s.dropHub()
}

func (s *session) dropHub() {
	if s.hub != nil {
		if s.pinned {
			s.pinLost = s.hub.endpoint
		}
		s.hub.close()
		s.hub = nil
		s.srv.front.HubConnections.Dec()
	}
}

func (s *session) setActive(b *backendConn) { s.active.Store(b) }

func (s *session) activeBackend() *backendConn { return s.active.Load() }

// isolationProbe learns the login's default isolation level, pipelined
// behind the replica login.
const isolationProbe = "SHOW default_transaction_isolation"

// dialReplica opens the session's replica connection as the client's
// role, and reports the default isolation level it logged in with.
func (s *session) dialReplica(ctx context.Context) (*backendConn, Isolation, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", s.srv.config().ReplicaAddr)
	if err != nil {
		s.srv.site.ReportReplicaFailure(err)
		return nil, 0, &replicaError{op: "connect", err: err}
	}
	c = rawconn.Wrap(c)
	b, iso, err := login(ctx, c, false, s.srv.config().ReplicaAddr, s.params, s.creds, isolationProbe)
	if err != nil {
		c.Close()
		var be *backendError
		if errors.As(err, &be) {
			return nil, 0, err
		}
		return nil, 0, &replicaError{op: "log in", err: err}
	}
	return b, parseIsolation(iso), nil
}

// parseIsolation reads a transaction_isolation setting's value.
func parseIsolation(v string) Isolation {
	switch strings.ToLower(v) {
	case "serializable":
		return IsolationSerializable
	case "repeatable read":
		return IsolationRepeatableRead
	case "read committed":
		return IsolationReadCommitted
	case "read uncommitted":
		return IsolationReadUncommitted
	}
	return IsolationDefault
}

// start opens the replica connection as the client's role and finishes
// the client's login: AuthenticationOk, ParameterStatus, the proxy-owned
// BackendKeyData (with the replica backend's real PID), ReadyForQuery.
func (s *session) start(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.srv.config().BackendTimeout)
	defer cancel()
	b, iso, err := s.dialReplica(ctx)
	if err != nil {
		var be *backendError
		if errors.As(err, &be) || s.srv.config().RefuseWhenReplicaDown {
			return err
		}
		// The replica is down: serve the session from the hub while it is
		// reachable (config replica.when_unavailable: hub).
		hb, herr := s.hubConn(ctx)
		if herr != nil {
			return &replicaError{op: "connect (and the hub is unavailable too: " + herr.Error() + ")", err: err}
		}
		s.log.Info("replica unavailable at login: session served by the hub", "err", err)
		b = hb
	} else {
		s.replica = b
		s.srv.front.ReplicaConnections.Inc()
		s.loginIsolation, s.isolation = iso, iso
		s.loginReadOnly = b.params["default_transaction_read_only"] == "on"
		s.defaultReadOnly = s.loginReadOnly
	}
	s.key.pid = b.pid
	s.srv.register(s)
	s.out.send(&pgproto3.AuthenticationOk{})
	s.changes = s.srv.site.Changes()
	s.hubShown = s.srv.site.HubUnavailable() == nil
	for k, v := range b.params {
		if k == "in_hot_standby" {
			v = s.hotStandbyValue()
		}
		s.out.send(&pgproto3.ParameterStatus{Name: k, Value: v})
	}
	var secret [4]byte
	secret[0], secret[1], secret[2], secret[3] = byte(s.key.secret>>24), byte(s.key.secret>>16), byte(s.key.secret>>8), byte(s.key.secret)
	s.out.send(&pgproto3.BackendKeyData{ProcessID: s.key.pid, SecretKey: secret[:]})
	s.out.readyForQuery('I')
	return s.out.flush()
}

func (s *session) hotStandbyValue() string {
	if s.hubShown {
		return "off"
	}
	return "on"
}

// noteSiteChange sends a fresh in_hot_standby when the hub's reachability
// changed since the client was last told.
func (s *session) noteSiteChange() {
	select {
	case <-s.changes:
	default:
		return
	}
	s.changes = s.srv.site.Changes()
	up := s.srv.site.HubUnavailable() == nil
	if up != s.hubShown {
		s.hubShown = up
		s.out.send(&pgproto3.ParameterStatus{Name: "in_hot_standby", Value: s.hotStandbyValue()})
	}
}

// run serves the client until it terminates or the connection breaks.
func (s *session) run(ctx context.Context) error {
	// Ending the session unblocks the backend exchange in progress, if
	// any (relay checks ctx after making its backend active, so one of the
	// two always sees the other), and the client read or write: with
	// deadlines, since a Close could wait for the session itself (the
	// client's armed reader holds the socket inside a read).
	s.runCtx = ctx
	stop := context.AfterFunc(ctx, func() {
		if b := s.activeBackend(); b != nil {
			_ = b.conn.SetDeadline(time.Now())
		}
		_ = s.conn.SetDeadline(time.Now())
	})
	defer stop()
	// On Shutdown an idle session is woken from its read to be ended; one
	// that is busy ends at its next idle point (checked below). The session
	// sets idle before it checks the drain, and the drain ends before this
	// reads idle, so one of the two always sees the other.
	stopDrain := context.AfterFunc(s.srv.draining, func() {
		if s.idle.Load() {
			_ = s.conn.SetReadDeadline(time.Now())
		}
	})
	defer stopDrain()
	for {
		idle := len(s.batch) == 0 && s.open == nil && s.txOn == nil && !s.txLost
		if idle {
			s.idle.Store(true)
			if s.srv.draining.Err() != nil {
				sendFatal(s.out, "57P01", adminShutdownMessage)
				return nil
			}
		}
		var stopWatch func() error
		if s.listens && s.hub != nil && s.txOn == nil && len(s.batch) == 0 && s.open == nil {
			stopWatch = s.watchNotifications(s.hub)
		}
		typ, frame, err := s.in.next()
		var m frontMsg
		if err == nil {
			m, err = parseFront(typ, frame)
		}
		s.idle.Store(false)
		if err == nil && idle && s.srv.draining.Err() != nil {
			// The drain may have set a read deadline just as this message
			// arrived: the session is busy now and may finish its work.
			_ = s.conn.SetReadDeadline(time.Time{})
		}
		if stopWatch != nil {
			if werr := stopWatch(); werr != nil {
				return &clientIOError{err: werr}
			}
		}
		if err != nil && idle && s.srv.draining.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			sendFatal(s.out, "57P01", adminShutdownMessage)
			return nil
		}
		if err != nil {
			var tooBig *pgproto3.ExceededMaxBodyLenErr
			if errors.As(err, &tooBig) {
				s.srv.m.ProtocolErrors.Inc()
				sendFatal(s.out, "08P01", fmt.Sprintf("message of %d bytes exceeds the maximum of %d", tooBig.ActualBodyLen, tooBig.MaxExpectedBodyLen))
			} else if !errors.Is(err, net.ErrClosed) && !isEOF(err) {
				s.srv.m.ProtocolErrors.Inc()
				sendFatal(s.out, "08P01", "invalid frontend message: "+err.Error())
			}
			return err
		}
		if err := s.handleMessage(ctx, m); err != nil {
			if errors.Is(err, errTerminate) {
				return nil
			}
			return err
		}
		if s.pinLost != "" {
			s.log.Warn("ending a pinned session: its hub connection was lost with the state it held", "hub", s.pinLost)
			sendFatal(s.out, "08006", pinLostMessage(s.pinLost))
			return nil
		}
	}
}

// pinLostMessage ends a pinned session whose hub connection is gone.
func pinLostMessage(hub string) string {
	return "terminating the session: its connection to hub " + hub +
		" was lost, and with it the session state held there (temporary tables, LISTEN, session advisory locks, WITH HOLD cursors); reconnect"
}

// errTerminate: the client said goodbye.
var errTerminate = errors.New("pgfront: client terminated")

// syncFrame is an encoded Sync.
var syncFrame = []byte{'S', 0, 0, 0, 4}

// handleMessage acts on one client message: a simple Query or a
// FunctionCall is run at once, extended-protocol messages are gathered
// until Sync (or sent up to a Flush).
func (s *session) handleMessage(ctx context.Context, m frontMsg) error {
	switch m.typ {
	case 'Q':
		// Classify first: the text is in the client reader's buffer, which
		// the COPY of a batch run just below could refill.
		class, sql := s.srv.classifier.Load().classifyBytes(m.sql)
		if len(s.batch) > 0 || s.open != nil {
			// A simple Query ends an unsynced batch as PostgreSQL does
			// implicitly; run what we have first.
			s.addBatch(batchMsg{raw: syncFrame, typ: 'S'})
			if err := s.endBatch(ctx); err != nil {
				return err
			}
		}
		u := &s.unitBuf
		*u = unit{simple: true, query: sql, class: class}
		return s.runUnit(ctx, u)
	case 'P':
		st := s.stmts[string(m.name)]
		if st == nil || !bytes.Equal(st.parse, m.frame) {
			// A new statement (re-parsing the same text under the same
			// name, as drivers do with the unnamed one, reuses the entry).
			class, sql := s.srv.classifier.Load().classifyBytes(m.sql)
			st = &preparedStmt{name: string(m.name), parse: bytes.Clone(m.frame), query: sql, class: class}
			s.stmts[st.name] = st
		}
		s.addBatch(batchMsg{raw: st.parse, typ: 'P', stmt: st.name})
	case 'B':
		st, name := s.stmt(m.name)
		bm := batchMsg{typ: 'B', stmt: name, usesStmt: true, ps: st}
		if st != nil {
			if one, ok := st.class.Single(); ok && len(one.SetConfigs) > 0 {
				var bind pgproto3.Bind
				ok := bind.Decode(m.frame[5:]) == nil
				if ok {
					bm.setConfigs, ok = renderSetConfigs(one.SetConfigs, &bind)
				}
				bm.setConfigPin = !ok
			}
		}
		s.copyBatch(m.frame, bm)
	case 'D':
		bm := batchMsg{typ: 'D'}
		if m.obj == 'S' {
			bm.ps, bm.stmt = s.stmt(m.name)
			bm.usesStmt = true
		}
		s.copyBatch(m.frame, bm)
	case 'E':
		s.copyBatch(m.frame, batchMsg{typ: 'E'})
	case 'C':
		bm := batchMsg{typ: 'C'}
		if m.obj == 'S' {
			_, bm.stmt = s.stmt(m.name)
			bm.closesStmt = true
		}
		s.copyBatch(m.frame, bm)
	case 'H':
		// The client waits for the answers so far (libpq's
		// PQsendFlushRequest, pgx's pipeline): the batch is routed now
		// and stays on that backend until its Sync.
		err := s.flushBatch(ctx, s.batch)
		s.resetBatch()
		return err
	case 'S':
		s.addBatch(batchMsg{raw: syncFrame, typ: 'S'})
		return s.endBatch(ctx)
	case 'F':
		var fc pgproto3.FunctionCall
		if err := fc.Decode(m.frame[5:]); err != nil {
			s.srv.m.ProtocolErrors.Inc()
			sendFatal(s.out, "08P01", "invalid frontend message: "+err.Error())
			return err
		}
		return s.runUnit(ctx, &unit{fn: true, fnOID: fc.Function, raw: mustEncode(&fc), class: Classification{Stmts: []Statement{{Kind: StmtWrite}}}})
	case 'X':
		return errTerminate
	case 'd', 'c', 'f':
		// CopyData, CopyDone, CopyFail outside COPY: PostgreSQL ignores
		// these too.
	default:
		s.srv.m.ProtocolErrors.Inc()
		sendFatal(s.out, "08P01", "unexpected message "+frontName(m.typ))
		return fmt.Errorf("pgfront: unexpected %s", frontName(m.typ))
	}
	return nil
}

// stmt is the statement a message names, as the session knows it now
// (nil if it does not), and the name as a string: the statement's own
// when known, so that looking it up costs no allocation.
func (s *session) stmt(name []byte) (*preparedStmt, string) {
	if st := s.stmts[string(name)]; st != nil {
		return st, st.name
	}
	return nil, string(name)
}

// addBatch adds a message whose raw bytes the session owns.
func (s *session) addBatch(m batchMsg) { s.batch = append(s.batch, m) }

// copyBatch adds a message whose bytes are in the client reader's
// buffer: they are copied into the batch buffer first.
func (s *session) copyBatch(frame []byte, m batchMsg) {
	start := len(s.batchBuf)
	s.batchBuf = append(s.batchBuf, frame...)
	m.raw = s.batchBuf[start:len(s.batchBuf):len(s.batchBuf)]
	s.addBatch(m)
}

// resetBatch empties the batch for the next one, dropping buffers a huge
// batch left behind.
func (s *session) resetBatch() {
	clear(s.batch) // release the strings and buffers the messages name
	s.batch = s.batch[:0]
	s.batchBuf = s.batchBuf[:0]
	if cap(s.batchBuf) > msgWriterKeep {
		s.batchBuf = nil
	}
	if cap(s.batch) > 1024 {
		s.batch = nil
	}
}

func isEOF(err error) bool {
	return err != nil && (errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "EOF"))
}

func mustEncode(m pgproto3.Message) []byte {
	b, err := m.Encode(nil)
	if err != nil {
		panic(fmt.Sprintf("pgfront: encoding %T: %v", m, err)) // only for messages we decoded ourselves
	}
	return b
}

// extendedUnit is a unit of its own for a batch that a Flush sends ahead
// of its Sync (kept past the batch, so it keeps its own copy of msgs).
func (s *session) extendedUnit(msgs []batchMsg) *unit {
	return &unit{msgs: append([]batchMsg(nil), msgs...), class: s.batchClass(msgs)}
}

// Shared classifications of a batch: callers must not modify them.
var (
	unknownStmts = []Statement{{Kind: StmtWrite}}
	pinStmts     = []Statement{{Kind: StmtPin}}
	emptyStmts   = []Statement{{Kind: StmtEmpty}}
)

// batchClass classifies a batch by the statements it executes (Bind) or,
// for a batch that only prepares, by nothing (it may run anywhere). A
// statement the session does not know is a write. The result may share
// the classifier's slices; it has no spare capacity, so appending to it
// copies.
func (s *session) batchClass(msgs []batchMsg) Classification {
	var out []Statement
	shared := true
	for _, m := range msgs {
		if m.typ != 'B' {
			continue
		}
		stmts := unknownStmts
		if st := m.ps; st != nil {
			stmts = st.class.Stmts
		}
		if m.setConfigPin {
			stmts = pinStmts
		}
		switch {
		case out == nil:
			out = stmts // the usual batch: one Bind, no copy
		case shared:
			out = append(out[:len(out):len(out)], stmts...)
			shared = false
		default:
			out = append(out, stmts...)
		}
	}
	if len(out) == 0 {
		out = emptyStmts
	}
	return Classification{Stmts: out[:len(out):len(out)]}
}

// plan is where a unit runs and what goes with it.
type plan struct {
	to         *backendConn
	route      string // metric label
	capture    bool   // pipeline the position query behind the unit
	safetyNet  bool   // hold responses; on 25006 before any row, re-run on the hub
	rewrite    string // simple query text to send instead of the client's
	refuse     error
	moveToHub  bool // the replica transaction moves to the hub before this unit
	waitForPos bool
	discard    bool // drop every answer (proxy-internal statements)
}

func (s *session) runUnit(ctx context.Context, u *unit) error {
	start := time.Now()
	kind := u.class.RequestKind()
	for retried := false; ; retried = true {
		p, err := s.plan(ctx, u)
		if err != nil {
			return err
		}
		if s.log.Enabled(ctx, slog.LevelDebug) {
			target := "none"
			if p.to != nil {
				target = p.to.target()
			}
			s.log.Debug("unit", "class", u.class.Strongest().String(), "simple", u.simple, "to", target,
				"refuse", p.refuse != nil, "in_txn", s.txOn != nil, "txn_on_hub", s.txOn != nil && s.txOn == s.hub, "pinned", s.pinned)
		}
		if s.txLost && (p.refuse == nil || (isHubLost(p.refuse) && s.endsLostTxn(u, false))) {
			// Includes a ROLLBACK that found its hub transaction lost just
			// now (the hub unavailable): the transaction is over, and a
			// ROLLBACK of it succeeds.
			return s.answerLost(u)
		}
		if p.refuse != nil {
			s.countRefusal(kind == "write" || u.class.Has(StmtCommit), p.refuse)
			s.srv.front.Request(metrics.RouteRefuse, kind)
			return s.refuse(ctx, u, p.refuse)
		}
		if p.waitForPos {
			ok, werr := s.waitPos(ctx)
			if werr != nil {
				s.srv.front.Request(metrics.RouteRefuse, kind)
				return s.refuse(ctx, u, werr)
			}
			if !ok {
				if hb, herr := s.hubConn(ctx); herr == nil {
					p.to, p.route, p.safetyNet, p.rewrite = hb, metrics.RouteHub, false, ""
				}
			}
		}
		if p.moveToHub {
			s.moveTxnToHub(p.to)
		}
		res, err := s.exchange(ctx, p.to, u, p)
		if err != nil {
			if res.open != nil {
				return s.flightLost(s.keep(res.open), err)
			}
			if !retried && s.replicaLostUnseen(p.to, res, err) {
				continue // planned again without the lost connection
			}
			return s.backendFailed(p.to, u, err)
		}
		if res.open != nil {
			// An extended COPY FROM STDIN: the unit ends at the client's next Sync.
			f := s.keep(res.open)
			f.start = start
			s.open = f
			return nil
		}
		if res.rerun {
			s.srv.m.SafetyNetReruns.Inc()
			hb, err := s.hubConn(ctx)
			if err != nil {
				s.countRefusal(true, err) // the standby said it writes
				return s.refuse(ctx, u, err)
			}
			p2 := plan{to: hb, route: metrics.RouteHub, capture: s.learnsPosition(u.class, true)}
			if s.txOn != nil && s.txOn == s.replica {
				s.moveTxnToHub(hb)
			}
			p = p2
			res, err = s.exchange(ctx, hb, u, p2)
			if err != nil {
				return s.backendFailed(hb, u, err)
			}
		}
		s.srv.front.Request(p.route, kind)
		s.srv.front.RequestDuration(p.route).Observe(time.Since(start).Seconds())
		return s.finish(ctx, p, u, res)
	}
}

// isHubLost reports whether err says the session's hub transaction was
// lost (not that its pinned state was).
func isHubLost(err error) bool {
	var hl *hubLostError
	return errors.As(err, &hl) && !errors.Is(hl.err, errPinnedStateLost)
}

// countRefusal counts a refused unit in spokeproxy_writes_refused_total
// when it is a write refused for want of a usable hub: a read refused
// because no backend can answer it is not a refused write, and counting
// it would page the on-call for an outage of the local standby.
func (s *session) countRefusal(write bool, err error) {
	var hu *routing.HubUnavailableError
	if write && errors.As(err, &hu) {
		s.srv.front.WritesRefused.Inc()
	}
}

// replicaLostUnseen reports whether b, the session's replica connection,
// failed during a unit that may simply run again: outside a transaction
// and before any answer reached the client (the rule of the 25006 safety
// net; nothing on a standby writes). The connection is dropped; planning
// again reconnects it, or sends the unit to the hub, or refuses it, as
// the routing core and the replica policy say.
func (s *session) replicaLostUnseen(b *backendConn, res exResult, err error) bool {
	var ce *clientIOError
	if b == nil || b != s.replica || s.txOn != nil || res.relayed || errors.As(err, &ce) {
		return false
	}
	s.log.Info("replica connection lost before the answer: the request is routed again", "err", err)
	s.dropReplica(err)
	return true
}

// dropReplica closes a replica connection that failed. A broken
// connection is reported to the routing core; a FATAL from the replica is
// not (a single terminated backend says nothing of the server: the next
// reconnect finds out).
func (s *session) dropReplica(err error) {
	if s.replica == nil {
		return
	}
	var ended *backendEndedError
	if !errors.As(err, &ended) {
		s.srv.site.ReportReplicaFailure(err)
	}
	s.replica.close()
	s.replica = nil
	s.srv.front.ReplicaConnections.Dec()
}

// reconnectReplica opens a replica connection again for a session that
// has none, between transactions, once the routing core sees the replica
// up: the session's SETs are replayed there and its prepared statements
// prepared again when used. A failed attempt is not repeated for a
// second, unless the routing core has seen the replica come up since (a
// restart it saw end): then the replica is worth trying at once.
func (s *session) reconnectReplica(ctx context.Context) {
	if s.replica != nil || s.pinned || s.txOn != nil || s.txLost || s.open != nil {
		return
	}
	rv := s.srv.site.Snapshot().Replica
	if !rv.Up || (time.Since(s.replicaFailed) < time.Second && !rv.Since.After(s.replicaFailed)) {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, s.srv.config().BackendTimeout)
	defer cancel()
	b, iso, err := s.dialReplica(dctx)
	if err != nil {
		s.replicaFailed = time.Now()
		s.log.Info("replica reconnect failed", "err", err)
		return
	}
	if s.loginIsolation == IsolationDefault {
		// The session logged in without a replica: these are its login
		// defaults (the hub's login had the same settings).
		s.loginIsolation, s.loginReadOnly = iso, b.params["default_transaction_read_only"] == "on"
		if s.isolation == IsolationDefault {
			s.isolation, s.defaultReadOnly = s.loginIsolation, s.loginReadOnly
		}
	}
	b.pendingSQL = append(b.pendingSQL, s.sets...)
	s.replica = b
	s.srv.front.ReplicaConnections.Inc()
	s.log.Info("replica connection restored")
}

// plan decides where a unit runs (DESIGN.md section 4).
func (s *session) plan(ctx context.Context, u *unit) (plan, error) {
	k := u.class.Strongest()
	single, isSingle := u.class.Single()
	toHub := func() (plan, error) {
		hb, err := s.hubConn(ctx)
		if err != nil {
			if routing.IsHubUnavailable(err) {
				return plan{refuse: err}, nil
			}
			return plan{refuse: err}, nil
		}
		return plan{to: hb, route: metrics.RouteHub}, nil
	}
	if s.txLost {
		return plan{}, nil
	}
	if s.replica == nil {
		s.reconnectReplica(ctx)
	}
	if s.replica == nil && s.txOn == nil && !s.pinned && !u.fn {
		if k == StmtRead || k == StmtCopyOut {
			return s.planRead(ctx) // the hub, or refused, as the policy says
		}
	}
	if (u.fn && s.txOn == nil) || s.pinned || s.replica == nil || (s.txOn != nil && s.txOn == s.hub) {
		// (A FunctionCall in a transaction on the replica is a write that
		// moves it, below: lo_open's descriptor must live in the same
		// transaction as the lowrite that uses it.)
		p, err := toHub()
		if k == StmtPin && !s.pinned && err == nil && p.refuse == nil {
			s.pin()
		}
		s.noteListen(u)
		p.capture = s.learnsPosition(u.class, false)
		return p, err
	}
	inTxn := s.txOn != nil
	if inTxn && s.txFailed && !s.endsFailedTxn(u.class) {
		// A failed transaction on the replica: what does not end it gets
		// 25P02 there, as PostgreSQL answers; a write must not revive it
		// on the hub. A unit that ends it ("ROLLBACK; INSERT ...") or
		// rolls back to a savepoint the replay has ("ROLLBACK TO a;
		// INSERT ...") is planned as usual: its write runs on the hub.
		return plan{to: s.replica, route: metrics.RouteLocal}, nil
	}
	if inTxn { // a transaction on the replica
		switch {
		case u.fn && s.txReadOnly && readsLargeObject(u.fnOID):
			// The standby answers these as a READ ONLY transaction on
			// the hub would (lowrite: 25006 on both); lo_creat, which the
			// hub allows in a READ ONLY transaction, moves it.
			return plan{to: s.replica, route: metrics.RouteLocal}, nil
		case k == StmtSetLocal && isSingle && single.Isolation >= IsolationRepeatableRead && single.Access != AccessReadOnly && !s.txSnapshot:
			fallthrough
		case k == StmtWrite || k == StmtCopyIn || k == StmtPin:
			if s.txSnapshot {
				if err := s.srv.site.HubUnavailable(); err != nil {
					return plan{refuse: err}, nil
				}
				return plan{refuse: errSnapshotOnReplica}, nil
			}
			p, err := toHub()
			if err != nil || p.refuse != nil {
				return p, err
			}
			p.moveToHub = true
			p.capture = s.learnsPosition(u.class, false)
			if k == StmtPin {
				s.pin()
				s.noteListen(u)
			}
			return p, nil
		}
		// A read the standby refuses moves the transaction to the hub,
		// unless it must keep its snapshot: then the client gets the 25006.
		// A SET, SET LOCAL or SAVEPOINT that completes is followed by
		// finish (noteTxnStmts, followUnit).
		return plan{to: s.replica, route: metrics.RouteLocal, safetyNet: k == StmtRead && !s.txSnapshot}, nil
	}
	// Autocommit (idle session). A batch that opens a transaction and
	// then only reads (JDBC with autocommit off sends BEGIN with the first
	// statement) is treated as its BEGIN.
	if first := u.class.Stmts[0]; first.Kind == StmtBegin && !isSingle {
		rest := Classification{Stmts: u.class.Stmts[1:]}.Strongest()
		if rest <= StmtSavepoint && rest != StmtBegin {
			single, isSingle, k = first, true, StmtBegin
		}
	}
	if k == StmtBegin && isSingle {
		// The session defaults (SET SESSION CHARACTERISTICS,
		// default_transaction_*) apply to what BEGIN does not name.
		if single.Access == AccessDefault && s.defaultReadOnly {
			single.Access = AccessReadOnly
		}
		if single.Isolation == IsolationDefault {
			single.Isolation = s.isolation
		}
	}
	switch {
	case k == StmtBegin && isSingle:
		hubFirst := single.Isolation == IsolationSerializable ||
			(single.Isolation == IsolationRepeatableRead && single.Access != AccessReadOnly) ||
			(!s.srv.config().LazyTransactions && single.Access != AccessReadOnly)
		if hubFirst {
			p, err := toHub()
			if err != nil || p.refuse == nil || single.Isolation == IsolationSerializable {
				return p, err
			}
			// Hub down: a read-write transaction still opens locally so
			// its reads go on; its first write gets 25006 (a standby
			// refuses SERIALIZABLE).
		}
		p := plan{to: s.replica, route: metrics.RouteLocal, waitForPos: true}
		s.txBegin, s.txReplay = u.query, nil
		s.txSnapshot = single.Isolation == IsolationRepeatableRead && single.Access != AccessReadOnly
		s.txReadOnly = single.Access == AccessReadOnly
		if single.Access == AccessReadWrite && u.simple {
			// A standby refuses BEGIN READ WRITE (0A000): open it plainly.
			p.rewrite = "BEGIN"
			switch single.Isolation {
			case IsolationReadCommitted:
				p.rewrite += " ISOLATION LEVEL READ COMMITTED"
			case IsolationReadUncommitted:
				p.rewrite += " ISOLATION LEVEL READ UNCOMMITTED"
			case IsolationRepeatableRead:
				p.rewrite += " ISOLATION LEVEL REPEATABLE READ"
			}
		}
		return p, nil
	case k <= StmtCopyOut:
		p, err := s.planRead(ctx)
		if k == StmtEmpty && p.refuse != nil {
			// Parse, Describe or Close only (pgx deallocating its cache
			// after an error): nothing is read, nothing to refuse.
			p = plan{to: s.replica, route: metrics.RouteLocal}
		}
		return p, err
	case k == StmtSession:
		for _, st := range u.class.Stmts {
			if st.DropsPrepared {
				s.dropAllPrepared()
			}
		}
		// A read beside the SETs ("SET search_path ...; SELECT ...")
		// waits for the session's position as any read does.
		p := plan{to: s.replica, route: metrics.RouteLocal, waitForPos: u.class.Has(StmtRead) || u.class.Has(StmtCopyOut)}
		return p, nil
	case k <= StmtRollback && k != StmtBegin:
		// SET LOCAL, SAVEPOINT, COMMIT, ROLLBACK outside a transaction:
		// the replica answers with PostgreSQL's own warning or error. A
		// read among them ("BEGIN; SELECT ...; COMMIT" in one Query)
		// waits for the session's position as a lone read does.
		return plan{to: s.replica, route: metrics.RouteLocal, waitForPos: u.class.Has(StmtRead) || u.class.Has(StmtCopyOut)}, nil
	}
	p, err := toHub()
	if err != nil || p.refuse != nil {
		return p, err
	}
	if k == StmtPin {
		s.pin()
		s.noteListen(u)
	}
	p.capture = s.learnsPosition(u.class, false)
	return p, nil
}

// readsLargeObject reports whether fn, a FunctionCall's function, is one
// of the large-object functions a standby runs as a READ ONLY transaction
// on the hub does: lo_open, lo_close, loread, lo_lseek, lo_tell and their
// 64-bit forms (OIDs fixed in PostgreSQL's catalog). libpq calls them
// through the fast path, pg_dump among others.
func readsLargeObject(fn uint32) bool {
	switch fn {
	case 952, 953, 954, 956, 958, 3170, 3171:
		return true
	}
	return false
}

// learnsPosition reports whether a unit that runs on the hub must learn
// the hub's WAL position behind it, for the session's next local read (or,
// under consistency: site, to hold its answer until the standby has it):
// something in it commits on the hub and it ends outside a transaction.
// A unit that commits and leaves a transaction open (COMMIT AND CHAIN,
// "INSERT ...; BEGIN") does not: the position query would be the first
// statement of that transaction and take its snapshot; the position is
// owed (hubPosOwed) and learnt at that transaction's end. wrote says the
// unit's reads outside a transaction wrote (the standby refused them).
// Call it before the unit moves the transaction (s.txOn is still where
// the transaction runs).
func (s *session) learnsPosition(c Classification, wrote bool) bool {
	if !s.tracksPosition() {
		return false
	}
	commits, endsInTxn := s.hubCommits(c, wrote)
	return commits && !endsInTxn
}

// tracksPosition reports whether the session learns the positions of its
// hub commits: not under consistency: none, nor for a pinned session in
// session mode (its reads run on the hub).
func (s *session) tracksPosition() bool {
	switch s.srv.config().Consistency {
	case routing.ConsistencyNone:
		return false
	case routing.ConsistencySession:
		return !s.pinned
	}
	return true
}

// hubCommits walks a unit's statements in order, from the transaction
// open before it, and reports whether something in it commits on the hub
// (a COMMIT, a write outside a transaction, the end of a transaction whose
// position is owed) and whether it ends inside a transaction. wrote: as
// for learnsPosition.
func (s *session) hubCommits(c Classification, wrote bool) (commits, endsInTxn bool) {
	inTxn := s.txOn != nil
	for _, st := range c.Stmts {
		switch {
		case st.Kind == StmtCommit:
			commits, inTxn = true, st.Chain
		case st.Kind == StmtRollback:
			commits, inTxn = commits || (inTxn && s.hubPosOwed), st.Chain
		case st.Kind == StmtBegin:
			inTxn = true
		case !inTxn && (st.Kind >= StmtWrite || (wrote && st.Kind == StmtRead)):
			commits = true
		}
	}
	return commits, inTxn
}

// noteDefaults follows a session statement's change of the transaction
// defaults.
func (s *session) noteDefaults(st Statement) {
	if st.Kind != StmtSession {
		return
	}
	if st.ResetsAccess {
		s.defaultReadOnly = s.loginReadOnly
	}
	if st.ResetsIsolation {
		s.isolation = s.loginIsolation
	}
	if st.Access != AccessDefault {
		s.defaultReadOnly = st.Access == AccessReadOnly
	}
	if st.Isolation != IsolationDefault {
		s.isolation = st.Isolation
	}
}

// watchNotifications relays NotificationResponses (and other
// asynchronous messages) that the hub sends while the client is idle. It
// owns b's reader until the returned stop function returns. The watcher
// only blocks in Peek, which a read deadline interrupts without losing
// data; it reads messages only under mu, which stop takes before setting
// the deadline, so a message is never cut in half. It writes to the
// client outside mu: stop sets the deadline at once and then waits only
// for the write in progress (the client must see it before the session's
// next answer), which the write timeout bounds. A failed write, or the
// hub connection's loss, interrupts the session's read of the client
// with a deadline, and stop returns why the session must end.
func (s *session) watchNotifications(b *backendConn) (stop func() error) {
	var mu sync.Mutex
	stopped := false
	done := make(chan struct{})
	var werr error // set before done is closed
	// endSession makes the session end with err: the client's read is
	// interrupted (not closed: the client connection's reader may be
	// parked inside a read of its own until the session goroutine, which
	// may be waiting in stop, resumes it), and stop returns err.
	endSession := func(err error) {
		werr = err
		_ = s.conn.SetReadDeadline(time.Now())
	}
	// lost ends the session when the hub connection fails while the
	// client waits for notifications: without it the client would wait
	// forever on a LISTEN that no longer exists. hubSaid is the hub's
	// own FATAL, if it sent one. Called without mu: the write to the
	// client may wait for it (up to the write timeout).
	lost := func(hubSaid string, err error) {
		s.log.Warn("ending a listening session: its hub connection was lost while idle", "hub", b.endpoint, "hub_said", hubSaid, "err", err)
		msg := pinLostMessage(b.endpoint)
		if hubSaid != "" {
			msg += " (the hub said: " + hubSaid + ")"
		}
		sendFatal(s.out, "08006", msg)
		endSession(&hubLostError{hub: b.endpoint, err: errPinnedStateLost})
	}
	go func() {
		defer close(done)
		for {
			if b.rd.buffered() == 0 {
				if err := b.rd.wait(); err != nil {
					mu.Lock()
					if !stopped && errors.Is(err, os.ErrDeadlineExceeded) {
						// A deadline someone else left (the relay's hub-down
						// watch of the last request), not stop's.
						_ = b.conn.SetReadDeadline(time.Time{})
						mu.Unlock()
						continue
					}
					wasStopped := stopped
					mu.Unlock()
					if !wasStopped {
						lost("", err)
					}
					return
				}
			}
			mu.Lock()
			if stopped {
				mu.Unlock()
				return
			}
			send := false
			for {
				typ, frame, err := b.rd.next()
				if err != nil {
					mu.Unlock()
					lost("", err)
					return
				}
				switch typ {
				case 'Z':
					if b.sentAhead > 0 {
						b.sentAhead-- // the answer to a query sent ahead
					}
				case 'E':
					if !endsSession(frame[5:]) {
						break // a query sent ahead failed: nothing to relay
					}
					said := "an error"
					if m, err := decodeBackend(typ, frame); err == nil {
						e := m.(*pgproto3.ErrorResponse)
						said = e.Severity + " " + e.Code + " " + e.Message
					}
					mu.Unlock()
					lost(said, nil)
					return
				case 'A', 'N':
					if typ == 'N' && b.sentAhead > 0 {
						break // a notice to a query sent ahead is the proxy's
					}
					s.out.raw(frame) // copied into the write buffer
					send = true
				case 'S':
					if m, err := decodeBackend(typ, frame); err == nil {
						ps := m.(*pgproto3.ParameterStatus)
						b.params[ps.Name] = ps.Value
					}
				}
				if !b.rd.complete() {
					break
				}
			}
			mu.Unlock()
			if send {
				if err := s.out.flush(); err != nil {
					endSession(err)
					return
				}
			}
		}
	}()
	return func() error {
		mu.Lock()
		stopped = true
		_ = b.conn.SetReadDeadline(time.Now())
		mu.Unlock()
		<-done
		_ = b.conn.SetReadDeadline(time.Time{})
		return werr
	}
}

// noteListen marks the session as listening when the unit holds a LISTEN.
func (s *session) noteListen(u *unit) {
	for _, st := range u.class.Stmts {
		s.listens = s.listens || st.Listen
	}
}

func (s *session) pin() {
	if !s.pinned {
		s.pinned = true
		s.srv.m.SessionsPinned.Inc()
	}
}

// planRead routes an autocommit read: the replica once it has the
// session's position, else (per config) the hub or an error.
func (s *session) planRead(ctx context.Context) (plan, error) {
	if s.isolation == IsolationSerializable {
		// Every transaction of the session is SERIALIZABLE, which a standby
		// refuses (0A000): the hub answers while it can; otherwise the
		// replica says why itself.
		if hb, err := s.hubConn(ctx); err == nil {
			return plan{to: hb, route: metrics.RouteHub}, nil
		}
	}
	d := s.srv.site.Decide(routing.Request{Kind: routing.KindRead})
	if d.Route == routing.RouteRefuse {
		// The replica is down or stale and the policy (or the hub's state)
		// leaves no one to answer: say so rather than serve stale rows.
		return plan{refuse: &routing.ReplicaUnavailableError{Protocol: routing.Postgres, Replica: s.srv.config().ReplicaAddr, Reason: d.Reason}}, nil
	}
	if d.Route == routing.RouteHub || s.replica == nil {
		hb, err := s.hubConn(ctx)
		if err == nil {
			return plan{to: hb, route: metrics.RouteHub}, nil
		}
		if s.replica == nil {
			// The session lost its replica connection and could not make
			// another, and the hub is unavailable too.
			return plan{refuse: &routing.ReplicaUnavailableError{Protocol: routing.Postgres, Replica: s.srv.config().ReplicaAddr, Reason: routing.ReasonReplicaDown, Err: err}}, nil
		}
	}
	return plan{to: s.replica, route: metrics.RouteLocal, safetyNet: true, waitForPos: true}, nil
}

// waitPos waits for the replica to apply the session's position. It
// reports false when the read should go to the hub instead.
func (s *session) waitPos(ctx context.Context) (bool, error) {
	if s.srv.config().Consistency != routing.ConsistencySession {
		return true, nil
	}
	if s.posUnknown {
		// Ask the hub where it is now: that covers the lost position.
		// Unreachable, it is as if the wait timed out.
		hb, err := s.hubConn(ctx)
		if err == nil {
			var lsn routing.LSN
			if lsn, err = s.hubPosition(ctx, hb); err == nil {
				s.pos, s.posUnknown = max(s.pos, lsn), false
			}
		}
		if err != nil {
			if s.srv.config().OnTimeoutHub {
				return false, nil
			}
			return false, &positionUnknownError{err: err}
		}
	}
	if s.pos == 0 {
		return true, nil
	}
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, s.srv.config().WaitTimeout)
	err := s.srv.site.WaitFor(wctx, s.pos)
	cancel()
	s.srv.front.CausalWait.Observe(time.Since(start).Seconds())
	if err == nil {
		s.pos = 0
		return true, nil
	}
	if s.srv.config().OnTimeoutHub {
		return false, nil
	}
	return false, err
}

// hubPosition reads the hub's current WAL position on b, an idle hub
// connection (outside a transaction: the query takes a snapshot), as the
// position query behind an empty Query: one round trip.
func (s *session) hubPosition(ctx context.Context, b *backendConn) (routing.LSN, error) {
	r, err := s.exchange(ctx, b, &unit{simple: true, query: ";"}, plan{to: b, discard: true, capture: true, rewrite: ";"})
	if err == nil && r.suffixLost != nil {
		err = r.suffixLost
	}
	if err == nil && r.lsn == 0 {
		err = errors.New("pgfront: the hub did not report its WAL position")
	}
	if err != nil {
		s.srv.site.ReportHubFailure(b.endpoint, err)
		s.dropHub()
	}
	return r.lsn, err
}

// hubConn returns the session's hub connection, dialling and logging in
// through the routing core when there is none. It fails with a
// *routing.HubUnavailableError while the hub is unusable.
func (s *session) hubConn(ctx context.Context) (*backendConn, error) {
	if err := s.srv.site.HubUnavailable(); err != nil {
		if s.hub != nil && s.txOn == s.hub {
			// The hub transaction cannot finish: it is lost (08006) and
			// the client must end it. A pinned session keeps its
			// connection, and the state on it, with a ROLLBACK sent at
			// once: it releases the transaction's locks now if the link
			// works (a drill), or when it returns.
			hub := s.hub
			s.loseTxn()
			if !s.pinned || !hub.sendAhead("ROLLBACK") {
				s.dropHub()
			}
			return nil, &hubLostError{hub: hub.endpoint, err: err}
		}
		if s.pinned && s.hub != nil {
			// Keep the connection and the session's state on it: it may
			// outlive a short outage or a drill. Until then the session,
			// which runs everything on the hub, is refused.
			return nil, err
		}
		s.dropHub()
		return nil, err
	}
	endpoint := s.srv.site.Snapshot().Hub.Endpoint
	if s.hub != nil && s.txOn != s.hub && (s.hub.endpoint != endpoint || !s.settleIdle(s.hub)) {
		// Between requests the hub connection died (the hub restarted or
		// failed over): a fresh one costs a login, while a request sent on
		// the dead one would end as "outcome unknown".
		s.dropHub()
	}
	if s.pinLost != "" {
		return nil, &hubLostError{hub: s.pinLost, err: errPinnedStateLost}
	}
	if s.hub != nil {
		return s.hub, nil
	}
	for b := s.srv.takeHub(poolKey(endpoint, s.params)); b != nil; b = s.srv.takeHub(poolKey(endpoint, s.params)) {
		if b.loginIsolation != s.loginIsolation {
			// The role's or database's default isolation changed since b
			// logged in (the replica logs in with the new one): b would
			// run this session's transactions at the old one.
			b.close()
			s.srv.front.HubConnections.Dec()
			continue
		}
		s.srv.m.HubPoolHits.Inc()
		s.hub = b
		s.hub.pendingSQL = append(s.hub.pendingSQL, s.sets...)
		return b, nil
	}
	dctx, cancel := context.WithTimeout(ctx, s.srv.config().BackendTimeout)
	defer cancel()
	c, err := s.srv.site.DialHub(dctx, endpoint)
	if err != nil {
		s.srv.site.ReportHubFailure(endpoint, err)
		if uerr := s.srv.site.HubUnavailable(); uerr != nil {
			return nil, uerr
		}
		// The site moved on (a failover between the snapshot and the
		// report): this endpoint is still unusable for this request.
		return nil, &routing.HubUnavailableError{Protocol: routing.Postgres, Hub: endpoint, Reason: routing.ReasonHubDown, Err: err}
	}
	c = &countingConn{Conn: c, in: s.srv.front.WANBytesFromHub, out: s.srv.front.WANBytesToHub}
	if s.srv.config().HubTLS != nil {
		tc, err := startTLS(dctx, c, s.srv.config().HubTLS, endpoint)
		if err != nil {
			c.Close()
			s.srv.site.ReportHubFailure(endpoint, err)
			return nil, err
		}
		c = tc
	}
	b, _, err := login(dctx, c, true, endpoint, s.params, s.creds, "")
	if err != nil {
		c.Close()
		var be *backendError
		if errors.As(err, &be) {
			return nil, err
		}
		s.srv.site.ReportHubFailure(endpoint, err)
		if hu := s.srv.site.HubUnavailable(); hu != nil {
			return nil, hu
		}
		return nil, err
	}
	b.loginIsolation = s.loginIsolation
	s.hub = b
	s.srv.front.HubConnections.Inc()
	s.hub.pendingSQL = append(s.hub.pendingSQL, s.sets...)
	return b, nil
}

// settleIdle reads what an idle backend connection sent since its last
// request, and reports whether it is still usable: notifications and
// notices (a LISTEN session's, arrived after its watcher stopped) are
// relayed to the client and parameter changes noted; a FATAL, EOF or
// anything else means the connection is gone. The answers of queries
// sent ahead (sendAhead) are consumed here as far as they have arrived,
// their notices dropped; the rest are left for the next exchange.
func (s *session) settleIdle(b *backendConn) bool {
	for {
		for b.rd.complete() {
			typ, frame, err := b.rd.next()
			if err != nil {
				return false
			}
			switch {
			case typ == 'A' || (typ == 'N' && b.sentAhead == 0):
				s.out.raw(frame)
			case typ == 'S':
				if m, err := decodeBackend(typ, frame); err == nil {
					ps := m.(*pgproto3.ParameterStatus)
					b.params[ps.Name] = ps.Value
				}
			case typ == 'E' && endsSession(frame[5:]):
				return false
			case b.sentAhead > 0 && (typ == 'N' || typ == 'C' || typ == 'E'):
			case b.sentAhead > 0 && typ == 'Z':
				b.sentAhead--
			default:
				return false
			}
		}
		if b.rd.buffered() == 0 && b.alive() {
			return true
		}
		// Something is readable (or a message half read): take it, with
		// a bound in case a TLS record is still on its way.
		_ = b.conn.SetReadDeadline(time.Now().Add(time.Second))
		err := b.rd.fill(b.rd.buffered() + 1)
		_ = b.conn.SetReadDeadline(time.Time{})
		if err != nil {
			return false
		}
	}
}

// endTxn forgets the transaction the session had open: where it ran, its
// BEGIN, the SETs and savepoints kept to replay it elsewhere, its snapshot
// rule.
func (s *session) endTxn() {
	s.txOn, s.txBegin, s.txReplay, s.txSnapshot, s.txReadOnly, s.hubPosOwed, s.txFailed = nil, "", nil, false, false, false, false
}

// loseTxn ends the session's transaction as lost: statements fail with
// 25P02 until the client's ROLLBACK or COMMIT.
func (s *session) loseTxn() {
	s.endTxn()
	s.txLost = true
}

// moveTxnToHub ends the replica transaction (it only read) and queues the
// client's BEGIN and the transaction's replay list (SET LOCALs, SETs,
// savepoints) on the hub ahead of the unit that moves it.
func (s *session) moveTxnToHub(hb *backendConn) {
	if s.replica != nil {
		s.replica.pendingSQL = append(s.replica.pendingSQL, "ROLLBACK")
	}
	begin := s.txBegin
	if begin == "" {
		begin = "BEGIN"
	}
	hb.pendingSQL = append(hb.pendingSQL, begin)
	for _, l := range s.txReplay {
		hb.pendingSQL = append(hb.pendingSQL, l.sql)
	}
	s.txOn = hb
}

// txStmt is one statement of the open transaction kept in txReplay: replayed
// in order when a transaction on the replica moves to the hub; kind says
// what becomes of it when the transaction ends or chains.
type txStmt struct {
	sql  string
	kind txStmtKind
	name string // txSavepoint: the savepoint
	// setConfig: a session-level set_config() call (sql is its SELECT),
	// kept at commit as followUnit keeps one outside a transaction.
	setConfig *setConfigRepeat
}

type txStmtKind uint8

const (
	txSetLocal   txStmtKind = iota // SET LOCAL, set_config(..., true): ends with the transaction
	txSetMode                      // SET TRANSACTION ISOLATION/READ ONLY: carried by AND CHAIN
	txSetSession                   // a session-level SET or set_config: outlives a COMMIT, not a ROLLBACK
	txSavepoint                    // SAVEPOINT name: replayed so RELEASE and ROLLBACK TO find it on the hub
)

// setLocalKind is the txStmtKind of a StmtSetLocal: SET TRANSACTION
// naming an isolation level or access mode is a characteristic AND CHAIN
// carries over; anything else is SET LOCAL.
func setLocalKind(st Statement) txStmtKind {
	if st.Isolation != IsolationDefault || st.Access != AccessDefault {
		return txSetMode
	}
	return txSetLocal
}

// chainTxn follows a COMMIT or ROLLBACK AND CHAIN on b that left a new
// transaction open there: same BEGIN and characteristics, without the SET
// LOCALs of the one it ended; its session-level SETs are settled as at
// any transaction's end.
func (s *session) chainTxn(ctx context.Context, b *backendConn, committed bool) {
	s.settleTxnSets(ctx, b, committed)
	kept := s.txReplay[:0]
	for _, l := range s.txReplay {
		if l.kind == txSetMode {
			kept = append(kept, l)
		}
	}
	clear(s.txReplay[len(kept):])
	s.txReplay = kept
}

// endsFailedTxn reports whether a unit begins by ending the failed
// transaction, or by rolling back to a savepoint the replay list has (and
// so can run its write on the hub, where the move replays that
// savepoint); PostgreSQL rejects whatever comes first otherwise, and the
// rest with it.
func (s *session) endsFailedTxn(c Classification) bool {
	if len(c.Stmts) == 0 {
		return false
	}
	switch first := c.Stmts[0]; {
	case first.Kind == StmtCommit || first.Kind == StmtRollback:
		return true
	case first.Kind == StmtSavepoint && first.Savepoint == SavepointRollback:
		for _, l := range s.txReplay {
			if l.kind == txSavepoint && l.name == first.Name {
				return true
			}
		}
	}
	return false
}

// savepointSQL renders a savepoint statement from its classification.
func savepointSQL(st Statement) string {
	name := `"` + strings.ReplaceAll(st.Name, `"`, `""`) + `"`
	switch st.Savepoint {
	case SavepointRelease:
		return "RELEASE SAVEPOINT " + name
	case SavepointRollback:
		return "ROLLBACK TO SAVEPOINT " + name
	}
	return "SAVEPOINT " + name
}

// noteSavepoint follows a SAVEPOINT, RELEASE or ROLLBACK TO that succeeded
// in the open transaction. SAVEPOINT is kept with the replay list, so a
// transaction that moves to the hub has it there (Django's nested atomic
// blocks RELEASE a savepoint made before their first write); ROLLBACK TO
// forgets what was kept after the savepoint (its SETs are undone, later
// savepoints destroyed) and RELEASE forgets the savepoint and the later
// ones (their SETs stay), so the replay rebuilds the same state and only
// the SETs that stand are settled at commit. A name never seen (made in
// the Query that opened the transaction, replayed whole) changes nothing.
func (s *session) noteSavepoint(sql string, st Statement) {
	last := -1 // the newest savepoint of that name: the one that counts
	for i := len(s.txReplay) - 1; i >= 0 && st.Savepoint != SavepointSet; i-- {
		if l := s.txReplay[i]; l.kind == txSavepoint && l.name == st.Name {
			last = i
			break
		}
	}
	switch st.Savepoint {
	case SavepointSet:
		if st.Name != "" {
			s.txReplay = append(s.txReplay, txStmt{sql: sql, kind: txSavepoint, name: st.Name})
		}
	case SavepointRollback:
		if last >= 0 {
			clear(s.txReplay[last+1:])
			s.txReplay = s.txReplay[:last+1]
		}
	case SavepointRelease:
		if last >= 0 {
			kept := s.txReplay[:last]
			for _, l := range s.txReplay[last:] {
				if l.kind != txSavepoint {
					kept = append(kept, l)
				}
			}
			clear(s.txReplay[len(kept):])
			s.txReplay = kept
		}
	}
}

// holdTxnSession keeps a session statement that ran in the transaction
// open on b until the transaction ends. DEALLOCATE ALL is not
// transactional: it drops every prepared statement at once, so the other
// backend runs it now too and the session forgets them all.
func (s *session) holdTxnSession(ctx context.Context, b *backendConn, sql string, st Statement) {
	if st.DropsPrepared {
		s.dropAllPrepared()
		s.keepSet(ctx, b, []string{sql}, "")
		return
	}
	s.txReplay = append(s.txReplay, txStmt{sql: sql, kind: txSetSession})
}

// dropAllPrepared forgets every prepared statement, the client's and each
// backend's: DEALLOCATE ALL or DISCARD ALL ran (or is about to run) on
// both backends.
func (s *session) dropAllPrepared() {
	s.stmts = make(map[string]*preparedStmt)
	for _, b := range []*backendConn{s.replica, s.hub} {
		if b != nil {
			b.prepared = make(map[string]bool)
			b.pendingClose = nil
		}
	}
}

// settleTxnSets ends the session-level SETs made in the transaction that
// just ended on b: committed, they are kept for the session, followed if
// they change its transaction defaults, and applied to the other backend
// (queued for the hub); rolled back, PostgreSQL undid them on b and
// nothing else ever saw them. They stay out of the other backend until
// then, so a rollback leaves the two alike.
func (s *session) settleTxnSets(ctx context.Context, b *backendConn, committed bool) {
	if !committed {
		return
	}
	for _, l := range s.txReplay {
		switch {
		case l.kind != txSetSession:
		case l.setConfig != nil:
			s.keepSetConfig(ctx, b, *l.setConfig)
		default:
			for _, st := range s.srv.classifier.Load().Classify(l.sql).Stmts {
				s.noteDefaults(st)
			}
			s.keepSet(ctx, b, []string{l.sql}, "")
		}
	}
}

// exResult is what one exchange with a backend produced.
type exResult struct {
	status byte        // the unit's ReadyForQuery status, not yet sent to the client
	rerun  bool        // the standby refused a read with 25006 before anything reached the client
	lsn    routing.LSN // the hub position captured behind the unit, 0 if none
	// suffixLost: the unit completed, then the connection broke while the
	// position query was in flight.
	suffixLost error
	failed     bool // the unit got an ErrorResponse
	relayed    bool // some of the unit's answers were handed to the client
	// ends: how each transaction end the unit ran ended, in order, from
	// its CommandComplete tag: 'C' committed ("COMMIT", also for AND
	// CHAIN, and "PREPARE TRANSACTION", which keeps settings as COMMIT
	// does), 'R' rolled back ("ROLLBACK": a ROLLBACK, or a COMMIT of a
	// failed transaction). One that failed does not complete and is not
	// listed; past the fourth none are.
	ends  [4]byte
	nEnds int
	// done: how many of the unit's statements (a simple Query's, or an
	// extended batch's Executes) completed: CommandComplete,
	// EmptyQueryResponse or PortalSuspended. After a failure, the ones
	// before it.
	done int
	// open: an extended unit's COPY FROM STDIN has begun (CopyInResponse);
	// the server answers the rest of the unit only after the client's next
	// Flush or Sync (it ignores those sent during COPY), so the unit stays
	// in flight until its Sync. The flight is this one.
	open *flight
}

// txnEndTag reads a CommandComplete body: 'C' for COMMIT and PREPARE
// TRANSACTION, 'R' for ROLLBACK, 0 for anything else.
func txnEndTag(body []byte) byte {
	switch string(body) {
	case "COMMIT\x00", "PREPARE TRANSACTION\x00":
		return 'C'
	case "ROLLBACK\x00":
		return 'R'
	}
	return 0
}

// end is how the unit's i-th transaction end ended ('C', 'R'), 0 if it
// did not complete (or is past the ones kept).
func (r *exResult) end(i int) byte {
	if i < r.nEnds {
		return r.ends[i]
	}
	return 0
}

// clientIOError: the client connection failed; the session ends.
type clientIOError struct{ err error }

func (e *clientIOError) Error() string { return "pgfront: client connection: " + e.err.Error() }
func (e *clientIOError) Unwrap() error { return e.err }

// backendIOError: the backend connection failed before the unit's
// ReadyForQuery arrived.
type backendIOError struct {
	err error
	// uncommitted: the failure came before anything that could commit the
	// unit reached the backend (COPY data still streaming, or an extended
	// COPY before its final Sync), so its outcome is known: not done.
	uncommitted bool
}

func (e *backendIOError) Error() string { return "pgfront: backend connection: " + e.err.Error() }
func (e *backendIOError) Unwrap() error { return e.err }

// positionQuery is pipelined behind a hub write to learn its WAL position
// without a round trip of its own.
const positionQuery = "SELECT pg_catalog.pg_current_wal_lsn()::text"

// flight is a unit in progress on one backend: what has been sent and
// what of its answers has been read. A unit that the client flushes
// (Flush without Sync) stays in flight across several client messages
// until its Sync.
type flight struct {
	b      *backendConn
	u      *unit
	p      plan
	prefix int // proxy statements sent ahead, each answered up to a ReadyForQuery
	// injected, per Parse sent with the unit: true when the proxy added it
	// (a statement prepared lazily on this backend); its ParseComplete is
	// dropped.
	injected   []bool
	parses     int
	parsedHere []string // statements the unit's own Parses prepare here
	holding    bool     // safety net: answers held until the first row or completion
	held       []byte   // the held answers, encoded
	failed     bool     // an ErrorResponse ended the batch: the backend skips to Sync
	res        exResult
	start      time.Time // for the request duration of a flushed unit
	// copied: the unit's COPY FROM STDIN data went through; the position
	// query may follow its Sync.
	copied bool
	// suffixSent: the position query went out behind the unit.
	suffixSent bool
	// owed: answers of messages already sent that the backend has yet to
	// send (an Execute whose COPY FROM STDIN ended, and what followed it
	// before the client's Flush): the next Flush waits for them too.
	owed int
}

// exchange sends a unit to b (after any queued proxy statements, and
// followed by the position query when p.capture), relays the unit's
// responses to the client except its final ReadyForQuery, and returns
// what happened. Under p.safetyNet responses are held until the first
// row or completion, so a 25006 can still be re-run elsewhere unseen.
func (s *session) exchange(ctx context.Context, b *backendConn, u *unit, p plan) (exResult, error) {
	f := s.begin(&s.flightBuf, b, u, p) // exchanges never nest: the scratch flight is free
	s.sendUnit(f, u)
	s.sendEnd(f)
	return s.relay(ctx, f, -1)
}

// keep returns a flight that stays open past the request that started
// it (an extended COPY FROM STDIN): exchange's flight and the request's
// unit are the session's scratch, which the next request reuses, so they
// are copied out.
func (s *session) keep(f *flight) *flight {
	if f != &s.flightBuf {
		return f
	}
	k := *f
	k.injected = slices.Clone(f.injected)
	k.parsedHere = slices.Clone(f.parsedHere)
	k.held = bytes.Clone(f.held)
	k.res.open = nil
	if f.u == &s.unitBuf {
		u := *f.u
		u.msgs = slices.Clone(u.msgs) // the batch's slice is reused too
		k.u = &u
	}
	return &k
}

// begin sets f up for a unit on b (keeping f's buffers) and queues on b
// what must precede the unit there: Closes of statements the client
// closed while b was not in use, and proxy statements.
func (s *session) begin(f *flight, b *backendConn, u *unit, p plan) *flight {
	held := f.held[:0]
	if cap(held) > msgWriterKeep {
		held = nil
	}
	*f = flight{b: b, u: u, p: p, holding: p.safetyNet, injected: f.injected[:0], parsedHere: f.parsedHere[:0], held: held}
	if len(b.pendingClose) > 0 {
		for _, name := range b.pendingClose {
			b.out.send(&pgproto3.Close{ObjectType: 'S', Name: name})
		}
		b.out.sync()
		f.prefix++
		b.pendingClose = nil
	}
	for _, q := range b.pendingSQL {
		b.out.query(q)
		f.prefix++
	}
	b.pendingSQL = nil
	f.prefix += b.sentAhead // their answers come first
	b.sentAhead = 0
	return f
}

// sendUnit queues the unit's messages on the flight's backend, preparing
// lazily the named statements it uses.
func (s *session) sendUnit(f *flight, u *unit) {
	b := f.b
	switch {
	case u.fn:
		b.out.raw(u.raw)
	case u.simple:
		q := u.query
		if f.p.rewrite != "" {
			q = f.p.rewrite
		}
		b.out.query(q)
		if b.prepared[""] {
			b.prepared[""] = false // a simple Query drops the unnamed statement
		}
	default:
		other := s.other(b)
		for _, m := range u.msgs {
			switch {
			case m.typ == 'P':
				f.parsedHere = append(f.parsedHere, m.stmt)
				f.injected = append(f.injected, false)
				if !b.prepared[m.stmt] {
					b.prepared[m.stmt] = true
				}
				if m.stmt == "" && other != nil && other.prepared[""] {
					other.prepared[""] = false
				}
			case m.usesStmt && !slices.Contains(f.parsedHere, m.stmt) && !b.prepared[m.stmt]:
				// Not after a Close of it earlier in the batch: the
				// backend then reports it missing, as PostgreSQL would.
				if st := m.ps; st != nil && s.stmts[m.stmt] != nil {
					b.out.raw(st.parse)
					f.injected = append(f.injected, true)
					b.prepared[m.stmt] = true
					f.parsedHere = append(f.parsedHere, m.stmt)
				}
			case m.closesStmt:
				s.closeStmt(m.stmt, b)
			}
			b.out.raw(m.raw)
		}
	}
}

// copyInUnit: the unit runs COPY FROM STDIN, behind which the position
// query must wait until CopyDone (a Query mid-COPY breaks it).
func copyInUnit(u *unit) bool {
	for _, st := range u.class.Stmts {
		if st.Kind == StmtCopyIn {
			return true
		}
	}
	return false
}

// sendEnd queues the position query behind a complete unit (except
// behind COPY FROM STDIN, where copyIn sends it after CopyDone, or relay
// after the unit's ReadyForQuery); relay writes everything queued in one
// write.
func (s *session) sendEnd(f *flight) {
	if !copyInUnit(f.u) || f.copied {
		s.sendSuffix(f)
	}
}

// sendSuffix queues the position query behind the unit, once, when its
// plan asks for it (learnsPosition: never behind a unit that leaves a
// transaction open, whose snapshot the query would take).
func (s *session) sendSuffix(f *flight) {
	if f.p.capture && !f.suffixSent {
		f.suffixSent = true
		f.b.out.query(positionQuery)
		if f.b.prepared[""] {
			f.b.prepared[""] = false
		}
	}
}

// completes reports whether a backend message ends the answer to one
// message of an extended batch (what a Flush waits for). CopyInResponse
// does not: the Execute's answer ends after the COPY, with CommandComplete
// or an error.
func completes(typ byte) bool {
	switch typ {
	case '1', '2', '3', 'T', 'n', 'C', 'I', 's':
		return true
	}
	return false
}

// relay writes what is queued for the flight's backend, reads the
// answers and forwards the unit's to the client. With want < 0 it runs to
// the unit's ReadyForQuery
// (not sent: finish sends it) and, under capture, the position query's.
// With want >= 0 it stops after want messages of the unit are answered
// or at its first error: the answer to a Flush.
func (s *session) relay(ctx context.Context, f *flight, want int) (exResult, error) {
	b := f.b
	f.res.open = nil
	s.setActive(b)
	defer s.setActive(nil)
	if ctx != s.runCtx {
		stop := context.AfterFunc(ctx, func() { _ = b.conn.SetDeadline(time.Now()) })
		defer stop()
	} else if ctx.Err() != nil {
		// The session is ending; run's AfterFunc may have looked for an
		// active backend before b was one.
		return f.res, &backendIOError{err: ctx.Err()}
	}
	if b.hub {
		// A blackholed link never fails a read by itself (the WAN proxy
		// acknowledges what it swallows): stop waiting as soon as the
		// routing core's probes see the hub down. A drill alone does not
		// cut: the hub is healthy, and cutting would turn statements in
		// flight into outcome-unknown writes and report a link failure that
		// never happened. The drill refuses new writes; these finish.
		// The watch is joined before relay returns, and a deadline it set
		// cleared: one left behind (the hub went down just as the unit
		// ended) would fail the connection's next use, or the LISTEN
		// watcher's wait, for no reason.
		done := make(chan struct{})
		cut := make(chan bool, 1)
		changes := s.srv.site.Changes()
		go func() {
			for {
				select {
				case <-done:
					cut <- false
					return
				case <-changes:
					if !s.srv.site.Snapshot().Hub.Up {
						_ = b.conn.SetDeadline(time.Now())
						cut <- true
						return
					}
					changes = s.srv.site.Changes()
				}
			}
		}()
		defer func() {
			close(done)
			if <-cut {
				_ = b.conn.SetDeadline(time.Time{})
			}
		}()
	}
	// Everything queued goes out in one write. When answers are awaited
	// the read is armed before the write, so no read is tried before an
	// answer can be there (see rawconn.WriteRead).
	var err error
	if f.prefix > 0 || want != 0 {
		err = b.rd.sendThenFill(b.out)
	} else {
		err = b.out.flush()
	}
	if err != nil {
		return f.res, &backendIOError{err: err}
	}
	// The answers to proxy statements sent ahead come first.
	for f.prefix > 0 {
		typ, frame, err := b.rd.next()
		if err != nil {
			return f.res, &backendIOError{err: err}
		}
		switch typ {
		case 'Z':
			f.prefix--
		case 'A':
			s.out.raw(frame) // a LISTEN session's notification, relayed with the answer
		case 'E':
			s.log.Debug("proxy statement failed on backend", "target", b.target(), "code", errorCode(frame[5:]))
		}
	}
	if want == 0 {
		return f.res, nil
	}
	unitDone := false
answers:
	for {
		typ, frame, err := b.rd.next()
		if err != nil {
			if unitDone {
				f.res.suffixLost = err
				return f.res, nil
			}
			return f.res, &backendIOError{err: err}
		}
		if unitDone { // the position query
			switch typ {
			case 'A':
				s.out.raw(frame) // a LISTEN session's notification (consistency: site)
			case 'D':
				if m, err := decodeBackend(typ, frame); err == nil {
					if dr := m.(*pgproto3.DataRow); len(dr.Values) > 0 && dr.Values[0] != nil {
						if lsn, err := routing.ParseLSN(string(dr.Values[0])); err == nil {
							f.res.lsn = lsn
						}
					}
				}
			case 'Z':
				return f.res, nil
			}
			continue
		}
		switch typ {
		case 'Z':
			if len(frame) > 5 {
				f.res.status = frame[5]
			}
			unitDone = true
			if f.p.capture && !f.suffixSent {
				// Not sent with the unit: a COPY FROM STDIN that failed
				// before its data (the unit may have committed before
				// it), or a Query of several statements holding one (the
				// query could not follow CopyDone: a later COPY in the
				// Query would take it for data). One round trip of its own.
				s.sendSuffix(f)
				if err := b.rd.sendThenFill(b.out); err != nil {
					f.res.suffixLost = err
					return f.res, nil
				}
			}
			if !f.p.capture {
				break answers
			}
			continue
		case '1':
			if f.parses < len(f.injected) {
				inj := f.injected[f.parses]
				f.parses++
				if inj {
					continue
				}
			}
		case 'E':
			if endsSession(frame[5:]) {
				// A shutdown, a terminated backend: the connection is lost,
				// and its last word is the proxy's to report, not relayed
				// (a client told FATAL would drop a session that goes on).
				return f.res, &backendIOError{err: &backendEndedError{target: b.target(), code: errorCode(frame[5:]), message: errorField(frame[5:], 'M')}}
			}
			if f.holding && !b.hub && errorCode(frame[5:]) == "25006" {
				f.res.rerun = true
				f.held = f.held[:0]
				f.holding = false
			}
			f.failed = true
			f.res.failed = true
		case 'S':
			if m, err := decodeBackend(typ, frame); err == nil {
				ps := m.(*pgproto3.ParameterStatus)
				b.params[ps.Name] = ps.Value
				if ps.Name == "in_hot_standby" {
					continue
				}
			}
		case 'D', 'C', 's', 'I', 'H', 'G':
			if typ == 'C' || typ == 'I' || typ == 's' {
				f.res.done++
			}
			if typ == 'C' {
				if e := txnEndTag(frame[5:]); e != 0 && f.res.nEnds < len(f.res.ends) {
					f.res.ends[f.res.nEnds] = e
					f.res.nEnds++
				}
			}
			if f.holding {
				f.holding = false
				if len(f.held) > 0 {
					s.out.raw(f.held)
					f.held = f.held[:0]
				}
			}
		}
		if !f.res.rerun && !f.p.discard {
			if f.holding {
				f.held = append(f.held, frame...)
			} else {
				s.out.raw(frame)
				f.res.relayed = true
			}
		}
		if want >= 0 && !f.res.rerun {
			if typ == 'E' {
				want = 0
			} else if completes(typ) {
				want--
			}
			if want <= 0 {
				if err := s.out.flush(); err != nil {
					return f.res, &clientIOError{err: err}
				}
				return f.res, nil
			}
		}
		if typ == 'G' && !f.res.rerun {
			if err := s.out.flush(); err != nil {
				return f.res, &clientIOError{err: err}
			}
			if !f.u.simple {
				// Whatever becomes of the COPY, the server now answers the
				// rest of the unit only after the client's next Flush or
				// Sync: the unit stays in flight until then.
				f.res.open = f
			}
			if err := s.copyIn(f); err != nil {
				return f.res, err
			}
			if f.u.simple {
				continue // CommandComplete and ReadyForQuery follow unasked
			}
			f.copied = true
			f.owed = 1 // the COPY's Execute
			if want > 0 {
				f.owed = want
			}
			return f.res, nil
		}
		if !b.rd.complete() && !f.holding {
			// The end of what arrived (at most a partial message is left):
			// one write to the client per read from the backend, so a long
			// result streams instead of piling up in the write buffer.
			if err := s.out.flush(); err != nil {
				return f.res, &clientIOError{err: err}
			}
		}
	}
	if len(f.held) > 0 {
		s.out.raw(f.held)
		f.held = f.held[:0]
	}
	return f.res, nil
}

// copyIn streams the client's CopyData to the flight's backend until
// CopyDone or CopyFail, then queues the position query behind a simple
// Query's COPY. Flush and Sync are dropped: the server ignores them during
// COPY (libpq sends Sync right after an extended COPY's Execute).
func (s *session) copyIn(f *flight) error {
	b := f.b
	pending := 0
	for {
		typ, frame, err := s.in.next()
		if err == nil {
			_, err = parseFront(typ, frame)
		}
		if err != nil {
			return &clientIOError{err: err}
		}
		switch typ {
		case 'd': // CopyData
			b.out.raw(frame)
			pending += len(frame) - 5
			if pending >= 64<<10 {
				pending = 0
				if err := b.out.flush(); err != nil {
					return &backendIOError{err: err, uncommitted: true}
				}
			}
		case 'c', 'f': // CopyDone, CopyFail
			b.out.raw(frame)
			if f.u.simple && len(f.u.class.Stmts) == 1 {
				// An extended unit's position query follows its Sync;
				// one behind a Query of several statements, its
				// ReadyForQuery (relay).
				s.sendSuffix(f)
			}
			if err := b.out.flush(); err != nil {
				// An extended unit commits at its Sync, not sent yet.
				return &backendIOError{err: err, uncommitted: !f.u.simple}
			}
			return nil
		case 'H', 'S':
		default:
			s.srv.m.ProtocolErrors.Inc()
			return &clientIOError{err: fmt.Errorf("unexpected %s during COPY FROM STDIN", frontName(typ))}
		}
	}
}

func (s *session) other(b *backendConn) *backendConn {
	if b == s.replica {
		return s.hub
	}
	return s.replica
}

// finish updates the session after a unit and sends its ReadyForQuery.
func (s *session) finish(ctx context.Context, p plan, u *unit, res exResult) error {
	b := p.to
	if res.status == 'I' && b.hub && s.hubPosOwed && res.lsn == 0 && res.suffixLost == nil && s.tracksPosition() {
		// The transaction that owed a position ended in a way the unit's
		// classification did not show (a PREPARE TRANSACTION that
		// failed): learn it now, one round trip.
		if lsn, err := s.hubPosition(ctx, b); err == nil {
			res.lsn = lsn
		}
	}
	switch res.status {
	case 'I':
		if s.txOn != nil {
			// The open transaction ended at the unit's first end.
			s.settleTxnSets(ctx, b, res.end(0) == 'C')
		}
		s.endTxn()
	case 'T', 'E':
		// What the unit did inside the transaction, transaction ends
		// included, is followed in order by followUnit.
		if b.hub && !s.hubPosOwed {
			s.hubPosOwed, _ = s.hubCommits(u.class, false)
		}
		s.txOn, s.txFailed = b, res.status == 'E'
	}
	if b.hub && res.lsn != 0 {
		if res.lsn > s.pos {
			s.pos = res.lsn
		}
		s.posUnknown = false // a later commit's position covers a lost one
		if s.srv.config().Consistency == routing.ConsistencySite {
			start := time.Now()
			wctx, cancel := context.WithTimeout(ctx, s.srv.config().WaitTimeout)
			_ = s.srv.site.WaitFor(wctx, res.lsn)
			cancel()
			s.srv.front.CausalWait.Observe(time.Since(start).Seconds())
		}
	}
	if res.suffixLost != nil && b.hub {
		s.posUnknown = s.posUnknown || p.capture
		s.srv.site.ReportHubFailure(b.endpoint, res.suffixLost)
		s.dropHub()
		if s.txOn == b {
			s.loseTxn()
		}
	}
	s.mirrorSets(ctx, b, u, res)
	s.followUnit(ctx, b, u, res)
	s.noteSiteChange()
	s.out.readyForQuery(res.status)
	if err := s.out.flush(); err != nil {
		return &clientIOError{err: err}
	}
	return nil
}

// silent runs a simple query on b and drops its answers.
func (s *session) silent(ctx context.Context, b *backendConn, q string) error {
	_, err := s.exchange(ctx, b, &unit{simple: true, query: q}, plan{to: b, discard: true, rewrite: q})
	return err
}

// backendFailed handles a broken backend connection during a unit. A
// lost replica ends the session (08006); a lost hub gets 08006, or 08007
// when what was in flight may have committed, and the session goes on.
func (s *session) backendFailed(b *backendConn, u *unit, err error) error {
	status, err := s.backendLost(b, u, err)
	if err != nil {
		return err
	}
	s.out.readyForQuery(status)
	if err := s.out.flush(); err != nil {
		return &clientIOError{err: err}
	}
	return nil
}

// backendLost is backendFailed without the ReadyForQuery: it sends the
// error and returns the transaction status to report at the unit's end,
// or the error that ends the session.
func (s *session) backendLost(b *backendConn, u *unit, err error) (byte, error) {
	var ce *clientIOError
	if errors.As(err, &ce) {
		return 0, err
	}
	if b == nil || !b.hub {
		return s.replicaLost(b, u, err)
	}
	if ended := (*backendEndedError)(nil); !errors.As(err, &ended) {
		// One terminated hub backend says nothing of the hub, whose
		// shutdown the probes see: the site stays writable.
		s.srv.site.ReportHubFailure(b.endpoint, err)
	}
	inTxn := s.txOn == b
	s.dropHub()
	k := u.class.Strongest()
	single, isSingle := u.class.Single()
	// A COMMIT anywhere in the unit ("UPDATE ...; COMMIT", or a batch
	// ending in one) may have committed before the link broke: its outcome
	// is unknown, never "failed", and the transaction is over either way.
	commits := u.class.Has(StmtCommit)
	ends := commits || (isSingle && single.Kind == StmtRollback)
	unknown := (!inTxn && (k >= StmtWrite || u.fn)) || (inTxn && commits)
	if bio := (*backendIOError)(nil); errors.As(err, &bio) && bio.uncommitted && !commits {
		unknown = false
	}
	status := byte('I')
	if inTxn && !ends {
		s.loseTxn()
		status = 'E'
	} else {
		s.endTxn()
	}
	s.log.Warn("hub connection lost during a request", "hub", b.endpoint, "outcome_unknown", unknown, "err", err)
	s.out.send(errorResponseFor(&hubLostError{hub: b.endpoint, unknown: unknown, err: err}, "ERROR"))
	if err := s.out.flush(); err != nil {
		return 0, &clientIOError{err: err}
	}
	return status, nil
}

// replicaLost is backendLost for the replica: the connection is dropped
// (reconnected later) and the session goes on. A transaction on the
// replica is gone with it: 08006, then 25P02 until the client ends it.
func (s *session) replicaLost(b *backendConn, u *unit, err error) (byte, error) {
	inTxn := b != nil && s.txOn == b
	if b == s.replica {
		s.dropReplica(err)
	}
	single, isSingle := u.class.Single()
	ends := u.class.Has(StmtCommit) || (isSingle && single.Kind == StmtRollback)
	status := byte('I')
	msg := "connection to the local replica lost during the request: " + err.Error()
	if inTxn {
		s.endTxn()
		if !ends {
			s.txLost, status = true, 'E'
			msg = "connection to the local replica lost: the transaction is gone: " + err.Error()
		}
	}
	s.log.Warn("replica connection lost during a request", "in_transaction", inTxn, "err", err)
	s.out.send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "08006", Message: msg})
	if err := s.out.flush(); err != nil {
		return 0, &clientIOError{err: err}
	}
	return status, nil
}

// answerLost answers for a hub transaction that was cut: everything fails
// as in an aborted transaction until the client ends it.
func (s *session) answerLost(u *unit) error {
	if s.endsLostTxn(u, true) {
		s.endTxn()
		s.txLost = false
		if u.simple {
			s.out.send(&pgproto3.CommandComplete{CommandTag: []byte("ROLLBACK")})
		} else {
			s.answerAlone(u, "ROLLBACK")
		}
		s.out.readyForQuery('I')
	} else {
		s.out.send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "25P02",
			Message: "current transaction is aborted, commands ignored until end of transaction block"})
		s.out.readyForQuery('E')
	}
	if err := s.out.flush(); err != nil {
		return &clientIOError{err: err}
	}
	return nil
}

// endsLostTxn reports whether u, met while the session's transaction is
// lost, ends it and can be answered without a backend: a lone ROLLBACK
// (or, with commit, a COMMIT, which ends an aborted transaction as a
// ROLLBACK does), as a simple Query or an extended batch that prepares,
// describes and closes nothing else. One AND CHAIN is not: it would open
// a transaction like the lost one, which no backend holds any more, and
// answering it as a plain ROLLBACK would let the client's next statements
// commit one by one while it believes them inside a transaction; it gets
// 25P02, and the client's plain ROLLBACK then ends the lost transaction.
func (s *session) endsLostTxn(u *unit, commit bool) bool {
	ends := func(c Classification) bool {
		st, ok := c.Single()
		return ok && !st.Chain && (st.Kind == StmtRollback || (commit && st.Kind == StmtCommit))
	}
	if !ends(u.class) {
		return false
	}
	if u.simple {
		return true
	}
	for _, m := range u.msgs {
		switch {
		case m.typ == 'P':
			if st := s.stmts[m.stmt]; st == nil || !ends(st.class) {
				return false
			}
		case m.typ == 'D' && m.usesStmt:
			if m.ps == nil || !ends(m.ps.class) {
				return false
			}
		}
	}
	return true
}

// answerAlone answers an extended batch of one statement as PostgreSQL
// would, without a backend: what a ROLLBACK (or COMMIT, which ends an
// aborted transaction as a ROLLBACK) of a lost transaction gets, from the
// drivers that send it through the extended protocol (pgjdbc). The
// statement has no parameters and returns no rows; tag completes each
// Execute. The ReadyForQuery is the caller's.
func (s *session) answerAlone(u *unit, tag string) {
	for _, m := range u.msgs {
		switch m.typ {
		case 'P':
			s.out.send(&pgproto3.ParseComplete{})
		case 'B':
			s.out.send(&pgproto3.BindComplete{})
		case 'D':
			if m.usesStmt {
				s.out.send(&pgproto3.ParameterDescription{})
			}
			s.out.send(&pgproto3.NoData{})
		case 'E':
			s.out.send(&pgproto3.CommandComplete{CommandTag: []byte(tag)})
		case 'C':
			if m.closesStmt {
				s.closeStmt(m.stmt, nil)
			}
			s.out.send(&pgproto3.CloseComplete{})
		}
	}
}

// closeStmt records the client's Close of statement name: gone from the
// session, and closed on each backend that prepared it, by the Close sent
// to sentTo with the unit, or queued for the others.
func (s *session) closeStmt(name string, sentTo *backendConn) {
	if sentTo != nil {
		sentTo.prepared[name] = false
	}
	for _, b := range []*backendConn{s.replica, s.hub} {
		if b != nil && b != sentTo && b.prepared[name] {
			b.prepared[name] = false
			b.pendingClose = append(b.pendingClose, name)
		}
	}
	delete(s.stmts, name)
}

// refuse answers a unit the proxy will not run. Inside a transaction on
// the replica the refusal is raised there, so the transaction is aborted
// exactly as a standby's own 25006 would abort it.
func (s *session) refuse(ctx context.Context, u *unit, err error) error {
	resp := errorResponseFor(err, "ERROR")
	if s.txOn == s.replica && s.replica != nil {
		p, res, xerr := s.raiseRefusal(ctx, resp)
		if xerr != nil {
			return s.backendFailed(s.replica, u, xerr)
		}
		return s.finish(ctx, p, u, res)
	}
	status := byte('I')
	if s.txOn != nil || s.txLost {
		status = 'E'
	}
	s.out.send(resp)
	s.noteSiteChange()
	s.out.readyForQuery(status)
	if err := s.out.flush(); err != nil {
		return &clientIOError{err: err}
	}
	return nil
}

// raiseRefusal aborts the transaction open on the replica with a refusal
// raised there (a DO block), exactly as a standby's own 25006 would abort
// it, and queues the proxy's error for the client in place of the
// backend's: the DO block's "PL/pgSQL function inline_code_block" CONTEXT
// would read as the client's own code failing.
func (s *session) raiseRefusal(ctx context.Context, resp *pgproto3.ErrorResponse) (plan, exResult, error) {
	q := "DO $spokeproxy$BEGIN RAISE EXCEPTION USING ERRCODE = '" + resp.Code + "', MESSAGE = " +
		quoteLiteral(resp.Message) + "; END$spokeproxy$"
	p := plan{to: s.replica, rewrite: q, route: metrics.RouteLocal, discard: true}
	res, err := s.exchange(ctx, s.replica, &unit{simple: true, query: q}, p)
	if err == nil {
		s.out.send(resp)
	}
	return p, res, err
}

func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, "$spokeproxy$", "")
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// countingConn counts the bytes of a hub connection for the WAN metric.
type countingConn struct {
	net.Conn
	in, out interface{ Add(float64) }
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.in.Add(float64(n))
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.out.Add(float64(n))
	return n, err
}

// endBatch runs the batch received so far, which ends with Sync: as one
// unit, or as the end of the unit in flight since a Flush.
func (s *session) endBatch(ctx context.Context) error {
	defer s.resetBatch()
	if s.open != nil {
		return s.finishOpen(ctx, s.batch)
	}
	u := &s.unitBuf
	*u = unit{msgs: s.batch, class: s.batchClass(s.batch)}
	return s.runUnit(ctx, u)
}

// answers counts the messages of a batch that each get one completing
// answer (ParseComplete, BindComplete, the end of a Describe, the end of
// an Execute, CloseComplete): what a Flush waits for.
func answers(batch []batchMsg) int {
	n := 0
	for _, m := range batch {
		switch m.typ {
		case 'P', 'B', 'D', 'E', 'C':
			n++
		}
	}
	return n
}

// needsHub reports whether statements of kind k cannot run on the
// standby (plan sends them to the hub even inside a replica transaction).
func needsHub(k StmtKind) bool {
	return k == StmtWrite || k == StmtCopyIn || k == StmtPin
}

// flushBatch answers a Flush: the batch so far is routed (the first time)
// or joins the unit in flight, is sent with a Flush, and its answers are
// relayed to the client. The unit stays on its backend until Sync, except
// that a part that must run on the hub ends a unit in flight on the
// replica there (with a Sync whose ReadyForQuery the client never sees)
// and opens a new one on the hub, as a transaction's first write moves it.
// Answers are not held for the safety net: the client is waiting for
// them.
func (s *session) flushBatch(ctx context.Context, batch []batchMsg) error {
	f := s.open
	if f != nil && f.b != nil && f.b == s.replica && !f.failed && s.replica != nil && len(batch) > 0 &&
		needsHub(s.batchClass(batch).Strongest()) {
		if err := s.closeReplicaPart(ctx, f); err != nil {
			return err
		}
		f = s.open
	}
	if f == nil {
		if len(batch) == 0 {
			return nil // nothing is waiting for an answer
		}
		var err error
		if f, err = s.openFlight(ctx, s.extendedUnit(batch)); err != nil || f == nil {
			return err // or answered without a backend
		}
		s.open = f
		if f.b == nil {
			return nil // refused: the error is sent, the rest skipped until Sync
		}
		s.sendUnit(f, f.u)
	} else {
		if f.b == nil || (len(batch) == 0 && f.owed == 0) {
			return nil
		}
		if len(batch) > 0 {
			s.sendUnit(f, &unit{msgs: batch})
			f.u.msgs = append(f.u.msgs, batch...)
			f.u.class.Stmts = append(f.u.class.Stmts, s.batchClass(batch).Stmts...)
		}
	}
	want := answers(batch) + f.owed
	f.owed = 0
	if f.failed {
		want = 0 // the backend skips everything up to Sync
	}
	f.b.out.flushMsg()
	res, err := s.relay(ctx, f, want)
	if err != nil {
		return s.flightLost(f, beforeSync(err))
	}
	f.res = res
	return nil
}

// beforeSync marks a backend failure met before the unit's Sync was sent
// as uncommitted: the implicit transaction of an extended batch commits
// at its Sync, so a write lost before it is known not done (08006, not
// 08007); a COMMIT among the statements still makes it unknown
// (backendLost).
func beforeSync(err error) error {
	var bio *backendIOError
	if errors.As(err, &bio) {
		bio.uncommitted = true
		return err
	}
	var cio *clientIOError
	if errors.As(err, &cio) {
		return err
	}
	return &backendIOError{err: err, uncommitted: true}
}

// closeReplicaPart ends the part of a flushed unit that ran on the
// replica with a Sync, consuming its ReadyForQuery, so the rest can run
// on the hub.
func (s *session) closeReplicaPart(ctx context.Context, f *flight) error {
	f.b.out.sync()
	f.p.capture = false
	res, err := s.relay(ctx, f, -1)
	if err != nil {
		return s.flightLost(f, err)
	}
	s.srv.front.Request(f.p.route, f.u.class.RequestKind())
	switch res.status {
	case 'I':
		if s.txOn != nil {
			s.settleTxnSets(ctx, f.b, res.end(0) == 'C')
		}
		s.endTxn()
	case 'T', 'E':
		s.txOn, s.txFailed = f.b, res.status == 'E'
	}
	// What the part set follows the session to the hub, as at a unit's end.
	s.mirrorSets(ctx, f.b, f.u, res)
	s.followUnit(ctx, f.b, f.u, res)
	s.open = nil
	return nil
}

// flightLost handles a backend that failed while a flushed unit was in
// flight: the error goes to the client now, the ReadyForQuery at Sync.
func (s *session) flightLost(f *flight, err error) error {
	status, err := s.backendLost(f.b, f.u, err)
	if err != nil {
		return err
	}
	s.open = &flight{u: f.u, failed: true, res: exResult{status: status}}
	return nil
}

// openFlight plans a unit that the client flushed before its Sync, as
// runUnit does, and queues what precedes it on the chosen backend. A
// refused unit (hub unavailable, a lost hub transaction) gets its error
// at once and a flight without a backend.
func (s *session) openFlight(ctx context.Context, u *unit) (*flight, error) {
	refused := func(status byte) *flight {
		return &flight{u: u, failed: true, res: exResult{status: status}, p: plan{route: metrics.RouteRefuse}}
	}
	p, err := s.plan(ctx, u)
	if err != nil {
		return nil, err
	}
	if s.txLost && (p.refuse == nil || isHubLost(p.refuse)) && s.endsLostTxn(u, p.refuse == nil) {
		// As in runUnit: the ROLLBACK (or the COMMIT after the 08006) of
		// a lost transaction succeeds. No flight: the Sync still to come
		// runs as a unit of its own and answers 'I'.
		s.endTxn()
		s.txLost = false
		s.answerAlone(u, "ROLLBACK")
		if err := s.out.flush(); err != nil {
			return nil, &clientIOError{err: err}
		}
		return nil, nil
	}
	kind := u.class.RequestKind()
	if p.refuse != nil {
		s.countRefusal(kind == "write" || u.class.Has(StmtCommit), p.refuse)
		s.srv.front.Request(metrics.RouteRefuse, kind)
		if s.txOn == s.replica && s.replica != nil {
			// Abort the replica transaction as the standby's own 25006 would.
			_, res, xerr := s.raiseRefusal(ctx, errorResponseFor(p.refuse, "ERROR"))
			if xerr != nil {
				status, lerr := s.backendLost(s.replica, u, xerr)
				return refused(status), lerr
			}
			if err := s.out.flush(); err != nil {
				return nil, &clientIOError{err: err}
			}
			if res.status == 'E' || res.status == 'T' {
				s.txOn, s.txFailed = s.replica, res.status == 'E'
			}
			return refused(res.status), nil
		}
		status := byte('I')
		if s.txOn != nil || s.txLost {
			status = 'E'
		}
		s.out.send(errorResponseFor(p.refuse, "ERROR"))
		if err := s.out.flush(); err != nil {
			return nil, &clientIOError{err: err}
		}
		return refused(status), nil
	}
	if s.txLost {
		s.out.send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "25P02",
			Message: "current transaction is aborted, commands ignored until end of transaction block"})
		if err := s.out.flush(); err != nil {
			return nil, &clientIOError{err: err}
		}
		return refused('E'), nil
	}
	if p.waitForPos {
		ok, werr := s.waitPos(ctx)
		if werr != nil {
			s.srv.front.Request(metrics.RouteRefuse, kind)
			s.out.send(errorResponseFor(werr, "ERROR"))
			if err := s.out.flush(); err != nil {
				return nil, &clientIOError{err: err}
			}
			status := byte('I')
			if s.txOn != nil {
				status = 'E'
			}
			return refused(status), nil
		}
		if !ok {
			if hb, herr := s.hubConn(ctx); herr == nil {
				p.to, p.route, p.rewrite = hb, metrics.RouteHub, ""
			}
		}
	}
	if p.moveToHub {
		s.moveTxnToHub(p.to)
	}
	p.safetyNet = false
	f := s.begin(new(flight), p.to, u, p)
	f.start = time.Now()
	return f, nil
}

// finishOpen ends the unit in flight since a Flush with the rest of its
// batch (ending with Sync) and answers it as runUnit does.
func (s *session) finishOpen(ctx context.Context, batch []batchMsg) error {
	f := s.open
	if f.b != nil && f.b == s.replica && !f.failed && needsHub(s.batchClass(batch).Strongest()) {
		// A part that must run on the hub came with the Sync: the replica
		// part ends there, as in flushBatch, and the rest is a unit of its
		// own (a first write moves a transaction as usual).
		if err := s.closeReplicaPart(ctx, f); err != nil {
			return err
		}
		if s.open != nil {
			return s.finishOpen(ctx, batch) // the replica part was lost: answer the Sync
		}
		u := &s.unitBuf
		*u = unit{msgs: batch, class: s.batchClass(batch)}
		return s.runUnit(ctx, u)
	}
	s.open = nil
	if f.b == nil {
		// Refused or lost: the error was sent; PostgreSQL skips the rest
		// of the batch and answers its Sync.
		s.noteSiteChange()
		s.out.readyForQuery(f.res.status)
		if err := s.out.flush(); err != nil {
			return &clientIOError{err: err}
		}
		return nil
	}
	s.sendUnit(f, &unit{msgs: batch})
	f.u.msgs = append(f.u.msgs, batch...)
	f.u.class.Stmts = append(f.u.class.Stmts, s.batchClass(batch).Stmts...)
	// What came with the Sync may commit (a COMMIT), or leave a
	// transaction open the position query must not run in.
	f.p.capture = f.b.hub && s.learnsPosition(f.u.class, false)
	s.sendEnd(f)
	res, err := s.relay(ctx, f, -1)
	if err != nil {
		if res.open != nil {
			return s.flightLost(f, err)
		}
		return s.backendFailed(f.b, f.u, err)
	}
	if res.open != nil {
		// The Sync just sent went to a COPY FROM STDIN, which ignores it.
		s.open = f
		return nil
	}
	kind := f.u.class.RequestKind()
	s.srv.front.Request(f.p.route, kind)
	s.srv.front.RequestDuration(f.p.route).Observe(time.Since(f.start).Seconds())
	return s.finish(ctx, f.p, f.u, res)
}

// mirrorSets applies the session SET/RESETs that ran on b as part of a
// unit (each statement's own text: the reads and writes beside it run
// once, where the unit ran) to the session's other backend, and keeps
// them for backend connections made later. Only once the unit has ended
// outside a transaction, and only the SETs whose transaction committed
// (standingStmts): a SET is undone with the transaction it ran in, and a
// refused or failed one changes nothing. One made in a transaction still
// open is held by followUnit until it ends.
func (s *session) mirrorSets(ctx context.Context, b *backendConn, u *unit, res exResult) {
	if res.status != 'I' || u.fn {
		return
	}
	stands := standing{u: u, res: &res}
	var texts []string
	if u.simple {
		j := 0
		for _, st := range u.class.Stmts {
			if st.Kind == StmtEmpty {
				continue
			}
			if st.Kind == StmtSession && stands.at(j) {
				texts = append(texts, st.Text)
				s.noteDefaults(st)
			}
			j++
		}
		switch {
		case len(texts) == 0:
		case len(texts) == j:
			// Only SETs, all standing: the Query itself.
			texts = texts[:1]
			texts[0] = u.query
		default:
			// One Query again, so the other backend parses each SET
			// under the settings the Query arrived with, as the one that
			// ran it did ("SET standard_conforming_strings = off; SET
			// x = 'a\\b'", a client_encoding change); a text may end in
			// a -- comment.
			texts = []string{strings.Join(texts, ";\n")}
		}
	} else {
		j := 0
		for _, m := range u.msgs {
			if m.typ != 'B' {
				continue
			}
			if st := m.ps; st != nil {
				if one, ok := st.class.Single(); ok && one.Kind == StmtSession && stands.at(j) {
					texts = append(texts, st.query)
					s.noteDefaults(one)
				}
			}
			j++
		}
	}
	for _, q := range texts {
		s.keepSet(ctx, b, []string{q}, "")
	}
}

// keepSet keeps q, a session-level setting that ran on b, for backend
// connections made later (replacing the kept statements that start with
// replaces, if not empty: an earlier value of the same setting) and
// applies it on the session's other backend: queued ahead of the hub's
// next request, which costs no WAN round trip and cannot hang on a dead
// link, or run on the replica now. If that fails the replica connection
// is dropped: a new one replays every kept setting.
func (s *session) keepSet(ctx context.Context, b *backendConn, qs []string, replaces string) {
	other := s.other(b)
	if replaces != "" {
		s.sets = dropKept(s.sets, replaces)
		if other != nil && other.hub {
			other.pendingSQL = dropKept(other.pendingSQL, replaces)
		}
	}
	s.sets = append(s.sets, qs...)
	if other == nil {
		return // a hub connection gets s.sets when it attaches
	}
	if other.hub {
		other.pendingSQL = append(other.pendingSQL, qs...)
		return
	}
	for _, q := range qs {
		if err := s.silent(ctx, other, q); err != nil {
			s.log.Warn("could not apply a session setting on the replica", "err", err)
			s.dropReplica(err)
			return
		}
	}
}

// dropKept removes from kept the statements that start with prefix, each
// with the COMMIT that follows it (see followUnit).
func dropKept(kept []string, prefix string) []string {
	out := kept[:0]
	for i := 0; i < len(kept); i++ {
		if strings.HasPrefix(kept[i], prefix) {
			if i+1 < len(kept) && kept[i+1] == "COMMIT" {
				i++
			}
			continue
		}
		out = append(out, kept[i])
	}
	clear(kept[len(out):])
	return out
}

// setConfigTxn opens the transaction a session-level set_config is
// repeated in.
const setConfigTxn = "BEGIN ISOLATION LEVEL READ COMMITTED; "

// setConfigRepeat is one set_config() call as SQL that repeats it on
// another backend, its arguments literals.
type setConfigRepeat struct {
	sql   string
	local bool // is_local: it lasts until the end of the transaction
	// replaces: how sql starts, up to its value; what an earlier call for
	// the same setting started with too.
	replaces string
	// defaults: the change to the session's transaction defaults, as the
	// SET it amounts to (zero when it sets something else).
	defaults Statement
}

// renderSetConfigs renders set_config calls with the parameters of their
// Bind (nil for a simple Query). ok is false when one cannot be: a
// parameter missing, or a boolean in a form this does not read.
func renderSetConfigs(calls []SetConfigCall, bind *pgproto3.Bind) (reps []setConfigRepeat, ok bool) {
	lit := func(v string, null bool) (string, bool) {
		if null {
			return "NULL", true
		}
		return sqlString(v)
	}
	for _, c := range calls {
		name, nameNull, ok1 := configArg(c.Name, bind, false)
		value, valueNull, ok2 := configArg(c.Value, bind, false)
		local, localNull, ok3 := configArg(c.Local, bind, true)
		if !ok1 || !ok2 || !ok3 {
			return nil, false
		}
		nameSQL, ok1 := lit(name, nameNull)
		valueSQL, ok2 := lit(value, valueNull)
		if !ok1 || !ok2 {
			return nil, false
		}
		isLocal := false // set_config takes a NULL is_local as false
		if !localNull {
			b, known := parseBool(local)
			if !known {
				return nil, false
			}
			isLocal = b
		}
		rep := setConfigRepeat{
			sql:      "SELECT pg_catalog.set_config(" + nameSQL + ", " + valueSQL + ", " + strconv.FormatBool(isLocal) + ")",
			local:    isLocal,
			replaces: "SELECT pg_catalog.set_config(" + nameSQL + ", ",
		}
		switch strings.ToLower(name) {
		case "default_transaction_isolation":
			rep.defaults = Statement{Kind: StmtSession, Isolation: parseIsolation(value), ResetsIsolation: valueNull}
		case "default_transaction_read_only":
			rep.defaults = Statement{Kind: StmtSession, ResetsAccess: valueNull}
			if b, known := parseBool(value); known && !valueNull {
				rep.defaults.Access = AccessReadWrite
				if b {
					rep.defaults.Access = AccessReadOnly
				}
			}
		}
		reps = append(reps, rep)
	}
	return reps, true
}

// configArg is one set_config argument's value, from its literal or its
// Bind parameter: null for NULL; for is_local (boolean) a binary
// parameter's one byte reads as "true" or "false". ok is false when the
// parameter is missing or unreadable.
func configArg(a ConfigArg, bind *pgproto3.Bind, boolean bool) (v string, null, ok bool) {
	if a.Param == 0 {
		return a.Lit, a.Null, true
	}
	if bind == nil || a.Param > len(bind.Parameters) {
		return "", false, false
	}
	p := bind.Parameters[a.Param-1]
	if p == nil {
		return "", true, true
	}
	binary := false
	switch f := bind.ParameterFormatCodes; len(f) {
	case 0:
	case 1:
		binary = f[0] == 1
	default:
		if a.Param > len(f) {
			return "", false, false
		}
		binary = f[a.Param-1] == 1
	}
	if binary && boolean {
		if len(p) != 1 {
			return "", false, false
		}
		return strconv.FormatBool(p[0] != 0), false, true
	}
	return string(p), false, true // a text's binary form is its text
}

// parseBool reads a boolean as PostgreSQL's boolin does for the usual
// spellings.
func parseBool(s string) (value, ok bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "t", "true", "y", "yes", "on", "1":
		return true, true
	case "f", "false", "n", "no", "off", "0":
		return false, true
	}
	return false, false
}

// sqlString is s as a dollar-quoted SQL string constant, with a tag s
// does not contain: no character in it is special, whatever the client
// encoding (a backslash-escaped ” string is unsafe in Shift JIS, Big5,
// GBK and the like, where 0x5C is also the second byte of a character),
// standard_conforming_strings or backslash_quote say. ok is false for a
// NUL, which no SQL text may hold.
func sqlString(s string) (lit string, ok bool) {
	if strings.IndexByte(s, 0) >= 0 {
		return "", false
	}
	tag := "$spokeproxy$"
	for n := 1; strings.Contains(s, tag[:len(tag)-1]); n++ {
		tag = "$spokeproxy" + strconv.Itoa(n) + "$"
	}
	return tag + s + tag, true
}

// followUnit follows what an extended or simple unit that ran on b
// changed of the session's settings, in order. Its set_config() calls are
// repeated as mirrorSets repeats SET: a session-level one, once its unit
// has committed, on the session's other backend and any hub connection
// attached later; one made in a transaction (and a session-level one made
// there) is kept with the transaction's replay list, replayed on the hub
// if a transaction on the replica moves there, and a session-level one
// settled when the transaction ends. A row-level security policy on the
// hub then sees what the client set (request.jwt.claims, app.tenant). In
// an extended batch inside a transaction, SET LOCALs, SETs, savepoints
// and transaction ends are followed in order too. After a failure only
// what completed before it counts, and nothing outside a transaction (the
// implicit transaction rolled back).
func (s *session) followUnit(ctx context.Context, b *backendConn, u *unit, res exResult) {
	if u.fn {
		return
	}
	stands := standing{u: u, res: &res}
	take := func(r setConfigRepeat, stmt int) {
		switch {
		case s.txOn == nil:
			// A local one ended with the transaction it ran in; a
			// session one stands if that transaction committed.
			if !r.local && stands.at(stmt) {
				s.keepSetConfig(ctx, b, r)
			}
		case s.txOn != b:
		case r.local && b == s.replica:
			s.txReplay = append(s.txReplay, txStmt{sql: r.sql, kind: txSetLocal})
		case !r.local && !s.pinned:
			s.txReplay = append(s.txReplay, txStmt{sql: r.sql, kind: txSetSession, setConfig: &r})
		}
	}
	// In order: what a COMMIT or ROLLBACK in the unit ends is settled or
	// forgotten, what comes after it belongs to the transaction open after
	// it. A simple Query that opened the transaction is replayed whole as
	// its BEGIN (txBegin): its statements are not kept twice.
	inTxn := s.txOn != nil && s.txOn == b && !s.pinned && !(u.simple && u.query == s.txBegin)
	k := 0 // transaction ends met so far
	if u.simple {
		single, isSingle := u.class.Single()
		n := 0
		for _, st := range u.class.Stmts {
			if st.Kind == StmtEmpty {
				continue
			}
			if n >= res.done {
				break
			}
			n++
			if len(st.SetConfigs) > 0 {
				if r, ok := renderSetConfigs(st.SetConfigs, nil); ok {
					for _, r := range r {
						take(r, n-1)
					}
				}
			}
			if inTxn {
				sql := st.Text // a SET beside other statements; "" for the rest
				if isSingle {
					st, sql = single, u.query
				}
				s.followTxnStmt(ctx, b, st, sql, res, &k)
			}
		}
		return
	}
	executes := 0 // Executes met so far: a Bind's statement runs at the next
	binds := 0
	for _, m := range u.msgs {
		if m.typ == 'E' {
			executes++
		}
		if m.typ != 'B' {
			continue
		}
		binds++
		if executes >= res.done {
			continue // not run, or did not complete (the batch failed there)
		}
		for _, r := range m.setConfigs {
			take(r, binds-1)
		}
		if inTxn && m.ps != nil {
			if one, ok := m.ps.class.Single(); ok {
				s.followTxnStmt(ctx, b, one, m.ps.query, res, &k)
			}
		}
	}
}

// standingStmts reports, for each statement of a unit in the order they
// ran (a simple Query's statements, empty ones left out; an extended
// batch's Binds, whose statement runs at the next Execute), whether what
// it did stands once the unit has ended outside a transaction (status
// 'I'): it completed, and the transaction it ran in committed. That is
// an explicit one ended by a COMMIT that committed, or the unit's
// implicit one, which commits at a COMMIT or at the unit's end unless
// the unit failed. A ROLLBACK TO undoes what came after its savepoint
// (all of the unit's when the savepoint is older than the unit). For a
// unit that ends inside a transaction, what stands is decided at that
// transaction's end (followUnit holds it).
func standingStmts(u *unit, res exResult) []bool {
	var stmts []Statement
	ran := 0 // how many of stmts completed
	if u.simple {
		for _, st := range u.class.Stmts {
			if st.Kind != StmtEmpty {
				stmts = append(stmts, st)
			}
		}
		ran = min(res.done, len(stmts))
	} else {
		executes := 0
		for _, m := range u.msgs {
			switch m.typ {
			case 'E':
				executes++
			case 'B':
				st := Statement{Kind: StmtEmpty}
				if m.ps != nil {
					if one, ok := m.ps.class.Single(); ok {
						st = one
					}
				}
				stmts = append(stmts, st)
				if executes < res.done {
					ran++
				}
			}
		}
	}
	stands := make([]bool, len(stmts))
	if res.status != 'I' {
		return stands
	}
	type savepoint struct {
		name    string
		pending int // len(pending) when it was made
	}
	var pending []int // statements whose transaction has not ended
	var savepoints []savepoint
	k := 0 // transaction ends met so far
	for i, st := range stmts[:ran] {
		switch {
		case st.Kind == StmtCommit || st.Kind == StmtRollback:
			if res.end(k) == 'C' {
				for _, j := range pending {
					stands[j] = true
				}
			}
			k++
			pending, savepoints = pending[:0], savepoints[:0]
		case st.Kind == StmtSavepoint && st.Savepoint == SavepointSet:
			savepoints = append(savepoints, savepoint{st.Name, len(pending)})
		case st.Kind == StmtSavepoint:
			newest := -1
			for j := len(savepoints) - 1; j >= 0; j-- {
				if savepoints[j].name == st.Name {
					newest = j
					break
				}
			}
			switch {
			case st.Savepoint == SavepointRelease && newest >= 0:
				savepoints = savepoints[:newest]
			case st.Savepoint == SavepointRollback && newest >= 0:
				pending, savepoints = pending[:savepoints[newest].pending], savepoints[:newest+1]
			case st.Savepoint == SavepointRollback:
				pending = pending[:0] // the savepoint is older than the unit
			}
		default:
			pending = append(pending, i)
		}
	}
	if !res.failed {
		for _, j := range pending {
			stands[j] = true
		}
	}
	return stands
}

// standing answers standingStmts(u, res) by the statement's index,
// worked out at the first question: most units have no SET to follow.
type standing struct {
	u      *unit
	res    *exResult
	stands []bool
	known  bool
}

func (t *standing) at(i int) bool {
	if !t.known {
		t.stands, t.known = standingStmts(t.u, *t.res), true
	}
	return i < len(t.stands) && t.stands[i]
}

// followTxnStmt follows one statement that completed inside the
// transaction open on b, sql being its own text ("" when it has none):
// a SET LOCAL or SET TRANSACTION is kept to replay on the hub if a
// transaction on the replica moves there; a session-level SET is held for
// that replay too and to settle when the transaction ends; savepoints are
// followed (noteSavepoint); a COMMIT or ROLLBACK, the k-th end of the
// unit, ends what came before it (txnEndedInUnit).
func (s *session) followTxnStmt(ctx context.Context, b *backendConn, st Statement, sql string, res exResult, k *int) {
	switch {
	case st.Kind == StmtSetLocal && b == s.replica && sql != "":
		s.txReplay = append(s.txReplay, txStmt{sql: sql, kind: setLocalKind(st)})
		if st.Access != AccessDefault {
			s.txReadOnly = st.Access == AccessReadOnly
		}
	case st.Kind == StmtSession && sql != "":
		s.holdTxnSession(ctx, b, sql, st)
	case st.Kind == StmtSavepoint:
		s.noteSavepoint(savepointSQL(st), st)
	case st.Kind == StmtCommit || st.Kind == StmtRollback:
		s.txnEndedInUnit(ctx, b, st, res.end(*k))
		*k++
	}
}

// txnEndedInUnit follows one COMMIT or ROLLBACK of a unit after which a
// transaction is still open on b (its status 'T' or 'E'), given how it
// ended (0: it did not complete, and neither did the rest). AND CHAIN
// carries the transaction's characteristics into the next one; a plain
// end means a BEGIN later in the unit opened a transaction the front
// knows nothing of yet, replayed as a plain BEGIN if it moves.
func (s *session) txnEndedInUnit(ctx context.Context, b *backendConn, end Statement, how byte) {
	switch {
	case how == 0:
	case end.Chain:
		s.chainTxn(ctx, b, how == 'C')
	default:
		s.settleTxnSets(ctx, b, how == 'C')
		s.txBegin, s.txReplay, s.txSnapshot, s.txReadOnly = "", nil, false, false
	}
}

// keepSetConfig keeps a session-level set_config() call that ran on b
// outside a transaction (or in one that committed), as keepSet keeps a SET.
func (s *session) keepSetConfig(ctx context.Context, b *backendConn, r setConfigRepeat) {
	s.noteDefaults(r.defaults)
	// In a transaction of its own: under a SERIALIZABLE default a standby
	// refuses a bare SELECT (0A000), where SET would pass. The COMMIT is a
	// query of its own, so that it ends the block even if the repeat fails
	// there (it would be skipped inside the same Query, leaving the
	// connection in a failed block).
	s.keepSet(ctx, b, []string{setConfigTxn + r.sql, "COMMIT"}, setConfigTxn+r.replaces)
}
