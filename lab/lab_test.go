package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"gopkg.in/yaml.v3"
)

// shared is one lab for every test that does not stop servers, started by
// TestMain so the package's run stays short.
var shared *Lab

func TestMain(m *testing.M) {
	code := RunMain(m, Options{}, func(l *Lab) error {
		shared = l
		// Issue 2's target is 30 s; typically 2-3 s here, but two labs and
		// compilers sharing 2 cores have taken 36 s, so the test allows
		// twice the target.
		if l.StartupTime() > 60*time.Second {
			return fmt.Errorf("startup took %s, the target is under 30 s (60 s allowed on a loaded machine)", l.StartupTime())
		}
		return nil
	})
	if shared != nil {
		if _, err := os.Stat(shared.Dir()); !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(os.Stderr, "FAIL: lab: temporary directory %s left behind: %v\n", shared.Dir(), err)
			code = 1
		}
	}
	os.Exit(code)
}

// eventually polls cond until it holds or timeout passes and returns how
// long it took.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) time.Duration {
	t.Helper()
	start := time.Now()
	var lastErr error
	for time.Since(start) < timeout {
		ok, err := cond()
		if ok {
			return time.Since(start)
		}
		lastErr = err
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s (last error: %v)", what, timeout, lastErr)
	return 0
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// noteExists reports whether the notes table holds a row with body.
func noteExists(conn *pgx.Conn, body string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var n int
	err := conn.QueryRow(ctx, "SELECT count(*) FROM notes WHERE body = $1", body).Scan(&n)
	return n == 1, err
}

func insertNote(t *testing.T, conn *pgx.Conn, body string) {
	t.Helper()
	_, err := conn.Exec(context.Background(), "INSERT INTO notes (account_id, body) SELECT id, $1 FROM accounts WHERE name = 'alice'", body)
	if err != nil {
		t.Fatalf("insert on hub: %v", err)
	}
}

func TestPGRowReplicatesToStandby(t *testing.T) {
	hub := connect(t, shared.HubAppDSN()) // SCRAM over TCP as app
	replica := connect(t, shared.ReplicaAppDSN())
	body := fmt.Sprintf("replicated %d", time.Now().UnixNano())
	insertNote(t, hub, body)
	took := eventually(t, 5*time.Second, "row on the standby", func() (bool, error) { return noteExists(replica, body) })
	t.Logf("hub insert visible on the spoke standby after %s", took)

	// It is a hot standby: a write there is refused as on any standby.
	_, err := replica.Exec(context.Background(), "INSERT INTO notes (account_id, body) VALUES (1, 'x')")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Fatalf("write on the standby: got %v, want SQLSTATE 25006", err)
	}
	// The seed replicated too.
	var accounts int
	if err := replica.QueryRow(context.Background(), "SELECT count(*) FROM accounts").Scan(&accounts); err != nil || accounts != 3 {
		t.Fatalf("seeded accounts on the standby: %d, %v; want 3", accounts, err)
	}
}

func TestPGStandbyStreamsThroughWAN(t *testing.T) {
	hub := connect(t, shared.HubSuperDSN("postgres"))
	var clientPort int
	err := hub.QueryRow(context.Background(), "SELECT client_port FROM pg_stat_replication WHERE application_name = $1", spokeSlot).Scan(&clientPort)
	if err != nil {
		t.Fatalf("spoke's walsender on the hub: %v", err)
	}
	replica := connect(t, shared.ReplicaSuperDSN("postgres"))
	var senderPort int
	if err := replica.QueryRow(context.Background(), "SELECT sender_port FROM pg_stat_wal_receiver").Scan(&senderPort); err != nil {
		t.Fatalf("walreceiver: %v", err)
	}
	if want := shared.WANPGAddr(); !strings.HasSuffix(want, fmt.Sprintf(":%d", senderPort)) {
		t.Fatalf("standby streams from port %d, want the wan_pg link %s", senderPort, want)
	}
}

