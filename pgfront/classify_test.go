package pgfront

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	c := NewClassifier([]string{"app.bump_counter", "Audit_Log"}, 100, 1<<20)
	cases := []struct {
		sql  string
		want StmtKind
	}{
		// Reads.
		{"SELECT 1", StmtRead},
		{"select * from t where id = $1", StmtRead},
		{"  \n\tSELECT 1;", StmtRead},
		{"VALUES (1), (2)", StmtRead},
		{"TABLE accounts", StmtRead},
		{"SHOW transaction_isolation", StmtRead},
		{"(SELECT 1) UNION (SELECT 2)", StmtRead},
		{"WITH x AS (SELECT 1) SELECT * FROM x", StmtRead},
		{"FETCH 10 FROM c", StmtRead},
		{"SELECT pg_backend_pid()", StmtRead},
		{"SELECT current_setting('x')", StmtRead},
		{"SELECT substring(s from 1 for 2) FROM t", StmtRead},
		{"SELECT 'for update' FROM t", StmtRead},
		{"SELECT \"update\" FROM t", StmtRead},
		{"SELECT $$ insert into t values (1) $$", StmtRead},
		{"SELECT $tag$ a $$ nextval( $$ b $tag$", StmtRead},
		{"SELECT E'it\\'s FOR UPDATE'", StmtRead},
		{"SELECT 'it''s; insert into t'", StmtRead},
		{"SELECT 1 /* outer /* nested */ still comment; DELETE FROM t */", StmtRead},
		{"SELECT 1 -- ; DELETE FROM t", StmtRead},
		{"SELECT \"nextval\"", StmtRead},
		{"SELECT \"NEXTVAL\"(1)", StmtRead},
		{"SELECT 1.5e-3, .5, 0x1F, 1_000", StmtRead},
		{"SELECT a$b FROM t", StmtRead},
		{"SELECT U&'d\\0061t' , U&\"d\\0061t\" FROM t", StmtRead},
		{"SELECT B'1010', X'FF', N'x'", StmtRead},
		{"EXPLAIN SELECT * FROM t", StmtRead},
		{"EXPLAIN INSERT INTO t VALUES (1)", StmtRead},
		{"EXPLAIN (ANALYZE false) DELETE FROM t", StmtRead},
		{"EXPLAIN ANALYZE SELECT * FROM t", StmtRead},
		{"EXPLAIN (ANALYZE, BUFFERS) SELECT 1", StmtRead},
		{"DECLARE c CURSOR FOR SELECT * FROM t", StmtRead},
		{"DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1", StmtRead},
		{"SELECT 1; SELECT 2", StmtRead},
		{"SELECT 1;;", StmtRead},

		// Writes.
		{"INSERT INTO t VALUES (1)", StmtWrite},
		{"update t set a = 1", StmtWrite},
		{"DELETE FROM t", StmtWrite},
		{"MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", StmtWrite},
		{"CREATE TABLE t (a int)", StmtWrite},
		{"CREATE UNLOGGED TABLE t (a int)", StmtWrite},
		{"DROP TABLE t", StmtWrite},
		{"ALTER TABLE t ADD b int", StmtWrite},
		{"TRUNCATE t", StmtWrite},
		{"GRANT SELECT ON t TO u", StmtWrite},
		{"VACUUM t", StmtWrite},
		{"ANALYZE t", StmtWrite},
		{"CALL p()", StmtWrite},
		{"DO $$ BEGIN END $$", StmtWrite},
		{"LOCK TABLE t", StmtWrite},
		{"NOTIFY ch", StmtWrite},
		{"REFRESH MATERIALIZED VIEW v", StmtWrite},
		{"COMMIT PREPARED 'x'", StmtWrite},
		{"ROLLBACK PREPARED 'x'", StmtWrite},
		{"PREPARE TRANSACTION 'x'", StmtWrite},
		{"EXECUTE q(1)", StmtWrite},
		{"DEALLOCATE q", StmtWrite},
		{"frobnicate the database", StmtWrite},
		{"42", StmtWrite},
		{"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", StmtWrite},
		{"WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", StmtWrite},
		{"WITH x AS (SELECT 1) UPDATE t SET a = 1", StmtWrite},
		{"SELECT * FROM t FOR UPDATE", StmtWrite},
		{"SELECT * FROM t FOR SHARE", StmtWrite},
		{"SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED", StmtWrite},
		{"SELECT * FROM t FOR KEY SHARE", StmtWrite},
		{"SELECT * FROM (SELECT * FROM t FOR UPDATE) s", StmtWrite},
		{"SELECT * INTO t2 FROM t", StmtWrite},
		{"EXPLAIN ANALYZE INSERT INTO t VALUES (1)", StmtWrite},
		{"EXPLAIN ANALYSE VERBOSE DELETE FROM t", StmtWrite},
		{"EXPLAIN (ANALYZE true, VERBOSE) UPDATE t SET a = 1", StmtWrite},
		{"EXPLAIN (ANALYZE) SELECT nextval('s')", StmtWrite},
		{"SELECT nextval('s')", StmtWrite},
		{"SELECT NEXTVAL('s')", StmtWrite},
		{"SELECT pg_catalog.setval('s', 1)", StmtWrite},
		{"SELECT currval('s')", StmtWrite},
		{"SELECT txid_current()", StmtWrite},
		{"SELECT pg_advisory_xact_lock(1)", StmtWrite},
		{"SELECT pg_advisory_unlock(1)", StmtWrite},
		{"SELECT app.bump_counter(1)", StmtWrite},
		{"SELECT audit_log('x')", StmtWrite},
		{"SELECT 1; INSERT INTO t VALUES (1)", StmtWrite},
		{"BEGIN; INSERT INTO t VALUES (1); COMMIT", StmtWrite},
		{"DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", StmtWrite},
		{"COPY t FROM '/tmp/x'", StmtWrite},
		{"COPY t TO '/tmp/x'", StmtWrite},
		{"COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT", StmtWrite},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 1 END; END", StmtWrite},
		{"SELECT 'unterminated", StmtRead},
		{"SELECT $$unterminated", StmtRead},
		{"SELECT 1 /* unterminated", StmtRead},

		// COPY.
		{"COPY t FROM STDIN", StmtCopyIn},
		{"COPY t (a, b) FROM stdin WITH (FORMAT csv)", StmtCopyIn},
		{"COPY t TO STDOUT", StmtCopyOut},
		{"COPY t (a) TO STDOUT (FORMAT binary)", StmtCopyOut},
		{"COPY (SELECT * FROM t WHERE a > 1) TO STDOUT", StmtCopyOut},

		// Session pinning.
		{"LISTEN ch", StmtPin},
		{"CREATE TEMP TABLE x (a int)", StmtPin},
		{"CREATE TEMPORARY TABLE x AS SELECT 1", StmtPin},
		{"CREATE LOCAL TEMP TABLE x (a int)", StmtPin},
		{"CREATE GLOBAL TEMPORARY TABLE x (a int)", StmtPin},
		{"CREATE OR REPLACE TEMP VIEW v AS SELECT 1", StmtPin},
		{"SELECT * INTO TEMP x FROM t", StmtPin},
		{"SELECT pg_advisory_lock(1)", StmtPin},
		{"SELECT pg_try_advisory_lock_shared(1)", StmtPin},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", StmtPin},
		{"PREPARE q AS SELECT 1", StmtPin},
		{"SELECT 1; LISTEN ch", StmtPin},

		// Session state and transaction control.
		{"SET search_path = app", StmtSession},
		{"SET SESSION statement_timeout TO 1000", StmtSession},
		{"RESET ALL", StmtSession},
		{"DISCARD ALL", StmtSession},
		{"UNLISTEN *", StmtSession},
		{"DEALLOCATE ALL", StmtSession},
		{"DEALLOCATE PREPARE ALL", StmtSession},
		{"SET LOCAL statement_timeout = 0", StmtSetLocal},
		{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", StmtSetLocal},
		{"SAVEPOINT a", StmtSavepoint},
		{"RELEASE SAVEPOINT a", StmtSavepoint},
		{"ROLLBACK TO SAVEPOINT a", StmtSavepoint},
		{"ROLLBACK TRANSACTION TO a", StmtSavepoint},
		{"BEGIN", StmtBegin},
		{"START TRANSACTION", StmtBegin},
		{"COMMIT", StmtCommit},
		{"END", StmtCommit},
		{"ROLLBACK", StmtRollback},
		{"ABORT", StmtRollback},

		// Empty.
		{"", StmtEmpty},
		{"  ;  ; -- only a comment", StmtEmpty},
		{"/* c */", StmtEmpty},
	}
	for _, tc := range cases {
		got := c.Classify(tc.sql).Strongest()
		if got != tc.want {
			t.Errorf("Classify(%q) = %v, want %v", tc.sql, got, tc.want)
		}
	}
}

