package main

import (
	"fmt"
	"io"
)

func cmdLab(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "spokeproxy lab: not wired yet")
	return 1
}
