package ldapfront

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"

	"github.com/spokeproxy/spokeproxy/lab"
)

// txnEndValue encodes txnEndReq ::= SEQUENCE { commit BOOLEAN DEFAULT TRUE,
// identifier OCTET STRING } (RFC 5805 section 2.3).
func txnEndValue(commit bool, id string) []byte {
	s := ber.NewSequence("txnEndReq")
	if !commit {
		s.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, false, "commit"))
	}
	s.AppendChild(str(id))
	return s.Bytes()
}

func txnSpec(id string) Control {
	return Control{OID: OIDTxnSpec, Critical: true, Value: []byte(id), HasValue: true}
}

// Start Transaction, the operations carrying the Transaction Specification
// control (reads included) and End Transaction all run on the hub; only End
// Transaction is followed by a contextCSN read for read-your-writes, and
// operations inside the transaction get no Post-Read control.
func TestTransactionsGoToTheHub(t *testing.T) {
	r := startRig(t, nil, nil, nil)
	c := r.client(t)
	c.send(simpleBind(1, "uid=alice,dc=example,dc=org", "pw"))
	if code, _ := c.result(1); code != 0 {
		t.Fatalf("bind: %d", code)
	}
	c.send(extended(2, OIDStartTxn, nil))
	if code, _ := c.result(2); code != 0 {
		t.Fatalf("start transaction: %d", code)
	}
	c.send(modifyReq(3, "cn=x", txnSpec("t1")))
	c.result(3)
	c.send(searchReq(4, "cn=x,dc=example,dc=org", txnSpec("t1")))
	c.result(4)
	internalBeforeEnd := countInternal(r.hub.requests(OpSearchRequest))
	c.send(extended(5, OIDEndTxn, txnEndValue(true, "t1")))
	if code, _ := c.result(5); code != 0 {
		t.Fatalf("end transaction: %d", code)
	}

	if got := r.replica.requests(OpModifyRequest); len(got) != 0 {
		t.Errorf("replica got %d modifies", len(got))
	}
	if got := r.replica.requests(OpSearchRequest); len(got) != 0 {
		t.Errorf("replica got %d searches (the transaction's search belongs on the hub)", len(got))
	}
	ext := r.hub.requests(OpExtendedRequest)
	if len(ext) != 2 || ext[0].ExtOID != OIDStartTxn || ext[1].ExtOID != OIDEndTxn {
		t.Fatalf("hub extended requests: %v", ext)
	}
	mods := r.hub.requests(OpModifyRequest)
	if len(mods) != 1 || mods[0].MessageID != 3 {
		t.Fatalf("hub modifies: %v", mods)
	}
	if _, ok := mods[0].Control(OIDTxnSpec); !ok {
		t.Errorf("the transaction's modify reached the hub without its Transaction Specification control")
	}
	if _, ok := mods[0].Control(OIDPostRead); ok {
		t.Errorf("the proxy added Post-Read to an operation inside a transaction (nothing is committed yet)")
	}
	var txnSearch int
	for _, p := range r.hub.requests(OpSearchRequest) {
		if p.MessageID == 4 {
			txnSearch++
		}
	}
	if txnSearch != 1 {
		t.Errorf("hub saw the transaction's search %d times, want 1", txnSearch)
	}
	if internalBeforeEnd != 0 {
		t.Errorf("the proxy read the hub's contextCSN %d times before End Transaction, want 0", internalBeforeEnd)
	}
	if after := countInternal(r.hub.requests(OpSearchRequest)); after != 1 {
		t.Errorf("contextCSN reads after End Transaction: %d, want 1", after)
	}

	// With the hub down, a transaction cannot start: 52, the connection stays.
	r.site.mu.Lock()
	r.site.hubUp = false
	r.site.mu.Unlock()
	c.send(extended(6, OIDStartTxn, nil))
	if code, diag := c.result(6); code != ResultUnavailable || !strings.Contains(diag, "read-only") {
		t.Fatalf("start transaction with the hub down: %d %q, want 52 saying read-only", code, diag)
	}
	c.send(modifyReq(7, "cn=x", txnSpec("t2")))
	if code, _ := c.result(7); code != ResultUnavailable {
		t.Fatalf("transaction's modify with the hub down: %d, want 52", code)
	}
	c.send(searchReq(8, "dc=example,dc=org"))
	if code, _ := c.result(8); code != 0 {
		t.Fatalf("search with the hub down: %d", code)
	}
}

