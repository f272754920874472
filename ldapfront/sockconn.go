package ldapfront

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// sockConn is a plain TCP connection whose reads and writes are raw system
// calls on its non-blocking socket; only when the socket is not ready does it
// wait, through the runtime's poller, which keeps deadlines and Close working.
//
// Why: the relay is a ping-pong of small messages (a search in, an entry and
// a result out) that leaves the process idle between them. A regular read or
// write is a blocking system call to the runtime, which on the way back from
// idle wakes its monitor thread and may hand the P to another thread; on this
// project's shared, virtualised 2-core machines that scheduling cost about as
// much CPU per relayed search as the socket calls themselves. A non-blocking
// call returns at once and needs none of it. (The PostgreSQL front measured
// and does the same.)
type sockConn struct {
	*net.TCPConn
	rc syscall.RawConn
}

// fastConn returns c as a sockConn when it is a plain TCP connection, else c
// itself (TLS over it, pipes in tests).
func fastConn(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &sockConn{TCPConn: tc, rc: rc}
}

func (c *sockConn) Read(p []byte) (int, error) {
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
				return false // nothing yet: wait in the poller, then call again
			}
			n, errno = int(r), e
			return true
		}
	})
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (c *sockConn) Write(p []byte) (int, error) {
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
				return false // socket buffer full: wait in the poller
			default:
				errno = e
				return true
			}
		}
		return true
	})
	switch {
	case err != nil:
		return written, c.opError("write", err)
	case errno != 0:
		return written, c.opError("write", os.NewSyscallError("write", errno))
	}
	return written, nil
}

// opError makes an error read like a regular connection's: RawConn's own
// errors (deadline exceeded, use of closed connection) come wrapped in an
// OpError of its own, which is unwrapped first.
func (c *sockConn) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