// set_config() calls in a read are kept for the front to repeat on the
// session's other backend; one it cannot repeat from the text pins the
// session, and one in a write needs nothing (it runs on the hub).
func TestClassifySetConfig(t *testing.T) {
	c := NewClassifier(nil, 0, 0)
	lit := func(s string) ConfigArg { return ConfigArg{Lit: s} }
	par := func(n int) ConfigArg { return ConfigArg{Param: n} }
	cases := []struct {
		sql  string
		want Statement
	}{
		{"SELECT set_config('search_path', 'app, public', false)",
			Statement{Kind: StmtRead, SetConfigs: []SetConfigCall{{Name: lit("search_path"), Value: lit("app, public"), Local: lit("false")}}}},
		{"select pg_catalog.set_config('app.user', 'o''brien', TRUE), 1",
			Statement{Kind: StmtRead, SetConfigs: []SetConfigCall{{Name: lit("app.user"), Value: lit("o'brien"), Local: lit("true")}}}},
		{"SELECT set_config($1, $2::text, $3::boolean), set_config('a.b', NULL, 'on')",
			Statement{Kind: StmtRead, SetConfigs: []SetConfigCall{{Name: par(1), Value: par(2), Local: par(3)}, {Name: lit("a.b"), Value: ConfigArg{Null: true}, Local: lit("on")}}}},
		{"SELECT set_config('request.jwt.claims', $1, true), * FROM accounts WHERE id = $2",
			Statement{Kind: StmtRead, SetConfigs: []SetConfigCall{{Name: lit("request.jwt.claims"), Value: par(1), Local: lit("true")}}}},
		{"SELECT set_config('a.b', current_user, false)", Statement{Kind: StmtPin}},
		{"SELECT set_config('a.b', E'x', false)", Statement{Kind: StmtPin}},
		{"SELECT set_config('a.b', $1 || 'x', false)", Statement{Kind: StmtPin}},
		{"SELECT set_config('a.b', 'x')", Statement{Kind: StmtPin}},
		{"SELECT set_config('a.b', 'x', false, 1)", Statement{Kind: StmtPin}},
		{"SELECT myschema.set_config('a', 'b', false)", Statement{Kind: StmtRead}},
		{`SELECT "set_config"('a.b', 'c', false)`, Statement{Kind: StmtRead, SetConfigs: []SetConfigCall{{Name: lit("a.b"), Value: lit("c"), Local: lit("false")}}}},
		{`SELECT "SET_CONFIG"('a.b', 'c', false)`, Statement{Kind: StmtRead}},
		{"SELECT 'set_config(' AS x", Statement{Kind: StmtRead}},
		{"WITH x AS (INSERT INTO t VALUES (1) RETURNING 1) SELECT set_config('a.b', 'c', false)", Statement{Kind: StmtWrite}},
	}
	for _, tc := range cases {
		got, ok := c.Classify(tc.sql).Single()
		if !ok || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Classify(%q) = %+v (single %v), want %+v", tc.sql, got, ok, tc.want)
		}
	}
}

