package ldapfront

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spokeproxy/spokeproxy/internal/rawconn"
	"github.com/spokeproxy/spokeproxy/metrics"
	"github.com/spokeproxy/spokeproxy/routing"
)

// internalBase is the first message ID the proxy uses for its own requests on
// backend connections (contextCSN reads, WhoAmI after SASL), allocated by
// nextInternalID. Client IDs in this range still work: the proxy skips those in
// flight, and a client reusing one of the proxy's in flight gets protocolError.
const internalBase = math.MaxInt32 - 1<<20

// setupID is the message ID of the proxy's synchronous requests on a backend
// connection before its reader starts (StartTLS, bind): nothing else is in
// flight on it then.
const setupID = math.MaxInt32

type identKind int

const (
	identAnonymous identKind = iota
	identSimple
	identSASL
)

// identity is who the client is bound as. The password stays in memory only.
type identity struct {
	kind     identKind
	dn       string
	password []byte
	hubOnly  bool   // the replica rejected the bind and the hub accepted it
	authzID  string // after SASL: the replica's WhoAmI answer ("dn:..."), for Proxied Authorization
}

// backend is one connection to the replica or a hub on behalf of one client.
// conn and br are owned by the backend's reader goroutine after setup; writes
// go through send under wmu. dead and gen are guarded by session.mu.
type backend struct {
	side     string // metrics.TargetReplica or metrics.TargetHub
	endpoint string
	conn     net.Conn
	br       *bufio.Reader
	wmu      sync.Mutex

	gen     int  // identity generation this connection is bound as
	dead    bool // failed or closed: no new operations
	closing bool // closed by the session on purpose (rebind, end): not a failure to report
	// draining: the hub moved; no new operations, and the connection
	// closes once those in flight have their answers.
	draining bool
}

// op is one operation in flight, keyed by message ID. Guarded by session.mu.
type op struct {
	id       int64
	req      Op
	name     string // bounded op name for metrics
	kind     string // read, write, bind, other
	route    string
	b        *backend
	write    bool // changes data: a lost hub connection makes its outcome unknown
	postRead bool // the proxy added the Post-Read control
	clientPR bool // the client asked for Post-Read itself
	needCSN  bool // read the hub's contextCSN after a success
	// noCSN: a Start Transaction, or an operation inside a transaction
	// (RFC 5805): nothing is committed by its success, so its response is
	// relayed as is; the End Transaction that commits reads the position.
	noCSN    bool
	bind     *BindRequest
	triedHub bool
	start    time.Time

	// internal ops are the proxy's own; onMessage gets each response message,
	// onFail runs if the connection dies first.
	onMessage func(raw []byte, h ResponseHeader)
	onFail    func()
}

type session struct {
	srv    *Server
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc

	raw    net.Conn // the accepted connection: deadlines and Close, from any goroutine
	client net.Conn // raw, or the TLS conn over it after StartTLS (replaced under wmu)
	br     *bufio.Reader
	isTLS  bool

	wmu sync.Mutex    // one writer to the client
	bw  *bufio.Writer // writes through clientWriter
	// lastWords: disconnect is writing its notice; writes to the client
	// then get at most a second. Guarded by wmu.
	lastWords bool

	setupMu sync.Mutex // serializes backend connection setup

	mu       sync.Mutex // guards everything below
	replica  *backend
	hub      *backend
	draining map[*backend]struct{} // old hub connections finishing their operations
	ops      map[int64]*op
	pos      routing.Position // read-your-writes position of this session
	// posUnknown: a write succeeded on the hub but the contextCSN read
	// behind it died with the hub connection: the next read asks the hub
	// for its contextCSN first (decide).
	posUnknown   bool
	id           identity
	idGen        int
	nextInternal int64
	closed       bool
	idle         *time.Timer // idle timeout; set in run, re-armed by checkIdle

	lastActive atomic.Int64 // unix nanos of the last client message or response
	arrived    time.Time    // when the client message being handled arrived; session goroutine only
	wg         sync.WaitGroup
	closeOnce  sync.Once
}

func newSession(srv *Server, c net.Conn) *session {
	c = rawconn.Wrap(c)
	s := &session{
		srv:          srv,
		log:          srv.log.With("client", c.RemoteAddr().String()),
		raw:          c,
		client:       c,
		br:           bufio.NewReaderSize(c, 16<<10),
		ops:          make(map[int64]*op),
		nextInternal: internalBase,
	}
	s.bw = bufio.NewWriterSize(clientWriter{s}, 32<<10)
	_, s.isTLS = c.(*tls.Conn)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

func (s *session) metrics() *metrics.LDAPFront { return s.srv.m }

func (s *session) touch() { s.touchAt(time.Now()) }

func (s *session) touchAt(t time.Time) { s.lastActive.Store(t.UnixNano()) }

// run serves the client until it unbinds, fails or the server stops; it returns
// only when every goroutine of the session has ended.
func (s *session) run(parent context.Context) {
	if m := s.metrics(); m != nil {
		m.ClientConnections.Inc()
		defer m.ClientConnections.Dec()
	}
	stop := context.AfterFunc(parent, func() { s.close() })
	defer stop()
	s.touch()
	s.mu.Lock()
	s.idle = time.AfterFunc(s.srv.config().IdleTimeout, s.checkIdle)
	s.mu.Unlock()
	defer s.idle.Stop() // after close: checkIdle re-arms only while not closed

	if _, err := s.replicaConn(); err != nil {
		s.log.Warn("replica unavailable at connect", "err", err)
	}
	for {
		pdu, err := ReadPDU(s.br, s.srv.config().MaxPDUSize)
		if err != nil {
			if IsMalformed(err) {
				reason := metrics.LDAPErrMalformed
				if IsTooLarge(err) {
					reason = metrics.LDAPErrTooLarge
				}
				if m := s.metrics(); m != nil {
					m.ProtocolErrors.WithLabelValues(reason).Inc()
				}
				s.log.Warn("closing client after a protocol error", "err", err)
				s.disconnect(ResultProtocolError, err.Error())
			}
			break
		}
		s.arrived = time.Now()
		s.touchAt(s.arrived)
		if !s.handle(pdu) {
			break
		}
	}
	s.close()
	s.wg.Wait()
}

// checkIdle closes the connection when nothing was in flight for IdleTimeout,
// else re-arms the timer. It re-arms under mu and only while the session is
// open, so that run's Stop after close is final.
func (s *session) checkIdle() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	busy := len(s.ops) > 0
	since := time.Since(time.Unix(0, s.lastActive.Load()))
	if !busy && since >= s.srv.config().IdleTimeout {
		s.mu.Unlock()
		s.log.Info("closing idle client", "idle", since.Round(time.Second))
		s.close()
		return
	}
	wait := s.srv.config().IdleTimeout - since
	if busy || wait <= 0 {
		wait = s.srv.config().IdleTimeout
	}
	s.idle.Reset(wait)
	s.mu.Unlock()
}

