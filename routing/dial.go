package routing

import (
	"context"
	"crypto/tls"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// wanDialer returns a dialer that sets TCP keepalive and TCP_USER_TIMEOUT,
// so that no WAN connection hangs for minutes on a silent link: unacked data
// fails the connection after userTimeout, an idle one is probed after
// keepAlive.
func wanDialer(keepAlive, userTimeout time.Duration) *net.Dialer {
	ms := int(userTimeout / time.Millisecond)
	return &net.Dialer{
		KeepAliveConfig: net.KeepAliveConfig{
			Enable:   true,
			Idle:     keepAlive,
			Interval: max(keepAlive/3, time.Second),
			Count:    3,
		},
		Control: func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, ms)
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
}

// hostPort turns an endpoint ("host:port" or an LDAP URL) into host:port.
func hostPort(endpoint string) (addr string, ldaps bool) {
	if !strings.Contains(endpoint, "://") {
		return endpoint, false
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return endpoint, false
	}
	host := u.Host
	if u.Port() == "" {
		port := "389"
		if u.Scheme == "ldaps" {
			port = "636"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	return host, u.Scheme == "ldaps"
}

// DialHub opens a TCP connection to a hub endpoint ("host:port" or an LDAP
// URL) with keepalive and TCP_USER_TIMEOUT set from the current Config. For
// an ldaps:// URL the connection is wrapped in TLS with Config.HubTLS.
func (s *Site) DialHub(ctx context.Context, endpoint string) (net.Conn, error) {
	addr, ldaps := hostPort(endpoint)
	c, err := s.live.Load().dialer.DialContext(ctx, "tcp", addr)
	if err != nil || !ldaps {
		return c, err
	}
	tc := s.tlsFor(addr)
	conn := tls.Client(c, tc)
	if err := conn.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return conn, nil
}

// DialContext dials addr with the WAN dialer; it fits pgconn.Config.DialFunc.
func (s *Site) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return s.live.Load().dialer.DialContext(ctx, network, addr)
}

func (s *Site) tlsFor(addr string) *tls.Config {
	var tc *tls.Config
	if hub := s.config().HubTLS; hub != nil {
		tc = hub.Clone()
	} else {
		tc = &tls.Config{}
	}
	if tc.ServerName == "" {
		host, _, _ := net.SplitHostPort(addr)
		tc.ServerName = host
	}
	return tc
}
