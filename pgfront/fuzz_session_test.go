package pgfront

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/spokeproxy/spokeproxy/routing"
)

// downSite is a Site whose hub is down: writes are refused, nothing dials.
type downSite struct{ changes chan struct{} }

func (s downSite) Snapshot() routing.Snapshot {
	return routing.Snapshot{Replica: routing.ReplicaView{Up: true}}
}
func (s downSite) Decide(routing.Request) routing.Decision {
	return routing.Decision{Route: routing.RouteLocal}
}
func (s downSite) HubUnavailable() error {
	return &routing.HubUnavailableError{Protocol: routing.Postgres, Hub: "hub.test:5432", Reason: routing.ReasonHubDown}
}
func (s downSite) ReportHubFailure(string, error)                  {}
func (s downSite) ReportReplicaFailure(error)                      {}
func (s downSite) WaitFor(context.Context, routing.Position) error { return nil }
func (s downSite) Changes() <-chan struct{}                        { return s.changes }
func (s downSite) DialHub(context.Context, string) (net.Conn, error) {
	return nil, errors.New("no hub in this test")
}

// fakeReplica answers every Query and Sync with ReadyForQuery, like a
// backend that has nothing to say; it is the scripted peer of the fuzz.
func fakeReplica(conn net.Conn) {
	be := pgproto3.NewBackend(conn, conn)
	status := byte('I')
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			if len(m.String) >= 5 && (m.String[:5] == "BEGIN" || m.String[:5] == "begin") {
				status = 'T'
			}
			be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 0")})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: status})
		case *pgproto3.Sync:
			be.Send(&pgproto3.ReadyForQuery{TxStatus: status})
		case *pgproto3.Terminate:
			return
		default:
			continue
		}
		if be.Flush() != nil {
			return
		}
	}
}

// FuzzSessionMessages feeds arbitrary bytes, as a logged-in client's
// messages, to a session whose replica is a scripted fake and whose hub
// is down. The session must neither panic nor hang: it ends when the
// input ends or is rejected.
func FuzzSessionMessages(f *testing.F) {
	enc := func(msgs ...pgproto3.FrontendMessage) []byte {
		var b []byte
		for _, m := range msgs {
			b, _ = m.Encode(b)
		}
		return b
	}
	f.Add(enc(&pgproto3.Query{String: "SELECT 1"}))
	f.Add(enc(&pgproto3.Query{String: "BEGIN"}, &pgproto3.Query{String: "INSERT INTO t VALUES (1)"}, &pgproto3.Query{String: "ROLLBACK"}))
	f.Add(enc(&pgproto3.Parse{Name: "s", Query: "SELECT $1"}, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Close{ObjectType: 'S', Name: "s"}, &pgproto3.Sync{}))
	f.Add(enc(&pgproto3.Parse{Query: "INSERT INTO t VALUES (1)"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}))
	f.Add(enc(&pgproto3.Query{String: "COPY t TO STDOUT"}, &pgproto3.CopyData{Data: []byte("x")}, &pgproto3.Terminate{}))
	f.Add([]byte("Q\x00\x00\x00\x04"))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		srv := New(Config{ReplicaAddr: "127.0.0.1:1", MaxMessageSize: 1 << 16}, downSite{changes: make(chan struct{})}, nil, nil)
		clientSide, proxySide := net.Pipe()
		replicaProxySide, replicaFake := net.Pipe()
		defer clientSide.Close()
		defer replicaFake.Close()
		go fakeReplica(replicaFake)
		go func() { _, _ = io.Copy(io.Discard, clientSide) }()
		go func() {
			_, _ = clientSide.Write(in)
			_ = clientSide.Close()
		}()
		sess := newSession(srv, proxySide, newFrameReader(proxySide, clientReadBuffer, srv.config().MaxMessageSize), newMsgWriter(proxySide), // as Server.handle does
			map[string]string{"user": "app", "database": "appdb"}, &credentials{user: "app"}, srv.log)
		sess.replica = &backendConn{conn: replicaProxySide, rd: newFrameReader(replicaProxySide, 8<<10, 0), out: newMsgWriter(replicaProxySide),
			endpoint: "replica", params: map[string]string{}, prepared: map[string]bool{}}
		sess.changes = make(chan struct{})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = sess.run(ctx)
			sess.close()
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("session hung on input %q", in)
		}
		if ctx.Err() != nil {
			t.Fatalf("session only ended by its context on input %q", in)
		}
	})
}
