package lab

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Names the lab's directory uses; the entries come from testdata/lab/seed.ldif.
const (
	BaseDN       = "dc=example,dc=org"
	AdminDN      = "cn=admin,dc=example,dc=org" // rootdn of provider and consumer; password generated per lab
	UserDN       = "uid=alice,ou=people,dc=example,dc=org"
	UserPassword = "alicepass"
	BobDN        = "uid=bob,ou=people,dc=example,dc=org"
	BobPassword  = "bobpass"
)

// slapdServer is one slapd of the lab, run in the foreground from a
// generated slapd.conf.
type slapdServer struct {
	name     string // "hub slapd", "spoke slapd"
	dir      string
	confPath string
	port     int
	logPath  string
	proc     *process
	// idleTimeout: slapd's idletimeout, 0 for none.
	idleTimeout time.Duration
}

func (s *slapdServer) url() string { return "ldap://127.0.0.1:" + strconv.Itoa(s.port) }

// slapdGlobalConf is the part shared by provider and consumer.
func slapdGlobalConf(dir string, serverID int) string {
	var b strings.Builder
	for _, schema := range []string{"core", "cosine", "nis", "inetorgperson"} {
		fmt.Fprintf(&b, "include /etc/ldap/schema/%s.schema\n", schema)
	}
	fmt.Fprintf(&b, "pidfile %s\nargsfile %s\n", filepath.Join(dir, "slapd.pid"), filepath.Join(dir, "slapd.args"))
	b.WriteString("modulepath /usr/lib/ldap\nmoduleload back_mdb\nmoduleload syncprov\nloglevel sync\n")
	if serverID > 0 {
		fmt.Fprintf(&b, "serverID %d\n", serverID)
	}
	return b.String()
}

// slapdDatabaseConf opens the mdb database: suffix, root identity, indexes.
func slapdDatabaseConf(dir, rootpwHash string) string {
	return fmt.Sprintf(`
database mdb
maxsize 268435456
suffix "%s"
rootdn "%s"
rootpw %s
directory %s
index objectClass,entryCSN,entryUUID eq
index uid,cn,mail eq
`, BaseDN, AdminDN, rootpwHash, filepath.Join(dir, "db"))
}

// slapdACL lets users change their own password and read the directory,
// and anonymous clients authenticate and read. ACLs replicate with the
// config, not the data, so provider and consumer get the same.
const slapdACL = `
access to attrs=userPassword
  by self write
  by anonymous auth
  by * none
access to *
  by self write
  by users read
  by anonymous read
`

// providerConf is the hub's slapd: mdb with syncprov, server ID 1.
func (l *Lab) providerConf(s *slapdServer) string {
	global := slapdGlobalConf(s.dir, 1)
	if s.idleTimeout > 0 {
		global += fmt.Sprintf("idletimeout %d\n", max(1, int(s.idleTimeout/time.Second)))
	}
	return global + slapdDatabaseConf(s.dir, l.ldapAdminHash) + slapdACL +
		"\noverlay syncprov\nsyncprov-checkpoint 100 1\n"
}

// consumerConf is the spoke's slapd: a refreshAndPersist consumer of the
// provider through the wan_ldap link, a cascading provider itself (syncprov)
// so sync searches work locally, writes referred to the hub through the WAN
// link (a client chasing the referral crosses the WAN like everything else
// from the spoke, and a cut stops it).
func (l *Lab) consumerConf(s *slapdServer) string {
	syncrepl := fmt.Sprintf(`
syncrepl rid=001
  provider=ldap://%s
  type=refreshAndPersist
  retry="1 +"
  timeout=2
  network-timeout=2
  searchbase="%s"
  attrs="*,+"
  bindmethod=simple
  binddn="%s"
  credentials=%s
updateref %s
`, l.wanLDAPAddr, BaseDN, AdminDN, l.ldapAdminPassword, l.WANLDAPURL())
	return slapdGlobalConf(s.dir, 0) + slapdDatabaseConf(s.dir, l.ldapAdminHash) + syncrepl + slapdACL +
		"\noverlay syncprov\n"
}

