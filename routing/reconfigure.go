package routing

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// CheckReconfigure reports whether Reconfigure would accept cfg: it is
// valid, and it keeps what a running Site cannot change (the protocol, the
// replica and the probe identities). It changes nothing, so a caller that
// reconfigures several Sites can check them all first.
func (s *Site) CheckReconfigure(cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	old, next := s.config(), cfg.withDefaults()
	var errs []error
	fixed := func(name string, changed bool) {
		if changed {
			errs = append(errs, fmt.Errorf("routing: %s cannot change on a running Site", name))
		}
	}
	fixed("Protocol", next.Protocol != old.Protocol)
	fixed("Replica", next.Replica != old.Replica)
	fixed("User", next.User != old.User)
	fixed("Password", next.Password != old.Password)
	fixed("Database", next.Database != old.Database)
	fixed("BaseDN", next.BaseDN != old.BaseDN)
	fixed("BindDN", next.BindDN != old.BindDN)
	fixed("BindPassword", next.BindPassword != old.BindPassword)
	return errors.Join(errs...)
}

// CheckHubTLS probes once, with cfg's hub TLS settings, each candidate of
// cfg that the Site now sees up, and reports those that refuse them: a
// reload must not trade hub connections that work for ones the hub
// rejects (a CA that did not sign its certificate, a server name it does
// not carry, TLS asked of a server without it), which would leave the
// site read-only. A failed probe counts only when a probe with the
// running settings then succeeds, so an outage that starts meanwhile
// is not blamed on the new settings; candidates seen down are not
// judged. Nothing changes. It returns nil at once when cfg keeps the
// running hub TLS.
func (s *Site) CheckHubTLS(ctx context.Context, cfg Config) error {
	old := s.config()
	next := cfg.withDefaults()
	if next.HubTLS == old.HubTLS && next.HubStartTLS == old.HubStartTLS {
		return nil
	}
	next.Logger, next.Metrics, next.Now, next.NewProber = old.Logger, old.Metrics, old.Now, old.NewProber
	// A Site that is never run: its probers dial with next's settings.
	trial := &Site{protocol: s.protocol, log: s.log}
	trial.live.Store(newSettings(next))

	s.mu.Lock()
	var up []string
	for _, ep := range s.hubs {
		if ep.link.state == StateUp && slices.Contains(next.Hubs, ep.addr) {
			up = append(up, ep.addr)
		}
	}
	s.mu.Unlock()

	probeOnce := func(site *Site, addr string) error {
		p := site.newProber(TargetHub, addr)
		defer p.Close()
		pctx, cancel := context.WithTimeout(ctx, next.ProbeTimeout)
		defer cancel()
		_, err := p.Probe(pctx)
		return err
	}
	errs := make([]error, len(up))
	var wg sync.WaitGroup
	for i, addr := range up {
		wg.Go(func() {
			err := probeOnce(trial, addr)
			if err == nil || probeOnce(s, addr) != nil {
				return
			}
			errs[i] = fmt.Errorf("hub %s refuses the new TLS settings (it answers with the running ones): %w", addr, err)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Reconfigure replaces the settings of a running Site without dropping
// anything: probe interval and timeout, hysteresis (DownAfter, UpAfter),
// flap window, the TCP settings of new WAN connections, the policy, the hub
// TLS and the hub candidates. Links keep their state and counts; the next
// probe is judged by the new thresholds, and every endpoint is probed at
// once so a new interval starts now.
//
// A candidate that is new is probed once before it joins, so it comes in
// with a verdict: the hub does not turn "starting" for a moment, and
// replacing a candidate with another address of the same server does not
// look like a split brain. A candidate that is gone stops being probed; if
// it was the hub, the hub follows the remaining candidates as on a
// failover. Connections the fronts hold to it are theirs to retire.
//
// Logger, Metrics, Now and NewProber keep the values NewSite was given.
// The rest of cfg must pass CheckReconfigure, else nothing changes.
func (s *Site) Reconfigure(cfg Config) error {
	if err := s.CheckReconfigure(cfg); err != nil {
		return err
	}
	s.reconfMu.Lock()
	defer s.reconfMu.Unlock()
	old := s.config()
	next := cfg.withDefaults()
	next.Hubs = slices.Clone(next.Hubs)
	next.Logger, next.Metrics, next.Now, next.NewProber = old.Logger, old.Metrics, old.Now, old.NewProber
	tlsChanged := next.HubTLS != old.HubTLS || next.HubStartTLS != old.HubStartTLS
	// New probers and dials use the new settings from here on.
	s.live.Store(newSettings(next))

	s.mu.Lock()
	have := make(map[string]*endpoint, len(s.hubs))
	for _, ep := range s.hubs {
		have[ep.addr] = ep
	}
	ctx := s.runCtx
	s.mu.Unlock()

	added := map[string]*endpoint{}
	for _, h := range next.Hubs {
		if have[h] == nil {
			added[h] = s.newEndpoint(TargetHub, h, s.now())
		}
	}
	verdicts := s.probeFirst(ctx, added)

	s.mu.Lock()
	defer s.mu.Unlock()
	hubs := make([]*endpoint, 0, len(next.Hubs))
	for _, h := range next.Hubs {
		ep := have[h]
		switch {
		case ep == nil:
			ep = added[h]
			if r, ok := verdicts[h]; ok {
				s.recordLocked(ep, r)
			}
			s.startProbeLocked(ep)
		case tlsChanged:
			ep.rebuild = true
		}
		delete(have, h)
		hubs = append(hubs, ep)
	}
	var gone []string
	for _, ep := range s.hubs {
		if _, removed := have[ep.addr]; !removed {
			continue
		}
		ep.removed = true
		if ep.stop != nil {
			ep.stop()
		}
		gone = append(gone, ep.addr)
	}
	s.hubs = hubs
	for _, ep := range append(slices.Clone(hubs), s.replica) {
		ep.link.retune(next.DownAfter, next.UpAfter, next.FlapWindow)
		kick(ep)
	}
	if len(added) > 0 || len(gone) > 0 {
		s.log.Info("hub candidates changed", "hubs", strings.Join(next.Hubs, ","), "added", strings.Join(sortedAddrs(added), ","), "removed", strings.Join(gone, ","))
	}
	s.recomputeLocked(s.now(), false)
	return nil
}

// probeFirst probes each new endpoint once, in parallel, under ctx (Run's
// context; nil when the Site is not running, and then nothing is probed:
// Run will).
func (s *Site) probeFirst(ctx context.Context, eps map[string]*endpoint) map[string]probeResult {
	out := map[string]probeResult{}
	if ctx == nil || len(eps) == 0 {
		return out
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for addr, ep := range eps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r, ok := s.runProbe(ctx, ep); ok {
				mu.Lock()
				out[addr] = r
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

// candidatesLocked reports whether every address in addrs (one, or
// several joined by commas in a split brain) is a hub candidate now.
func (s *Site) candidatesLocked(addrs string) bool {
	for a := range strings.SplitSeq(addrs, ",") {
		if !slices.ContainsFunc(s.hubs, func(ep *endpoint) bool { return ep.addr == a }) {
			return false
		}
	}
	return true
}

func sortedAddrs(m map[string]*endpoint) []string {
	out := make([]string, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}
