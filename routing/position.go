package routing

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Position is a replication position: an LSN (PostgreSQL) or a CSN or
// CSNSet (LDAP). Positions of different protocols never cover each other.
type Position interface {
	// Covers reports whether a replica at this position has applied p.
	// A nil p is covered by every position.
	Covers(p Position) bool
	String() string
}

// ErrBadPosition is wrapped by every position parse error.
var ErrBadPosition = errors.New("bad replication position")

// LSN is a PostgreSQL write-ahead log position.
type LSN uint64

// ParseLSN parses the text form PostgreSQL prints for pg_lsn ("16/B374D848").
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("%w: LSN %q: want two hex numbers of at most 8 digits as in 16/B374D848", ErrBadPosition, s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: LSN %q: high part is not hex", ErrBadPosition, s)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: LSN %q: low part is not hex", ErrBadPosition, s)
	}
	return LSN(h<<32 | l), nil
}

// String formats the LSN as PostgreSQL does.
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xFFFFFFFF) }

// Covers reports whether a replica that replayed up to l has applied p.
func (l LSN) Covers(p Position) bool {
	switch q := p.(type) {
	case nil:
		return true
	case LSN:
		return l >= q
	}
	return false
}

// CSN is an OpenLDAP change sequence number,
// "YYYYmmddHHMMSS.uuuuuuZ#cccccc#sid#mmmmmm". CSNs of one server ID are
// totally ordered; CSNs of different server IDs are not comparable.
type CSN struct {
	Time  time.Time // UTC, microsecond resolution
	Count uint32    // change count within the microsecond
	Sid   int       // server ID of the provider that made the change
	Mod   uint32    // modification number within the change
}

// ParseCSN parses the fixed-width text form of a CSN.
func ParseCSN(s string) (CSN, error) {
	parts := strings.Split(s, "#")
	if len(parts) != 4 {
		return CSN{}, fmt.Errorf("%w: CSN %q: want time#count#sid#mod", ErrBadPosition, s)
	}
	ts := parts[0]
	if len(ts) != len("20060102150405.000000Z") || ts[14] != '.' || ts[len(ts)-1] != 'Z' {
		return CSN{}, fmt.Errorf("%w: CSN %q: time must look like 20261123105512.123456Z", ErrBadPosition, s)
	}
	t, err := time.Parse("20060102150405.000000Z", ts)
	if err != nil {
		return CSN{}, fmt.Errorf("%w: CSN %q: time: %v", ErrBadPosition, s, err)
	}
	hex := func(name, v string, width int) (uint64, error) {
		if v == "" || len(v) > width {
			return 0, fmt.Errorf("%w: CSN %q: %s must be 1 to %d hex digits", ErrBadPosition, s, name, width)
		}
		n, err := strconv.ParseUint(v, 16, 32)
		if err != nil {
			return 0, fmt.Errorf("%w: CSN %q: %s is not hex", ErrBadPosition, s, name)
		}
		return n, nil
	}
	count, err := hex("count", parts[1], 6)
	if err != nil {
		return CSN{}, err
	}
	sid, err := hex("server ID", parts[2], 3)
	if err != nil {
		return CSN{}, err
	}
	mod, err := hex("mod", parts[3], 6)
	if err != nil {
		return CSN{}, err
	}
	return CSN{Time: t.UTC(), Count: uint32(count), Sid: int(sid), Mod: uint32(mod)}, nil
}

// SID returns the server ID of the provider that made the change.
func (c CSN) SID() int { return c.Sid }

// IsZero reports whether c is the zero CSN.
func (c CSN) IsZero() bool { return c.Time.IsZero() && c.Count == 0 && c.Sid == 0 && c.Mod == 0 }

// String formats c in OpenLDAP's fixed-width form.
func (c CSN) String() string {
	return fmt.Sprintf("%s#%06x#%03x#%06x", c.Time.UTC().Format("20060102150405.000000Z"), c.Count, c.Sid, c.Mod)
}

// Compare orders two CSNs of the same server ID: -1, 0 or +1. CSNs of
// different server IDs are ordered by server ID, which carries no meaning for
// replication; use Covers to ask whether a replica has applied a change.
func (c CSN) Compare(d CSN) int {
	switch {
	case c.Sid != d.Sid:
		return cmpInt(c.Sid, d.Sid)
	case !c.Time.Equal(d.Time):
		return c.Time.Compare(d.Time)
	case c.Count != d.Count:
		return cmpInt(int(c.Count), int(d.Count))
	}
	return cmpInt(int(c.Mod), int(d.Mod))
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Covers reports whether a replica whose contextCSN for c's server ID is c
// has applied p (a CSN or CSNSet).
func (c CSN) Covers(p Position) bool { return CSNSet{c.Sid: c}.Covers(p) }

// CSNSet is an LDAP replica's position: the latest CSN applied per server ID
// (the values of the suffix's contextCSN).
type CSNSet map[int]CSN

// ParseCSNSet parses contextCSN values; of two values for one server ID the
// later wins.
func ParseCSNSet(values []string) (CSNSet, error) {
	set := make(CSNSet, len(values))
	for _, v := range values {
		c, err := ParseCSN(v)
		if err != nil {
			return nil, err
		}
		set = set.With(c)
	}
	return set, nil
}

// With returns a copy of s that also covers c.
func (s CSNSet) With(c CSN) CSNSet {
	out := make(CSNSet, len(s)+1)
	for k, v := range s {
		out[k] = v
	}
	if old, ok := out[c.Sid]; !ok || old.Compare(c) < 0 {
		out[c.Sid] = c
	}
	return out
}

// Covers reports whether the replica at s has applied p: for every server ID
// in p, s holds an equal or later CSN.
func (s CSNSet) Covers(p Position) bool {
	switch q := p.(type) {
	case nil:
		return true
	case CSN:
		have, ok := s[q.Sid]
		return ok && have.Compare(q) >= 0
	case CSNSet:
		for sid, want := range q {
			have, ok := s[sid]
			if !ok || have.Compare(want) < 0 {
				return false
			}
		}
		return true
	}
	return false
}

// String lists the CSNs ordered by server ID, separated by spaces.
func (s CSNSet) String() string {
	sids := make([]int, 0, len(s))
	for sid := range s {
		sids = append(sids, sid)
	}
	sort.Ints(sids)
	parts := make([]string, len(sids))
	for i, sid := range sids {
		parts[i] = s[sid].String()
	}
	return strings.Join(parts, " ")
}

// Later returns a position that covers both a and b, for a session that
// keeps the latest position of its writes. Either may be nil. Positions of
// different kinds cannot be merged; b then wins.
func Later(a, b Position) Position {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	switch x := a.(type) {
	case LSN:
		if y, ok := b.(LSN); ok && x > y {
			return x
		}
		return b
	case CSN:
		return Later(CSNSet{x.Sid: x}, b)
	case CSNSet:
		switch y := b.(type) {
		case CSN:
			return x.With(y)
		case CSNSet:
			out := x
			for _, c := range y {
				out = out.With(c)
			}
			return out
		}
	}
	return b
}
