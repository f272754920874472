package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spokeproxy/spokeproxy/proxy"
)

// version is set at build time with -ldflags "-X main.version=..."; without
// it the module version or VCS revision from the build info is used.
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `spokeproxy: a replication-aware PostgreSQL and LDAP proxy for spoke sites.

Usage:
  spokeproxy serve -config FILE   run a site
  spokeproxy check -config FILE   validate a config file
  spokeproxy lab [-dir DIR]       run a throwaway hub-and-spoke lab with spokeproxy in front
  spokeproxy drill -lab DIR/lab.json | -admin URL -pg DSN -ldap URL -ldap-dn DN ...
                                  rehearse a hub outage against a live site; exit 0 only if every step passed
  spokeproxy version              print the version
`

// run is main without the process exit, so tests can call it.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		return cmdServe(rest, stdout, stderr)
	case "check":
		return cmdCheck(rest, stdout, stderr)
	case "lab":
		return cmdLab(rest, stdout, stderr)
	case "drill":
		return cmdDrill(rest, stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "spokeproxy", buildVersion())
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "spokeproxy: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
}

func buildVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return "devel-" + rev
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("spokeproxy "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check", stderr)
	path := fs.String("config", "", "config file to check")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" {
		fmt.Fprintln(stderr, "spokeproxy check: -config FILE is required")
		return 2
	}
	if _, err := proxy.LoadConfig(*path); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok\n", *path)
	return 0
}

func cmdServe(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("serve", stderr)
	path := fs.String("config", "", "config file")
	drain := fs.Duration("drain-timeout", 30*time.Second, "on SIGTERM, how long running transactions and operations may finish before connections are closed")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" {
		fmt.Fprintln(stderr, "spokeproxy serve: -config FILE is required")
		return 2
	}
	cfg, err := proxy.LoadConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	logger, level := proxy.NewLogger(stderr, cfg.Log)
	srv, err := proxy.New(cfg, proxy.Options{Logger: logger, LogLevel: level, Registry: prometheus.NewRegistry(), Version: buildVersion()})
	if err != nil {
		logger.Error("cannot build the site", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// SIGHUP re-reads the config; a bad one is logged and the running one stays.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := srv.Start(ctx); err != nil {
		logger.Error("cannot start", "err", err)
		return 1
	}
	code := 0
serving:
	for {
		select {
		case <-hup:
			next, err := proxy.LoadConfig(*path)
			if err != nil {
				srv.ReloadFailed(err)
				continue
			}
			srv.Reload(next) // logs what it applied and what needs a restart
		case <-ctx.Done():
			logger.Info("shutting down: draining", "deadline", drain.String())
			break serving
		case err := <-srv.Errors():
			logger.Error("serving failed", "err", err)
			code = 1
			break serving
		}
	}
	stop() // a second SIGINT or SIGTERM ends the process at once
	sctx, cancel := context.WithTimeout(context.Background(), *drain)
	defer cancel()
	switch err := srv.Shutdown(sctx); {
	case err == nil:
	case errors.Is(err, context.DeadlineExceeded):
		// Expected with clients that stay connected: they were closed at
		// the deadline.
		logger.Warn("drain deadline reached; remaining connections were closed", "err", err)
	default:
		logger.Error("shutdown", "err", err)
		code = 1
	}
	logger.Info("stopped")
	return code
}
