// Package proxy runs one spoke site: it loads and validates the
// configuration (Config, LoadConfig), builds the routing core and the
// PostgreSQL and LDAP fronts from it, starts, reloads, drains and stops them
// (Server), and serves the admin HTTP API (Admin: /metrics, /healthz,
// /readyz, /status and the drill controls).
//
// It knows neither wire protocol: the fronts own those. It maps the user's
// Config onto each part's own settings, so pgfront, ldapfront and routing
// never import this package.
//
// Lifecycle:
//
//	cfg, err := proxy.LoadConfig(path)
//	srv, err := proxy.New(cfg, proxy.Options{Logger: logger, Registry: reg})
//	err = srv.Start(ctx)       // binds every listener, starts probes; returns once serving
//	addrs := srv.Addrs()       // the bound addresses (useful with port 0)
//	err = srv.Shutdown(ctx)    // stop accepting, drain until ctx ends, then close
package proxy
