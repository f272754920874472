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
// The wrapper passes golang.org/x/net/nettest.TestConn, allocates nothing per
// Read or Write, and offers TryWrite (TryWriter), a write that never waits,
// and WriteRead (WriteReader), a request and the wait for its answer without
// a read that finds nothing. ArmedReader reads a client the same way between
// requests.
package rawconn

import (
	"io"
	"iter"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// conn is a plain TCP connection with raw socket reads and writes.
type conn struct {
	*net.TCPConn
	rc   syscall.RawConn
	r, w rawOp // net.Conn allows one Read and one Write at a time

	// WriteRead's request, written from inside the read (under both
	// directions' locks) before the read waits for the answer.
	req         []byte
	reqN        int
	reqErrno    syscall.Errno
	reqFull     bool // the socket took only reqN bytes: Write does the rest
	writeReadFn func(fd uintptr) bool
}

// rawOp is one direction's call in progress. The function RawConn runs is
// bound to it once, in Wrap: a closure per call would be two allocations
// per relayed message.
type rawOp struct {
	mu     sync.Mutex // concurrent Reads (or Writes) take turns
	p      []byte
	n      int
	errno  syscall.Errno
	noWait bool // TryWrite: stop at EAGAIN instead of waiting
	fn     func(fd uintptr) bool
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
	w := &conn{TCPConn: tc, rc: rc}
	w.r.fn, w.w.fn = w.r.read, w.w.write
	w.writeReadFn = w.writeRead
	return w
}

func (c *conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// read is the RawConn.Read function: one read(2) into o.p.
func (o *rawOp) read(fd uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&o.p[0])), uintptr(len(o.p)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait in the poller, then try again
		}
		o.n, o.errno = int(r), e
		return true
	}
}

// write is the RawConn.Write function: write(2) until o.p is all written.
func (o *rawOp) write(fd uintptr) bool {
	for o.n < len(o.p) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&o.p[o.n])), uintptr(len(o.p)-o.n))
		switch e {
		case 0:
			o.n += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return o.noWait
		default:
			o.errno = e
			return true
		}
	}
	return true
}

func (c *conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	o := &c.r
	o.mu.Lock()
	o.p, o.n, o.errno = p, 0, 0
	err := c.rc.Read(o.fn)
	n, errno := o.n, o.errno
	o.p = nil
	o.mu.Unlock()
	if err != nil {
		return 0, c.opError("read", unwrapOp(err))
	}
	return c.readResult(n, errno)
}

// readResult turns what a read(2) returned into Read's result: an
// errno as a *net.OpError, 0 bytes as io.EOF.
// (Small enough to inline on the read path; the error is built apart.)
func (c *conn) readResult(n int, errno syscall.Errno) (int, error) {
	if errno != 0 {
		return 0, c.readErrno(errno)
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (c *conn) readErrno(errno syscall.Errno) error {
	return c.opError("read", os.NewSyscallError("read", errno))
}

func (c *conn) Write(p []byte) (int, error) { return c.write(p, false) }

// TryWrite writes as much of p as the socket takes now, without waiting
// for room: n < len(p) with a nil error means the socket buffer is full.
// A writer that bounds its waits with a deadline can so skip setting one
// (a runtime timer update) on every write that does not wait.
func (c *conn) TryWrite(p []byte) (int, error) { return c.write(p, true) }

func (c *conn) write(p []byte, noWait bool) (int, error) {
	o := &c.w
	o.mu.Lock()
	o.p, o.n, o.errno, o.noWait = p, 0, 0, noWait
	err := c.rc.Write(o.fn)
	written, errno := o.n, o.errno
	o.p = nil
	o.mu.Unlock()
	if err != nil {
		return written, c.opError("write", unwrapOp(err))
	}
	if errno != 0 {
		return written, c.opError("write", os.NewSyscallError("write", errno))
	}
	return written, nil
}

// WriteRead writes req, then reads into p the first bytes that arrive,
// for a request the peer answers. Unlike Write then Read it does not try
// the socket before waiting: right after a request, that read can only
// find the socket empty, a system call for nothing. The wait is armed
// before the write, so an answer however quick is not missed, and bytes
// the peer sent before req are read with the answer. When the socket
// cannot take all of req at once, the rest goes through Write and p is
// filled by Read.
//
// Only for a request that is answered (or a connection that fails): a
// request without an answer leaves the read waiting for the peer's next
// bytes, like a Read would once it found nothing.
func (c *conn) WriteRead(req, p []byte) (int, error) {
	if len(req) == 0 {
		return c.Read(p)
	}
	if len(p) == 0 {
		_, err := c.Write(req)
		return 0, err
	}
	c.w.mu.Lock()
	c.r.mu.Lock()
	c.req, c.reqN, c.reqErrno, c.reqFull = req, 0, 0, false
	o := &c.r
	o.p, o.n, o.errno = p, 0, 0
	err := c.rc.Read(c.writeReadFn)
	written, reqErrno, full := c.reqN, c.reqErrno, c.reqFull
	n, errno := o.n, o.errno
	c.req, o.p = nil, nil
	c.r.mu.Unlock()
	c.w.mu.Unlock()
	if reqErrno != 0 {
		return 0, c.opError("write", os.NewSyscallError("write", reqErrno))
	}
	if full {
		if _, err := c.Write(req[written:]); err != nil {
			return 0, err
		}
		return c.Read(p)
	}
	if err != nil {
		if written < len(req) { // the read failed before the request went out
			return 0, c.opError("write", unwrapOp(err))
		}
		return 0, c.opError("read", unwrapOp(err))
	}
	return c.readResult(n, errno)
}

// writeRead is WriteRead's RawConn.Read function: on its first call it
// writes the request and waits; then it reads.
func (c *conn) writeRead(fd uintptr) bool {
	if c.req == nil {
		return c.r.read(fd)
	}
	for c.reqN < len(c.req) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&c.req[c.reqN])), uintptr(len(c.req)-c.reqN))
		switch e {
		case 0:
			c.reqN += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			c.reqFull = true
			return true
		default:
			c.reqErrno = e
			return true
		}
	}
	c.req = nil
	return false // wait for the answer
}

