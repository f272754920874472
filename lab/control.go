package lab

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Server control: tests stop and start the lab's servers by their role
// through these methods, never by signalling PIDs or knowing the lab's
// directory layout. A stop waits until the server and all its children
// have exited; a start waits until the server answers a real request (a
// query, a search). Control operations are serialised with each other and
// with Close, so Close's guarantee holds: whatever a control method
// started, Close stops; after Close every control method returns ErrClosed.

// ErrClosed is returned by the control methods of a closed lab.
var ErrClosed = errors.New("lab: closed")

// stopGrace is how long a stopped server gets for its orderly shutdown
// before it is killed (also the bound of Close).
const stopGrace = 10 * time.Second

// StopHubPG stops the hub primary with a fast shutdown (SIGINT: sessions
// are closed, as a crashed or switched-off hub looks to the spoke) and waits
// for it to exit. Stopping a stopped server is a no-op.
func (l *Lab) StopHubPG(ctx context.Context) error {
	return l.control(func() error { return l.stopProc(ctx, l.hubPG.proc) })
}

// StartHubPG starts the hub primary again on its data directory and port
// and waits until it answers a query.
func (l *Lab) StartHubPG(ctx context.Context) error {
	return l.control(func() error { return l.restartCluster(ctx, l.hubPG, false) })
}

// RestartHubPG stops the hub primary (fast shutdown) and starts it again,
// returning once it answers a query.
func (l *Lab) RestartHubPG(ctx context.Context) error {
	return l.control(func() error {
		if err := l.stopProc(ctx, l.hubPG.proc); err != nil {
			return err
		}
		return l.restartCluster(ctx, l.hubPG, false)
	})
}

// StopReplicaPG stops the spoke's hot standby (fast shutdown) and waits
// for it to exit.
func (l *Lab) StopReplicaPG(ctx context.Context) error {
	return l.control(func() error { return l.stopProc(ctx, l.spokePG.proc) })
}

// StartReplicaPG starts the spoke's hot standby again and waits until it
// answers a query in recovery. Its walreceiver reconnects through wan_pg on
// its own (Lab.WaitReplicaCaughtUp waits for the data).
func (l *Lab) StartReplicaPG(ctx context.Context) error {
	return l.control(func() error { return l.restartCluster(ctx, l.spokePG, true) })
}

// StopHubLDAP stops the provider slapd (SIGTERM) and waits for it to exit.
func (l *Lab) StopHubLDAP(ctx context.Context) error {
	return l.control(func() error { return l.stopProc(ctx, l.hubLDAP.proc) })
}

// StartHubLDAP starts the provider slapd again on its database and waits
// until it answers a search of the suffix.
func (l *Lab) StartHubLDAP(ctx context.Context) error {
	return l.control(func() error {
		s := l.hubLDAP
		return l.restartSlapd(ctx, s, func(ctx context.Context) error { return ldapSearchBase(ctx, s.url(), BaseDN) })
	})
}

// HubLDAPCrashed reports whether the hub slapd ended without the lab asking
// it to, and how ("signal: segmentation fault"). A test driving a known
// slapd defect tells a crash of the store from a failure of the proxy with it.
func (l *Lab) HubLDAPCrashed() (how string, crashed bool) {
	l.ctlMu.Lock()
	defer l.ctlMu.Unlock()
	return l.hubLDAP.proc.crashed()
}

// StopReplicaLDAP stops the spoke's consumer slapd (SIGTERM; with syncrepl
// active it takes about 1.3 s) and waits for it to exit.
func (l *Lab) StopReplicaLDAP(ctx context.Context) error {
	return l.control(func() error { return l.stopProc(ctx, l.spokeLDAP.proc) })
}

// StartReplicaLDAP starts the spoke's consumer slapd again on its database
// and waits until it answers a search for a replicated entry. Its syncrepl
// session resumes through wan_ldap on its own.
func (l *Lab) StartReplicaLDAP(ctx context.Context) error {
	return l.control(func() error {
		s := l.spokeLDAP
		return l.restartSlapd(ctx, s, func(ctx context.Context) error { return ldapSearchBase(ctx, s.url(), UserDN) })
	})
}

// control runs one control operation, serialised with the others and with
// Close, and refuses once the lab is closed.
func (l *Lab) control(op func() error) error {
	l.ctlMu.Lock()
	defer l.ctlMu.Unlock()
	if l.closed {
		return ErrClosed
	}
	return op()
}

// stopProc stops a server and waits for it and its children; the grace
// before the kill is stopGrace, shortened by ctx's deadline.
func (l *Lab) stopProc(ctx context.Context, p *process) error {
	if p == nil {
		return errors.New("lab: server not started")
	}
	grace := stopGrace
	if d, ok := ctx.Deadline(); ok {
		grace = max(min(grace, time.Until(d)), 100*time.Millisecond)
	}
	return p.stop(grace)
}

// running reports whether the server's current process still runs; a start
// of a running server is refused (two postmasters on one data directory,
// two slapds on one database).
func running(name string, p *process) error {
	if p != nil && !p.exited() {
		return fmt.Errorf("lab: %s is already running (pid %d)", name, p.pid())
	}
	return nil
}

// restartCluster starts a stopped PostgreSQL server of the lab again and
// waits until it answers (and, for a standby, that it is in recovery). A
// server that does not come up is stopped again and the error carries its
// log's tail.
func (l *Lab) restartCluster(ctx context.Context, c *pgCluster, standby bool) error {
	if err := running(c.name+" postgres", c.proc); err != nil {
		return err
	}
	old := c.proc
	err := l.startCluster(ctx, c)
	if err == nil && standby {
		err = waitFor(ctx, c.proc, "standby in recovery", 30*time.Second, func(ctx context.Context) error {
			conn, err := pgx.Connect(ctx, l.superDSN(c, "postgres"))
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			var inRecovery bool
			if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
				return err
			}
			if !inRecovery {
				return errors.New("not in recovery")
			}
			return nil
		})
	}
	if err != nil && c.proc != old {
		err = errors.Join(err, c.proc.stop(stopGrace))
	}
	return err
}

// restartSlapd starts a stopped slapd of the lab again from its slapd.conf
// and waits until ready succeeds; one that does not come up is stopped.
func (l *Lab) restartSlapd(ctx context.Context, s *slapdServer, ready func(context.Context) error) error {
	if err := running(s.name, s.proc); err != nil {
		return err
	}
	old := s.proc
	err := l.startSlapd(ctx, s, ready)
	if err != nil && s.proc != old {
		err = errors.Join(err, s.proc.stop(stopGrace))
	}
	return err
}
