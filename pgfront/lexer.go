package pgfront

import "strings"

// tokenKind is the lexical class of one SQL token. The classifier needs no
// more than this: it never builds a syntax tree, it only has to know where
// comments, strings and quoted identifiers end so that a keyword inside them
// is never taken for one outside.
type tokenKind uint8

const (
	tokWord        tokenKind = iota + 1 // keyword or unquoted identifier, lower-cased
	tokQuotedIdent                      // "Ident" (text is the identifier, quotes removed, case kept)
	tokString                           // any string constant: '', E'', B'', X'', U&'', $tag$...$tag$
	tokNumber                           // numeric constant
	tokParam                            // $1
	tokLParen                           // (
	tokRParen                           // )
	tokSemicolon                        // ;
	tokComma                            // ,
	tokDot                              // .
	tokOp                               // any other operator or punctuation character (text: that one character)
)

// token is one lexed token. Text is only kept where the classifier looks at
// it: words, quoted identifiers, a parameter's number, and the body of a
// plain '...' string as it stands in the input (a slice of it, doubled
// quotes left doubled: the value of a SET; plain tells it from the other
// strings). For other strings and numbers it is empty.
type token struct {
	kind  tokenKind
	plain bool // a plain '...' string, terminated
	text  string
	pos   int // byte offset in the input; set for semicolons only (statement boundaries)
}

// lex splits sql into tokens, dropping whitespace and comments. It never
// fails: an unterminated string, quoted identifier, dollar quote or comment
// runs to the end of the input, as PostgreSQL's own lexer would report an
// error there and the statement goes to the hub (unknown means write).
//
// It follows PostgreSQL's scan.l for the cases that matter to
// classification: nested /* */ comments, -- comments, standard strings with
// doubled quotes (standard_conforming_strings=on, the default since 9.1),
// E'...' strings with backslash escapes, the B, X, N and U& prefixes, U&"..." and "..."
// identifiers, dollar quoting with optional tags, $n parameters, and
// identifiers that may contain $.
//
// Tokens are appended to toks, a buffer the caller reuses.
func lex(toks []token, sql string) []token {
	i := 0
	n := len(sql)
	for i < n {
		c := sql[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < n && sql[i+1] == '-':
			for i < n && sql[i] != '\n' && sql[i] != '\r' {
				i++
			}
		case c == '/' && i+1 < n && sql[i+1] == '*':
			i = skipBlockComment(sql, i)
		case c == '\'':
			end := skipString(sql, i+1, false)
			body := ""
			plain := end-1 > i && sql[end-1] == '\''
			if plain {
				body = sql[i+1 : end-1]
			}
			i = end
			toks = append(toks, token{kind: tokString, text: body, plain: plain})
		case c == '"':
			var ident string
			ident, i = scanQuotedIdent(sql, i+1)
			toks = append(toks, token{kind: tokQuotedIdent, text: ident})
		case c == '$':
			if i+1 < n && isDigit(sql[i+1]) {
				j := i + 1
				for j < n && isDigit(sql[j]) {
					j++
				}
				toks = append(toks, token{kind: tokParam, text: sql[i+1 : j]})
				i = j
				continue
			}
			if end, ok := skipDollarQuote(sql, i); ok {
				toks = append(toks, token{kind: tokString})
				i = end
				continue
			}
			toks = append(toks, token{kind: tokOp})
			i++
		case isIdentStart(c):
			j := i + 1
			for j < n && isIdentCont(sql[j]) {
				j++
			}
			word := sql[i:j]
			// Prefixed string constants: the prefix must touch the quote.
			if j < n && sql[j] == '\'' && len(word) == 1 {
				switch word[0] {
				case 'e', 'E':
					i = skipString(sql, j+1, true)
					toks = append(toks, token{kind: tokString})
					continue
				case 'b', 'B', 'x', 'X', 'n', 'N':
					i = skipString(sql, j+1, false)
					toks = append(toks, token{kind: tokString})
					continue
				}
			}
			if len(word) == 1 && (word[0] == 'u' || word[0] == 'U') && j+1 < n && sql[j] == '&' {
				switch sql[j+1] {
				case '\'':
					i = skipString(sql, j+2, false)
					toks = append(toks, token{kind: tokString})
					continue
				case '"':
					var ident string
					ident, i = scanQuotedIdent(sql, j+2)
					toks = append(toks, token{kind: tokQuotedIdent, text: ident})
					continue
				}
			}
			toks = append(toks, token{kind: tokWord, text: lowerWord(word)})
			i = j
		case isDigit(c) || (c == '.' && i+1 < n && isDigit(sql[i+1])):
			j := i + 1
			for j < n && (isDigit(sql[j]) || isIdentStart(sql[j]) || sql[j] == '.') {
				// Exponent signs: 1e-5.
				if (sql[j] == 'e' || sql[j] == 'E') && j+1 < n && (sql[j+1] == '+' || sql[j+1] == '-') {
					j++
				}
				j++
			}
			toks = append(toks, token{kind: tokNumber})
			i = j
		case c == '(':
			toks = append(toks, token{kind: tokLParen})
			i++
		case c == ')':
			toks = append(toks, token{kind: tokRParen})
			i++
		case c == ';':
			toks = append(toks, token{kind: tokSemicolon, pos: i})
			i++
		case c == ',':
			toks = append(toks, token{kind: tokComma})
			i++
		case c == '.':
			toks = append(toks, token{kind: tokDot})
			i++
		default:
			toks = append(toks, token{kind: tokOp, text: sql[i : i+1]})
			i++
		}
	}
	return toks
}

