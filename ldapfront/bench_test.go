package ldapfront

import (
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/spokeproxy/spokeproxy/lab"
)

// BenchmarkLabFront prints, from one interleaved run against the real lab:
// search throughput with 8 concurrent clients through the proxy and direct to
// the consumer (and their ratio), the added latency of a connect+bind+search,
// and with 25 ms each way on the WAN a Modify through the proxy (session mode)
// against the same Modify direct to the provider over the WAN. Run it with
//
//	go test -run '^$' -bench BenchmarkLabFront -benchtime 1x ./ldapfront
//
// Client, proxy and servers share the machine's cores: compare within a run only.
func BenchmarkLabFront(b *testing.B) {
	l := lab.ForTest(b, lab.Options{})
	f := startFront(b, l, nil)
	proxyURL, directURL := f.url, l.ReplicaLDAPURL()
	for range b.N {
		// Search throughput, interleaved rounds.
		const clients = 8
		round := time.Second
		var proxyOps, directOps int64
		for range 2 {
			proxyOps += searchThroughput(b, proxyURL, clients, round)
			directOps += searchThroughput(b, directURL, clients, round)
		}
		pr, dr := float64(proxyOps)/(2*round.Seconds()), float64(directOps)/(2*round.Seconds())
		b.ReportMetric(pr, "proxy-searches/s")
		b.ReportMetric(dr, "direct-searches/s")
		b.ReportMetric(pr/dr, "search-ratio")

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
		b.Logf("search: %.0f/s through spokeproxy, %.0f/s direct, ratio %.2f (target >= 0.9); "+
			"connect+bind+search median %v through, %v direct (+%v); "+
			"modify over 25 ms WAN median %v through, %v direct, ratio %.3f (target <= 1.05)",
			pr, dr, pr/dr, pm, dm, pm-dm, pmm, dmm, float64(pmm)/float64(dmm))
	}
}

func searchThroughput(b *testing.B, url string, clients int, d time.Duration) int64 {
	var n atomic.Int64
	var wg sync.WaitGroup
	conns := make([]*ldap.Conn, clients)
	for i := range conns {
		c, err := ldap.DialURL(url)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Bind(lab.UserDN, lab.UserPassword); err != nil {
			b.Fatal(err)
		}
		conns[i] = c
	}
	stop := time.Now().Add(d)
	req := ldap.NewSearchRequest(lab.UserDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"cn", "mail"}, nil)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				if _, err := c.Search(req); err != nil {
					b.Error(err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	for _, c := range conns {
		c.Close()
	}
	return n.Load()
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
