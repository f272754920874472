package proxy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spokeproxy/spokeproxy/metrics"
)

// MaxDrill caps a drill's duration: a drill always ends by itself, and an
// operator who typed "50h" for "50m" must not leave a site read-only for
// two days.
const MaxDrill = 2 * time.Hour

// DrillError is a drill request the server cannot honour (unknown or
// unconfigured protocol, missing or out-of-range duration). The admin API
// answers it with 400.
type DrillError struct {
	Problem string
}

func (e *DrillError) Error() string { return "drill: " + e.Problem }

// IsDrillError reports whether err is a *DrillError.
func IsDrillError(err error) bool {
	var e *DrillError
	return errors.As(err, &e)
}

// DrillState is one protocol's drill as the admin API reports it.
type DrillState struct {
	Protocol string    `json:"protocol"`
	Active   bool      `json:"active"`
	Until    time.Time `json:"until,omitzero"`
}

// drillTargets resolves "pg", "ldap", "both" or "" (every protocol the site
// runs) to the configured parts. Asking for a protocol the site does not run is an error, so an
// operator never believes a drill is on when it is not.
func (s *Server) drillTargets(protocol string) ([]*protocolPart, error) {
	var want []string
	switch strings.ToLower(strings.TrimSpace(protocol)) {
	case "", "both", "all":
		for _, p := range s.parts {
			want = append(want, p.name)
		}
	case metrics.Postgres, "postgres", "postgresql":
		want = []string{metrics.Postgres}
	case metrics.LDAP:
		want = []string{metrics.LDAP}
	default:
		return nil, &DrillError{Problem: fmt.Sprintf("protocol %q: want pg, ldap or both", protocol)}
	}
	var parts []*protocolPart
	for _, name := range want {
		i := slices.IndexFunc(s.parts, func(p *protocolPart) bool { return p.name == name })
		if i < 0 {
			return nil, &DrillError{Problem: fmt.Sprintf("protocol %q is not configured at this site", name)}
		}
		parts = append(parts, s.parts[i])
	}
	return parts, nil
}

// StartDrill forces the hub down for this proxy only, for protocol ("pg",
// "ldap" or "both") and duration d (0 < d <= MaxDrill). Writes are then
// refused exactly as with an unreachable hub; the drill ends by itself
// after d. Starting a drill that is already on replaces its end time.
func (s *Server) StartDrill(protocol string, d time.Duration) ([]DrillState, error) {
	if d <= 0 {
		return nil, &DrillError{Problem: "a positive duration is required (for example 5m), so that a drill always ends by itself"}
	}
	if d > MaxDrill {
		return nil, &DrillError{Problem: fmt.Sprintf("duration %s is longer than the maximum %s", d, MaxDrill)}
	}
	parts, err := s.drillTargets(protocol)
	if err != nil {
		return nil, err
	}
	s.drillMu.Lock()
	defer s.drillMu.Unlock()
	if s.drillEnds == nil {
		s.drillEnds = map[string]*time.Timer{}
	}
	for _, p := range parts {
		p.site.StartDrill(d)
		if t := s.drillEnds[p.name]; t != nil {
			t.Stop()
		}
		// routing ends the drill by itself; this only says so in the log,
		// so the end of an outage rehearsal is one line like its start.
		s.drillEnds[p.name] = time.AfterFunc(d, func() {
			if !p.site.Status().Drill.Active {
				s.logger.Info("drill ended by itself: the hub is no longer forced down", "protocol", p.name, "after", d.String())
			}
		})
	}
	return s.drillStates(), nil
}

// StopDrill ends the drill of protocol ("pg", "ldap" or "both") early.
// Stopping a protocol without a drill is not an error.
func (s *Server) StopDrill(protocol string) ([]DrillState, error) {
	parts, err := s.drillTargets(protocol)
	if err != nil {
		return nil, err
	}
	s.drillMu.Lock()
	defer s.drillMu.Unlock()
	for _, p := range parts {
		p.site.StopDrill()
		if t := s.drillEnds[p.name]; t != nil {
			t.Stop()
			delete(s.drillEnds, p.name)
		}
	}
	return s.drillStates(), nil
}

// drillStates reports every configured protocol's drill.
func (s *Server) drillStates() []DrillState {
	var out []DrillState
	for _, p := range s.parts {
		d := p.site.Status().Drill
		out = append(out, DrillState{Protocol: p.name, Active: d.Active, Until: d.Until})
	}
	return out
}
