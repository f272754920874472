package routing

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
)

// ldapProber keeps one monitoring connection to an LDAP endpoint and reads
// the suffix's contextCSN by a base search (asked for by name: it is
// operational).
//
// Telling a provider from a consumer: the hub list is configured as
// providers, so a hub candidate that answers the probe is a provider that
// answers (Writable); one that does not answer is down. When a monitor
// identity is configured (BindDN), a hub candidate is also asked, once per
// monitoring connection, a write it cannot perform: a Modify of the suffix carrying the Assertion control
// (RFC 4528) with a filter no entry matches. A syncrepl consumer answers any
// bound write with a referral (10) to its updateref, so a referral marks the
// candidate as not writable; a provider answers assertionFailed (122) or
// insufficientAccess (50) and changes nothing. Anonymous writes get 8 from
// both, which is why this needs a bound identity.
type ldapProber struct {
	s      *Site
	target Target
	url    string
	raw    net.Conn
	conn   *ldap.Conn
	// The role is asked once per connection: a server does not turn from
	// consumer into provider without a restart, which drops the connection.
	roleKnown  bool
	isWritable bool
}

func newLDAPProber(s *Site, t Target, url string) Prober {
	return &ldapProber{s: s, target: t, url: url}
}

func (p *ldapProber) dial(ctx context.Context) error {
	addr, ldaps := hostPort(p.url)
	cfg := p.s.config()
	raw, err := p.s.live.Load().dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	if ldaps {
		tc := tls.Client(raw, p.s.tlsFor(addr))
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return err
		}
		raw = tc
	}
	p.raw = raw
	p.conn = ldap.NewConn(raw, ldaps)
	p.conn.Start()
	p.conn.SetTimeout(timeLeft(ctx, cfg.ProbeTimeout))
	if p.target == TargetHub && cfg.HubStartTLS && !ldaps {
		if err := p.conn.StartTLS(p.s.tlsFor(addr)); err != nil {
			p.drop()
			return err
		}
	}
	if cfg.BindDN != "" {
		if err := p.conn.Bind(cfg.BindDN, cfg.BindPassword); err != nil {
			p.drop()
			return err
		}
	}
	return nil
}

func timeLeft(ctx context.Context, def time.Duration) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return def
}

func (p *ldapProber) Probe(ctx context.Context) (ProbeResult, error) {
	if p.conn == nil {
		if err := p.dial(ctx); err != nil {
			return ProbeResult{}, err
		}
	}
	// The raw deadline unblocks everything if the link is blackholed;
	// SetTimeout bounds each request.
	if d, ok := ctx.Deadline(); ok {
		p.raw.SetDeadline(d)
	}
	cfg := p.s.config()
	p.conn.SetTimeout(timeLeft(ctx, cfg.ProbeTimeout))
	res, err := p.conn.Search(ldap.NewSearchRequest(cfg.BaseDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases,
		1, 0, false, "(objectClass=*)", []string{"contextCSN"}, nil))
	if err != nil {
		p.drop()
		return ProbeResult{}, err
	}
	if len(res.Entries) != 1 {
		p.drop()
		return ProbeResult{}, errors.New("base search of " + cfg.BaseDN + " returned no entry")
	}
	set, err := ParseCSNSet(res.Entries[0].GetEqualFoldAttributeValues("contextCSN"))
	if err != nil {
		p.drop()
		return ProbeResult{}, err
	}
	if !p.roleKnown && p.target == TargetHub && cfg.BindDN != "" {
		w, err := p.writable()
		if err != nil {
			p.drop()
			return ProbeResult{}, err
		}
		p.isWritable, p.roleKnown = w, true
	}
	// The consumer is never asked (nothing is written through it): not
	// writable, as a standby reports itself.
	out := ProbeResult{Writable: p.target == TargetHub && (p.isWritable || !p.roleKnown), Position: set}
	p.raw.SetDeadline(time.Time{})
	return out, nil
}

// writable asks a write that cannot change anything (see ldapProber).
func (p *ldapProber) writable() (bool, error) {
	req := ldap.NewModifyRequest(p.s.config().BaseDN, []ldap.Control{assertNothing{}})
	req.Replace("objectClass", []string{"top"})
	err := p.conn.Modify(req)
	switch {
	case err == nil:
		return true, nil // an assertion that cannot hold held: still a provider
	case ldap.IsErrorWithCode(err, ldap.LDAPResultReferral):
		return false, nil
	case ldap.IsErrorWithCode(err, ldap.ErrorNetwork), ldap.IsErrorWithCode(err, ldap.ErrorUnexpectedResponse):
		return false, err
	}
	return true, nil
}

func (p *ldapProber) drop() {
	if p.conn == nil {
		return
	}
	p.raw.Close()
	p.conn.Close()
	p.conn, p.raw = nil, nil
	p.roleKnown = false
}

func (p *ldapProber) Close() error {
	p.drop()
	return nil
}

// assertNothing is the Assertion control (RFC 4528, critical) with the
// filter (!(objectClass=*)), which no entry matches: a write carrying it
// never changes anything.
type assertNothing struct{}

const oidAssertion = "1.3.6.1.1.12"

func (assertNothing) GetControlType() string { return oidAssertion }
func (assertNothing) String() string         { return "Assertion (!(objectClass=*))" }
func (assertNothing) Encode() *ber.Packet {
	p := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "Control")
	p.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, oidAssertion, "Control Type"))
	p.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, true, "Criticality"))
	filter, err := ldap.CompileFilter("(!(objectClass=*))")
	if err != nil {
		panic(err) // a constant filter
	}
	value := ber.Encode(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, nil, "Control Value")
	value.AppendChild(filter)
	p.AppendChild(value)
	return p
}
