package pgfront

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/spokeproxy/spokeproxy/lab"
)

const pgBin = "/usr/lib/postgresql/15/bin"

// runTool runs a PostgreSQL client tool against the proxy as the app role.
func (f *front) runTool(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	host, port, _ := net.SplitHostPort(f.addr)
	cmd := exec.CommandContext(ctx, filepath.Join(pgBin, name), args...)
	cmd.Env = append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER="+lab.AppUser,
		"PGPASSWORD="+lab.AppPassword, "PGDATABASE="+lab.AppDatabase, "PGSSLMODE=prefer", "PGCONNECT_TIMEOUT=10")
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func TestLabPGClients(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)

	t.Run("psql script", func(t *testing.T) {
		script := `\set ON_ERROR_STOP 1
SELECT count(*) AS accounts FROM accounts;
INSERT INTO notes (account_id, body) VALUES (1, 'from psql');
SELECT body, pg_is_in_recovery() AS local FROM notes WHERE body = 'from psql';
BEGIN;
SELECT count(*) FROM notes;
UPDATE accounts SET balance = balance + 1 WHERE name = 'bob';
SELECT pg_is_in_recovery() AS in_txn_after_write;
COMMIT;
\copy notes (account_id, body) FROM STDIN
2	copied one
3	copied two
\.
SELECT count(*) AS copied FROM notes WHERE body LIKE 'copied %';
\copy (SELECT name FROM accounts ORDER BY id) TO STDOUT
\d accounts
SELECT 1 AS "multi"; SELECT 2 AS "statement";
`
		out := f.runTool(t, script, "psql", "-X", "-v", "ON_ERROR_STOP=1", "-f", "-")
		for _, want := range []string{
			"from psql | t", // read-your-write, served by the standby
			"in_txn_after_write \n--------------------\n f", // moved to the hub
			"copied \n--------\n      2",
			"alice\nbob\ncarol",
			`Table "public.accounts"`,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("psql output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("pgbench", func(t *testing.T) {
		f.runTool(t, "", "pgbench", "-i", "-s", "1", "-q")
		tps := regexp.MustCompile(`tps = ([0-9.]+)`)
		for _, mode := range []string{"simple", "extended", "prepared"} {
			out := f.runTool(t, "", "pgbench", "-S", "-M", mode, "-c", "4", "-j", "2", "-T", "2", "-n")
			m := tps.FindStringSubmatch(out)
			if m == nil || !strings.Contains(out, "number of failed transactions: 0") {
				t.Fatalf("pgbench -S -M %s:\n%s", mode, out)
			}
			t.Logf("pgbench -S -M %s -c 4 -T 2 through the proxy: %s tps", mode, m[1])
		}
		out := f.runTool(t, "", "pgbench", "-M", "extended", "-c", "2", "-t", "20", "-n")
		if !strings.Contains(out, "number of failed transactions: 0") {
			t.Fatalf("pgbench TPC-B through the proxy:\n%s", out)
		}
	})

	t.Run("psycopg2", func(t *testing.T) {
		host, port, _ := net.SplitHostPort(f.addr)
		prog := `
import psycopg2, sys
c = psycopg2.connect(host=sys.argv[1], port=sys.argv[2], user="app", password="apppass", dbname="appdb")
cur = c.cursor()
cur.execute("SELECT pg_is_in_recovery()")
assert cur.fetchone()[0] is True, "default-mode read not on the standby"
cur.execute("INSERT INTO notes (account_id, body) VALUES (1, %s) RETURNING id", ("psycopg2",))
nid = cur.fetchone()[0]
c.commit()
cur.execute("SELECT body, pg_is_in_recovery() FROM notes WHERE id = %s", (nid,))
row = cur.fetchone()
assert row == ("psycopg2", True), row
c.commit()
print("ok")
`
		cmd := exec.Command("/usr/bin/python3", "-c", prog, host, port)
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "ok" {
			t.Fatalf("psycopg2: %v\n%s", err, out)
		}
		// A read-only psycopg2 session (it opens a transaction before every
		// statement) sends zero bytes over the WAN, and keeps working with
		// the link cut.
		readOnly := `
import psycopg2, sys
c = psycopg2.connect(host=sys.argv[1], port=sys.argv[2], user="app", password="apppass", dbname="appdb")
cur = c.cursor()
for _ in range(3):
    cur.execute("SELECT name FROM accounts ORDER BY id")
    assert [r[0] for r in cur.fetchall()][:3] == ["alice", "bob", "carol"]
    c.commit()
c.close()
print("ok")
`
		// The session above ends after its client exits: its hub
		// connection is reset (DISCARD ALL, over the WAN) and pooled. Wait
		// for that, or on a loaded machine its bytes count as the next
		// session's.
		for deadline := time.Now().Add(10 * time.Second); testutil.ToFloat64(f.m.Front.ClientConnections) != 0; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the first psycopg2 session did not end")
			}
		}
		before := f.wanBytes()
		if out, err := exec.Command("/usr/bin/python3", "-c", readOnly, host, port).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "ok" {
			t.Fatalf("psycopg2 read-only: %v\n%s", err, out)
		}
		if d := f.wanBytes() - before; d != 0 {
			t.Errorf("read-only psycopg2 session sent %v bytes over the WAN", d)
		}
		f.cut(t)
		if out, err := exec.Command("/usr/bin/python3", "-c", readOnly, host, port).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "ok" {
			t.Fatalf("psycopg2 read-only with the link cut: %v\n%s", err, out)
		}
	})

	t.Run("pgx batch and CopyFrom", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		b := &pgx.Batch{}
		b.Queue("SELECT count(*) FROM accounts")
		b.Queue("INSERT INTO notes (account_id, body) VALUES (2, 'batch') RETURNING id")
		b.Queue("SELECT pg_is_in_recovery()")
		br := c.SendBatch(ctx, b)
		var n int
		var id int64
		var recov bool
		if err := br.QueryRow().Scan(&n); err != nil {
			t.Fatal(err)
		}
		if err := br.QueryRow().Scan(&id); err != nil {
			t.Fatal(err)
		}
		if err := br.QueryRow().Scan(&recov); err != nil {
			t.Fatal(err)
		}
		if err := br.Close(); err != nil {
			t.Fatal(err)
		}
		if n < 3 || id == 0 || recov {
			t.Errorf("batch with a write: n=%d id=%d standby=%v (want the whole batch on the hub)", n, id, recov)
		}
		rows := [][]any{{int64(1), "copy a"}, {int64(2), "copy b"}, {int64(3), "copy c"}}
		copied, err := c.CopyFrom(ctx, pgx.Identifier{"notes"}, []string{"account_id", "body"}, pgx.CopyFromRows(rows))
		if err != nil || copied != 3 {
			t.Fatalf("CopyFrom: %d %v", copied, err)
		}
		if err := c.QueryRow(ctx, "SELECT count(*) FROM notes WHERE body LIKE 'copy _'").Scan(&n); err != nil || n != 3 {
			t.Fatalf("rows after CopyFrom (read-your-writes): %d %v", n, err)
		}
	})

	t.Run("LISTEN and WaitForNotification", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		if _, err := c.Exec(ctx, "LISTEN spoke_events"); err != nil {
			t.Fatal(err)
		}
		hub, err := pgx.Connect(ctx, l.HubAppDSN())
		if err != nil {
			t.Fatal(err)
		}
		defer hub.Close(ctx)
		for i, payload := range []string{"first", "second"} {
			if _, err := hub.Exec(ctx, "SELECT pg_notify('spoke_events', $1)", payload); err != nil {
				t.Fatal(err)
			}
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			n, err := c.WaitForNotification(wctx)
			cancel()
			if err != nil {
				t.Fatalf("notification %d not relayed while idle: %v", i, err)
			}
			if n.Channel != "spoke_events" || n.Payload != payload {
				t.Fatalf("notification %+v, want %q", n, payload)
			}
			// The session still answers queries between notifications.
			var one int
			if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
				t.Fatalf("query after a notification: %v", err)
			}
		}
	})

	t.Run("request metrics", func(t *testing.T) {
		if got := testutil.ToFloat64(f.m.Front.WANBytesToHub); got == 0 {
			t.Error("no WAN bytes counted")
		}
		n, err := testutil.GatherAndCount(f.reg, "spokeproxy_requests_total")
		if err != nil || n < 3 {
			t.Errorf("requests_total series: %d %v", n, err)
		}
	})

	t.Run("cancel", func(t *testing.T) {
		c := f.connect(t, nil)
		done := make(chan error, 1)
		go func() {
			_, err := c.PgConn().Exec(context.Background(), "SELECT pg_sleep(10)").ReadAll()
			done <- err
		}()
		time.Sleep(200 * time.Millisecond)
		start := time.Now()
		if err := c.PgConn().CancelRequest(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			wantCode(t, err, "57014")
			t.Logf("cancel answered in %v", time.Since(start).Round(time.Millisecond))
		case <-time.After(5 * time.Second):
			t.Fatal("cancel did not reach the backend running pg_sleep")
		}
	})

	t.Run("hub transaction cut", func(t *testing.T) {
		ctx := ctxT(t)
		c := f.connect(t, nil)
		mustExec(ctx, t, c, "BEGIN", "UPDATE accounts SET balance = balance WHERE name = 'carol'")
		f.cut(t)
		_, err := c.Exec(ctx, "UPDATE accounts SET balance = balance WHERE name = 'alice'")
		wantCode(t, err, "08006")
		if _, err := c.Exec(ctx, "ROLLBACK"); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil || n < 3 {
			t.Fatalf("read after the cut: %d %v", n, err)
		}
	})
}

