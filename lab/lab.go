package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	toxiclient "github.com/Shopify/toxiproxy/v2/client"
)

// Options configure Start.
type Options struct {
	// Dir is the lab's working directory; every server's data, config and
	// log lives under it. "" means a new temporary directory, removed by
	// Close. A given directory is kept (logs stay for a post-mortem).
	Dir string
	// Logger receives the lab's progress; nil discards it.
	Logger *slog.Logger
	// HubStandby also starts a hub-site PostgreSQL standby streaming
	// directly from the hub primary, reachable from the spoke through the
	// wan_pg_2 link, for failover tests (see Failover).
	HubStandby bool
	// SeedDir holds appdb.sql and seed.ldif; "" means testdata/lab of the
	// source tree, found from the working directory upwards or from this
	// package's source location.
	SeedDir string
	// HubLDAPIdleTimeout, when set, is the hub slapd's idletimeout (whole
	// seconds): it closes client connections idle that long, as many
	// production providers are configured to.
	HubLDAPIdleTimeout time.Duration
	// Proxy, when set, starts spokeproxy once the stores are ready (it will
	// usually write l.ProxyConfigYAML to a file and serve it). Close closes
	// what it returns first.
	Proxy func(ctx context.Context, l *Lab) (ProxyEndpoints, io.Closer, error)
}

// ProxyEndpoints are the host:port addresses spokeproxy listens on; "" for a
// front that is not running.
type ProxyEndpoints struct {
	PG    string
	LDAP  string
	Admin string
}

// Lab is a running hub-and-spoke topology. Its accessors are safe for
// concurrent use; Close stops everything.
type Lab struct {
	dir        string
	createdDir bool
	log        *slog.Logger
	as         *runAs
	bins       map[string]string
	seedDir    string
	took       time.Duration

	// Secrets generated per lab (hex, so they need no quoting anywhere).
	authPassword      string
	replPassword      string
	ldapAdminPassword string
	ldapAdminHash     string
	authPasswordFile  string

	pgRoot        string
	sockDir       string
	removeSockDir bool
	pgPassFile    string
	hubPG         *pgCluster
	spokePG       *pgCluster
	hub2PG        *pgCluster // nil without Options.HubStandby

	hubLDAP   *slapdServer
	spokeLDAP *slapdServer

	wan         *wan
	wanPGAddr   string
	wanLDAPAddr string
	wanPG2Addr  string

	proxy       ProxyEndpoints
	proxyCloser io.Closer

	mu       sync.Mutex // guards promoted and every server's proc field
	promoted bool       // the hub-site standby is the primary now

	// ctlMu serialises the control methods (control.go) with each other
	// and with Close; closed is set by Close under it.
	ctlMu  sync.Mutex
	closed bool

	closeOnce sync.Once
	closeErr  error
}

// Start brings the whole lab up and returns once every server answers real
// requests and the seed has replicated to the spoke. On failure everything
// already started is stopped again and the error says which component
// failed, with its log's tail.
func Start(ctx context.Context, opts Options) (*Lab, error) {
	start := time.Now()
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	bins, err := checkPrerequisites()
	if err != nil {
		return nil, err
	}
	as, err := postgresUser()
	if err != nil {
		return nil, err
	}
	seedDir, err := findSeedDir(opts.SeedDir)
	if err != nil {
		return nil, err
	}
	// Ports are picked free and bound a moment later by the servers; when
	// several labs start at once (parallel test packages) one may lose a
	// port to another. That start is retried with new ports.
	for attempt := 1; ; attempt++ {
		l := &Lab{log: logger, bins: bins, as: as, seedDir: seedDir}
		if err := l.makeDir(opts.Dir); err != nil {
			return nil, err
		}
		err := l.up(ctx, opts)
		if err == nil {
			l.took = time.Since(start)
			l.log.Info("lab up", "dir", l.dir, "took", l.took.Round(time.Millisecond))
			return l, nil
		}
		closeErr := l.Close()
		if attempt < 3 && ctx.Err() == nil && closeErr == nil && addrInUse(err) {
			l.log.Warn("lab: a port was taken meanwhile; starting again with new ports", "err", err)
			continue
		}
		return nil, errors.Join(err, closeErr)
	}
}

