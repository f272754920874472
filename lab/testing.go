package lab

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// ForTest starts a lab for a test and stops it in t.Cleanup. It lives in a
// non-test file so every package's integration tests share one harness. A
// lab that cannot start fails the test loudly (t.Fatal, never Skip): the
// error names the missing package or the failing server and its log tail.
// If the test fails, the tails of all server logs are logged at cleanup.
// opts.Dir "" means a directory under t.TempDir.
func ForTest(t testing.TB, opts Options) *Lab {
	t.Helper()
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
