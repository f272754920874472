package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spokeproxy/spokeproxy/lab"
	"github.com/spokeproxy/spokeproxy/proxy"
)

func cmdLab(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("lab", stderr)
	dir := fs.String("dir", "", "lab directory (default: a new temporary directory, removed on exit)")
	seed := fs.String("seed", "", "directory with appdb.sql and seed.ldif (default: testdata/lab of the source tree)")
	verbose := fs.Bool("v", false, "log the lab's and the proxy's progress at debug level")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	l, err := lab.Start(ctx, lab.Options{
		Dir:     *dir,
		SeedDir: *seed,
		Logger:  logger.With("component", "lab"),
		Proxy:   labProxy(logger.With("component", "spokeproxy")),
	})
	if err != nil {
		fmt.Fprintf(stderr, "spokeproxy lab: %v\n", err)
		return 1
	}
	defer func() {
		if err := l.Close(); err != nil {
			fmt.Fprintf(stderr, "spokeproxy lab: stopping: %v\n", err)
		}
	}()
	// The summary comes first: programs (and the tests) take lab.json as
	// the sign that the lab is up, and by then it is all on the terminal.
	fmt.Fprint(stdout, l.Summary())
	infoPath := filepath.Join(l.Dir(), "lab.json")
	if err := l.WriteInfo(infoPath); err != nil {
		fmt.Fprintf(stderr, "spokeproxy lab: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "\nEndpoints for programs: %s\nCtrl-C stops the lab.\n", infoPath)
	<-ctx.Done()
	fmt.Fprintln(stderr, "spokeproxy lab: stopping")
	return 0
}

// labProxy starts spokeproxy in this process with the config the lab
// generates, written to the lab directory so a person can read and reuse it.
// The config goes through the same strict loader as any site's.
func labProxy(logger *slog.Logger) func(ctx context.Context, l *lab.Lab) (lab.ProxyEndpoints, io.Closer, error) {
	return func(ctx context.Context, l *lab.Lab) (lab.ProxyEndpoints, io.Closer, error) {
		path := filepath.Join(l.Dir(), "spokeproxy.yaml")
		if err := os.WriteFile(path, l.ProxyConfigYAML("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"), 0o600); err != nil {
			return lab.ProxyEndpoints{}, nil, err
		}
		cfg, err := proxy.LoadConfig(path)
		if err != nil {
			return lab.ProxyEndpoints{}, nil, err
		}
		srv, err := proxy.New(cfg, proxy.Options{Logger: logger, Registry: prometheus.NewRegistry(), Version: buildVersion()})
		if err != nil {
			return lab.ProxyEndpoints{}, nil, err
		}
		if err := srv.Start(ctx); err != nil {
			return lab.ProxyEndpoints{}, nil, err
		}
		a := srv.Addrs()
		ep := lab.ProxyEndpoints{PG: a.Postgres, LDAP: a.LDAP, Admin: a.Admin}
		return ep, closerFunc(func() error {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		}), nil
	}
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }
