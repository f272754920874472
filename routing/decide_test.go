package routing

import (
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	const hub = "hub1:5432"
	up := HubView{Up: true, Endpoint: hub}
	down := HubView{Up: false, Endpoint: hub, Reason: ReasonHubDown}
	split := HubView{Up: false, Endpoint: "hub1:5432,hub2:5432", Reason: ReasonSplitBrain}
	noPrimary := HubView{Up: false, Endpoint: hub, Reason: ReasonNoPrimary}
	starting := HubView{Up: false, Endpoint: hub, Reason: ReasonStarting}
	fresh := ReplicaView{Up: true, Position: LSN(100), LagKnown: true}
	stale := ReplicaView{Up: true, Position: LSN(100), LagKnown: true, Lag: time.Minute}
	unknownLag := ReplicaView{Up: true, Position: LSN(100)}
	noPos := ReplicaView{Up: true}
	repDown := ReplicaView{Up: false, Position: LSN(100)}

	def := DefaultPolicy()
	strict := def
	strict.OnTimeoutHub = false
	strict.ReplicaUnavailableHub = false
	none := def
	none.Consistency = ConsistencyNone
	site := def
	site.Consistency = ConsistencySite
	noBound := def
	noBound.MaxLag = 0

	read := Request{Kind: KindRead}
	write := Request{Kind: KindWrite}
	pinnedRead := Request{Kind: KindRead, PinnedHub: true}
	readAhead := Request{Kind: KindRead, SessionPos: LSN(200)}
	readBehind := Request{Kind: KindRead, SessionPos: LSN(50)}
	readAheadExpired := Request{Kind: KindRead, SessionPos: LSN(200), WaitExpired: true}

	for _, tc := range []struct {
		name   string
		hub    HubView
		rep    ReplicaView
		drill  bool
		req    Request
		pol    Policy
		route  Route
		reason Reason
		ep     string
	}{
		// Writes.
		{"write, hub up", up, fresh, false, write, def, RouteHub, ReasonWrite, hub},
		{"write, hub down", down, fresh, false, write, def, RouteRefuse, ReasonHubDown, hub},
		{"write, split brain", split, fresh, false, write, def, RouteRefuse, ReasonSplitBrain, split.Endpoint},
		{"write, no primary", noPrimary, fresh, false, write, def, RouteRefuse, ReasonNoPrimary, hub},
		{"write, starting", starting, fresh, false, write, def, RouteRefuse, ReasonStarting, hub},
		{"write, drill", up, fresh, true, write, def, RouteRefuse, ReasonDrill, hub},
		{"write, replica down, hub up", up, repDown, false, write, def, RouteHub, ReasonWrite, hub},
		{"write, hub down without reason", HubView{Endpoint: hub}, fresh, false, write, def, RouteRefuse, ReasonHubDown, hub},
		// Pinned sessions follow the hub.
		{"pinned read, hub up", up, fresh, false, pinnedRead, def, RouteHub, ReasonPinned, hub},
		{"pinned read, hub down", down, fresh, false, pinnedRead, def, RouteRefuse, ReasonHubDown, hub},
		{"pinned read, drill", up, fresh, true, pinnedRead, def, RouteRefuse, ReasonDrill, hub},
		// Plain reads.
		{"read, all well", up, fresh, false, read, def, RouteLocal, ReasonNone, hub},
		{"read, hub down", down, fresh, false, read, def, RouteLocal, ReasonNone, hub},
		{"read, drill", up, fresh, true, read, def, RouteLocal, ReasonNone, hub},
		{"read, split brain", split, fresh, false, read, def, RouteLocal, ReasonNone, split.Endpoint},
		{"read, lag unknown", up, unknownLag, false, read, def, RouteLocal, ReasonNone, hub},
		// Replica down.
		{"read, replica down, hub up, policy hub", up, repDown, false, read, def, RouteHub, ReasonReplicaDown, hub},
		{"read, replica down, hub up, policy refuse", up, repDown, false, read, strict, RouteRefuse, ReasonReplicaDown, hub},
		{"read, replica down, hub down", down, repDown, false, read, def, RouteRefuse, ReasonReplicaDown, hub},
		{"read, replica down, drill", up, repDown, true, read, def, RouteRefuse, ReasonReplicaDown, hub},
		// Replica stale.
		{"read, stale, hub up, policy hub", up, stale, false, read, def, RouteHub, ReasonReplicaStale, hub},
		{"read, stale, hub up, policy refuse", up, stale, false, read, strict, RouteRefuse, ReasonReplicaStale, hub},
		{"read, stale, hub down: best available", down, stale, false, read, def, RouteLocal, ReasonNone, hub},
		{"read, stale, drill: best available", up, stale, true, read, strict, RouteLocal, ReasonNone, hub},
		{"read, stale, no bound", up, stale, false, read, noBound, RouteLocal, ReasonNone, hub},
		// Read-your-writes.
		{"session read, replica has it", up, fresh, false, readBehind, def, RouteLocal, ReasonNone, hub},
		{"session read, replica behind", up, fresh, false, readAhead, def, RouteWaitLocal, ReasonReplicaBehind, hub},
		{"session read, replica position unknown", up, noPos, false, readBehind, def, RouteWaitLocal, ReasonReplicaBehind, hub},
		{"session read, site mode, behind", up, fresh, false, readAhead, site, RouteWaitLocal, ReasonReplicaBehind, hub},
		{"session read, consistency none", up, fresh, false, readAhead, none, RouteLocal, ReasonNone, hub},
		{"session read, behind, hub down: still wait", down, fresh, false, readAhead, def, RouteWaitLocal, ReasonReplicaBehind, hub},
		{"session read, wait expired, on_timeout hub", up, fresh, false, readAheadExpired, def, RouteHub, ReasonWaitTimeout, hub},
		{"session read, wait expired, on_timeout error", up, fresh, false, readAheadExpired, strict, RouteRefuse, ReasonWaitTimeout, hub},
		{"session read, wait expired, hub down", down, fresh, false, readAheadExpired, def, RouteRefuse, ReasonWaitTimeout, hub},
		{"session read, wait expired, drill", up, fresh, true, readAheadExpired, def, RouteRefuse, ReasonWaitTimeout, hub},
		{"session read, replica down beats behind", up, repDown, false, readAhead, def, RouteHub, ReasonReplicaDown, hub},
		{"session read, stale beats behind", up, stale, false, readAhead, def, RouteHub, ReasonReplicaStale, hub},
		{"session read with CSN, covered", up, ReplicaView{Up: true, Position: CSNSet{1: mustCSN(t, "20261123105512.000002Z#000000#001#000000")}}, false,
			Request{Kind: KindRead, SessionPos: mustCSN(t, "20261123105512.000001Z#000000#001#000000")}, def, RouteLocal, ReasonNone, hub},
		{"session read with CSN of another sid", up, ReplicaView{Up: true, Position: CSNSet{1: mustCSN(t, "20261123105512.000002Z#000000#001#000000")}}, false,
			Request{Kind: KindRead, SessionPos: mustCSN(t, "20261123105512.000001Z#000000#002#000000")}, def, RouteWaitLocal, ReasonReplicaBehind, hub},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Snapshot{Protocol: Postgres, Hub: tc.hub, Replica: tc.rep, Drill: tc.drill}
			got := Decide(s, tc.req, tc.pol)
			if got.Route != tc.route || got.Reason != tc.reason || got.Hub != tc.ep {
				t.Errorf("Decide = {%v %v %q}, want {%v %v %q}", got.Route, got.Reason, got.Hub, tc.route, tc.reason, tc.ep)
			}
		})
	}
}

