package ldapfront

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"time"

	"github.com/spokeproxy/spokeproxy/metrics"
	"github.com/spokeproxy/spokeproxy/routing"
)

// bind handles a client's BindRequest. The session's identity resets: the hub
// connection (if any) is closed, to be re-bound when next needed. A simple bind
// is checked on the replica; SASL steps are relayed to the replica.
func (s *session) bind(p *PDU) {
	s.mu.Lock()
	hub := s.hub
	s.id = identity{}
	s.idGen++
	gen := s.idGen
	if s.replica != nil {
		// The bind itself runs on the replica connection: from its response on,
		// that connection is bound as whatever the bind made it.
		s.replica.gen = gen
	}
	s.mu.Unlock()
	if hub != nil {
		s.retire(hub)
	}
	d := s.srv.site.Decide(routing.Request{Kind: routing.KindRead})
	var b *backend
	var err error
	switch d.Route {
	case routing.RouteLocal, routing.RouteWaitLocal:
		b, err = s.replicaConn()
		if err != nil {
			s.srv.site.ReportReplicaFailure(err)
			d = s.srv.site.Decide(routing.Request{Kind: routing.KindRead})
			if d.Route == routing.RouteHub {
				b, err = s.hubConn(d.Hub)
			}
		}
	case routing.RouteHub:
		b, err = s.hubConn(d.Hub)
	}
	route := routeLabel(d.Route)
	if b == nil && err == nil {
		route = metrics.RouteRefuse
	}
	s.srv.countOp("bind", route, "bind")
	if b == nil {
		if err == nil {
			err = fmt.Errorf("%s", d.Reason)
		}
		s.reply(p, ResultUnavailable, fmt.Sprintf("spokeproxy: cannot check the bind: local replica and hub unavailable: %v", err))
		return
	}
	o := &op{id: p.MessageID, req: p.Op, name: "bind", kind: "bind", route: route, b: b, bind: p.Bind, start: s.arrived}
	s.send(o, p.Raw, p, routing.KindRead, d)
}

// bindResponse handles the result of a relayed bind: it sets the session's
// identity, or, for a simple bind the replica rejected with 49, tries the hub
// (an identity only the hub knows yet).
func (s *session) bindResponse(o *op, raw []byte) {
	code, _, err := resultCode(raw)
	if err != nil {
		s.toClient(raw, true)
		return
	}
	req := o.bind
	switch {
	case code == ResultSuccess:
		id := identity{}
		switch {
		case !req.Simple:
			id = identity{kind: identSASL, dn: req.DN}
		case req.DN != "" && len(req.Password) > 0:
			id = identity{kind: identSimple, dn: req.DN, password: req.Password}
		}
		id.hubOnly = o.b.side == metrics.TargetHub && o.triedHub
		if id.hubOnly {
			if m := s.metrics(); m != nil {
				m.HubOnlyBinds.Inc()
			}
		}
		s.mu.Lock()
		s.id = id
		gen := s.idGen
		o.b.gen = gen
		s.mu.Unlock()
		if id.kind == identSASL && s.srv.config().ProxyAuthDN != "" {
			s.learnAuthzID(o.b, gen, raw)
			return
		}
	case code == ResultInvalidCredentials && req.Simple && req.DN != "" && !o.triedHub && o.b.side == metrics.TargetReplica:
		d := s.srv.site.Decide(routing.Request{Kind: routing.KindWrite})
		if d.Route != routing.RouteHub {
			break
		}
		// Dialling the hub costs WAN round trips (a silent link: up to
		// DialTimeout), and this is the replica's reader, which relays every
		// other answer the replica has for this client: dial on another
		// goroutine. The client waits for this bind's answer, which is still
		// exactly one: the hub's, or the replica's 49 if the hub fails.
		s.mu.Lock()
		gen := s.idGen
		s.mu.Unlock()
		s.wg.Add(1) // the reader's own count keeps the session waiting meanwhile
		go func() {
			defer s.wg.Done()
			if !s.bindOnHub(o, d.Hub, gen) {
				s.toClient(raw, true)
			}
		}()
		return
	}
	s.toClient(raw, true)
}

