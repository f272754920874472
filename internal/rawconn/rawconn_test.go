package rawconn

import (
	"bytes"
	"errors"
	"golang.org/x/net/nettest"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection, the first
// wrapped by Wrap.
func tcpPair(t *testing.T) (fast, peer net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p := <-accepted
	if p == nil {
		t.Fatal("accept failed")
	}
	fast = Wrap(c)
	if _, ok := fast.(*conn); !ok {
		t.Fatalf("Wrap of a TCP connection is %T", fast)
	}
	t.Cleanup(func() { fast.Close(); p.Close() })
	return fast, p
}

func TestRawConn(t *testing.T) {
	t.Run("large write while the peer reads (EAGAIN path)", func(t *testing.T) {
		fast, peer := tcpPair(t)
		want := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB, beyond the socket buffers
		got := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(peer)
			got <- b
		}()
		n, err := fast.Write(want)
		if err != nil || n != len(want) {
			t.Fatalf("Write: %d, %v", n, err)
		}
		fast.Close()
		if b := <-got; !bytes.Equal(b, want) {
			t.Fatalf("peer read %d bytes, want %d identical", len(b), len(want))
		}
	})
	t.Run("read what arrives, then EOF", func(t *testing.T) {
		fast, peer := tcpPair(t)
		go func() {
			time.Sleep(20 * time.Millisecond) // the read waits in the poller first
			_, _ = peer.Write([]byte("hello"))
			peer.Close()
		}()
		b, err := io.ReadAll(fast)
		if err != nil || string(b) != "hello" {
			t.Fatalf("ReadAll: %q, %v", b, err)
		}
		if n, err := fast.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("Read after EOF: %d, %v", n, err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		fast, _ := tcpPair(t)
		_ = fast.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := fast.Read(make([]byte, 1))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read past the deadline: %v", err)
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("deadline error %v is not a net.Error timeout", err)
		}
	})
	t.Run("close unblocks a read", func(t *testing.T) {
		fast, _ := tcpPair(t)
		done := make(chan error, 1)
		go func() {
			_, err := fast.Read(make([]byte, 1))
			done <- err
		}()
		time.Sleep(20 * time.Millisecond)
		fast.Close()
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Read after Close: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not unblock Read")
		}
	})
	t.Run("write to a closed peer fails", func(t *testing.T) {
		fast, peer := tcpPair(t)
		peer.Close()
		var err error
		for i := 0; i < 100 && err == nil; i++ {
			_, err = fast.Write(make([]byte, 64<<10))
			time.Sleep(time.Millisecond)
		}
		if err == nil {
			t.Fatal("writes to a closed peer kept succeeding")
		}
	})
	t.Run("WriteRead: request, answer", func(t *testing.T) {
		fast, peer := tcpPair(t)
		go func() { // an echo server that answers each request at once
			buf := make([]byte, 64<<10)
			for {
				n, err := peer.Read(buf)
				if err != nil {
					return
				}
				if _, err := peer.Write(buf[:n]); err != nil {
					return
				}
			}
		}()
		wr := fast.(WriteReader)
		buf := make([]byte, 16)
		for i := 0; i < 200; i++ {
			n, err := wr.WriteRead([]byte("ping"), buf)
			if err != nil || string(buf[:n]) != "ping" {
				t.Fatalf("WriteRead %d: %q, %v", i, buf[:n], err)
			}
		}
	})
	t.Run("WriteRead: what the peer sent before the request comes first", func(t *testing.T) {
		fast, peer := tcpPair(t)
		if _, err := peer.Write([]byte("early;")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // in fast's socket before the request
		go func() {
			buf := make([]byte, 4)
			if _, err := io.ReadFull(peer, buf); err == nil {
				_, _ = peer.Write([]byte("answer"))
			}
		}()
		got := make([]byte, 0, 64)
		buf := make([]byte, 64)
		n, err := fast.(WriteReader).WriteRead([]byte("ping"), buf)
		for err == nil && len(got)+n < len("early;answer") {
			got = append(got, buf[:n]...)
			n, err = fast.Read(buf)
		}
		got = append(got, buf[:n]...)
		if err != nil || string(got) != "early;answer" {
			t.Fatalf("read %q, %v", got, err)
		}
	})
	t.Run("WriteRead: a request beyond the socket buffers", func(t *testing.T) {
		fast, peer := tcpPair(t)
		req := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB: the write meets EAGAIN
		go func() {
			if _, err := io.ReadFull(peer, make([]byte, len(req))); err == nil {
				_, _ = peer.Write([]byte("done"))
			}
		}()
		buf := make([]byte, 16)
		n, err := fast.(WriteReader).WriteRead(req, buf)
		if err != nil || string(buf[:n]) != "done" {
			t.Fatalf("WriteRead: %q, %v", buf[:n], err)
		}
	})
	t.Run("WriteRead: deadline while waiting for the answer", func(t *testing.T) {
		fast, peer := tcpPair(t)
		_ = fast.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := fast.(WriteReader).WriteRead([]byte("ping"), make([]byte, 4))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("WriteRead past the deadline: %v", err)
		}
		buf := make([]byte, 4) // the request went out all the same
		_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("peer read %q, %v", buf, err)
		}
	})
	t.Run("not TCP: unchanged", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		if Wrap(a) != a {
			t.Fatal("Wrap wrapped a pipe")
		}
	})
}

