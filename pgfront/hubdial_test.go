package pgfront

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/spokeproxy/spokeproxy/routing"
)

// movedOnSite routes writes to a hub it still calls usable while dialling
// that hub fails: the moment between a routing snapshot and a failover.
type movedOnSite struct{ downSite }

func (movedOnSite) HubUnavailable() error { return nil }
func (movedOnSite) Decide(r routing.Request) routing.Decision {
	if r.Kind == routing.KindRead {
		return routing.Decision{Route: routing.RouteLocal}
	}
	return routing.Decision{Route: routing.RouteHub, Hub: "hub.test:5432"}
}

// A write whose hub dial fails while the site still calls the hub usable
// is refused as hub-unavailable (25006), never a panic or a silent success.
func TestHubDialFailsWhileTheSiteSaysUp(t *testing.T) {
	fe, done := scriptedSession(t, movedOnSite{downSite{changes: make(chan struct{})}})
	if code := queryCode(t, fe, "INSERT INTO t VALUES (1)"); code != "25006" {
		t.Fatalf("write with a failing hub dial got SQLSTATE %q, want 25006", code)
	}
	fe.Send(&pgproto3.Terminate{})
	fe.Flush()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("session did not end after Terminate")
	}
}

// staleRefusingSite refuses reads: a stale replica with when_unavailable:
// refuse while the hub is unusable.
type staleRefusingSite struct{ downSite }

func (staleRefusingSite) Decide(routing.Request) routing.Decision {
	return routing.Decision{Route: routing.RouteRefuse, Reason: routing.ReasonReplicaStale}
}

// A read the routing core refuses is refused, not served from the stale
// replica, and the session stays usable.
func TestReadRefusedByRouting(t *testing.T) {
	fe, done := scriptedSession(t, staleRefusingSite{downSite{changes: make(chan struct{})}})
	for i := 0; i < 2; i++ {
		if code := queryCode(t, fe, "SELECT 1"); code != "08006" {
			t.Fatalf("read %d refused by routing got SQLSTATE %q, want 08006", i, code)
		}
	}
	fe.Send(&pgproto3.Terminate{})
	fe.Flush()
	<-done
}

// scriptedSession runs one logged-in session against site, with the fake
// replica of the fuzz test, and returns the client's side.
func scriptedSession(t *testing.T, site Site) (*pgproto3.Frontend, <-chan struct{}) {
	t.Helper()
	srv := New(Config{ReplicaAddr: "127.0.0.1:1"}, site, nil, nil)
	clientSide, proxySide := net.Pipe()
	replicaProxySide, replicaFake := net.Pipe()
	t.Cleanup(func() { clientSide.Close(); replicaFake.Close() })
	go fakeReplica(replicaFake)
	sess := newSession(srv, proxySide, newFrameReader(proxySide, clientReadBuffer, srv.config().MaxMessageSize), newMsgWriter(proxySide), map[string]string{"user": "app", "database": "appdb"}, &credentials{user: "app"}, srv.log)
	sess.replica = &backendConn{conn: replicaProxySide, rd: newFrameReader(replicaProxySide, 8<<10, 0), out: newMsgWriter(replicaProxySide),
		endpoint: "replica", params: map[string]string{}, prepared: map[string]bool{}}
	sess.changes = make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer cancel()
		_ = sess.run(ctx)
		sess.close()
	}()
	clientSide.SetReadDeadline(time.Now().Add(10 * time.Second))
	return pgproto3.NewFrontend(clientSide, clientSide), done
}

// queryCode sends a simple query and returns the SQLSTATE of its error ("" if none).
func queryCode(t *testing.T, fe *pgproto3.Frontend, sql string) string {
	t.Helper()
	fe.Send(&pgproto3.Query{String: sql})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	code := ""
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("no answer to %q: %v", sql, err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			code = m.Code
		case *pgproto3.ReadyForQuery:
			return code
		}
	}
}
