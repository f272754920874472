// Command spokeproxy runs a replication-aware PostgreSQL and LDAP proxy at a
// spoke site. It only wires flags and subcommands to the proxy and lab
// packages:
//
//	spokeproxy serve -config FILE   run a site
//	spokeproxy check -config FILE   validate a config; exit 0 or 1 with every problem
//	spokeproxy lab [-dir DIR]       run a throwaway hub-and-spoke topology with spokeproxy in front
//	spokeproxy version              print the version
package main