// close ends the session: every connection is closed, which ends every reader.
// It is idempotent.
func (s *session) close() {
	s.closeOnce.Do(func() {
		s.cancel()
		s.mu.Lock()
		s.closed = true
		bs := []*backend{s.replica, s.hub}
		for b := range s.draining {
			bs = append(bs, b)
		}
		for _, b := range bs {
			if b != nil {
				b.closing = true
			}
		}
		s.mu.Unlock()
		// Closing the accepted connection unblocks a writer stuck on a client
		// that does not read, and the reader; TLS over it fails with it.
		_ = s.raw.Close()
		for _, b := range bs {
			if b != nil {
				_ = b.conn.Close()
			}
		}
	})
}

// clientWriter is what the session's bufio.Writer writes through: the current
// client connection (plain or TLS). A write that has to wait for the client
// to read waits at most writeTimeout. Only ever used under wmu.
type clientWriter struct{ s *session }

func (w clientWriter) Write(b []byte) (int, error) {
	s := w.s
	n := 0
	tw, plain := s.client.(rawconn.TryWriter)
	if plain {
		// Nearly every response fits in the socket buffer at once: only a
		// write that must wait needs a deadline (setting one updates a
		// runtime timer, as costly as the rest of the relaying in Go).
		var err error
		n, err = tw.TryWrite(b)
		if n == len(b) || (err != nil && !isTimeout(err)) {
			return n, s.clientWriteError(err)
		}
		// A timeout here is a deadline disconnect set, now past: the
		// fresh one below still gives its notice a chance.
	}
	_ = s.raw.SetWriteDeadline(time.Now().Add(s.writeTimeout()))
	m, err := s.client.Write(b[n:])
	n += m
	if plain && err == nil {
		// TryWrite fails at once when a deadline has passed: clear it.
		_ = s.raw.SetWriteDeadline(time.Time{})
	}
	return n, s.clientWriteError(err)
}

// writeTimeout is how long a write may wait for the client: WriteTimeout
// as configured now, at most a second for disconnect's last words. Only
// under wmu.
func (s *session) writeTimeout() time.Duration {
	t := s.srv.config().WriteTimeout
	if s.lastWords {
		t = min(t, time.Second)
	}
	return t
}

