package pgfront

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// rawConn is a plain TCP connection whose reads and writes are raw system
// calls on its non-blocking socket, waiting through the runtime's poller
// (and so honouring deadlines and Close) only when the socket is not
// ready. Why: the relay is a ping-pong of small messages that leaves the
// process idle between them, and a regular read or write, being a
// blocking system call to the runtime, wakes the runtime's monitor
// thread every time the process comes back from idle: on the shared,
// virtualised 2-core machine that context switch cost about a quarter of
// the proxy's CPU per pgbench transaction (perf: runtime.sysmon). A
// non-blocking socket call returns at once and needs none of that.
type rawConn struct {
	*net.TCPConn
	rc syscall.RawConn
}

// fastConn returns c as a rawConn when it is a plain TCP connection, else
// c itself (TLS, test pipes).
func fastConn(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &rawConn{TCPConn: tc, rc: rc}
}

func (c *rawConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

func (c *rawConn) Read(p []byte) (int, error) {
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

func (c *rawConn) Write(p []byte) (int, error) {
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
