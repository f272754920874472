package pgfront

import (
	"container/list"
	"strconv"
	"strings"
	"sync"
)

// StmtKind says where one SQL statement may run and what it does to the
// session. It is the classifier's whole output for routing; anything it does
// not recognise is StmtWrite, because a write sent to the hub is merely slow
// while a write sent to the standby fails.
type StmtKind uint8

// The kinds, in increasing strength: a multi-statement string is as strong
// as its strongest part.
const (
	StmtEmpty     StmtKind = iota // nothing but comments and semicolons
	StmtRead                      // safe on the standby: SELECT, VALUES, TABLE, SHOW, FETCH, EXPLAIN (without ANALYZE of a write)
	StmtCopyOut                   // COPY ... TO STDOUT of a table or read query
	StmtSession                   // SET/RESET/DISCARD/UNLISTEN/DEALLOCATE ALL: applied on every backend of the session
	StmtSetLocal                  // SET LOCAL, SET TRANSACTION: on the backend holding the transaction
	StmtSavepoint                 // SAVEPOINT, RELEASE, ROLLBACK TO: on the backend holding the transaction
	StmtBegin                     // BEGIN, START TRANSACTION (see Isolation, Access)
	StmtCommit                    // COMMIT, END
	StmtRollback                  // ROLLBACK, ABORT
	StmtWrite                     // must run on the hub
	StmtCopyIn                    // COPY ... FROM STDIN: hub, CopyData streamed
	StmtPin                       // creates an object that exists only on the hub: the session stays there
)

var stmtKindNames = [...]string{
	StmtEmpty: "empty", StmtRead: "read", StmtCopyOut: "copy_out", StmtSession: "session",
	StmtSetLocal: "set_local", StmtSavepoint: "savepoint", StmtBegin: "begin", StmtCommit: "commit",
	StmtRollback: "rollback", StmtWrite: "write", StmtCopyIn: "copy_in", StmtPin: "pin",
}

func (k StmtKind) String() string {
	if int(k) < len(stmtKindNames) {
		return stmtKindNames[k]
	}
	return "unknown"
}

// Isolation is a transaction isolation level named in BEGIN, START
// TRANSACTION or SET TRANSACTION.
type Isolation uint8

const (
	IsolationDefault Isolation = iota
	IsolationReadUncommitted
	IsolationReadCommitted
	IsolationRepeatableRead
	IsolationSerializable
)

// Access is a transaction access mode named in BEGIN, START TRANSACTION,
// SET TRANSACTION or SET SESSION CHARACTERISTICS.
type Access uint8

const (
	AccessDefault Access = iota
	AccessReadOnly
	AccessReadWrite
)

// SavepointOp is what a StmtSavepoint does.
type SavepointOp uint8

const (
	SavepointSet      SavepointOp = iota + 1 // SAVEPOINT name
	SavepointRelease                         // RELEASE [SAVEPOINT] name
	SavepointRollback                        // ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name
)

// Statement is one classified statement.
type Statement struct {
	Kind StmtKind
	// Isolation: StmtBegin, StmtSetLocal (SET TRANSACTION), and StmtSession
	// (SET SESSION CHARACTERISTICS, default_transaction_isolation).
	Isolation Isolation
	Access    Access // StmtBegin, StmtSetLocal (SET TRANSACTION), StmtSession (SET SESSION CHARACTERISTICS, default_transaction_read_only)
	// ResetsIsolation, ResetsAccess: a StmtSession that returns the
	// session's default isolation or read-only mode to its value at login
	// (RESET of it, SET ... TO DEFAULT, RESET ALL, DISCARD ALL).
	ResetsIsolation bool
	ResetsAccess    bool
	// DropsPrepared: DEALLOCATE ALL or DISCARD ALL, which also drop the
	// protocol-level prepared statements of the backend it runs on.
	DropsPrepared bool
	// Chain: a StmtCommit or StmtRollback AND CHAIN, which opens a new
	// transaction with the same characteristics at once.
	Chain bool
	// Savepoint and Name: what a StmtSavepoint does, to which savepoint
	// (empty when the name could not be read).
	Savepoint SavepointOp
	Name      string
	// Listen: a LISTEN (StmtPin), whose notifications the front relays.
	Listen bool
	// SetConfigs: the set_config() calls of a read, which change settings
	// on the backend that runs it only: the front repeats them on the
	// session's other backend (or when the transaction moves to the hub).
	// A call it could not repeat (an argument that is an expression) makes
	// the statement StmtPin instead.
	SetConfigs []SetConfigCall
	// Text is the statement's own text when it is a StmtSession or
	// StmtSetLocal inside a string of several statements: the front applies
	// a session SET to the session's other backend too, or, inside a
	// transaction, holds it with the transaction's replay list, as it does
	// a SET LOCAL or SET TRANSACTION.
	Text string
}

