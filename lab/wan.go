package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	toxiclient "github.com/Shopify/toxiproxy/v2/client"
	"github.com/rs/zerolog"
)

// Names of the WAN links, as toxiproxy's API and CLI know them.
const (
	LinkPG   = "wan_pg"   // spoke -> hub PostgreSQL primary
	LinkLDAP = "wan_ldap" // spoke -> hub LDAP provider
	LinkPG2  = "wan_pg_2" // spoke -> hub-site PostgreSQL standby (Options.HubStandby only)
)

// wan is the embedded toxiproxy: its proxies are the WAN links and its HTTP
// API (toxiproxy's own routes) listens on a loopback port so toxiproxy-cli
// and curl can cut links or add toxics.
type wan struct {
	server  *toxiproxy.ApiServer
	http    *http.Server
	apiAddr string
	served  chan struct{} // closed when the HTTP server's Serve returns
	logFile *os.File
	client  *toxiclient.Client
}

// startWAN starts toxiproxy's API on a free loopback port, logging to logPath.
func startWAN(logPath string) (*wan, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab: toxiproxy log: %w", err)
	}
	zl := zerolog.New(logf).With().Timestamp().Logger().Level(zerolog.InfoLevel)
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zl)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("lab: toxiproxy API listener: %w", err)
	}
	w := &wan{
		server:  srv,
		http:    &http.Server{Handler: srv.Routes(), ReadHeaderTimeout: 10 * time.Second},
		apiAddr: ln.Addr().String(),
		served:  make(chan struct{}),
		logFile: logf,
	}
	go func() {
		defer close(w.served)
		_ = w.http.Serve(ln)
	}()
	w.client = toxiclient.NewClient(w.apiURL())
	return w, nil
}

func (w *wan) apiURL() string { return "http://" + w.apiAddr }

// addLink starts a link listening on a free loopback port toward upstream
// and returns the address it listens on.
func (w *wan) addLink(name, upstream string) (string, error) {
	p := toxiproxy.NewProxy(w.server, name, "127.0.0.1:0", upstream)
	if err := w.server.Collection.Add(p, true); err != nil {
		return "", fmt.Errorf("lab: WAN link %s: %w", name, err)
	}
	return p.Listen, nil
}

// close stops the API and every link (which closes their connections).
func (w *wan) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := w.http.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, w.http.Close())
	}
	<-w.served
	err = errors.Join(err, w.server.Collection.Clear())
	return errors.Join(err, w.logFile.Close())
}

// AddLatency delays both directions of a WAN link by each (so a round trip
// costs 2*each more), with toxiproxy latency toxics named
// "latency_upstream" and "latency_downstream".
func (l *Lab) AddLatency(link string, each time.Duration) error {
	for _, stream := range []string{"upstream", "downstream"} {
		_, err := l.wan.client.AddToxic(&toxiclient.ToxicOptions{
			ProxyName: link, ToxicName: "latency_" + stream, ToxicType: "latency", Stream: stream, Toxicity: 1,
			Attributes: toxiclient.Attributes{"latency": each.Milliseconds()},
		})
		if err != nil {
			return fmt.Errorf("lab: latency on %s: %w", link, err)
		}
	}
	return nil
}

// Blackhole makes a WAN link swallow data silently (toxiproxy's timeout
// toxic with timeout 0, named "blackhole"): live connections hang, new TCP
// connects still succeed, no RST is ever sent. ClearToxics or ResetWAN
// ends it.
func (l *Lab) Blackhole(link string) error {
	for _, stream := range []string{"upstream", "downstream"} {
		_, err := l.wan.client.AddToxic(&toxiclient.ToxicOptions{
			ProxyName: link, ToxicName: "blackhole_" + stream, ToxicType: "timeout", Stream: stream, Toxicity: 1,
			Attributes: toxiclient.Attributes{"timeout": 0},
		})
		if err != nil {
			return fmt.Errorf("lab: blackhole on %s: %w", link, err)
		}
	}
	return nil
}

// ClearToxics removes every toxic from a WAN link (its enabled state stays).
func (l *Lab) ClearToxics(link string) error {
	p, err := l.wan.client.Proxy(link)
	if err != nil {
		return fmt.Errorf("lab: link %s: %w", link, err)
	}
	toxics, err := p.Toxics()
	if err != nil {
		return fmt.Errorf("lab: link %s: %w", link, err)
	}
	for _, t := range toxics {
		if err := p.RemoveToxic(t.Name); err != nil {
			return fmt.Errorf("lab: link %s: %w", link, err)
		}
	}
	return nil
}