// clientWriteError names a write timeout for what it is: a slow client.
func (s *session) clientWriteError(err error) error {
	if err != nil && isTimeout(err) {
		return &slowClientError{timeout: s.writeTimeout(), err: err}
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// slowClientError says a client did not take a response within WriteTimeout.
type slowClientError struct {
	timeout time.Duration
	err     error
}

func (e *slowClientError) Error() string {
	return fmt.Sprintf("client did not read its responses for %v: %v", e.timeout, e.err)
}

func (e *slowClientError) Unwrap() error { return e.err }

// disconnect sends a Notice of Disconnection and closes the session.
func (s *session) disconnect(code int, msg string) {
	// The deadline also unblocks a response write stuck on a client that does
	// not read, so that wmu comes free.
	_ = s.raw.SetWriteDeadline(time.Now().Add(time.Second))
	s.wmu.Lock()
	s.lastWords = true
	_, _ = s.bw.Write(EncodeNoticeOfDisconnection(code, msg))
	_ = s.bw.Flush()
	s.wmu.Unlock()
	s.close()
}

// toClient writes one message to the client; flush false lets a reader batch
// messages while more are already buffered from its backend. A failed write
// (the client is gone, or did not read for WriteTimeout) ends the session.
func (s *session) toClient(raw []byte, flush bool) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err := s.bw.Write(raw)
	if err == nil && flush {
		err = s.bw.Flush()
	}
	if err != nil {
		s.clientWriteFailed(err)
		return
	}
	if flush {
		s.touch() // once per batch: the clock is no cheap read on a VM
	}
}

// clientWriteFailed ends the session after a failed write to the client.
func (s *session) clientWriteFailed(err error) {
	var slow *slowClientError
	if errors.As(err, &slow) {
		s.mu.Lock()
		closed, inFlight := s.closed, len(s.ops)
		s.mu.Unlock()
		if !closed {
			s.log.Warn("closing a client that does not read its responses", "write_timeout", slow.timeout, "in_flight", inFlight)
			if m := s.metrics(); m != nil {
				m.SlowClients.Inc()
			}
		}
	}
	s.close()
}

func (s *session) reply(req *PDU, code int, diag string) {
	if raw := EncodeResult(req, code, diag); raw != nil {
		s.toClient(raw, true)
	}
}

// handle processes one client message; false ends the session.
func (s *session) handle(p *PDU) bool {
	switch p.Op {
	case OpUnbindRequest:
		// Unbind ends both sides: pass it on so the servers log a clean end.
		// The servers then close their side; mark the connections as closed
		// on purpose first, or that EOF would be reported to the Site as a
		// failure of the replica or hub.
		s.mu.Lock()
		bs := []*backend{s.replica, s.hub}
		for _, b := range bs {
			if b != nil {
				b.closing = true
			}
		}
		s.mu.Unlock()
		for _, b := range bs {
			if b != nil {
				_ = b.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
				_ = b.send(p.Raw, s.metrics())
			}
		}
		return false
	case OpAbandonRequest:
		s.abandon(p)
		return true
	case OpBindRequest:
		s.bind(p)
		return true
	case OpExtendedRequest:
		switch p.ExtOID {
		case OIDStartTLS:
			return s.startTLS(p)
		case OIDCancel:
			s.cancelOp(p)
			return true
		}
	}
	if _, ok := p.Op.responseOp(); !ok {
		s.disconnect(ResultProtocolError, fmt.Sprintf("unexpected %v message from a client", p.Op))
		return false
	}
	s.forward(p)
	return true
}

// classify says whether a request reads or writes, its metric name, and whether
// it must run on the hub even as a read.
func (s *session) classify(p *PDU) (kind routing.Kind, name string, pinned bool) {
	kind, name = routing.KindWrite, p.Op.String()
	switch p.Op {
	case OpSearchRequest, OpCompareRequest:
		kind = routing.KindRead
	case OpExtendedRequest:
		switch p.ExtOID {
		case OIDWhoAmI:
			kind, name = routing.KindRead, "whoami"
		case OIDPasswordModify:
			name = "password_modify"
		case OIDStartTxn, OIDEndTxn:
			name = "transaction"
		}
	}
	if _, ok := p.Control(OIDDontUseCopy); ok {
		pinned = true
	}
	if _, ok := p.Control(OIDTxnSpec); ok {
		// Part of a transaction (RFC 5805): it lives on the hub connection
		// where Start Transaction ran.
		pinned = true
	}
	if p.Op == OpSearchRequest {
		if _, ok := p.Control(OIDSyncRequest); ok && !s.srv.replicaSupportsSync(s.ctx) {
			pinned = true
		}
	}
	s.mu.Lock()
	if s.id.hubOnly {
		pinned = true
	}
	s.mu.Unlock()
	return kind, name, pinned
}

func routeLabel(r routing.Route) string {
	switch r {
	case routing.RouteHub:
		return metrics.RouteHub
	case routing.RouteRefuse:
		return metrics.RouteRefuse
	}
	return metrics.RouteLocal
}

// decide routes a request, waiting for the session's position when the
// routing core says so (bounded by WaitTimeout).
func (s *session) decide(kind routing.Kind, pinned bool) routing.Decision {
	req := routing.Request{Kind: kind, PinnedHub: pinned}
	if s.srv.config().Consistency == routing.ConsistencySession {
		s.mu.Lock()
		unknown := s.posUnknown
		s.mu.Unlock()
		if unknown && kind == routing.KindRead && !pinned && !s.learnHubCSN() {
			// The hub cannot say where it is: as a wait that timed out.
			req.WaitExpired = true
		}
		s.mu.Lock()
		req.SessionPos = s.pos
		s.mu.Unlock()
	}
	d := s.srv.site.Decide(req)
	if d.Route != routing.RouteWaitLocal {
		return d
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.srv.config().WaitTimeout)
	t0 := time.Now()
	err := s.srv.site.WaitFor(ctx, req.SessionPos)
	cancel()
	if m := s.metrics(); m != nil {
		m.CausalWait.Observe(time.Since(t0).Seconds())
	}
	if err == nil {
		return routing.Decision{Route: routing.RouteLocal, Hub: d.Hub}
	}
	req.WaitExpired = true
	d = s.srv.site.Decide(req)
	if d.Route == routing.RouteWaitLocal {
		d.Route = routing.RouteLocal
	}
	return d
}

// learnHubCSN reads the hub's contextCSN on the session's hub connection,
// for a read after a write whose own contextCSN read was lost with the
// connection (a newer contextCSN covers it), and reports whether it could.
// Bounded by WaitTimeout.
func (s *session) learnHubCSN() bool {
	d := s.srv.site.Decide(routing.Request{Kind: routing.KindWrite})
	if d.Route != routing.RouteHub {
		return false
	}
	b, err := s.hubConn(d.Hub)
	if err != nil {
		return false
	}
	got := make(chan routing.Position, 1)
	s.readHubCSN(b, func(p routing.Position, _ bool) { got <- p })
	t := time.NewTimer(s.srv.config().WaitTimeout)
	defer t.Stop()
	select {
	case p := <-got:
		if p == nil {
			return false
		}
		s.mu.Lock()
		s.pos, s.posUnknown = routing.Later(s.pos, p), false
		s.mu.Unlock()
		return true
	case <-t.C:
		return false
	case <-s.ctx.Done():
		return false
	}
}

// errTransactionsOff is the diagnostic of a Start Transaction refused by
// RefuseTransactions.
const errTransactionsOff = "spokeproxy: LDAP transactions are turned off at this site (ldap.transactions: refuse); send the operations without a transaction"

// forward routes and relays one request.
func (s *session) forward(p *PDU) {
	kind, name, pinned := s.classify(p)
	s.mu.Lock()
	n := 0
	for _, o := range s.ops {
		if o.onMessage == nil {
			n++
		}
	}
	_, dup := s.ops[p.MessageID]
	ident := s.id
	s.mu.Unlock()
	kindLabel := kind.String()
	if n >= s.srv.config().MaxOutstanding {
		if m := s.metrics(); m != nil {
			m.Busy.Inc()
		}
		s.srv.countOp(name, metrics.RouteRefuse, kindLabel)
		s.reply(p, ResultBusy, fmt.Sprintf("spokeproxy: %d operations already in flight on this connection (max_outstanding)", n))
		return
	}
	if dup {
		s.reply(p, ResultProtocolError, "spokeproxy: message ID already in use by an operation in flight")
		return
	}
	if p.Op == OpExtendedRequest && p.ExtOID == OIDStartTxn && s.srv.config().RefuseTransactions {
		s.srv.countOp(name, metrics.RouteRefuse, kindLabel)
		s.reply(p, ResultUnwillingToPerform, errTransactionsOff)
		return
	}
	if kind == routing.KindWrite && ident.kind == identSASL && s.srv.config().ProxyAuthDN == "" {
		s.srv.countOp(name, metrics.RouteRefuse, kindLabel)
		s.reply(p, ResultUnwillingToPerform, "spokeproxy: writes after a SASL bind need proxy_auth in the LDAP configuration; bind with a simple bind to write")
		return
	}

	d := s.decide(kind, pinned)
	var b *backend
	var err error
	switch d.Route {
	case routing.RouteLocal:
		b, err = s.replicaConn()
		if err != nil {
			// The data path found the replica down: tell the site and ask again.
			s.srv.site.ReportReplicaFailure(err)
			d = s.srv.site.Decide(routing.Request{Kind: kind, PinnedHub: pinned})
			if d.Route == routing.RouteHub {
				b, err = s.hubConn(d.Hub)
			} else if d.Route == routing.RouteLocal || d.Route == routing.RouteWaitLocal {
				d.Route = routing.RouteRefuse
				d.Reason = routing.ReasonReplicaDown
			}
		}
	case routing.RouteHub:
		b, err = s.hubConn(d.Hub)
	}
	route := routeLabel(d.Route)
	s.srv.countOp(name, route, kindLabel)
	if d.Route == routing.RouteRefuse {
		s.refuse(p, kind, d, nil)
		return
	}
	if err != nil {
		s.failBeforeSend(p, kind, d, err)
		return
	}

	o := &op{id: p.MessageID, req: p.Op, name: name, kind: kindLabel, route: route, b: b,
		write: kind == routing.KindWrite, start: s.arrived}
	if _, ok := p.Control(OIDTxnSpec); ok || (p.Op == OpExtendedRequest && p.ExtOID == OIDStartTxn) {
		o.noCSN = true
	}
	raw := p.Raw
	var extra []Control
	if b.side == metrics.TargetHub && o.write && !o.noCSN && s.srv.config().Consistency != routing.ConsistencyNone {
		switch p.Op {
		case OpAddRequest, OpModifyRequest, OpModifyDNRequest:
			if _, ok := p.Control(OIDPostRead); ok {
				o.clientPR = true
			} else {
				o.postRead = true
				extra = append(extra, postReadControl())
			}
		default:
			o.needCSN = true
		}
	}
	if b.side == metrics.TargetHub && ident.kind == identSASL {
		if ident.authzID == "" {
			s.reply(p, ResultUnwillingToPerform, "spokeproxy: the SASL identity of this connection is unknown; cannot write on its behalf")
			return
		}
		extra = append(extra, Control{OID: OIDProxiedAuthz, Critical: true, Value: []byte(ident.authzID), HasValue: true})
	}
	if len(extra) > 0 {
		var err error
		if raw, err = p.WithControls(extra...); err != nil {
			// The body is not valid BER: let the hub say so, unchanged.
			s.log.Warn("cannot add controls to a request; relaying it unchanged", "err", err)
			raw, o.postRead = p.Raw, false
			o.needCSN = o.write && !o.noCSN && s.srv.config().Consistency != routing.ConsistencyNone
		}
	}
	s.send(o, raw, p, kind, d)
}

// send registers o on its backend and writes raw to it.
func (s *session) send(o *op, raw []byte, p *PDU, kind routing.Kind, d routing.Decision) {
	s.mu.Lock()
	if o.b.dead || s.closed {
		s.mu.Unlock()
		s.failBeforeSend(p, kind, d, errors.New("connection closed"))
		return
	}
	s.ops[o.id] = o
	s.mu.Unlock()
	if err := o.b.send(raw, s.metrics()); err != nil {
		s.mu.Lock()
		mine := s.ops[o.id] == o
		if mine {
			delete(s.ops, o.id)
		}
		s.mu.Unlock()
		s.goBackendFailed(o.b, err)
		if mine {
			s.failBeforeSend(p, kind, d, err)
		}
	}
}

func (b *backend) send(raw []byte, m *metrics.LDAPFront) error {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	_, err := b.conn.Write(raw)
	if m != nil && b.side == metrics.TargetHub {
		m.WANBytesToHub.Add(float64(len(raw)))
	}
	return err
}

// refuse answers a request the routing core refused.
func (s *session) refuse(p *PDU, kind routing.Kind, d routing.Decision, cause error) {
	if kind == routing.KindWrite || d.Route == routing.RouteHub || isHubReason(d.Reason) {
		e := &routing.HubUnavailableError{Protocol: routing.LDAP, Hub: d.Hub, Reason: d.Reason, Err: cause}
		if kind == routing.KindWrite {
			if m := s.metrics(); m != nil {
				m.WritesRefused.Inc()
			}
			s.reply(p, ResultUnavailable, "spokeproxy: "+e.Error())
			return
		}
		s.reply(p, ResultUnavailable, "spokeproxy: local replica cannot answer and "+e.Error())
		return
	}
	msg := fmt.Sprintf("spokeproxy: local replica %s unavailable (%s)", s.srv.config().ReplicaURL, d.Reason)
	if cause != nil {
		msg += ": " + cause.Error()
	}
	s.reply(p, ResultUnavailable, msg)
}

func isHubReason(r routing.Reason) bool {
	switch r {
	case routing.ReasonHubDown, routing.ReasonNoPrimary, routing.ReasonSplitBrain, routing.ReasonDrill, routing.ReasonStarting:
		return true
	}
	return false
}

// failBeforeSend answers a request whose backend could not be reached: nothing
// was sent, so the outcome is known (not done).
func (s *session) failBeforeSend(p *PDU, kind routing.Kind, d routing.Decision, err error) {
	var be *bindError
	if errors.As(err, &be) {
		s.reply(p, be.code, "spokeproxy: binding to the hub as this connection's identity failed: "+be.diag)
		return
	}
	if d.Route == routing.RouteHub {
		d.Reason = routing.ReasonHubDown
		s.refuse(p, kind, d, err)
		return
	}
	s.refuse(p, kind, routing.Decision{Route: routing.RouteRefuse, Reason: routing.ReasonReplicaDown, Hub: d.Hub}, err)
}

// bindError is a backend's non-success answer to the proxy's own bind.
type bindError struct {
	code int
	diag string
}

func (e *bindError) Error() string { return fmt.Sprintf("bind result %d: %s", e.code, e.diag) }

// replicaConn returns the replica connection, dialling it (bound as the
// session's identity) if there is none.
func (s *session) replicaConn() (*backend, error) {
	s.setupMu.Lock()
	defer s.setupMu.Unlock()
	s.mu.Lock()
	b, ident, gen, closed := s.replica, s.id, s.idGen, s.closed
	s.mu.Unlock()
	if closed {
		return nil, errors.New("session closed")
	}
	if b != nil && b.gen == gen {
		return b, nil
	}
	if b != nil {
		s.retire(b)
	}
	if ident.kind == identSASL {
		return nil, errors.New("replica connection lost after a SASL bind; bind again")
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.srv.config().DialTimeout)
	defer cancel()
	d := &net.Dialer{}
	conn, err := d.DialContext(ctx, "tcp", s.srv.replicaAddr)
	if err != nil {
		return nil, fmt.Errorf("dial replica %s: %w", s.srv.config().ReplicaURL, err)
	}
	conn = rawconn.Wrap(conn)
	if s.srv.replicaLDAPS {
		tc := tls.Client(conn, s.srv.config().ReplicaTLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("TLS to replica %s: %w", s.srv.config().ReplicaURL, err)
		}
		conn = tc
	}
	nb, err := s.setup(ctx, conn, metrics.TargetReplica, s.srv.config().ReplicaURL, ident, gen, false)
	if err != nil {
		return nil, err
	}
	return nb, nil
}

// hubConn returns the hub connection for endpoint, dialling it through the Site
// (keepalive and TCP_USER_TIMEOUT) and binding it as the session's identity if
// there is none, or if it goes to another endpoint (a promotion) or was bound
// as an older identity.
func (s *session) hubConn(endpoint string) (*backend, error) {
	s.setupMu.Lock()
	defer s.setupMu.Unlock()
	s.mu.Lock()
	b, ident, gen, closed := s.hub, s.id, s.idGen, s.closed
	s.mu.Unlock()
	if closed {
		return nil, errors.New("session closed")
	}
	if b != nil && b.gen == gen && b.endpoint == endpoint {
		return b, nil
	}
	if b != nil && b.gen == gen {
		s.retireWhenDone(b) // the hub moved: what is in flight there finishes there
	} else if b != nil {
		s.retire(b)
	}
	return s.dialHub(endpoint, ident, gen)
}

func (s *session) dialHub(endpoint string, ident identity, gen int) (*backend, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.srv.config().DialTimeout)
	defer cancel()
	if w, ok := s.srv.site.(hubWatcher); ok {
		// On a silent link the TCP connect to a middlebox still succeeds and
		// the bind hangs: give up as soon as the Site judges the hub down.
		stop := make(chan struct{})
		watching := make(chan struct{})
		defer func() { close(stop); <-watching }()
		go func() {
			defer close(watching)
			for {
				ch := w.Changes()
				if w.HubUnavailable() != nil {
					cancel()
					return
				}
				select {
				case <-ch:
				case <-stop:
					return
				}
			}
		}()
	}
	conn, err := s.srv.site.DialHub(ctx, endpoint)
	if err != nil {
		s.srv.site.ReportHubFailure(endpoint, err)
		return nil, fmt.Errorf("dial hub: %w", err)
	}
	conn = rawconn.Wrap(conn)
	b, err := s.setup(ctx, conn, metrics.TargetHub, endpoint, ident, gen, s.srv.config().HubStartTLS && !isLDAPS(endpoint))
	if err != nil {
		var be *bindError
		if !errors.As(err, &be) {
			s.srv.site.ReportHubFailure(endpoint, err)
		}
		return nil, err
	}
	return b, nil
}

