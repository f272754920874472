package ldapfront

import (
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRoutingByOp(t *testing.T) {
	r := startRig(t, nil, nil, nil)
	c := r.client(t)
	c.send(simpleBind(1, "uid=alice,dc=example,dc=org", "pw"))
	if code, _ := c.result(1); code != 0 {
		t.Fatalf("bind: %d", code)
	}
	c.send(searchReq(2, "dc=example,dc=org"))
	if code, _ := c.result(2); code != 0 {
		t.Fatalf("search: %d", code)
	}
	c.send(extended(3, OIDWhoAmI, nil))
	c.result(3)
	c.send(modifyReq(4, "cn=x"))
	c.result(4)
	c.send(deleteReq(5, "cn=y"))
	c.result(5)
	c.send(extended(6, "1.2.3.4.5", nil)) // unknown extended op
	c.result(6)
	c.send(searchReq(7, "dc=example,dc=org", Control{OID: OIDDontUseCopy, Critical: true}))
	c.result(7)

	// Replica: the bind, the search, WhoAmI. Hub: the proxy's bind as alice,
	// the writes, the unknown extension and the Don't Use Copy search.
	if got := r.replica.requests(OpSearchRequest); len(got) != 1 || got[0].MessageID != 2 {
		t.Errorf("replica searches: %d", len(got))
	}
	if got := r.replica.requests(OpExtendedRequest); len(got) != 1 || got[0].ExtOID != OIDWhoAmI {
		t.Errorf("replica extended: %v", got)
	}
	hb := r.hub.requests(OpBindRequest)
	if len(hb) != 1 || hb[0].Bind.DN != "uid=alice,dc=example,dc=org" || string(hb[0].Bind.Password) != "pw" {
		t.Fatalf("hub binds: %v", hb)
	}
	mods := r.hub.requests(OpModifyRequest)
	if len(mods) != 1 || mods[0].MessageID != 4 {
		t.Fatalf("hub modifies: %v", mods)
	}
	if _, ok := mods[0].Control(OIDPostRead); !ok {
		t.Errorf("forwarded modify lacks the Post-Read control")
	}
	if got := r.hub.requests(OpDelRequest); len(got) != 1 || got[0].MessageID != 5 {
		t.Errorf("hub deletes: %v", got)
	}
	// After the modify (whose response had no post-read entry), the delete and
	// the unknown extension, the proxy read the hub's contextCSN (base searches
	// with its own message IDs); the Don't Use Copy search ran there too.
	internal, dontUseCopy := 0, 0
	for _, p := range r.hub.requests(OpSearchRequest) {
		switch {
		case p.MessageID >= internalBase:
			internal++
		case p.MessageID == 7:
			dontUseCopy++
		}
	}
	if internal != 3 || dontUseCopy != 1 {
		t.Errorf("hub searches: %d contextCSN reads, %d Don't Use Copy searches", internal, dontUseCopy)
	}
	if got := r.hub.requests(OpExtendedRequest); len(got) != 1 || got[0].ExtOID != "1.2.3.4.5" {
		t.Errorf("hub extended: %v", got)
	}
}

func TestSyncSearchFollowsReplicaRootDSE(t *testing.T) {
	noSync := func(c *fakeConn, p *PDU) {
		if p.Op == OpSearchRequest && searchBase(p) == "" {
			c.send(entryMsg(p.MessageID, "", "supportedControl", "1.2.840.113556.1.4.319"))
			c.send(encodeResult(p.MessageID, OpSearchResultDone, 0, "", "", ""))
			return
		}
		defaultHandler(c, p)
	}
	syncCtl := Control{OID: OIDSyncRequest, Critical: true, Value: []byte{0x30, 0x03, 0x0a, 0x01, 0x01}, HasValue: true}
	for _, tc := range []struct {
		name      string
		replica   func(*fakeConn, *PDU)
		onReplica bool
	}{{"replica lists the control", nil, true}, {"replica lacks it", noSync, false}} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRig(t, tc.replica, nil, nil)
			c := r.client(t)
			c.send(searchReq(5, "dc=example,dc=org", syncCtl))
			c.result(5)
			onReplica := false
			for _, p := range r.replica.requests(OpSearchRequest) {
				if p.MessageID == 5 {
					onReplica = true
				}
			}
			if onReplica != tc.onReplica || len(r.hub.requests(OpSearchRequest)) == 0 == !tc.onReplica {
				t.Fatalf("sync search on replica = %v, want %v", onReplica, tc.onReplica)
			}
		})
	}
}

