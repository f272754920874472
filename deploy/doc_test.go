// Package deploy holds deployment files, not code: Prometheus alert rules
// and their unit tests (prometheus/), a Grafana dashboard (grafana/), a
// hardened systemd unit (systemd/) and an example config for a real site
// (spokeproxy.yaml). Its tests check them with the tools that consume them
// (promtool, systemd-analyze, the config loader) and check that every
// metric they name exists.
package deploy