// TestConnConformance runs the standard net.Conn conformance suite
// (deadlines, Close unblocking IO, concurrent use) over wrapped loopback
// TCP connections.
func TestConnConformance(t *testing.T) {
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		ln, err := nettest.NewLocalListener("tcp")
		if err != nil {
			return nil, nil, nil, err
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, _ := ln.Accept()
			accepted <- c
		}()
		d, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return nil, nil, nil, err
		}
		a := <-accepted
		if a == nil {
			d.Close()
			return nil, nil, nil, io.ErrUnexpectedEOF
		}
		c1, c2 = Wrap(d), Wrap(a)
		if _, ok := c1.(*conn); !ok {
			return nil, nil, nil, errors.New("Wrap did not wrap a TCP connection")
		}
		return c1, c2, func() { c1.Close(); c2.Close() }, nil
	})
}

// TestNoAllocations: a relay makes one Read and one Write per message on
// each connection; neither may allocate (a closure per call did).
func TestNoAllocations(t *testing.T) {
	fast, peer := tcpPair(t)
	msg := make([]byte, 64)
	buf := make([]byte, 64)
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := fast.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(peer, buf); err != nil {
			t.Fatal(err)
		}
		if _, err := peer.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(fast, buf); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per Write and Read, want 0", allocs)
	}
}

