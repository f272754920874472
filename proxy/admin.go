package proxy

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Admin is the admin HTTP API: /metrics, /healthz, /readyz, /status and
// the drill controls (/drill). Its hooks are documented function fields; a
// nil hook gives that endpoint's neutral answer (drills: 501).
type Admin struct {
	// Gatherer is what /metrics exposes; never the global registry.
	Gatherer prometheus.Gatherer
	// Status returns the JSON body of /status.
	Status func() any
	// Ready returns nil when the site can serve reads; its error text is
	// /readyz's answer otherwise.
	Ready func() error
	// StartDrill forces the hub down for protocol ("pg", "ldap" or "both")
	// for d (Server.StartDrill); a *DrillError is the caller's mistake.
	StartDrill func(protocol string, d time.Duration) ([]DrillState, error)
	// StopDrill ends protocol's drill early (Server.StopDrill).
	StopDrill func(protocol string) ([]DrillState, error)
	// Drills reports every protocol's drill for GET /drill.
	Drills func() []DrillState
	// Token, when set, is the bearer token that state-changing endpoints
	// (drills) require.
	Token string
	// TokenSource, when set, gives the token at each request instead of
	// Token, so a reload can change it.
	TokenSource func() string
	Logger      *slog.Logger
}

// Handler returns the admin API's routes.
func (a *Admin) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.Gatherer, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if a.Ready != nil {
			if err := a.Ready(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				w.Write([]byte("not ready: " + err.Error() + "\n"))
				return
			}
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		var body any = struct{}{}
		if a.Status != nil {
			body = a.Status()
		}
		writeJSON(w, http.StatusOK, body)
	})
	mux.HandleFunc("GET /drill", func(w http.ResponseWriter, r *http.Request) {
		if a.Drills == nil {
			writeJSON(w, http.StatusNotImplemented, map[string]string{"error": "drills are not available"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"drills": a.Drills()})
	})
	mux.HandleFunc("POST /drill", a.startDrill)
	mux.HandleFunc("DELETE /drill", a.stopDrill)
	mux.HandleFunc("POST /drill/stop", a.stopDrill)
	return mux
}

// drillRequest is the body of POST /drill: JSON
// {"protocol":"both","duration":"5m"}, or the same keys as form values or
// query parameters. DELETE /drill and POST /drill/stop read only protocol.
type drillRequest struct {
	Protocol string `json:"protocol"`
	Duration string `json:"duration"`
}

// maxAdminBody bounds what the admin API reads from a request body.
const maxAdminBody = 64 << 10

func readDrillRequest(w http.ResponseWriter, r *http.Request) (drillRequest, error) {
	var req drillRequest
	r.Body = http.MaxBytesReader(w, r.Body, maxAdminBody)
	if ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";"); strings.TrimSpace(ct) == "application/json" {
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
			return req, &DrillError{Problem: "request body: " + err.Error()}
		}
		return req, nil
	}
	if err := r.ParseForm(); err != nil {
		return req, &DrillError{Problem: "request form: " + err.Error()}
	}
	req.Protocol, req.Duration = r.Form.Get("protocol"), r.Form.Get("duration")
	return req, nil
}

func (a *Admin) startDrill(w http.ResponseWriter, r *http.Request) {
	if !a.checkToken(w, r) {
		return
	}
	if a.StartDrill == nil {
		writeJSON(w, http.StatusNotImplemented, map[string]string{"error": "drills are not available"})
		return
	}
	req, err := readDrillRequest(w, r)
	if err == nil && req.Duration == "" {
		err = &DrillError{Problem: "duration is required (for example 5m), so that a drill always ends by itself"}
	}
	var d time.Duration
	if err == nil {
		if d, err = time.ParseDuration(req.Duration); err != nil {
			err = &DrillError{Problem: fmt.Sprintf("duration %q: %v", req.Duration, err)}
		}
	}
	var states []DrillState
	if err == nil {
		states, err = a.StartDrill(req.Protocol, d)
	}
	if err != nil {
		a.drillFailed(w, err)
		return
	}
	a.logger().Warn("drill started by the admin API: writes are refused until it ends",
		"protocol", orBoth(req.Protocol), "duration", d.String(), "client", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]any{"drills": states})
}

func (a *Admin) stopDrill(w http.ResponseWriter, r *http.Request) {
	if !a.checkToken(w, r) {
		return
	}
	if a.StopDrill == nil {
		writeJSON(w, http.StatusNotImplemented, map[string]string{"error": "drills are not available"})
		return
	}
	req, err := readDrillRequest(w, r)
	var states []DrillState
	if err == nil {
		states, err = a.StopDrill(req.Protocol)
	}
	if err != nil {
		a.drillFailed(w, err)
		return
	}
	a.logger().Info("drill stopped by the admin API", "protocol", orBoth(req.Protocol), "client", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]any{"drills": states})
}

func (a *Admin) drillFailed(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	if IsDrillError(err) {
		code = http.StatusBadRequest
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

// checkToken answers 401 and returns false when the request lacks the
// bearer token.
func (a *Admin) checkToken(w http.ResponseWriter, r *http.Request) bool {
	if a.authorized(r) {
		return true
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="spokeproxy admin"`)
	writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "a valid bearer token (admin.token_file) is required"})
	a.logger().Warn("admin request without a valid token refused", "path", r.URL.Path, "client", r.RemoteAddr)
	return false
}

func (a *Admin) logger() *slog.Logger {
	if a.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Logger
}

func orBoth(protocol string) string {
	if protocol == "" {
		return "both"
	}
	return protocol
}

// authorized checks the bearer token of a state-changing request.
func (a *Admin) authorized(r *http.Request) bool {
	token := a.Token
	if a.TokenSource != nil {
		token = a.TokenSource()
	}
	if token == "" {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

func writeJSON(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(body)
}

// ServeAdmin serves the admin API on ln until ctx ends, then shuts down
// within a short grace period.
func ServeAdmin(ctx context.Context, ln net.Listener, h http.Handler, logger *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	err := srv.Serve(ln)
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
