package ldapfront

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/spokeproxy/spokeproxy/internal/rawconn"
)

// loadGenEnv, when set in the environment of this test binary, makes it a
// search load generator instead of running tests: see runLoadGen.
const loadGenEnv = "SPOKEPROXY_LDAP_LOADGEN"

func TestMain(m *testing.M) {
	if spec := os.Getenv(loadGenEnv); spec != "" {
		n, err := runLoadGen(spec)
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
		fmt.Printf("searches %d\n", n)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Load generator clients.
const (
	// clientGoLDAP searches with go-ldap, a full client library: about as much
	// CPU per search as slapd itself spends answering it.
	clientGoLDAP = "go-ldap"
	// clientMinimal sends a pre-encoded search and reads the responses'
	// envelopes only: the least CPU a client can spend, so that the relay's
	// own cost shows undiluted.
	clientMinimal = "minimal"
)

// runLoadGen runs spec = "client|URL|bindDN|password|baseDN|clients|duration":
// that many connections bound as bindDN, each searching baseDN (base scope)
// in a loop for duration once all are connected; it returns the searches done.
func runLoadGen(spec string) (int64, error) {
	f := strings.Split(spec, "|")
	if len(f) != 7 {
		return 0, fmt.Errorf("want client|URL|bindDN|password|baseDN|clients|duration, got %d fields", len(f))
	}
	kind := f[0]
	f = f[1:]
	clients, err := strconv.Atoi(f[4])
	if err != nil {
		return 0, err
	}
	d, err := time.ParseDuration(f[5])
	if err != nil {
		return 0, err
	}
	switch kind {
	case clientGoLDAP:
	case clientMinimal:
		return runMinimalLoad(f[0], f[1], f[2], f[3], clients, d)
	default:
		return 0, fmt.Errorf("unknown load generator client %q", kind)
	}
	conns := make([]*ldap.Conn, clients)
	for i := range conns {
		c, err := ldap.DialURL(f[0])
		if err != nil {
			return 0, err
		}
		defer c.Close()
		if err := c.Bind(f[1], f[2]); err != nil {
			return 0, err
		}
		conns[i] = c
	}
	req := ldap.NewSearchRequest(f[3], ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"cn", "mail"}, nil)
	var n atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				res, err := c.Search(req)
				if err == nil && len(res.Entries) != 1 {
					err = fmt.Errorf("search returned %d entries", len(res.Entries))
				}
				if err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, _ := first.Load().(error); err != nil {
		return 0, err
	}
	return n.Load(), nil
}

// runMinimalLoad is runLoadGen with clientMinimal clients.
func runMinimalLoad(url, dn, pw, base string, clients int, d time.Duration) (int64, error) {
	addr, ldaps := ldapHostPort(url)
	if ldaps {
		return 0, fmt.Errorf("minimal client: %s: plain ldap:// only", url)
	}
	conns := make([]*minimalClient, clients)
	for i := range conns {
		c, err := dialMinimal(addr, dn, pw)
		if err != nil {
			return 0, err
		}
		defer c.conn.Close()
		conns[i] = c
	}
	var n atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := encodeBaseSearch(1, base, "cn", "mail")
			for time.Now().Before(stop) {
				if err := c.search(req); err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, _ := first.Load().(error); err != nil {
		return 0, err
	}
	return n.Load(), nil
}

// minimalClient is one bound connection of the minimal load generator.
type minimalClient struct {
	conn net.Conn
	br   *bufio.Reader
}

func dialMinimal(addr, dn, pw string) (*minimalClient, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &minimalClient{conn: rawconn.Wrap(conn)}
	c.br = bufio.NewReaderSize(c.conn, 16<<10)
	if _, err := c.conn.Write(encodeSimpleBind(1, dn, []byte(pw))); err != nil {
		conn.Close()
		return nil, err
	}
	raw, err := readFrame(c.br, 1<<20)
	if err == nil {
		var code int
		var diag string
		if code, diag, err = resultCode(raw); err == nil && code != ResultSuccess {
			err = fmt.Errorf("bind: %d %s", code, diag)
		}
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// search sends req (one base search, message ID 1: IDs are reusable once an
// operation ended) and reads its responses, checking the envelope only: one
// entry, then a successful done.
func (c *minimalClient) search(req []byte) error {
	if _, err := c.conn.Write(req); err != nil {
		return err
	}
	entries := 0
	for {
		raw, err := nextFrame(c.br, 1<<20)
		if err != nil {
			return err
		}
		h, err := peekResponse(raw)
		if err != nil {
			return err
		}
		switch h.Op {
		case OpSearchResultEntry:
			entries++
		case OpSearchResultDone:
			if code := doneCode(raw); code != ResultSuccess || entries != 1 {
				return fmt.Errorf("search: %d entries, result %d", entries, code)
			}
			return nil
		default:
			return fmt.Errorf("search: unexpected %v", h.Op)
		}
	}
}

// doneCode is the resultCode of a SearchResultDone, read from its headers
// (-1 if they are not as expected).
func doneCode(raw []byte) int {
	_, i, _, err := tlv(raw, 0) // LDAPMessage
	if err == nil {
		_, _, i, err = tlv(raw, i) // messageID
	}
	if err == nil {
		_, i, _, err = tlv(raw, i) // SearchResultDone
	}
	if err != nil {
		return -1
	}
	tag, s, e, err := tlv(raw, i) // resultCode ENUMERATED
	if err != nil || tag != 0x0a || e-s != 1 {
		return -1
	}
	return int(raw[s])
}

// loadResult is one load generator run: searches done, the CPU time the
// generator used, the CPU time this process (the proxy, when it is in the
// path) used meanwhile, and the CPU time of the LDAP server answering.
type loadResult struct {
	searches                     int64
	clientCPU, ownCPU, serverCPU time.Duration
}

func (r *loadResult) add(o loadResult) {
	r.searches += o.searches
	r.clientCPU += o.clientCPU
	r.ownCPU += o.ownCPU
	r.serverCPU += o.serverCPU
}

// perSearch is the CPU time d spread over the run's searches.
func (r loadResult) perSearch(d time.Duration) time.Duration {
	if r.searches == 0 {
		return 0
	}
	return d / time.Duration(r.searches)
}

func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is the user and system CPU time process pid has used, from
// /proc/PID/stat (in clock ticks of 10 ms).
func procCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(raw, ')')
	f := strings.Fields(string(raw[i+1:]))
	if i < 0 || len(f) < 13 {
		b.Fatalf("/proc/%d/stat: %q", pid, raw)
	}
	// utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %q", pid, raw)
	}
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// searchThroughputProc runs the load generator (client is clientGoLDAP or
// clientMinimal) in a child process (clients are other processes in
// production, and a shared Go scheduler would charge the relay's goroutine
// wake-ups to the clients); serverPID is the LDAP server that answers.
func searchThroughputProc(b *testing.B, client, url, dn, pw, base string, clients int, d time.Duration, serverPID int) loadResult {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s|%s|%s|%s|%s|%d|%s", loadGenEnv, client, url, dn, pw, base, clients, d))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	own, server := selfCPU(b), procCPU(b, serverPID)
	if err := cmd.Run(); err != nil {
		b.Fatalf("load generator against %s: %v\n%s", url, err, errb.String())
	}
	r := loadResult{
		ownCPU:    selfCPU(b) - own,
		serverCPU: procCPU(b, serverPID) - server,
		clientCPU: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(),
	}
	if _, err := fmt.Sscanf(out.String(), "searches %d", &r.searches); err != nil {
		b.Fatalf("load generator output %q: %v", out.String(), err)
	}
	return r
}
