package pgfront

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/spokeproxy/spokeproxy/lab"
)

func TestRenderSetConfigs(t *testing.T) {
	lit := func(s string) ConfigArg { return ConfigArg{Lit: s} }
	par := func(n int) ConfigArg { return ConfigArg{Param: n} }
	cases := []struct {
		name  string
		call  SetConfigCall
		bind  *pgproto3.Bind
		want  string
		local bool
		ok    bool
	}{
		{"literals", SetConfigCall{lit("a.b"), lit("it's"), lit("false")}, nil,
			"SELECT pg_catalog.set_config($spokeproxy$a.b$spokeproxy$, $spokeproxy$it's$spokeproxy$, false)", false, true},
		{"backslash", SetConfigCall{lit("a.b"), lit(`c:\x`), lit("on")}, nil,
			`SELECT pg_catalog.set_config($spokeproxy$a.b$spokeproxy$, $spokeproxy$c:\x$spokeproxy$, true)`, true, true},
		// Shift JIS 表 is 0x95 0x5C: a backslash escape would split it.
		{"client-encoding bytes and the tag itself", SetConfigCall{lit("a.b"), lit("\x95\x5c'$spokeproxy$x$spokeproxy"), lit("false")}, nil,
			"SELECT pg_catalog.set_config($spokeproxy$a.b$spokeproxy$, $spokeproxy1$\x95\x5c'$spokeproxy$x$spokeproxy$spokeproxy1$, false)", false, true},
		{"NUL", SetConfigCall{lit("a.b"), lit("x\x00y"), lit("false")}, nil, "", false, false},
		{"text params", SetConfigCall{par(1), par(2), par(3)},
			&pgproto3.Bind{Parameters: [][]byte{[]byte("app.tenant"), []byte("NULL"), []byte("t")}},
			"SELECT pg_catalog.set_config($spokeproxy$app.tenant$spokeproxy$, $spokeproxy$NULL$spokeproxy$, true)", true, true},
		{"binary boolean", SetConfigCall{lit("a.b"), par(1), par(2)},
			&pgproto3.Bind{ParameterFormatCodes: []int16{1}, Parameters: [][]byte{[]byte("v"), {0}}},
			"SELECT pg_catalog.set_config($spokeproxy$a.b$spokeproxy$, $spokeproxy$v$spokeproxy$, false)", false, true},
		{"per-parameter formats", SetConfigCall{lit("a.b"), par(1), par(2)},
			&pgproto3.Bind{ParameterFormatCodes: []int16{0, 1}, Parameters: [][]byte{[]byte("v"), {1}}},
			"SELECT pg_catalog.set_config($spokeproxy$a.b$spokeproxy$, $spokeproxy$v$spokeproxy$, true)", true, true},
		{"NULLs", SetConfigCall{lit("a.b"), ConfigArg{Null: true}, par(1)},
			&pgproto3.Bind{Parameters: [][]byte{nil}},
			"SELECT pg_catalog.set_config($spokeproxy$a.b$spokeproxy$, NULL, false)", false, true},
		{"missing parameter", SetConfigCall{lit("a.b"), par(3), lit("true")},
			&pgproto3.Bind{Parameters: [][]byte{[]byte("x")}}, "", false, false},
		{"parameter in a simple query", SetConfigCall{lit("a.b"), par(1), lit("true")}, nil, "", false, false},
		{"binary boolean of two bytes", SetConfigCall{lit("a.b"), lit("v"), par(1)},
			&pgproto3.Bind{ParameterFormatCodes: []int16{1}, Parameters: [][]byte{{0, 1}}}, "", false, false},
		{"not a boolean", SetConfigCall{lit("a.b"), lit("v"), lit("maybe")}, nil, "", false, false},
	}
	reps, _ := renderSetConfigs([]SetConfigCall{
		{lit("default_transaction_isolation"), lit("Serializable"), lit("false")},
		{lit("Default_Transaction_Read_Only"), par(1), lit("false")},
		{lit("default_transaction_read_only"), ConfigArg{Null: true}, lit("false")},
	}, &pgproto3.Bind{Parameters: [][]byte{[]byte("on")}})
	wantDefaults := []Statement{
		{Kind: StmtSession, Isolation: IsolationSerializable},
		{Kind: StmtSession, Access: AccessReadOnly},
		{Kind: StmtSession, ResetsAccess: true},
	}
	for i, want := range wantDefaults {
		if i >= len(reps) || !reflect.DeepEqual(reps[i].defaults, want) {
			t.Errorf("transaction defaults of call %d: %+v, want %+v", i, reps, want)
		}
	}
	for _, tc := range cases {
		reps, ok := renderSetConfigs([]SetConfigCall{tc.call}, tc.bind)
		if ok != tc.ok {
			t.Errorf("%s: ok = %v, want %v (%+v)", tc.name, ok, tc.ok, reps)
			continue
		}
		if ok && (len(reps) != 1 || reps[0].sql != tc.want || reps[0].local != tc.local) {
			t.Errorf("%s: %+v, want %q local %v", tc.name, reps, tc.want, tc.local)
		}
	}
}

