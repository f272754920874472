package lab

import (
	"net"
	"strconv"
	"testing"
)

// The lab's ports come from below the kernel's ephemeral range, where no
// other program's :0 listener or outgoing connection is given one, are
// distinct, and can be bound.
func TestFreePortsBelowTheEphemeralRange(t *testing.T) {
	ports, err := freePorts(20)
	if err != nil {
		t.Fatal(err)
	}
	from := ephemeralPortsFrom()
	seen := map[int]bool{}
	for _, p := range ports {
		if from > 11000 && p >= from {
			t.Errorf("port %d is in the ephemeral range (from %d)", p, from)
		}
		if seen[p] {
			t.Errorf("port %d picked twice", p)
		}
		seen[p] = true
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Errorf("port %d cannot be bound: %v", p, err)
			continue
		}
		ln.Close()
	}
}