// bindOnHub retries a bind the replica rejected on a fresh, anonymous hub
// connection to endpoint, for identity generation gen (the bind's). It
// reports whether it took over the answer.
func (s *session) bindOnHub(o *op, endpoint string, gen int) bool {
	s.setupMu.Lock()
	b, err := s.dialHub(endpoint, identity{}, gen)
	s.setupMu.Unlock()
	if err != nil {
		return false
	}
	raw := encodeSimpleBind(o.id, o.bind.DN, o.bind.Password)
	retry := &op{id: o.id, req: OpBindRequest, name: "bind", kind: "bind", route: metrics.RouteHub, b: b,
		bind: o.bind, triedHub: true, start: o.start}
	s.mu.Lock()
	if b.dead || s.closed || s.idGen != gen { // gen: the client did not wait and bound again
		s.mu.Unlock()
		return false
	}
	s.ops[o.id] = retry
	s.mu.Unlock()
	if err := b.send(raw, s.metrics()); err != nil {
		s.mu.Lock()
		mine := s.ops[o.id] == retry
		delete(s.ops, o.id)
		s.mu.Unlock()
		s.goBackendFailed(b, err)
		return !mine // if the failure handler already answered, we are done
	}
	return true
}

// learnAuthzID asks the replica who the SASL-bound client is (WhoAmI), for
// the Proxied Authorization control on its writes, then sends the held bind
// response.
func (s *session) learnAuthzID(b *backend, gen int, bindResp []byte) {
	o := &op{req: OpExtendedRequest, b: b, start: time.Now()}
	o.onMessage = func(raw []byte, h ResponseHeader) {
		if h.Op == OpExtendedResponse {
			if v, err := extendedResponseValue(raw); err == nil {
				s.mu.Lock()
				if s.idGen == gen {
					s.id.authzID = v
				}
				s.mu.Unlock()
			}
			s.toClient(bindResp, true)
		}
	}
	o.onFail = func() { s.toClient(bindResp, true) }
	s.sendInternal(o, func(id int64) []byte { return encodeExtended(id, OIDWhoAmI) })
}

// abandon forwards an Abandon to the connection running its target; an
// abandoned operation gets no response, so it stops counting as in flight.
func (s *session) abandon(p *PDU) {
	s.mu.Lock()
	o := s.ops[p.TargetID]
	if o != nil && o.onMessage == nil {
		delete(s.ops, p.TargetID)
	} else {
		o = nil
	}
	s.mu.Unlock()
	route := metrics.RouteLocal
	if o != nil && o.b.side == metrics.TargetHub {
		route = metrics.RouteHub
	}
	s.srv.countOp("abandon", route, "other")
	if o == nil {
		return
	}
	if err := o.b.send(p.Raw, s.metrics()); err != nil {
		s.goBackendFailed(o.b, err)
	}
}

// cancelOp forwards a Cancel to the connection running its target.
func (s *session) cancelOp(p *PDU) {
	s.mu.Lock()
	t := s.ops[p.TargetID]
	if t != nil && t.onMessage != nil {
		t = nil
	}
	s.mu.Unlock()
	if t == nil {
		s.reply(p, ResultNoSuchOperation, "spokeproxy: no operation with that message ID in flight")
		return
	}
	route := metrics.RouteLocal
	if t.b.side == metrics.TargetHub {
		route = metrics.RouteHub
	}
	s.srv.countOp("cancel", route, "other")
	o := &op{id: p.MessageID, req: p.Op, name: "cancel", kind: "other", route: route, b: t.b, start: s.arrived}
	s.send(o, p.Raw, p, routing.KindRead, routing.Decision{Route: routing.RouteLocal})
}

// startTLS terminates StartTLS from the client. It reports false if the
// session must end.
func (s *session) startTLS(p *PDU) bool {
	if s.srv.config().TLS == nil {
		s.toClient(encodeResult(p.MessageID, OpExtendedResponse, ResultProtocolError, "", "spokeproxy: StartTLS is not configured", ""), true)
		return true
	}
	s.mu.Lock()
	busy := len(s.ops) > 0
	s.mu.Unlock()
	if busy || s.isTLS {
		s.toClient(encodeResult(p.MessageID, OpExtendedResponse, 1, "", "spokeproxy: StartTLS needs a connection without TLS and nothing in flight", ""), true)
		return true
	}
	if s.br.Buffered() > 0 {
		s.disconnect(ResultProtocolError, "data after StartTLS request before the TLS handshake")
		return false
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if _, err := s.bw.Write(encodeResult(p.MessageID, OpExtendedResponse, ResultSuccess, "", "", OIDStartTLS)); err != nil {
		return false
	}
	if err := s.bw.Flush(); err != nil {
		return false
	}
	tc := tls.Server(s.client, s.srv.config().TLS)
	_ = tc.SetDeadline(time.Now().Add(s.srv.config().DialTimeout))
	if err := tc.Handshake(); err != nil {
		s.log.Warn("StartTLS handshake failed", "err", err)
		return false
	}
	_ = tc.SetDeadline(time.Time{})
	s.client, s.isTLS = tc, true
	s.br = bufio.NewReaderSize(tc, 16<<10)
	return true
}
