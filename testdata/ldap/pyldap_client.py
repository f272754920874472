"""python-ldap (Debian's python3-ldap) through spokeproxy, for ldapfront's
integration tests. Usage:

    pyldap_client.py URL DN PASSWORD BASE REFERRALS(0|1) EXPECT(write|refused)

Binds, reads, compares, asks WhoAmI, modifies the bound entry and reads the
change back (EXPECT=write), or checks the modify is refused with result 52
naming a read-only site (EXPECT=refused). Prints one JSON object; exits 0 only
when every check passed.
"""
import json
import sys
import time

import ldap

url, dn, password, base, referrals, expect = sys.argv[1:7]
out = {"referrals": int(referrals)}
conn = ldap.initialize(url)
conn.set_option(ldap.OPT_REFERRALS, int(referrals))
conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 10)
conn.set_option(ldap.OPT_TIMEOUT, 10)
conn.simple_bind_s(dn, password)
out["whoami"] = conn.whoami_s()
res = conn.search_s(base, ldap.SCOPE_SUBTREE, "(objectClass=inetOrgPerson)", ["uid"])
out["people"] = len(res)
out["compare"] = bool(conn.compare_s(dn, "objectClass", b"inetOrgPerson"))
desc = "py-%d-%s" % (time.time_ns(), referrals)
try:
    conn.modify_s(dn, [(ldap.MOD_REPLACE, "description", [desc.encode()])])
    out["modify"] = "ok"
    got = conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", ["description"])
    out["read_back"] = got[0][1].get("description", [b""])[0].decode() == desc
except ldap.UNAVAILABLE as e:
    out["modify"] = "unavailable"
    out["info"] = e.args[0].get("info", "")
conn.unbind_s()
print(json.dumps(out))
ok = out["whoami"] == "dn:" + dn and out["people"] >= 2 and out["compare"]
if expect == "write":
    ok = ok and out["modify"] == "ok" and out["read_back"]
else:
    ok = ok and out["modify"] == "unavailable" and "read-only" in out["info"]
sys.exit(0 if ok else 1)
