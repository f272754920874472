package routing

import (
	"errors"
	"testing"
	"time"
)

func TestParseLSN(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want LSN
		ok   bool
	}{
		{"0/0", 0, true},
		{"16/B374D848", 0x16_B374D848, true},
		{"FFFFFFFF/FFFFFFFF", ^LSN(0), true},
		{"0/1", 1, true},
		{"1/0", 1 << 32, true},
		{"a/b", 0xa_0000000b, true},
		{"", 0, false},
		{"16", 0, false},
		{"/1", 0, false},
		{"1/", 0, false},
		{"1/2/3", 0, false},
		{"G/0", 0, false},
		{"100000000/0", 0, false},
		{"-1/0", 0, false},
		{"+1/0", 0, false},
	} {
		got, err := ParseLSN(tc.in)
		if tc.ok != (err == nil) {
			t.Errorf("ParseLSN(%q) error = %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrBadPosition) {
				t.Errorf("ParseLSN(%q) error %v does not wrap ErrBadPosition", tc.in, err)
			}
			continue
		}
		if got != tc.want {
			t.Errorf("ParseLSN(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if s := LSN(0x16_B374D848).String(); s != "16/B374D848" {
		t.Errorf("String = %q", s)
	}
}

func TestLSNCovers(t *testing.T) {
	a, b := LSN(100), LSN(200)
	if !b.Covers(a) || a.Covers(b) || !a.Covers(a) {
		t.Error("LSN order wrong")
	}
	if !a.Covers(nil) {
		t.Error("every position covers nil")
	}
	c, _ := ParseCSN("20261123105512.123456Z#000000#001#000000")
	if a.Covers(c) || c.Covers(a) {
		t.Error("positions of different protocols must not cover each other")
	}
}

func TestParseCSN(t *testing.T) {
	good := "20261123105512.123456Z#00000a#001#000002"
	c, err := ParseCSN(good)
	if err != nil {
		t.Fatal(err)
	}
	want := CSN{Time: time.Date(2026, 11, 23, 10, 55, 12, 123456000, time.UTC), Count: 10, Sid: 1, Mod: 2}
	if !c.Time.Equal(want.Time) || c.Count != want.Count || c.SID() != 1 || c.Mod != 2 {
		t.Errorf("ParseCSN = %+v, want %+v", c, want)
	}
	if c.String() != good {
		t.Errorf("String = %q, want %q", c.String(), good)
	}
	for _, bad := range []string{
		"",
		"20261123105512.123456Z",
		"20261123105512.123456Z#000000#001",
		"20261123105512.123456Z#000000#001#000000#0",
		"2026112310551.123456Z#000000#001#000000",
		"20261123105512.123456#000000#001#000000",
		"20261323105512.123456Z#000000#001#000000",
		"20261123105512.123456Z#00000g#001#000000",
		"20261123105512.123456Z#0000000#001#000000",
		"20261123105512.123456Z#000000#1000#000000",
		"20261123105512.123456Z#000000##000000",
		"20261123105512x123456Z#000000#001#000000",
	} {
		if _, err := ParseCSN(bad); !errors.Is(err, ErrBadPosition) {
			t.Errorf("ParseCSN(%q) error = %v, want ErrBadPosition", bad, err)
		}
	}
}

func mustCSN(t testing.TB, s string) CSN {
	t.Helper()
	c, err := ParseCSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCSNOrderAndSetCovers(t *testing.T) {
	early1 := mustCSN(t, "20261123105512.000001Z#000000#001#000000")
	late1 := mustCSN(t, "20261123105512.000002Z#000000#001#000000")
	late1count := mustCSN(t, "20261123105512.000002Z#000001#001#000000")
	late1mod := mustCSN(t, "20261123105512.000002Z#000001#001#000001")
	early2 := mustCSN(t, "20251123105512.000001Z#000000#002#000000")

	order := []CSN{early1, late1, late1count, late1mod}
	for i := range order {
		for j := range order {
			got := order[i].Compare(order[j])
			want := cmpInt(i, j)
			if got != want {
				t.Errorf("Compare(%v, %v) = %d, want %d", order[i], order[j], got, want)
			}
		}
	}
	// Text order agrees with Compare within one server ID.
	for i := 1; i < len(order); i++ {
		if order[i-1].String() >= order[i].String() {
			t.Errorf("text order disagrees at %d", i)
		}
	}

	set, err := ParseCSNSet([]string{late1.String(), early2.String(), early1.String()})
	if err != nil {
		t.Fatal(err)
	}
	if len(set) != 2 || set[1] != late1 {
		t.Fatalf("ParseCSNSet kept %v, want the later CSN for sid 1", set)
	}
	for _, tc := range []struct {
		name string
		have Position
		want Position
		ok   bool
	}{
		{"set covers earlier csn", set, early1, true},
		{"set covers equal csn", set, late1, true},
		{"set misses later csn", set, late1count, false},
		{"set covers other sid", set, early2, true},
		{"set misses unknown sid", set, mustCSN(t, "20001123105512.000001Z#000000#003#000000"), false},
		{"set covers subset set", set, CSNSet{1: early1}, true},
		{"set misses set with later sid 2", set, CSNSet{1: early1, 2: mustCSN(t, "20261123105512.000001Z#000000#002#000000")}, false},
		{"later time of another sid does not cover", CSNSet{2: mustCSN(t, "20301123105512.000001Z#000000#002#000000")}, early1, false},
		{"csn covers earlier csn", late1, early1, true},
		{"csn misses later", early1, late1, false},
		{"nil covered", set, nil, true},
		{"empty set covers empty set", CSNSet{}, CSNSet{}, true},
		{"lsn not covered", set, LSN(1), false},
	} {
		if got := tc.have.Covers(tc.want); got != tc.ok {
			t.Errorf("%s: %v.Covers(%v) = %v, want %v", tc.name, tc.have, tc.want, got, tc.ok)
		}
	}
	if s := set.String(); s != late1.String()+" "+early2.String() {
		t.Errorf("set String = %q", s)
	}
	if _, err := ParseCSNSet([]string{"junk"}); !errors.Is(err, ErrBadPosition) {
		t.Errorf("ParseCSNSet(junk) error = %v", err)
	}
}

func TestLater(t *testing.T) {
	if Later(nil, LSN(5)) != LSN(5) || Later(LSN(5), nil) != LSN(5) || Later(LSN(7), LSN(5)) != LSN(7) || Later(LSN(5), LSN(7)) != LSN(7) {
		t.Error("Later of LSNs wrong")
	}
	a := mustCSN(t, "20261123105512.000001Z#000000#001#000000")
	b := mustCSN(t, "20261123105513.000001Z#000000#001#000000")
	c := mustCSN(t, "20261123105511.000001Z#000000#002#000000")
	got := Later(Later(b, a), c)
	if !got.Covers(a) || !got.Covers(b) || !got.Covers(c) {
		t.Errorf("Later = %v, does not cover all of a, b, c", got)
	}
	if set := got.(CSNSet); set[1] != b {
		t.Errorf("Later kept %v for sid 1, want %v", set[1], b)
	}
}

func FuzzParseLSN(f *testing.F) {
	for _, s := range []string{"0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "", "/", "1/2/3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLSN(s)
		if err != nil {
			if !errors.Is(err, ErrBadPosition) {
				t.Fatalf("error %v does not wrap ErrBadPosition", err)
			}
			return
		}
		back, err := ParseLSN(l.String())
		if err != nil || back != l {
			t.Fatalf("round trip of %q: %v -> %q -> %v, %v", s, l, l.String(), back, err)
		}
	})
}

func FuzzParseCSN(f *testing.F) {
	for _, s := range []string{"20261123105512.123456Z#000000#001#000000", "20261123105512.123456Z#ffffff#fff#ffffff", "#", "", "x#y#z#w"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCSN(s)
		if err != nil {
			if !errors.Is(err, ErrBadPosition) {
				t.Fatalf("error %v does not wrap ErrBadPosition", err)
			}
			return
		}
		back, err := ParseCSN(c.String())
		if err != nil || back.Compare(c) != 0 || back.SID() != c.SID() {
			t.Fatalf("round trip of %q: %v -> %v, %v", s, c, back, err)
		}
		if !c.Covers(c) {
			t.Fatalf("%v does not cover itself", c)
		}
	})
}