// skipBlockComment returns the index after the comment starting at i
// ("/*"); PostgreSQL's block comments nest.
func skipBlockComment(sql string, i int) int {
	depth := 0
	n := len(sql)
	for i < n {
		switch {
		case sql[i] == '/' && i+1 < n && sql[i+1] == '*':
			depth++
			i += 2
		case sql[i] == '*' && i+1 < n && sql[i+1] == '/':
			depth--
			i += 2
			if depth == 0 {
				return i
			}
		default:
			i++
		}
	}
	return n
}

// skipString returns the index after the closing quote of a string whose
// body starts at i. A doubled quote is an escaped quote; with backslash set
// (E'...' strings) a backslash escapes the next byte.
func skipString(sql string, i int, backslash bool) int {
	n := len(sql)
	for i < n {
		switch sql[i] {
		case '\\':
			if backslash {
				i += 2
				continue
			}
			i++
		case '\'':
			if i+1 < n && sql[i+1] == '\'' {
				i += 2
				continue
			}
			return i + 1
		default:
			i++
		}
	}
	return n
}

// scanQuotedIdent returns the identifier whose body starts at i (after the
// opening double quote) and the index after its closing quote.
func scanQuotedIdent(sql string, i int) (string, int) {
	var b strings.Builder
	n := len(sql)
	for i < n {
		if sql[i] == '"' {
			if i+1 < n && sql[i+1] == '"' {
				b.WriteByte('"')
				i += 2
				continue
			}
			return b.String(), i + 1
		}
		b.WriteByte(sql[i])
		i++
	}
	return b.String(), n
}

// skipDollarQuote reports whether a dollar quote ($$ or $tag$) starts at i
// and, if so, the index after its closing delimiter (or the end of input).
func skipDollarQuote(sql string, i int) (int, bool) {
	n := len(sql)
	j := i + 1
	if j < n && sql[j] != '$' {
		if !isIdentStart(sql[j]) {
			return 0, false
		}
		for j < n && sql[j] != '$' {
			if !isIdentCont(sql[j]) || sql[j] == '$' {
				return 0, false
			}
			j++
		}
	}
	if j >= n {
		return 0, false
	}
	delim := sql[i : j+1]
	end := strings.Index(sql[j+1:], delim)
	if end < 0 {
		return n, true
	}
	return j + 1 + end + len(delim), true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80
}

func isIdentCont(c byte) bool { return isIdentStart(c) || isDigit(c) || c == '$' }

// keywords are the words the classifier looks at, and other common SQL
// keywords, by lower-case spelling: lowerWord returns these strings
// rather than allocate a lower-cased copy of a keyword written in
// capitals, as SQL keywords usually are.
var keywords = func() map[string]string {
	m := make(map[string]string)
	for _, w := range strings.Fields(`
		abort all analyse analyze and as asc atomic begin between by call case cast characteristics
		close commit committed conflict copy create cross current_date current_time current_timestamp
		deallocate declare default delete desc discard distinct do else end except exists explain
		false fetch for from full function global group having hold ilike in inner insert intersect
		into is isolation join key lateral left level like limit listen local lock merge move natural
		no not nothing null nulls of off offset on only or order outer over partition prepare prepared
		procedure read recursive release repeatable replace reset returning right rollback savepoint
		select serializable session set share show skip snapshot start stdin stdout table temp temporary
		then to transaction true truncate uncommitted union unlisten update using vacuum values verbose
		when where window with work write`) {
		m[w] = w
	}
	return m
}()

// lowerWord is strings.ToLower of an unquoted identifier or keyword,
// without an allocation for words already in lower case or for keywords.
func lowerWord(word string) string {
	upper := false
	for i := 0; i < len(word); i++ {
		c := word[i]
		if c >= 0x80 {
			return strings.ToLower(word) // not ASCII: Unicode case rules
		}
		upper = upper || ('A' <= c && c <= 'Z')
	}
	if !upper {
		return word
	}
	var buf [24]byte
	if len(word) <= len(buf) {
		for i := 0; i < len(word); i++ {
			c := word[i]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			buf[i] = c
		}
		if k, ok := keywords[string(buf[:len(word)])]; ok {
			return k
		}
	}
	return strings.ToLower(word)
}
