// Command spokeproxy runs a replication-aware PostgreSQL and LDAP proxy at a
// spoke site. It only wires flags and subcommands to the proxy and lab
// packages (drill.go is a client of a running site's public interfaces):
//
//	spokeproxy serve -config FILE   run a site
//	spokeproxy check -config FILE   validate a config; exit 0 or 1 with every problem
//	spokeproxy lab [-dir DIR]       run a throwaway hub-and-spoke topology with spokeproxy in front
//	spokeproxy drill -lab FILE      rehearse a hub outage against a live site; exit 0 only if every step passed
//	spokeproxy version              print the version
package main
