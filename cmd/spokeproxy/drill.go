package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	toxiclient "github.com/Shopify/toxiproxy/v2/client"
	"github.com/go-ldap/ldap/v3"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/spokeproxy/spokeproxy/lab"
	"github.com/spokeproxy/spokeproxy/proxy"
)

// drillOptions say which site to drill and how.
type drillOptions struct {
	Admin      string // admin API base URL, http://host:port
	AdminToken string // bearer token for POST/DELETE /drill

	PGDSN   string // "" skips PostgreSQL
	PGTable string // table the drill writes its rows into (created if missing)

	LDAPURL      string // "" skips LDAP
	LDAPDN       string // bind DN; also the entry the drill modifies unless LDAPEntry is set
	LDAPPassword string
	LDAPEntry    string
	LDAPAttr     string // attribute the drill overwrites with a marker

	// WANAPI, when set, makes the hub unreachable by really disabling the
	// named toxiproxy links (WANLinkPG, WANLinkLDAP) instead of starting a
	// drill through the admin API.
	WANAPI      string
	WANLinkPG   string
	WANLinkLDAP string
	// WANBlackhole swallows the links' data silently (toxiproxy timeout
	// toxics: no RST, connects still succeed) instead of disabling them:
	// the harder case, found by probes rather than by the data path.
	WANBlackhole bool

	DrillFor     time.Duration // duration asked of the drill endpoint (it ends by itself)
	DetectBound  time.Duration // writes must be refused within this of the hub going away
	RecoverBound time.Duration // and accepted again within this of its return
	CatchUpBound time.Duration // the replica must show the last write within this
}

// drillStep is one line of the report.
type drillStep struct {
	Name    string  `json:"name"`
	OK      bool    `json:"ok"`
	Skipped bool    `json:"skipped,omitempty"`
	Seconds float64 `json:"seconds"`
	Detail  string  `json:"detail,omitempty"`
}

// drillReport is what `spokeproxy drill` prints (text or -json).
type drillReport struct {
	Passed  bool        `json:"passed"`
	Method  string      `json:"method"` // "drill endpoint" or "WAN cut"
	Steps   []drillStep `json:"steps"`
	Seconds float64     `json:"seconds"`
}

// Failed names the steps that did not pass.
func (r *drillReport) Failed() []string {
	var out []string
	for _, s := range r.Steps {
		if !s.OK {
			out = append(out, s.Name)
		}
	}
	return out
}