// addrInUse reports whether a start failed because a server could not bind
// its port (PostgreSQL and slapd both print the errno text).
func addrInUse(err error) bool {
	return strings.Contains(strings.ToLower(err.Error()), "address already in use")
}

// labEntries are the names the lab creates in its directory; a reused
// directory is cleared of them (and only them) before a start.
var labEntries = []string{"pg", "ldap", "pg-hub.log", "pg-spoke.log", "pg-hub2.log", "ldap-hub.log", "ldap-spoke.log",
	"toxiproxy.log", "pg-auth.password", "lab.json", "lab.json.tmp"}

// clearDir removes a previous lab's entries from dir, refusing if that lab
// still runs.
func clearDir(dir string) error {
	for _, pidFile := range []string{"pg/hub/postmaster.pid", "pg/spoke/postmaster.pid", "pg/hub2/postmaster.pid", "ldap/hub/slapd.pid", "ldap/spoke/slapd.pid"} {
		data, err := os.ReadFile(filepath.Join(dir, pidFile))
		if err != nil {
			continue
		}
		first, _, _ := strings.Cut(string(data), "\n")
		if pid, err := strconv.Atoi(strings.TrimSpace(first)); err == nil && pid > 0 && syscall.Kill(pid, 0) == nil {
			return fmt.Errorf("lab: a lab still runs in %s (%s names live pid %d): stop it or choose another directory", dir, pidFile, pid)
		}
	}
	for _, name := range labEntries {
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("lab: clear %s: %w", dir, err)
		}
	}
	return nil
}