// SetConfigCall is one set_config(setting_name, new_value, is_local)
// call whose arguments are each a plain string literal, a boolean
// literal, NULL or a bare parameter.
type SetConfigCall struct {
	Name, Value, Local ConfigArg
}

// ConfigArg is one argument of a set_config call: parameter Param
// (1-based), or the literal Lit (NULL when Null).
type ConfigArg struct {
	Param int
	Lit   string
	Null  bool
}

// Classification is the result for one query string. It is shared through
// the cache: callers must not modify Stmts.
type Classification struct {
	Stmts []Statement
}

// Has reports whether any statement is of kind k.
func (c Classification) Has(k StmtKind) bool {
	for _, s := range c.Stmts {
		if s.Kind == k {
			return true
		}
	}
	return false
}

// Strongest is the strongest kind among the statements (StmtEmpty for none).
func (c Classification) Strongest() StmtKind {
	k := StmtEmpty
	for _, s := range c.Stmts {
		if s.Kind > k {
			k = s.Kind
		}
	}
	return k
}

// RequestKind is the kind label of spokeproxy_requests_total for a
// request of these statements: "write" if one needs the hub, else "read"
// if one reads (or there is none), else "control" (only transaction
// control, SET and SAVEPOINT), so that BEGIN and COMMIT answered locally
// are not counted as writes, nor a read sent with them as control.
func (c Classification) RequestKind() string {
	if c.Strongest() >= StmtWrite {
		return "write"
	}
	for _, st := range c.Stmts {
		if st.Kind == StmtRead || st.Kind == StmtCopyOut {
			return "read"
		}
	}
	if c.Strongest() == StmtEmpty {
		return "read"
	}
	return "control"
}

// Single returns the statement when the string holds exactly one.
func (c Classification) Single() (Statement, bool) {
	if len(c.Stmts) != 1 {
		return Statement{}, false
	}
	return c.Stmts[0], true
}

// defaultHubFunctions must run on the hub although a standby accepts the
// call, or fail on a standby with an error the safety net does not catch
// (currval after a nextval made on the hub says 55000, not 25006).
var defaultHubFunctions = []string{
	"nextval", "setval", "currval", "lastval",
	"txid_current", "pg_current_xact_id", "txid_current_if_assigned", "pg_current_xact_id_if_assigned",
	"pg_current_wal_lsn", "pg_current_wal_insert_lsn", "pg_current_wal_flush_lsn",
	"pg_advisory_xact_lock", "pg_advisory_xact_lock_shared",
	"pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared",
	"pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all",
	"pg_notify", "pg_switch_wal", "pg_create_restore_point",
	"lo_creat", "lo_create", "lo_import", "lo_unlink", "lo_put", "lo_from_bytea",
}

// pinFunctions take session-level advisory locks, which live on the
// backend that took them: the session must stay there.
var pinFunctions = []string{
	"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
}

// Classifier classifies SQL text. It is safe for concurrent use; its
// results are cached by query text in a bounded LRU.
type Classifier struct {
	funcs map[string]StmtKind // lower-cased function name -> StmtWrite or StmtPin

	mu       sync.Mutex // guards the cache below
	maxItems int
	maxBytes int
	bytes    int
	lru      *list.List // of *cacheEntry, most recent first
	index    map[string]*list.Element
}

type cacheEntry struct {
	query string
	class Classification
}

// maxCachedQuery is the longest query text kept in the cache; longer
// strings (bulk inserts with literal values) are classified every time
// rather than evicting the application's working set.
const maxCachedQuery = 8 << 10

