package ldapfront

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/spokeproxy/spokeproxy/lab"
)

func (s *Server) sessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// A client that sends a large search and never reads the answer is closed
// after WriteTimeout: its replica connection is released, and other clients
// are served meanwhile.
func TestClientThatStopsReadingIsClosedAfterWriteTimeout(t *testing.T) {
	big := strings.Repeat("x", 4096)
	replicaDone := make(chan struct{})
	flood := func(c *fakeConn, p *PDU) {
		if p.Op == OpSearchRequest && searchBase(p) == "ou=flood" {
			defer close(replicaDone)
			for range 5000 { // 20 MB: far beyond the socket buffers
				if _, err := c.Write(entryMsg(p.MessageID, "cn=x", "description", big)); err != nil {
					return // the proxy closed the replica connection
				}
			}
			c.send(encodeResult(p.MessageID, OpSearchResultDone, 0, "", "", ""))
			return
		}
		defaultHandler(c, p)
	}
	const writeTimeout = 500 * time.Millisecond
	r := startRig(t, flood, nil, func(c *Config) { c.WriteTimeout = writeTimeout })

	slow := r.client(t)
	slow.send(searchReq(1, "ou=flood"))
	start := time.Now()

	// Another client is served while the slow one is stuck.
	other := r.client(t)
	other.send(searchReq(1, "dc=example,dc=org"))
	if code, _ := other.result(1); code != 0 {
		t.Fatalf("other client's search: %d", code)
	}

	select {
	case <-replicaDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the replica connection of a client that stopped reading is still being written to after 10s")
	}
	t.Logf("replica connection released %v after the search was sent (write_timeout %v)", time.Since(start).Round(time.Millisecond), writeTimeout)
	waitUntil(t, "the slow client's session to end", func() bool { return r.srv.sessionCount() == 1 })
	if got := testutil.ToFloat64(r.m.SlowClients); got != 1 {
		t.Errorf("slow_clients_total = %v, want 1", got)
	}
	// The slow client's connection is closed: after what the kernel had
	// buffered, it reads EOF.
	_ = slow.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, err := readFrame(slow.br, 1<<20); err != nil {
			if !errors.Is(err, io.EOF) && !IsMalformed(err) { // EOF, or cut mid-message
				t.Fatalf("slow client: want the connection closed, got %v", err)
			}
			break
		}
	}

	// The other client is still served.
	other.send(searchReq(2, "dc=example,dc=org"))
	if code, _ := other.result(2); code != 0 {
		t.Fatalf("other client's second search: %d", code)
	}
}

// A client that reads slowly but steadily is not cut off: each write that
// makes progress gets a fresh WriteTimeout.
func TestSlowButReadingClientIsNotClosed(t *testing.T) {
	big := strings.Repeat("y", 4096)
	many := func(c *fakeConn, p *PDU) {
		if p.Op == OpSearchRequest && searchBase(p) == "ou=many" {
			for range 2000 { // 8 MB: the socket buffers fill while the client pauses
				c.send(entryMsg(p.MessageID, "cn=y", "description", big))
			}
			c.send(encodeResult(p.MessageID, OpSearchResultDone, 0, "", "", ""))
			return
		}
		defaultHandler(c, p)
	}
	const writeTimeout = time.Second
	r := startRig(t, many, nil, func(c *Config) { c.WriteTimeout = writeTimeout })
	c := r.client(t)
	// A small receive buffer (no autotuning) makes the proxy's writes block
	// whenever the client pauses.
	if err := c.c.(*net.TCPConn).SetReadBuffer(128 << 10); err != nil {
		t.Fatal(err)
	}
	c.send(searchReq(1, "ou=many"))
	entries := 0
	start := time.Now()
	_ = c.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		raw, err := readFrame(c.br, 1<<20) // light: the reader's own speed is not under test
		if err != nil {
			t.Fatalf("after %d entries: %v", entries, err)
		}
		h, err := peekResponse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if h.Op == OpSearchResultEntry {
			entries++
			if entries%200 == 0 {
				time.Sleep(150 * time.Millisecond) // slow, but never writeTimeout without reading
			}
			continue
		}
		code, _, err := resultCode(raw)
		if err != nil || code != 0 {
			t.Fatalf("search done: %d %v", code, err)
		}
		break
	}
	t.Logf("read %d entries in %v", entries, time.Since(start).Round(time.Millisecond))
	if entries != 2000 {
		t.Fatalf("got %d entries, want 2000", entries)
	}
	if took := time.Since(start); took < writeTimeout {
		t.Fatalf("the reader was not slow (%v): the test shows nothing", took)
	}
	if got := testutil.ToFloat64(r.m.SlowClients); got != 0 {
		t.Errorf("slow_clients_total = %v, want 0", got)
	}
}