func isLDAPS(u string) bool { return len(u) >= 8 && u[:8] == "ldaps://" }

// retireWhenDone takes hub connection b out of use because the hub moved (a
// failover, or a reload that removed its candidate) and closes it once the
// operations in flight on it have their answers: an operation the old hub
// is running is not turned into "outcome unknown" by the move. If the old
// hub is really gone, the operations fail as on any lost link.
func (s *session) retireWhenDone(b *backend) {
	s.mu.Lock()
	if s.hub == b {
		s.hub = nil
	}
	b.closing, b.draining = true, true
	idle := !s.busyLocked(b)
	if !idle {
		if s.draining == nil {
			s.draining = map[*backend]struct{}{}
		}
		s.draining[b] = struct{}{}
	}
	s.mu.Unlock()
	if idle {
		_ = b.conn.Close()
	}
}

// busyLocked reports whether an operation is in flight on b.
func (s *session) busyLocked(b *backend) bool {
	for _, o := range s.ops {
		if o.b == b {
			return true
		}
	}
	return false
}

// doneDraining reports, for a draining b, whether its last operation has
// been answered; it then forgets b (the caller closes it).
func (s *session) doneDraining(b *backend) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !b.draining || s.busyLocked(b) {
		return false
	}
	delete(s.draining, b)
	return true
}

