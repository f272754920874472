// Package sitetest runs a real routing.Site for the fronts' integration
// tests against the lab, with the probe timing those tests share, so each
// front's tests only say what differs (protocol, endpoints, identity).
package sitetest

import (
	"context"
	"testing"
	"time"

	"github.com/spokeproxy/spokeproxy/routing"
)

// Start runs a Site for cfg until the test's cleanup. Unless cfg sets
// them, probes run every 100 ms (link changes show quickly) with a 1 s
// timeout (tolerant of a loaded machine under -race; cuts are still seen
// at once through the data path's reports). Its cleanup runs after those
// registered later, so a front started on the Site stops first.
func Start(t testing.TB, cfg routing.Config) *routing.Site {
	t.Helper()
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = 100 * time.Millisecond
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = time.Second
	}
	site, err := routing.NewSite(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = site.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return site
}

// Wait waits up to 10 s until the Site sees the hub up (or down) and, when
// replicaUp, the replica up.
func Wait(t testing.TB, site *routing.Site, hubUp, replicaUp bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		s := site.Snapshot()
		if s.Hub.Up == hubUp && (!replicaUp || s.Replica.Up) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("site did not see hub up=%v (replica up: %v): %+v", hubUp, replicaUp, site.Snapshot())
}