// TestLabClientThatStopsReading: against the real consumer, a client that
// sends a large subtree search and never reads is closed after WriteTimeout,
// its replica connection is released, and another client is served meanwhile.
func TestLabClientThatStopsReading(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	const writeTimeout = 500 * time.Millisecond
	f := startFront(t, l, func(c *Config) { c.WriteTimeout = writeTimeout })

	// 8 entries of 1 MB under their own OU, written on the hub: 8 MB of
	// answer, far beyond the socket buffers of a client that never reads.
	admin := f.dial(t, lab.AdminDN, l.AdminPassword())
	ou := uniqueName("bulk")
	base := "ou=" + ou + "," + lab.BaseDN
	a := ldap.NewAddRequest(base, nil)
	a.Attribute("objectClass", []string{"organizationalUnit"})
	a.Attribute("ou", []string{ou})
	if err := admin.Add(a); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("z", 1<<20)
	var last string
	for i := range 8 {
		p := ldap.NewAddRequest(fmt.Sprintf("cn=big%d,%s", i, base), nil)
		p.Attribute("objectClass", []string{"person"})
		p.Attribute("cn", []string{fmt.Sprintf("big%d", i)})
		p.Attribute("sn", []string{"Big"})
		p.Attribute("description", []string{big})
		if err := admin.Add(p); err != nil {
			t.Fatalf("add a 1 MB entry: %v", err)
		}
		last = p.DN
	}
	searchOne(t, admin, last, "cn") // read-your-writes: the consumer has them all
	replicaConns := testutil.ToFloat64(f.m.ReplicaConnections)

	slow := dialRaw(t, f.addr)
	slow.send(simpleBind(1, lab.UserDN, lab.UserPassword))
	if code, _ := slow.result(1); code != 0 {
		t.Fatalf("bind: %d", code)
	}
	if got := testutil.ToFloat64(f.m.ReplicaConnections); got != replicaConns+1 {
		t.Fatalf("replica connections with the slow client: %v, want %v", got, replicaConns+1)
	}
	sr := searchReq(2, base)
	// searchReq is a base-scope search: make it a subtree one (scope is the
	// first ENUMERATED after the base DN).
	i := bytes.Index(sr, []byte(base)) + len(base)
	if sr[i] != 0x0a || sr[i+1] != 1 || sr[i+2] != 0 {
		t.Fatalf("unexpected search encoding % x", sr[i:i+3])
	}
	sr[i+2] = 2
	slow.send(sr)
	start := time.Now()

	other := f.dial(t, lab.UserDN, lab.UserPassword)
	searchOne(t, other, lab.UserDN, "cn")

	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(f.m.SlowClients) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("a client that stopped reading an 8 MB search was not closed within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("closed %v after the search was sent (write_timeout %v)", time.Since(start).Round(time.Millisecond), writeTimeout)
	// Left: the ones before the slow client, and the other client's.
	waitUntilTB(t, "the slow client's replica connection to close", func() bool {
		return testutil.ToFloat64(f.m.ReplicaConnections) == replicaConns+1
	})
	searchOne(t, other, lab.UserDN, "cn")
}

func waitUntilTB(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
