#!/usr/bin/env bash
# Which ext_authz protocol is faster through Envoy: wrk → Envoy (one worker) → upstream, with
# the check done by
#   usher over HTTP   (gateway-config/envoy.yaml)
#   usher over gRPC   (gateway-config/envoy-grpc.yaml)
#   an allow-all HTTP stub (examples/bare_hyper) with envoy.yaml  — the HTTP protocol's floor
#   an allow-all gRPC stub (examples/grpc_allow) with envoy-grpc.yaml — the gRPC protocol's floor
#   no hop at all: Envoy's own jwt_authn filter, verifying usher's tokens against usher's JWKS
#   (signature and expiry only: no revocation, no permissions) — the no-network-hop limit.
# The upstream is examples/bare_hyper (empty 200). See BENCHMARKS.md.
#
#   bash benches/gateway.sh   # ROUNDS=3 DURATION=5s CONNECTIONS=32 THREADS=1 by default
#
# All five Envoys run at once (idle but for the one measured); each round measures every setup
# once, in an order rotated by one per round, and the best round of each counts (interference
# from the rest of the machine only ever lowers a figure). Compare figures of one run only.
# Needs wrk, envoy, PostgreSQL and Redis as for `usher serve`, curl, python3 (PyYAML) and psql.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
API_PORT=28080
INTERNAL_PORT=29191
UPSTREAM_PORT=29292
HTTP_STUB_PORT=29293
GRPC_STUB_PORT=29393
DB="usher_gwbench_$$"
PREFIX="usher-gwbench:$$:"
work=$(mktemp -d)
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql -q "$PG/postgres" -c "drop database if exists \"$DB\" with (force)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

for tool in wrk envoy curl python3 psql; do
    command -v "$tool" >/dev/null || { echo "gateway.sh: $tool is missing" >&2; exit 1; }
done
cargo build --release --quiet --bin usher --example bare_hyper --example grpc_allow

wait_http() { # url [expected status]
    for _ in $(seq 1 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = "${2:-200}" ] && return 0
        sleep 0.1
    done
    echo "gateway.sh: $1 did not answer ${2:-200}" >&2
    exit 1
}

USHER_DATABASE__URL="$PG/$DB" USHER_REDIS__PREFIX="$PREFIX" \
USHER_LISTEN__API=127.0.0.1:$API_PORT USHER_LISTEN__INTERNAL=127.0.0.1:$INTERNAL_PORT \
USHER_LOG__LEVEL=warn target/release/usher serve 2>"$work/usher.log" &
pids+=($!)
target/release/examples/bare_hyper 127.0.0.1:$UPSTREAM_PORT & pids+=($!)
target/release/examples/bare_hyper 127.0.0.1:$HTTP_STUB_PORT & pids+=($!)
target/release/examples/grpc_allow 127.0.0.1:$GRPC_STUB_PORT & pids+=($!)
wait_http "http://127.0.0.1:$INTERNAL_PORT/healthz"
wait_http "http://127.0.0.1:$UPSTREAM_PORT/"

email="gwbench-$$@cinema.example"
curl -fs "http://127.0.0.1:$API_PORT/api/v1/auth/register" -H 'content-type: application/json' \
    -d "{\"email\":\"$email\",\"password\":\"benchmark password\"}" >/dev/null
USHER_DATABASE__URL="$PG/$DB" USHER_REDIS__PREFIX="$PREFIX" \
    target/release/usher roles grant user films_watch >/dev/null
