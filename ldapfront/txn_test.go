package ldapfront

import (
	"fmt"
	"strings"
	"testing"

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
func TestLabTransactions(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)

	hub, err := ldap.DialURL(l.HubLDAPURL())
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close()
	if err := hub.Bind(lab.AdminDN, l.AdminPassword()); err != nil {
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
	onHub := func(dn string) bool {
		t.Helper()
		_, err := hub.Search(ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"cn"}, nil))
		if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
			return false
		}
		if err != nil {
			t.Fatalf("search %s on the hub: %v", dn, err)
		}
		return true
	}
	c := f.dial(t, lab.AdminDN, l.AdminPassword())
	startTxn := func() string {
		t.Helper()
		resp, err := c.Extended(ldap.NewExtendedRequest(OIDStartTxn, nil))
		if err != nil {
			t.Fatalf("start transaction through the proxy: %v", err)
		}
		if resp.Value == nil {
			t.Fatal("start transaction: no responseValue (transaction identifier) in the response")
		}
		// OpenLDAP 2.5 runs one transaction per connection and answers
		// with an empty identifier.
		return resp.Value.Data.String()
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
	addInTxn := func(id, cn string) string {
		t.Helper()
		a := addPerson(cn)
		a.Controls = []ldap.Control{txnSpecControl(id)}
		if err := c.Add(a); err != nil {
			t.Fatalf("add %s inside the transaction: %v", cn, err)
		}
		return a.DN
	}

	t.Run("commit", func(t *testing.T) {
		id := startTxn()
		dn1, dn2 := addInTxn(id, uniqueName("txn")), addInTxn(id, uniqueName("txn"))
		if onHub(dn1) || onHub(dn2) {
			t.Fatal("entries of an uncommitted transaction are visible on the hub")
		}
		if err := endTxn(true, id); err != nil {
			t.Fatalf("commit: %v", err)
		}
		if !onHub(dn1) || !onHub(dn2) {
			t.Fatal("committed entries are not on the hub")
		}
		// Read-your-writes: the same connection reads both at once.
		searchOne(t, c, dn1, "cn")
		searchOne(t, c, dn2, "cn")
	})
	t.Run("abort", func(t *testing.T) {
		id := startTxn()
		dn := addInTxn(id, uniqueName("txn-abort"))
		if err := endTxn(false, id); err != nil {
			t.Fatalf("abort: %v", err)
		}
		if onHub(dn) {
			t.Fatal("an aborted transaction's entry is on the hub")
		}
	})
	t.Run("ldapmodify -E txn=commit", func(t *testing.T) {
		cn1, cn2 := uniqueName("txn-tool"), uniqueName("txn-tool")
		ldif := fmt.Sprintf("dn: cn=%s,ou=people,%s\nobjectClass: person\ncn: %s\nsn: T\n\ndn: cn=%s,ou=people,%s\nobjectClass: person\ncn: %s\nsn: T\n",
			cn1, lab.BaseDN, cn1, cn2, lab.BaseDN, cn2)
		mustTool(t, ldif, "ldapmodify", "-a", "-x", "-H", f.url, "-D", lab.AdminDN, "-w", l.AdminPassword(), "-E", "txn=commit")
		for _, cn := range []string{cn1, cn2} {
			if !onHub("cn=" + cn + ",ou=people," + lab.BaseDN) {
				t.Fatalf("cn=%s not on the hub after ldapmodify -E txn=commit through the proxy", cn)
			}
		}
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