func TestLabPGUncertainty(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	ctx := ctxT(t)
	c := f.connect(t, nil)

	// Prepared statements survive DEALLOCATE ALL consistently.
	if _, err := c.Exec(ctx, "SELECT $1::int", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "DEALLOCATE ALL"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Prepare(ctx, "again", "SELECT $1::int + 1"); err != nil {
		t.Fatal(err)
	}
	var two int
	if err := c.QueryRow(ctx, "again", 1).Scan(&two); err != nil || two != 2 {
		t.Fatalf("prepared after DEALLOCATE ALL: %d %v", two, err)
	}

	// A COMMIT whose answer is lost: 08007, never a plain failure.
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO notes (account_id, body) VALUES (1, 'uncertain')"); err != nil {
		t.Fatal(err)
	}
	if err := l.Blackhole(lab.LinkPG); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.ClearToxics(lab.LinkPG); err != nil {
			t.Errorf("clear toxics: %v", err)
		}
	})
	start := time.Now()
	err = tx.Commit(ctx)
	wantCode(t, err, "08007")
	t.Logf("lost COMMIT reported as 08007 after %v", time.Since(start).Round(time.Millisecond))
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("lost COMMIT took %v to report", took)
	}
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil || n < 3 {
		t.Fatalf("read after the lost COMMIT: %d %v", n, err)
	}
}

