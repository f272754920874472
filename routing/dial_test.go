package routing

import (
	"context"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestDialHubSetsKeepaliveAndUserTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	s, err := NewSite(Config{Protocol: LDAP, Hubs: []string{"ldap://" + ln.Addr().String()}, Replica: "ldap://127.0.0.1:1",
		BaseDN: "dc=x", TCPKeepAlive: 7 * time.Second, TCPUserTimeout: 1500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, endpoint := range []string{"ldap://" + ln.Addr().String() + "/", ln.Addr().String()} {
		c, err := s.DialHub(context.Background(), endpoint)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var userTimeout, keepAlive, idle int
		var serr error
		raw.Control(func(fd uintptr) {
			if userTimeout, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT); serr != nil {
				return
			}
			if keepAlive, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE); serr != nil {
				return
			}
			idle, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		})
		c.Close()
		if serr != nil {
			t.Fatal(serr)
		}
		if userTimeout != 1500 || keepAlive != 1 || idle != 7 {
			t.Errorf("%s: TCP_USER_TIMEOUT %d ms, SO_KEEPALIVE %d, TCP_KEEPIDLE %d s; want 1500, 1, 7", endpoint, userTimeout, keepAlive, idle)
		}
	}
}

func TestHostPort(t *testing.T) {
	for in, want := range map[string]string{
		"hub:5432":              "hub:5432",
		"ldap://hub":            "hub:389",
		"ldaps://hub":           "hub:636",
		"ldap://hub:3890/":      "hub:3890",
		"ldap://[::1]:389":      "[::1]:389",
		"ldaps://10.0.0.1:1636": "10.0.0.1:1636",
	} {
		if got, _ := hostPort(in); got != want {
			t.Errorf("hostPort(%q) = %q, want %q", in, got, want)
		}
	}
}
