package ldapfront

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/spokeproxy/spokeproxy/lab"
)

// BenchmarkLabFront prints, from one interleaved run against the real lab:
// search throughput with 8 concurrent clients (in a child process) through
// the proxy and direct to the consumer, their ratio, and the CPU time per
// search of the relay, of slapd and of the clients, for two kinds of client:
// minimal (pre-encoded requests, envelope-only decoding: the relay's cost
// shows undiluted) and go-ldap (a full client library, which spends about as
// much CPU per search as slapd). Then the added latency of a
// connect+bind+search, and with 25 ms each way on the WAN a Modify through
// the proxy (session mode) against the same Modify direct to the provider
// over the WAN. Run it with
//
//	go test -run '^$' -bench BenchmarkLabFront -benchtime 1x ./ldapfront
//
// (make bench runs it too). Client, proxy and servers share the machine's
// cores, with the load average printed: compare within a run only. When the
// cores are saturated, throughput follows CPU per search, so the ratio of
// the legs' summed CPU per search ("CPU-bound ratio") is the steadier figure;
// throughput ratios move with whatever else runs on the machine.
func BenchmarkLabFront(b *testing.B) {
	l := lab.ForTest(b, lab.Options{})
	f := startFront(b, l, nil)
	proxyURL, directURL := f.url, l.ReplicaLDAPURL()
	pids := l.PIDs()
	slapd := pids[len(pids)-1] // the spoke's consumer
	for range b.N {
		const clients, rounds = 8, 4
		round := 500 * time.Millisecond
		var lines []string
		for _, client := range []string{clientMinimal, clientGoLDAP} {
			// Interleaved rounds (the order alternates, so that a change of
			// the machine's load weighs on both alike). The clients run in a
			// child process, as they would in production.
			var proxy, direct loadResult
			for i := range rounds {
				urls := []string{proxyURL, directURL}
				if i%2 == 1 {
					urls[0], urls[1] = urls[1], urls[0]
				}
				for _, u := range urls {
					r := searchThroughputProc(b, client, u, lab.UserDN, lab.UserPassword, lab.UserDN, clients, round, slapd)
					if u == proxyURL {
						proxy.add(r)
					} else {
						direct.add(r)
					}
				}
			}
			secs := float64(rounds) * round.Seconds()
			pr, dr := float64(proxy.searches)/secs, float64(direct.searches)/secs
			// The relay's CPU: this process while proxied, less its idle
			// share (lab WAN links, probes) while direct.
			relay := proxy.perSearch(proxy.ownCPU) - direct.perSearch(direct.ownCPU)
			proxied := proxy.perSearch(proxy.clientCPU) + proxy.perSearch(proxy.serverCPU) + relay
			plain := direct.perSearch(direct.clientCPU) + direct.perSearch(direct.serverCPU)
			us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
			b.ReportMetric(pr, client+"-proxy-searches/s")
			b.ReportMetric(dr, client+"-direct-searches/s")
			b.ReportMetric(pr/dr, client+"-search-ratio")
			b.ReportMetric(float64(plain)/float64(proxied), client+"-cpu-bound-ratio")
			b.ReportMetric(us(relay), client+"-relay-cpu-µs/search")
			lines = append(lines, fmt.Sprintf("  %-7s  %6.0f/s through, %6.0f/s direct, ratio %.2f; CPU µs per search: relay %3.0f, slapd %3.0f through / %3.0f direct, client %3.0f / %3.0f; CPU-bound ratio %.2f",
				client, pr, dr, pr/dr, us(relay), us(proxy.perSearch(proxy.serverCPU)), us(direct.perSearch(direct.serverCPU)),
				us(proxy.perSearch(proxy.clientCPU)), us(direct.perSearch(direct.clientCPU)), float64(plain)/float64(proxied)))
		}
		b.Logf("search, %d clients, %d interleaved rounds of %v each way, load average %s (target ratio >= 0.9):\n%s",
			clients, rounds, round, loadAverage(), strings.Join(lines, "\n"))

		// Connect + bind + search latency.
		var pLat, dLat []time.Duration
		for range 100 {
			pLat = append(pLat, bindSearch(b, proxyURL))
			dLat = append(dLat, bindSearch(b, directURL))
		}
		pm, dm := median(pLat), median(dLat)
		b.ReportMetric(float64((pm - dm).Microseconds()), "bind+search-added-µs")

		// Modify over a 25 ms WAN: through the proxy vs direct to the provider.
		if err := l.AddLatency(lab.LinkLDAP, 25*time.Millisecond); err != nil {
			b.Fatal(err)
		}
		pc := f.dial(b, lab.UserDN, lab.UserPassword)
		dc, err := ldap.DialURL(l.WANLDAPURL())
		if err != nil {
			b.Fatal(err)
		}
		if err := dc.Bind(lab.UserDN, lab.UserPassword); err != nil {
			b.Fatal(err)
		}
		modify(b, pc, "warm") // the proxy's hub connection opens on first need
		var pMod, dMod []time.Duration
		for i := range 20 {
			pMod = append(pMod, modify(b, pc, fmt.Sprintf("p%d", i)))
			dMod = append(dMod, modify(b, dc, fmt.Sprintf("d%d", i)))
		}
		dc.Close()
		if err := l.ResetWAN(); err != nil {
			b.Fatal(err)
		}
		pmm, dmm := median(pMod), median(dMod)
		b.ReportMetric(float64(pmm.Microseconds())/1000, "proxy-modify-ms")
		b.ReportMetric(float64(dmm.Microseconds())/1000, "direct-modify-ms")
		b.ReportMetric(float64(pmm)/float64(dmm), "modify-ratio")
		b.Logf("connect+bind+search median %v through, %v direct (+%v); "+
			"modify over 25 ms WAN median %v through, %v direct, ratio %.3f (target <= 1.05)",
			pm, dm, pm-dm, pmm, dmm, float64(pmm)/float64(dmm))
	}
}

func bindSearch(b *testing.B, url string) time.Duration {
	start := time.Now()
	c, err := ldap.DialURL(url)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind(lab.UserDN, lab.UserPassword); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Search(ldap.NewSearchRequest(lab.UserDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"cn"}, nil)); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func modify(b *testing.B, c *ldap.Conn, tag string) time.Duration {
	m := ldap.NewModifyRequest(lab.UserDN, nil)
	m.Replace("description", []string{uniqueName("bench-" + tag)})
	start := time.Now()
	if err := c.Modify(m); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// loadAverage is the machine's 1, 5 and 15 minute load averages, for reading
// the figures: client, proxy and servers share the cores with whatever else runs.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