func cmdDrill(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("drill", stderr)
	var o drillOptions
	labPath := fs.String("lab", "", "the `file` lab.json of a running spokeproxy lab: every endpoint and identity comes from it")
	wan := fs.Bool("wan", false, "with -lab: cut the lab's WAN links through its toxiproxy API instead of using the drill endpoint")
	tokenFile := fs.String("admin-token-file", "", "file holding the admin bearer token (admin.token_file)")
	protocol := fs.String("protocol", "both", "pg, ldap or both")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	fs.StringVar(&o.Admin, "admin", "", "admin API URL, e.g. http://127.0.0.1:9187")
	fs.StringVar(&o.PGDSN, "pg", "", "PostgreSQL DSN through the proxy (an application role that may create -pg-table)")
	fs.StringVar(&o.PGTable, "pg-table", "spokeproxy_drill", "table the drill creates if missing and inserts its rows into")
	fs.StringVar(&o.LDAPURL, "ldap", "", "LDAP URL of the proxy, e.g. ldap://127.0.0.1:3389")
	fs.StringVar(&o.LDAPDN, "ldap-dn", "", "DN to bind as")
	// The password comes from a file only: a command-line argument is
	// visible to every user of the machine (ps, /proc/PID/cmdline).
	ldapPWFile := fs.String("ldap-password-file", "", "file holding the bind password")
	fs.StringVar(&o.LDAPEntry, "ldap-entry", "", "entry the drill modifies (default: the bind DN's own)")
	fs.StringVar(&o.LDAPAttr, "ldap-attr", "description", "attribute of that entry the drill overwrites with a marker")
	fs.StringVar(&o.WANAPI, "wan-api", "", "toxiproxy API URL: really cut the WAN links instead of using the drill endpoint")
	fs.StringVar(&o.WANLinkPG, "wan-link-pg", "", "toxiproxy link carrying PostgreSQL to the hub")
	fs.StringVar(&o.WANLinkLDAP, "wan-link-ldap", "", "toxiproxy link carrying LDAP to the hub")
	wanMode := fs.String("wan-mode", "cut", "with -wan or -wan-api: cut (disable the links: connections reset) or blackhole (drop their data silently)")
	fs.DurationVar(&o.DrillFor, "drill-for", 5*time.Minute, "duration asked of the drill endpoint; the drill is stopped at the end anyway")
	fs.DurationVar(&o.DetectBound, "detect", 2*time.Second, "writes must be refused within this after the hub becomes unreachable")
	fs.DurationVar(&o.RecoverBound, "recover", 5*time.Second, "writes must work again within this after the hub returns")
	fs.DurationVar(&o.CatchUpBound, "catch-up", 10*time.Second, "a new session must read the last write from the replica within this")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *labPath != "" {
		raw, err := os.ReadFile(*labPath)
		if err != nil {
			fmt.Fprintf(stderr, "spokeproxy drill: %v\n", err)
			return 2
		}
		var info lab.Info
		if err := json.Unmarshal(raw, &info); err != nil {
			fmt.Fprintf(stderr, "spokeproxy drill: %s: %v\n", *labPath, err)
			return 2
		}
		def := func(s *string, v string) {
			if *s == "" {
				*s = v
			}
		}
		def(&o.Admin, info.Admin)
		def(&o.PGDSN, info.PG.Proxy)
		def(&o.LDAPURL, info.LDAP.Proxy)
		def(&o.LDAPDN, info.LDAP.UserDN)
		def(&o.LDAPPassword, info.LDAP.UserPassword)
		def(&o.WANLinkPG, info.WAN.PGLink)
		def(&o.WANLinkLDAP, info.WAN.LDAPLink)
		if *wan {
			def(&o.WANAPI, info.WAN.API)
		}
	} else if *wan {
		fmt.Fprintln(stderr, "spokeproxy drill: -wan needs -lab; give -wan-api URL otherwise")
		return 2
	}
	if *tokenFile != "" {
		tok, err := proxy.ReadSecretFile(*tokenFile)
		if err != nil {
			fmt.Fprintf(stderr, "spokeproxy drill: -admin-token-file: %v\n", err)
			return 2
		}
		o.AdminToken = tok
	}
	if *ldapPWFile != "" {
		pw, err := proxy.ReadSecretFile(*ldapPWFile)
		if err != nil {
			fmt.Fprintf(stderr, "spokeproxy drill: -ldap-password-file: %v\n", err)
			return 2
		}
		o.LDAPPassword = pw
	}
	switch *wanMode {
	case "cut":
	case "blackhole":
		o.WANBlackhole = true
	default:
		fmt.Fprintf(stderr, "spokeproxy drill: -wan-mode %q: want cut or blackhole\n", *wanMode)
		return 2
	}
	switch *protocol {
	case "both":
	case "pg":
		o.LDAPURL = ""
	case "ldap":
		o.PGDSN = ""
	default:
		fmt.Fprintf(stderr, "spokeproxy drill: -protocol %q: want pg, ldap or both\n", *protocol)
		return 2
	}
	var problems []string
	if o.Admin == "" {
		problems = append(problems, "-admin URL (or -lab) is required: metrics are part of the drill")
	}
	if o.PGDSN == "" && o.LDAPURL == "" {
		problems = append(problems, "nothing to drill: give -pg DSN and/or -ldap URL (or -lab)")
	}
	if o.LDAPURL != "" && o.LDAPDN == "" {
		problems = append(problems, "-ldap-dn is required with -ldap")
	}
	if o.WANAPI != "" && ((o.PGDSN != "" && o.WANLinkPG == "") || (o.LDAPURL != "" && o.WANLinkLDAP == "")) {
		problems = append(problems, "-wan-api needs -wan-link-pg and/or -wan-link-ldap for each protocol drilled")
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(stderr, "spokeproxy drill:", p)
		}
		return 2
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep := runDrill(ctx, o)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		printDrillReport(stdout, rep)
	}
	if !rep.Passed {
		if *asJSON {
			fmt.Fprintf(stderr, "spokeproxy drill: FAILED: %s\n", strings.Join(rep.Failed(), "; "))
		}
		return 1
	}
	return 0
}

