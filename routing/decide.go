package routing

import (
	"fmt"
	"time"
)

// Protocol names the front a Site serves; its values are the metric labels.
type Protocol string

const (
	Postgres Protocol = "pg"
	LDAP     Protocol = "ldap"
)

// Kind is what a request does to data.
type Kind int

const (
	KindRead  Kind = iota // reads only: may be answered by the local replica
	KindWrite             // writes, or unknown: must run on the hub
)

func (k Kind) String() string {
	if k == KindRead {
		return "read"
	}
	return "write"
}

// Route is where a request goes.
type Route int

const (
	RouteLocal     Route = iota // the local replica answers
	RouteHub                    // the hub answers
	RouteWaitLocal              // wait (WaitFor) for the session's position, then the local replica answers
	RouteRefuse                 // the proxy refuses with a protocol-native error naming Decision.Reason
)

func (r Route) String() string {
	switch r {
	case RouteLocal:
		return "local"
	case RouteHub:
		return "hub"
	case RouteWaitLocal:
		return "wait_local"
	case RouteRefuse:
		return "refuse"
	}
	return fmt.Sprintf("route(%d)", int(r))
}

// Reason says why a route was chosen. String gives a short text suitable for
// error messages and, being from a fixed set, for a metric label.
type Reason int

const (
	ReasonNone          Reason = iota // nothing special: the normal route
	ReasonWrite                       // a write goes to the hub
	ReasonPinned                      // the session or transaction lives on the hub
	ReasonHubDown                     // no hub candidate answers probes (or the data path reported a failure)
	ReasonNoPrimary                   // hubs answer but none is writable (all in recovery)
	ReasonSplitBrain                  // two or more hub candidates claim to be primary
	ReasonDrill                       // an operator drill forces the hub down for this proxy
	ReasonReplicaDown                 // the local replica does not answer
	ReasonReplicaStale                // the local replica lags beyond the configured bound
	ReasonReplicaBehind               // the replica has not yet applied the session's position
	ReasonWaitTimeout                 // waiting for the session's position took longer than allowed
	ReasonStarting                    // the hub has not been probed yet
)

var reasonText = [...]string{
	ReasonNone:          "none",
	ReasonWrite:         "write",
	ReasonPinned:        "pinned to hub",
	ReasonHubDown:       "hub unreachable",
	ReasonNoPrimary:     "no writable hub",
	ReasonSplitBrain:    "split brain",
	ReasonDrill:         "drill",
	ReasonReplicaDown:   "replica down",
	ReasonReplicaStale:  "replica stale",
	ReasonReplicaBehind: "replica behind session",
	ReasonWaitTimeout:   "wait timeout",
	ReasonStarting:      "starting",
}