// makeDir creates or adopts the lab directory and makes it reachable by the
// postgres user when running as root.
func (l *Lab) makeDir(dir string) (err error) {
	// A directory made here that turns out unusable (not reachable by the
	// postgres user) is not left behind.
	made := ""
	defer func() {
		if err != nil && made != "" {
			os.Remove(made)
		}
	}()
	if dir == "" {
		d, err := os.MkdirTemp("", "spokeproxy-lab-")
		if err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		dir, made, l.createdDir = d, d, true
	} else {
		if _, statErr := os.Stat(dir); errors.Is(statErr, fs.ErrNotExist) {
			made = dir
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		if err := clearDir(dir); err != nil {
			return err
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	l.dir = abs
	if l.as != nil {
		fi, err := os.Stat(abs)
		if err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		if err := os.Chmod(abs, fi.Mode().Perm()|0o011); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
	}
	return ensureTraversable(l.dir, l.as)
}

// up starts every component: the WAN first (the spoke reaches the hub only
// through it), then the PostgreSQL and LDAP chains in parallel, then the
// proxy.
func (l *Lab) up(ctx context.Context, opts Options) error {
	var err error
	if l.authPassword, err = secret(); err != nil {
		return err
	}
	if l.replPassword, err = secret(); err != nil {
		return err
	}
	if l.ldapAdminPassword, err = secret(); err != nil {
		return err
	}
	l.ldapAdminHash = sshaHash(l.ldapAdminPassword)
	l.authPasswordFile = filepath.Join(l.dir, "pg-auth.password")
	if err := os.WriteFile(l.authPasswordFile, []byte(l.authPassword+"\n"), 0o600); err != nil {
		return fmt.Errorf("lab: %w", err)
	}

	ports, err := freePorts(5)
	if err != nil {
		return err
	}
	l.hubPG = &pgCluster{name: "hub", dataDir: filepath.Join(l.dir, "pg", "hub"), port: ports[0], logPath: filepath.Join(l.dir, "pg-hub.log")}
	l.spokePG = &pgCluster{name: "spoke", dataDir: filepath.Join(l.dir, "pg", "spoke"), port: ports[1], logPath: filepath.Join(l.dir, "pg-spoke.log")}
	l.hubLDAP = &slapdServer{name: "hub slapd", dir: filepath.Join(l.dir, "ldap", "hub"), port: ports[2], logPath: filepath.Join(l.dir, "ldap-hub.log"),
		idleTimeout: opts.HubLDAPIdleTimeout}
	l.spokeLDAP = &slapdServer{name: "spoke slapd", dir: filepath.Join(l.dir, "ldap", "spoke"), port: ports[3], logPath: filepath.Join(l.dir, "ldap-spoke.log")}
	l.hubLDAP.confPath = filepath.Join(l.hubLDAP.dir, "slapd.conf")
	l.spokeLDAP.confPath = filepath.Join(l.spokeLDAP.dir, "slapd.conf")
	if opts.HubStandby {
		l.hub2PG = &pgCluster{name: "hub2", dataDir: filepath.Join(l.dir, "pg", "hub2"), port: ports[4], logPath: filepath.Join(l.dir, "pg-hub2.log")}
	}

	if l.wan, err = startWAN(filepath.Join(l.dir, "toxiproxy.log")); err != nil {
		return err
	}
	if l.wanPGAddr, err = l.wan.addLink(LinkPG, l.hubPG.addr()); err != nil {
		return err
	}
	if l.wanLDAPAddr, err = l.wan.addLink(LinkLDAP, l.hubLDAP.addr()); err != nil {
		return err
	}
	if l.hub2PG != nil {
		if l.wanPG2Addr, err = l.wan.addLink(LinkPG2, l.hub2PG.addr()); err != nil {
			return err
		}
	}
	l.log.Info("WAN up", "api", l.wan.apiURL(), LinkPG, l.wanPGAddr, LinkLDAP, l.wanLDAPAddr)

	if err := l.preparePG(); err != nil {
		return err
	}
	// The two chains run in parallel; the first failure cancels the other,
	// whose resulting error is noise and is dropped.
	chainCtx, cancelChains := context.WithCancel(ctx)
	defer cancelChains()
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	run := func(chain func(context.Context) error) {
		if err := chain(chainCtx); err != nil {
			once.Do(func() { firstErr = err; cancelChains() })
		}
	}
	wg.Go(func() { run(l.upPG) })
	wg.Go(func() { run(l.upLDAP) })
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}

	if opts.Proxy != nil {
		ep, closer, err := opts.Proxy(ctx, l)
		if err != nil {
			return fmt.Errorf("lab: start spokeproxy: %w", err)
		}
		l.proxy, l.proxyCloser = ep, closer
		l.log.Info("spokeproxy up", "pg", ep.PG, "ldap", ep.LDAP, "admin", ep.Admin)
	}
	return nil
}

func (l *Lab) upPG(ctx context.Context) error {
	t := time.Now()
	if err := l.startHubPG(ctx); err != nil {
		return err
	}
	l.log.Info("hub PostgreSQL up", "addr", l.hubPG.addr(), "took", time.Since(t).Round(time.Millisecond))
	var wg sync.WaitGroup
	var spokeErr, hub2Err error
	wg.Go(func() { spokeErr = l.startStandby(ctx, l.spokePG, l.wanPGAddr, spokeSlot) })
	if l.hub2PG != nil {
		wg.Go(func() { hub2Err = l.startStandby(ctx, l.hub2PG, l.hubPG.addr(), hubStandbySlot) })
	}
	wg.Wait()
	if err := errors.Join(spokeErr, hub2Err); err != nil {
		return err
	}
	l.log.Info("spoke PostgreSQL standby streaming", "addr", l.spokePG.addr(), "took", time.Since(t).Round(time.Millisecond))
	return nil
}

func (l *Lab) upLDAP(ctx context.Context) error {
	t := time.Now()
	if err := l.startHubLDAP(ctx); err != nil {
		return err
	}
	l.log.Info("hub slapd up", "url", l.hubLDAP.url(), "took", time.Since(t).Round(time.Millisecond))
	if err := l.startSpokeLDAP(ctx); err != nil {
		return err
	}
	l.log.Info("spoke slapd replicated", "url", l.spokeLDAP.url(), "took", time.Since(t).Round(time.Millisecond))
	return nil
}

// Close stops everything the lab started: the proxy first, then every
// server in parallel (PostgreSQL with a fast shutdown, slapd with SIGTERM,
// each killed after a deadline), then the WAN. It waits for every process
// and is idempotent. A temporary directory it created is removed.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() {
		// Wait for a control operation under way, and refuse later ones,
		// so no server is started after its stop below.
		l.ctlMu.Lock()
		l.closed = true
		l.ctlMu.Unlock()
		var errs []error
		if l.proxyCloser != nil {
			errs = append(errs, l.proxyCloser.Close())
		}
		var procs []*process
		for _, c := range []*pgCluster{l.spokePG, l.hub2PG, l.hubPG} {
			if c != nil && c.proc != nil {
				procs = append(procs, c.proc)
			}
		}
		for _, s := range []*slapdServer{l.spokeLDAP, l.hubLDAP} {
			if s != nil && s.proc != nil {
				procs = append(procs, s.proc)
			}
		}
		stopErrs := make([]error, len(procs))
		var wg sync.WaitGroup
		for i, p := range procs {
			wg.Go(func() { stopErrs[i] = p.stop(10 * time.Second) })
		}
		wg.Wait()
		errs = append(errs, stopErrs...)
		if l.wan != nil {
			errs = append(errs, l.wan.close())
		}
		if l.removeSockDir {
			errs = append(errs, os.RemoveAll(l.sockDir))
		}
		if l.createdDir {
			errs = append(errs, os.RemoveAll(l.dir))
		}
		l.closeErr = errors.Join(errs...)
		l.log.Info("lab stopped", "dir", l.dir, "err", l.closeErr)
	})
	return l.closeErr
}