func TestHubDownRefusesWritesConnectionStaysUsable(t *testing.T) {
	r := startRig(t, nil, nil, nil)
	r.site.mu.Lock()
	r.site.hubUp = false
	r.site.mu.Unlock()
	c := r.client(t)
	c.send(modifyReq(1, "cn=x"))
	code, diag := c.result(1)
	if code != ResultUnavailable || !strings.Contains(diag, r.hub.url()) || !strings.Contains(diag, "read-only") {
		t.Fatalf("write with hub down: %d %q", code, diag)
	}
	c.send(extended(2, OIDPasswordModify, nil))
	if code, _ := c.result(2); code != ResultUnavailable {
		t.Fatalf("password modify with hub down: %d", code)
	}
	c.send(searchReq(3, "dc=example,dc=org"))
	if code, _ := c.result(3); code != 0 {
		t.Fatalf("read with hub down: %d", code)
	}
	if got := testutil.ToFloat64(r.m.WritesRefused); got != 2 {
		t.Fatalf("writes refused metric = %v, want 2", got)
	}
	if len(r.hub.requests(OpModifyRequest)) != 0 {
		t.Fatal("a refused write reached the hub")
	}
}

func TestWriteInFlightWhenHubConnectionBreaks(t *testing.T) {
	var once sync.Once
	hub := func(c *fakeConn, p *PDU) {
		if p.Op == OpModifyRequest {
			once.Do(func() { c.Close() }) // the link breaks after the write arrived
			return
		}
		defaultHandler(c, p)
	}
	r := startRig(t, nil, hub, nil)
	c := r.client(t)
	c.send(modifyReq(1, "cn=x"))
	code, diag := c.result(1)
	if code != ResultOther || !strings.Contains(diag, "outcome unknown") {
		t.Fatalf("write in flight on a broken link: %d %q", code, diag)
	}
	waitUntil(t, "hub failure report", func() bool { return len(r.site.failures()) == 1 })
	if got := r.site.failures()[0]; got != r.hub.url() {
		t.Fatalf("reported %q", got)
	}
	// The site now says the hub is down: the next write gets 52 at once, reads work.
	c.send(modifyReq(2, "cn=x"))
	if code, _ := c.result(2); code != ResultUnavailable {
		t.Fatalf("next write: %d", code)
	}
	c.send(searchReq(3, "dc=example,dc=org"))
	if code, _ := c.result(3); code != 0 {
		t.Fatalf("read after the hub broke: %d", code)
	}
	if got := testutil.ToFloat64(r.m.OutcomeUnknown); got != 1 {
		t.Fatalf("outcome unknown metric = %v", got)
	}
}

func TestBusyBeyondMaxOutstanding(t *testing.T) {
	hold := make(chan struct{})
	var held []*PDU
	var mu sync.Mutex
	hub := func(c *fakeConn, p *PDU) {
		if p.Op == OpModifyRequest {
			mu.Lock()
			held = append(held, p)
			mu.Unlock()
			go func() { <-hold; c.send(EncodeResult(p, 0, "")) }()
			return
		}
		defaultHandler(c, p)
	}
	r := startRig(t, nil, hub, func(c *Config) { c.MaxOutstanding = 2; c.Consistency = 2 /* none */ })
	c := r.client(t)
	c.send(modifyReq(1, "cn=a"))
	c.send(modifyReq(2, "cn=b"))
	waitUntil(t, "two writes at the hub", func() bool { mu.Lock(); defer mu.Unlock(); return len(held) == 2 })
	c.send(modifyReq(3, "cn=c"))
	if code, _ := c.result(3); code != ResultBusy {
		t.Fatalf("third op: %d, want busy", code)
	}
	close(hold)
	// The two held writes finish, in either order.
	done := map[int64]bool{}
	for len(done) < 2 {
		if p := c.next(); p.Op == OpModifyResponse {
			done[p.MessageID] = true
		}
	}
	if !done[1] || !done[2] {
		t.Fatalf("finished: %v", done)
	}
	c.send(modifyReq(4, "cn=d"))
	if code, _ := c.result(4); code != 0 {
		t.Fatalf("after the others finished: %d", code)
	}
}

