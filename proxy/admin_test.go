package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func startAdmin(t *testing.T, a *Admin) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeAdmin(ctx, ln, a.Handler(), slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeAdmin: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdminEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "spokeproxy_test_total", Help: "t"})
	reg.MustRegister(c)
	c.Add(3)
	var readyErr error
	base := startAdmin(t, &Admin{
		Gatherer: reg,
		Status:   func() any { return map[string]string{"site": "s1"} },
		Ready:    func() error { return readyErr },
	})

	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := get(t, base+"/metrics"); code != 200 || !strings.Contains(body, "spokeproxy_test_total 3") {
		t.Errorf("/metrics = %d, body lacks the registry's counter:\n%s", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d %q while ready", code, body)
	}
	readyErr = errors.New("pg: replica down and hub unreachable")
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "replica down") {
		t.Errorf("/readyz = %d %q while not ready", code, body)
	}
	code, body := get(t, base+"/status")
	var st map[string]string
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil || st["site"] != "s1" {
		t.Errorf("/status = %d %q", code, body)
	}
	resp, err := http.Post(base+"/healthz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz = %d, want 405", resp.StatusCode)
	}
}

func TestAdminTokenCheck(t *testing.T) {
	a := &Admin{Token: "s3cret"}
	for header, want := range map[string]bool{
		"":               false,
		"Bearer s3cret":  true,
		"Bearer s3cre":   false,
		"Basic s3cret":   false,
		"bearer s3cret":  false,
		"Bearer s3cret ": false,
	} {
		r, _ := http.NewRequest("POST", "/drill", nil)
		if header != "" {
			r.Header.Set("Authorization", header)
		}
		if got := a.authorized(r); got != want {
			t.Errorf("authorized(%q) = %v, want %v", header, got, want)
		}
	}
	if !(&Admin{}).authorized(&http.Request{Header: http.Header{}}) {
		t.Error("no token configured must allow the request")
	}
}

func TestAdminDrillEndpoints(t *testing.T) {
	type call struct {
		op       string
		protocol string
		d        time.Duration
	}
	var calls []call
	a := &Admin{
		Token: "s3cret",
		StartDrill: func(protocol string, d time.Duration) ([]DrillState, error) {
			if protocol == "nntp" {
				return nil, &DrillError{Problem: "protocol \"nntp\": want pg, ldap or both"}
			}
			calls = append(calls, call{"start", protocol, d})
			return []DrillState{{Protocol: "pg", Active: true}}, nil
		},
		StopDrill: func(protocol string) ([]DrillState, error) {
			calls = append(calls, call{"stop", protocol, 0})
			return []DrillState{{Protocol: "pg"}}, nil
		},
		Drills: func() []DrillState { return []DrillState{{Protocol: "pg"}} },
	}
	base := startAdmin(t, a)
	do := func(method, path, ctype, body, token string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	const js, form = "application/json", "application/x-www-form-urlencoded"

	if code, _ := do("POST", "/drill", js, `{"protocol":"both","duration":"5m"}`, ""); code != 401 {
		t.Errorf("POST /drill without a token = %d, want 401", code)
	}
	if code, _ := do("DELETE", "/drill", "", "", "wrong"); code != 401 {
		t.Errorf("DELETE /drill with a wrong token = %d, want 401", code)
	}
	if len(calls) != 0 {
		t.Fatalf("unauthorized requests reached the hooks: %v", calls)
	}
	if code, body := do("POST", "/drill", js, `{"protocol":"both","duration":"5m"}`, "s3cret"); code != 200 || !strings.Contains(body, `"active": true`) {
		t.Errorf("POST /drill JSON = %d %s", code, body)
	}
	if code, body := do("POST", "/drill", form, "protocol=ldap&duration=90s", "s3cret"); code != 200 {
		t.Errorf("POST /drill form = %d %s", code, body)
	}
	for _, bad := range []struct{ ctype, body, want string }{
		{js, `{"protocol":"pg"}`, "duration is required"},
		{form, "protocol=pg&duration=soon", `duration \"soon\"`},
		{js, `{"protocol":"pg","duration":"5m","extra":1}`, "unknown field"},
		{js, `{"protocol":"nntp","duration":"5m"}`, "nntp"},
	} {
		if code, body := do("POST", "/drill", bad.ctype, bad.body, "s3cret"); code != 400 || !strings.Contains(body, bad.want) {
			t.Errorf("POST /drill %s = %d %s, want 400 mentioning %q", bad.body, code, body, bad.want)
		}
	}
	if code, _ := do("DELETE", "/drill", "", "", "s3cret"); code != 200 {
		t.Errorf("DELETE /drill = %d", code)
	}
	if code, _ := do("POST", "/drill/stop", form, "protocol=pg", "s3cret"); code != 200 {
		t.Errorf("POST /drill/stop = %d", code)
	}
	if code, body := do("GET", "/drill", "", "", ""); code != 200 || !strings.Contains(body, `"protocol": "pg"`) {
		t.Errorf("GET /drill = %d %s", code, body)
	}
	want := []call{{"start", "both", 5 * time.Minute}, {"start", "ldap", 90 * time.Second}, {"stop", "", 0}, {"stop", "pg", 0}}
	if !reflect.DeepEqual(calls, want) {
		t.Errorf("hook calls = %v, want %v", calls, want)
	}
}

func TestAdminWithoutDrillHooks(t *testing.T) {
	base := startAdmin(t, &Admin{})
	resp, err := http.Post(base+"/drill", "application/json", strings.NewReader(`{"duration":"1m"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotImplemented {
		t.Errorf("POST /drill without hooks = %d, want 501", resp.StatusCode)
	}
}
