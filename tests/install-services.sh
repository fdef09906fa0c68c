#!/usr/bin/env bash
# Makes sure the servers the tests start are installed: PostgreSQL (initdb/pg_ctl), Redis, curl,
# Podman (with runc and a static busybox) whose Docker Engine API the Docker-backend tests use,
# and Chromium, which loads /docs headless.
# The tests start and stop their own throwaway instances; this only installs (as root, with
# apt-get) what is missing. Without root and with something missing, it says what to install.
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v curl >/dev/null || missing+=(curl)
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v busybox >/dev/null || missing+=(busybox-static)
command -v chromium >/dev/null || missing+=(chromium)
id postgres >/dev/null 2>&1 || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "the tests need: ${missing[*]} (install them, or run make test as root)" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
# The Debian package starts a cluster of its own; the tests do not use it.
service postgresql stop >/dev/null 2>&1 || true
service redis-server stop >/dev/null 2>&1 || true
