package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/spokeproxy/spokeproxy/metrics"
)

// Options are what main builds and hands to the server.
type Options struct {
	Logger *slog.Logger
	// Registry receives every metric; nil means a new private registry.
	Registry *prometheus.Registry
	Version  string
}

// Addrs are the addresses the server actually listens on.
type Addrs struct {
	Admin    string
	Postgres string // "" when the site runs no PostgreSQL front
	LDAP     string // "" when the site runs no LDAP front
}

// Server is one running spoke site.
type Server struct {
	cfg     *Config
	logger  *slog.Logger
	reg     *prometheus.Registry
	started time.Time

	mu     sync.Mutex // guards addrs, cancel, wg use after Start
	addrs  Addrs
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errs   chan error
}

// New builds a server from a validated config. Nothing listens until Start.
func New(cfg *Config, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	reg := opts.Registry
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics.NewBuildInfo(reg, opts.Version)
	return &Server{
		cfg:    cfg,
		logger: opts.Logger.With("site", cfg.Site),
		reg:    reg,
		errs:   make(chan error, 4),
	}, nil
}

// Start binds every listener and starts serving. It returns once all
// listeners are bound; a bind failure stops whatever had started.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		return errors.New("proxy: server already started")
	}
	adminLn, err := net.Listen("tcp", s.cfg.Admin.Listen)
	if err != nil {
		return fmt.Errorf("admin.listen %s: %w", s.cfg.Admin.Listen, err)
	}
	token := ""
	if s.cfg.Admin.TokenFile != "" {
		if token, err = ReadSecretFile(s.cfg.Admin.TokenFile); err != nil {
			adminLn.Close()
			return fmt.Errorf("admin.token_file: %w", err)
		}
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	s.started = time.Now()
	s.addrs.Admin = adminLn.Addr().String()
	admin := &Admin{
		Gatherer: s.reg,
		Status:   s.status,
		Ready:    s.ready,
		Token:    token,
		Logger:   s.logger,
	}
	s.run(func() error { return ServeAdmin(runCtx, adminLn, admin.Handler(), s.logger) })
	s.logger.Info("serving", "admin", s.addrs.Admin)
	return nil
}

// run starts a serving goroutine whose failure ends the server.
func (s *Server) run(serve func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := serve(); err != nil {
			select {
			case s.errs <- err:
			default:
			}
		}
	}()
}

// Errors delivers the first fatal serving error.
func (s *Server) Errors() <-chan error { return s.errs }

// Addrs returns the bound addresses; valid after Start.
func (s *Server) Addrs() Addrs {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs
}

// Shutdown stops accepting, lets running work finish until ctx ends, then
// closes everything. It is safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	cancel := s.cancel
	s.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("proxy: shutdown: %w", ctx.Err())
	}
}

// Status is the body of /status.
type Status struct {
	Site    string    `json:"site"`
	Started time.Time `json:"started"`
}

func (s *Server) status() any {
	return Status{Site: s.cfg.Site, Started: s.started}
}

func (s *Server) ready() error { return nil }