// TestTryWrite: TryWrite returns what the socket took, without waiting,
// once the peer stops reading; what it wrote arrives in order.
func TestTryWrite(t *testing.T) {
	fast, peer := tcpPair(t)
	tw, ok := fast.(TryWriter)
	if !ok {
		t.Fatalf("%T is not a TryWriter", fast)
	}
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB, beyond the socket buffers
	start := time.Now()
	n, err := tw.TryWrite(want)
	if err != nil || n <= 0 || n >= len(want) {
		t.Fatalf("TryWrite of 4 MiB to a peer that does not read: %d, %v; want a partial write", n, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("TryWrite took %v: it waited", d)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	if _, err := fast.Write(want[n:]); err != nil {
		t.Fatal(err)
	}
	fast.Close()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("peer read %d bytes, want the %d written, in order", len(b), len(want))
	}
}

func TestArmedReader(t *testing.T) {
	armed := func(t *testing.T) (*ArmedReader, net.Conn, net.Conn) {
		fast, peer := tcpPair(t)
		r := NewArmedReader(fast)
		if r == nil {
			t.Fatal("no ArmedReader for a wrapped TCP connection")
		}
		t.Cleanup(r.Stop)
		return r, fast, peer
	}
	readWithin := func(t *testing.T, r io.Reader, p []byte) (int, error) {
		t.Helper()
		type res struct {
			n   int
			err error
		}
		ch := make(chan res, 1)
		go func() { n, err := r.Read(p); ch <- res{n, err} }()
		select {
		case x := <-ch:
			return x.n, x.err
		case <-time.After(5 * time.Second):
			t.Fatal("Read hung: bytes that arrived were missed")
			return 0, nil
		}
	}
	t.Run("request-answer turns: one read system call each", func(t *testing.T) {
		r, fast, peer := armed(t)
		go func() { // a client that sends its next request once answered
			buf := make([]byte, 4)
			for i := 0; i < 100; i++ {
				if _, err := peer.Write([]byte("req.")); err != nil {
					return
				}
				if _, err := io.ReadFull(peer, buf); err != nil {
					return
				}
			}
			peer.Close()
		}()
		buf := make([]byte, 64)
		turns := 0
		for {
			n, err := readWithin(t, r, buf)
			if err == io.EOF {
				break
			}
			if err != nil || string(buf[:n]) != "req." {
				t.Fatalf("turn %d: %q, %v", turns, buf[:n], err)
			}
			turns++
			time.Sleep(100 * time.Microsecond) // the request is served
			if _, err := fast.Write([]byte("ans.")); err != nil {
				t.Fatal(err)
			}
		}
		if turns != 100 {
			t.Fatalf("%d turns, want 100", turns)
		}
		// One read per request and one for the EOF, hardly any that found
		// the socket empty (a plain Read tries once before each wait: about
		// twice as many).
		if r.reads > turns+1+turns/10 {
			t.Fatalf("%d read system calls for %d turns, want about %d", r.reads, turns, turns+1)
		}
	})
	t.Run("bytes that arrive between reads are not missed", func(t *testing.T) {
		r, _, peer := armed(t)
		buf := make([]byte, 64)
		for i := 0; i < 50; i++ {
			if _, err := peer.Write([]byte("a")); err != nil {
				t.Fatal(err)
			}
			if n, err := readWithin(t, r, buf); err != nil || string(buf[:n]) != "a" {
				t.Fatalf("read %q, %v", buf[:n], err)
			}
			// The socket is empty now; more comes while the reader is
			// busy, before its next Read.
			if _, err := peer.Write([]byte("b")); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond)
			if n, err := readWithin(t, r, buf); err != nil || string(buf[:n]) != "b" {
				t.Fatalf("read %q, %v", buf[:n], err)
			}
		}
	})
	t.Run("a full buffer is read on without waiting", func(t *testing.T) {
		r, _, peer := armed(t)
		if _, err := peer.Write([]byte("0123456789")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		got := make([]byte, 0, 10)
		buf := make([]byte, 4)
		for len(got) < 10 {
			n, err := readWithin(t, r, buf)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, buf[:n]...)
		}
		if string(got) != "0123456789" {
			t.Fatalf("read %q", got)
		}
	})
	t.Run("deadline, then reading again", func(t *testing.T) {
		r, fast, peer := armed(t)
		_ = fast.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := readWithin(t, r, make([]byte, 4)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read past the deadline: %v", err)
		}
		_ = fast.SetReadDeadline(time.Time{})
		if _, err := peer.Write([]byte("late")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if n, err := readWithin(t, r, buf); err != nil || string(buf[:n]) != "late" {
			t.Fatalf("read after the deadline was lifted: %q, %v", buf[:n], err)
		}
	})
	t.Run("Close unblocks a waiting read; Stop then closes the socket", func(t *testing.T) {
		r, fast, peer := armed(t)
		if _, err := peer.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := readWithin(t, r, buf); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { _, err := r.Read(buf); done <- err }()
		time.Sleep(20 * time.Millisecond)
		fast.Close()
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Read after Close: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not unblock the read")
		}
		r.Stop()
		_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := peer.Read(buf); err != io.EOF {
			t.Fatalf("peer read after Close and Stop: %v, want EOF", err)
		}
	})
	t.Run("Stop between reads releases the connection", func(t *testing.T) {
		r, fast, peer := armed(t)
		if _, err := peer.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := readWithin(t, r, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
		r.Stop()
		fast.Close()
		_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := peer.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("peer read after Stop and Close: %v, want EOF", err)
		}
	})
	t.Run("not a wrapped connection: none", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		if NewArmedReader(a) != nil {
			t.Fatal("an ArmedReader for a pipe")
		}
	})
}
