package ldapfront

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spokeproxy/spokeproxy/metrics"
	"github.com/spokeproxy/spokeproxy/routing"
)

// fakeSite is a scripted routing Site: the real pure Decide over a snapshot the
// test sets, with failure reports recorded.
type fakeSite struct {
	mu             sync.Mutex
	hubUp          bool
	replicaUp      bool
	hub            string // ldap:// URL of the fake hub
	hubFailures    []string
	replicaReports int
	waits          int
	// dialGate, when set, holds every hub dial until it is closed (a slow WAN).
	dialGate chan struct{}
}

func (s *fakeSite) Decide(r routing.Request) routing.Decision {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := routing.Snapshot{Protocol: routing.LDAP,
		Hub:     routing.HubView{Up: s.hubUp, Endpoint: s.hub},
		Replica: routing.ReplicaView{Up: s.replicaUp, Position: routing.CSNSet{}}}
	if !s.hubUp {
		snap.Hub.Reason = routing.ReasonHubDown
	}
	return routing.Decide(snap, r, routing.DefaultPolicy())
}

func (s *fakeSite) ReportHubFailure(endpoint string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hubFailures = append(s.hubFailures, endpoint)
	s.hubUp = false
}

func (s *fakeSite) ReportReplicaFailure(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replicaReports++
	s.replicaUp = false
}

func (s *fakeSite) WaitFor(ctx context.Context, pos routing.Position) error {
	s.mu.Lock()
	s.waits++
	s.mu.Unlock()
	return nil
}

func (s *fakeSite) DialHub(ctx context.Context, endpoint string) (net.Conn, error) {
	s.mu.Lock()
	gate := s.dialGate
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	addr, _ := ldapHostPort(endpoint)
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

func (s *fakeSite) failures() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.hubFailures...)
}

// fakeLDAP is a scripted LDAP server: handle answers each request; the default
// handler binds everyone, returns one entry per search and succeeds every write.
type fakeLDAP struct {
	t      *testing.T
	ln     net.Listener
	handle func(c *fakeConn, p *PDU)

	mu    sync.Mutex
	seen  []*PDU // every request received, in order
	conns []net.Conn
	wg    sync.WaitGroup
	once  sync.Once
}

// stop closes the listener and every connection, as a crashed server would.
func (f *fakeLDAP) stop() {
	f.once.Do(func() {
		f.ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
}

type fakeConn struct {
	net.Conn
	mu sync.Mutex
}

func (c *fakeConn) send(raw []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _ = c.Write(raw)
}

func startFake(t *testing.T, handle func(c *fakeConn, p *PDU)) *fakeLDAP {
	t.Helper()
	return startFakeTLS(t, handle, nil)
}

// startFakeTLS is startFake with StartTLS support when tc is set.
func startFakeTLS(t *testing.T, handle func(c *fakeConn, p *PDU), tc *tls.Config) *fakeLDAP {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeLDAP{t: t, ln: ln, handle: handle}
	if f.handle == nil {
		f.handle = defaultHandler
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.conns = append(f.conns, c)
			f.mu.Unlock()
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer c.Close()
				fc := &fakeConn{Conn: c}
				br := bufio.NewReader(c)
				for {
					p, err := ReadPDU(br, 1<<20)
					if err != nil {
						return
					}
					f.mu.Lock()
					f.seen = append(f.seen, p)
					f.mu.Unlock()
					if p.Op == OpUnbindRequest {
						return
					}
					if tc != nil && p.Op == OpExtendedRequest && p.ExtOID == OIDStartTLS {
						fc.send(encodeResult(p.MessageID, OpExtendedResponse, 0, "", "", OIDStartTLS))
						tconn := tls.Server(c, tc)
						if err := tconn.Handshake(); err != nil {
							return
						}
						fc = &fakeConn{Conn: tconn}
						br = bufio.NewReader(tconn)
						continue
					}
					f.handle(fc, p)
				}
			}()
		}
	}()
	t.Cleanup(f.stop)
	return f
}

func (f *fakeLDAP) url() string { return "ldap://" + f.ln.Addr().String() }

// requests returns the requests of kind op seen so far.
func (f *fakeLDAP) requests(op Op) []*PDU {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*PDU
	for _, p := range f.seen {
		if p.Op == op {
			out = append(out, p)
		}
	}
	return out
}

