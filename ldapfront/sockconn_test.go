package ldapfront

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection, the first wrapped
// by fastConn.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
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
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	fast := fastConn(c)
	if _, ok := fast.(*sockConn); !ok {
		t.Fatalf("fastConn of a TCP connection is %T", fast)
	}
	t.Cleanup(func() { fast.Close(); peer.Close() })
	return fast, peer
}

func TestSockConnMovesBytesBothWays(t *testing.T) {
	fast, peer := tcpPair(t)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB: the socket buffers fill, writes wait
	done := make(chan error, 1)
	go func() {
		_, err := fast.Write(big)
		done <- err
	}()
	got := make([]byte, len(big))
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("bytes differ after the write")
	}
	go func() { _, _ = peer.Write(big) }()
	back := make([]byte, len(big))
	if _, err := io.ReadFull(fast, back); err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(back, big) {
		t.Fatal("bytes differ after the read")
	}
	peer.Close()
	if n, err := fast.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read after the peer closed: %d %v, want io.EOF", n, err)
	}
}

func TestSockConnDeadlinesAndClose(t *testing.T) {
	fast, _ := tcpPair(t)
	_ = fast.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := fast.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline: %v, want a timeout", err)
	}
	// A write into a peer that never reads times out too (what WriteTimeout relies on).
	_ = fast.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, err = fast.Write(make([]byte, 16<<20))
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("write past its deadline: %v, want a timeout", err)
	}
	// Close unblocks a waiting read.
	_ = fast.SetReadDeadline(time.Time{})
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
			t.Fatalf("read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock a waiting read")
	}
}

func TestFastConnLeavesOtherConnsAlone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if fastConn(a) != a {
		t.Fatal("fastConn wrapped a pipe")
	}
}
