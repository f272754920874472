package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Roles and names the lab creates in PostgreSQL.
const (
	AppUser        = "app"             // owns appdb; seeded from testdata/lab/appdb.sql
	AppPassword    = "apppass"         // AppUser's password (SCRAM-SHA-256)
	AppDatabase    = "appdb"           // the application database
	AuthUser       = "spokeproxy_auth" // the proxy's auth_query role; password generated per lab
	AuthQuery      = "SELECT usename, passwd FROM spokeproxy.get_auth($1)"
	SuperUser      = "postgres" // superuser, reachable only over the Unix socket (trust)
	replUser       = "replicator"
	spokeSlot      = "spoke1"
	hubStandbySlot = "hub2"
)

// pgCluster is one PostgreSQL server of the lab.
type pgCluster struct {
	name    string // "hub", "spoke", "hub2"
	dataDir string
	port    int
	logPath string
	proc    *process
}

func (c *pgCluster) addr() string { return "127.0.0.1:" + strconv.Itoa(c.port) }

// pgCommonConf is appended to every cluster's postgresql.conf. Standbys
// inherit the hub's copy through pg_basebackup and append their own port
// after it (last setting wins).
func pgCommonConf(port int, sockDir string) string {
	return fmt.Sprintf(`
# --- spokeproxy lab
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
fsync = off
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 128MB
wal_sender_timeout = 10s
hot_standby = on
hot_standby_feedback = on
wal_retrieve_retry_interval = 500ms
wal_receiver_timeout = 5s
wal_receiver_status_interval = 1s
recovery_target_timeline = 'latest'
shared_buffers = 32MB
max_connections = 200
log_line_prefix = '%%m [%%p] %%q%%u@%%d '
`, port, sockDir)
}

// superDSN is a superuser connection over the cluster's Unix socket.
func (l *Lab) superDSN(c *pgCluster, db string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=5", l.sockDir, c.port, SuperUser, db)
}

// pgEnv is the environment of PostgreSQL children: the replication role's
// password reaches pg_basebackup and walreceiver through a passfile, never
// a command line.
func (l *Lab) pgEnv() []string {
	return childEnv("PGPASSFILE=" + l.pgPassFile)
}

// preparePG creates the PostgreSQL directories, owned by the run-as user,
// and the passfile holding the replication password.
func (l *Lab) preparePG() error {
	l.pgRoot = filepath.Join(l.dir, "pg")
	l.sockDir = filepath.Join(l.pgRoot, "run")
	if len(l.sockDir) > 90 { // Unix socket paths are limited to 107 bytes
		d, err := os.MkdirTemp("", "splab-sock-")
		if err != nil {
			return fmt.Errorf("lab: socket dir: %w", err)
		}
		l.sockDir = d
		l.removeSockDir = true
	}
	for _, d := range []string{l.pgRoot, l.sockDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		if err := l.as.chown(d); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
	}
	l.pgPassFile = filepath.Join(l.pgRoot, "pgpass")
	line := fmt.Sprintf("*:*:*:%s:%s\n", replUser, l.replPassword)
	if err := os.WriteFile(l.pgPassFile, []byte(line), 0o600); err != nil {
		return fmt.Errorf("lab: pgpass: %w", err)
	}
	return l.as.chown(l.pgPassFile)
}

// startCluster starts a cluster's postmaster and waits until it answers.
func (l *Lab) startCluster(ctx context.Context, c *pgCluster) error {
	p, err := startProcess(c.name+" postgres", c.logPath, syscall.SIGINT, l.as, l.pgRoot, l.pgEnv(),
		filepath.Join(pgBin, "postgres"), "-D", c.dataDir)
	if err != nil {
		return err
	}
	l.mu.Lock()
	c.proc = p
	l.mu.Unlock()
	return waitFor(ctx, p, "PostgreSQL accepting connections", 30*time.Second, func(ctx context.Context) error {
		conn, err := pgx.Connect(ctx, l.superDSN(c, "postgres"))
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		var one int
		return conn.QueryRow(ctx, "SELECT 1").Scan(&one)
	})
}

// startHubPG initialises, starts and seeds the hub primary.
func (l *Lab) startHubPG(ctx context.Context) error {
	c := l.hubPG
	if err := runTool(ctx, "hub initdb", c.logPath, l.as, l.pgRoot, l.pgEnv(), nil,
		filepath.Join(pgBin, "initdb"), "-D", c.dataDir, "--no-sync", "-U", SuperUser,
		"--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C"); err != nil {
		return err
	}
	if err := appendFile(filepath.Join(c.dataDir, "postgresql.conf"), pgCommonConf(c.port, l.sockDir)); err != nil {
		return err
	}
	if err := l.startCluster(ctx, c); err != nil {
		return err
	}
	return l.seedHubPG(ctx)
}

// authSetupSQL creates what the proxy's auth lookup needs in one database:
// PgBouncer's auth_query pattern, a SECURITY DEFINER function over
// pg_shadow that only the auth role may execute.
const authSetupSQL = `
CREATE SCHEMA spokeproxy;
REVOKE ALL ON SCHEMA spokeproxy FROM PUBLIC;
GRANT USAGE ON SCHEMA spokeproxy TO ` + AuthUser + `;
CREATE FUNCTION spokeproxy.get_auth(p_usename text)
RETURNS TABLE (usename name, passwd text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT s.usename, s.passwd FROM pg_catalog.pg_shadow s WHERE s.usename = p_usename $$;
REVOKE ALL ON FUNCTION spokeproxy.get_auth(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION spokeproxy.get_auth(text) TO ` + AuthUser + `;
`

