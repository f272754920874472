package pgfront

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

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
	for _, mode := range modes {
		var direct, proxied float64
		for round := 0; round < 2; round++ {
			direct += pgbenchTPS(b, l.ReplicaPGAddr(), "-S", "-n", "-M", mode, "-c", "8", "-j", "2", "-T", "5")
			proxied += pgbenchTPS(b, f.addr, "-S", "-n", "-M", mode, "-c", "8", "-j", "2", "-T", "5")
		}
		b.Logf("pgbench -S -M %s -c 8: direct %.0f tps, through spokeproxy %.0f tps, ratio %.2f", mode, direct/2, proxied/2, proxied/direct)
		b.ReportMetric(proxied/direct, mode+"-ratio")
	}
}