func TestPGAuthQuery(t *testing.T) {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(AuthUser, shared.AuthPassword()), Host: shared.ReplicaPGAddr(), Path: "/" + AppDatabase}
	auth := connect(t, u.String())
	var name, secret string
	if err := auth.QueryRow(context.Background(), AuthQuery, AppUser).Scan(&name, &secret); err != nil {
		t.Fatalf("auth query on the replica: %v", err)
	}
	if name != AppUser || !strings.HasPrefix(secret, "SCRAM-SHA-256$") {
		t.Fatalf("auth query: %q %q, want app and a SCRAM verifier", name, secret)
	}
	data, err := os.ReadFile(shared.AuthPasswordFile())
	if err != nil || strings.TrimSpace(string(data)) != shared.AuthPassword() {
		t.Fatalf("auth password file: %q, %v", data, err)
	}
	if fi, _ := os.Stat(shared.AuthPasswordFile()); fi.Mode().Perm() != 0o600 {
		t.Fatalf("auth password file mode %v, want 0600", fi.Mode().Perm())
	}
	// Nobody else may read verifiers.
	app := connect(t, shared.ReplicaAppDSN())
	_, err = app.Exec(context.Background(), AuthQuery, AppUser)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Fatalf("auth query as app: got %v, want SQLSTATE 42501", err)
	}
}

func ldapConn(t *testing.T, url, dn, password string) *ldap.Conn {
	t.Helper()
	c, err := ldap.DialURL(url)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetTimeout(5 * time.Second)
	if dn != "" {
		if err := c.Bind(dn, password); err != nil {
			t.Fatalf("bind %s at %s: %v", dn, url, err)
		}
	}
	return c
}

func entryExists(c *ldap.Conn, dn string) (bool, error) {
	res, err := c.Search(ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, 2, false, "(objectClass=*)", []string{"1.1"}, nil))
	if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return len(res.Entries) == 1, nil
}

func addPerson(t *testing.T, c *ldap.Conn, uid string) string {
	t.Helper()
	dn := "uid=" + uid + ",ou=people," + BaseDN
	req := ldap.NewAddRequest(dn, nil)
	req.Attribute("objectClass", []string{"inetOrgPerson"})
	req.Attribute("uid", []string{uid})
	req.Attribute("cn", []string{uid})
	req.Attribute("sn", []string{"Test"})
	if err := c.Add(req); err != nil {
		t.Fatalf("add %s on the provider: %v", dn, err)
	}
	return dn
}

func TestLDAPEntryReplicatesToConsumer(t *testing.T) {
	provider := ldapConn(t, shared.HubLDAPURL(), AdminDN, shared.AdminPassword())
	consumer := ldapConn(t, shared.ReplicaLDAPURL(), "", "")
	dn := addPerson(t, provider, fmt.Sprintf("repl%d", time.Now().UnixNano()))
	took := eventually(t, 5*time.Second, "entry on the consumer", func() (bool, error) { return entryExists(consumer, dn) })
	t.Logf("provider add visible on the spoke consumer after %s", took)

	// The consumer knows the same identities: the rootdn (same rootpw) and
	// the seeded users with their passwords.
	ldapConn(t, shared.ReplicaLDAPURL(), AdminDN, shared.AdminPassword())
	ldapConn(t, shared.ReplicaLDAPURL(), UserDN, UserPassword)
	ldapConn(t, shared.ReplicaLDAPURL(), BobDN, BobPassword)

	// A bound write on the consumer is referred to the hub, through the
	// WAN link.
	err := ldapConn(t, shared.ReplicaLDAPURL(), AdminDN, shared.AdminPassword()).Del(ldap.NewDelRequest(dn, nil))
	if !ldap.IsErrorWithCode(err, ldap.LDAPResultReferral) {
		t.Fatalf("delete on the consumer: got %v, want a referral (10)", err)
	}
	if le, ok := err.(*ldap.Error); !ok || le.Packet == nil || !bytes.Contains(le.Packet.Bytes(), []byte(shared.WANLDAPURL())) {
		t.Errorf("the consumer's referral does not name the hub through the WAN link (%s)", shared.WANLDAPURL())
	}

	// Cascading syncprov: the consumer announces the Sync Request control.
	res, err := consumer.Search(ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"supportedControl"}, nil))
	if err != nil || len(res.Entries) != 1 {
		t.Fatalf("root DSE of the consumer: %v", err)
	}
	if ctrls := res.Entries[0].GetAttributeValues("supportedControl"); !slices.Contains(ctrls, "1.3.6.1.4.1.4203.1.9.1.1") {
		t.Fatalf("consumer's supportedControl %v lacks the Sync Request control", ctrls)
	}
}