func printDrillReport(w io.Writer, rep drillReport) {
	fmt.Fprintf(w, "spokeproxy drill (hub made unreachable by %s)\n", rep.Method)
	for _, s := range rep.Steps {
		verdict := "PASS"
		switch {
		case s.Skipped:
			verdict = "SKIP"
		case !s.OK:
			verdict = "FAIL"
		}
		fmt.Fprintf(w, "  %s  %-44s %9s", verdict, s.Name, fmtSeconds(s.Seconds))
		if s.Detail != "" {
			fmt.Fprintf(w, "  %s", s.Detail)
		}
		fmt.Fprintln(w)
	}
	if rep.Passed {
		fmt.Fprintf(w, "PASS: %d steps in %s\n", len(rep.Steps), fmtSeconds(rep.Seconds))
		return
	}
	failed := rep.Failed()
	fmt.Fprintf(w, "FAIL: %d of %d steps did not pass: %s\n", len(failed), len(rep.Steps), strings.Join(failed, "; "))
}

func fmtSeconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(100 * time.Microsecond).String()
}

// drillRun is one drill in progress.
type drillRun struct {
	o      drillOptions
	http   *http.Client
	rep    *drillReport
	protos []string // "pg", "ldap": what is drilled

	pg       *pgx.Conn
	pgLastID int64
	ld       *ldap.Conn
	ldMarker string
	refused  map[string]float64 // writes_refused_total before the outage
}

