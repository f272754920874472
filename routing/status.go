package routing

import "time"

// Status is one protocol's state for the /status page (JSON).
type Status struct {
	Protocol Protocol    `json:"protocol"`
	Hub      HubStatus   `json:"hub"`
	Drill    DrillStatus `json:"drill"`
	Replica  Replica     `json:"replica"`
	// Endpoints lists every hub candidate, then the replica.
	Endpoints []EndpointStatus `json:"endpoints"`
}

// HubStatus is the protocol-level hub state.
type HubStatus struct {
	Up       bool      `json:"up"`
	Endpoint string    `json:"endpoint"`
	Reason   string    `json:"reason,omitempty"` // why it is not usable
	Since    time.Time `json:"since"`
}

// DrillStatus says whether an operator drill forces the hub down.
type DrillStatus struct {
	Active bool      `json:"active"`
	Until  time.Time `json:"until,omitzero"`
}

// Replica is the replica's freshness.
type Replica struct {
	Up         bool    `json:"up"`
	Position   string  `json:"position,omitempty"`
	HubPos     string  `json:"hub_position,omitempty"`
	LagSeconds float64 `json:"lag_seconds"`
	LagKnown   bool    `json:"lag_known"`
	LagBytes   *int64  `json:"lag_bytes,omitempty"` // PostgreSQL, when known
	Waiters    int     `json:"waiters"`             // reads waiting for a position now
}

// EndpointStatus is one probed server.
type EndpointStatus struct {
	Target        Target    `json:"target"`
	Endpoint      string    `json:"endpoint"`
	State         LinkState `json:"state"`
	Since         time.Time `json:"since"`
	Writable      bool      `json:"writable"`
	Position      string    `json:"position,omitempty"`
	PositionAt    time.Time `json:"position_at,omitzero"`
	LastProbe     time.Time `json:"last_probe,omitzero"`
	ProbeSeconds  float64   `json:"probe_seconds"`
	LastError     string    `json:"last_error,omitempty"`
	LastErrorAt   time.Time `json:"last_error_at,omitzero"`
	ConsecFails   int       `json:"consecutive_failures"`
	ConsecSuccess int       `json:"consecutive_successes"`
	// SuccessesNeeded is what a DOWN endpoint needs to come back UP now
	// (more than up_after while flap damping holds it down).
	SuccessesNeeded int `json:"successes_needed,omitempty"`
}

// Status returns every endpoint's state, positions and lag.
func (s *Site) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	lag, known := s.lagLocked(now)
	st := Status{
		Protocol: s.protocol,
		Hub:      HubStatus{Up: s.hubUp, Endpoint: s.hubEndpoint, Since: s.hubSince},
		Replica: Replica{
			Up:         s.replica.link.state == StateUp,
			LagSeconds: lag.Seconds(),
			LagKnown:   known,
			Waiters:    len(s.waiters),
		},
	}
	if !s.hubUp {
		st.Hub.Reason = s.hubReason.String()
	}
	if s.drillActiveLocked(now) {
		st.Drill = DrillStatus{Active: true, Until: s.drillUntil}
	}
	if s.replica.pos != nil {
		st.Replica.Position = s.replica.pos.String()
	}
	if s.hubPos != nil {
		st.Replica.HubPos = s.hubPos.String()
	}
	if b := s.lagBytesLocked(); s.protocol == Postgres && b >= 0 {
		st.Replica.LagBytes = &b
	}
	for _, ep := range append(append([]*endpoint(nil), s.hubs...), s.replica) {
		e := EndpointStatus{
			Target:        ep.target,
			Endpoint:      ep.addr,
			State:         ep.link.state,
			Since:         ep.link.since,
			Writable:      ep.writable && ep.link.state == StateUp,
			PositionAt:    ep.posAt,
			LastProbe:     ep.lastProbe,
			ProbeSeconds:  ep.lastDur.Seconds(),
			LastErrorAt:   ep.link.errAt,
			ConsecFails:   ep.link.fails,
			ConsecSuccess: ep.link.oks,
		}
		if ep.link.state == StateDown {
			e.SuccessesNeeded = ep.link.needUp(now)
		}
		if ep.pos != nil {
			e.Position = ep.pos.String()
		}
		e.LastError = ep.link.errText
		st.Endpoints = append(st.Endpoints, e)
	}
	return st
}