func TestReasonAndRouteText(t *testing.T) {
	seen := map[string]bool{}
	for r := ReasonNone; r <= ReasonStarting; r++ {
		s := r.String()
		if s == "" || seen[s] {
			t.Errorf("reason %d has empty or duplicate text %q", int(r), s)
		}
		seen[s] = true
	}
	if Reason(99).String() != "reason(99)" || RouteWaitLocal.String() != "wait_local" || Route(9).String() != "route(9)" {
		t.Error("fallback texts wrong")
	}
}

// FuzzDecide checks the contract's invariants over arbitrary states: a
// write never runs locally and never reaches an unusable hub; nothing is
// sent to an unusable hub; a read is only served locally by a replica that
// is up and, unless the policy says none, has the session's position.
func FuzzDecide(f *testing.F) {
	f.Add(uint16(0), uint64(100), uint64(50), int64(0))
	f.Add(uint16(0xffff), uint64(1), uint64(2), int64(time.Hour))
	f.Fuzz(func(t *testing.T, bits uint16, replicaPos, sessionPos uint64, lag int64) {
		bit := func(i uint) bool { return bits&(1<<i) != 0 }
		s := Snapshot{
			Hub:     HubView{Up: bit(0), Endpoint: "hub", Reason: Reason(int(bits>>8) % (int(ReasonStarting) + 1))},
			Replica: ReplicaView{Up: bit(1), Lag: time.Duration(lag), LagKnown: bit(2)},
			Drill:   bit(3),
		}
		if bit(4) {
			s.Replica.Position = LSN(replicaPos)
		}
		r := Request{Kind: KindRead, PinnedHub: bit(6), WaitExpired: bit(7)}
		if bit(5) {
			r.Kind = KindWrite
		}
		if bit(12) {
			r.SessionPos = LSN(sessionPos)
		}
		p := Policy{Consistency: Consistency(int(bits>>13) % 3), OnTimeoutHub: bit(8), ReplicaUnavailableHub: bit(9), MaxLag: time.Minute}
		d := Decide(s, r, p)
		hubOK := s.Hub.Up && !s.Drill
		if d.Route == RouteHub && !hubOK {
			t.Fatalf("routed to an unusable hub: %+v for %+v %+v", d, s, r)
		}
		if (r.Kind == KindWrite || r.PinnedHub) && d.Route != RouteHub && d.Route != RouteRefuse {
			t.Fatalf("write or pinned request not on the hub: %+v", d)
		}
		if (r.Kind == KindWrite || r.PinnedHub) && hubOK != (d.Route == RouteHub) {
			t.Fatalf("write with hub usable=%v got %+v", hubOK, d)
		}
		if d.Route == RouteLocal || d.Route == RouteWaitLocal {
			if !s.Replica.Up {
				t.Fatalf("local route with the replica down: %+v", d)
			}
		}
		if d.Route == RouteLocal && p.Consistency != ConsistencyNone && r.SessionPos != nil {
			if s.Replica.Position == nil || !s.Replica.Position.Covers(r.SessionPos) {
				t.Fatalf("local read before the session's position: %+v %+v %+v", d, s.Replica, r)
			}
		}
		if d.Route == RouteRefuse && d.Reason == ReasonNone {
			t.Fatalf("refusal without a reason: %+v", d)
		}
	})
}