// runDrill runs the scripted drill and returns its report. It always tries
// to restore the hub (stop the drill, re-enable the links), whatever failed
// before.
func runDrill(ctx context.Context, o drillOptions) drillReport {
	start := time.Now()
	rep := &drillReport{Method: "drill endpoint"}
	if o.WANAPI != "" {
		rep.Method = "WAN cut"
		if o.WANBlackhole {
			rep.Method = "WAN blackhole"
		}
	}
	d := &drillRun{o: o, http: &http.Client{Timeout: 10 * time.Second}, rep: rep, refused: map[string]float64{}}
	if o.PGDSN != "" {
		d.protos = append(d.protos, "pg")
	}
	if o.LDAPURL != "" {
		d.protos = append(d.protos, "ldap")
	}
	defer d.close()

	// Baseline.
	for _, p := range d.protos {
		switch p {
		case "pg":
			d.step("pg connect and read", func() (string, error) { return d.pgConnectAndRead(ctx) })
			d.step("pg write", func() (string, error) { return d.pgWrite(ctx) })
			d.step("pg read-your-write", func() (string, error) { return d.pgReadOwnWrite(ctx) })
		case "ldap":
			d.step("ldap bind and read", func() (string, error) { return d.ldapConnectAndRead() })
			d.step("ldap write", func() (string, error) { return d.ldapWrite() })
			d.step("ldap read-your-write", func() (string, error) { return d.ldapReadOwnWrite() })
		}
	}
	d.step("metrics: hub up before the outage", func() (string, error) {
		m, err := d.scrape(ctx)
		if err != nil {
			return "", err
		}
		var out []string
		for _, p := range d.protos {
			if v := m.get("spokeproxy_hub_up", p); v != 1 {
				return "", fmt.Errorf("spokeproxy_hub_up{protocol=%q} = %v, want 1: the hub must be up before the drill", p, v)
			}
			d.refused[p] = m.get("spokeproxy_writes_refused_total", p)
			out = append(out, fmt.Sprintf("%s refused so far %v", p, d.refused[p]))
		}
		return strings.Join(out, ", "), nil
	})

	// Outage.
	cutAt := time.Now()
	cutOK := d.step("hub made unreachable ("+rep.Method+")", func() (string, error) { return d.cut(ctx) })
	restore := func() {
		d.step("hub restored", func() (string, error) { return d.restore(ctx) })
	}
	if !cutOK {
		for _, p := range d.protos {
			d.skip(p+" writes refused", "the hub was not made unreachable")
		}
		restore()
	} else {
		// Both protocols are watched at once, so each one's detection time
		// is measured from the cut, not from the end of the other's check.
		refused := map[string]chan drillStep{}
		for _, p := range d.protos {
			ch := make(chan drillStep, 1)
			refused[p] = ch
			go func() {
				if p == "pg" {
					ch <- timed("pg writes refused with 25006", func() (string, error) { return d.pgRefused(ctx, cutAt) })
				} else {
					ch <- timed("ldap writes refused with 52", func() (string, error) { return d.ldapRefused(cutAt) })
				}
			}()
		}
		for _, p := range d.protos {
			d.rep.Steps = append(d.rep.Steps, <-refused[p])
			if p == "pg" {
				d.step("pg reads go on", func() (string, error) { return d.pgRead(ctx) })
			} else {
				d.step("ldap reads go on", func() (string, error) { return d.ldapRead() })
			}
		}
		d.step("metrics: hub down, writes refused", func() (string, error) {
			m, err := d.scrape(ctx)
			if err != nil {
				return "", err
			}
			var out []string
			for _, p := range d.protos {
				if v := m.get("spokeproxy_hub_up", p); v != 0 {
					return "", fmt.Errorf("spokeproxy_hub_up{protocol=%q} = %v during the outage, want 0", p, v)
				}
				now := m.get("spokeproxy_writes_refused_total", p)
				if now <= d.refused[p] {
					return "", fmt.Errorf("spokeproxy_writes_refused_total{protocol=%q} = %v, did not increase from %v", p, now, d.refused[p])
				}
				if o.WANAPI == "" {
					if v := m.get("spokeproxy_drill_active", p); v != 1 {
						return "", fmt.Errorf("spokeproxy_drill_active{protocol=%q} = %v during the drill, want 1", p, v)
					}
				}
				out = append(out, fmt.Sprintf("%s refused +%v", p, now-d.refused[p]))
			}
			return strings.Join(out, ", "), nil
		})
		restore()
	}
	restoredAt := time.Now()

	// Recovery.
	for _, p := range d.protos {
		switch p {
		case "pg":
			d.step("pg writes work again", func() (string, error) { return d.pgRecovered(ctx, restoredAt) })
			d.step("pg read-your-write after the outage", func() (string, error) { return d.pgReadOwnWrite(ctx) })
		case "ldap":
			d.step("ldap writes work again", func() (string, error) { return d.ldapRecovered(restoredAt) })
			d.step("ldap read-your-write after the outage", func() (string, error) { return d.ldapReadOwnWrite() })
		}
	}
	d.step("metrics: hub up again", func() (string, error) {
		m, err := d.scrape(ctx)
		if err != nil {
			return "", err
		}
		for _, p := range d.protos {
			if v := m.get("spokeproxy_hub_up", p); v != 1 {
				return "", fmt.Errorf("spokeproxy_hub_up{protocol=%q} = %v after the restore, want 1", p, v)
			}
			if v := m.get("spokeproxy_drill_active", p); v != 0 {
				return "", fmt.Errorf("spokeproxy_drill_active{protocol=%q} = %v after the restore, want 0", p, v)
			}
		}
		return "", nil
	})
	for _, p := range d.protos {
		switch p {
		case "pg":
			d.step("pg replica caught up", func() (string, error) { return d.pgCaughtUp(ctx) })
		case "ldap":
			d.step("ldap replica caught up", func() (string, error) { return d.ldapCaughtUp() })
		}
	}

	rep.Passed = len(rep.Failed()) == 0
	rep.Seconds = time.Since(start).Seconds()
	return *rep
}

