#!/usr/bin/env bash
# Brings up what usher needs on this machine, with usher's default addresses, when it is not
# already there (then it changes nothing, so it is safe to run every time):
#   PostgreSQL on 127.0.0.1:5432, user `postgres` trusted over TCP — the one hard requirement;
#   Redis on 127.0.0.1:6379 — optional for `usher serve` (without it usher runs degraded), needed
#   by the tests.
# Installs Debian's packages when they are missing (Debian/Ubuntu; root or sudo). Used by
# scripts/run, scripts/test and .ci/run.
#   scripts/services.sh          for the tests: both, and the redis-server binary
#   scripts/services.sh --run    for `usher serve`: Redis only when nothing answers on its port
set -euo pipefail
mode=test
if [ "${1:-}" = "--run" ]; then mode=run; fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    # RUNLEVEL=1: on machines without systemd, don't let the package start its own service.
    as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
        apt-get install -y -qq --no-install-recommends "$@"
}

wait_for() { # what, command...
    local what=$1; shift
    for _ in $(seq 1 100); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "services: $what did not come up" >&2
    return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- PostgreSQL: 127.0.0.1:5432, user postgres, trust auth --------------------------------------
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
pg_trusts() { psql -w -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; }

if ! port_open 5432; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        echo "services: installing PostgreSQL"
        apt_install postgresql postgresql-client
        # usher's default URL connects over TCP as postgres without a password.
        for hba in /etc/postgresql/*/main/pg_hba.conf; do
            as_root sed -i -E \
                's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
        done
    fi
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    echo "services: starting PostgreSQL $version"
    # (reload when the install already started it, so the trust rule above applies)
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null \
        || as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_for "PostgreSQL" port_open 5432
fi
# (PostgreSQL may run elsewhere, e.g. docker-compose.dev.yml: the client is enough then)
command -v pg_isready >/dev/null 2>&1 && command -v psql >/dev/null 2>&1 \
    || apt_install postgresql-client
wait_for "PostgreSQL" pg_up
if ! pg_trusts; then
    cat >&2 <<'MSG'
services: PostgreSQL answers on 127.0.0.1:5432 but does not let `postgres` in without a password.
Either trust local TCP connections for it (pg_hba.conf: `host all postgres 127.0.0.1/32 trust`,
then reload), or point usher and the tests elsewhere: USHER_DATABASE__URL and
USHER_TEST_DATABASE_URL (e.g. postgres://postgres:PASSWORD@127.0.0.1:5432/postgres).
MSG
    exit 1
fi
echo "services: PostgreSQL is up on 127.0.0.1:5432"

# --- Redis: 127.0.0.1:6379 ----------------------------------------------------------------------
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
redis() {
    if [ "$mode" = run ] && port_open 6379; then
        return 0
    fi
    # The tests also start private redis-server processes (plain and TLS), so they need the
    # binary even when Redis runs elsewhere.
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        echo "services: installing Redis"
        apt_install redis-server redis-tools || return 1
    fi
    if ! redis_up; then
        echo "services: starting Redis"
        # (an install may have started one already; a second start would fail on the port)
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
        wait_for "Redis" redis_up || return 1
    fi
}
if redis; then
    echo "services: Redis is up on 127.0.0.1:6379"
elif [ "$mode" = run ]; then
    echo "services: no Redis; usher runs degraded until one answers on 127.0.0.1:6379" >&2
else
    exit 1
fi