// set_config() calls follow the session to the hub as SET does: a
// session-level one made by a read on the standby is there when a later
// write runs on the hub, with parameters in text or binary form; a
// transaction-local one (PostgREST's request.jwt.claims, a row-level
// security policy's tenant) is replayed on the hub when its transaction
// moves there at its first write, and ends with it; so is an extended
// SET LOCAL. A call whose value is an expression cannot be repeated and
// pins the session to the hub instead.
func TestLabPGSetConfigFollowsTheSession(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	f.waitHub(t, true)
	ctx := ctxT(t)
	// onHub writes a note whose body is the setting's value as the hub
	// sees it.
	onHub := func(c *pgx.Conn, setting string) string {
		t.Helper()
		var body string
		var standby bool
		if err := c.QueryRow(ctx, "INSERT INTO notes (account_id, body) VALUES (1, coalesce(current_setting($1, true), '<unset>')) RETURNING body, pg_is_in_recovery()", setting).Scan(&body, &standby); err != nil || standby {
			t.Fatalf("write reading %s: %v (on the standby: %v)", setting, err, standby)
		}
		return body
	}

	c := f.connect(t, nil)
	var got string
	if err := c.QueryRow(ctx, "SELECT set_config('app.tenant', $1, false)", "acme").Scan(&got); err != nil || got != "acme" {
		t.Fatalf("set_config through the proxy: %q %v", got, err)
	}
	if !standbyRead(t, c) {
		t.Fatal("the session is no longer reading locally after a repeatable set_config")
	}
	if v := onHub(c, "app.tenant"); v != "acme" {
		t.Errorf("session-level set_config with a text parameter: the hub sees app.tenant = %q, want acme", v)
	}
	if _, err := c.Exec(ctx, "SELECT set_config($1, $2, $3)", "app.flag", "x", false); err != nil {
		t.Fatal(err)
	}
	if v := onHub(c, "app.flag"); v != "x" {
		t.Errorf("set_config with a binary boolean parameter: the hub sees %q, want x", v)
	}
	simple := f.connect(t, func(cc *pgx.ConnConfig) { cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol })
	if _, err := simple.Exec(ctx, `SELECT set_config('app.name', 'o''brien \ co', false)`); err != nil {
		t.Fatal(err)
	}
	if v := onHub(simple, "app.name"); v != `o'brien \ co` {
		t.Errorf("simple-protocol set_config: the hub sees %q", v)
	}

	// PostgREST's pattern: claims set for the transaction, then a write.
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT set_config('request.jwt.claims', $1, true)", `{"sub":"alice"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Conn().PgConn().ExecParams(ctx, "SET LOCAL statement_timeout = 4321", nil, nil, nil, nil).Close(); err != nil {
		t.Fatal(err)
	}
	var standby bool
	if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standby); err != nil || !standby {
		t.Fatalf("the transaction's read before its write: standby %v, %v (want the standby)", standby, err)
	}
	var claims, timeout string
	if err := tx.QueryRow(ctx, "INSERT INTO notes (account_id, body) VALUES (1, current_setting('request.jwt.claims')) RETURNING body, current_setting('statement_timeout'), pg_is_in_recovery()").Scan(&claims, &timeout, &standby); err != nil {
		t.Fatalf("the transaction's write after set_config(..., true): %v", err)
	}
	if standby || claims != `{"sub":"alice"}` || timeout != "4321ms" {
		t.Errorf("the write of a transaction moved to the hub sees request.jwt.claims %q and statement_timeout %q (on the standby: %v); want what the transaction set", claims, timeout, standby)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if v := onHub(c, "request.jwt.claims"); v != "" && v != "<unset>" {
		t.Errorf("a transaction-local set_config outlived its transaction on the hub: %q", v)
	}

	// A default isolation set by set_config is followed as SET's is: a
	// SERIALIZABLE transaction, which a standby refuses, opens on the hub.
	if _, err := c.Exec(ctx, "SELECT set_config('default_transaction_isolation', $1, false)", "serializable"); err != nil {
		t.Fatal(err)
	}
	tx, err = c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var iso string
	if err := tx.QueryRow(ctx, "SELECT current_setting('transaction_isolation'), pg_is_in_recovery()").Scan(&iso, &standby); err != nil || standby || iso != "serializable" {
		t.Errorf("a transaction under a SERIALIZABLE default set by set_config: %q on the standby %v, %v; want serializable on the hub", iso, standby, err)
	}
	_ = tx.Rollback(ctx)
	if _, err := c.Exec(ctx, "SELECT set_config('default_transaction_isolation', 'read committed', false)"); err != nil {
		t.Fatal(err)
	}
	tx, err = c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standby); err != nil || !standby {
		t.Errorf("a read committed transaction after set_config put the default back: on the standby %v, %v", standby, err)
	}
	_ = tx.Rollback(ctx)

	// An expression cannot be repeated: the session moves to the hub.
	p := f.connect(t, nil)
	if _, err := p.Exec(ctx, "SELECT set_config('app.who', current_user, false)"); err != nil {
		t.Fatal(err)
	}
	if standbyRead(t, p) {
		t.Error("a session whose set_config could not be repeated still reads on the standby")
	}
	if v := onHub(p, "app.who"); v != lab.AppUser {
		t.Errorf("the hub sees app.who = %q, want %s", v, lab.AppUser)
	}
}