// NewClassifier returns a classifier that also sends calls of
// hubFunctions (names, optionally schema-qualified; case-insensitive) to
// the hub. maxItems and maxBytes bound the cache; zero disables it.
func NewClassifier(hubFunctions []string, maxItems, maxBytes int) *Classifier {
	c := &Classifier{
		funcs:    make(map[string]StmtKind),
		maxItems: maxItems,
		maxBytes: maxBytes,
		lru:      list.New(),
		index:    make(map[string]*list.Element),
	}
	for _, f := range defaultHubFunctions {
		c.funcs[f] = StmtWrite
	}
	for _, f := range hubFunctions {
		f = strings.ToLower(strings.TrimSpace(f))
		if i := strings.LastIndexByte(f, '.'); i >= 0 {
			f = f[i+1:]
		}
		if f != "" {
			c.funcs[f] = StmtWrite
		}
	}
	for _, f := range pinFunctions {
		c.funcs[f] = StmtPin
	}
	return c
}

// Classify classifies a query string, which may hold several statements.
func (c *Classifier) Classify(sql string) Classification {
	cacheable := c.cacheable(len(sql))
	if cacheable {
		c.mu.Lock()
		if e, ok := c.index[sql]; ok {
			cl := c.hitLocked(e).class
			c.mu.Unlock()
			return cl
		}
		c.mu.Unlock()
	}
	return c.classifyAndCache(sql, cacheable)
}

// classifyBytes is Classify for text in a buffer the caller reuses. It
// also returns the text as a string: on a cache hit the cache's own
// copy, so a query seen before costs no allocation.
func (c *Classifier) classifyBytes(sql []byte) (Classification, string) {
	cacheable := c.cacheable(len(sql))
	if cacheable {
		c.mu.Lock()
		if e, ok := c.index[string(sql)]; ok {
			ce := c.hitLocked(e)
			c.mu.Unlock()
			return ce.class, ce.query
		}
		c.mu.Unlock()
	}
	q := string(sql)
	return c.classifyAndCache(q, cacheable), q
}

func (c *Classifier) cacheable(n int) bool { return c.maxItems > 0 && n <= maxCachedQuery }

// hitLocked marks a cache entry as just used.
func (c *Classifier) hitLocked(e *list.Element) *cacheEntry {
	c.lru.MoveToFront(e)
	return e.Value.(*cacheEntry)
}

func (c *Classifier) classifyAndCache(sql string, cacheable bool) Classification {
	cl := c.classify(sql)
	if cacheable {
		c.mu.Lock()
		if _, ok := c.index[sql]; !ok {
			c.index[sql] = c.lru.PushFront(&cacheEntry{query: sql, class: cl})
			c.bytes += len(sql)
			for c.lru.Len() > c.maxItems || (c.maxBytes > 0 && c.bytes > c.maxBytes) {
				old := c.lru.Back()
				e := old.Value.(*cacheEntry)
				c.lru.Remove(old)
				delete(c.index, e.query)
				c.bytes -= len(e.query)
			}
		}
		c.mu.Unlock()
	}
	return cl
}

// cacheLen reports the number of cached entries (for tests).
func (c *Classifier) cacheLen() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

func (c *Classifier) classify(sql string) Classification {
	var out Classification
	tp := tokenBufs.Get().(*[]token)
	toks := lex((*tp)[:0], sql)
	walkStatements(toks, func(stmt []token, from, to int) {
		st := c.statement(stmt)
		if st.Kind == StmtSession || st.Kind == StmtSetLocal {
			if to < 0 {
				to = len(sql)
			}
			st.Text = strings.TrimSpace(sql[from:to]) // kept only beside other statements
		}
		out.Stmts = append(out.Stmts, st)
	})
	clear(toks) // drop references to sql
	*tp = toks[:0]
	tokenBufs.Put(tp)
	switch len(out.Stmts) {
	case 0:
		out.Stmts = []Statement{{Kind: StmtEmpty}}
	case 1:
		out.Stmts[0].Text = ""
	}
	return out
}

// tokenBufs holds token buffers for classify: a cache-missing
// classification (every simple query with its own literals) then costs
// no token allocation.
var tokenBufs = sync.Pool{New: func() any { b := make([]token, 0, 32); return &b }}