// writeSlapdConf writes and validates a slapd.conf (mode 0600: it holds the
// replication credentials).
func (l *Lab) writeSlapdConf(ctx context.Context, s *slapdServer, conf string) error {
	if err := os.MkdirAll(filepath.Join(s.dir, "db"), 0o700); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	if err := os.WriteFile(s.confPath, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	return runTool(ctx, s.name+" slaptest", s.logPath, nil, s.dir, childEnv(), nil,
		l.bins["slaptest"], "-Q", "-u", "-f", s.confPath)
}

// startSlapd runs slapd in the foreground and waits for a search on the
// suffix to answer.
func (l *Lab) startSlapd(ctx context.Context, s *slapdServer, ready func(context.Context) error) error {
	p, err := startProcess(s.name, s.logPath, syscall.SIGTERM, nil, s.dir, childEnv(),
		l.bins["slapd"], "-d", "0", "-h", s.url()+"/", "-f", s.confPath)
	if err != nil {
		return err
	}
	l.mu.Lock()
	s.proc = p
	l.mu.Unlock()
	return waitFor(ctx, p, "slapd answering a search", 30*time.Second, ready)
}

// startHubLDAP writes the provider's config, loads seed.ldif with slapadd
// and starts it.
func (l *Lab) startHubLDAP(ctx context.Context) error {
	s := l.hubLDAP
	if err := l.writeSlapdConf(ctx, s, l.providerConf(s)); err != nil {
		return err
	}
	if err := runTool(ctx, s.name+" slapadd seed.ldif", s.logPath, nil, s.dir, childEnv(), nil,
		l.bins["slapadd"], "-q", "-w", "-f", s.confPath, "-l", filepath.Join(l.seedDir, "seed.ldif")); err != nil {
		return err
	}
	return l.startSlapd(ctx, s, func(ctx context.Context) error {
		return ldapSearchBase(ctx, s.url(), BaseDN)
	})
}

// startSpokeLDAP starts the consumer and waits until the seed has
// replicated to it (alice's entry is there).
func (l *Lab) startSpokeLDAP(ctx context.Context) error {
	s := l.spokeLDAP
	if err := l.writeSlapdConf(ctx, s, l.consumerConf(s)); err != nil {
		return err
	}
	return l.startSlapd(ctx, s, func(ctx context.Context) error {
		return ldapSearchBase(ctx, s.url(), UserDN)
	})
}

// ldapSearchBase does an anonymous base search of dn: the real request that
// proves a slapd is ready (and, on a consumer, that the entry replicated).
func ldapSearchBase(ctx context.Context, url, dn string) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Second)
	}
	conn, err := ldap.DialURL(url, ldap.DialWithDialer(&net.Dialer{Deadline: deadline}))
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetTimeout(time.Until(deadline))
	res, err := conn.Search(ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, 1, false,
		"(objectClass=*)", []string{"1.1"}, nil))
	if err != nil {
		return err
	}
	if len(res.Entries) != 1 {
		return errors.New("entry not found")
	}
	return nil
}

// sshaHash is OpenLDAP's {SSHA}: base64(SHA-1(password + salt) + salt). It
// keeps the admin password out of slapd.conf in clear (the consumer's
// syncrepl credentials must be clear text, so that file is 0600 anyway).
func sshaHash(password string) string {
	salt := make([]byte, 8)
	_, _ = rand.Read(salt)
	sum := sha1.Sum(append([]byte(password), salt...))
	return "{SSHA}" + base64.StdEncoding.EncodeToString(append(sum[:], salt...))
}

// contextCSNs reads the suffix's contextCSN values by server ID.
func contextCSNs(ctx context.Context, url string) (map[string]string, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Second)
	}
	conn, err := ldap.DialURL(url, ldap.DialWithDialer(&net.Dialer{Deadline: deadline}))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetTimeout(time.Until(deadline))
	res, err := conn.Search(ldap.NewSearchRequest(BaseDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, 1, false,
		"(objectClass=*)", []string{"contextCSN"}, nil))
	if err != nil {
		return nil, err
	}
	if len(res.Entries) != 1 {
		return nil, errors.New("suffix entry not found")
	}
	bySID := map[string]string{}
	for _, csn := range res.Entries[0].GetAttributeValues("contextCSN") {
		if parts := strings.Split(csn, "#"); len(parts) == 4 {
			bySID[parts[2]] = csn
		}
	}
	return bySID, nil
}

// WaitLDAPReplicaCaughtUp waits until the spoke consumer's contextCSN has
// reached the provider's, for every server ID, as read when it is called.
// CSNs are fixed-width text and compare as strings within one server ID.
func (l *Lab) WaitLDAPReplicaCaughtUp(ctx context.Context, timeout time.Duration) error {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	target, err := contextCSNs(cctx, l.hubLDAP.url())
	cancel()
	if err != nil {
		return fmt.Errorf("lab: provider contextCSN: %w", err)
	}
	return waitFor(ctx, nil, "spoke consumer catching up", timeout, func(ctx context.Context) error {
		have, err := contextCSNs(ctx, l.spokeLDAP.url())
		if err != nil {
			return err
		}
		for sid, csn := range target {
			if have[sid] < csn {
				return fmt.Errorf("server %s: consumer at %q, provider at %q", sid, have[sid], csn)
			}
		}
		return nil
	})
}