func TestWANCutStopsReplicationAndRestoreCatchesUp(t *testing.T) {
	t.Cleanup(func() {
		if err := shared.ResetWAN(); err != nil {
			t.Errorf("reset WAN: %v", err)
		}
	})
	hub := connect(t, shared.HubAppDSN())
	replica := connect(t, shared.ReplicaAppDSN())
	provider := ldapConn(t, shared.HubLDAPURL(), AdminDN, shared.AdminPassword())
	consumer := ldapConn(t, shared.ReplicaLDAPURL(), "", "")

	if err := shared.SetLink(LinkPG, false); err != nil {
		t.Fatal(err)
	}
	if err := shared.SetLink(LinkLDAP, false); err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf("during cut %d", time.Now().UnixNano())
	insertNote(t, hub, body)
	dn := addPerson(t, provider, fmt.Sprintf("cut%d", time.Now().UnixNano()))

	// While the link is down nothing arrives.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if ok, err := noteExists(replica, body); err != nil || ok {
			t.Fatalf("row reached the standby through a cut link (present %v, err %v)", ok, err)
		}
		if ok, err := entryExists(consumer, dn); err != nil || ok {
			t.Fatalf("entry reached the consumer through a cut link (present %v, err %v)", ok, err)
		}
	}

	restored := time.Now()
	if err := shared.SetLink(LinkPG, true); err != nil {
		t.Fatal(err)
	}
	if err := shared.SetLink(LinkLDAP, true); err != nil {
		t.Fatal(err)
	}
	pgTook := eventually(t, 15*time.Second, "standby catching up after restore", func() (bool, error) { return noteExists(replica, body) })
	ldapTook := eventually(t, 15*time.Second, "consumer catching up after restore", func() (bool, error) {
		return entryExists(consumer, dn)
	})
	t.Logf("after the link came back: standby caught up in %s, consumer in %s (since restore %s)", pgTook, ldapTook, time.Since(restored))
}