func TestClassifyTransactionModes(t *testing.T) {
	c := NewClassifier(nil, 0, 0)
	cases := []struct {
		sql  string
		want Statement
	}{
		{"BEGIN", Statement{Kind: StmtBegin}},
		{"BEGIN WORK", Statement{Kind: StmtBegin}},
		{"BEGIN TRANSACTION READ ONLY", Statement{Kind: StmtBegin, Access: AccessReadOnly}},
		{"BEGIN ISOLATION LEVEL SERIALIZABLE", Statement{Kind: StmtBegin, Isolation: IsolationSerializable}},
		{"begin isolation level repeatable read, read write", Statement{Kind: StmtBegin, Isolation: IsolationRepeatableRead, Access: AccessReadWrite}},
		{"START TRANSACTION ISOLATION LEVEL READ COMMITTED READ ONLY", Statement{Kind: StmtBegin, Isolation: IsolationReadCommitted, Access: AccessReadOnly}},
		{"START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE", Statement{Kind: StmtBegin, Isolation: IsolationSerializable, Access: AccessReadOnly}},
		{"BEGIN ISOLATION LEVEL READ UNCOMMITTED", Statement{Kind: StmtBegin, Isolation: IsolationReadUncommitted}},
		{"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", Statement{Kind: StmtSetLocal, Isolation: IsolationRepeatableRead}},
		{"SET TRANSACTION READ ONLY", Statement{Kind: StmtSetLocal, Access: AccessReadOnly}},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", Statement{Kind: StmtSession, Access: AccessReadOnly}},
		{"SET default_transaction_read_only = on", Statement{Kind: StmtSession, Access: AccessReadOnly}},
		{"SET default_transaction_read_only TO off", Statement{Kind: StmtSession, Access: AccessReadWrite}},
		{"SET default_transaction_read_only = 'on'", Statement{Kind: StmtSession, Access: AccessReadOnly}},
		{"SET default_transaction_read_only TO DEFAULT", Statement{Kind: StmtSession, ResetsAccess: true}},
		{"SET default_transaction_read_only = on, off", Statement{Kind: StmtSession}},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ", Statement{Kind: StmtSession, Isolation: IsolationRepeatableRead}},
		{"set session characteristics as transaction isolation level serializable, read only", Statement{Kind: StmtSession, Isolation: IsolationSerializable, Access: AccessReadOnly}},
		{"SET default_transaction_isolation = serializable", Statement{Kind: StmtSession, Isolation: IsolationSerializable}},
		{"SET SESSION default_transaction_isolation TO 'Repeatable Read';", Statement{Kind: StmtSession, Isolation: IsolationRepeatableRead}},
		{"SET default_transaction_isolation = 'read committed'", Statement{Kind: StmtSession, Isolation: IsolationReadCommitted}},
		{"SET default_transaction_isolation = \"read uncommitted\"", Statement{Kind: StmtSession, Isolation: IsolationReadUncommitted}},
		{"SET default_transaction_isolation TO DEFAULT", Statement{Kind: StmtSession, ResetsIsolation: true}},
		{"SET default_transaction_isolation = 'snapshot'", Statement{Kind: StmtSession}},
		{"SET LOCAL default_transaction_isolation = serializable", Statement{Kind: StmtSetLocal}},
		{"RESET default_transaction_isolation", Statement{Kind: StmtSession, ResetsIsolation: true}},
		{"RESET default_transaction_read_only", Statement{Kind: StmtSession, ResetsAccess: true}},
		{"RESET ALL", Statement{Kind: StmtSession, ResetsIsolation: true, ResetsAccess: true}},
		{"RESET statement_timeout", Statement{Kind: StmtSession}},
		{"DEALLOCATE ALL", Statement{Kind: StmtSession, DropsPrepared: true}},
		{"discard all", Statement{Kind: StmtSession, DropsPrepared: true, ResetsIsolation: true, ResetsAccess: true}},
		{"DISCARD PLANS", Statement{Kind: StmtSession}},
		{"COMMIT", Statement{Kind: StmtCommit}},
		{"COMMIT AND CHAIN", Statement{Kind: StmtCommit, Chain: true}},
		{"end work and chain", Statement{Kind: StmtCommit, Chain: true}},
		{"COMMIT TRANSACTION AND NO CHAIN", Statement{Kind: StmtCommit}},
		{"ROLLBACK AND CHAIN", Statement{Kind: StmtRollback, Chain: true}},
		{"ROLLBACK WORK AND CHAIN", Statement{Kind: StmtRollback, Chain: true}},
		{"ABORT TRANSACTION AND CHAIN", Statement{Kind: StmtRollback, Chain: true}},
		{"ROLLBACK AND NO CHAIN", Statement{Kind: StmtRollback}},
		{"SAVEPOINT a", Statement{Kind: StmtSavepoint, Savepoint: SavepointSet, Name: "a"}},
		{`SAVEPOINT "s140_x1"`, Statement{Kind: StmtSavepoint, Savepoint: SavepointSet, Name: "s140_x1"}},
		{"savepoint Mixed", Statement{Kind: StmtSavepoint, Savepoint: SavepointSet, Name: "mixed"}},
		{"RELEASE SAVEPOINT a", Statement{Kind: StmtSavepoint, Savepoint: SavepointRelease, Name: "a"}},
		{"RELEASE b", Statement{Kind: StmtSavepoint, Savepoint: SavepointRelease, Name: "b"}},
		{"ROLLBACK TO SAVEPOINT a", Statement{Kind: StmtSavepoint, Savepoint: SavepointRollback, Name: "a"}},
		{`ROLLBACK WORK TO "B"`, Statement{Kind: StmtSavepoint, Savepoint: SavepointRollback, Name: "B"}},
		{"SAVEPOINT savepoint", Statement{Kind: StmtSavepoint, Savepoint: SavepointSet, Name: "savepoint"}},
		{"RELEASE savepoint", Statement{Kind: StmtSavepoint, Savepoint: SavepointRelease, Name: "savepoint"}},
		{"ROLLBACK TO savepoint", Statement{Kind: StmtSavepoint, Savepoint: SavepointRollback, Name: "savepoint"}},
		{"ROLLBACK TO SAVEPOINT savepoint", Statement{Kind: StmtSavepoint, Savepoint: SavepointRollback, Name: "savepoint"}},
	}
	for _, tc := range cases {
		got, ok := c.Classify(tc.sql).Single()
		if !ok || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Classify(%q) = %+v (single %v), want %+v", tc.sql, got, ok, tc.want)
		}
	}
}