// ArmedReader reads a connection from Wrap keeping the wait for its next
// bytes armed from one read to the next.
//
// Why: a Read arms the runtime's wait anew on each call, forgetting
// whether bytes arrived since the last one, so it must first try the
// socket. Serving a request-answer client, that try comes right after the
// answer went out and nearly always finds nothing: a system call for
// nothing per request, dear on a virtual machine. An ArmedReader stays in
// one RawConn.Read across calls (run as a coroutine with iter.Pull), so
// after a read that emptied the socket it waits for the next bytes
// without trying first, and misses none: the wait was never disarmed.
//
// Read must not be called concurrently, and no other Read may be made on
// the connection while the ArmedReader is in use. While it is, the
// connection's Close takes effect (the socket is closed) when the reader
// next reads or stops: Stop must be called once reading is over. So a
// Close from another goroutine blocks until the reading goroutine reads
// again or stops; to interrupt that goroutine, set a deadline instead (it
// wakes a waiting Read at once and never blocks).
type ArmedReader struct {
	c       *conn
	next    func() (struct{}, bool)
	stop    func()
	yield   func(struct{}) bool
	loopFn  func(fd uintptr) bool
	p       []byte
	n       int
	errno   syscall.Errno
	err     error // RawConn.Read's, when the loop ended
	drained bool  // the last read took less than it asked: the socket was empty after it
	reads   int   // read system calls made (for tests)
}

// NewArmedReader returns an ArmedReader for c, or nil when c is not a
// connection from Wrap (TLS, pipes): read those directly.
func NewArmedReader(c net.Conn) *ArmedReader {
	rc, ok := c.(*conn)
	if !ok {
		return nil
	}
	r := &ArmedReader{c: rc}
	r.loopFn = r.loop
	return r
}

func (r *ArmedReader) start() {
	r.drained = false // a new wait starts disarmed: try the socket first
	r.next, r.stop = iter.Pull(func(yield func(struct{}) bool) {
		r.yield = yield
		r.err = r.c.rc.Read(r.loopFn)
	})
}

// loop is the RawConn.Read function the coroutine stays in: it reads,
// hands each read to Read (yield), and after a read that emptied the
// socket returns false, so that RawConn waits for the next bytes.
func (r *ArmedReader) loop(fd uintptr) bool {
	for {
		if r.drained {
			r.drained = false
			return false
		}
		r.reads++
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&r.p[0])), uintptr(len(r.p)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		r.n, r.errno = int(n), e
		r.drained = e == 0 && n > 0 && int(n) < len(r.p)
		if !r.yield(struct{}{}) {
			return true // Stop
		}
	}
}

// Read reads as net.Conn's Read does.
func (r *ArmedReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if r.next == nil {
		r.start()
	}
	r.p = p
	_, ok := r.next()
	r.p = nil
	if !ok { // the wait failed: deadline, Close
		err := r.err
		r.next, r.stop, r.err = nil, nil, nil
		return 0, r.c.opError("read", unwrapOp(err))
	}
	return r.c.readResult(r.n, r.errno)
}

// Stop ends the reader's coroutine, releasing the connection.
func (r *ArmedReader) Stop() {
	if r.stop != nil {
		r.stop()
		r.next, r.stop = nil, nil
	}
}

// WriteReader is implemented by the connections Wrap wraps.
type WriteReader interface {
	WriteRead(req, p []byte) (int, error)
}

// TryWriter is implemented by the connections Wrap wraps.
type TryWriter interface {
	TryWrite(p []byte) (int, error)
}

// unwrapOp strips the "raw-read"/"raw-write" OpError of RawConn so the
// caller's error reads like a regular connection's (deadline, closed).
func unwrapOp(err error) error {
	if oe, ok := err.(*net.OpError); ok {
		return oe.Err
	}
	return err
}
