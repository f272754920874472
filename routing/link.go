package routing

import "time"

// LinkState is the health of one endpoint as the state machine sees it.
type LinkState int

const (
	StateUnknown LinkState = iota // not probed yet
	StateUp
	StateDown
)

func (s LinkState) String() string {
	switch s {
	case StateUp:
		return "up"
	case StateDown:
		return "down"
	}
	return "unknown"
}

// MarshalText makes states readable in /status JSON.
func (s LinkState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// link is the hysteresis state machine of one endpoint: downAfter
// consecutive probe failures turn it DOWN, upAfter consecutive successes
// turn it UP, and a failure reported by the data path turns it DOWN at once
// (only probes bring it back). The first result decides an Unknown link, so a
// starting proxy does not wait for upAfter probes.
//
// Flap damping: a flap is an UP->DOWN transition or a recovery cut short (a
// failure after some successes while DOWN). Every flap within flapWindow
// beyond the first doubles the successes needed to come back UP (at most
// maxDamping doublings). One outage recovers after upAfter successes; a link
// that keeps flapping stays DOWN until it has been stable for longer,
// instead of flapping the site with it. Flaps older than flapWindow are
// forgotten.
//
// It has no clock of its own: callers pass the time, and it has no lock: the
// Site's mutex guards it.
type link struct {
	downAfter, upAfter int
	flapWindow         time.Duration // 0 disables damping
	flaps              []time.Time   // flaps within flapWindow, oldest first

	state   LinkState
	since   time.Time // when state last changed
	fails   int       // consecutive failures seen
	oks     int       // consecutive successes seen
	lastErr error     // latest failure, kept after recovery for /status
	errText string    // lastErr.Error(), formatted once: snapshots are taken per request
	errAt   time.Time
}

// maxDamping bounds flap damping: upAfter is at most multiplied by 8.
const maxDamping = 3

func newLink(downAfter, upAfter int, flapWindow time.Duration, now time.Time) *link {
	return &link{downAfter: max(downAfter, 1), upAfter: max(upAfter, 1), flapWindow: max(flapWindow, 0), since: now}
}

// retune changes the thresholds of a running link. Its state and counts
// stay: the next probe is judged by the new thresholds.
func (l *link) retune(downAfter, upAfter int, flapWindow time.Duration) {
	l.downAfter, l.upAfter, l.flapWindow = max(downAfter, 1), max(upAfter, 1), max(flapWindow, 0)
}

// needUp is the number of consecutive successes a DOWN link needs now.
func (l *link) needUp(now time.Time) int {
	n := 0
	for _, t := range l.flaps {
		if now.Sub(t) < l.flapWindow {
			n++
		}
	}
	return l.upAfter << min(max(n-1, 0), maxDamping)
}

func (l *link) flap(now time.Time) {
	if l.flapWindow <= 0 {
		return
	}
	i := 0
	for i < len(l.flaps) && now.Sub(l.flaps[i]) >= l.flapWindow {
		i++
	}
	l.flaps = append(l.flaps[i:], now)
}

// probe records one probe result and reports whether the state changed.
func (l *link) probe(err error, now time.Time) bool {
	if err != nil {
		if l.state == StateDown && l.oks > 0 {
			l.flap(now) // a recovery cut short
		}
		l.fails++
		l.oks = 0
		l.lastErr, l.errText, l.errAt = err, err.Error(), now
		if l.state == StateUnknown || (l.state == StateUp && l.fails >= l.downAfter) {
			return l.set(StateDown, now)
		}
		return false
	}
	l.oks++
	l.fails = 0
	if l.state == StateUnknown || (l.state == StateDown && l.oks >= l.needUp(now)) {
		return l.set(StateUp, now)
	}
	return false
}

// report records a failure seen by the data path: DOWN at once.
func (l *link) report(err error, now time.Time) bool {
	l.fails++
	l.oks = 0
	l.lastErr, l.errText, l.errAt = err, err.Error(), now
	return l.set(StateDown, now)
}

func (l *link) set(s LinkState, now time.Time) bool {
	if l.state == s {
		return false
	}
	if l.state == StateUp && s == StateDown {
		l.flap(now)
	}
	l.state, l.since = s, now
	return true
}