// txnSpecControl is the Transaction Specification control for go-ldap, with
// its value present even when empty (ldap.ControlString drops empty values).
type txnSpecControl string

func (c txnSpecControl) GetControlType() string { return OIDTxnSpec }
func (c txnSpecControl) String() string         { return "txnSpec " + string(c) }
func (c txnSpecControl) Encode() *ber.Packet {
	return encodeControl(txnSpec(string(c)))
}

func countInternal(ps []*PDU) int {
	n := 0
	for _, p := range ps {
		if p.MessageID >= internalBase {
			n++
		}
	}
	return n
}

// TestLabTransactions runs RFC 5805 transactions through the proxy against the
// lab's slapd (OpenLDAP 2.5 back-mdb): go-ldap with commit and abort, reading
// the committed entries back on the same connection, ldapmodify -E txn=commit,
// and a refusal with the link cut.
//
// Debian 12's slapd (OpenLDAP 2.5.13) corrupts its own heap in transactions:
// talking to it directly, without the proxy, it dies of SIGSEGV or SIGABRT
// within about a hundred aborted transactions on one connection, and within a
// few commits from concurrent connections (docs/operations.md, "LDAP
// transactions and OpenLDAP 2.5.13"). A step that fails because the hub
// slapd died of SIGSEGV or SIGABRT runs again on a restarted slapd, at most
// twice; any other failure, an exit of another kind included, fails the
// test at once.
func TestLabTransactions(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)

	// The hub directly, and the proxy: both dialled again after a slapd crash.
	var hub, c *ldap.Conn
	closeAll := func() {
		for _, conn := range []*ldap.Conn{hub, c} {
			if conn != nil {
				conn.Close()
			}
		}
		hub, c = nil, nil
	}
	connect := func() error {
		closeAll()
		for _, d := range []struct {
			conn **ldap.Conn
			url  string
		}{{&hub, l.HubLDAPURL()}, {&c, f.url}} {
			conn, err := ldap.DialURL(d.url)
			if err != nil {
				return err
			}
			*d.conn = conn
			conn.SetTimeout(10 * time.Second)
			if err := conn.Bind(lab.AdminDN, l.AdminPassword()); err != nil {
				return fmt.Errorf("bind to %s: %w", d.url, err)
			}
		}
		return nil
	}
	t.Cleanup(closeAll)
	if err := connect(); err != nil {
		t.Fatal(err)
	}
	dse := searchOne(t, hub, "", "supportedExtension")
	for _, oid := range []string{OIDStartTxn, OIDEndTxn} {
		found := false
		for _, v := range dse.GetAttributeValues("supportedExtension") {
			found = found || v == oid
		}
		if !found {
			t.Fatalf("the lab's provider does not list %s in supportedExtension: %v", oid, dse.GetAttributeValues("supportedExtension"))
		}
	}
	onHub := func(dn string) (bool, error) {
		_, err := hub.Search(ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"cn"}, nil))
		if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("search %s on the hub: %w", dn, err)
		}
		return true, nil
	}
	wantOnHub := func(want bool, dns ...string) error {
		for _, dn := range dns {
			got, err := onHub(dn)
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("%s on the hub: %v, want %v", dn, got, want)
			}
		}
		return nil
	}
	startTxn := func() (string, error) {
		resp, err := c.Extended(ldap.NewExtendedRequest(OIDStartTxn, nil))
		if err != nil {
			return "", fmt.Errorf("start transaction through the proxy: %w", err)
		}
		if resp.Value == nil {
			return "", errors.New("start transaction: no responseValue (transaction identifier) in the response")
		}
		// OpenLDAP 2.5 runs one transaction per connection and answers
		// with an empty identifier.
		return resp.Value.Data.String(), nil
	}
	endTxn := func(commit bool, id string) error {
		s := ber.NewSequence("txnEndReq")
		if !commit {
			s.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, false, "commit"))
		}
		s.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, id, "identifier"))
		_, err := c.Extended(ldap.NewExtendedRequest(OIDEndTxn, s))
		return err
	}
	addInTxn := func(id string, cns ...string) ([]string, error) {
		var dns []string
		for _, cn := range cns {
			a := addPerson(cn)
			a.Controls = []ldap.Control{txnSpecControl(id)}
			if err := c.Add(a); err != nil {
				return nil, fmt.Errorf("add %s inside the transaction: %w", cn, err)
			}
			dns = append(dns, a.DN)
		}
		return dns, nil
	}
	// step runs one scenario as a subtest, again on a restarted hub slapd
	// when that slapd crashed under it.
	step := func(name string, run func(t *testing.T) error) {
		ok := t.Run(name, func(t *testing.T) {
			for attempt := 1; ; attempt++ {
				err := run(t)
				if err == nil {
					return
				}
				how, crashed := hubSlapdCrashed(l)
				if !crashed || attempt == 3 {
					t.Fatalf("%v (hub slapd crashed: %v %s)", err, crashed, how)
				}
				t.Logf("attempt %d: %v: the hub slapd died (%s), OpenLDAP 2.5.13's transaction defect; restarting it and running the step again", attempt, err, how)
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				err = l.StartHubLDAP(ctx)
				cancel()
				if err != nil {
					t.Fatalf("restart the crashed hub slapd: %v", err)
				}
				f.waitHub(t, true)
				if err := connect(); err != nil {
					t.Fatalf("after restarting the hub slapd: %v", err)
				}
			}
		})
		if !ok {
			t.FailNow() // the next steps need the connections this one left
		}
	}

	step("commit", func(t *testing.T) error {
		id, err := startTxn()
		if err != nil {
			return err
		}
		dns, err := addInTxn(id, uniqueName("txn"), uniqueName("txn"))
		if err != nil {
			return err
		}
		if err := wantOnHub(false, dns...); err != nil {
			return fmt.Errorf("before the commit: %w", err)
		}
		if err := endTxn(true, id); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		if err := wantOnHub(true, dns...); err != nil {
			return fmt.Errorf("after the commit: %w", err)
		}
		// Read-your-writes: the same connection reads both at once.
		for _, dn := range dns {
			if _, err := c.Search(ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"cn"}, nil)); err != nil {
				return fmt.Errorf("read %s back through the proxy: %w", dn, err)
			}
		}
		return nil
	})
	step("abort", func(t *testing.T) error {
		id, err := startTxn()
		if err != nil {
			return err
		}
		dns, err := addInTxn(id, uniqueName("txn-abort"))
		if err != nil {
			return err
		}
		if err := endTxn(false, id); err != nil {
			return fmt.Errorf("abort: %w", err)
		}
		if err := wantOnHub(false, dns...); err != nil {
			return fmt.Errorf("after the abort: %w", err)
		}
		return nil
	})
	step("ldapmodify -E txn=commit", func(t *testing.T) error {
		cn1, cn2 := uniqueName("txn-tool"), uniqueName("txn-tool")
		ldif := fmt.Sprintf("dn: cn=%s,ou=people,%s\nobjectClass: person\ncn: %s\nsn: T\n\ndn: cn=%s,ou=people,%s\nobjectClass: person\ncn: %s\nsn: T\n",
			cn1, lab.BaseDN, cn1, cn2, lab.BaseDN, cn2)
		args := []string{"-a", "-x", "-H", f.url, "-D", lab.AdminDN, "-w", l.AdminPassword(), "-E", "txn=commit"}
		if out, errs, code := runTool(t, ldif, "ldapmodify", args...); code != 0 {
			return fmt.Errorf("ldapmodify -E txn=commit through the proxy: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
		}
		return wantOnHub(true, "cn="+cn1+",ou=people,"+lab.BaseDN, "cn="+cn2+",ou=people,"+lab.BaseDN)
	})
	// ldap.transactions: refuse, applied by a reload while a transaction
	// is open: that one still commits; a new one, from go-ldap or
	// ldapmodify, gets 53 and never reaches the hub.
	step("turned off by a reload", func(t *testing.T) error {
		id, err := startTxn()
		if err != nil {
			return err
		}
		open, err := addInTxn(id, uniqueName("txn-open"))
		if err != nil {
			return err
		}
		cfg := *f.srv.config()
		cfg.RefuseTransactions = true
		if err := f.srv.Reconfigure(cfg); err != nil {
			t.Fatal(err)
		}
		defer func() {
			cfg.RefuseTransactions = false
			if err := f.srv.Reconfigure(cfg); err != nil {
				t.Error(err)
			}
		}()
		if err := endTxn(true, id); err != nil {
			return fmt.Errorf("commit of the transaction open before the reload: %w", err)
		}
		if err := wantOnHub(true, open...); err != nil {
			return err
		}
		_, err = c.Extended(ldap.NewExtendedRequest(OIDStartTxn, nil))
		if !ldap.IsErrorWithCode(err, ldap.LDAPResultUnwillingToPerform) || !strings.Contains(err.Error(), "turned off") {
			t.Fatalf("start transaction after the reload: %v, want 53 saying transactions are turned off", err)
		}
		// ldapmodify -E txn=commit goes on without the transaction (the
		// control is not critical); -E '!txn=commit' stops.
		for _, tc := range []struct {
			ext   string
			added bool
		}{{"txn=commit", true}, {"!txn=commit", false}} {
			cn := uniqueName("txn-refused")
			ldif := fmt.Sprintf("dn: cn=%s,ou=people,%s\nobjectClass: person\ncn: %s\nsn: T\n", cn, lab.BaseDN, cn)
			args := []string{"-a", "-x", "-H", f.url, "-D", lab.AdminDN, "-w", l.AdminPassword(), "-E", tc.ext}
			out, errs, code := runTool(t, ldif, "ldapmodify", args...)
			if (code == 0) != tc.added || !strings.Contains(errs, "ldap_txn_start_s: Server is unwilling to perform (53)") {
				t.Fatalf("ldapmodify -E %s with transactions turned off: exit %d, want the start refused with 53 and the entry added %v\nstdout: %s\nstderr: %s", tc.ext, code, tc.added, out, errs)
			}
			if err := wantOnHub(tc.added, "cn="+cn+",ou=people,"+lab.BaseDN); err != nil {
				return fmt.Errorf("ldapmodify -E %s: %w", tc.ext, err)
			}
		}
		if got := metricValue(t, f.reg, "spokeproxy_ldap_operations_total", map[string]string{"op": "transaction", "route": "refuse"}); got != 3 {
			t.Errorf("refused transaction operations: %v, want 3", got)
		}
		return nil
	})
	if got := metricValue(t, f.reg, "spokeproxy_ldap_operations_total", map[string]string{"op": "transaction", "route": "hub"}); got < 6 {
		t.Errorf("transaction operations routed to the hub: %v, want at least 6", got)
	}
	t.Run("link cut", func(t *testing.T) {
		f.cut(t)
		_, err := c.Extended(ldap.NewExtendedRequest(OIDStartTxn, nil))
		wantCode(t, err, ldap.LDAPResultUnavailable, "read-only")
		searchOne(t, c, lab.UserDN, "cn") // reads go on locally
	})
}

// hubSlapdCrashed waits briefly for the lab to see the hub slapd's exit (a
// client sees the reset before the lab reaps the process) and reports
// whether it died the way OpenLDAP 2.5.13's transaction defect kills it
// (SIGSEGV or SIGABRT), and how it ended.
func hubSlapdCrashed(l *lab.Lab) (string, bool) {
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		how, ended := l.HubLDAPCrashed()
		if ended || time.Now().After(deadline) {
			return how, ended && (how == "signal: segmentation fault" || how == "signal: aborted")
		}
	}
}
