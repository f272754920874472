package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCheckAcceptsTheExample(t *testing.T) {
	code, out, errs := runCmd("check", "-config", "../../testdata/spokeproxy.example.yaml")
	if code != 0 || !strings.HasSuffix(out, ": ok\n") {
		t.Fatalf("check = %d, stdout %q, stderr %q", code, out, errs)
	}
}

func TestCheckRejectsATypoNamingIt(t *testing.T) {
	src, err := os.ReadFile("../../testdata/spokeproxy.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(src), "  probe_interval:", "  probe_intervall:", 1)
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.yaml")
	os.WriteFile(path, []byte(bad), 0o600)
	os.MkdirAll(filepath.Join(dir, "secrets"), 0o700)
	os.WriteFile(filepath.Join(dir, "secrets", "pg-auth.password"), []byte("x\n"), 0o600)
	code, _, errs := runCmd("check", "-config", path)
	if code != 1 {
		t.Fatalf("check of a typo'd key exited %d, want 1; stderr %q", code, errs)
	}
	if !strings.Contains(errs, `link.probe_intervall`) || !strings.Contains(errs, `did you mean "probe_interval"?`) {
		t.Errorf("stderr does not name the key:\n%s", errs)
	}
}

func TestCheckUsage(t *testing.T) {
	if code, _, _ := runCmd("check"); code != 2 {
		t.Errorf("check without -config exited %d, want 2", code)
	}
	if code, _, errs := runCmd("check", "-config", "/nonexistent.yaml"); code != 1 || !strings.Contains(errs, "no such file") {
		t.Errorf("check of a missing file = %d %q", code, errs)
	}
}

func TestVersionAndUnknownCommand(t *testing.T) {
	if code, out, _ := runCmd("version"); code != 0 || !strings.HasPrefix(out, "spokeproxy ") {
		t.Errorf("version = %d %q", code, out)
	}
	if code, _, errs := runCmd("frobnicate"); code != 2 || !strings.Contains(errs, `unknown command "frobnicate"`) {
		t.Errorf("unknown command = %d %q", code, errs)
	}
}
