package ldapfront

import (
	"bytes"
	"fmt"
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

// runLoadGen runs spec = "URL|bindDN|password|baseDN|clients|duration": that
// many connections bound as bindDN, each searching baseDN (base scope) in a
// loop for duration once all are connected; it returns the searches done.
func runLoadGen(spec string) (int64, error) {
	f := strings.Split(spec, "|")
	if len(f) != 6 {
		return 0, fmt.Errorf("want URL|bindDN|password|baseDN|clients|duration, got %d fields", len(f))
	}
	clients, err := strconv.Atoi(f[4])
	if err != nil {
		return 0, err
	}
	d, err := time.ParseDuration(f[5])
	if err != nil {
		return 0, err
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

// loadResult is one load generator run: searches done, the CPU time the
// generator used, and the CPU time this process (the proxy, when it is in
// the path) used meanwhile.
type loadResult struct {
	searches          int64
	clientCPU, ownCPU time.Duration
}

func (r *loadResult) add(o loadResult) {
	r.searches += o.searches
	r.clientCPU += o.clientCPU
	r.ownCPU += o.ownCPU
}

func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// searchThroughputProc runs the load generator in a child process (clients
// are other processes in production, and a shared Go scheduler would charge
// the relay's goroutine wake-ups to the clients).
func searchThroughputProc(b *testing.B, url, dn, pw, base string, clients int, d time.Duration) loadResult {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s|%s|%s|%s|%d|%s", loadGenEnv, url, dn, pw, base, clients, d))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	own := selfCPU(b)
	if err := cmd.Run(); err != nil {
		b.Fatalf("load generator against %s: %v\n%s", url, err, errb.String())
	}
	r := loadResult{ownCPU: selfCPU(b) - own, clientCPU: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
	if _, err := fmt.Sscanf(out.String(), "searches %d", &r.searches); err != nil {
		b.Fatalf("load generator output %q: %v", out.String(), err)
	}
	return r
}