func TestWriteInfoShape(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lab.json")
	if err := shared.WriteInfo(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatalf("lab.json: %v", err)
	}
	// The shape fixed by issue 2, key for key.
	want := map[string][]string{
		"pg":    {"hub", "proxy", "replica"},
		"ldap":  {"admin_dn", "admin_password", "base_dn", "hub", "proxy", "replica", "user_dn", "user_password"},
		"wan":   {"api", "ldap_link", "pg_link"},
		"admin": nil,
	}
	if keys := sortedKeys(got); !reflect.DeepEqual(keys, sortedKeys(want)) {
		t.Fatalf("lab.json top-level keys %v, want %v", keys, sortedKeys(want))
	}
	for section, keys := range want {
		if keys == nil {
			if _, ok := got[section].(string); !ok {
				t.Fatalf("lab.json %q is %T, want a string", section, got[section])
			}
			continue
		}
		obj, ok := got[section].(map[string]any)
		if !ok {
			t.Fatalf("lab.json %q is %T, want an object", section, got[section])
		}
		if k := sortedKeys(obj); !reflect.DeepEqual(k, keys) {
			t.Fatalf("lab.json %q keys %v, want %v", section, k, keys)
		}
		for k, v := range obj {
			if _, ok := v.(string); !ok {
				t.Fatalf("lab.json %s.%s is %T, want a string", section, k, v)
			}
		}
	}
	info := shared.Info()
	if info.PG.Replica != shared.ReplicaAppDSN() || info.PG.Hub != shared.HubAppDSN() ||
		!strings.HasPrefix(info.PG.Hub, "postgres://app:apppass@127.0.0.1:") || !strings.HasSuffix(info.PG.Hub, "/appdb") {
		t.Fatalf("pg section %+v", info.PG)
	}
	if info.LDAP.UserDN != UserDN || info.LDAP.UserPassword != UserPassword || info.LDAP.AdminPassword == "" ||
		info.WAN.PGLink != LinkPG || info.WAN.LDAPLink != LinkLDAP || info.WAN.API != shared.ToxiproxyAPI() {
		t.Fatalf("ldap/wan sections %+v %+v", info.LDAP, info.WAN)
	}
	if info.PG.Proxy != "" || info.LDAP.Proxy != "" || info.Admin != "" {
		t.Fatalf("proxy endpoints set without a proxy: %+v", info)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lab.json mode: %v %v, want 0600 (it holds passwords)", fi, err)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func TestToxiproxyAPIIsToxiproxys(t *testing.T) {
	proxies, err := shared.Toxiproxy().Proxies()
	if err != nil {
		t.Fatalf("toxiproxy API: %v", err)
	}
	for name, addr := range map[string]string{LinkPG: shared.WANPGAddr(), LinkLDAP: strings.TrimPrefix(shared.WANLDAPURL(), "ldap://")} {
		p, ok := proxies[name]
		if !ok || p.Listen != addr || !p.Enabled {
			t.Fatalf("link %s: %+v, want enabled and listening on %s", name, p, addr)
		}
	}
}

func TestPrerequisiteErrorNamesPackage(t *testing.T) {
	err := fmt.Errorf("wrapped: %w", &PrerequisiteError{What: "slapd", Package: "slapd", Err: os.ErrNotExist})
	if !IsMissingPrerequisite(err) || !strings.Contains(err.Error(), "apt-get install -y slapd") {
		t.Fatalf("%v", err)
	}
	if IsMissingPrerequisite(errors.New("other")) {
		t.Fatal("plain error taken for a missing prerequisite")
	}
}

// alive reports whether any process of the group pgid exists.
func alive(pgid int) bool {
	return syscall.Kill(-pgid, 0) == nil
}

func TestHubFailoverThenCloseLeavesNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	goroutinesBefore := runtime.NumGoroutine()
	fake := &fakeProxy{}
	l := ForTest(t, Options{HubStandby: true, Proxy: fake.start})
	dir, pids, addrs := l.Dir(), l.PIDs(), l.Addrs()
	info := l.Info()
	if info.PG.Proxy != appDSN(fake.pg.Addr().String()) || info.LDAP.Proxy != "ldap://"+fake.ldap.Addr().String() ||
		info.Admin != "http://"+fake.admin.Addr().String() {
		t.Fatalf("proxy endpoints in Info: %+v %+v %q", info.PG, info.LDAP, info.Admin)
	}
	if !fake.sawReplica {
		t.Fatal("Options.Proxy ran before the replica answered")
	}
	if len(pids) != 5 {
		t.Fatalf("PIDs %v, want 5 servers", pids)
	}
	for _, a := range addrs {
		if !listening(a) {
			t.Fatalf("%s does not listen while the lab runs", a)
		}
	}

	// A second lab in a live lab's directory is refused, not clobbered.
	if _, err := Start(ctx, Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "still runs") {
		t.Fatalf("second lab in a live lab's directory: %v, want a refusal", err)
	}

	start := time.Now()
	if err := l.Failover(ctx); err != nil {
		t.Fatalf("failover: %v", err)
	}
	t.Logf("failover (stop primary, promote, re-point spoke) took %s", time.Since(start))
	newHub := connect(t, appDSN(l.HubStandbyPGAddr()))
	replica := connect(t, l.ReplicaAppDSN())
	body := fmt.Sprintf("after failover %d", time.Now().UnixNano())
	insertNote(t, newHub, body)
	took := eventually(t, 10*time.Second, "row from the promoted hub on the spoke", func() (bool, error) { return noteExists(replica, body) })
	t.Logf("write on the promoted hub visible on the spoke after %s", took)
	if err := l.WaitReplicaCaughtUp(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	newHub.Close(ctx)
	replica.Close(ctx)

	// Every process of the lab: servers and their children (PostgreSQL's
	// run in their own process groups).
	var everyPID []int
	for _, pid := range l.PIDs() {
		everyPID = append(everyPID, pid)
		everyPID = append(everyPID, descendants(pid)...)
	}
	if len(everyPID) < 15 {
		t.Fatalf("lab processes %v: want the servers and PostgreSQL's children", everyPID)
	}
	start = time.Now()
	if err := l.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	t.Logf("close took %s", time.Since(start))
	if !fake.closed {
		t.Fatal("Close did not close the proxy")
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process group %d still alive after Close", pid)
		}
	}
	if anyAlive(everyPID) {
		t.Errorf("some of the lab's processes %v are alive after Close", everyPID)
	}
	for _, a := range addrs {
		if listening(a) {
			t.Errorf("%s still listens after Close", a)
		}
	}
	if n := processesUsing(t, dir); n != 0 {
		t.Errorf("%d processes still use %s after Close", n, dir)
	}
	// No goroutine of the lab (process waiters, toxiproxy links and API)
	// outlives Close; the shared lab's are steady meanwhile.
	for deadline := time.Now().Add(3 * time.Second); runtime.NumGoroutine() > goroutinesBefore; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Close, %d before the lab:\n%s", runtime.NumGoroutine(), goroutinesBefore, buf[:runtime.Stack(buf, true)])
		}
	}
}

