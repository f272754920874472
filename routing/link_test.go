package routing

import (
	"errors"
	"testing"
	"time"
)

var errProbe = errors.New("probe failed")

func TestLinkHysteresis(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC)
	type step struct {
		report bool // data-path report instead of a probe
		ok     bool
		want   LinkState
		change bool
	}
	for _, tc := range []struct {
		name            string
		downAfter, upAt int
		steps           []step
	}{
		{"first success decides", 2, 2, []step{{ok: true, want: StateUp, change: true}}},
		{"first failure decides", 2, 2, []step{{ok: false, want: StateDown, change: true}}},
		{"one failure is not enough", 2, 2, []step{
			{ok: true, want: StateUp, change: true},
			{ok: false, want: StateUp},
			{ok: true, want: StateUp},
			{ok: false, want: StateUp},
			{ok: false, want: StateDown, change: true},
		}},
		{"up needs consecutive successes", 2, 3, []step{
			{ok: false, want: StateDown, change: true},
			{ok: true, want: StateDown},
			{ok: true, want: StateDown},
			{ok: false, want: StateDown},
			{ok: true, want: StateDown},
			{ok: true, want: StateDown},
			{ok: true, want: StateUp, change: true},
		}},
		{"report turns down at once, probes bring it back", 3, 2, []step{
			{ok: true, want: StateUp, change: true},
			{report: true, want: StateDown, change: true},
			{ok: true, want: StateDown},
			{ok: true, want: StateUp, change: true},
		}},
		{"report while down changes nothing", 2, 2, []step{
			{ok: false, want: StateDown, change: true},
			{report: true, want: StateDown},
		}},
		{"report resets the success count", 2, 2, []step{
			{ok: false, want: StateDown, change: true},
			{ok: true, want: StateDown},
			{report: true, want: StateDown},
			{ok: true, want: StateDown},
			{ok: true, want: StateUp, change: true},
		}},
		{"counts of 1", 1, 1, []step{
			{ok: true, want: StateUp, change: true},
			{ok: false, want: StateDown, change: true},
			{ok: true, want: StateUp, change: true},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLink(tc.downAfter, tc.upAt, t0)
			now := t0
			for i, s := range tc.steps {
				now = now.Add(250 * time.Millisecond)
				var changed bool
				switch {
				case s.report:
					changed = l.report(errProbe, now)
				case s.ok:
					changed = l.probe(nil, now)
				default:
					changed = l.probe(errProbe, now)
				}
				if l.state != s.want || changed != s.change {
					t.Fatalf("step %d: state %v changed %v, want %v changed %v", i, l.state, changed, s.want, s.change)
				}
				if changed && !l.since.Equal(now) {
					t.Fatalf("step %d: since %v, want %v", i, l.since, now)
				}
			}
		})
	}
}

// A link that flaps every 500 ms, probed every 250 ms with up and down
// after 3, never changes state: no run of results is long enough. With 2
// it may change at most once per run of 2 probes, never faster.
func TestLinkFlappingDoesNotFlapState(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC)
	linkUp := func(at time.Duration) bool { return (at/(500*time.Millisecond))%2 == 0 }
	for _, tc := range []struct {
		n           int
		maxChanges  int
		minInterval time.Duration
	}{
		{n: 3, maxChanges: 1}, // only the first result (Unknown -> Up)
		{n: 2, maxChanges: 1 + 40, minInterval: 500 * time.Millisecond},
	} {
		l := newLink(tc.n, tc.n, t0)
		changes := 0
		var last time.Time
		for at := time.Duration(0); at < 20*time.Second; at += 250 * time.Millisecond {
			now := t0.Add(at)
			var err error
			if !linkUp(at) {
				err = errProbe
			}
			if l.probe(err, now) {
				changes++
				if changes > 1 && now.Sub(last) < tc.minInterval {
					t.Errorf("n=%d: state changed %v after the previous change, faster than hysteresis allows", tc.n, now.Sub(last))
				}
				last = now
			}
		}
		if changes > tc.maxChanges {
			t.Errorf("n=%d: %d changes in 20 s, want at most %d", tc.n, changes, tc.maxChanges)
		}
		t.Logf("n=%d: %d state changes over 20 s of a link flapping every 500 ms", tc.n, changes)
	}
}
