package ldapfront

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
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