func TestStartFailureReportsLogAndCleansUp(t *testing.T) {
	seed := t.TempDir()
	if err := os.WriteFile(filepath.Join(seed, "appdb.sql"), []byte("CREATE TABLE broken (;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ldif, err := os.ReadFile(filepath.Join(shared.seedDir, "seed.ldif"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(seed, "seed.ldif"), ldif, 0o644); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "spokeproxy-labfail-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := Start(ctx, Options{Dir: dir, SeedDir: seed})
	if err == nil {
		l.Close()
		t.Fatal("Start succeeded with a broken seed")
	}
	if !IsStartError(err) || !strings.Contains(err.Error(), "syntax error") {
		t.Fatalf("Start error %v, want a StartError carrying psql's syntax error", err)
	}
	t.Logf("failed Start reported: %v", err)
	if n := processesUsing(t, dir); n != 0 {
		t.Fatalf("%d processes still use %s after the failed Start", n, dir)
	}

	// The directory can serve a new lab: the failed one's entries are
	// cleared (and nothing else).
	mine := filepath.Join(dir, "keep.txt")
	if err := os.WriteFile(mine, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := clearDir(dir); err != nil {
		t.Fatalf("clear a failed lab's directory: %v", err)
	}
	left, _ := os.ReadDir(dir)
	if len(left) != 1 || left[0].Name() != "keep.txt" {
		t.Fatalf("after clearDir %s holds %v, want only keep.txt", dir, left)
	}
}

// processesUsing counts running processes whose command line mentions dir
// (postmasters via -D, slapd via -f).
func processesUsing(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(cmdline), dir) {
			n++
		}
	}
	return n
}

func TestWANToxics(t *testing.T) {
	t.Cleanup(func() {
		if err := shared.ResetWAN(); err != nil {
			t.Errorf("reset WAN: %v", err)
		}
	})
	ctx := context.Background()
	wanConn := connect(t, shared.WANAppDSN())
	roundTrip := func() time.Duration {
		start := time.Now()
		var one int
		if err := wanConn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("SELECT 1 through the WAN: %v", err)
		}
		return time.Since(start)
	}
	if err := shared.AddLatency(LinkPG, 25*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	slow := roundTrip()
	if slow < 50*time.Millisecond {
		t.Fatalf("SELECT 1 through 25 ms each way took %s, want at least 50 ms", slow)
	}
	if err := shared.ClearToxics(LinkPG); err != nil {
		t.Fatal(err)
	}
	fast := roundTrip()
	t.Logf("SELECT 1 through wan_pg: %s with 25 ms each way, %s without", slow, fast)
	p, err := shared.Toxiproxy().Proxy(LinkPG)
	if err != nil {
		t.Fatal(err)
	}
	if toxics, err := p.Toxics(); err != nil || len(toxics) != 0 {
		t.Fatalf("toxics left on %s after ClearToxics: %+v, %v", LinkPG, toxics, err)
	}

	// A blackhole accepts TCP but never answers: a search under a deadline
	// times out instead of failing fast.
	if err := shared.Blackhole(LinkLDAP); err != nil {
		t.Fatal(err)
	}
	c, err := ldap.DialURL(shared.WANLDAPURL())
	if err != nil {
		t.Fatalf("TCP connect through a blackhole should succeed: %v", err)
	}
	defer c.Close()
	c.SetTimeout(300 * time.Millisecond)
	_, err = c.Search(ldap.NewSearchRequest(BaseDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, 1, false, "(objectClass=*)", []string{"1.1"}, nil))
	if err == nil {
		t.Fatal("search through a blackholed link answered")
	}
	if err := shared.ResetWAN(); err != nil {
		t.Fatal(err)
	}
	if err := ldapSearchBase(ctx, shared.WANLDAPURL(), BaseDN); err != nil {
		t.Fatalf("search through the reset link: %v", err)
	}
}

func TestLDAPWaitCaughtUp(t *testing.T) {
	provider := ldapConn(t, shared.HubLDAPURL(), AdminDN, shared.AdminPassword())
	consumer := ldapConn(t, shared.ReplicaLDAPURL(), "", "")
	dn := addPerson(t, provider, fmt.Sprintf("wait%d", time.Now().UnixNano()))
	if err := shared.WaitLDAPReplicaCaughtUp(context.Background(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if ok, err := entryExists(consumer, dn); !ok || err != nil {
		t.Fatalf("entry absent on the consumer after WaitLDAPReplicaCaughtUp: %v", err)
	}
}

func TestProxyConfigYAML(t *testing.T) {
	var cfg struct {
		Site     string `yaml:"site"`
		Postgres struct {
			Listen  string `yaml:"listen"`
			Replica struct {
				Address string `yaml:"address"`
			} `yaml:"replica"`
			Hubs []struct {
				Address string `yaml:"address"`
			} `yaml:"hubs"`
			Auth struct {
				User         string `yaml:"user"`
				PasswordFile string `yaml:"password_file"`
			} `yaml:"auth"`
		} `yaml:"postgres"`
		LDAP struct {
			Listen  string `yaml:"listen"`
			BaseDN  string `yaml:"base_dn"`
			Replica struct {
				URL string `yaml:"url"`
			} `yaml:"replica"`
			Hubs []struct {
				URL string `yaml:"url"`
			} `yaml:"hubs"`
		} `yaml:"ldap"`
		Admin struct {
			Listen string `yaml:"listen"`
		} `yaml:"admin"`
		Link struct {
			ProbeInterval time.Duration `yaml:"probe_interval"`
			ProbeTimeout  time.Duration `yaml:"probe_timeout"`
			DownAfter     int           `yaml:"down_after"`
			UpAfter       int           `yaml:"up_after"`
		} `yaml:"link"`
	}
	if err := yaml.Unmarshal(shared.ProxyConfigYAML("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"), &cfg); err != nil {
		t.Fatal(err)
	}
	pg, ld := cfg.Postgres, cfg.LDAP
	if pg.Listen != "127.0.0.1:1" || ld.Listen != "127.0.0.1:2" || cfg.Admin.Listen != "127.0.0.1:3" {
		t.Fatalf("listen addresses %q %q %q", pg.Listen, ld.Listen, cfg.Admin.Listen)
	}
	if pg.Replica.Address != shared.ReplicaPGAddr() || len(pg.Hubs) != 1 || pg.Hubs[0].Address != shared.WANPGAddr() {
		t.Fatalf("postgres replica %q hubs %+v: want the standby direct and the hub through wan_pg", pg.Replica.Address, pg.Hubs)
	}
	if pg.Auth.User != AuthUser || pg.Auth.PasswordFile != shared.AuthPasswordFile() {
		t.Fatalf("postgres auth %+v", pg.Auth)
	}
	if ld.BaseDN != BaseDN || ld.Replica.URL != shared.ReplicaLDAPURL() || len(ld.Hubs) != 1 || ld.Hubs[0].URL != shared.WANLDAPURL() {
		t.Fatalf("ldap section %+v: want the consumer direct and the provider through wan_ldap", ld)
	}
	// Functional tests must survive probe stalls on a loaded machine: a
	// probe timeout of 1 s and three failures to go down. spokeproxy's
	// config refuses a timeout above four intervals.
	link := cfg.Link
	if link.ProbeTimeout != time.Second || link.DownAfter != 3 || link.UpAfter != 2 || link.ProbeInterval <= 0 || link.ProbeTimeout > 4*link.ProbeInterval {
		t.Fatalf("link settings %+v: want a 1 s probe timeout, down_after 3, up_after 2, and a timeout of at most four intervals", link)
	}
}

// fakeProxy stands in for spokeproxy: it listens where a proxy would and
// records that the lab called and closed it.
type fakeProxy struct {
	pg, ldap, admin net.Listener
	sawReplica      bool
	closed          bool
}

func (f *fakeProxy) start(ctx context.Context, l *Lab) (ProxyEndpoints, io.Closer, error) {
	var err error
	for _, ln := range []*net.Listener{&f.pg, &f.ldap, &f.admin} {
		if *ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return ProxyEndpoints{}, nil, err
		}
	}
	conn, err := pgx.Connect(ctx, l.ReplicaAppDSN())
	if err == nil {
		f.sawReplica = true
		conn.Close(ctx)
	}
	return ProxyEndpoints{PG: f.pg.Addr().String(), LDAP: f.ldap.Addr().String(), Admin: f.admin.Addr().String()}, f, nil
}

func (f *fakeProxy) Close() error {
	f.closed = true
	return errors.Join(f.pg.Close(), f.ldap.Close(), f.admin.Close())
}

// TestReplicationDelays measures commit-to-visible on the spoke for both
// stores through the (toxic-free) WAN link and logs p50 and max. It
// asserts only that every write arrives; the figures are for the reader.
func TestReplicationDelays(t *testing.T) {
	const samples = 20
	measure := func(what string, write func(i int), visible func(i int) (bool, error)) {
		delays := make([]time.Duration, 0, samples)
		for i := range samples {
			start := time.Now()
			write(i)
			for {
				ok, err := visible(i)
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				if ok {
					break
				}
				if time.Since(start) > 5*time.Second {
					t.Fatalf("%s: sample %d not visible within 5 s", what, i)
				}
			}
			delays = append(delays, time.Since(start))
		}
		slices.Sort(delays)
		t.Logf("%s: write to visible on the spoke, %d samples: p50 %s, max %s", what, samples, delays[samples/2], delays[samples-1])
	}

	ctx := context.Background()
	hub := connect(t, shared.HubAppDSN())
	replica := connect(t, shared.ReplicaAppDSN())
	tag := time.Now().UnixNano()
	measure("PostgreSQL", func(i int) {
		insertNote(t, hub, fmt.Sprintf("delay %d %d", tag, i))
	}, func(i int) (bool, error) {
		var n int
		err := replica.QueryRow(ctx, "SELECT count(*) FROM notes WHERE body = $1", fmt.Sprintf("delay %d %d", tag, i)).Scan(&n)
		return n == 1, err
	})

	provider := ldapConn(t, shared.HubLDAPURL(), AdminDN, shared.AdminPassword())
	consumer := ldapConn(t, shared.ReplicaLDAPURL(), "", "")
	measure("LDAP", func(i int) {
		addPerson(t, provider, fmt.Sprintf("delay%d-%d", tag, i))
	}, func(i int) (bool, error) {
		return entryExists(consumer, fmt.Sprintf("uid=delay%d-%d,ou=people,%s", tag, i, BaseDN))
	})
}

// TestStopKillsStubbornServerAndChildren covers the kill path of stop: a
// server that ignores its stop signal and has a child in another session
// (as PostgreSQL's backends are) is killed with every descendant.
func TestStopKillsStubbornServerAndChildren(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "stubborn.log")
	p, err := startProcess("stubborn", logPath, syscall.SIGTERM, nil, t.TempDir(), childEnv(),
		"/bin/sh", "-c", "trap '' TERM; setsid sleep 300 & echo started; wait")
	if err != nil {
		t.Fatal(err)
	}
	var kids []int
	for deadline := time.Now().Add(5 * time.Second); len(kids) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the child never started")
		}
		kids = descendants(p.pid())
	}
	err = p.stop(200 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "was killed") {
		t.Fatalf("stop: %v, want it to report the kill", err)
	}
	if !p.exited() || anyAlive(kids) {
		t.Fatalf("after stop: exited %v, children %v alive %v", p.exited(), kids, anyAlive(kids))
	}
	if err2 := p.stop(time.Second); err2 != err {
		t.Fatalf("second stop: %v, want the first result %v", err2, err)
	}
}

