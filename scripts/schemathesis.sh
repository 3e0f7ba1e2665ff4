#!/usr/bin/env bash
# Holds a running usher to its own API description: starts usher on a fresh database and Redis
# key prefix (free ports on 127.0.0.1), creates a superuser, logs in, and runs schemathesis
# against /openapi.json with the superuser's token: no answer may be a 5xx, and every status,
# content type, header and body must be the documented one. A bounded number of examples per
# operation keeps it to a minute or two. Exits non-zero on any finding; usher is stopped and the
# database dropped either way. Extra arguments go to `schemathesis run`; SCHEMATHESIS_EXAMPLES
# (examples per operation, default 40) and SCHEMATHESIS_CHECKS (e.g. `all`) widen the run.
#
# Needs PostgreSQL and Redis on usher's default addresses (scripts/services.sh brings them up)
# and python3; installs schemathesis with pip when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh >/dev/null
if ! command -v schemathesis >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check schemathesis \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
            schemathesis
fi
cargo build --locked --quiet --bin usher
usher=target/debug/usher

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
api_port=$(free_port)
internal_port=$(free_port)
run_id="schemathesis_$$_$(date +%s)"
admin_url=${USHER_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

export USHER_DATABASE__URL="${admin_url%/*}/usher_${run_id}"
export USHER_REDIS__URL=${USHER_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}
export USHER_REDIS__PREFIX="usher-${run_id}:"
export USHER_LISTEN__API="127.0.0.1:${api_port}"
export USHER_LISTEN__INTERNAL="127.0.0.1:${internal_port}"
export USHER_LISTEN__DRAIN_DELAY=0s
# Cheap hashing and no per-address limit: schemathesis registers and logs in a lot.
export USHER_PASSWORDS__MEMORY_KIB=1024
export USHER_PASSWORDS__ITERATIONS=1
export USHER_LOGIN__PER_IP=0
export USHER_LOG__LEVEL=warn

log=$(mktemp)
usher_pid=
cleanup() {
    if [ -n "$usher_pid" ]; then
        kill "$usher_pid" 2>/dev/null || true
        wait "$usher_pid" 2>/dev/null || true
    fi
    psql -w -q "$admin_url" -c "drop database if exists \"usher_${run_id}\" with (force)" \
        >/dev/null 2>&1 || true
    redis-cli -u "$USHER_REDIS__URL" --scan --pattern "${USHER_REDIS__PREFIX}*" 2>/dev/null \
        | xargs -r redis-cli -u "$USHER_REDIS__URL" del >/dev/null 2>&1 || true
    rm -f "$log"
}
trap cleanup EXIT

"$usher" serve >"$log" 2>&1 &
usher_pid=$!
for _ in $(seq 1 150); do
    if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "http://127.0.0.1:${internal_port}/readyz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$usher_pid" 2>/dev/null; then
        cat "$log" >&2
        echo "schemathesis: usher did not start" >&2
        exit 1
    fi
    sleep 0.2
done

email=fuzz-admin@usher.test
password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
USHER_SUPERUSER_PASSWORD=$password "$usher" superuser create --email "$email" >/dev/null
token=$(python3 - "http://127.0.0.1:${api_port}/api/v1/auth/login" "$email" "$password" <<'PY'
import json, sys, urllib.request
url, email, password = sys.argv[1:]
body = json.dumps({"email": email, "password": password}).encode()
request = urllib.request.Request(url, body, {"content-type": "application/json"})
print(json.load(urllib.request.urlopen(request, timeout=10))["access_token"])
PY
)

checks=not_a_server_error,status_code_conformance,content_type_conformance
checks=${SCHEMATHESIS_CHECKS:-$checks,response_headers_conformance,response_schema_conformance}
common=(--checks "$checks" --max-examples "${SCHEMATHESIS_EXAMPLES:-40}" --seed 1
    --no-color --suppress-health-check all --generation-database none --workers 2)
status=0

# The API listener, as the superuser. Logging out would end the token the rest of the run
# uses, so the two logout operations are left to the integration tests.
schemathesis run "http://127.0.0.1:${api_port}/openapi.json" \
    --url "http://127.0.0.1:${api_port}" \
    -H "Authorization: Bearer ${token}" \
    --exclude-tag 'gateway (internal listener, port 9191)' \
    --exclude-operation-id logout --exclude-operation-id logoutAll \
    "${common[@]}" "$@" || status=1

# The internal listener: the HTTP checks, health, readiness and metrics (the gRPC check speaks
# protobuf, not what schemathesis generates; its own tests cover it).
schemathesis run "http://127.0.0.1:${api_port}/openapi.json" \
    --url "http://127.0.0.1:${internal_port}" \
    -H "Authorization: Bearer ${token}" \
    --include-tag 'gateway (internal listener, port 9191)' \
    --exclude-operation-id grpcCheck \
    "${common[@]}" "$@" || status=1

if grep -q 'ERROR' "$log"; then
    echo "schemathesis: usher logged errors:" >&2
    grep -m 20 'ERROR' "$log" >&2
    status=1
fi
exit $status
