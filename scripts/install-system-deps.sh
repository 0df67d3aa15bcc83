#!/usr/bin/env bash
# Install the data stores the dev stack and the tests run as local processes:
# MariaDB (mariadbd), Redis (redis-server) and etcd (etcd), and the delivery checks' system
# tools: promtool (package prometheus) for the alert rules, dockerd (docker.io) and debootstrap
# for the image tests, and Chromium (/usr/bin/chromium) that the browser tests drive through
# Playwright, and wrk for the load harness (make bench). Idempotent: does nothing when every
# command is present.
# Debian/Ubuntu (apt-get) only.
set -euo pipefail

started=$(date +%s)
log() { printf 'system-deps: %s\n' "$*"; }
fail() { printf 'system-deps: ERROR: %s\n' "$*" >&2; exit 1; }

# mariadbd lives in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

declare -A package_of=([mariadbd]=mariadb-server [redis-server]=redis-server [etcd]=etcd-server
                       [promtool]=prometheus [dockerd]=docker.io [debootstrap]=debootstrap
                       [/usr/bin/chromium]=chromium [wrk]=wrk)
missing=()
# Chromium by its path: the browser tests launch exactly /usr/bin/chromium.
for command in mariadbd redis-server etcd promtool dockerd debootstrap wrk /usr/bin/chromium; do
    if ! command -v "$command" >/dev/null 2>&1; then
        missing+=("$command")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    log "mariadbd, redis-server, etcd, promtool, dockerd, debootstrap, wrk and chromium are installed; nothing to do"
    exit 0
fi
log "missing: ${missing[*]}"

command -v apt-get >/dev/null 2>&1 \
    || fail "apt-get not found; install ${missing[*]} by hand (packages: mariadb-server redis-server etcd-server prometheus docker.io debootstrap wrk chromium)"

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    fail "not root and no password-less sudo; run as root: apt-get install mariadb-server redis-server etcd-server prometheus docker.io debootstrap wrk chromium"
fi

# Keep the packages' init scripts from starting system-wide servers on 3306/6379/2379 (and
# Prometheus on 9090, dockerd) that nobody uses: the dev stack and the tests start their own.
# Only when no policy is in place already.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi

packages=()
for command in "${missing[@]}"; do
    packages+=("${package_of[$command]}")
done
step=$(date +%s)
log "apt-get update"
"${sudo[@]}" apt-get update -q \
    || fail "apt-get update failed (network? apt sources?); see the output above"
log "apt-get update took $(( $(date +%s) - step )) s"

step=$(date +%s)
log "apt-get install ${packages[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}" \
    || fail "apt-get install ${packages[*]} failed; see the output above"
log "apt-get install took $(( $(date +%s) - step )) s"

for command in "${missing[@]}"; do
    command -v "$command" >/dev/null 2>&1 \
        || fail "$command still not found after installing ${package_of[$command]}"
done
log "done in $(( $(date +%s) - started )) s"