func defaultHandler(c *fakeConn, p *PDU) {
	switch p.Op {
	case OpSearchRequest:
		if searchBase(p) == "" { // root DSE
			c.send(entryMsg(p.MessageID, "", "supportedControl", OIDSyncRequest))
		} else {
			c.send(entryMsg(p.MessageID, "cn=x", "cn", "x"))
		}
		c.send(encodeResult(p.MessageID, OpSearchResultDone, 0, "", "", ""))
	case OpAbandonRequest:
	case OpExtendedRequest:
		if p.ExtOID == OIDWhoAmI {
			c.send(extendedResponse(p.MessageID, "dn:uid=sasl,dc=example,dc=org"))
			return
		}
		c.send(EncodeResult(p, 0, ""))
	default:
		if raw := EncodeResult(p, 0, ""); raw != nil {
			c.send(raw)
		}
	}
}

func entryMsg(id int64, dn, attr string, vals ...string) []byte {
	e := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ber.Tag(OpSearchResultEntry), nil, "entry")
	e.AppendChild(str(dn))
	attrs := ber.NewSequence("attrs")
	a := ber.NewSequence("attr")
	a.AppendChild(str(attr))
	set := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSet, nil, "vals")
	for _, v := range vals {
		set.AppendChild(str(v))
	}
	a.AppendChild(set)
	attrs.AppendChild(a)
	e.AppendChild(attrs)
	return envelope(id, e)
}

func extendedResponse(id int64, value string) []byte {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ber.Tag(OpExtendedResponse), nil, "ext")
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(0), "code"))
	op.AppendChild(str(""))
	op.AppendChild(str(""))
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 11, value, "value"))
	return envelope(id, op)
}

// rig is a Server in front of a fake replica and a fake hub.
type rig struct {
	srv     *Server
	site    *fakeSite
	replica *fakeLDAP
	hub     *fakeLDAP
	m       *metrics.LDAPFront
	addr    string
	cancel  context.CancelFunc
	done    chan error
	once    sync.Once
}

func startRig(t *testing.T, replicaH, hubH func(*fakeConn, *PDU), mutate func(*Config)) *rig {
	t.Helper()
	return startRigTLS(t, replicaH, hubH, nil, mutate)
}

// startRigTLS is startRig with a hub that offers StartTLS with hubTLS.
func startRigTLS(t *testing.T, replicaH, hubH func(*fakeConn, *PDU), hubTLS *tls.Config, mutate func(*Config)) *rig {
	t.Helper()
	r := &rig{replica: startFake(t, replicaH), hub: startFakeTLS(t, hubH, hubTLS)}
	r.site = &fakeSite{hubUp: true, replicaUp: true, hub: r.hub.url()}
	cfg := Config{ReplicaURL: r.replica.url(), BaseDN: "dc=example,dc=org"}
	if mutate != nil {
		mutate(&cfg)
	}
	r.m = metrics.NewLDAP(prometheus.NewRegistry(), nil)
	r.srv = New(cfg, r.site, r.m, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan error, 1)
	go func() { r.done <- r.srv.Serve(ctx, ln) }()
	t.Cleanup(r.stop)
	return r
}

func (r *rig) stop() {
	r.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.srv.Shutdown(ctx); err != nil {
			r.replica.t.Errorf("Shutdown: %v", err)
		}
		r.cancel()
		<-r.done
	})
}

// rawClient speaks raw PDUs to the proxy.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func (r *rig) client(t *testing.T) *rawClient { t.Helper(); return dialRaw(t, r.addr) }

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, c: c, br: bufio.NewReader(c)}
}

func (c *rawClient) send(raw []byte) {
	c.t.Helper()
	if _, err := c.c.Write(raw); err != nil {
		c.t.Fatalf("client write: %v", err)
	}
}

// next reads the next message from the proxy.
func (c *rawClient) next() *PDU {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	p, err := ReadPDU(c.br, 1<<20)
	if err != nil {
		c.t.Fatalf("client read: %v", err)
	}
	return p
}

// result reads messages until the final one for id and returns its code and diagnostic.
func (c *rawClient) result(id int64) (int, string) {
	c.t.Helper()
	for {
		p := c.next()
		if p.MessageID != id || !p.Op.isFinal() {
			continue
		}
		code, diag, err := resultCode(p.Raw)
		if err != nil {
			c.t.Fatal(err)
		}
		return code, diag
	}
}

// expectClosed checks the proxy closes the connection (after any messages).
func (c *rawClient) expectClosed() []*PDU {
	c.t.Helper()
	var got []*PDU
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		p, err := ReadPDU(c.br, 1<<20)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatalf("connection not closed; got %d messages", len(got))
			}
			return got
		}
		got = append(got, p)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// searchBase returns a SearchRequest's baseObject.
func searchBase(p *PDU) string {
	pkt, err := p.decoded()
	if err != nil || len(pkt.Children[1].Children) == 0 {
		return "<malformed>"
	}
	return pkt.Children[1].Children[0].Data.String()
}
