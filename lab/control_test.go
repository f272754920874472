package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// stoppedServer checks that a stopped server is gone: its process group
// has no member left and its address accepts no connection.
func stoppedServer(t *testing.T, what string, pid int, addr string) {
	t.Helper()
	if alive(pid) {
		t.Errorf("%s: process group %d alive after its stop returned", what, pid)
	}
	if listening(addr) {
		t.Errorf("%s: %s still listens after its stop returned", what, addr)
	}
}

// TestServerControl stops and starts every server the control methods
// cover, checking each stop leaves nothing running, each start returns a
// server that answers and still replicates, and Close ends the last
// processes started and refuses further control.
func TestServerControl(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	l := ForTest(t, Options{})
	dir := l.Dir()
	const (
		hubPG = iota
		spokePG
		hubLDAP
		spokeLDAP
	)
	pids := l.PIDs()
	if len(pids) != 4 {
		t.Fatalf("PIDs %v, want 4 servers", pids)
	}

	// The spoke standby: stop, a second stop is a no-op, start, a second
	// start is refused, and replication through the WAN resumes.
	if err := l.StopReplicaPG(ctx); err != nil {
		t.Fatalf("StopReplicaPG: %v", err)
	}
	stoppedServer(t, "spoke postgres", pids[spokePG], l.ReplicaPGAddr())
	if err := l.StopReplicaPG(ctx); err != nil {
		t.Fatalf("second StopReplicaPG: %v", err)
	}
	start := time.Now()
	if err := l.StartReplicaPG(ctx); err != nil {
		t.Fatalf("StartReplicaPG: %v", err)
	}
	t.Logf("spoke standby started and answering in recovery after %s", time.Since(start).Round(time.Millisecond))
	if err := l.StartReplicaPG(ctx); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("StartReplicaPG of a running standby: %v, want a refusal", err)
	}
	if now := l.PIDs(); now[spokePG] == pids[spokePG] || !alive(now[spokePG]) {
		t.Fatalf("PIDs after the restart %v (before %v): want a new live spoke postgres", now, pids)
	}
	hub := connect(t, l.HubAppDSN())
	replica := connect(t, l.ReplicaAppDSN())
	body := fmt.Sprintf("after replica restart %d", time.Now().UnixNano())
	insertNote(t, hub, body)
	eventually(t, 10*time.Second, "row on the restarted standby", func() (bool, error) { return noteExists(replica, body) })

	// The hub primary: StopHubPG/StartHubPG, then RestartHubPG; the spoke
	// follows both without help.
	if err := l.StopHubPG(ctx); err != nil {
		t.Fatalf("StopHubPG: %v", err)
	}
	stoppedServer(t, "hub postgres", pids[hubPG], l.HubPGAddr())
	if err := l.StartHubPG(ctx); err != nil {
		t.Fatalf("StartHubPG: %v", err)
	}
	before := l.PIDs()[hubPG]
	start = time.Now()
	if err := l.RestartHubPG(ctx); err != nil {
		t.Fatalf("RestartHubPG: %v", err)
	}
	t.Logf("hub primary restarted and answering after %s", time.Since(start).Round(time.Millisecond))
	if after := l.PIDs()[hubPG]; after == before || alive(before) || !alive(after) {
		t.Fatalf("hub pid %d before RestartHubPG, %d after: want the old gone and a new one live", before, after)
	}
	hub = connect(t, l.HubAppDSN())
	if ok, err := noteExists(hub, body); !ok || err != nil {
		t.Fatalf("row written before the hub restarts lost: %v", err)
	}
	body = fmt.Sprintf("after hub restart %d", time.Now().UnixNano())
	insertNote(t, hub, body)
	if err := l.WaitReplicaCaughtUp(ctx, 15*time.Second); err != nil {
		t.Fatalf("standby after the hub restarted: %v", err)
	}

	// The spoke consumer: stop, start, and syncrepl resumes.
	start = time.Now()
	if err := l.StopReplicaLDAP(ctx); err != nil {
		t.Fatalf("StopReplicaLDAP: %v", err)
	}
	t.Logf("spoke slapd stopped after %s", time.Since(start).Round(time.Millisecond))
	stoppedServer(t, "spoke slapd", pids[spokeLDAP], strings.TrimPrefix(l.ReplicaLDAPURL(), "ldap://"))
	provider := ldapConn(t, l.HubLDAPURL(), AdminDN, l.AdminPassword())
	dn := addPerson(t, provider, fmt.Sprintf("ctl%d", time.Now().UnixNano())) // while the consumer is down
	if err := l.StartReplicaLDAP(ctx); err != nil {
		t.Fatalf("StartReplicaLDAP: %v", err)
	}
	if err := l.StartReplicaLDAP(ctx); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("StartReplicaLDAP of a running consumer: %v, want a refusal", err)
	}
	consumer := ldapConn(t, l.ReplicaLDAPURL(), "", "")
	eventually(t, 10*time.Second, "entry added while the consumer was down", func() (bool, error) { return entryExists(consumer, dn) })

	// A start that fails (its port taken) says why with the server's log
	// and leaves nothing running; the next start succeeds.
	if err := l.StopReplicaLDAP(ctx); err != nil {
		t.Fatalf("StopReplicaLDAP: %v", err)
	}
	squatter, err := net.Listen("tcp", strings.TrimPrefix(l.ReplicaLDAPURL(), "ldap://"))
	if err != nil {
		t.Fatalf("take the consumer's port: %v", err)
	}
	err = l.StartReplicaLDAP(ctx)
	squatter.Close()
	var serr *StartError
	if !errors.As(err, &serr) || serr.LogTail == "" {
		t.Fatalf("StartReplicaLDAP on a taken port: %v, want a *StartError with the log's tail", err)
	}
	if failed := l.PIDs()[spokeLDAP]; alive(failed) {
		t.Fatalf("the consumer that failed to start (pid %d) still runs", failed)
	}
	if err := l.StartReplicaLDAP(ctx); err != nil {
		t.Fatalf("StartReplicaLDAP once the port is free: %v", err)
	}
	consumer = ldapConn(t, l.ReplicaLDAPURL(), "", "")
	if ok, err := entryExists(consumer, dn); !ok || err != nil {
		t.Fatalf("consumer after a failed start lost %s: %v", dn, err)
	}

	// The provider: stop, start, it takes writes and they replicate.
	if err := l.StopHubLDAP(ctx); err != nil {
		t.Fatalf("StopHubLDAP: %v", err)
	}
	stoppedServer(t, "hub slapd", pids[hubLDAP], strings.TrimPrefix(l.HubLDAPURL(), "ldap://"))
	if err := l.StartHubLDAP(ctx); err != nil {
		t.Fatalf("StartHubLDAP: %v", err)
	}
	provider = ldapConn(t, l.HubLDAPURL(), AdminDN, l.AdminPassword())
	dn = addPerson(t, provider, fmt.Sprintf("ctl%d", time.Now().UnixNano()))
	eventually(t, 15*time.Second, "entry from the restarted provider on the consumer", func() (bool, error) { return entryExists(consumer, dn) })

	// Close stops the servers the control methods started, and refuses
	// control afterwards.
	last := l.PIDs()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, pid := range last {
		if alive(pid) {
			t.Errorf("process group %d alive after Close", pid)
		}
	}
	if n := processesUsing(t, dir); n != 0 {
		t.Errorf("%d processes still use %s after Close", n, dir)
	}
	for name, op := range map[string]func(context.Context) error{
		"StartReplicaPG": l.StartReplicaPG, "StartHubPG": l.StartHubPG, "RestartHubPG": l.RestartHubPG,
		"StartReplicaLDAP": l.StartReplicaLDAP, "StartHubLDAP": l.StartHubLDAP, "StopReplicaPG": l.StopReplicaPG,
	} {
		if err := op(ctx); !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
}

// TestCloseWaitsForControl checks that Close called while a start is under
// way lets it finish and then stops what it started: nothing is left
// running.
func TestCloseWaitsForControl(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l := ForTest(t, Options{})
	dir := l.Dir()
	if err := l.StopReplicaLDAP(ctx); err != nil {
		t.Fatal(err)
	}
	old := l.PIDs()[3]
	started := make(chan error, 1)
	go func() { started <- l.StartReplicaLDAP(ctx) }()
	// Close once the new slapd process exists: the start is under way
	// (possibly still waiting for its readiness search).
	eventually(t, 10*time.Second, "the new consumer process", func() (bool, error) { return l.PIDs()[3] != old, nil })
	fresh := l.PIDs()[3]
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-started; err != nil {
		t.Fatalf("StartReplicaLDAP under way when Close was called: %v, want it to finish first", err)
	}
	if alive(fresh) {
		t.Errorf("the consumer started during Close (pid %d) is still running", fresh)
	}
	if n := processesUsing(t, dir); n != 0 {
		t.Errorf("%d processes still use %s after Close", n, dir)
	}
}
