package pgfront

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spokeproxy/spokeproxy/internal/sitetest"
	"github.com/spokeproxy/spokeproxy/lab"
	"github.com/spokeproxy/spokeproxy/metrics"
	"github.com/spokeproxy/spokeproxy/routing"
)

// front is a Server on 127.0.0.1:0 in front of a lab, with its routing Site.
type front struct {
	addr string
	site *routing.Site
	srv  *Server
	m    *metrics.PG
	reg  *prometheus.Registry
	lab  *lab.Lab
	// noReplica: the front points at a replica address that is down on purpose.
	noReplica bool
}

func startFront(t *testing.T, l *lab.Lab, mutate func(*Config)) *front {
	t.Helper()
	return startFrontTB(t, l, mutate)
}

// startFrontTB starts a front; hubs default to the lab's WAN link to
// the hub primary.
func startFrontTB(t testing.TB, l *lab.Lab, mutate func(*Config), hubs ...string) *front {
	t.Helper()
	if len(hubs) == 0 {
		hubs = []string{l.WANPGAddr()}
	}
	level := slog.LevelWarn
	if os.Getenv("PGFRONT_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	reg := prometheus.NewRegistry()
	policy := routing.DefaultPolicy()
	cfg := Config{
		Site:             "spoke-test",
		ReplicaAddr:      l.ReplicaPGAddr(),
		AuthUser:         lab.AuthUser,
		AuthPassword:     l.AuthPassword(),
		AuthQuery:        lab.AuthQuery,
		AuthDatabase:     lab.AppDatabase,
		LazyTransactions: true,
		Consistency:      policy.Consistency,
		WaitTimeout:      policy.WaitTimeout,
		OnTimeoutHub:     policy.OnTimeoutHub,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	// One config key (replica.when_unavailable) sets both, as in proxy.
	policy.ReplicaUnavailableHub = !cfg.RefuseWhenReplicaDown
	site := sitetest.Start(t, routing.Config{
		Protocol: routing.Postgres,
		Hubs:     hubs,
		Replica:  cfg.ReplicaAddr,
		User:     lab.AuthUser,
		Password: l.AuthPassword(),
		Database: lab.AppDatabase,
		// On a loaded CI machine under -race, two probe timeouts in a row
		// once marked a healthy hub down mid-test.
		DownAfter: 3,
		Policy:    policy,
		Logger:    logger,
	})
	ctx, cancel := context.WithCancel(context.Background())
	m := metrics.NewPG(reg)
	m.Front = metrics.NewFront(reg).Protocol(metrics.Postgres)
	srv := New(cfg, site, m, logger)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(ctx, ln) }()
	f := &front{addr: ln.Addr().String(), site: site, srv: srv, m: m, reg: reg, lab: l, noReplica: cfg.ReplicaAddr != l.ReplicaPGAddr()}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		cancel()
		if err := <-serveDone; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	f.waitHub(t, true)
	return f
}

func (f *front) waitHub(t testing.TB, up bool) {
	t.Helper()
	sitetest.Wait(t, f.site, up, up && !f.noReplica)
}

// cut disables the WAN PostgreSQL link and waits until the Site sees it
// down; the link is restored at cleanup.
func (f *front) cut(t *testing.T) {
	t.Helper()
	if err := f.lab.SetLink(lab.LinkPG, false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.lab.ResetWAN(); err != nil {
			t.Errorf("reset WAN: %v", err)
		}
		f.waitHub(t, true)
	})
	f.waitHub(t, false)
}

func (f *front) dsn(user, password string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password), Host: f.addr, Path: "/" + lab.AppDatabase, RawQuery: "sslmode=disable"}
	return u.String()
}