// walkStatements splits at top-level semicolons, dropping empty
// statements. The body of CREATE FUNCTION/PROCEDURE ... BEGIN ATOMIC ... END
// holds semicolons of its own and is kept whole. fn gets each statement
// and its byte range in the input (between the semicolons around it; -1
// as the end means the end of the input).
func walkStatements(toks []token, fn func(stmt []token, from, to int)) {
	start := 0
	from := 0   // byte offset after the last top-level semicolon
	atomic := 0 // depth of BEGIN ATOMIC / CASE blocks inside a CREATE
	isCreate := false
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		if i == start {
			isCreate = t.kind == tokWord && t.text == "create"
		}
		if isCreate && t.kind == tokWord {
			switch t.text {
			case "atomic":
				if i > start && toks[i-1].kind == tokWord && toks[i-1].text == "begin" {
					atomic++
				}
			case "case":
				if atomic > 0 {
					atomic++
				}
			case "end":
				if atomic > 0 {
					atomic--
				}
			}
		}
		if t.kind == tokSemicolon && atomic == 0 {
			if i > start {
				fn(toks[start:i], from, t.pos)
			}
			start = i + 1
			from = t.pos + 1
		}
	}
	if start < len(toks) {
		fn(toks[start:], from, -1)
	}
}

// stmtCursor walks the tokens of one statement.
type stmtCursor struct {
	toks []token
	i    int
}

func (s *stmtCursor) peekWord(off int) string {
	if s.i+off < len(s.toks) && s.toks[s.i+off].kind == tokWord {
		return s.toks[s.i+off].text
	}
	return ""
}

// accept consumes the given words in order if they are next.
func (s *stmtCursor) accept(words ...string) bool {
	for k, w := range words {
		if s.peekWord(k) != w {
			return false
		}
	}
	s.i += len(words)
	return true
}

func (s *stmtCursor) rest() []token { return s.toks[s.i:] }

func (c *Classifier) statement(toks []token) Statement {
	if len(toks) == 0 {
		return Statement{Kind: StmtEmpty}
	}
	// A parenthesised query: (SELECT 1) UNION (SELECT 2).
	if toks[0].kind == tokLParen {
		return c.query(toks)
	}
	if toks[0].kind != tokWord {
		return Statement{Kind: StmtWrite}
	}
	s := &stmtCursor{toks: toks, i: 1}
	switch toks[0].text {
	case "select", "values", "table", "with":
		return c.query(toks)
	case "show", "fetch", "move", "close":
		return Statement{Kind: StmtRead}
	case "explain":
		return c.explain(s)
	case "declare":
		return c.declare(s)
	case "copy":
		return c.copy(s)
	case "begin":
		_ = s.accept("work") || s.accept("transaction")
		return txnModes(s, Statement{Kind: StmtBegin})
	case "start":
		if s.accept("transaction") {
			return txnModes(s, Statement{Kind: StmtBegin})
		}
	case "commit", "end":
		if s.accept("prepared") {
			return Statement{Kind: StmtWrite}
		}
		return txnEnd(s, StmtCommit)
	case "abort":
		return txnEnd(s, StmtRollback)
	case "rollback":
		if s.accept("prepared") {
			return Statement{Kind: StmtWrite}
		}
		_ = s.accept("work") || s.accept("transaction")
		if s.accept("to") {
			return savepoint(s, SavepointRollback)
		}
		return txnEnd(s, StmtRollback)
	case "savepoint":
		return savepoint(s, SavepointSet)
	case "release":
		return savepoint(s, SavepointRelease)
	case "set":
		return setStatement(s)
	case "discard":
		all := s.accept("all")
		return Statement{Kind: StmtSession, DropsPrepared: all, ResetsIsolation: all, ResetsAccess: all}
	case "reset":
		all := s.accept("all")
		return Statement{Kind: StmtSession,
			ResetsIsolation: all || s.accept("default_transaction_isolation"),
			ResetsAccess:    all || s.accept("default_transaction_read_only")}
	case "unlisten":
		return Statement{Kind: StmtSession}
	case "deallocate":
		_ = s.accept("prepare")
		if s.accept("all") {
			return Statement{Kind: StmtSession, DropsPrepared: true}
		}
		return Statement{Kind: StmtWrite}
	case "listen":
		return Statement{Kind: StmtPin, Listen: true}
	case "prepare":
		if s.accept("transaction") {
			return Statement{Kind: StmtWrite}
		}
		// A SQL-level prepared statement lives on the backend that prepared
		// it; keeping the session on the hub keeps EXECUTE and DEALLOCATE
		// consistent with it.
		return Statement{Kind: StmtPin}
	case "create":
		if isTempCreate(s) {
			return Statement{Kind: StmtPin}
		}
	}
	return Statement{Kind: StmtWrite}
}