// Info is what lab.json holds: exactly the shape issue 2 fixes. Every key
// is always present; proxy endpoints are "" until spokeproxy runs.
type Info struct {
	PG    PGInfo   `json:"pg"`
	LDAP  LDAPInfo `json:"ldap"`
	WAN   WANInfo  `json:"wan"`
	Admin string   `json:"admin"`
}

// PGInfo holds application DSNs (role app, database appdb).
type PGInfo struct {
	Proxy   string `json:"proxy"`
	Replica string `json:"replica"`
	Hub     string `json:"hub"` // the hub's own port, bypassing the WAN
}

// LDAPInfo holds LDAP URLs and the identities to try.
type LDAPInfo struct {
	Proxy         string `json:"proxy"`
	Replica       string `json:"replica"`
	Hub           string `json:"hub"` // the provider's own port, bypassing the WAN
	BaseDN        string `json:"base_dn"`
	AdminDN       string `json:"admin_dn"`
	AdminPassword string `json:"admin_password"`
	UserDN        string `json:"user_dn"`
	UserPassword  string `json:"user_password"`
}

// WANInfo locates toxiproxy's API and names the links.
type WANInfo struct {
	API      string `json:"api"`
	PGLink   string `json:"pg_link"`
	LDAPLink string `json:"ldap_link"`
}

// Info describes the running lab.
func (l *Lab) Info() Info {
	info := Info{
		PG: PGInfo{Replica: appDSN(l.spokePG.addr()), Hub: appDSN(l.hubPG.addr())},
		LDAP: LDAPInfo{
			Replica: l.spokeLDAP.url(), Hub: l.hubLDAP.url(), BaseDN: BaseDN,
			AdminDN: AdminDN, AdminPassword: l.ldapAdminPassword, UserDN: UserDN, UserPassword: UserPassword,
		},
		WAN: WANInfo{API: l.wan.apiURL(), PGLink: LinkPG, LDAPLink: LinkLDAP},
	}
	if l.proxy.PG != "" {
		info.PG.Proxy = appDSN(l.proxy.PG)
	}
	if l.proxy.LDAP != "" {
		info.LDAP.Proxy = "ldap://" + l.proxy.LDAP
	}
	if l.proxy.Admin != "" {
		info.Admin = "http://" + l.proxy.Admin
	}
	return info
}