func (f *front) connect(t *testing.T, mutate func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	cc, err := pgx.ParseConfig(f.dsn(lab.AppUser, lab.AppPassword))
	if err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(cc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatalf("connect through proxy: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantCode(t *testing.T, err error, code string) *pgconn.PgError {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("want SQLSTATE %s, got %v", code, err)
	}
	if pe.Code != code {
		t.Fatalf("want SQLSTATE %s, got %s: %s", code, pe.Code, pe.Message)
	}
	return pe
}

func TestLabPG(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)

	t.Run("auth", func(t *testing.T) {
		ctx := ctxT(t)
		c, err := pgx.Connect(ctx, f.dsn(lab.AppUser, "wrong"))
		if err == nil {
			c.Close(ctx)
			t.Fatal("wrong password accepted")
		}
		pe := wantCode(t, err, "28P01")
		if pe.Message != `password authentication failed for user "app"` {
			t.Errorf("message %q", pe.Message)
		}
		_, err = pgx.Connect(ctx, f.dsn("nosuchrole", "x"))
		wantCode(t, err, "28P01")
		_, err = pgx.Connect(ctx, f.dsn(lab.AppUser, lab.AppPassword)+"&database=nosuchdb")
		if err == nil {
			t.Fatal("unknown database accepted")
		}
	})

	t.Run("read write read-your-write", func(t *testing.T) {
		ctx := ctxT(t)
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeDescribeExec} {
			c := f.connect(t, func(cc *pgx.ConnConfig) { cc.DefaultQueryExecMode = mode })
			var standby bool
			if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standby); err != nil {
				t.Fatal(err)
			}
			if !standby {
				t.Errorf("mode %v: read did not run on the standby", mode)
			}
			if got := c.PgConn().ParameterStatus("in_hot_standby"); got != "off" {
				t.Errorf("in_hot_standby = %q while the hub is up", got)
			}
			var pid uint32
			if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatal(err)
			}
			if pid != c.PgConn().PID() {
				t.Errorf("pg_backend_pid() %d, BackendKeyData PID %d", pid, c.PgConn().PID())
			}
			body := fmt.Sprintf("note %v %d", mode, time.Now().UnixNano())
			if _, err := c.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES ($1, $2)", 1, body); err != nil {
				t.Fatalf("mode %v: insert: %v", mode, err)
			}
			var n int
			var recov bool
			if err := c.QueryRow(ctx, "SELECT count(*), pg_is_in_recovery() FROM notes WHERE body = $1", body).Scan(&n, &recov); err != nil {
				t.Fatal(err)
			}
			if n != 1 || !recov {
				t.Errorf("mode %v: read-your-write saw %d rows (standby %v)", mode, n, recov)
			}
		}
	})

	// COMMIT AND CHAIN opens the next transaction on the replica like the
	// one it ended: when that one moves to the hub, SET TRANSACTION's
	// isolation from the ended transaction is replayed there, its SET
	// LOCAL is not; the same when the statements come in one extended
	// batch.
	t.Run("lazy transaction AND CHAIN", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		pc := c.PgConn()
		const check = "UPDATE accounts SET balance = balance + 1 WHERE name = 'alice' RETURNING current_setting('statement_timeout'), current_setting('transaction_isolation'), pg_is_in_recovery()::text"
		want := [3]string{"0", "read uncommitted", "false"}
		for _, q := range []string{"BEGIN", "SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED", "SET LOCAL statement_timeout = 4321", "SELECT 1", "COMMIT AND CHAIN"} {
			if _, err := pc.Exec(ctx, q).ReadAll(); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		if st := pc.TxStatus(); st != 'T' {
			t.Fatalf("after COMMIT AND CHAIN: status %q, want 'T'", st)
		}
		rr, err := pc.Exec(ctx, check).ReadAll()
		if err != nil || len(rr) != 1 || len(rr[0].Rows) != 1 {
			t.Fatalf("write in the chained transaction: %v %v", rr, err)
		}
		row := rr[0].Rows[0]
		if got := [3]string{string(row[0]), string(row[1]), string(row[2])}; got != want {
			t.Errorf("chained transaction on the hub: statement_timeout, transaction_isolation, in recovery = %q, want %q", got, want)
		}
		if _, err := pc.Exec(ctx, "COMMIT").ReadAll(); err != nil {
			t.Fatal(err)
		}

		// Extended protocol, one Sync: the SET LOCAL before the chain is
		// forgotten, the one after it kept.
		if _, err := c.Exec(ctx, "BEGIN ISOLATION LEVEL READ UNCOMMITTED"); err != nil {
			t.Fatal(err)
		}
		b := &pgx.Batch{}
		b.Queue("SET LOCAL statement_timeout = 4321")
		b.Queue("SELECT 1")
		b.Queue("COMMIT AND CHAIN")
		b.Queue("SET LOCAL lock_timeout = 1234")
		if err := c.SendBatch(ctx, b).Close(); err != nil {
			t.Fatalf("batch with COMMIT AND CHAIN: %v", err)
		}
		var timeout, lockTimeout, iso string
		if err := c.QueryRow(ctx, "UPDATE accounts SET balance = balance + 1 WHERE name = 'alice' RETURNING current_setting('statement_timeout'), current_setting('lock_timeout'), current_setting('transaction_isolation')").Scan(&timeout, &lockTimeout, &iso); err != nil {
			t.Fatal(err)
		}
		if timeout != "0" || lockTimeout != "1234ms" || iso != "read uncommitted" {
			t.Errorf("chained transaction from a batch, on the hub: statement_timeout %q, lock_timeout %q, isolation %q; want 0, 1234ms, read uncommitted", timeout, lockTimeout, iso)
		}
		if _, err := c.Exec(ctx, "COMMIT"); err != nil {
			t.Fatal(err)
		}
	})

	// COMMIT AND CHAIN on the hub: nothing of the proxy's runs in the new
	// transaction before the client's SET TRANSACTION, and the chain's
	// writes are read back once it ends, by COMMIT or by ROLLBACK.
	t.Run("hub transaction AND CHAIN", func(t *testing.T) {
		ctx := ctxT(t)
		pc := f.connect(t, nil).PgConn()
		for _, end := range []string{"COMMIT", "ROLLBACK"} {
			body := fmt.Sprintf("chained %s %d", end, time.Now().UnixNano())
			for _, q := range []string{
				"BEGIN",
				"INSERT INTO notes (account_id, body) VALUES (1, '" + body + "')",
				"COMMIT AND CHAIN",
				"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
				"SELECT 1",
				end,
			} {
				if _, err := pc.Exec(ctx, q).ReadAll(); err != nil {
					t.Fatalf("%s (chain ended by %s): %v", q, end, err)
				}
			}
			rr, err := pc.Exec(ctx, "SELECT count(*), pg_is_in_recovery()::text FROM notes WHERE body = '"+body+"'").ReadAll()
			if err != nil || len(rr) != 1 || len(rr[0].Rows) != 1 {
				t.Fatalf("read back: %v %v", rr, err)
			}
			if n, standby := string(rr[0].Rows[0][0]), string(rr[0].Rows[0][1]); n != "1" || standby != "true" {
				t.Errorf("after a chain ended by %s, the standby read %s rows (standby %s), want the chained commit's row", end, n, standby)
			}
		}
	})

	// A session-level SET made inside a transaction reaches the session's
	// other backend only if the transaction commits: rolled back, the
	// replica undid it and the hub never sees it; committed on the hub, the
	// replica gets it too.
	t.Run("SET in a transaction follows its outcome", func(t *testing.T) {
		ctx := ctxT(t)
		pc := f.connect(t, nil).PgConn()
		run := func(qs ...string) [][][]byte {
			t.Helper()
			var rows [][][]byte
			for _, q := range qs {
				rr, err := pc.Exec(ctx, q).ReadAll()
				if err != nil {
					t.Fatalf("%s: %v", q, err)
				}
				for _, r := range rr {
					rows = append(rows, r.Rows...)
				}
			}
			return rows
		}
		const onHub = "UPDATE accounts SET balance = balance + 1 WHERE name = 'alice' RETURNING coalesce(current_setting('app.rolled_back', true), ''), coalesce(current_setting('app.committed', true), ''), pg_is_in_recovery()::text"
		const onReplica = "SELECT coalesce(current_setting('app.rolled_back', true), ''), coalesce(current_setting('app.committed', true), ''), coalesce(current_setting('app.hub_txn', true), ''), pg_is_in_recovery()::text"
		run("BEGIN", "SET app.rolled_back = 'yes'", "SELECT 1", "ROLLBACK")
		// A SET before a COMMIT in one Query belongs to the transaction
		// that COMMIT ends, not to the one the Query opens after it.
		run("BEGIN", "SELECT 1", "SET app.before_commit = 'yes'; COMMIT; BEGIN; SET app.rolled_back = 'again'", "ROLLBACK")
		if got := run("UPDATE accounts SET balance = balance + 1 WHERE name = 'alice' RETURNING coalesce(current_setting('app.before_commit', true), ''), coalesce(current_setting('app.rolled_back', true), '')"); len(got) != 1 || string(got[0][0]) != "yes" || string(got[0][1]) != "" {
			t.Errorf("on the hub after \"SET; COMMIT; BEGIN; SET\" and a ROLLBACK: %q, want app.before_commit yes, app.rolled_back empty", got)
		}
		// The held SET belongs to the transaction the unit's first end
		// closes, committed here, not to the one it opens and rolls back.
		run("BEGIN", "SET app.committed = 'yes'", "SELECT 1", "COMMIT; BEGIN; SELECT 1; ROLLBACK")
		if got := run(onHub); len(got) != 1 || string(got[0][0]) != "" || string(got[0][1]) != "yes" || string(got[0][2]) != "false" {
			t.Errorf("on the hub after a rolled-back and a committed SET in replica transactions: %q, want app.rolled_back empty, app.committed yes", got)
		}
		run("BEGIN", "UPDATE accounts SET balance = balance + 1 WHERE name = 'alice'", "SET app.hub_txn = 'yes'", "COMMIT")
		if got := run(onReplica); len(got) != 1 || string(got[0][0]) != "" || string(got[0][1]) != "yes" || string(got[0][2]) != "yes" || string(got[0][3]) != "true" {
			t.Errorf("on the standby: %q, want app.rolled_back empty, app.committed and app.hub_txn yes", got)
		}
	})

	// A transaction on the replica that failed stays failed: a write gets
	// 25P02 there, as PostgreSQL answers, instead of reviving it on the
	// hub, and its COMMIT rolls back, by an extended COMMIT AND CHAIN too,
	// without a SET of it reaching the hub.
	t.Run("failed replica transaction", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		pc := c.PgConn()
		body := fmt.Sprintf("after a failure %d", time.Now().UnixNano())
		for _, q := range []string{"BEGIN", "SET app.failed_txn = 'yes'", "SELECT 1/0"} {
			_, err := pc.Exec(ctx, q).ReadAll()
			if q == "SELECT 1/0" {
				wantCode(t, err, "22012")
			} else if err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		_, err := pc.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, '"+body+"')").ReadAll()
		wantCode(t, err, "25P02")
		if _, err := c.Exec(ctx, "COMMIT AND CHAIN", pgx.QueryExecModeExec); err != nil {
			t.Fatalf("extended COMMIT AND CHAIN of a failed transaction: %v", err)
		}
		if st := pc.TxStatus(); st != 'T' {
			t.Fatalf("after COMMIT AND CHAIN: status %q, want 'T'", st)
		}
		if _, err := pc.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
			t.Fatal(err)
		}
		var n int
		var setting string
		if err := c.QueryRow(ctx, "WITH w AS (UPDATE accounts SET balance = balance + 1 WHERE name = 'alice' RETURNING coalesce(current_setting('app.failed_txn', true), '') AS v) SELECT (SELECT count(*) FROM notes WHERE body = $1), (SELECT v FROM w)", body).Scan(&n, &setting); err != nil {
			t.Fatal(err)
		}
		if n != 0 || setting != "" {
			t.Errorf("on the hub: %d rows of the failed transaction's INSERT, app.failed_txn %q; want 0 and empty", n, setting)
		}

		// A write first and a COMMIT after it, in one Query: PostgreSQL
		// rejects the write (25P02) and so the whole Query; nothing commits.
		for _, q := range []string{"BEGIN", "SELECT 1/0"} {
			pc.Exec(ctx, q).ReadAll()
		}
		body1 := body + " then commit"
		_, err = pc.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, '"+body1+"'); COMMIT").ReadAll()
		wantCode(t, err, "25P02")
		pc.Exec(ctx, "ROLLBACK").ReadAll()
		if err := c.QueryRow(ctx, "SELECT count(*) FROM notes WHERE body = $1", body1).Scan(&n); err != nil || n != 0 {
			t.Errorf("a write sent with a COMMIT in a failed transaction: %d rows (%v), want 0", n, err)
		}

		// A Query that ends the failed transaction and then writes: the
		// write runs on the hub, as autocommit.
		body2 := body + " after its rollback"
		for _, q := range []string{"BEGIN", "SELECT 1/0"} {
			pc.Exec(ctx, q).ReadAll()
		}
		if _, err := pc.Exec(ctx, "ROLLBACK; INSERT INTO notes (account_id, body) VALUES (1, '"+body2+"')").ReadAll(); err != nil {
			t.Fatalf("ROLLBACK and a write in one Query after a failure: %v", err)
		}
		if err := c.QueryRow(ctx, "SELECT count(*) FROM notes WHERE body = $1", body2).Scan(&n); err != nil || n != 1 {
			t.Errorf("the write after the ROLLBACK: %d rows (%v), want 1", n, err)
		}
	})

	// A unit that moves a replica transaction to the hub and ends it there
	// learns the hub's position, so the session's next local read waits
	// for its write. Replay is paused on the standby while the unit runs
	// and resumed a moment later: a read that does not wait sees nothing.
	t.Run("a unit that moves its transaction and ends it", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		pc := c.PgConn()
		replay := newReplayPause(t, f.lab)
		for i, tc := range []struct {
			name   string
			before []string
			unit   func(body string) error
		}{
			{"INSERT; COMMIT", []string{"BEGIN", "SELECT 1"}, func(body string) error {
				_, err := pc.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, '"+body+"'); COMMIT").ReadAll()
				return err
			}},
			{"ROLLBACK; INSERT after a failure", []string{"BEGIN", "SELECT 1/0"}, func(body string) error {
				_, err := pc.Exec(ctx, "ROLLBACK; INSERT INTO notes (account_id, body) VALUES (1, '"+body+"')").ReadAll()
				return err
			}},
			{"extended INSERT, COMMIT", []string{"BEGIN", "SELECT 1"}, func(body string) error {
				b := &pgconn.Batch{}
				b.ExecParams("INSERT INTO notes (account_id, body) VALUES (1, $1)", [][]byte{[]byte(body)}, nil, nil, nil)
				b.ExecParams("COMMIT", nil, nil, nil, nil)
				_, err := pc.ExecBatch(ctx, b).ReadAll()
				return err
			}},
		} {
			for _, q := range tc.before {
				pc.Exec(ctx, q).ReadAll()
			}
			replay.pause(ctx, t)
			body := fmt.Sprintf("moved and ended %d %d", i, time.Now().UnixNano())
			if err := tc.unit(body); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			readsOwnWrite(ctx, t, replay, c, body, tc.name)
			if st := pc.TxStatus(); st != 'I' {
				t.Errorf("%s: status %q after the read, want 'I'", tc.name, st)
			}
		}
	})

	// Savepoints made on the replica exist on the hub once the transaction
	// moves there (Django's nested atomic blocks RELEASE one made before
	// their first write), and what a ROLLBACK TO undid is neither replayed
	// nor kept for the session.
	t.Run("savepoints across the move", func(t *testing.T) {
		ctx := ctxT(t)
		pc := f.connect(t, nil).PgConn()
		run := func(q string) [][][]byte {
			t.Helper()
			rr, err := pc.Exec(ctx, q).ReadAll()
			if err != nil {
				t.Fatalf("%s: %v", q, err)
			}
			var rows [][][]byte
			for _, r := range rr {
				rows = append(rows, r.Rows...)
			}
			return rows
		}
		body := fmt.Sprintf("savepoint %d", time.Now().UnixNano())
		for _, q := range []string{"BEGIN", "SELECT 1", `SAVEPOINT "s1_x1"`, "INSERT INTO notes (account_id, body) VALUES (1, '" + body + "')", `RELEASE SAVEPOINT "s1_x1"`, "COMMIT"} {
			run(q)
		}
		if got := run("SELECT count(*) FROM notes WHERE body = '" + body + "'"); string(got[0][0]) != "1" {
			t.Errorf("rows of the transaction with a released savepoint: %s, want 1", got[0][0])
		}

		for _, q := range []string{"BEGIN", "SELECT 1", "SAVEPOINT a", "SET LOCAL statement_timeout = 4321", "SET app.sp_undone = 'yes'", "ROLLBACK TO SAVEPOINT a"} {
			run(q)
		}
		got := run("UPDATE accounts SET balance = balance + 1 WHERE name = 'alice' RETURNING current_setting('statement_timeout'), pg_is_in_recovery()::text")
		if string(got[0][0]) != "0" || string(got[0][1]) != "false" {
			t.Errorf("moved to the hub after ROLLBACK TO: statement_timeout %s (in recovery %s), want 0 on the hub", got[0][0], got[0][1])
		}
		run("ROLLBACK TO SAVEPOINT a") // the savepoint exists on the hub
		run("COMMIT")
		if got := run("UPDATE accounts SET balance = balance + 1 WHERE name = 'alice' RETURNING coalesce(current_setting('app.sp_undone', true), '')"); string(got[0][0]) != "" {
			t.Errorf("a SET undone by ROLLBACK TO reached the hub after the commit: %q", got[0][0])
		}

		// pgjdbc's autosave: a savepoint in front of every query, in the
		// same batch; one query fails, its savepoint is rolled back to, and
		// what the transaction set before stands when it moves to the hub.
		c := f.connect(t, nil)
		if _, err := c.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		b := &pgx.Batch{}
		b.Queue("SAVEPOINT autosave")
		b.Queue("SELECT set_config('app.tenant', 'tenant-1', true)")
		if err := c.SendBatch(ctx, b).Close(); err != nil {
			t.Fatal(err)
		}
		b = &pgx.Batch{}
		b.Queue("SAVEPOINT autosave")
		b.Queue("SELECT 1/0")
		if err := c.SendBatch(ctx, b).Close(); err == nil {
			t.Fatal("the failing batch did not fail")
		}
		if _, err := c.Exec(ctx, "ROLLBACK TO SAVEPOINT autosave"); err != nil {
			t.Fatal(err)
		}
		var tenant, recov string
		if err := c.QueryRow(ctx, "UPDATE accounts SET balance = balance + 1 WHERE name = 'alice' RETURNING current_setting('app.tenant'), pg_is_in_recovery()::text").Scan(&tenant, &recov); err != nil {
			t.Fatal(err)
		}
		if tenant != "tenant-1" || recov != "false" {
			t.Errorf("after autosave's ROLLBACK TO, on the hub: app.tenant %q (in recovery %s), want tenant-1", tenant, recov)
		}
		if _, err := c.Exec(ctx, "COMMIT"); err != nil {
			t.Fatal(err)
		}

		// Rolling back to a savepoint recovers a failed transaction: a
		// write after it in the same Query runs, on the hub. A savepoint
		// made beside another statement is followed too.
		body3 := body + " after a rollback to"
		run("BEGIN")
		run("SAVEPOINT c; SELECT 1")
		if _, err := pc.Exec(ctx, "SELECT 1/0").ReadAll(); err == nil {
			t.Fatal("SELECT 1/0 did not fail")
		}
		run("ROLLBACK TO SAVEPOINT c; INSERT INTO notes (account_id, body) VALUES (1, '" + body3 + "')")
		run("RELEASE SAVEPOINT c")
		run("COMMIT")
		if got := run("SELECT count(*) FROM notes WHERE body = '" + body3 + "'"); string(got[0][0]) != "1" {
			t.Errorf("the write after ROLLBACK TO in a failed transaction: %s rows, want 1", got[0][0])
		}

		// A savepoint made in the Query that opened the transaction is
		// replayed once: released, it is gone on the hub too.
		run("BEGIN; SAVEPOINT d; SELECT 1")
		run("UPDATE accounts SET balance = balance + 1 WHERE name = 'alice'")
		run("RELEASE SAVEPOINT d")
		_, err := pc.Exec(ctx, "ROLLBACK TO SAVEPOINT d").ReadAll()
		wantCode(t, err, "3B001")
		run("ROLLBACK")
	})

	t.Run("lazy transaction", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var recov bool
		if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&recov); err != nil || !recov {
			t.Fatalf("first read of a transaction: standby=%v err=%v", recov, err)
		}
		if _, err := tx.Exec(ctx, "SET LOCAL statement_timeout = 4321"); err != nil {
			t.Fatal(err)
		}
		var timeout string
		if err := tx.QueryRow(ctx, "UPDATE accounts SET balance = balance + 1 WHERE name = 'alice' RETURNING current_setting('statement_timeout')").Scan(&timeout); err != nil {
			t.Fatal(err)
		}
		if timeout != "4321ms" {
			t.Errorf("SET LOCAL not replayed when the transaction moved to the hub: statement_timeout=%q", timeout)
		}
		if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&recov); err != nil || recov {
			t.Fatalf("read after the first write: standby=%v err=%v", recov, err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		// A SET LOCAL and a SET TRANSACTION beside a read in one Query are
		// replayed too.
		pc := c.PgConn()
		mustExec(ctx, t, c, "BEGIN")
		if _, err := pc.Exec(ctx, "SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED; SET LOCAL lock_timeout = 1234; SELECT 1").ReadAll(); err != nil {
			t.Fatal(err)
		}
		var lockTimeout, isolation string
		if err := c.QueryRow(ctx, "UPDATE accounts SET balance = balance + 1 WHERE name = 'alice' RETURNING current_setting('lock_timeout'), current_setting('transaction_isolation'), pg_is_in_recovery()").Scan(&lockTimeout, &isolation, &recov); err != nil {
			t.Fatal(err)
		}
		if lockTimeout != "1234ms" || isolation != "read uncommitted" || recov {
			t.Errorf("SET LOCAL and SET TRANSACTION beside a read, after the move: lock_timeout %q, isolation %q, standby %v; want 1234ms, read uncommitted, on the hub", lockTimeout, isolation, recov)
		}
		mustExec(ctx, t, c, "ROLLBACK")
		// A read-only transaction never leaves the replica.
		before := f.wanBytes()
		tx, err = c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if after := f.wanBytes(); after != before {
			t.Errorf("read-only transaction sent %v WAN bytes", after-before)
		}
	})

	t.Run("safety net", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		// A function that writes looks like a read to the classifier: the
		// standby refuses it with 25006 and the proxy re-runs it on the hub.
		if _, err := c.Exec(ctx, `CREATE OR REPLACE FUNCTION add_note(b text) RETURNS bigint LANGUAGE sql AS
			$$ INSERT INTO notes (account_id, body) VALUES (1, b) RETURNING id $$`); err != nil {
			t.Fatal(err)
		}
		before := counterValue(t, f.m.SafetyNetReruns)
		var id int64
		if err := c.QueryRow(ctx, "SELECT add_note('via safety net')").Scan(&id); err != nil {
			t.Fatalf("write hidden in a function: %v", err)
		}
		if got := counterValue(t, f.m.SafetyNetReruns) - before; got != 1 {
			t.Errorf("safety net re-runs: %v, want 1", got)
		}
		var body string
		if err := c.QueryRow(ctx, "SELECT body FROM notes WHERE id = $1", id).Scan(&body); err != nil || body != "via safety net" {
			t.Fatalf("row written through the safety net: %q %v", body, err)
		}
		// Inside a transaction still on the replica, the statement moves it.
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow(ctx, "SELECT add_note('in a transaction')").Scan(&id); err != nil {
			t.Fatalf("hidden write in a transaction: %v", err)
		}
		var recov bool
		if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery() FROM notes WHERE id = $1", id).Scan(&recov); err != nil || recov {
			t.Fatalf("transaction did not move to the hub: standby=%v err=%v", recov, err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRow(ctx, "WITH x AS (SELECT 1) SELECT pg_is_in_recovery() FROM accounts FOR UPDATE LIMIT 1").Scan(&recov); err != nil || recov {
			t.Fatalf("locking read: standby=%v err=%v", recov, err)
		}
	})

	t.Run("hub down", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		f.cut(t)
		_, err := c.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'refused')")
		pe := wantCode(t, err, "25006")
		t.Logf("refusal: %s", pe.Message)
		if !strings.Contains(pe.Message, l.WANPGAddr()) || !strings.Contains(pe.Message, "read-only") {
			t.Errorf("refusal does not name the hub and say read-only: %q", pe.Message)
		}
		if got := c.PgConn().ParameterStatus("in_hot_standby"); got != "on" {
			t.Errorf("in_hot_standby not updated to on after the hub went down: %q", got)
		}
		if got := counterValue(t, f.m.Front.WritesRefused); got < 1 {
			t.Errorf("writes refused metric %v", got)
		}
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil || n < 3 {
			t.Fatalf("read during outage: n=%d err=%v", n, err)
		}
		// A read-write transaction opens locally; its write is refused.
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil {
			t.Fatal(err)
		}
		_, err = tx.Exec(ctx, "UPDATE accounts SET balance = 0")
		// Raised on the replica to abort its transaction, but read as the
		// proxy's own error: none of the DO block's PL/pgSQL context.
		if pe := wantCode(t, err, "25006"); pe.Where != "" || pe.Routine != "" || !strings.Contains(pe.Message, "read-only") {
			t.Errorf("refusal in a transaction: message %q, context %q, routine %q; want the proxy's message alone", pe.Message, pe.Where, pe.Routine)
		}
		if st := tx.Conn().PgConn().TxStatus(); st != 'E' {
			t.Errorf("after the refusal in a transaction: status %q, want 'E'", st)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		// New sessions log in during the outage.
		c2 := f.connect(t, nil)
		if err := c2.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if got := c2.PgConn().ParameterStatus("in_hot_standby"); got != "on" {
			t.Errorf("in_hot_standby = %q while the hub is down", got)
		}
	})
}

func (f *front) wanBytes() float64 {
	return counterValue(nil, f.m.Front.WANBytesToHub) + counterValue(nil, f.m.Front.WANBytesFromHub)
}