// step runs fn as a named step, timing it; it returns whether it passed.
func (d *drillRun) step(name string, fn func() (string, error)) bool {
	s := timed(name, fn)
	d.rep.Steps = append(d.rep.Steps, s)
	return s.OK
}

// timed runs fn and makes its report line.
func timed(name string, fn func() (string, error)) drillStep {
	start := time.Now()
	detail, err := fn()
	s := drillStep{Name: name, OK: err == nil, Seconds: time.Since(start).Seconds(), Detail: detail}
	if err != nil {
		s.Detail = err.Error()
	}
	return s
}

func (d *drillRun) skip(name, why string) {
	d.rep.Steps = append(d.rep.Steps, drillStep{Name: name, Skipped: true, Detail: why})
}

func (d *drillRun) close() {
	if d.pg != nil {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		d.pg.Close(cctx)
		cancel()
	}
	if d.ld != nil {
		d.ld.Close()
	}
}

// --- making the hub unreachable and restoring it

func (d *drillRun) cut(ctx context.Context) (string, error) {
	if d.o.WANAPI != "" {
		return d.setLinks(false)
	}
	protocol := "both"
	if len(d.protos) == 1 {
		protocol = d.protos[0]
	}
	body, _ := json.Marshal(map[string]string{"protocol": protocol, "duration": d.o.DrillFor.String()})
	if err := d.admin(ctx, "POST", "/drill", body); err != nil {
		return "", err
	}
	return fmt.Sprintf("drill started for %s (%s at most)", protocol, d.o.DrillFor), nil
}

func (d *drillRun) restore(ctx context.Context) (string, error) {
	if d.o.WANAPI != "" {
		return d.setLinks(true)
	}
	protocol := "both"
	if len(d.protos) == 1 {
		protocol = d.protos[0]
	}
	body, _ := json.Marshal(map[string]string{"protocol": protocol})
	return "drill stopped", d.admin(ctx, "DELETE", "/drill", body)
}

// setLinks enables or disables the toxiproxy links of the drilled
// protocols. Disabling a link that does not exist is an error: the drill
// must know it really cut something.
func (d *drillRun) setLinks(enabled bool) (string, error) {
	c := toxiclient.NewClient(d.o.WANAPI)
	var names []string
	for _, p := range d.protos {
		name := d.o.WANLinkPG
		if p == "ldap" {
			name = d.o.WANLinkLDAP
		}
		px, err := c.Proxy(name)
		if err != nil {
			return "", fmt.Errorf("WAN link %q at %s: %w", name, d.o.WANAPI, err)
		}
		if err := d.setLink(px, enabled); err != nil {
			return "", fmt.Errorf("WAN link %q: %w", name, err)
		}
		names = append(names, name)
	}
	verb := "cut"
	switch {
	case enabled:
		verb = "restored"
	case d.o.WANBlackhole:
		verb = "blackholed"
	}
	return verb + " " + strings.Join(names, ", "), nil
}

// blackholeToxic names the toxics a blackhole drill adds, per stream.
const blackholeToxic = "spokeproxy_drill_blackhole_"