func TestMalformedClientGetsNoticeOthersUndisturbed(t *testing.T) {
	r := startRig(t, nil, nil, func(c *Config) { c.MaxPDUSize = 1024 })
	good := r.client(t)
	good.send(searchReq(1, "dc=example,dc=org"))
	good.result(1)
	for name, garbage := range map[string][]byte{
		"indefinite length": {0x30, 0x80, 0x02, 0x01, 0x01},
		"too large":         {0x30, 0x84, 0x00, 0x10, 0x00, 0x00},
		"not a sequence":    []byte("GET / HTTP/1.1\r\n\r\n"),
	} {
		t.Run(name, func(t *testing.T) {
			bad := r.client(t)
			bad.send(garbage)
			got := bad.expectClosed()
			if len(got) != 1 || got[0].MessageID != 0 || got[0].ExtOID != OIDNoticeOfDisconnection {
				t.Fatalf("want one Notice of Disconnection, got %+v", got)
			}
			if code, _, _ := resultCode(got[0].Raw); code != ResultProtocolError {
				t.Fatalf("notice code %d", code)
			}
		})
	}
	good.send(searchReq(2, "dc=example,dc=org"))
	if code, _ := good.result(2); code != 0 {
		t.Fatalf("other client disturbed: %d", code)
	}
	if got := testutil.ToFloat64(r.m.ProtocolErrors.WithLabelValues("too_large")); got != 1 {
		t.Fatalf("too_large metric = %v", got)
	}
}

func TestHubOnlyBind(t *testing.T) {
	replica := func(c *fakeConn, p *PDU) {
		if p.Op == OpBindRequest && p.Bind.DN == "uid=new,dc=example,dc=org" {
			c.send(EncodeResult(p, ResultInvalidCredentials, ""))
			return
		}
		defaultHandler(c, p)
	}
	r := startRig(t, replica, nil, nil)
	c := r.client(t)
	c.send(simpleBind(1, "uid=new,dc=example,dc=org", "pw"))
	if code, _ := c.result(1); code != 0 {
		t.Fatalf("bind known only to the hub: %d", code)
	}
	if got := testutil.ToFloat64(r.m.HubOnlyBinds); got != 1 {
		t.Fatalf("hub-only binds = %v", got)
	}
	// The session is served from the hub.
	c.send(searchReq(2, "dc=example,dc=org"))
	c.result(2)
	if len(r.hub.requests(OpSearchRequest)) != 1 {
		t.Fatal("a hub-only session's read did not go to the hub")
	}
	// While the hub is down, a bind the replica rejects stays rejected.
	r.site.mu.Lock()
	r.site.hubUp = false
	r.site.mu.Unlock()
	c2 := r.client(t)
	c2.send(simpleBind(1, "uid=new,dc=example,dc=org", "pw"))
	if code, _ := c2.result(1); code != ResultInvalidCredentials {
		t.Fatalf("bind with hub down: %d", code)
	}
}

// Retrying a bind on the hub dials it; a slow dial must not hold up the
// replica's other responses to the same client.
func TestHubOnlyBindDialDoesNotStallReplicaResponses(t *testing.T) {
	var held *PDU
	replica := func(c *fakeConn, p *PDU) {
		switch {
		case p.Op == OpSearchRequest && searchBase(p) == "ou=slow,dc=example,dc=org":
			held = p // answered right after the bind's 49
		case p.Op == OpBindRequest && p.Bind.DN == "uid=new,dc=example,dc=org":
			c.send(EncodeResult(p, ResultInvalidCredentials, ""))
			if held != nil {
				defaultHandler(c, held)
			}
		default:
			defaultHandler(c, p)
		}
	}
	r := startRig(t, replica, nil, nil)
	gate := make(chan struct{})
	r.site.mu.Lock()
	r.site.dialGate = gate
	r.site.mu.Unlock()
	c := r.client(t)
	c.send(searchReq(1, "ou=slow,dc=example,dc=org"))
	waitUntil(t, "the search at the replica", func() bool { return len(r.replica.requests(OpSearchRequest)) == 1 })
	c.send(simpleBind(2, "uid=new,dc=example,dc=org", "pw"))
	// The hub dial for the bind's retry hangs; the search's answer, which the
	// replica sent after the bind's 49, arrives all the same.
	if code, _ := c.result(1); code != 0 {
		t.Fatalf("search: %d", code)
	}
	close(gate)
	if code, _ := c.result(2); code != 0 {
		t.Fatalf("bind known only to the hub: %d", code)
	}
	if got := testutil.ToFloat64(r.m.HubOnlyBinds); got != 1 {
		t.Fatalf("hub-only binds = %v", got)
	}
}

