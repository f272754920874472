package pgfront

import (
	"testing"
	"time"
)

// Reconfigure takes what sessions read per use and keeps what New fixed.
func TestReconfigureKeepsFixedFieldsAndSwapsHubFunctions(t *testing.T) {
	srv := New(Config{ReplicaAddr: "127.0.0.1:1", AuthUser: "auth", WaitTimeout: time.Second}, downSite{changes: make(chan struct{})}, nil, nil)
	const call = "SELECT app.bump_counter(1)"
	if k := srv.classifier.Load().Classify(call).Strongest(); k != StmtRead {
		t.Fatalf("before: %s is %s, want read", call, k)
	}
	srv.Reconfigure(Config{ReplicaAddr: "127.0.0.1:9", AuthUser: "other", WaitTimeout: 3 * time.Second, HubFunctions: []string{"app.bump_counter"}})
	cfg := srv.config()
	if cfg.ReplicaAddr != "127.0.0.1:1" || cfg.AuthUser != "auth" {
		t.Errorf("fixed fields changed: replica %s, auth user %s", cfg.ReplicaAddr, cfg.AuthUser)
	}
	if cfg.WaitTimeout != 3*time.Second || cfg.HubPoolSize != 4 {
		t.Errorf("live fields: wait %s, hub pool %d; want 3s and the default 4", cfg.WaitTimeout, cfg.HubPoolSize)
	}
	if k := srv.classifier.Load().Classify(call).Strongest(); k != StmtWrite {
		t.Errorf("after hub_functions names it: %s is %s, want write", call, k)
	}
}
