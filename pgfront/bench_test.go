package pgfront

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spokeproxy/spokeproxy/lab"
)

// pgbenchRun runs pgbench against addr as the app role and returns its
// tps and the number of transactions it processed.
func pgbenchRun(tb testing.TB, addr string, args ...string) (tps float64, txns int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.CommandContext(ctx, filepath.Join(pgBin, "pgbench"), args...)
	cmd.Env = append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER="+lab.AppUser,
		"PGPASSWORD="+lab.AppPassword, "PGDATABASE="+lab.AppDatabase, "PGSSLMODE=disable")
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("pgbench %v: %v\n%s", args, err, out)
	}
	if args[0] == "-i" {
		return 0, 0
	}
	m := regexp.MustCompile(`tps = ([0-9.]+)`).FindSubmatch(out)
	n := regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`).FindSubmatch(out)
	if m == nil || n == nil {
		tb.Fatalf("pgbench %v: no tps in\n%s", args, out)
	}
	tps, _ = strconv.ParseFloat(string(m[1]), 64)
	txns, _ = strconv.Atoi(string(n[1]))
	return tps, txns
}

// selfCPU is the CPU time (user and system) this process has used: the
// proxy, and the lab's embedded WAN proxy and probes, which -S leaves idle.
func selfCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is the CPU time (user and system) process pid has used, from
// /proc/PID/stat in clock ticks of 10 ms (USER_HZ on Linux).
func procCPU(tb testing.TB, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	ut, _ := strconv.Atoi(f[11]) // fields 14 and 15 of stat, counted after "pid (comm) "
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// selfMallocs is the number of heap allocations this process has made.
func selfMallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

func loadAvg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(raw))[:3], " ")
}

// BenchmarkPGBenchSelect compares pgbench -S through the proxy with the
// same directly against the standby and through PgBouncer (transaction
// pooling) in front of it, interleaved in one run, and reports the CPU
// each proxy spends per transaction (less sensitive to the machine's
// load than tps): go test ./pgfront -run XXX -bench PGBenchSelect
// PGFRONT_BENCH_MODES=simple,extended picks the modes (default all three);
// PGFRONT_BENCH_SECONDS sets each pgbench run's length (default 2),
// PGFRONT_BENCH_ROUNDS the number of interleaved rounds (default 2),
// PGFRONT_BENCH_CLIENTS pgbench's -c (default 8).
func BenchmarkPGBenchSelect(b *testing.B) {
	l := lab.ForTest(b, lab.Options{})
	f := startFrontTB(b, l, nil)
	pgbenchRun(b, f.addr, "-i", "-s", "1", "-q")
	time.Sleep(500 * time.Millisecond) // let the standby replay the init
	modes := []string{"simple", "extended", "prepared"}
	if m := os.Getenv("PGFRONT_BENCH_MODES"); m != "" {
		modes = strings.Split(m, ",")
	}
	env := func(name, def string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return def
	}
	secs := env("PGFRONT_BENCH_SECONDS", "2")
	clients := env("PGFRONT_BENCH_CLIENTS", "8")
	rounds, err := strconv.Atoi(env("PGFRONT_BENCH_ROUNDS", "2"))
	if err != nil || rounds < 1 {
		b.Fatalf("PGFRONT_BENCH_ROUNDS: %q", os.Getenv("PGFRONT_BENCH_ROUNDS"))
	}
	bouncer, bouncerPID := startPgBouncer(b, l.ReplicaPGAddr())
	b.Logf("load average before: %s", loadAvg())
	perTxn := func(d time.Duration, n int) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(max(n, 1)) }
	var summary strings.Builder
	fmt.Fprintf(&summary, "pgbench -S -c %s -j 2 -T %s, %d interleaved rounds (tps: mean of rounds; CPU: µs per transaction; allocs: heap allocations per transaction in the proxy's process)\n", clients, secs, rounds)
	fmt.Fprintf(&summary, "%-9s %9s %9s %9s %10s %10s %10s %10s %9s %7s\n", "mode", "direct", "proxy", "pgbouncer", "proxy/dir", "pgb/dir", "proxy/pgb", "proxy CPU", "pgb CPU", "allocs")
	for _, mode := range modes {
		args := []string{"-S", "-n", "-M", mode, "-c", clients, "-j", "2", "-T", secs}
		// PgBouncer 1.18 in transaction mode cannot run -M prepared (no
		// max_prepared_statements).
		withBouncer := mode != "prepared"
		var direct, proxied, pgb float64
		var proxiedTxns, pgbTxns int
		var proxiedCPU, pgbCPU time.Duration
		var proxiedMallocs uint64
		for round := 0; round < rounds; round++ {
			tps, _ := pgbenchRun(b, l.ReplicaPGAddr(), args...)
			direct += tps
			before, mallocs := selfCPU(b), selfMallocs()
			tps, n := pgbenchRun(b, f.addr, args...)
			proxiedCPU += selfCPU(b) - before
			proxiedMallocs += selfMallocs() - mallocs
			proxied += tps
			proxiedTxns += n
			if withBouncer {
				before := procCPU(b, bouncerPID)
				tps, n := pgbenchRun(b, bouncer, args...)
				pgbCPU += procCPU(b, bouncerPID) - before
				pgb += tps
				pgbTxns += n
			}
		}
		r := float64(rounds)
		b.ReportMetric(proxied/direct, mode+"-vs-direct")
		b.ReportMetric(perTxn(proxiedCPU, proxiedTxns), mode+"-cpu-µs/txn")
		allocs := float64(proxiedMallocs) / float64(max(proxiedTxns, 1))
		b.ReportMetric(allocs, mode+"-allocs/txn")
		if withBouncer {
			b.ReportMetric(proxied/pgb, mode+"-vs-pgbouncer")
			b.ReportMetric(perTxn(pgbCPU, pgbTxns), mode+"-pgbouncer-cpu-µs/txn")
			fmt.Fprintf(&summary, "%-9s %9.0f %9.0f %9.0f %10.2f %10.2f %10.2f %10.1f %9.1f %7.1f\n", mode,
				direct/r, proxied/r, pgb/r, proxied/direct, pgb/direct, proxied/pgb, perTxn(proxiedCPU, proxiedTxns), perTxn(pgbCPU, pgbTxns), allocs)
		} else {
			fmt.Fprintf(&summary, "%-9s %9.0f %9.0f %9s %10.2f %10s %10s %10.1f %9s %7.1f\n", mode,
				direct/r, proxied/r, "-", proxied/direct, "-", "-", perTxn(proxiedCPU, proxiedTxns), "-", allocs)
		}
	}
	b.Logf("load average after: %s", loadAvg())
	b.Logf("targets: proxy/direct >= 0.85, proxy/pgb >= 1.00 (proxy CPU includes the lab's probes)\n%s", summary.String())
}

// BenchmarkPGWANWrite measures, with the lab's WAN at 25 ms each way, an
// autocommit INSERT through the proxy in a warm session against the same
// on a warm direct hub connection (read-your-writes tracking must cost no
// WAN round trip), and a new session's first write both ways:
// go test ./pgfront -run XXX -bench PGWANWrite -benchtime 1x
func BenchmarkPGWANWrite(b *testing.B) {
	l := lab.ForTest(b, lab.Options{})
	f := startFrontTB(b, l, nil)
	if err := l.AddLatency(lab.LinkPG, 25*time.Millisecond); err != nil {
		b.Fatal(err)
	}
	f.waitHub(b, true)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const insert = "INSERT INTO notes (account_id, body) VALUES (1, 'bench')"
	connect := func(dsn string) *pgx.Conn {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	proxied := connect(f.dsn(lab.AppUser, lab.AppPassword))
	defer proxied.Close(ctx)
	direct := connect(l.WANAppDSN())
	defer direct.Close(ctx)
	timeOne := func(c *pgx.Conn) time.Duration {
		start := time.Now()
		if _, err := c.Exec(ctx, insert); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	timeOne(proxied) // attach the hub connection
	timeOne(direct)
	var dp, dd []time.Duration
	for i := 0; i < 15; i++ {
		dp = append(dp, timeOne(proxied))
		dd = append(dd, timeOne(direct))
	}
	mp, md := median(dp), median(dd)
	b.Logf("warm autocommit INSERT over a 25 ms WAN: through spokeproxy %v, direct to the hub %v, ratio %.3f",
		mp.Round(100*time.Microsecond), md.Round(100*time.Microsecond), float64(mp)/float64(md))
	b.ReportMetric(float64(mp)/float64(md), "warm-insert-ratio")

	var fp, fd []time.Duration
	for i := 0; i < 5; i++ {
		start := time.Now()
		c := connect(f.dsn(lab.AppUser, lab.AppPassword))
		timeOne(c)
		fp = append(fp, time.Since(start))
		c.Close(ctx)
		start = time.Now()
		c = connect(l.WANAppDSN())
		timeOne(c)
		fd = append(fd, time.Since(start))
		c.Close(ctx)
	}
	b.Logf("new session, connect + first INSERT: through spokeproxy %v, direct to the hub %v",
		median(fp).Round(time.Millisecond), median(fd).Round(time.Millisecond))
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

// startPgBouncer runs Debian's pgbouncer (transaction pooling) in front of
// the standby, as the postgres user, and returns its address.
func startPgBouncer(tb testing.TB, replica string) (addr string, pid int) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr = ln.Addr().String()
	ln.Close()
	host, port, _ := net.SplitHostPort(replica)
	_, lport, _ := net.SplitHostPort(addr)
	dir := tb.TempDir()
	pgUser, err := user.Lookup("postgres")
	if err != nil {
		tb.Fatal(err)
	}
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)
	ini := "[databases]\nappdb = host=" + host + " port=" + port + " dbname=appdb\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = " + lport +
		"\nauth_type = scram-sha-256\nauth_file = " + filepath.Join(dir, "users.txt") + "\npool_mode = transaction\nmax_client_conn = 100\ndefault_pool_size = 20\nunix_socket_dir =\nlogfile = " + filepath.Join(dir, "pgbouncer.log") + "\n"
	files := map[string]string{"pgbouncer.ini": ini, "users.txt": `"app" "apppass"` + "\n"}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			tb.Fatal(err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			tb.Fatal(err)
		}
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		tb.Fatal(err)
	}
	_ = os.Chmod(filepath.Dir(dir), 0o711)
	cmd := exec.Command("/usr/sbin/pgbouncer", filepath.Join(dir, "pgbouncer.ini"))
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("pgbouncer: %v", err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr, cmd.Process.Pid
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			tb.Fatalf("pgbouncer did not listen on %s:\n%s", addr, log)
		}
	}
}