// Under a client encoding whose characters may hold the byte 0x5C (Shift
// JIS, Big5, GBK), a repeated set_config value arrives whole, and one
// made to break out of a backslash-escaped string runs nothing on the
// hub, even with backslash_quote on.
func TestLabPGSetConfigClientEncoding(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	f.waitHub(t, true)
	ctx := ctxT(t)
	cfg, err := pgconn.ParseConfig(f.dsn(lab.AppUser, lab.AppPassword))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["client_encoding"] = "SJIS"
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(context.Background())
	hubSees := func(name string) string {
		t.Helper()
		r := pc.ExecParams(ctx, "INSERT INTO notes (account_id, body) VALUES (1, coalesce(current_setting($1, true), '<unset>')) RETURNING body, pg_is_in_recovery()", [][]byte{[]byte(name)}, nil, nil, nil).Read()
		if r.Err != nil || string(r.Rows[0][1]) != "f" {
			t.Fatalf("write on the hub reading %s: %v", name, r.Err)
		}
		return string(r.Rows[0][0])
	}
	hubSees("app.warmup")  // the hub connection is attached: repeats go there
	const hyo = "\x95\x5c" // 表 in Shift JIS: its second byte is a backslash
	if _, err := pc.Exec(ctx, "SET backslash_quote = on").ReadAll(); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Exec(ctx, "SELECT set_config('app.x', '"+hyo+"n', false)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	if got := hubSees("app.x"); got != hyo+"n" {
		t.Errorf("the hub sees app.x = %q, want %q", got, hyo+"n")
	}
	evil := hyo + "', false); SELECT set_config($q$app.pwned$q$, $q$yes$q$, false); --"
	if r := pc.ExecParams(ctx, "SELECT set_config('app.y', $1, false)", [][]byte{[]byte(evil)}, nil, nil, nil).Read(); r.Err != nil {
		t.Fatal(r.Err)
	}
	if got := hubSees("app.pwned"); got != "<unset>" {
		t.Errorf("a set_config value ran SQL on the hub: app.pwned = %q", got)
	}
	if got := hubSees("app.y"); got != evil {
		t.Errorf("the hub sees app.y = %q, want the value as the client sent it", got)
	}
}