// retire closes a backend the session no longer wants (rebind, failover).
func (s *session) retire(b *backend) {
	s.mu.Lock()
	b.closing = true
	if s.hub == b {
		s.hub = nil
	}
	if s.replica == b {
		s.replica = nil
	}
	s.mu.Unlock()
	_ = b.conn.Close()
}

// setup runs StartTLS and the bind for ident synchronously on a fresh
// connection, then installs it and starts its reader.
func (s *session) setup(ctx context.Context, conn net.Conn, side, endpoint string, ident identity, gen int, startTLS bool) (*backend, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	// Cancelling ctx (the session ends, the Site judges the hub down) unblocks
	// the exchanges below at once.
	stopWatch := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stopWatch()
	b := &backend{side: side, endpoint: endpoint, conn: conn, br: bufio.NewReaderSize(conn, 32<<10), gen: gen}
	fail := func(err error) (*backend, error) {
		conn.Close()
		return nil, err
	}
	if startTLS {
		code, diag, err := s.exchange(b, encodeExtended(setupID, OIDStartTLS))
		if err != nil {
			return fail(fmt.Errorf("StartTLS to %s: %w", endpoint, err))
		}
		if code != ResultSuccess {
			return fail(fmt.Errorf("StartTLS to %s refused: %d %s", endpoint, code, diag))
		}
		tc := &tls.Config{}
		if s.srv.config().HubTLS != nil {
			tc = s.srv.config().HubTLS.Clone()
		}
		if tc.ServerName == "" {
			host, _ := ldapHostPort(endpoint)
			tc.ServerName, _, _ = net.SplitHostPort(host)
		}
		tconn := tls.Client(conn, tc)
		if err := tconn.HandshakeContext(ctx); err != nil {
			return fail(fmt.Errorf("StartTLS handshake with %s: %w", endpoint, err))
		}
		b.conn, b.br = tconn, bufio.NewReaderSize(tconn, 32<<10)
	}
	var dn string
	var pw []byte
	switch {
	case ident.kind == identSimple:
		dn, pw = ident.dn, ident.password
	case ident.kind == identSASL && side == metrics.TargetHub:
		dn, pw = s.srv.config().ProxyAuthDN, []byte(s.srv.config().ProxyAuthPassword)
	}
	if dn != "" {
		code, diag, err := s.exchange(b, encodeSimpleBind(setupID, dn, pw))
		if err != nil {
			return fail(fmt.Errorf("bind on %s: %w", endpoint, err))
		}
		if code != ResultSuccess {
			conn.Close()
			return nil, &bindError{code: code, diag: diag}
		}
	}
	if !stopWatch() {
		return fail(fmt.Errorf("setting up %s %s: %w", side, endpoint, context.Cause(ctx)))
	}
	_ = b.conn.SetDeadline(time.Time{})
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fail(errors.New("session closed"))
	}
	if side == metrics.TargetHub {
		s.hub = b
	} else {
		s.replica = b
	}
	s.wg.Add(1)
	s.mu.Unlock()
	if m := s.metrics(); m != nil {
		if side == metrics.TargetHub {
			m.HubConnections.Inc()
		} else {
			m.ReplicaConnections.Inc()
		}
	}
	go s.readBackend(b)
	return b, nil
}