// WriteInfo writes Info as JSON to path (mode 0600: it holds passwords),
// atomically so a reader polling for the file never sees half of it.
func (l *Lab) WriteInfo(path string) error {
	data, err := json.MarshalIndent(l.Info(), "", "  ")
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}

// appDSN is the application role's URL for a PostgreSQL address.
func appDSN(addr string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(AppUser, AppPassword), Host: addr, Path: "/" + AppDatabase}
	return u.String()
}

// Dir is the lab's working directory.
func (l *Lab) Dir() string { return l.dir }

// StartupTime is how long Start took.
func (l *Lab) StartupTime() time.Duration { return l.took }

// HubPGAddr is the hub primary's own address (bypassing the WAN).
func (l *Lab) HubPGAddr() string { return l.hubPG.addr() }

// ReplicaPGAddr is the spoke standby's address.
func (l *Lab) ReplicaPGAddr() string { return l.spokePG.addr() }

// WANPGAddr is where the spoke reaches the hub primary: the wan_pg link.
func (l *Lab) WANPGAddr() string { return l.wanPGAddr }

// HubStandbyPGAddr is the hub-site standby's own address ("" without
// Options.HubStandby).
func (l *Lab) HubStandbyPGAddr() string {
	if l.hub2PG == nil {
		return ""
	}
	return l.hub2PG.addr()
}

// WANPG2Addr is where the spoke reaches the hub-site standby: the wan_pg_2
// link ("" without Options.HubStandby).
func (l *Lab) WANPG2Addr() string { return l.wanPG2Addr }

// HubSuperDSN is a superuser DSN (keyword/value form, Unix socket, trust)
// for the hub primary and database db, for tests and checks.
func (l *Lab) HubSuperDSN(db string) string { return l.superDSN(l.hubPG, db) }

// ReplicaSuperDSN is a superuser DSN for the spoke standby.
func (l *Lab) ReplicaSuperDSN(db string) string { return l.superDSN(l.spokePG, db) }

// HubStandbySuperDSN is a superuser DSN for the hub-site standby ("" without
// Options.HubStandby).
func (l *Lab) HubStandbySuperDSN(db string) string {
	if l.hub2PG == nil {
		return ""
	}
	return l.superDSN(l.hub2PG, db)
}

// HubAppDSN, ReplicaAppDSN and WANAppDSN are the app role's URLs for the hub
// primary, the spoke standby and the hub through the WAN.
func (l *Lab) HubAppDSN() string     { return appDSN(l.hubPG.addr()) }
func (l *Lab) ReplicaAppDSN() string { return appDSN(l.spokePG.addr()) }
func (l *Lab) WANAppDSN() string     { return appDSN(l.wanPGAddr) }

// AuthPassword is the auth role's generated password; AuthPasswordFile
// holds it (mode 0600), as the proxy config wants.
func (l *Lab) AuthPassword() string     { return l.authPassword }
func (l *Lab) AuthPasswordFile() string { return l.authPasswordFile }

// HubLDAPURL is the provider's own URL (bypassing the WAN).
func (l *Lab) HubLDAPURL() string { return l.hubLDAP.url() }

// ReplicaLDAPURL is the spoke consumer's URL.
func (l *Lab) ReplicaLDAPURL() string { return l.spokeLDAP.url() }

// WANLDAPURL is where the spoke reaches the provider: the wan_ldap link.
func (l *Lab) WANLDAPURL() string { return "ldap://" + l.wanLDAPAddr }

// AdminPassword is the generated password of AdminDN on both slapds.
func (l *Lab) AdminPassword() string { return l.ldapAdminPassword }

// ToxiproxyAPI is the URL of toxiproxy's HTTP API.
func (l *Lab) ToxiproxyAPI() string { return l.wan.apiURL() }

// Toxiproxy returns a client of toxiproxy's API, for toxics beyond SetLink.
func (l *Lab) Toxiproxy() *toxiclient.Client { return toxiclient.NewClient(l.wan.apiURL()) }