// A session-level set_config read while the hub link is blackholed is
// answered locally at once: its repeat waits for the hub's next request
// instead of a round trip on a dead link.
func TestLabPGSetConfigDuringBlackhole(t *testing.T) {
	l, f, ctx, c := sessionWithHub(t)
	if err := l.Blackhole(lab.LinkPG); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.ClearToxics(lab.LinkPG) })
	f.waitHub(t, false)
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	start := time.Now()
	var v string
	if err := c.QueryRow(qctx, "SELECT set_config('app.during', 'blackhole', false)").Scan(&v); err != nil {
		t.Fatalf("a local set_config read during a hub blackhole: %v after %s", err, time.Since(start).Round(time.Millisecond))
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("a local set_config read took %s during a hub blackhole", took.Round(time.Millisecond))
	}
}

// Repeats are kept to one per setting, including those queued for the
// hub: a session that sets its tenant on every read, writing seldom,
// sends the hub one repeat with its next write, not one per read. A
// repeat that fails on the other backend does not leave it in a failed
// transaction block.
func TestLabPGSetConfigRepeatsStayBounded(t *testing.T) {
	_, f, ctx, c := sessionWithHub(t)
	for i := range 300 {
		if _, err := c.Exec(ctx, "SELECT set_config('app.tenant', $1, false)", fmt.Sprintf("tenant-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	before := counterValue(t, f.m.Front.WANBytesToHub)
	var body string
	if err := c.QueryRow(ctx, "INSERT INTO notes (account_id, body) VALUES (1, current_setting('app.tenant')) RETURNING body").Scan(&body); err != nil {
		t.Fatal(err)
	}
	sent := counterValue(t, f.m.Front.WANBytesToHub) - before
	if body != "tenant-299" {
		t.Errorf("the hub sees app.tenant = %q, want the last value", body)
	}
	if sent > 2048 {
		t.Errorf("the write after 300 set_config reads sent %v bytes to the hub: the repeats piled up", sent)
	}
	t.Logf("the write after 300 set_config reads sent %v bytes to the hub", sent)

	// transaction_read_only cannot be turned off on a standby: the repeat
	// fails there, and the session's reads go on.
	if _, err := c.Exec(ctx, "SELECT set_config('transaction_read_only', 'off', false); INSERT INTO notes (account_id, body) VALUES (1, 'x')"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if !standbyRead(t, c) {
			t.Fatal("read after a repeat the standby refused not on the standby")
		}
	}
}

// sessionWithHub starts a lab and a front and returns a session that has
// written once, so its hub connection is attached.
func sessionWithHub(t *testing.T) (*lab.Lab, *front, context.Context, *pgx.Conn) {
	t.Helper()
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	f.waitHub(t, true)
	ctx := ctxT(t)
	c := f.connect(t, nil)
	mustExec(ctx, t, c, "INSERT INTO notes (account_id, body) VALUES (1, 'attach the hub')")
	return l, f, ctx, c
}