func (d *drillRun) setLink(px *toxiclient.Proxy, enabled bool) error {
	if !d.o.WANBlackhole {
		px.Enabled = enabled
		return px.Save()
	}
	for _, stream := range []string{"upstream", "downstream"} {
		var err error
		if enabled {
			err = px.RemoveToxic(blackholeToxic + stream)
		} else {
			_, err = px.AddToxic(blackholeToxic+stream, "timeout", stream, 1, toxiclient.Attributes{"timeout": 0})
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (d *drillRun) admin(ctx context.Context, method, path string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(d.o.Admin, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if d.o.AdminToken != "" {
		req.Header.Set("Authorization", "Bearer "+d.o.AdminToken)
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return nil
}

// --- metrics

type scraped map[string]*dto.MetricFamily

func (d *drillRun) scrape(ctx context.Context) (scraped, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(d.o.Admin, "/")+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET /metrics: %w", err)
	}
	return mfs, nil
}

// get is the value of name's series with protocol=p; -1 when missing.
func (s scraped) get(name, p string) float64 {
	mf := s[name]
	if mf == nil {
		return -1
	}
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "protocol" && l.GetValue() == p {
				switch {
				case m.GetGauge() != nil:
					return m.GetGauge().GetValue()
				case m.GetCounter() != nil:
					return m.GetCounter().GetValue()
				case m.GetUntyped() != nil:
					return m.GetUntyped().GetValue()
				}
			}
		}
	}
	return -1
}

// --- PostgreSQL

func (d *drillRun) pgConnect(ctx context.Context) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return pgx.Connect(cctx, d.o.PGDSN)
}

func (d *drillRun) pgConnectAndRead(ctx context.Context) (string, error) {
	c, err := d.pgConnect(ctx)
	if err != nil {
		return "", err
	}
	d.pg = c
	return d.pgRead(ctx)
}

func (d *drillRun) pgRead(ctx context.Context) (string, error) {
	if d.pg == nil {
		return "", errors.New("no PostgreSQL session")
	}
	var db string
	var standby bool
	if err := d.pg.QueryRow(ctx, "SELECT current_database(), pg_is_in_recovery()").Scan(&db, &standby); err != nil {
		return "", err
	}
	if !standby {
		return "", fmt.Errorf("the read was answered by a primary, not by the local standby")
	}
	return "answered by the local standby", nil
}

func (d *drillRun) pgTable() string { return pgx.Identifier{d.o.PGTable}.Sanitize() }

func (d *drillRun) pgInsert(ctx context.Context) (int64, error) {
	var id int64
	err := d.pg.QueryRow(ctx, "INSERT INTO "+d.pgTable()+" (note) VALUES ($1) RETURNING id",
		"spokeproxy drill "+time.Now().UTC().Format(time.RFC3339Nano)).Scan(&id)
	return id, err
}

func (d *drillRun) pgWrite(ctx context.Context) (string, error) {
	if d.pg == nil {
		return "", errors.New("no PostgreSQL session")
	}
	if _, err := d.pg.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+d.pgTable()+
		" (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), note text)"); err != nil {
		return "", fmt.Errorf("create %s: %w", d.o.PGTable, err)
	}
	id, err := d.pgInsert(ctx)
	if err != nil {
		return "", err
	}
	d.pgLastID = id
	return fmt.Sprintf("row %d into %s", id, d.o.PGTable), nil
}

func (d *drillRun) pgReadOwnWrite(ctx context.Context) (string, error) {
	if d.pg == nil || d.pgLastID == 0 {
		return "", errors.New("no write to read back")
	}
	var n int
	if err := d.pg.QueryRow(ctx, "SELECT count(*) FROM "+d.pgTable()+" WHERE id = $1", d.pgLastID).Scan(&n); err != nil {
		return "", err
	}
	if n != 1 {
		return "", fmt.Errorf("row %d not visible to the session that wrote it", d.pgLastID)
	}
	return fmt.Sprintf("row %d visible", d.pgLastID), nil
}

