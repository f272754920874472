package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// runAs says which operating-system user runs PostgreSQL's binaries. When
// the lab runs as root it is the "postgres" user (initdb and postgres refuse
// to run as root); otherwise it is nil and binaries run as the caller.
type runAs struct {
	uid, gid uint32
}

// postgresUser looks up the user PostgreSQL binaries run as. It returns nil
// when the lab does not run as root.
func postgresUser() (*runAs, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, &PrerequisiteError{What: `the "postgres" system user (running as root)`, Package: "postgresql-15", Err: err}
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("lab: postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("lab: postgres gid %q: %w", u.Gid, err)
	}
	return &runAs{uid: uint32(uid), gid: uint32(gid)}, nil
}

// chown gives path to the run-as user; a no-op when there is none.
func (r *runAs) chown(path string) error {
	if r == nil {
		return nil
	}
	return os.Chown(path, int(r.uid), int(r.gid))
}

// sysProcAttr puts every child in its own process group (so a stop can reach
// its helpers), kills it if the lab process dies, and switches user if asked.
// Pdeathsig is applied by the Go runtime after the credential change, so it
// survives it.
func sysProcAttr(as *runAs) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if as != nil {
		attr.Credential = &syscall.Credential{Uid: as.uid, Gid: as.gid, NoSetGroups: true}
	}
	return attr
}

// childEnv is the small, predictable environment every child gets; extra
// entries (PGPASSFILE) are appended by the caller.
func childEnv(extra ...string) []string {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "LANG=C", "TZ=UTC"}
	return append(env, extra...)
}

// process is one long-running server the lab owns. Its output goes to a log
// file in the lab directory. done is closed once Wait has returned; exitErr
// is written before that and read only after.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	stopSig syscall.Signal // the server's own orderly-shutdown signal
	done    chan struct{}
	exitErr error

	stopping atomic.Bool // set once stop is called: an exit after it was asked for
	stopOnce sync.Once
	stopErr  error
}

// startProcess starts a server in the background with its output appended
// to logPath.
func startProcess(name, logPath string, stopSig syscall.Signal, as *runAs, dir string, env []string, argv ...string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab: %s: log file: %w", name, err)
	}
	defer logf.Close() // the child holds its own copy of the descriptor
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = sysProcAttr(as)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("lab: start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, stopSig: stopSig, done: make(chan struct{})}
	go func() {
		p.exitErr = cmd.Wait()
		if !p.stopping.Load() {
			p.noteUnexpectedExit()
		}
		close(p.done)
	}()
	return p, nil
}

// noteUnexpectedExit appends how the server ended to its log: a server
// that dies under a test (a crash, an OOM kill) otherwise leaves a log that
// ends mid-story and connections reset with no cause in sight.
func (p *process) noteUnexpectedExit() {
	f, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "--- lab: %s (pid %d) ended without being asked to: %s (%s)\n", p.name, p.pid(), p.exitState(), time.Now().UTC().Format(time.RFC3339Nano))
}

// exitState says how the process ended: "signal: segmentation fault",
// "exit status 1". Read only once done is closed.
func (p *process) exitState() string {
	if p.exitErr == nil {
		return "exit status 0"
	}
	return p.exitErr.Error()
}

// crashed reports whether the process ended without stop being called, and
// how.
func (p *process) crashed() (how string, ok bool) {
	if p == nil || !p.exited() || p.stopping.Load() {
		return "", false
	}
	return p.exitState(), true
}

// pid is the server's process ID (also its process group ID).
func (p *process) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// failed builds the error for a server that did not come up, with its log's
// tail so the reader sees why without opening files.
func (p *process) failed(what string, cause error) error {
	state := "still running"
	if p.exited() {
		state = fmt.Sprintf("exited: %v", p.exitErr)
	}
	return &StartError{Component: p.name, Err: fmt.Errorf("%s (%s): %w", what, state, cause), LogPath: p.logPath, LogTail: tail(p.logPath, 20)}
}

