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
			l := newLink(tc.downAfter, tc.upAt, 10*time.Second, t0)
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
// and no damping it may change at most once per run of 2 probes, never
// faster; with damping it stops following the link after its second outage.
func TestLinkFlappingDoesNotFlapState(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC)
	linkUp := func(at time.Duration) bool { return (at/(500*time.Millisecond))%2 == 0 }
	for _, tc := range []struct {
		n           int
		window      time.Duration
		maxChanges  int
		minInterval time.Duration
	}{
		{n: 3, maxChanges: 1}, // only the first result (Unknown -> Up)
		{n: 2, maxChanges: 1 + 40, minInterval: 500 * time.Millisecond},
		{n: 2, window: 10 * time.Second, maxChanges: 1 + 3, minInterval: 500 * time.Millisecond},
	} {
		l := newLink(tc.n, tc.n, tc.window, t0)
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
			t.Errorf("n=%d window=%v: %d changes in 20 s, want at most %d", tc.n, tc.window, changes, tc.maxChanges)
		}
		t.Logf("n=%d window=%v: %d state changes over 20 s of a link flapping every 500 ms", tc.n, tc.window, changes)
	}
}

func TestLinkFlapDamping(t *testing.T) {
	now := time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC)
	step := func(l *link, err error) bool {
		now = now.Add(250 * time.Millisecond)
		return l.probe(err, now)
	}
	l := newLink(2, 2, time.Hour, now)
	step(l, nil) // Unknown -> Up
	// First outage: back after upAfter successes.
	l.report(errProbe, now)
	if l.needUp(now) != 2 {
		t.Fatalf("first outage needs %d successes, want 2", l.needUp(now))
	}
	step(l, nil)
	if !step(l, nil) || l.state != StateUp {
		t.Fatal("first outage did not recover after 2 successes")
	}
	// Second and third outages within the window: 4, then 8.
	for i, want := range []int{4, 8, 16, 16} {
		l.report(errProbe, now)
		if got := l.needUp(now); got != want {
			t.Fatalf("outage %d: needs %d successes, want %d", i+2, got, want)
		}
		for range want - 1 {
			if step(l, nil) {
				t.Fatalf("outage %d: up before %d successes", i+2, want)
			}
		}
		if !step(l, nil) {
			t.Fatalf("outage %d: not up after %d successes", i+2, want)
		}
	}
	// A recovery cut short is a flap too.
	l = newLink(2, 2, 10*time.Second, now)
	step(l, nil)
	l.report(errProbe, now) // flap 1: needs 2
	step(l, nil)
	step(l, errProbe) // flap 2: needs 4
	if got := l.needUp(now); got != 4 {
		t.Fatalf("after a recovery cut short: needs %d, want 4", got)
	}
	// Once the flaps are older than the window, recovery is cheap again.
	now = now.Add(11 * time.Second)
	if got := l.needUp(now); got != 2 {
		t.Fatalf("after a quiet window: needs %d, want 2", got)
	}
	step(l, nil)
	if !step(l, nil) {
		t.Fatal("not up after 2 successes once the flaps aged out")
	}
	l.report(errProbe, now)
	if len(l.flaps) != 1 {
		t.Fatalf("%d remembered flaps, want only the recent one", len(l.flaps))
	}
	// Disabled damping never asks for more.
	off := newLink(2, 2, 0, now)
	off.probe(nil, now)
	for range 5 {
		off.report(errProbe, now)
		if off.needUp(now) != 2 {
			t.Fatal("damping disabled but needUp grew")
		}
		off.probe(nil, now)
		off.probe(nil, now)
	}
}