// exchange sends one request with setupID and reads its LDAPResult.
func (s *session) exchange(b *backend, raw []byte) (int, string, error) {
	if err := b.send(raw, s.metrics()); err != nil {
		return 0, "", err
	}
	for {
		resp, err := readFrame(b.br, s.srv.config().MaxResponseSize)
		if err != nil {
			return 0, "", err
		}
		if b.side == metrics.TargetHub {
			if m := s.metrics(); m != nil {
				m.WANBytesFromHub.Add(float64(len(resp)))
			}
		}
		h, err := peekResponse(resp)
		if err != nil {
			return 0, "", err
		}
		if h.MessageID == 0 {
			return 0, "", errors.New("notice of disconnection")
		}
		if h.MessageID != setupID {
			continue
		}
		return resultCode(resp)
	}
}

// readBackend relays one backend's responses to the client until the
// connection ends.
func (s *session) readBackend(b *backend) {
	defer s.wg.Done()
	defer func() {
		if m := s.metrics(); m != nil {
			if b.side == metrics.TargetHub {
				m.HubConnections.Dec()
			} else {
				m.ReplicaConnections.Dec()
			}
		}
	}()
	for {
		// raw is b.br's own buffer when the message fits there: valid until
		// the next nextFrame. Relaying copies it into the client's writer;
		// what outlives this iteration is cloned below.
		raw, err := nextFrame(b.br, s.srv.config().MaxResponseSize)
		if err != nil {
			s.backendFailed(b, err)
			return
		}
		if b.side == metrics.TargetHub {
			if m := s.metrics(); m != nil {
				m.WANBytesFromHub.Add(float64(len(raw)))
			}
		}
		h, err := peekResponse(raw)
		if err != nil {
			s.backendFailed(b, err)
			return
		}
		if h.MessageID == 0 {
			s.backendFailed(b, fmt.Errorf("%s %s: %w", b.side, b.endpoint, errNoticeOfDisconnection))
			return
		}
		if !h.Op.isFinal() && h.MessageID < internalBase {
			s.toClient(raw, !hasCompleteFrame(b.br))
			continue
		}
		s.mu.Lock()
		o := s.ops[h.MessageID]
		if o != nil && o.b != b {
			o = nil
		}
		if o != nil && h.Op.isFinal() {
			delete(s.ops, h.MessageID)
		}
		answered := b.draining && o != nil && h.Op.isFinal()
		s.mu.Unlock()
		switch {
		case o == nil:
			s.toClient(raw, !hasCompleteFrame(b.br))
		case o.onMessage != nil:
			o.onMessage(raw, h)
		case !h.Op.isFinal():
			s.toClient(raw, !hasCompleteFrame(b.br))
		case o.bind != nil || o.write:
			// Bind responses may be held (WhoAmI after SASL) and write
			// responses wait for a contextCSN read: keep a copy.
			s.finish(o, bytes.Clone(raw))
		default:
			s.finish(o, raw)
		}
		// Checked after finish: finishing a write may read the hub's
		// contextCSN on this connection first.
		if answered && s.doneDraining(b) {
			_ = b.conn.Close()
		}
	}
}

