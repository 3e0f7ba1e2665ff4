#!/usr/bin/env bash
# Load benchmark of the gateway check endpoint, as a ratio against a bare hyper server measured
# in the same run on the same machine (see BENCHMARKS.md).
#
#   bash benches/load.sh    # ROUNDS=3 DURATION=5s CONNECTIONS=64 THREADS=1 RATE=5000 PIN=0 by default
#
# Needs wrk (Debian package), PostgreSQL and Redis as for `usher serve`, curl, python3 and psql.
# 1. throughput: wrk at full speed against the bare server, then against usher's /ext_authz
#    with a valid token (warm cache), ROUNDS times in turn; the best of each counts, since
#    interference from the rest of the machine only ever lowers a figure;
# 2. latency at a fixed rate: wrk paced to RATE requests/s (a delay per request), with --latency.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
RATE=${RATE:-5000}
# PIN=1 puts the servers on CPU 0 and wrk on CPU 1, so that they do not take turns on one core:
# steadier figures, per-core throughput.
PIN=${PIN:-0}
server_cpu=(); client_cpu=()
if [ "$PIN" = 1 ]; then server_cpu=(taskset -c 0); client_cpu=(taskset -c 1); fi
PG=${PG:-postgres://postgres@127.0.0.1:5432}
API=127.0.0.1:18080
INTERNAL=127.0.0.1:19191
BARE=127.0.0.1:19292
DB="usher_bench_$$"
PREFIX="usher-bench:$$:"
work=$(mktemp -d)

cleanup() {
    [ -n "${usher_pid:-}" ] && kill "$usher_pid" 2>/dev/null || true
    [ -n "${bare_pid:-}" ] && kill "$bare_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    psql -q "$PG/postgres" -c "drop database if exists \"$DB\" with (force)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

command -v wrk >/dev/null || { echo "load.sh: wrk is missing (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet --bin usher --example bare_hyper

wait_http() {
    for _ in $(seq 1 100); do
        curl -fs "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "load.sh: $1 did not answer" >&2
    exit 1
}

USHER_DATABASE__URL="$PG/$DB" USHER_REDIS__PREFIX="$PREFIX" \
USHER_LISTEN__API=$API USHER_LISTEN__INTERNAL=$INTERNAL USHER_LOG__LEVEL=warn \
    "${server_cpu[@]}" target/release/usher serve 2>"$work/usher.log" &
usher_pid=$!
"${server_cpu[@]}" target/release/examples/bare_hyper $BARE &
bare_pid=$!
wait_http "http://$INTERNAL/healthz"
wait_http "http://$BARE/"

email="bench-$$@cinema.example"
curl -fs "http://$API/api/v1/auth/register" -H 'content-type: application/json' \
    -d "{\"email\":\"$email\",\"password\":\"benchmark password\"}" >/dev/null
# The benchmark user may watch films.
USHER_DATABASE__URL="$PG/$DB" USHER_REDIS__PREFIX="$PREFIX" \
    target/release/usher roles grant user films_watch >/dev/null
token=$(curl -fs "http://$API/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"email\":\"$email\",\"password\":\"benchmark password\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
path=/ext_authz/api/v1/films/42/stream
status=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" "http://$INTERNAL$path")
[ "$status" = 200 ] || { echo "load.sh: the check answered $status, not 200" >&2; cat "$work/usher.log" >&2; exit 1; }

cat > "$work/pace.lua" <<LUA
-- each connection waits so that all of them together send about RATE requests a second
local gap_ms = 1000 * $CONNECTIONS / $RATE
function delay() return gap_ms end
LUA

rps() { awk '/Requests\/sec/ {print $2}'; }
run() { # name url [extra wrk args]
    local name=$1 url=$2; shift 2
    "${client_cpu[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -H "authorization: Bearer $token" "$@" "$url" >"$work/$name.txt"
}

run warmup "http://$INTERNAL$path" -d2s
bare_all=(); usher_all=()
for round in $(seq 1 "$ROUNDS"); do
    run "bare$round" "http://$BARE$path"
    run "usher$round" "http://$INTERNAL$path"
    bare_all+=("$(rps <"$work/bare$round.txt")")
    usher_all+=("$(rps <"$work/usher$round.txt")")
done
run paced "http://$INTERNAL$path" --latency -s "$work/pace.lua"

best() { printf '%s\n' "$@" | sort -g | tail -n 1; }
bare_rps=$(best "${bare_all[@]}")
usher_rps=$(best "${usher_all[@]}")
ratio=$(python3 -c "print(f'{100 * $usher_rps / $bare_rps:.1f}')")
echo "## check endpoint, valid token, warm cache ($(date -u +%Y-%m-%d), $(nproc) cores, PIN=$PIN, best of $ROUNDS × $DURATION)"
echo
echo "| server | requests/s |"
echo "|---|---|"
echo "| bare hyper (reference) | $bare_rps (runs: ${bare_all[*]}) |"
echo "| usher /ext_authz | $usher_rps (runs: ${usher_all[*]}) |"
echo "| ratio | $ratio % (target ≥ 85 %) |"
echo
echo "Latency at about $RATE requests/s (wrk paced, --latency):"
echo
echo '```'
sed -n '/Latency Distribution/,/requests in/p' "$work/paced.txt"
awk '/Requests\/sec/' "$work/paced.txt"
echo '```'
non2xx=$(cat "$work"/usher*.txt | awk '/Non-2xx/ {print $NF}')
[ -z "$non2xx" ] || echo "warning: $non2xx non-2xx answers from usher" >&2
