package main

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeReloadsOnSIGHUPAndDrainsOnSIGTERM runs `spokeproxy serve` in
// this process and signals it: SIGHUP applies the new log level, admin
// token and probe interval and names the keys that need a restart; a file
// that does not load, and one that loads but whose hub CA does not, are
// rejected and change nothing; SIGTERM drains and exits 0. (The backends do
// not exist: serving does not need them.) Its file name keeps it with the
// drill and lifecycle work.
func TestServeReloadsOnSIGHUPAndDrainsOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pw"), []byte("x\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "token"), []byte("tok\n"), 0o600)
	base := `
site: sighup
log: {level: info, format: text}
admin: {listen: "127.0.0.1:0"}
link: {probe_interval: 250ms}
postgres:
  listen: "127.0.0.1:0"
  replica: {address: "127.0.0.1:1"}
  hubs: [{address: "127.0.0.1:2"}]
  auth: {password_file: pw}
`
	path := filepath.Join(dir, "spokeproxy.yaml")
	os.WriteFile(path, []byte(base), 0o600)

	var stdout, stderr lockedBuffer
	exited := make(chan int, 1)
	go func() { exited <- cmdServe([]string{"-config", path, "-drain-timeout", "2s"}, &stdout, &stderr) }()
	waitLog := func(what string, re *regexp.Regexp) []string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			if m := re.FindStringSubmatch(stderr.String()); m != nil {
				return m
			}
			select {
			case code := <-exited:
				t.Fatalf("serve exited %d while waiting for %s:\n%s", code, what, stderr.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("no log line for %s:\n%s", what, stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	admin := "http://" + waitLog("serving", regexp.MustCompile(`msg=serving .*admin=(127\.0\.0\.1:\d+)`))[1]
	drillStatus := func(token string) int {
		req, _ := http.NewRequest("DELETE", admin+"/drill", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := drillStatus(""); code != 200 {
		t.Fatalf("DELETE /drill without a token configured = %d", code)
	}

	good := strings.NewReplacer(
		"level: info, format: text", "level: debug, format: json",
		"probe_interval: 250ms", "probe_interval: 200ms",
		`admin: {listen: "127.0.0.1:0"}`, `admin: {listen: "127.0.0.1:0", token_file: token}`,
	).Replace(base)
	os.WriteFile(path, []byte(good), 0o600)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitLog("the reload", regexp.MustCompile(`config reloaded.*applied=log.level,admin.token_file,link.probe_interval need_restart=log.format`))
	if code := drillStatus(""); code != 401 {
		t.Errorf("after the reload, DELETE /drill without the token = %d, want 401", code)
	}
	if code := drillStatus("tok"); code != 200 {
		t.Errorf("after the reload, DELETE /drill with the token = %d, want 200", code)
	}

	os.WriteFile(path, []byte(strings.Replace(base, "site:", "sight:", 1)), 0o600)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitLog("the rejected reload", regexp.MustCompile(`config reload rejected.*sight`))
	if code := drillStatus("tok"); code != 200 {
		t.Errorf("after a rejected reload the running token should stay: %d", code)
	}

	// A file that validates but whose hub CA holds no certificate fails
	// while the reload builds the hub TLS: nothing of it applies, not the
	// new hub candidate, not the admin token it drops.
	os.WriteFile(filepath.Join(dir, "ca.pem"), []byte("not a certificate\n"), 0o600)
	os.WriteFile(path, []byte(strings.NewReplacer(
		`admin: {listen: "127.0.0.1:0", token_file: token}`, `admin: {listen: "127.0.0.1:0"}`,
		`hubs: [{address: "127.0.0.1:2"}]`, `hubs: [{address: "127.0.0.1:5"}]`+"\n  hub_tls: {mode: verify-full, ca_file: ca.pem}",
	).Replace(good)), 0o600)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitLog("the rejected hub CA", regexp.MustCompile(`config reload rejected.*no PEM certificate`))
	if code := drillStatus(""); code != 401 {
		t.Errorf("a rejected reload dropped the admin token: DELETE /drill without it = %d", code)
	}
	resp, err := http.Get(admin + "/status")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(raw), `"127.0.0.1:2"`) || strings.Contains(string(raw), "127.0.0.1:5") {
		t.Errorf("a rejected reload changed the hub candidates: /status %s", raw)
	}
	resp, err = http.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(raw), "spokeproxy_config_last_reload_successful 0") {
		t.Errorf("/metrics does not show the rejected reload")
	}

	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case code := <-exited:
		if code != 0 {
			t.Errorf("serve exited %d after SIGTERM, want 0:\n%s", code, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("serve did not exit after SIGTERM:\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "msg=stopped") {
		t.Errorf("no stopped line:\n%s", stderr.String())
	}
}