func (r Reason) String() string {
	if r >= 0 && int(r) < len(reasonText) {
		return reasonText[r]
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// Consistency is the read-your-writes mode (config consistency.mode).
type Consistency int

const (
	ConsistencySession Consistency = iota // a session reads its own writes
	ConsistencySite                       // a write is acknowledged once the local replica has it
	ConsistencyNone                       // no waiting
)

func (c Consistency) String() string {
	switch c {
	case ConsistencySession:
		return "session"
	case ConsistencySite:
		return "site"
	case ConsistencyNone:
		return "none"
	}
	return fmt.Sprintf("consistency(%d)", int(c))
}

// ParseConsistency reads the config value of consistency.mode.
func ParseConsistency(s string) (Consistency, error) {
	for _, c := range []Consistency{ConsistencySession, ConsistencySite, ConsistencyNone} {
		if s == c.String() {
			return c, nil
		}
	}
	return 0, fmt.Errorf("consistency mode %q: want session, site or none", s)
}

// Policy is the configured routing behaviour. Decide reads it; Site uses
// WaitTimeout to bound waits it is not given a context for.
type Policy struct {
	Consistency Consistency
	// WaitTimeout bounds a read's wait for its session position (the front
	// applies it to the context it passes to WaitFor).
	WaitTimeout time.Duration
	// OnTimeoutHub sends a read whose wait timed out to the hub (config
	// on_timeout: hub); false refuses it (on_timeout: error).
	OnTimeoutHub bool
	// MaxLag is the lag beyond which the replica is stale; 0 means no bound.
	MaxLag time.Duration
	// ReplicaUnavailableHub reads from the hub while the replica is down or
	// stale and the hub is usable (config when_unavailable: hub); false
	// refuses such reads (when_unavailable: refuse).
	ReplicaUnavailableHub bool
}

// DefaultPolicy is the documented default configuration.
func DefaultPolicy() Policy {
	return Policy{
		Consistency:           ConsistencySession,
		WaitTimeout:           2 * time.Second,
		OnTimeoutHub:          true,
		MaxLag:                30 * time.Second,
		ReplicaUnavailableHub: true,
	}
}

// Request is what a front asks about one routing unit.
type Request struct {
	Kind       Kind
	PinnedHub  bool     // the session or transaction already lives on the hub
	SessionPos Position // the session's read-your-writes position; nil if none
	// WaitExpired is set when the front already waited for SessionPos until
	// the wait timeout and asks again.
	WaitExpired bool
}

// Decision is where to send a request and why.
type Decision struct {
	Route  Route
	Reason Reason
	// Hub is the hub endpoint to use, or, when the hub is the problem, the
	// one that is unavailable (several, comma-separated, on split brain).
	Hub string
}

// HubView is the protocol-level hub state in a Snapshot.
type HubView struct {
	Up       bool      // a single writable hub candidate is usable
	Endpoint string    // the writable hub; when !Up the last known or first candidate
	Reason   Reason    // when !Up: ReasonHubDown, ReasonNoPrimary, ReasonSplitBrain, ReasonDrill or ReasonStarting
	Since    time.Time // when Up last changed
	LastErr  string    // the latest failure seen on Endpoint, if any
}

// ReplicaView is the local replica's state in a Snapshot.
type ReplicaView struct {
	Up       bool
	Position Position // last applied position seen; nil if never seen
	// Lag is the time since the replica last reached a hub position sampled
	// at a known time; LagKnown is false until one was reached.
	Lag      time.Duration
	LagKnown bool
	// LagBytes is hub LSN minus replica replay LSN (PostgreSQL only; -1 if unknown).
	LagBytes int64
	Since    time.Time // when Up last changed
	LastErr  string
}

// Snapshot is one protocol's routing state at one moment.
type Snapshot struct {
	Protocol Protocol
	At       time.Time
	Hub      HubView
	Replica  ReplicaView
	Drill    bool // an operator drill forces the hub down
}

// Decide routes one request. It is pure: no IO, no clock.
//
// Writes (and anything pinned to the hub) go to the hub or are refused.
// Reads go to the local replica unless it is down, stale while the hub is
// usable, or behind the session's position. During a hub outage a stale
// replica still serves reads: it is as fresh as the site can be.
func Decide(s Snapshot, r Request, p Policy) Decision {
	hubOK := s.Hub.Up && !s.Drill
	hubReason := s.Hub.Reason
	if s.Drill {
		hubReason = ReasonDrill
	} else if !s.Hub.Up && hubReason == ReasonNone {
		hubReason = ReasonHubDown
	}
	toHub := func(why Reason) Decision {
		if hubOK {
			return Decision{Route: RouteHub, Reason: why, Hub: s.Hub.Endpoint}
		}
		return Decision{Route: RouteRefuse, Reason: hubReason, Hub: s.Hub.Endpoint}
	}
	if r.Kind != KindRead {
		return toHub(ReasonWrite)
	}
	if r.PinnedHub {
		return toHub(ReasonPinned)
	}
	if !s.Replica.Up {
		if p.ReplicaUnavailableHub && hubOK {
			return Decision{Route: RouteHub, Reason: ReasonReplicaDown, Hub: s.Hub.Endpoint}
		}
		return Decision{Route: RouteRefuse, Reason: ReasonReplicaDown, Hub: s.Hub.Endpoint}
	}
	if hubOK && p.MaxLag > 0 && s.Replica.LagKnown && s.Replica.Lag > p.MaxLag {
		if p.ReplicaUnavailableHub {
			return Decision{Route: RouteHub, Reason: ReasonReplicaStale, Hub: s.Hub.Endpoint}
		}
		return Decision{Route: RouteRefuse, Reason: ReasonReplicaStale, Hub: s.Hub.Endpoint}
	}
	if p.Consistency != ConsistencyNone && r.SessionPos != nil && (s.Replica.Position == nil || !s.Replica.Position.Covers(r.SessionPos)) {
		if !r.WaitExpired {
			return Decision{Route: RouteWaitLocal, Reason: ReasonReplicaBehind, Hub: s.Hub.Endpoint}
		}
		if p.OnTimeoutHub && hubOK {
			return Decision{Route: RouteHub, Reason: ReasonWaitTimeout, Hub: s.Hub.Endpoint}
		}
		return Decision{Route: RouteRefuse, Reason: ReasonWaitTimeout, Hub: s.Hub.Endpoint}
	}
	return Decision{Route: RouteLocal, Reason: ReasonNone, Hub: s.Hub.Endpoint}
}