func TestClassifyMultiStatement(t *testing.T) {
	c := NewClassifier(nil, 0, 0)
	got := c.Classify("BEGIN; SELECT 1; INSERT INTO t VALUES (';'); COMMIT;").Stmts
	want := []StmtKind{StmtBegin, StmtRead, StmtWrite, StmtCommit}
	if len(got) != len(want) {
		t.Fatalf("got %d statements %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i].Kind != want[i] {
			t.Errorf("statement %d: %v, want %v", i, got[i].Kind, want[i])
		}
	}
}

// TestClassifySessionText: a SET or SET LOCAL among other statements
// carries its own text (what the front applies to the session's other
// backend, or replays when a transaction moves to the hub); a lone SET
// does not need it.
func TestClassifySessionText(t *testing.T) {
	c := NewClassifier(nil, 0, 0)
	got := c.Classify("SELECT ';'; SET search_path = 'a;b', public ;INSERT INTO t VALUES (1); /* c */ RESET work_mem; SET LOCAL lock_timeout = 5").Stmts
	want := []struct {
		kind StmtKind
		text string
	}{{StmtRead, ""}, {StmtSession, "SET search_path = 'a;b', public"}, {StmtWrite, ""}, {StmtSession, "/* c */ RESET work_mem"}, {StmtSetLocal, "SET LOCAL lock_timeout = 5"}}
	if len(got) != len(want) {
		t.Fatalf("got %d statements %+v, want %d", len(got), got, len(want))
	}
	for i, w := range want {
		if got[i].Kind != w.kind || got[i].Text != w.text {
			t.Errorf("statement %d: %v %q, want %v %q", i, got[i].Kind, got[i].Text, w.kind, w.text)
		}
	}
	if st := c.Classify("SET work_mem = '64MB'").Stmts[0]; st.Kind != StmtSession || st.Text != "" {
		t.Errorf("lone SET: %v %q", st.Kind, st.Text)
	}
}

