package pgfront

import (
	"context"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spokeproxy/spokeproxy/lab"
)

// pgbenchTPS runs pgbench against addr as the app role and returns its tps.
func pgbenchTPS(tb testing.TB, addr string, args ...string) float64 {
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
	m := regexp.MustCompile(`tps = ([0-9.]+)`).FindSubmatch(out)
	if args[0] == "-i" {
		return 0
	}
	if m == nil {
		tb.Fatalf("pgbench %v: no tps in\n%s", args, out)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// BenchmarkPGBenchSelect compares pgbench -S through the proxy with the
// same directly against the standby, interleaved in one run:
// go test ./pgfront -run XXX -bench PGBenchSelect -benchtime 1x
func BenchmarkPGBenchSelect(b *testing.B) {
	l := lab.ForTest(b, lab.Options{})
	f := startFrontTB(b, l, nil)
	pgbenchTPS(b, f.addr, "-i", "-s", "1", "-q")
	time.Sleep(500 * time.Millisecond) // let the standby replay the init
	modes := []string{"simple", "prepared"}
	if m := os.Getenv("PGFRONT_BENCH_MODES"); m != "" {
		modes = []string{m}
	}
	bouncer := startPgBouncer(b, l.ReplicaPGAddr())
	for _, mode := range modes {
		var direct, proxied, pgb float64
		for round := 0; round < 2; round++ {
			direct += pgbenchTPS(b, l.ReplicaPGAddr(), "-S", "-n", "-M", mode, "-c", "8", "-j", "2", "-T", "5")
			proxied += pgbenchTPS(b, f.addr, "-S", "-n", "-M", mode, "-c", "8", "-j", "2", "-T", "5")
			if mode != "prepared" { // pgbouncer 1.18 in transaction mode cannot run -M prepared
				pgb += pgbenchTPS(b, bouncer, "-S", "-n", "-M", mode, "-c", "8", "-j", "2", "-T", "5")
			}
		}
		if pgb > 0 {
			b.Logf("pgbench -S -M %s -c 8: direct %.0f tps, through spokeproxy %.0f tps (%.2f of direct), through pgbouncer %.0f tps (spokeproxy/pgbouncer %.2f)",
				mode, direct/2, proxied/2, proxied/direct, pgb/2, proxied/pgb)
		} else {
			b.Logf("pgbench -S -M %s -c 8: direct %.0f tps, through spokeproxy %.0f tps (%.2f of direct)", mode, direct/2, proxied/2, proxied/direct)
		}
		b.ReportMetric(proxied/direct, mode+"-ratio")
	}
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
func startPgBouncer(tb testing.TB, replica string) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
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
			return addr
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			tb.Fatalf("pgbouncer did not listen on %s:\n%s", addr, log)
		}
	}
}