func TestLabPGLimits(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, func(c *Config) { c.MaxMessageSize = 4096; c.MaxConnections = 2 })
	ctx := ctxT(t)

	a := f.connect(t, nil)
	_ = f.connect(t, nil)
	if _, err := pgx.Connect(ctx, f.dsn(lab.AppUser, lab.AppPassword)); err == nil {
		t.Fatal("connection beyond max_connections accepted")
	} else {
		wantCode(t, err, "53300")
	}

	_, err := a.Exec(ctx, "SELECT '"+strings.Repeat("x", 8192)+"'")
	wantCode(t, err, "08P01")

	// Garbage after login: an error and a close, nothing else disturbed.
	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	msg, err := fe.Receive()
	if e, ok := msg.(*pgproto3.ErrorResponse); !ok || e.Code != "08P01" {
		t.Fatalf("garbage startup: got %T %+v %v", msg, msg, err)
	}
	time.Sleep(50 * time.Millisecond) // the connection slot is released
	b := f.connect(t, nil)
	var one int
	if err := b.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("after garbage: %v", err)
	}
}

func TestLabPGJDBC(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	src, err := filepath.Abs("../testdata/pg/JdbcCheck.java")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url := "jdbc:postgresql://" + f.addr + "/" + lab.AppDatabase + "?sslmode=disable"
	out, err := exec.CommandContext(ctx, "java", "-cp", "/usr/share/java/postgresql.jar", src, url).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("pgjdbc: %v\n%s", err, out)
	}
}