func TestNewBindResetsHubIdentity(t *testing.T) {
	r := startRig(t, nil, nil, nil)
	c := r.client(t)
	c.send(simpleBind(1, "uid=alice,dc=example,dc=org", "a"))
	c.result(1)
	c.send(modifyReq(2, "cn=x"))
	c.result(2)
	c.send(simpleBind(3, "uid=bob,dc=example,dc=org", "b"))
	c.result(3)
	c.send(modifyReq(4, "cn=x"))
	c.result(4)
	c.send(simpleBind(5, "", ""))
	c.result(5)
	c.send(modifyReq(6, "cn=x"))
	c.result(6)
	binds := r.hub.requests(OpBindRequest)
	if len(binds) != 2 || binds[0].Bind.DN != "uid=alice,dc=example,dc=org" || binds[1].Bind.DN != "uid=bob,dc=example,dc=org" {
		var dns []string
		for _, b := range binds {
			dns = append(dns, b.Bind.DN)
		}
		t.Fatalf("hub binds %q, want alice then bob and none for anonymous", dns)
	}
}

func TestSASLWrites(t *testing.T) {
	t.Run("refused without proxy_auth", func(t *testing.T) {
		r := startRig(t, nil, nil, nil)
		c := r.client(t)
		c.send(saslBind(1, "EXTERNAL"))
		if code, _ := c.result(1); code != 0 {
			t.Fatal(code)
		}
		c.send(modifyReq(2, "cn=x"))
		code, diag := c.result(2)
		if code != ResultUnwillingToPerform || !strings.Contains(diag, "proxy_auth") {
			t.Fatalf("SASL write without proxy_auth: %d %q", code, diag)
		}
		c.send(searchReq(3, "dc=example,dc=org"))
		if code, _ := c.result(3); code != 0 {
			t.Fatalf("SASL read: %d", code)
		}
	})
	t.Run("proxied authorization", func(t *testing.T) {
		r := startRig(t, nil, nil, func(c *Config) { c.ProxyAuthDN, c.ProxyAuthPassword = "cn=proxy,dc=example,dc=org", "ppw" })
		c := r.client(t)
		c.send(saslBind(1, "EXTERNAL"))
		if code, _ := c.result(1); code != 0 {
			t.Fatal(code)
		}
		c.send(modifyReq(2, "cn=x"))
		if code, _ := c.result(2); code != 0 {
			t.Fatal(code)
		}
		binds := r.hub.requests(OpBindRequest)
		if len(binds) != 1 || binds[0].Bind.DN != "cn=proxy,dc=example,dc=org" {
			t.Fatalf("hub binds: %+v", binds)
		}
		mods := r.hub.requests(OpModifyRequest)
		ctl, ok := mods[0].Control(OIDProxiedAuthz)
		if !ok || !ctl.Critical || string(ctl.Value) != "dn:uid=sasl,dc=example,dc=org" {
			t.Fatalf("proxied authz control: %+v %v", ctl, ok)
		}
	})
}

func TestAbandonAndCancelGoWhereTheTargetRuns(t *testing.T) {
	slow := func(c *fakeConn, p *PDU) {
		if p.Op == OpSearchRequest || p.Op == OpModifyRequest {
			return // never answers: the op stays in flight
		}
		if p.Op == OpExtendedRequest && p.ExtOID == OIDCancel {
			c.send(EncodeResult(p, 118, "canceled")) // RFC 3909 canceled
			return
		}
		defaultHandler(c, p)
	}
	r := startRig(t, slow, slow, func(c *Config) { c.Consistency = 2 })
	c := r.client(t)
	c.send(searchReq(1, "dc=example,dc=org"))
	c.send(modifyReq(2, "cn=x"))
	waitUntil(t, "both ops at their backends", func() bool {
		return len(r.replica.requests(OpSearchRequest)) == 1 && len(r.hub.requests(OpModifyRequest)) == 1
	})
	c.send(abandon(3, 1))
	c.send(extended(4, OIDCancel, cancelValue(2)))
	if code, _ := c.result(4); code != 118 {
		t.Fatalf("cancel: %d", code)
	}
	waitUntil(t, "abandon at the replica", func() bool { return len(r.replica.requests(OpAbandonRequest)) == 1 })
	if got := r.replica.requests(OpAbandonRequest)[0].TargetID; got != 1 {
		t.Fatalf("abandon target %d", got)
	}
	if len(r.hub.requests(OpAbandonRequest)) != 0 {
		t.Fatal("abandon went to the hub")
	}
	if got := r.hub.requests(OpExtendedRequest); len(got) != 1 || got[0].TargetID != 2 {
		t.Fatalf("cancel at the hub: %+v", got)
	}
	c.send(extended(5, OIDCancel, cancelValue(99)))
	if code, _ := c.result(5); code != ResultNoSuchOperation {
		t.Fatalf("cancel of nothing: %d", code)
	}
}

