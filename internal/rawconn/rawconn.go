// Package rawconn makes a plain TCP connection read and write with raw
// non-blocking system calls, waiting through the runtime's poller (and so
// honouring deadlines and Close) only when the socket is not ready.
//
// Why: both fronts relay a ping-pong of small messages that leaves the
// process idle between them. A regular read or write is, to the runtime, a
// system call that may block; coming back from idle it wakes the runtime's
// monitor thread and may hand the processor to another thread. On a small
// virtualised machine that cost about a quarter of the PostgreSQL front's
// CPU per pgbench transaction (perf: runtime.sysmon) and about as much as
// the socket calls themselves per relayed LDAP search. A non-blocking call
// on a socket the runtime already made non-blocking returns at once and
// needs none of it.
//
// Wrap returns anything that is not a *net.TCPConn unchanged (TLS, pipes).
// The wrapper passes golang.org/x/net/nettest.TestConn.
package rawconn

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// conn is a plain TCP connection with raw socket reads and writes.
type conn struct {
	*net.TCPConn
	rc syscall.RawConn
}

// Wrap returns c with raw socket reads and writes when it is a plain TCP
// connection, else c itself (TLS, pipes).
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &conn{TCPConn: tc, rc: rc}
}

func (c *conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

func (c *conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // wait in the poller, then try again
			}
			n, errno = int(r), e
			return true
		}
	})
	if err != nil {
		return 0, c.opError("read", unwrapOp(err))
	}
	if errno != 0 {
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (c *conn) Write(p []byte) (int, error) {
	written := 0
	var errno syscall.Errno
	err := c.rc.Write(func(fd uintptr) bool {
		for written < len(p) {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[written])), uintptr(len(p)-written))
			switch e {
			case 0:
				written += int(r)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
		return true
	})
	if err != nil {
		return written, c.opError("write", unwrapOp(err))
	}
	if errno != 0 {
		return written, c.opError("write", os.NewSyscallError("write", errno))
	}
	return written, nil
}

// unwrapOp strips the "raw-read"/"raw-write" OpError of RawConn so the
// caller's error reads like a regular connection's (deadline, closed).
func unwrapOp(err error) error {
	if oe, ok := err.(*net.OpError); ok {
		return oe.Err
	}
	return err
}