// pgRefused writes until the proxy refuses with 25006; other errors (a
// hub connection cut under a statement) are retried until the bound.
func (d *drillRun) pgRefused(ctx context.Context, since time.Time) (string, error) {
	if d.pg == nil {
		return "", errors.New("no PostgreSQL session")
	}
	var last string
	for {
		actx, cancel := context.WithDeadline(ctx, since.Add(d.o.DetectBound+100*time.Millisecond))
		_, err := d.pgInsert(actx)
		cancel()
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr) && pgErr.Code == "25006":
			return fmt.Sprintf("refused %s after the hub went away: %s", time.Since(since).Round(time.Millisecond), pgErr.Message), nil
		case err == nil:
			last = "a write was accepted"
		default:
			last = err.Error()
			if d.pg.IsClosed() {
				if c, cerr := d.pgConnect(ctx); cerr == nil {
					d.pg = c
				}
			}
		}
		if time.Since(since) > d.o.DetectBound {
			return "", fmt.Errorf("writes not refused with 25006 within %s of the hub going away (last: %s)", d.o.DetectBound, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *drillRun) pgRecovered(ctx context.Context, since time.Time) (string, error) {
	var last error
	for {
		if d.pg == nil || d.pg.IsClosed() {
			if c, err := d.pgConnect(ctx); err == nil {
				d.pg = c
			} else {
				last = err
			}
		}
		if d.pg != nil && !d.pg.IsClosed() {
			id, err := d.pgInsert(ctx)
			if err == nil {
				d.pgLastID = id
				return fmt.Sprintf("accepted %s after the restore", time.Since(since).Round(time.Millisecond)), nil
			}
			last = err
		}
		if time.Since(since) > d.o.RecoverBound {
			return "", fmt.Errorf("writes still failing %s after the restore: %v", d.o.RecoverBound, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pgCaughtUp reads the last write from a new session, which has no
// read-your-writes position and so reads the local replica as it is.
func (d *drillRun) pgCaughtUp(ctx context.Context) (string, error) {
	if d.pgLastID == 0 {
		return "", errors.New("no write to look for")
	}
	c, err := d.pgConnect(ctx)
	if err != nil {
		return "", err
	}
	defer c.Close(context.Background())
	start := time.Now()
	for {
		var n int
		err := c.QueryRow(ctx, "SELECT count(*) FROM "+d.pgTable()+" WHERE id = $1", d.pgLastID).Scan(&n)
		if err == nil && n == 1 {
			return fmt.Sprintf("a new session reads row %d from the replica after %s", d.pgLastID, time.Since(start).Round(time.Millisecond)), nil
		}
		if time.Since(start) > d.o.CatchUpBound {
			return "", fmt.Errorf("row %d not on the replica after %s (err %v)", d.pgLastID, d.o.CatchUpBound, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// --- LDAP

func (d *drillRun) ldapEntry() string {
	if d.o.LDAPEntry != "" {
		return d.o.LDAPEntry
	}
	return d.o.LDAPDN
}

func (d *drillRun) ldapDial() (*ldap.Conn, error) {
	c, err := ldap.DialURL(d.o.LDAPURL)
	if err != nil {
		return nil, err
	}
	c.SetTimeout(10 * time.Second)
	if err := c.Bind(d.o.LDAPDN, d.o.LDAPPassword); err != nil {
		c.Close()
		return nil, fmt.Errorf("bind as %s: %w", d.o.LDAPDN, err)
	}
	return c, nil
}

func (d *drillRun) ldapConnectAndRead() (string, error) {
	c, err := d.ldapDial()
	if err != nil {
		return "", err
	}
	d.ld = c
	return d.ldapRead()
}

func (d *drillRun) ldapSearch(c *ldap.Conn) (*ldap.Entry, error) {
	res, err := c.Search(ldap.NewSearchRequest(d.ldapEntry(), ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, 10, false,
		"(objectClass=*)", []string{d.o.LDAPAttr}, nil))
	if err != nil {
		return nil, err
	}
	if len(res.Entries) != 1 {
		return nil, fmt.Errorf("%d entries for %s", len(res.Entries), d.ldapEntry())
	}
	return res.Entries[0], nil
}

func (d *drillRun) ldapRead() (string, error) {
	if d.ld == nil {
		return "", errors.New("no LDAP session")
	}
	if _, err := d.ldapSearch(d.ld); err != nil {
		return "", err
	}
	return "read " + d.ldapEntry(), nil
}

func (d *drillRun) ldapModify() (string, error) {
	marker := "spokeproxy drill " + time.Now().UTC().Format(time.RFC3339Nano)
	m := ldap.NewModifyRequest(d.ldapEntry(), nil)
	m.Replace(d.o.LDAPAttr, []string{marker})
	return marker, d.ld.Modify(m)
}

func (d *drillRun) ldapWrite() (string, error) {
	if d.ld == nil {
		return "", errors.New("no LDAP session")
	}
	marker, err := d.ldapModify()
	if err != nil {
		return "", err
	}
	d.ldMarker = marker
	return "modified " + d.o.LDAPAttr + " of " + d.ldapEntry(), nil
}

func (d *drillRun) ldapReadOwnWrite() (string, error) {
	if d.ld == nil || d.ldMarker == "" {
		return "", errors.New("no write to read back")
	}
	e, err := d.ldapSearch(d.ld)
	if err != nil {
		return "", err
	}
	if got := e.GetAttributeValue(d.o.LDAPAttr); got != d.ldMarker {
		return "", fmt.Errorf("%s = %q, want the session's own write %q", d.o.LDAPAttr, got, d.ldMarker)
	}
	return "own write visible", nil
}

func (d *drillRun) ldapRefused(since time.Time) (string, error) {
	if d.ld == nil {
		return "", errors.New("no LDAP session")
	}
	var last string
	d.ld.SetTimeout(d.o.DetectBound)
	defer func() { d.ld.SetTimeout(10 * time.Second) }()
	for {
		_, err := d.ldapModify()
		switch {
		case ldap.IsErrorWithCode(err, ldap.LDAPResultUnavailable):
			return fmt.Sprintf("refused %s after the hub went away: %v", time.Since(since).Round(time.Millisecond), err), nil
		case err == nil:
			last = "a write was accepted"
		default:
			last = err.Error()
			if d.ld.IsClosing() {
				if c, cerr := d.ldapDial(); cerr == nil {
					d.ld.Close()
					d.ld = c
				}
			}
		}
		if time.Since(since) > d.o.DetectBound {
			return "", fmt.Errorf("writes not refused with 52 within %s of the hub going away (last: %s)", d.o.DetectBound, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *drillRun) ldapRecovered(since time.Time) (string, error) {
	var last error
	for {
		if d.ld == nil || d.ld.IsClosing() {
			if c, err := d.ldapDial(); err == nil {
				if d.ld != nil {
					d.ld.Close()
				}
				d.ld = c
			} else {
				last = err
			}
		}
		if d.ld != nil && !d.ld.IsClosing() {
			marker, err := d.ldapModify()
			if err == nil {
				d.ldMarker = marker
				return fmt.Sprintf("accepted %s after the restore", time.Since(since).Round(time.Millisecond)), nil
			}
			last = err
		}
		if time.Since(since) > d.o.RecoverBound {
			return "", fmt.Errorf("writes still failing %s after the restore: %v", d.o.RecoverBound, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ldapCaughtUp reads the last write on a new connection, which has no
// read-your-writes position and so reads the local replica as it is.
func (d *drillRun) ldapCaughtUp() (string, error) {
	if d.ldMarker == "" {
		return "", errors.New("no write to look for")
	}
	c, err := d.ldapDial()
	if err != nil {
		return "", err
	}
	defer c.Close()
	start := time.Now()
	for {
		e, err := d.ldapSearch(c)
		if err == nil && e.GetAttributeValue(d.o.LDAPAttr) == d.ldMarker {
			return fmt.Sprintf("a new session reads the last write from the replica after %s", time.Since(start).Round(time.Millisecond)), nil
		}
		if time.Since(start) > d.o.CatchUpBound {
			return "", fmt.Errorf("the last write is not on the replica after %s (err %v)", d.o.CatchUpBound, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