// hasCompleteFrame reports whether br already holds a whole next message, so
// the reader can write on without flushing.
func hasCompleteFrame(br *bufio.Reader) bool {
	n := br.Buffered()
	if n < 2 {
		return false
	}
	buf, _ := br.Peek(n)
	_, start, end, err := tlv(buf, 0)
	return err == nil && end >= start
}

// dropHub closes the hub connection because the Site judged the hub
// unusable: operations in flight on it are answered as for a lost link (80
// for writes), without reporting back to the Site what it already knows.
func (s *session) dropHub(why error) {
	s.mu.Lock()
	b := s.hub
	if b != nil {
		b.closing = true
	}
	s.mu.Unlock()
	if b != nil {
		s.backendFailed(b, why)
	}
}

// goBackendFailed runs backendFailed on its own goroutine (its callers hold
// locks or are the backend's reader), counted in s.wg so that it never
// outlives the session. Callers are the session goroutine, before it
// waits, or a reader goroutine, which keeps the count above zero.
func (s *session) goBackendFailed(b *backend, err error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.backendFailed(b, err)
	}()
}

// backendFailed handles the end of a backend connection: operations in flight
// on it are answered (80 for writes on the hub: outcome unknown), and a
// failure the session did not cause is reported to the Site.
func (s *session) backendFailed(b *backend, err error) {
	s.mu.Lock()
	if b.dead {
		s.mu.Unlock()
		return
	}
	b.dead = true
	intentional := b.closing || s.closed
	if s.hub == b {
		s.hub = nil
	}
	delete(s.draining, b)
	if s.replica == b {
		s.replica = nil
	}
	var lost []*op
	for id, o := range s.ops {
		if o.b == b {
			lost = append(lost, o)
			delete(s.ops, id)
		}
	}
	closed := s.closed
	s.mu.Unlock()
	_ = b.conn.Close()
	suspector, canSuspect := s.srv.site.(hubSuspector)
	switch {
	case intentional:
	case b.side == metrics.TargetHub && len(lost) == 0 && canSuspect && (errors.Is(err, io.EOF) || errors.Is(err, errNoticeOfDisconnection)):
		// The hub closed an idle connection: its idletimeout, or a cut
		// link. A probe now tells which, without making the site
		// read-only for an idle timeout.
		s.log.Info("hub closed an idle connection; probing it", "endpoint", b.endpoint, "err", err)
		suspector.SuspectHub(b.endpoint, err)
	case b.side == metrics.TargetHub:
		// An EOF on the hub connection is how a cut link shows on the data
		// path first (well before probes): report it at once.
		s.log.Warn("hub connection lost", "endpoint", b.endpoint, "err", err, "in_flight", len(lost))
		s.srv.site.ReportHubFailure(b.endpoint, err)
	case errors.Is(err, io.EOF) && len(lost) == 0:
		// The local replica closed an idle connection (idletimeout, restart):
		// no failure to report. If it is really gone, the next dial says so.
		s.log.Info("replica closed an idle connection", "endpoint", b.endpoint)
	default:
		s.log.Warn("replica connection lost", "endpoint", b.endpoint, "err", err, "in_flight", len(lost))
		s.srv.site.ReportReplicaFailure(err)
	}
	if closed {
		return
	}
	for _, o := range lost {
		switch {
		case o.onFail != nil:
			o.onFail()
		case o.onMessage != nil:
		case o.write && b.side == metrics.TargetHub:
			if m := s.metrics(); m != nil {
				m.OutcomeUnknown.Inc()
			}
			s.toClient(encodeResultFor(o, ResultOther, fmt.Sprintf(
				"spokeproxy: connection to hub %s lost while the operation was in flight: outcome unknown", b.endpoint)), true)
		default:
			s.toClient(encodeResultFor(o, ResultUnavailable, fmt.Sprintf(
				"spokeproxy: connection to %s %s lost: %v", b.side, b.endpoint, err)), true)
		}
	}
}