func TestClassifierCacheBounded(t *testing.T) {
	c := NewClassifier(nil, 10, 1<<20)
	for i := 0; i < 100; i++ {
		c.Classify(fmt.Sprintf("SELECT %d", i))
	}
	if n := c.cacheLen(); n != 10 {
		t.Fatalf("cache holds %d entries, want 10", n)
	}
	// Byte cap: entries of 100 bytes under a 350-byte cap keep 3.
	c = NewClassifier(nil, 100, 350)
	for i := 0; i < 10; i++ {
		q := fmt.Sprintf("SELECT %-93d", i)
		c.Classify(q)
	}
	if n := c.cacheLen(); n != 3 {
		t.Fatalf("byte-capped cache holds %d entries, want 3", n)
	}
	// Cached and uncached answers agree.
	q := "INSERT INTO t VALUES (1)"
	if a, b := c.Classify(q).Strongest(), c.Classify(q).Strongest(); a != StmtWrite || b != StmtWrite {
		t.Fatalf("cached classification %v / %v, want write", a, b)
	}
	// Over-long queries are not cached.
	c = NewClassifier(nil, 10, 1<<30)
	long := "SELECT '" + string(make([]byte, maxCachedQuery)) + "'"
	c.Classify(long)
	if n := c.cacheLen(); n != 0 {
		t.Fatalf("over-long query cached: %d entries", n)
	}
}