func TestShutdownSendsNoticeAndNoGoroutineOutlivesConnections(t *testing.T) {
	before := runtime.NumGoroutine()
	r := startRig(t, nil, nil, nil)
	var clients []*ldap.Conn
	for range 5 {
		c, err := ldap.DialURL("ldap://" + r.addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Bind("uid=alice,dc=example,dc=org", "pw"); err != nil {
			t.Fatal(err)
		}
		m := ldap.NewModifyRequest("cn=x", nil)
		m.Replace("sn", []string{"y"})
		if err := c.Modify(m); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	// Two clients leave on their own; their sessions must be gone at once.
	clients[0].Close()
	clients[1].Unbind()
	raw := r.client(t)
	raw.send(searchReq(1, "dc=example,dc=org"))
	raw.result(1)
	r.stop()
	got := raw.expectClosed()
	if len(got) != 1 || got[0].ExtOID != OIDNoticeOfDisconnection {
		t.Fatalf("shutdown: want a Notice of Disconnection, got %+v", got)
	}
	if code, _, _ := resultCode(got[0].Raw); code != ResultUnavailable {
		t.Fatalf("shutdown notice code %d", code)
	}
	for _, c := range clients[2:] {
		c.Close()
	}
	// Fakes still run (stopped at cleanup); everything the proxy started must be gone.
	waitUntil(t, "proxy goroutines to end", func() bool {
		return runtime.NumGoroutine() <= before+fakeGoroutines(r)
	})
}

// fakeGoroutines is how many goroutines the rig's fake servers run: one accept
// loop each, plus one per connection still open to them (none after shutdown).
func fakeGoroutines(r *rig) int { return 2 }

func TestMaxConnections(t *testing.T) {
	r := startRig(t, nil, nil, func(c *Config) { c.MaxConnections = 1 })
	first := r.client(t)
	first.send(searchReq(1, "dc=example,dc=org"))
	first.result(1)
	second := r.client(t)
	got := second.expectClosed()
	if len(got) != 1 || got[0].ExtOID != OIDNoticeOfDisconnection {
		t.Fatalf("over max_connections: %+v", got)
	}
	first.send(searchReq(2, "dc=example,dc=org"))
	if code, _ := first.result(2); code != 0 {
		t.Fatal(code)
	}
}

func TestIdleTimeoutClosesOnlyIdleConnections(t *testing.T) {
	hold := func(c *fakeConn, p *PDU) {
		if p.Op == OpSearchRequest && searchBase(p) == "ou=persist" {
			c.send(entryMsg(p.MessageID, "cn=x", "cn", "x")) // a persistent search: entries, no end
			return
		}
		defaultHandler(c, p)
	}
	r := startRig(t, hold, nil, func(c *Config) { c.IdleTimeout = 50 * time.Millisecond })
	idle := r.client(t)
	busy := r.client(t)
	busy.send(searchReq(1, "ou=persist"))
	busy.next()
	idle.expectClosed()
	time.Sleep(100 * time.Millisecond)
	busy.send(searchReq(2, "dc=example,dc=org"))
	if code, _ := busy.result(2); code != 0 {
		t.Fatal(code)
	}
}

func TestReplicaDownReadsGoToTheHub(t *testing.T) {
	r := startRig(t, nil, nil, nil)
	c := r.client(t)
	c.send(simpleBind(1, "uid=alice,dc=example,dc=org", "pw"))
	c.result(1)
	r.replica.stop()
	// The next read finds the replica gone (its redial fails), reports it and
	// goes to the hub.
	waitUntil(t, "the session to see its replica connection end", func() bool {
		r.srv.mu.Lock()
		defer r.srv.mu.Unlock()
		for sess := range r.srv.sessions {
			sess.mu.Lock()
			gone := sess.replica == nil
			sess.mu.Unlock()
			if !gone {
				return false
			}
		}
		return true
	})
	c.send(searchReq(2, "dc=example,dc=org"))
	if code, _ := c.result(2); code != 0 {
		t.Fatalf("read with the replica down: %d", code)
	}
	r.site.mu.Lock()
	reports := r.site.replicaReports
	r.site.mu.Unlock()
	if reports == 0 {
		t.Fatal("the replica's failure was not reported to the Site")
	}
	if got := r.hub.requests(OpSearchRequest); len(got) != 1 || got[0].MessageID != 2 {
		t.Fatalf("hub searches: %+v", got)
	}
	if b := r.hub.requests(OpBindRequest); len(b) != 1 || b[0].Bind.DN != "uid=alice,dc=example,dc=org" {
		t.Fatalf("the hub connection was not bound as the client: %+v", b)
	}
	// Both down: 52.
	r.site.mu.Lock()
	r.site.hubUp = false
	r.site.mu.Unlock()
	c.send(searchReq(3, "dc=example,dc=org"))
	if code, diag := c.result(3); code != ResultUnavailable {
		t.Fatalf("read with replica and hub down: %d %q", code, diag)
	}
	// A new client can still connect (and is told why it cannot read).
	c2 := r.client(t)
	c2.send(simpleBind(1, "uid=alice,dc=example,dc=org", "pw"))
	if code, _ := c2.result(1); code != ResultUnavailable {
		t.Fatalf("bind with replica and hub down: %d", code)
	}
}

func TestShutdownWithAClientThatDoesNotRead(t *testing.T) {
	big := strings.Repeat("x", 4096)
	flood := func(c *fakeConn, p *PDU) {
		if p.Op == OpSearchRequest && searchBase(p) == "ou=flood" {
			for range 5000 { // 20 MB: far beyond the socket buffers
				c.send(entryMsg(p.MessageID, "cn=x", "description", big))
			}
			c.send(encodeResult(p.MessageID, OpSearchResultDone, 0, "", "", ""))
			return
		}
		defaultHandler(c, p)
	}
	r := startRig(t, flood, nil, nil)
	c := r.client(t)
	c.send(searchReq(1, "ou=flood"))
	time.Sleep(200 * time.Millisecond) // let the relay fill the client's socket and block
	start := time.Now()
	r.stop() // fails the test if Shutdown misses its 5 s deadline
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Shutdown took %v with a stuck client", took)
	}
}

func TestUnbindClosesBothSides(t *testing.T) {
	r := startRig(t, nil, nil, nil)
	c := r.client(t)
	c.send(simpleBind(1, "uid=alice,dc=example,dc=org", "pw"))
	c.result(1)
	c.send(modifyReq(2, "cn=x"))
	c.result(2)
	c.send(unbind(3))
	if got := c.expectClosed(); len(got) != 0 {
		t.Fatalf("messages after unbind: %+v", got)
	}
	waitUntil(t, "unbind at both servers", func() bool {
		return len(r.replica.requests(OpUnbindRequest)) == 1 && len(r.hub.requests(OpUnbindRequest)) == 1
	})
	// The servers closing their side after an Unbind is no failure.
	time.Sleep(50 * time.Millisecond)
	r.site.mu.Lock()
	defer r.site.mu.Unlock()
	if r.site.replicaReports != 0 || len(r.site.hubFailures) != 0 {
		t.Fatalf("an Unbind was reported as a failure: replica %d, hub %v", r.site.replicaReports, r.site.hubFailures)
	}
}

// A client may use message IDs in the proxy's internal range: the proxy's own
// requests (here the contextCSN read after a write) skip IDs in flight, so the
// client's operation keeps its answer.
func TestInternalIDsSkipClientIDsInFlight(t *testing.T) {
	clientID := int64(internalBase + 1) // the proxy's first internal ID
	hold := make(chan struct{})
	hub := func(c *fakeConn, p *PDU) {
		if p.Op == OpSearchRequest && p.MessageID == clientID {
			go func() {
				<-hold
				defaultHandler(c, p)
			}()
			return
		}
		defaultHandler(c, p)
	}
	r := startRig(t, nil, hub, nil)
	c := r.client(t)
	c.send(searchReq(clientID, "dc=example,dc=org", Control{OID: OIDDontUseCopy, Critical: true}))
	waitUntil(t, "the client's search at the hub", func() bool { return len(r.hub.requests(OpSearchRequest)) == 1 })
	c.send(deleteReq(2, "cn=y"))
	if code, _ := c.result(2); code != 0 {
		t.Fatalf("delete: %d", code)
	}
	for _, p := range r.hub.requests(OpSearchRequest)[1:] {
		if p.MessageID == clientID {
			t.Fatalf("the proxy's contextCSN read reused message ID %d of the client's search in flight", clientID)
		}
	}
	close(hold)
	if code, _ := c.result(clientID); code != 0 {
		t.Fatalf("client search: %d", code)
	}
}