func encodeResultFor(o *op, code int, diag string) []byte {
	respOp, ok := o.req.responseOp()
	if !ok {
		return nil
	}
	return encodeResult(o.id, respOp, code, "", diag, "")
}

// finish handles the final response of a client operation.
func (s *session) finish(o *op, raw []byte) {
	if m := s.metrics(); m != nil {
		m.RequestDuration(o.route).Observe(time.Since(o.start).Seconds())
	}
	if o.bind != nil {
		s.bindResponse(o, raw)
		return
	}
	if !o.write || o.noCSN || s.srv.config().Consistency == routing.ConsistencyNone {
		s.toClient(raw, true)
		return
	}
	out := raw
	var pos routing.Position
	if o.postRead || o.clientPR {
		stripped, csns, err := splitPostRead(raw, o.clientPR)
		if err != nil {
			s.log.Warn("cannot read the post-read entry of a write response", "err", err)
		} else {
			out = stripped
			if set, err := routing.ParseCSNSet(csns); err == nil && len(set) > 0 {
				pos = set
			}
		}
	}
	code, _, err := resultCode(out)
	if err != nil || code != ResultSuccess {
		s.toClient(out, true)
		return
	}
	if pos != nil {
		s.advance(pos)
		s.ack(out)
		return
	}
	// Delete, Password Modify, End Transaction, extended writes, or a
	// post-read without entryCSN: read the hub's contextCSN now, then answer.
	s.readHubCSN(o.b, func(p routing.Position, lost bool) {
		if p != nil {
			s.advance(p)
		} else if lost {
			s.mu.Lock()
			s.posUnknown = true
			s.mu.Unlock()
		}
		s.ack(out)
	})
}

// advance raises the session's read-your-writes position.
func (s *session) advance(p routing.Position) {
	s.mu.Lock()
	s.pos = routing.Later(s.pos, p)
	s.mu.Unlock()
}

// ack sends a successful write's response; in site mode only once the local
// replica has the write (bounded by WaitTimeout).
func (s *session) ack(raw []byte) {
	if s.srv.config().Consistency == routing.ConsistencySite {
		s.mu.Lock()
		pos := s.pos
		s.mu.Unlock()
		if pos != nil {
			ctx, cancel := context.WithTimeout(s.ctx, s.srv.config().WaitTimeout)
			t0 := time.Now()
			if err := s.srv.site.WaitFor(ctx, pos); err != nil {
				s.log.Warn("write acknowledged before the replica applied it", "err", err)
			}
			cancel()
			if m := s.metrics(); m != nil {
				m.CausalWait.Observe(time.Since(t0).Seconds())
			}
		}
	}
	s.toClient(raw, true)
}

// readHubCSN reads the suffix's contextCSN on hub connection b with an internal
// search and calls done with it (nil if it could not be read; lost when the
// connection died first).
func (s *session) readHubCSN(b *backend, done func(pos routing.Position, lost bool)) {
	var vals []string
	finished := false
	o := &op{req: OpSearchRequest, b: b, start: time.Now()}
	o.onMessage = func(raw []byte, h ResponseHeader) {
		switch h.Op {
		case OpSearchResultEntry:
			v, err := entryAttrFromMessage(raw, "contextCSN")
			if err == nil {
				vals = append(vals, v...)
			}
		case OpSearchResultDone:
			finished = true
			set, err := routing.ParseCSNSet(vals)
			if err != nil || len(set) == 0 {
				done(nil, false)
				return
			}
			done(set, false)
		}
	}
	o.onFail = func() {
		if !finished {
			done(nil, true)
		}
	}
	s.sendInternal(o, func(id int64) []byte { return encodeBaseSearch(id, s.srv.config().BaseDN, "contextCSN") })
}

// sendInternal sends a request of the proxy's own on o.b under the next
// internal message ID (in [internalBase, setupID), wrapping around), encoded
// by encode. o.onMessage gets its responses; o.onFail runs instead when the
// connection is already dead, or when it dies first.
func (s *session) sendInternal(o *op, encode func(id int64) []byte) {
	s.mu.Lock()
	if o.b.dead {
		s.mu.Unlock()
		o.onFail()
		return
	}
	o.id = s.nextInternalID()
	s.ops[o.id] = o
	s.mu.Unlock()
	if err := o.b.send(encode(o.id), s.metrics()); err != nil {
		s.goBackendFailed(o.b, err)
	}
}

// nextInternalID allocates a message ID for a request of the proxy's own,
// skipping IDs in flight (a client may use the range too). s.mu must be held.
func (s *session) nextInternalID() int64 {
	for {
		s.nextInternal++
		if s.nextInternal >= setupID {
			s.nextInternal = internalBase
		}
		if _, used := s.ops[s.nextInternal]; !used {
			return s.nextInternal
		}
	}
}