// stop asks the server to shut down with its own signal, waits up to grace,
// then kills it, its process group and every descendant (PostgreSQL's
// children each run in their own process group, so the group alone does
// not reach them) and waits for all of them. Idempotent.
func (p *process) stop(grace time.Duration) error {
	p.stopping.Store(true)
	p.stopOnce.Do(func() {
		if p.exited() {
			return
		}
		_ = p.cmd.Process.Signal(p.stopSig)
		select {
		case <-p.done:
			return // a postmaster exits only after all its children
		case <-time.After(grace):
		}
		kids := descendants(p.pid())
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		for _, kid := range kids {
			_ = syscall.Kill(kid, syscall.SIGKILL)
		}
		select {
		case <-p.done:
			p.stopErr = fmt.Errorf("lab: %s did not stop within %s and was killed", p.name, grace)
		case <-time.After(10 * time.Second):
			p.stopErr = fmt.Errorf("lab: %s (pid %d) survived SIGKILL", p.name, p.pid())
			return
		}
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if !anyAlive(kids) {
				return
			}
		}
		p.stopErr = errors.Join(p.stopErr, fmt.Errorf("lab: children of %s survived SIGKILL", p.name))
	})
	return p.stopErr
}

// descendants lists every process below pid, read from /proc.
func descendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, _, ok := procStat(child); ok {
			children[ppid] = append(children[ppid], child)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		next := queue[0]
		queue = queue[1:]
		for _, c := range children[next] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// procStat reads a process's parent and state from /proc/PID/stat.
func procStat(pid int) (ppid int, state byte, ok bool) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, 0, false
	}
	// "pid (comm) state ppid ...": comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return 0, 0, false
	}
	fields := strings.Fields(string(data[i+2:]))
	if len(fields) < 2 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(fields[1])
	if err != nil {
		return 0, 0, false
	}
	return ppid, fields[0][0], true
}

// anyAlive reports whether any of pids still runs (a zombie waiting for a
// reaper that is not us counts as gone).
func anyAlive(pids []int) bool {
	for _, pid := range pids {
		if _, state, ok := procStat(pid); ok && state != 'Z' && state != 'X' {
			return true
		}
	}
	return false
}

// runTool runs a command to completion with its output appended to logPath;
// a failure carries the log's tail.
func runTool(ctx context.Context, name, logPath string, as *runAs, dir string, env []string, stdin io.Reader, argv ...string) error {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("lab: %s: log file: %w", name, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- lab: %s: %s\n", name, strings.Join(argv, " "))
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdin = stdin
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = sysProcAttr(as)
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return &StartError{Component: name, Err: err, LogPath: logPath, LogTail: tail(logPath, 20)}
	}
	return nil
}

// tail returns the last n lines of a log file, or a note saying why not.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// freePorts picks n distinct unused loopback ports for the lab's servers.
// They come from below the kernel's ephemeral range (see
// ephemeralPortsFrom): a port from the ephemeral range, free when looked
// at, may be handed to any other program's listener or outgoing
// connection before the server binds it, which was seen when test
// packages started labs side by side (a slapd found its port taken and
// exited). Below that range only another lab picking at random could
// take it in the moment between the check and the bind.
func freePorts(n int) ([]int, error) {
	lns := make([]net.Listener, 0, n)
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	hi := ephemeralPortsFrom()
	lo := max(hi-12000, 10000)
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		addr := "127.0.0.1:0"
		if hi-lo >= 1000 && tries < 100*n {
			addr = "127.0.0.1:" + strconv.Itoa(lo+rand.IntN(hi-lo))
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			if addr != "127.0.0.1:0" {
				continue // taken: try another
			}
			return nil, fmt.Errorf("lab: pick a free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// ephemeralPortsFrom is the first port of the kernel's ephemeral range
// (net.ipv4.ip_local_port_range; 32768 when it cannot be read).
func ephemeralPortsFrom() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return lo
}

// listening reports whether something accepts TCP connections on addr.
func listening(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// waitFor polls check until it succeeds, the process dies, or the deadline
// passes. Polling a real request is how the lab knows a server is ready.
func waitFor(ctx context.Context, p *process, what string, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		last = check(cctx)
		ccancel()
		if last == nil {
			return nil
		}
		if p != nil && p.exited() {
			return p.failed(what, last)
		}
		select {
		case <-ctx.Done():
			if p != nil {
				return p.failed(what, errors.Join(ctx.Err(), last))
			}
			return fmt.Errorf("lab: %s: %w (last error: %v)", what, ctx.Err(), last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ensureTraversable checks that the run-as user can reach dir: every
// ancestor must be searchable by others, or PostgreSQL fails with a
// confusing "permission denied" much later.
func ensureTraversable(dir string, as *runAs) error {
	if as == nil {
		return nil
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		searchable := fi.Mode().Perm()&0o001 != 0 || (ok && st.Uid == as.uid && fi.Mode().Perm()&0o100 != 0)
		if !searchable {
			return fmt.Errorf("lab: directory %s is not searchable by the postgres user (PostgreSQL runs as postgres when the lab runs as root): chmod o+x %s or choose another -dir", d, d)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}