// isTempCreate reports whether a CREATE makes a temporary object.
func isTempCreate(s *stmtCursor) bool {
	_ = s.accept("or", "replace")
	_ = s.accept("local") || s.accept("global")
	return s.accept("temp") || s.accept("temporary")
}

// query classifies SELECT, VALUES, TABLE, WITH and parenthesised queries.
func (c *Classifier) query(toks []token) Statement {
	k := StmtRead
	raise := func(to StmtKind) {
		if to > k {
			k = to
		}
	}
	isWith := toks[0].kind == tokWord && toks[0].text == "with"
	depth := 0
	var setConfigs []SetConfigCall
	for i, t := range toks {
		switch t.kind {
		case tokLParen:
			depth++
		case tokRParen:
			depth--
		case tokWord, tokQuotedIdent:
			next := tokenKind(0)
			if i+1 < len(toks) {
				next = toks[i+1].kind
			}
			if next == tokLParen {
				if f, ok := c.funcs[funcName(t)]; ok {
					raise(f)
				}
				if funcName(t) == "set_config" && (i == 0 || toks[i-1].kind != tokDot || (i >= 2 && toks[i-2].text == "pg_catalog")) {
					if call, ok := setConfigCall(toks[i+2:]); ok {
						setConfigs = append(setConfigs, call)
					} else {
						raise(StmtPin)
					}
				}
			}
			if t.kind != tokWord {
				continue
			}
			switch t.text {
			case "insert", "update", "delete", "merge":
				// Data-modifying CTEs, and the main statement after WITH.
				if isWith || (i > 0 && toks[i-1].kind == tokLParen) {
					raise(StmtWrite)
				}
			case "for":
				if lockingClause(toks[i+1:]) {
					raise(StmtWrite)
				}
			case "into":
				// SELECT ... INTO new_table creates a table; INTO TEMP pins.
				if depth == 0 {
					w := wordsAfter(toks[i+1:], 2)
					if w[0] == "temp" || w[0] == "temporary" || ((w[0] == "local" || w[0] == "global") && (w[1] == "temp" || w[1] == "temporary")) {
						raise(StmtPin)
					} else {
						raise(StmtWrite)
					}
				}
			}
		}
	}
	if k >= StmtWrite {
		setConfigs = nil // it runs on the hub, which keeps what it sets
	}
	return Statement{Kind: k, SetConfigs: setConfigs}
}

// setConfigCall reads the arguments of a set_config call, toks starting
// after its opening parenthesis. Each must be a plain string literal,
// TRUE, FALSE, NULL or a bare parameter, optionally cast to text, varchar
// or boolean: anything else (an expression, an escape string E'...') is not
// repeatable from the text alone.
func setConfigCall(toks []token) (SetConfigCall, bool) {
	var args []ConfigArg
	i := 0
	for len(args) < 3 {
		if i >= len(toks) {
			return SetConfigCall{}, false
		}
		var a ConfigArg
		t := toks[i]
		switch {
		case t.kind == tokString && t.plain:
			a.Lit = strings.ReplaceAll(t.text, "''", "'")
		case t.kind == tokParam:
			n, err := strconv.Atoi(t.text)
			if err != nil || n < 1 {
				return SetConfigCall{}, false
			}
			a.Param = n
		case t.kind == tokWord && (t.text == "true" || t.text == "false"):
			a.Lit = t.text
		case t.kind == tokWord && t.text == "null":
			a.Null = true
		default:
			return SetConfigCall{}, false
		}
		i++
		// An optional cast to a type that keeps the value as it is.
		if i+2 < len(toks) && toks[i].text == ":" && toks[i+1].text == ":" {
			if w := toks[i+2]; w.kind == tokWord && (w.text == "text" || w.text == "varchar" || w.text == "bool" || w.text == "boolean") {
				i += 3
			}
		}
		if i >= len(toks) {
			return SetConfigCall{}, false
		}
		want := tokComma
		if len(args) == 2 {
			want = tokRParen
		}
		if toks[i].kind != want {
			return SetConfigCall{}, false
		}
		i++
		args = append(args, a)
	}
	return SetConfigCall{Name: args[0], Value: args[1], Local: args[2]}, true
}