// SetLink enables or disables a WAN link by name (LinkPG, LinkLDAP,
// LinkPG2). Disabling is a hard cut: live connections get EOF, new ones are
// refused.
func (l *Lab) SetLink(name string, enabled bool) error {
	p, err := l.wan.client.Proxy(name)
	if err != nil {
		return fmt.Errorf("lab: link %s: %w", name, err)
	}
	p.Enabled = enabled
	if err := p.Save(); err != nil {
		return fmt.Errorf("lab: link %s: %w", name, err)
	}
	return nil
}

// ResetWAN re-enables every link and removes every toxic, so tests sharing
// one lab start from a healthy WAN.
func (l *Lab) ResetWAN() error {
	if err := l.wan.client.ResetState(); err != nil {
		return fmt.Errorf("lab: reset WAN: %w", err)
	}
	return nil
}

// Proxy returns the spokeproxy endpoints passed back by Options.Proxy.
func (l *Lab) Proxy() ProxyEndpoints { return l.proxy }

// PIDs are the process IDs of the lab's servers (each is also its process
// group ID), in the order hub, spoke, hub2 PostgreSQL, then hub and spoke
// slapd: each server's latest process, even if it has been stopped. Use
// the control methods (StopReplicaPG, ...) to stop and start servers.
func (l *Lab) PIDs() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var pids []int
	for _, c := range []*pgCluster{l.hubPG, l.spokePG, l.hub2PG} {
		if c != nil && c.proc != nil {
			pids = append(pids, c.proc.pid())
		}
	}
	for _, s := range []*slapdServer{l.hubLDAP, l.spokeLDAP} {
		if s != nil && s.proc != nil {
			pids = append(pids, s.proc.pid())
		}
	}
	return pids
}

// Addrs are every TCP address the lab listens on (servers, links, API).
func (l *Lab) Addrs() []string {
	addrs := []string{l.hubPG.addr(), l.spokePG.addr(), l.hubLDAP.addr(), l.spokeLDAP.addr(), l.wanPGAddr, l.wanLDAPAddr, l.wan.apiAddr}
	if l.hub2PG != nil {
		addrs = append(addrs, l.hub2PG.addr(), l.wanPG2Addr)
	}
	return addrs
}

// LogFiles are the log files of the lab's servers, by component.
func (l *Lab) LogFiles() map[string]string {
	logs := map[string]string{
		"hub postgres": l.hubPG.logPath, "spoke postgres": l.spokePG.logPath,
		"hub slapd": l.hubLDAP.logPath, "spoke slapd": l.spokeLDAP.logPath,
		"toxiproxy": filepath.Join(l.dir, "toxiproxy.log"),
	}
	if l.hub2PG != nil {
		logs["hub2 postgres"] = l.hub2PG.logPath
	}
	return logs
}

func (s *slapdServer) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// secret is a fresh random password: 24 hex digits.
func secret() (string, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("lab: random: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func splitHostPort(addr string) (string, string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "", fmt.Errorf("lab: address %q: %w", addr, err)
	}
	return host, port, nil
}

// findSeedDir locates testdata/lab: the given directory, else upwards from
// the working directory (tests run in their package's directory, `make lab`
// in the module root), else next to this source file.
func findSeedDir(given string) (string, error) {
	has := func(d string) bool {
		_, e1 := os.Stat(filepath.Join(d, "appdb.sql"))
		_, e2 := os.Stat(filepath.Join(d, "seed.ldif"))
		return e1 == nil && e2 == nil
	}
	if given != "" {
		if !has(given) {
			return "", fmt.Errorf("lab: seed directory %s lacks appdb.sql or seed.ldif", given)
		}
		return filepath.Abs(given)
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			if c := filepath.Join(d, "testdata", "lab"); has(c) {
				return c, nil
			}
			if d == filepath.Dir(d) {
				break
			}
		}
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		if c := filepath.Join(filepath.Dir(file), "..", "testdata", "lab"); has(c) {
			return filepath.Clean(c), nil
		}
	}
	return "", errors.New("lab: cannot find testdata/lab (appdb.sql, seed.ldif): run from the source tree or name the directory (spokeproxy lab -seed DIR, Options.SeedDir)")
}
