package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
)

// PrerequisiteError says that something the lab needs is not installed,
// naming the Debian package that provides it.
type PrerequisiteError struct {
	What    string // the missing binary, path or user
	Package string // the Debian package to install
	Err     error
}

func (e *PrerequisiteError) Error() string {
	return fmt.Sprintf("lab: missing %s: install the Debian package %s (apt-get install -y %s)", e.What, e.Package, e.Package)
}

func (e *PrerequisiteError) Unwrap() error { return e.Err }

// IsMissingPrerequisite reports whether err says a prerequisite is missing.
func IsMissingPrerequisite(err error) bool {
	var pe *PrerequisiteError
	return errors.As(err, &pe)
}

// StartError says a server or tool of the lab failed; it carries the tail of
// that component's log so the reader sees the server's own words.
type StartError struct {
	Component string // e.g. "hub postgres", "spoke slapd", "pg_basebackup"
	Err       error
	LogPath   string
	LogTail   string
}

func (e *StartError) Error() string {
	return fmt.Sprintf("lab: %s: %v\n--- last lines of %s:\n%s", e.Component, e.Err, e.LogPath, e.LogTail)
}

func (e *StartError) Unwrap() error { return e.Err }

// IsStartError reports whether err is a server or tool failure of the lab.
func IsStartError(err error) bool {
	var se *StartError
	return errors.As(err, &se)
}

// prerequisite is one binary the lab runs and the package that ships it.
type prerequisite struct {
	path string
	pkg  string
}

// pgBin is where Debian's PostgreSQL 15 server binaries live.
const pgBin = "/usr/lib/postgresql/15/bin"

var prerequisites = []prerequisite{
	{pgBin + "/initdb", "postgresql-15"},
	{pgBin + "/postgres", "postgresql-15"},
	{pgBin + "/pg_basebackup", "postgresql-client-15"},
	{pgBin + "/psql", "postgresql-client-15"},
	{"slapd", "slapd"},
	{"slaptest", "slapd"},
	{"slapadd", "slapd"},
	{"/usr/lib/ldap/back_mdb.la", "slapd"},
	{"/usr/lib/ldap/syncprov.la", "slapd"},
	{"/etc/ldap/schema/inetorgperson.schema", "slapd"},
	{"ldapsearch", "ldap-utils"},
}

// checkPrerequisites returns every missing prerequisite at once, or nil.
// It also resolves slapd's tools to absolute paths (they are in /usr/sbin,
// which an ordinary user's PATH may lack).
func checkPrerequisites() (map[string]string, error) {
	found := map[string]string{}
	var errs []error
	for _, p := range prerequisites {
		if p.path[0] == '/' {
			if _, err := os.Stat(p.path); err != nil {
				errs = append(errs, &PrerequisiteError{What: p.path, Package: p.pkg, Err: err})
			}
			found[p.path] = p.path
			continue
		}
		path, err := exec.LookPath(p.path)
		if err != nil {
			if _, serr := os.Stat("/usr/sbin/" + p.path); serr == nil {
				path, err = "/usr/sbin/"+p.path, nil
			}
		}
		if err != nil {
			errs = append(errs, &PrerequisiteError{What: p.path, Package: p.pkg, Err: err})
			continue
		}
		found[p.path] = path
	}
	return found, errors.Join(errs...)
}