// funcName is the name a call token refers to, for the hub function list.
// Quoted identifiers keep their case and so only match lower-case names.
func funcName(t token) string { return t.text }

// lockingClause reports whether the tokens after FOR start a row-locking
// clause: UPDATE, SHARE, NO KEY UPDATE, KEY SHARE.
func lockingClause(toks []token) bool {
	w := wordsAfter(toks, 3)
	switch w[0] {
	case "update", "share":
		return true
	case "no":
		return w[1] == "key" && w[2] == "update"
	case "key":
		return w[1] == "share"
	}
	return false
}

// wordsAfter returns up to n leading tokens as words ("" for a non-word).
func wordsAfter(toks []token, n int) []string {
	out := make([]string, n)
	for k := 0; k < n && k < len(toks); k++ {
		if toks[k].kind != tokWord {
			break
		}
		out[k] = toks[k].text
	}
	return out
}

// explain classifies EXPLAIN: without ANALYZE the statement is only
// planned, which a standby allows for anything; with ANALYZE it runs.
func (c *Classifier) explain(s *stmtCursor) Statement {
	analyze := false
	if s.i < len(s.toks) && s.toks[s.i].kind == tokLParen {
		depth := 0
		for ; s.i < len(s.toks); s.i++ {
			t := s.toks[s.i]
			if t.kind == tokLParen {
				depth++
			} else if t.kind == tokRParen {
				depth--
				if depth == 0 {
					s.i++
					break
				}
			} else if t.kind == tokWord && (t.text == "analyze" || t.text == "analyse") {
				analyze = true
				if v := s.peekWord(1); v == "false" || v == "off" {
					analyze = false
				} else if s.i+1 < len(s.toks) && s.toks[s.i+1].kind == tokNumber {
					// EXPLAIN (ANALYZE 0) is rare; treat any number as true,
					// the cautious side.
					analyze = true
				}
			}
		}
	} else {
		for {
			if s.accept("analyze") || s.accept("analyse") {
				analyze = true
				continue
			}
			if s.accept("verbose") {
				continue
			}
			break
		}
	}
	inner := c.statement(s.rest())
	if !analyze {
		if inner.Kind == StmtPin || inner.Kind == StmtEmpty {
			return Statement{Kind: StmtWrite} // EXPLAIN of nothing known: let the hub say
		}
		return Statement{Kind: StmtRead}
	}
	switch inner.Kind {
	case StmtRead:
		return Statement{Kind: StmtRead}
	case StmtPin:
		return Statement{Kind: StmtPin}
	}
	return Statement{Kind: StmtWrite}
}

// declare classifies DECLARE name ... CURSOR [WITH[OUT] HOLD] FOR query. A
// WITH HOLD cursor outlives its transaction on the backend that made it.
func (c *Classifier) declare(s *stmtCursor) Statement {
	hold := false
	for ; s.i < len(s.toks); s.i++ {
		w := s.peekWord(0)
		if w == "with" && s.peekWord(1) == "hold" {
			hold = true
		}
		if w == "for" {
			s.i++
			break
		}
	}
	inner := c.statement(s.rest())
	switch {
	case inner.Kind == StmtPin || (hold && inner.Kind != StmtEmpty):
		return Statement{Kind: StmtPin}
	case inner.Kind == StmtRead:
		return Statement{Kind: StmtRead}
	}
	return Statement{Kind: StmtWrite}
}

// copy classifies COPY: FROM STDIN streams into the hub, TO STDOUT of a
// table or read query streams out of the standby; server-side files go to
// the hub (a file on the spoke's standby host is not what anyone meant).
func (c *Classifier) copy(s *stmtCursor) Statement {
	innerKind := StmtRead
	if s.i < len(s.toks) && s.toks[s.i].kind == tokLParen {
		depth := 0
		start := s.i + 1
		for ; s.i < len(s.toks); s.i++ {
			if s.toks[s.i].kind == tokLParen {
				depth++
			} else if s.toks[s.i].kind == tokRParen {
				depth--
				if depth == 0 {
					break
				}
			}
		}
		end := s.i
		if end > len(s.toks) {
			end = len(s.toks)
		}
		innerKind = c.statement(s.toks[start:end]).Kind
		s.i++
	}
	depth := 0
	for ; s.i < len(s.toks); s.i++ {
		t := s.toks[s.i]
		switch t.kind {
		case tokLParen:
			depth++
		case tokRParen:
			depth--
		case tokWord:
			if depth != 0 {
				continue
			}
			switch t.text {
			case "from":
				if s.peekWord(1) == "stdin" {
					return Statement{Kind: StmtCopyIn}
				}
				return Statement{Kind: StmtWrite}
			case "to":
				if s.peekWord(1) == "stdout" && innerKind == StmtRead {
					return Statement{Kind: StmtCopyOut}
				}
				return Statement{Kind: StmtWrite}
			}
		}
	}
	return Statement{Kind: StmtWrite}
}