// TestCrashIsRecorded: a server that dies of a signal nobody sent it is
// reported as crashed and says how at the end of its log; one the lab
// stopped is not.
func TestCrashIsRecorded(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "crashy.log")
	p, err := startProcess("crashy", logPath, syscall.SIGTERM, nil, t.TempDir(), childEnv(),
		"/bin/sh", "-c", "echo started; kill -SEGV $$")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the process did not die")
	}
	how, crashed := p.crashed()
	if !crashed || how != "signal: segmentation fault" {
		t.Fatalf("crashed() = %q, %v; want \"signal: segmentation fault\", true", how, crashed)
	}
	log, _ := os.ReadFile(logPath)
	if !strings.Contains(string(log), "--- lab: crashy (pid ") || !strings.Contains(string(log), "ended without being asked to: signal: segmentation fault") {
		t.Fatalf("log does not say how the server ended:\n%s", log)
	}

	stopped, err := startProcess("stopped", filepath.Join(t.TempDir(), "stopped.log"), syscall.SIGTERM, nil, t.TempDir(), childEnv(), "/bin/sleep", "300")
	if err != nil {
		t.Fatal(err)
	}
	if err := stopped.stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if how, crashed := stopped.crashed(); crashed {
		t.Fatalf("a server the lab stopped counts as crashed (%s)", how)
	}
	log, _ = os.ReadFile(stopped.logPath)
	if strings.Contains(string(log), "ended without") {
		t.Fatalf("a server the lab stopped logged an unexpected end:\n%s", log)
	}
}

