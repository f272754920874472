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
	srv := New(Config{ReplicaAddr: "127.0.0.1:1"}, movedOnSite{downSite{changes: make(chan struct{})}}, nil, nil)
	clientSide, proxySide := net.Pipe()
	replicaProxySide, replicaFake := net.Pipe()
	defer clientSide.Close()
	defer replicaFake.Close()
	go fakeReplica(replicaFake)
	be := pgproto3.NewBackend(proxySide, proxySide)
	sess := newSession(srv, proxySide, be, map[string]string{"user": "app", "database": "appdb"}, &credentials{user: "app"}, srv.log)
	sess.replica = &backendConn{conn: replicaProxySide, rd: newFrameReader(replicaProxySide, 8<<10, 0), fe: pgproto3.NewFrontend(noReader{}, replicaProxySide),
		endpoint: "replica", params: map[string]string{}, prepared: map[string]bool{}}
	sess.changes = make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = sess.run(ctx)
		sess.close()
	}()

	fe := pgproto3.NewFrontend(clientSide, clientSide)
	fe.Send(&pgproto3.Query{String: "INSERT INTO t VALUES (1)"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	clientSide.SetReadDeadline(time.Now().Add(5 * time.Second))
	var code string
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("no answer to the write: %v", err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			code = e.Code
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if code != "25006" {
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