// txnModes parses the transaction modes of BEGIN, START TRANSACTION and
// SET TRANSACTION into st.
func txnModes(s *stmtCursor, st Statement) Statement {
	for s.i < len(s.toks) {
		switch {
		case s.accept("isolation", "level"):
			switch {
			case s.accept("serializable"):
				st.Isolation = IsolationSerializable
			case s.accept("repeatable", "read"):
				st.Isolation = IsolationRepeatableRead
			case s.accept("read", "committed"):
				st.Isolation = IsolationReadCommitted
			case s.accept("read", "uncommitted"):
				st.Isolation = IsolationReadUncommitted
			default:
				s.i++
			}
		case s.accept("read", "only"):
			st.Access = AccessReadOnly
		case s.accept("read", "write"):
			st.Access = AccessReadWrite
		default:
			s.i++ // commas, [NOT] DEFERRABLE
		}
	}
	return st
}

// savepoint classifies the savepoint name that follows SAVEPOINT, RELEASE
// [SAVEPOINT] or ROLLBACK TO [SAVEPOINT]: folded to lower case unless
// quoted, as PostgreSQL names it.
func savepoint(s *stmtCursor, op SavepointOp) Statement {
	st := Statement{Kind: StmtSavepoint, Savepoint: op}
	if op != SavepointSet && s.peekWord(0) == "savepoint" && s.i+1 < len(s.toks) {
		s.i++ // the optional keyword, unless it is the name ("RELEASE savepoint")
	}
	if s.i < len(s.toks) {
		if t := s.toks[s.i]; t.kind == tokWord || t.kind == tokQuotedIdent {
			st.Name = t.text
		}
	}
	return st
}

// txnEnd classifies the rest of COMMIT, END, ROLLBACK or ABORT: [WORK |
// TRANSACTION] [AND [NO] CHAIN].
func txnEnd(s *stmtCursor, k StmtKind) Statement {
	_ = s.accept("work") || s.accept("transaction")
	return Statement{Kind: k, Chain: s.accept("and", "chain")}
}

// setStatement classifies SET.
func setStatement(s *stmtCursor) Statement {
	switch {
	case s.accept("local"):
		return Statement{Kind: StmtSetLocal}
	case s.accept("transaction"):
		if s.accept("snapshot") {
			return Statement{Kind: StmtSetLocal}
		}
		return txnModes(s, Statement{Kind: StmtSetLocal})
	case s.accept("session", "characteristics", "as", "transaction"):
		return txnModes(s, Statement{Kind: StmtSession})
	}
	_ = s.accept("session")
	switch {
	case s.accept("default_transaction_read_only"):
		st := Statement{Kind: StmtSession}
		switch setValue(s) {
		case "on", "true", "yes":
			st.Access = AccessReadOnly
		case "off", "false", "no":
			st.Access = AccessReadWrite
		case "default":
			st.ResetsAccess = true
		}
		return st
	case s.accept("default_transaction_isolation"):
		v := setValue(s)
		return Statement{Kind: StmtSession, Isolation: parseIsolation(v), ResetsIsolation: v == "default"}
	}
	return Statement{Kind: StmtSession}
}

// setValue reads the value of SET name {TO | =} value, lower-cased: a
// word (DEFAULT is "default"), a plain string or a quoted identifier;
// "" for anything else.
func setValue(s *stmtCursor) string {
	if !s.accept("to") && s.i < len(s.toks) && s.toks[s.i].kind == tokOp { // =
		s.i++
	}
	if s.i+1 != len(s.toks) {
		return "" // a list, or nothing
	}
	switch t := s.toks[s.i]; t.kind {
	case tokWord:
		return t.text
	case tokString, tokQuotedIdent:
		return strings.ToLower(strings.TrimSpace(t.text))
	}
	return ""
}
