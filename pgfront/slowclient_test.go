package pgfront

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/spokeproxy/spokeproxy/internal/testcert"
	"github.com/spokeproxy/spokeproxy/lab"
)

// A client that sends a query with a large result and stops reading is
// closed after write_timeout, its replica backend released, while another
// client is served meanwhile; over plain TCP (the deadline armed only when
// the socket is full) and over TLS (a deadline per write).
func TestLabClientThatStopsReading(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	const writeTimeout = 500 * time.Millisecond
	f := startFront(t, l, func(c *Config) {
		c.WriteTimeout = writeTimeout
		c.TLS = &tls.Config{Certificates: []tls.Certificate{testcert.New(t).TLS}}
	})
	replica, err := pgx.Connect(ctxT(t), l.ReplicaSuperDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Close(ctxT(t))

	for _, useTLS := range []bool{false, true} {
		name := "plain"
		if useTLS {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) {
			ctx := ctxT(t)
			slowBefore := counterValue(t, f.m.SlowClients)
			slow := f.connect(t, func(cc *pgx.ConnConfig) {
				if useTLS {
					cc.TLSConfig = &tls.Config{InsecureSkipVerify: true}
				}
			})
			if _, isTLS := slow.PgConn().Conn().(*tls.Conn); isTLS != useTLS {
				t.Fatalf("client TLS %v, want %v", isTLS, useTLS)
			}
			pid := slow.PgConn().PID() // the replica backend's own PID
			// About 100 MB of rows, far beyond the socket buffers; the
			// client never reads a byte of them.
			q, err := (&pgproto3.Query{String: "SELECT repeat('x', 1000) FROM generate_series(1, 100000)"}).Encode(nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := slow.PgConn().Conn().Write(q); err != nil {
				t.Fatal(err)
			}
			start := time.Now()

			other := f.connect(t, nil)
			var n int
			if err := other.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil || n == 0 {
				t.Fatalf("another client meanwhile: %d, %v", n, err)
			}

			waitFor(t, "the slow client to be closed", func() bool { return counterValue(t, f.m.SlowClients) > slowBefore })
			t.Logf("closed %v after the query was sent (write_timeout %v)", time.Since(start).Round(time.Millisecond), writeTimeout)
			waitFor(t, "the slow client's replica backend to end", func() bool {
				var alive bool
				if err := replica.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", int(pid)).Scan(&alive); err != nil {
					t.Fatal(err)
				}
				return !alive
			})
			if err := other.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil {
				t.Fatalf("the other client afterwards: %v", err)
			}
		})
	}
}

// A LISTEN session whose client stops reading while notifications pile
// up is closed after write_timeout like any slow client: the relay of
// notifications writes outside its lock and a failed write ends the
// session (it was ignored, and the session lived on, writing into a full
// socket once per timeout).
func TestLabListenerThatStopsReading(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	const writeTimeout = 500 * time.Millisecond
	f := startFront(t, l, func(c *Config) { c.WriteTimeout = writeTimeout })
	ctx := ctxT(t)
	slow := f.connect(t, nil)
	if _, err := slow.Exec(ctx, "LISTEN spokeproxy_big"); err != nil {
		t.Fatal(err)
	}
	// From now on the client reads nothing. About 20 MB of notifications,
	// far beyond the socket buffers, sent on the hub directly (distinct:
	// PostgreSQL folds identical ones of a transaction into one).
	hub, err := pgx.Connect(ctx, l.HubSuperDSN(lab.AppDatabase))
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close(ctx)
	if _, err := hub.Exec(ctx, "SELECT pg_notify('spokeproxy_big', i || repeat('x', 7000)) FROM generate_series(1, 3000) i"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, "the listening client to be closed", func() bool { return counterValue(t, f.m.SlowClients) == 1 })
	t.Logf("closed %v after the notifications were sent (write_timeout %v)", time.Since(start).Round(time.Millisecond), writeTimeout)
	waitFor(t, "the session to end", func() bool { return f.srv.sessionCount() == 0 })
	other := f.connect(t, nil)
	var n int
	if err := other.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil {
		t.Fatalf("another client afterwards: %v", err)
	}
}