// seedHubPG creates the roles, the auth function (in template1 and postgres,
// so appdb inherits it) and the application database from appdb.sql.
func (l *Lab) seedHubPG(ctx context.Context) error {
	c := l.hubPG
	exec := func(db, sql string) error {
		conn, err := pgx.Connect(ctx, l.superDSN(c, db))
		if err != nil {
			return fmt.Errorf("lab: seed hub %s: %w", db, err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("lab: seed hub %s: %w", db, err)
		}
		return nil
	}
	// The passwords are hex, so they need no quoting.
	roles := fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s';\nCREATE ROLE %s LOGIN REPLICATION PASSWORD '%s';",
		AuthUser, l.authPassword, replUser, l.replPassword)
	if err := exec("postgres", roles); err != nil {
		return err
	}
	for _, db := range []string{"template1", "postgres"} {
		if err := exec(db, authSetupSQL); err != nil {
			return err
		}
	}
	seed, err := os.ReadFile(filepath.Join(l.seedDir, "appdb.sql"))
	if err != nil {
		return fmt.Errorf("lab: seed: %w", err)
	}
	return runTool(ctx, "hub seed (psql appdb.sql)", c.logPath, l.as, l.pgRoot, l.pgEnv(), bytes.NewReader(seed),
		filepath.Join(pgBin, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", l.sockDir, "-p", strconv.Itoa(c.port),
		"-U", SuperUser, "-d", "postgres", "-f", "-")
}

// primaryConninfo is a standby's connection to its upstream; the password
// comes from the passfile.
func (l *Lab) primaryConninfo(upstream, appName string) string {
	host, port, _ := splitHostPort(upstream)
	return fmt.Sprintf("host=%s port=%s user=%s passfile=%s application_name=%s connect_timeout=2 keepalives_idle=5 keepalives_interval=1 keepalives_count=3",
		host, port, replUser, l.pgPassFile, appName)
}

// startStandby clones a hot standby from upstream with pg_basebackup
// (creating its replication slot), gives it its own port and starts it.
func (l *Lab) startStandby(ctx context.Context, c *pgCluster, upstream, slot string) error {
	host, port, err := splitHostPort(upstream)
	if err != nil {
		return err
	}
	if err := runTool(ctx, c.name+" pg_basebackup", c.logPath, l.as, l.pgRoot, l.pgEnv(), nil,
		filepath.Join(pgBin, "pg_basebackup"), "-D", c.dataDir, "-R", "-X", "stream", "-C", "-S", slot,
		"-c", "fast", "--no-sync", "-h", host, "-p", port, "-U", replUser, "-w"); err != nil {
		return err
	}
	// -R copied the hub's port: the standby's own comes after it.
	conf := fmt.Sprintf("\n# --- spokeproxy lab: standby %s\nport = %d\n", c.name, c.port)
	if err := appendFile(filepath.Join(c.dataDir, "postgresql.conf"), conf); err != nil {
		return err
	}
	auto := fmt.Sprintf("primary_conninfo = '%s'\nprimary_slot_name = '%s'\n", l.primaryConninfo(upstream, slot), slot)
	if err := appendFile(filepath.Join(c.dataDir, "postgresql.auto.conf"), auto); err != nil {
		return err
	}
	if err := l.startCluster(ctx, c); err != nil {
		return err
	}
	return waitFor(ctx, c.proc, "standby streaming", 30*time.Second, func(ctx context.Context) error {
		return l.checkStreaming(ctx, c)
	})
}

// checkStreaming succeeds once a standby's walreceiver streams.
func (l *Lab) checkStreaming(ctx context.Context, c *pgCluster) error {
	conn, err := pgx.Connect(ctx, l.superDSN(c, "postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var status string
	err = conn.QueryRow(ctx, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')").Scan(&status)
	if err != nil {
		return err
	}
	if status != "streaming" {
		return fmt.Errorf("walreceiver status %q", status)
	}
	return nil
}

// WaitReplicaCaughtUp waits until the spoke standby has replayed everything
// the current hub primary has written when it is called. It compares LSNs
// (replay timestamps are no lag measure on an idle hub).
func (l *Lab) WaitReplicaCaughtUp(ctx context.Context, timeout time.Duration) error {
	hub := l.currentPrimary()
	hconn, err := pgx.Connect(ctx, l.superDSN(hub, "postgres"))
	if err != nil {
		return fmt.Errorf("lab: hub: %w", err)
	}
	defer hconn.Close(context.Background())
	var target string
	if err := hconn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&target); err != nil {
		return fmt.Errorf("lab: hub LSN: %w", err)
	}
	return waitFor(ctx, nil, "spoke standby catching up to "+target, timeout, func(ctx context.Context) error {
		conn, err := pgx.Connect(ctx, l.superDSN(l.spokePG, "postgres"))
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		var ok bool
		if err := conn.QueryRow(ctx, "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)", target).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return errors.New("not yet replayed")
		}
		return nil
	})
}

// currentPrimary is the hub cluster that takes writes: the hub-site standby
// once it has been promoted, else the original primary.
func (l *Lab) currentPrimary() *pgCluster {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.promoted {
		return l.hub2PG
	}
	return l.hubPG
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return fmt.Errorf("lab: %w", err)
	}
	return f.Close()
}