token=$(curl -fs "http://127.0.0.1:$API_PORT/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"email\":\"$email\",\"password\":\"benchmark password\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
curl -fs "http://127.0.0.1:$API_PORT/.well-known/jwks.json" >"$work/jwks.json"

# setup name, template, check port; gateway port and admin port by position.
setups=(usher-http usher-grpc stub-http stub-grpc jwt-authn)
declare -A template=([usher-http]=envoy.yaml [usher-grpc]=envoy-grpc.yaml [stub-http]=envoy.yaml
                     [stub-grpc]=envoy-grpc.yaml [jwt-authn]=envoy.yaml)
declare -A check_port=([usher-http]=$INTERNAL_PORT [usher-grpc]=$INTERNAL_PORT
                       [stub-http]=$HTTP_STUB_PORT [stub-grpc]=$GRPC_STUB_PORT
                       [jwt-authn]=$INTERNAL_PORT)
declare -A port
i=0
for name in "${setups[@]}"; do
    port[$name]=$((28001 + i))
    config="$work/$name.yaml"
    GATEWAY_PORT=${port[$name]} ADMIN_PORT=$((29901 + i)) \
    USHER_INTERNAL_HOST=127.0.0.1 USHER_INTERNAL_PORT=${check_port[$name]} \
    USHER_API_HOST=127.0.0.1 USHER_API_PORT=$API_PORT \
    UPSTREAM_HOST=127.0.0.1 UPSTREAM_PORT=$UPSTREAM_PORT \
        sh gateway-config/render.sh "gateway-config/${template[$name]}" "$config"
    if [ "$name" = jwt-authn ]; then
        # envoy.yaml with its filters replaced by jwt_authn (usher's JWKS inline) and the router.
        python3 - "$config" "$work/jwks.json" <<'PY'
import json, sys, yaml
path, jwks = sys.argv[1], open(sys.argv[2]).read()
config = yaml.safe_load(open(path))
hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
router = hcm["http_filters"][-1]
hcm["http_filters"] = [{
    "name": "envoy.filters.http.jwt_authn",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"usher": {
            "local_jwks": {"inline_string": jwks},
            "forward": True,
            "claim_to_headers": [{"header_name": "x-user-id", "claim_name": "sub"}],
        }},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "usher"}}],
    },
}, router]
json.dump(config, open(path, "w"))
PY
    fi
    envoy -c "$config" --concurrency 1 --base-id $((29901 + i)) --log-level error \
        >/dev/null 2>"$work/$name.log" &
    pids+=($!)
    i=$((i + 1))
done

path=/api/v1/films/42/stream
for name in "${setups[@]}"; do
    url="http://127.0.0.1:${port[$name]}$path"
    for _ in $(seq 1 100); do
        status=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" "$url" || true)
        [ "$status" = 200 ] && break
        sleep 0.1
    done
    [ "$status" = 200 ] || { echo "gateway.sh: $name answered $status" >&2; cat "$work/$name.log" >&2; exit 1; }
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "authorization: Bearer $token" "$url" >/dev/null
done

declare -A runs best p50 p99
for round in $(seq 1 "$ROUNDS"); do
    n=${#setups[@]}
    for k in $(seq 0 $((n - 1))); do
        name=${setups[$(((k + round - 1) % n))]}
        out="$work/$name.$round.txt"
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
            -H "authorization: Bearer $token" "http://127.0.0.1:${port[$name]}$path" >"$out"
        if grep -q 'Non-2xx' "$out"; then
            echo "gateway.sh: $name: $(grep 'Non-2xx' "$out")" >&2
        fi
        rps=$(awk '/Requests\/sec/ {print $2}' "$out")
        runs[$name]="${runs[$name]:-} $rps"
        if [ -z "${best[$name]:-}" ] || python3 -c "import sys; sys.exit(not $rps > ${best[$name]})"; then
            best[$name]=$rps
            p50[$name]=$(awk '$1 == "50%" {print $2}' "$out")
            p99[$name]=$(awk '$1 == "99%" {print $2}' "$out")
        fi
    done
done

pct() { python3 -c "print(f'{100 * $1 / $2:.0f} %')"; }
echo "## Envoy ext_authz protocols ($(date -u +%Y-%m-%d), $(nproc) cores, Envoy --concurrency 1, wrk -c$CONNECTIONS, best of $ROUNDS × $DURATION)"
echo
echo "| setup | requests/s (best) | runs | p50 / p99 (best run) | of the same protocol's stub | of jwt_authn |"
echo "|---|---|---|---|---|---|"
for name in "${setups[@]}"; do
    case $name in
        *-http) stub=${best[stub-http]} ;;
        *-grpc) stub=${best[stub-grpc]} ;;
        *) stub=${best[$name]} ;;
    esac
    echo "| $name | ${best[$name]} |${runs[$name]} | ${p50[$name]} / ${p99[$name]} | $(pct "${best[$name]}" "$stub") | $(pct "${best[$name]}" "${best[jwt-authn]}") |"
done
echo
echo "usher over gRPC / usher over HTTP: $(pct "${best[usher-grpc]}" "${best[usher-http]}")"
echo "gRPC stub / HTTP stub: $(pct "${best[stub-grpc]}" "${best[stub-http]}")"
