package routing

import (
	"context"
	"testing"
	"time"
)

// The hot path of every routing unit: a front asks Decide (through
// Site.Decide, which takes a Snapshot under the Site's lock) and, after a
// write, WaitFor a position the replica has usually applied already. Run
// with: go test -run '^$' -bench . ./routing/

func BenchmarkDecide(b *testing.B) {
	snap := Snapshot{
		Protocol: Postgres,
		Hub:      HubView{Up: true, Endpoint: "hub:5432"},
		Replica:  ReplicaView{Up: true, Position: LSN(2000), LagKnown: true},
	}
	p := DefaultPolicy()
	for _, c := range []struct {
		name string
		req  Request
		want Route
	}{
		{"read/local", Request{Kind: KindRead}, RouteLocal},
		{"read/session-applied", Request{Kind: KindRead, SessionPos: LSN(1000)}, RouteLocal},
		{"read/session-ahead", Request{Kind: KindRead, SessionPos: LSN(3000)}, RouteWaitLocal},
		{"write", Request{Kind: KindWrite}, RouteHub},
	} {
		b.Run(c.name, func(b *testing.B) {
			if d := Decide(snap, c.req, p); d.Route != c.want {
				b.Fatalf("Decide = %+v, want %v", d, c.want)
			}
			for b.Loop() {
				Decide(snap, c.req, p)
			}
		})
	}
}

// upSite is a PostgreSQL Site whose hub and replica have been probed up,
// the replica at LSN 2000.
func upSite(b *testing.B) *fakeSite {
	fs := newFakeSite(b, Postgres, "hub")
	for range 2 {
		fs.probe("hub", ProbeResult{Writable: true, Position: LSN(2000)}, nil)
		fs.probe("replica", ProbeResult{Position: LSN(2000)}, nil)
	}
	if sn := fs.Snapshot(); !sn.Hub.Up || !sn.Replica.Up {
		b.Fatalf("site not up: %+v", sn)
	}
	return fs
}

func BenchmarkSiteDecide(b *testing.B) {
	fs := upSite(b)
	req := Request{Kind: KindRead, SessionPos: LSN(1000)}
	if d := fs.Decide(req); d.Route != RouteLocal {
		b.Fatalf("Decide = %+v", d)
	}
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			fs.Decide(req)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				fs.Decide(req)
			}
		})
	})
}

// BenchmarkWaitForApplied is WaitFor of a position the replica has already
// applied: it must return at once, without registering a waiter.
func BenchmarkWaitForApplied(b *testing.B) {
	fs := upSite(b)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lsn := LSN(1000)
	if err := fs.WaitFor(ctx, lsn); err != nil {
		b.Fatal(err)
	}
	b.Run("pg/serial", func(b *testing.B) {
		for b.Loop() {
			if err := fs.WaitFor(ctx, lsn); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("pg/parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := fs.WaitFor(ctx, lsn); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	fs.mu.Lock()
	waiters := len(fs.waiters)
	fs.mu.Unlock()
	if waiters != 0 {
		b.Fatalf("%d waiters registered by waits for applied positions", waiters)
	}

	// LDAP: a session's CSN against the replica's contextCSN vector.
	ls := newFakeSite(b, LDAP, "ldap://hub")
	have, err := ParseCSNSet([]string{"20261123110000.000002Z#000000#001#000000", "20261123110000.000001Z#000000#002#000000"})
	if err != nil {
		b.Fatal(err)
	}
	want, err := ParseCSN("20261123110000.000001Z#000000#001#000000")
	if err != nil {
		b.Fatal(err)
	}
	for range 2 {
		ls.probe("replica", ProbeResult{Position: have}, nil)
	}
	b.Run("ldap/serial", func(b *testing.B) {
		for b.Loop() {
			if err := ls.WaitFor(ctx, want); err != nil {
				b.Fatal(err)
			}
		}
	})
}
