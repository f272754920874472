package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"

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
