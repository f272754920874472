package ldapfront

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spokeproxy/lab"
	"github.com/spokeproxy/spokeproxy/routing"
)

// runTool runs a command-line client and returns its output and exit code.
func runTool(t *testing.T, stdin string, name string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("%s: %v", name, err)
	}
	return out.String(), errb.String(), code
}

func mustTool(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	out, errs, code := runTool(t, stdin, name, args...)
	if code != 0 {
		t.Fatalf("%s %s: exit %d\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), code, out, errs)
	}
	return out
}

// wantRefused checks a tool failed with LDAP result 52 and the proxy's message.
func wantRefused(t *testing.T, hubURL string, stdin string, name string, args ...string) {
	t.Helper()
	out, errs, code := runTool(t, stdin, name, args...)
	// ldappasswd exits 1 on any error but prints the result code.
	if (code != 52 && !(code == 1 && strings.Contains(out, "(52)"))) || !strings.Contains(errs+out, "read-only") || !strings.Contains(errs+out, hubURL) {
		t.Fatalf("%s during the cut: exit %d, want 52 naming %s and read-only\nstdout: %s\nstderr: %s", name, code, hubURL, out, errs)
	}
}

// TestLabLDAPUtils runs OpenLDAP's ldap-utils through the proxy against the lab,
// with the link up and cut.
func TestLabLDAPUtils(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	// Every tool run is its own connection, so a later command reading what an
	// earlier one wrote needs the site guarantee (the write acknowledged once
	// the local replica has it), not the per-session one.
	f := startFront(t, l, func(c *Config) { c.Consistency = routing.ConsistencySite })
	H := []string{"-x", "-H", f.url}
	admin := append(append([]string{}, H...), "-D", lab.AdminDN, "-w", l.AdminPassword())
	alice := append(append([]string{}, H...), "-D", lab.UserDN, "-w", lab.UserPassword)
	cn := uniqueName("tool")
	dn := "cn=" + cn + ",ou=people," + lab.BaseDN

	t.Run("ldapwhoami", func(t *testing.T) {
		out := mustTool(t, "", "ldapwhoami", alice...)
		if strings.TrimSpace(out) != "dn:"+lab.UserDN {
			t.Fatalf("ldapwhoami: %q", out)
		}
	})
	t.Run("ldapadd then ldapsearch sees it", func(t *testing.T) {
		ldif := fmt.Sprintf("dn: %s\nobjectClass: person\ncn: %s\nsn: Tool\n", dn, cn)
		mustTool(t, ldif, "ldapadd", admin...)
		out := mustTool(t, "", "ldapsearch", append(append([]string{}, H...), "-LLL", "-b", dn, "-s", "base", "sn")...)
		if !strings.Contains(out, "sn: Tool") {
			t.Fatalf("entry not found after ldapadd: %s", out)
		}
	})
	t.Run("ldapmodify with postread", func(t *testing.T) {
		ldif := fmt.Sprintf("dn: %s\nchangetype: modify\nreplace: sn\nsn: Modified\n", dn)
		out := mustTool(t, ldif, "ldapmodify", append(append([]string{}, admin...), "-e", "postread=entryCSN")...)
		if !strings.Contains(out, "entryCSN:") {
			t.Fatalf("client-requested post-read missing: %s", out)
		}
		out = mustTool(t, ldif, "ldapmodify", admin...)
		if strings.Contains(out, "entryCSN") {
			t.Fatalf("proxy's own post-read leaked: %s", out)
		}
	})
	t.Run("ldapcompare", func(t *testing.T) {
		out, errs, code := runTool(t, "", "ldapcompare", append(append([]string{}, alice...), dn, "sn:Modified")...)
		if code != 6 || !strings.Contains(out, "TRUE") {
			t.Fatalf("ldapcompare: exit %d %s %s", code, out, errs)
		}
		out, _, code = runTool(t, "", "ldapcompare", append(append([]string{}, alice...), dn, "sn:Other")...)
		if code != 5 || !strings.Contains(out, "FALSE") {
			t.Fatalf("ldapcompare false: exit %d %s", code, out)
		}
	})
	t.Run("ldapsearch paged", func(t *testing.T) {
		out := mustTool(t, "", "ldapsearch", append(append([]string{}, alice...), "-LLL", "-E", "pr=2/noprompt", "-b", lab.BaseDN, "(objectClass=*)", "dn")...)
		n := strings.Count(out, "dn: ")
		if n < 7 {
			t.Fatalf("paged search returned %d entries:\n%s", n, out)
		}
	})
	t.Run("ldapmodrdn", func(t *testing.T) {
		newCN := cn + "-renamed"
		mustTool(t, "", "ldapmodrdn", append(append([]string{}, admin...), "-r", dn, "cn="+newCN)...)
		out := mustTool(t, "", "ldapsearch", append(append([]string{}, admin...), "-LLL", "-b", "cn="+newCN+",ou=people,"+lab.BaseDN, "-s", "base", "cn")...)
		if !strings.Contains(out, newCN) {
			t.Fatalf("renamed entry not found: %s", out)
		}
		mustTool(t, "", "ldapmodrdn", append(append([]string{}, admin...), "-r", "cn="+newCN+",ou=people,"+lab.BaseDN, "cn="+cn)...)
	})
	t.Run("ldappasswd then bind with the new password", func(t *testing.T) {
		bob := append(append([]string{}, H...), "-D", lab.BobDN)
		mustTool(t, "", "ldappasswd", append(append([]string{}, bob...), "-w", lab.BobPassword, "-s", "bobnew")...)
		// A new connection: no session position, so the replica may not have
		// the new password yet; the proxy then tries the hub.
		out := mustTool(t, "", "ldapwhoami", append(append([]string{}, bob...), "-w", "bobnew")...)
		if !strings.Contains(out, lab.BobDN) {
			t.Fatalf("whoami with the new password: %s", out)
		}
		mustTool(t, "", "ldappasswd", append(append([]string{}, bob...), "-w", "bobnew", "-s", lab.BobPassword)...)
		if err := l.WaitLDAPReplicaCaughtUp(context.Background(), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("persistent sync search sees a change made through the proxy", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "ldapsearch", append(append([]string{}, alice...), "-LLL", "-E", "sync=rp", "-b", lab.BaseDN, "(cn="+cn+")", "description")...)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var errb bytes.Buffer
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		lines := make(chan string, 100)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// The refresh phase delivers the entry as it is.
		waitLine(t, lines, "dn: "+dn, &errb)
		desc := uniqueName("sync")
		mustTool(t, fmt.Sprintf("dn: %s\nchangetype: modify\nreplace: description\ndescription: %s\n", dn, desc), "ldapmodify", admin...)
		waitLine(t, lines, "description: "+desc, &errb)
		if m := f.m; m != nil {
			// The sync search ran on the replica (it lists the control).
			if !f.srv.replicaSupportsSync(ctx) {
				t.Fatal("the lab's consumer should list the Sync Request control")
			}
		}
	})
	t.Run("link cut", func(t *testing.T) {
		f.cut(t)
		hub := l.WANLDAPURL()
		out := mustTool(t, "", "ldapsearch", append(append([]string{}, alice...), "-LLL", "-E", "pr=2/noprompt", "-b", lab.BaseDN, "(objectClass=*)", "dn")...)
		if strings.Count(out, "dn: ") < 7 {
			t.Fatalf("paged search during the cut: %s", out)
		}
		if out := mustTool(t, "", "ldapwhoami", alice...); !strings.Contains(out, lab.UserDN) {
			t.Fatalf("whoami during the cut: %s", out)
		}
		if out, errs, code := runTool(t, "", "ldapcompare", append(append([]string{}, alice...), dn, "sn:Modified")...); code != 6 {
			t.Fatalf("compare during the cut: exit %d\n%s%s", code, out, errs)
		}
		wantRefused(t, hub, fmt.Sprintf("dn: cn=%s-2,ou=people,%s\nobjectClass: person\ncn: %s-2\nsn: X\n", cn, lab.BaseDN, cn), "ldapadd", admin...)
		wantRefused(t, hub, fmt.Sprintf("dn: %s\nchangetype: modify\nreplace: sn\nsn: Cut\n", dn), "ldapmodify", admin...)
		wantRefused(t, hub, "", "ldapmodrdn", append(append([]string{}, admin...), "-r", dn, "cn=x")...)
		wantRefused(t, hub, "", "ldapdelete", append(append([]string{}, admin...), dn)...)
		wantRefused(t, hub, "", "ldappasswd", append(append([]string{}, alice...), "-s", "nope")...)
	})
	t.Run("ldapdelete", func(t *testing.T) {
		mustTool(t, "", "ldapdelete", append(append([]string{}, admin...), dn)...)
		_, _, code := runTool(t, "", "ldapsearch", append(append([]string{}, admin...), "-LLL", "-b", dn, "-s", "base")...)
		if code != 32 {
			t.Fatalf("search after ldapdelete: exit %d, want 32 (noSuchObject)", code)
		}
	})
}

func waitLine(t *testing.T, lines <-chan string, want string, stderr io.Reader) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	var seen []string
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				b, _ := io.ReadAll(stderr)
				t.Fatalf("output ended before %q; saw %q; stderr %s", want, seen, b)
			}
			if strings.TrimSpace(line) == want {
				return
			}
			seen = append(seen, line)
		case <-timeout:
			t.Fatalf("no %q within 10s; saw %q", want, seen)
		}
	}
}

// TestLabPythonLDAP runs Debian's python-ldap through the proxy with referral
// chasing on and off, with the link up and cut.
func TestLabPythonLDAP(t *testing.T) {
	l := lab.ForTest(t, lab.Options{})
	f := startFront(t, l, nil)
	script := "../testdata/ldap/pyldap_client.py"
	for _, refs := range []string{"0", "1"} {
		out := mustTool(t, "", "/usr/bin/python3", script, f.url, lab.UserDN, lab.UserPassword, lab.BaseDN, refs, "write")
		t.Logf("referrals=%s: %s", refs, strings.TrimSpace(out))
	}
	f.cut(t)
	for _, refs := range []string{"0", "1"} {
		out := mustTool(t, "", "/usr/bin/python3", script, f.url, lab.UserDN, lab.UserPassword, lab.BaseDN, refs, "refused")
		t.Logf("cut, referrals=%s: %s", refs, strings.TrimSpace(out))
	}
}