func FuzzClassify(f *testing.F) {
	for _, s := range []string{
		"SELECT 1", "INSERT INTO t VALUES (1)", "BEGIN ISOLATION LEVEL SERIALIZABLE", "SELECT $a$ x $a$",
		"SELECT E'\\''", "/* /* */ */ SELECT", "COPY (SELECT 1) TO STDOUT", "EXPLAIN (ANALYZE) SELECT",
		"DECLARE c CURSOR WITH HOLD FOR", "SELECT set_config($1, 'x'::text, $2::bool)", "SELECT pg_catalog.set_config('a', E'\\', null)", "CREATE FUNCTION f() BEGIN ATOMIC CASE END; END", "U&\"x", "$1$", "SET default_transaction_read_only =",
	} {
		f.Add(s)
	}
	c := NewClassifier([]string{"f"}, 16, 4096)
	uncached := NewClassifier([]string{"f"}, 0, 0)
	f.Fuzz(func(t *testing.T, sql string) {
		a := c.Classify(sql)
		b := uncached.Classify(sql)
		if len(a.Stmts) == 0 {
			t.Fatalf("no statements for %q", sql)
		}
		if len(a.Stmts) != len(b.Stmts) || a.Strongest() != b.Strongest() {
			t.Fatalf("non-deterministic classification of %q: %+v vs %+v", sql, a, b)
		}
		for i := range a.Stmts {
			if !reflect.DeepEqual(a.Stmts[i], b.Stmts[i]) {
				t.Fatalf("non-deterministic classification of %q: %+v vs %+v", sql, a, b)
			}
		}
	})
}

// BenchmarkClassifyDistinct classifies pgbench -S's query with a new
// literal each time (every call misses the cache and evicts), the simple
// protocol's worst case.
func BenchmarkClassifyDistinct(b *testing.B) {
	c := NewClassifier(nil, 10000, 4<<20)
	qs := make([]string, 1<<16)
	for i := range qs {
		qs[i] = "SELECT abalance FROM pgbench_accounts WHERE aid = " + strconv.Itoa(i) + ";"
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if c.Classify(qs[i%len(qs)]).Strongest() != StmtRead {
			b.Fatal("not a read")
		}
	}
}

// FuzzLowerWord: lowerWord is strings.ToLower, and a capitalised keyword
// costs no allocation.
func FuzzLowerWord(f *testing.F) {
	for _, w := range []string{"SELECT", "select", "Select", "pgbench_accounts", "ÄBC", "Ölpreis", "WHERE1", ""} {
		f.Add(w)
	}
	f.Fuzz(func(t *testing.T, w string) {
		if got, want := lowerWord(w), strings.ToLower(w); got != want {
			t.Fatalf("lowerWord(%q) = %q, want %q", w, got, want)
		}
	})
}

var lowerSink string

func TestLowerWordKeywordsDoNotAllocate(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { lowerSink = lowerWord("SELECT") }); n != 0 {
		t.Fatalf("%v allocations lower-casing SELECT, want 0", n)
	}
}

func TestRequestKind(t *testing.T) {
	c := NewClassifier(nil, 0, 0)
	for sql, want := range map[string]string{
		"SELECT 1":                        "read",
		"COPY accounts TO STDOUT":         "read",
		"":                                "read",
		"BEGIN":                           "control",
		"COMMIT":                          "control",
		"SET statement_timeout = 0":       "control",
		"SAVEPOINT a":                     "control",
		"BEGIN; SELECT 1; COMMIT":         "read",
		"BEGIN; COMMIT":                   "control",
		"INSERT INTO t VALUES (1)":        "write",
		"BEGIN; INSERT INTO t VALUES (1)": "write",
		"COPY t FROM STDIN":               "write",
		"LISTEN x":                        "write",
	} {
		if got := c.Classify(sql).RequestKind(); got != want {
			t.Errorf("RequestKind(%q) = %q, want %q", sql, got, want)
		}
	}
}
