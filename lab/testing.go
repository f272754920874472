package lab

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// shortSkip is what a skipped integration test says under -short.
const shortSkip = "-short: skipping a test that runs real PostgreSQL and slapd; make test runs it"

// ForTest starts a lab for a test and stops it in t.Cleanup. It lives in a
// non-test file so every package's integration tests share one harness. A
// lab that cannot start fails the test loudly (t.Fatal, never Skip): the
// error names the missing package or the failing server and its log tail.
// If the test fails, the tails of all server logs are logged at cleanup.
// opts.Dir "" means a directory under t.TempDir.
//
// Under -short (make unit, the quick loop) it skips the test: -short means
// "no servers". make test and CI never pass -short, so there every
// integration test runs its real servers or fails.
func ForTest(t testing.TB, opts Options) *Lab {
	t.Helper()
	if testing.Short() {
		t.Skip(shortSkip)
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
		// t.TempDir's parent is 0700 root when tests run as root; the
		// postgres user must traverse it.
		if os.Geteuid() == 0 {
			if err := os.Chmod(filepath.Dir(opts.Dir), 0o711); err != nil {
				t.Fatalf("lab: %v", err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("lab: cannot start the test topology: %v", err)
	}
	t.Logf("lab up in %s (dir %s)", l.StartupTime().Round(time.Millisecond), l.Dir())
	t.Cleanup(func() {
		if t.Failed() {
			for name, path := range l.LogFiles() {
				t.Logf("lab: last lines of the %s log (%s):\n%s", name, path, tail(path, 15))
			}
		}
		if err := l.Close(); err != nil {
			t.Errorf("lab: close: %v", err)
		}
	})
	return l
}

// RunMain shares one lab among all tests of a package: call it from
// TestMain as os.Exit(lab.RunMain(m, opts, func(l *lab.Lab) error { shared = l; return nil })).
// It starts the lab (printing where a slow start spent its time), hands it
// to use (an error from use fails the run), runs the tests and stops the
// lab. A lab that cannot start fails the run loudly with the reason.
//
// Under -short it starts nothing and runs no test of the package, saying so.
func RunMain(m *testing.M, opts Options, use func(*Lab) error) int {
	flag.Parse()
	if testing.Short() {
		fmt.Println("lab: " + shortSkip + " (the whole package)")
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var progress bytes.Buffer
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(&progress, nil))
	}
	l, err := Start(ctx, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: lab: cannot start the test topology: %v\n%s", err, progress.String())
		return 1
	}
	fmt.Printf("lab: shared topology up in %s (dir %s)\n", l.StartupTime().Round(time.Millisecond), l.Dir())
	if l.StartupTime() > 5*time.Second {
		fmt.Print(progress.String())
	}
	code := 0
	if err := use(l); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: lab: %v\n", err)
		code = 1
	} else {
		code = m.Run()
	}
	if err := l.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: lab: close: %v\n", err)
		code = 1
	}
	return code
}
