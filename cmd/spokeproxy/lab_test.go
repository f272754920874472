package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestLabCommand runs the real binary as a person would: `spokeproxy lab`
// writes lab.json with exactly the documented shape, serves the admin API,
// and on SIGTERM stops every process it started and leaves nothing
// listening.
func TestLabCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and slapd; not a unit test")
	}
	bin := filepath.Join(t.TempDir(), "spokeproxy")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// As root the lab runs PostgreSQL as the postgres user, who must be able
	// to reach the directory; t.TempDir's parent is private.
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "lab", "-dir", dir)
	var stdout, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	})

	infoPath := filepath.Join(dir, "lab.json")
	var raw []byte
	for raw == nil {
		select {
		case <-exited:
			t.Fatalf("spokeproxy lab exited early: %v\nstderr:\n%s", waitErr, stderr.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Since(start) > 60*time.Second {
			t.Fatalf("no lab.json after 60s\nstderr:\n%s", stderr.String())
		}
		if b, err := os.ReadFile(infoPath); err == nil && json.Valid(b) {
			raw = b
		}
	}
	took := time.Since(start)
	t.Logf("lab.json written %s after start", took.Round(time.Millisecond))
	if took > 30*time.Second {
		t.Errorf("lab took %s to come up, the target is 30s", took)
	}

	var info map[string]any
	if err := json.Unmarshal(raw, &info); err != nil {
		t.Fatal(err)
	}
	wantKeys := map[string][]string{
		"":     {"admin", "ldap", "pg", "wan"},
		"pg":   {"hub", "proxy", "replica"},
		"ldap": {"admin_dn", "admin_password", "base_dn", "hub", "proxy", "replica", "user_dn", "user_password"},
		"wan":  {"api", "ldap_link", "pg_link"},
	}
	for section, want := range wantKeys {
		obj := info
		if section != "" {
			obj, _ = info[section].(map[string]any)
		}
		if got := keys(obj); !reflect.DeepEqual(got, want) {
			t.Errorf("lab.json %q keys = %v, want %v", section, got, want)
		}
	}
	wan := info["wan"].(map[string]any)
	if wan["pg_link"] != "wan_pg" || wan["ldap_link"] != "wan_ldap" {
		t.Errorf("wan links = %v", wan)
	}
	pg := info["pg"].(map[string]any)
	if u, err := url.Parse(pg["replica"].(string)); err != nil || u.User.Username() != "app" || u.Path != "/appdb" {
		t.Errorf("pg.replica = %v", pg["replica"])
	}
	if !strings.Contains(stdout.String(), "psql ") || !strings.Contains(stdout.String(), "ldapsearch ") {
		t.Errorf("the summary lacks a psql or ldapsearch line to try:\n%s", stdout.String())
	}

	admin := info["admin"].(string)
	resp, err := http.Get(admin + "/healthz")
	if err != nil {
		t.Fatalf("admin API: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/healthz = %d", resp.StatusCode)
	}

	// Everything the lab started mentions its directory on its command line.
	children := processesMentioning(t, dir)
	if len(children) < 4 {
		t.Fatalf("found %d processes of the lab (want at least 2 PostgreSQL and 2 slapd): %v", len(children), children)
	}
	addrs := []string{strings.TrimPrefix(admin, "http://"), strings.TrimPrefix(wan["api"].(string), "http://")}
	for _, s := range []string{pg["replica"].(string), pg["hub"].(string)} {
		u, _ := url.Parse(s)
		addrs = append(addrs, u.Host)
	}
	for _, s := range []string{"replica", "hub"} {
		u, _ := url.Parse(info["ldap"].(map[string]any)[s].(string))
		addrs = append(addrs, u.Host)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("spokeproxy lab exited with %v after SIGTERM\nstderr:\n%s", waitErr, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("spokeproxy lab still running 30s after SIGTERM")
	}
	if left := processesMentioning(t, dir); len(left) > 0 {
		t.Errorf("processes left after SIGTERM: %v", left)
	}
	for _, a := range addrs {
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after SIGTERM", a)
		}
	}
}

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// processesMentioning lists the PIDs whose command line contains s.
func processesMentioning(t *testing.T, s string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if strings.Contains(string(b), s) {
			pids = append(pids, e.Name()+":"+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return pids
}
