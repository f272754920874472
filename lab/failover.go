package lab

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNoHubStandby is returned by the failover methods of a lab started
// without Options.HubStandby.
var ErrNoHubStandby = errors.New("lab: no hub-site standby (start the lab with Options.HubStandby)")

// StopHubPrimary stops the original hub primary with a fast shutdown, as a
// crashed or switched-off hub would look to the spoke (connections close).
func (l *Lab) StopHubPrimary(ctx context.Context) error {
	return l.StopHubPG(ctx)
}

// PromoteHubStandby promotes the hub-site standby to primary, waits until
// it accepts writes, and gives it the spoke's replication slot so the spoke
// can follow it. The primary may still run: both then take writes (a split
// brain).
func (l *Lab) PromoteHubStandby(ctx context.Context) error {
	return l.control(func() error { return l.promoteHubStandby(ctx) })
}

func (l *Lab) promoteHubStandby(ctx context.Context) error {
	if l.hub2PG == nil {
		return ErrNoHubStandby
	}
	conn, err := pgx.Connect(ctx, l.superDSN(l.hub2PG, "postgres"))
	if err != nil {
		return fmt.Errorf("lab: hub standby: %w", err)
	}
	defer conn.Close(context.Background())
	var done bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(true, 30)").Scan(&done); err != nil {
		return fmt.Errorf("lab: promote hub standby: %w", err)
	}
	if !done {
		return errors.New("lab: promote hub standby: not promoted within 30 s")
	}
	if _, err := conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", spokeSlot); err != nil {
		return fmt.Errorf("lab: slot on promoted hub standby: %w", err)
	}
	l.mu.Lock()
	l.promoted = true
	l.mu.Unlock()
	return nil
}

// RepointSpoke points the spoke standby's walreceiver at the promoted
// hub-site standby through the wan_pg_2 link (a reload restarts the
// walreceiver; recovery_target_timeline is latest, so it follows the new
// timeline) and waits until it streams again.
func (l *Lab) RepointSpoke(ctx context.Context) error {
	return l.control(func() error { return l.repointSpoke(ctx) })
}

func (l *Lab) repointSpoke(ctx context.Context) error {
	if l.hub2PG == nil {
		return ErrNoHubStandby
	}
	conn, err := pgx.Connect(ctx, l.superDSN(l.spokePG, "postgres"))
	if err != nil {
		return fmt.Errorf("lab: spoke standby: %w", err)
	}
	defer conn.Close(context.Background())
	// ALTER SYSTEM takes no parameters; the conninfo holds no quotes.
	sql := fmt.Sprintf("ALTER SYSTEM SET primary_conninfo = '%s'", l.primaryConninfo(l.wanPG2Addr, spokeSlot))
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("lab: repoint spoke: %w", err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("lab: reload spoke: %w", err)
	}
	return waitFor(ctx, l.spokePG.proc, "spoke streaming from the promoted hub standby", 30*time.Second, func(ctx context.Context) error {
		c, err := pgx.Connect(ctx, l.superDSN(l.spokePG, "postgres"))
		if err != nil {
			return err
		}
		defer c.Close(context.Background())
		var status, sender string
		err = c.QueryRow(ctx, "SELECT coalesce(status, ''), coalesce(sender_port, 0)::text FROM pg_stat_wal_receiver").Scan(&status, &sender)
		if err != nil {
			return err
		}
		if _, port, _ := splitHostPort(l.wanPG2Addr); status != "streaming" || sender != port {
			return fmt.Errorf("walreceiver %q from port %s", status, sender)
		}
		return nil
	})
}

// Failover runs the whole hub failover: stop the primary, promote the
// hub-site standby, re-point the spoke at it.
func (l *Lab) Failover(ctx context.Context) error {
	if l.hub2PG == nil {
		return ErrNoHubStandby
	}
	if err := l.StopHubPrimary(ctx); err != nil {
		return err
	}
	if err := l.PromoteHubStandby(ctx); err != nil {
		return err
	}
	return l.RepointSpoke(ctx)
}
