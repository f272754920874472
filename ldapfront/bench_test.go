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
// search of the relay and of the client; the added latency of a connect+bind+search,
// and with 25 ms each way on the WAN a Modify through the proxy (session mode)
// against the same Modify direct to the provider over the WAN. Run it with
//
//	go test -run '^$' -bench BenchmarkLabFront -benchtime 1x ./ldapfront
//
// (make bench runs it too). Client, proxy and servers share the machine's
// cores, with the load average printed: compare within a run only.
func BenchmarkLabFront(b *testing.B) {
	l := lab.ForTest(b, lab.Options{})
	f := startFront(b, l, nil)
	proxyURL, directURL := f.url, l.ReplicaLDAPURL()
	for range b.N {
		// Search throughput, interleaved rounds (the order alternates, so
		// that a change of the machine's load weighs on both alike). The
		// clients run in a child process, as they would in production.
		const clients = 8
		round := 500 * time.Millisecond
		var proxy, direct loadResult
		for i := range 4 {
			urls := []string{proxyURL, directURL}
			if i%2 == 1 {
				urls[0], urls[1] = urls[1], urls[0]
			}
			for _, u := range urls {
				r := searchThroughputProc(b, u, lab.UserDN, lab.UserPassword, lab.UserDN, clients, round)
				if u == proxyURL {
					proxy.add(r)
				} else {
					direct.add(r)
				}
			}
		}
		secs := 4 * round.Seconds()
		pr, dr := float64(proxy.searches)/secs, float64(direct.searches)/secs
		b.ReportMetric(pr, "proxy-searches/s")
		b.ReportMetric(dr, "direct-searches/s")
		b.ReportMetric(pr/dr, "search-ratio")
		// CPU per search: the relay's own (this process while proxied, less
		// its idle share while direct) against the client's.
		relayCPU := proxy.ownCPU.Seconds()/float64(proxy.searches) - direct.ownCPU.Seconds()/float64(direct.searches)
		clientCPU := direct.clientCPU.Seconds() / float64(direct.searches)
		b.ReportMetric(relayCPU*1e6, "relay-cpu-µs/search")
		b.ReportMetric(clientCPU*1e6, "client-cpu-µs/search")

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
		b.Logf("load average %s; %d clients, %d interleaved rounds of %v each way", loadAverage(), clients, 4, round)
		b.Logf("search: %.0f/s through spokeproxy, %.0f/s direct, ratio %.2f (target >= 0.9); CPU per search: relay %.0f µs, go-ldap client %.0f µs; "+
			"connect+bind+search median %v through, %v direct (+%v); "+
			"modify over 25 ms WAN median %v through, %v direct, ratio %.3f (target <= 1.05)",
			pr, dr, pr/dr, relayCPU*1e6, clientCPU*1e6, pm, dm, pm-dm, pmm, dmm, float64(pmm)/float64(dmm))
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