func TestSummaryTellsWhatToTry(t *testing.T) {
	s := shared.Summary()
	info := shared.Info()
	for _, want := range []string{
		"psql '" + info.PG.Replica + "'",
		"ldapsearch -x -H " + info.LDAP.Replica,
		"curl -s -X POST " + info.WAN.API + "/proxies/" + LinkPG + " -d '{\"enabled\":false}'",
		"toxiproxy-cli -h " + info.WAN.API,
		info.PG.Hub, info.LDAP.Hub, shared.Dir(),
	} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, shared.AuthPassword()) {
		t.Error("summary shows the auth role's password")
	}
}

// A -dir the postgres user cannot reach is refused, and removed again when
// the lab made it (an existing one is left alone).
func TestMakeDirLeavesNoUnusableDirBehind(t *testing.T) {
	parent := t.TempDir()
	if err := os.Chmod(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	as := &runAs{uid: 65534, gid: 65534} // not the owner: o+x is what counts
	made := filepath.Join(parent, "new")
	l := &Lab{as: as}
	if err := l.makeDir(made); err == nil || !strings.Contains(err.Error(), "not searchable by the postgres user") {
		t.Fatalf("makeDir under a 0700 directory: %v, want it refused as not searchable", err)
	}
	if _, err := os.Stat(made); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the refused directory %s was left behind (stat: %v)", made, err)
	}
	existing := filepath.Join(parent, "existing")
	if err := os.Mkdir(existing, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := (&Lab{as: as}).makeDir(existing); err == nil {
		t.Fatal("makeDir of an existing directory under a 0700 one succeeded")
	}
	if _, err := os.Stat(existing); err != nil {
		t.Errorf("an existing -dir was removed: %v", err)
	}
}
