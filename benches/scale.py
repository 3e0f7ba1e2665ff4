#!/usr/bin/env python3
"""Scale-out figures for the README's capacity planning: what PostgreSQL and Redis see per check,
per login and per refresh (read from their own statistics), and checks/s through Envoy with one,
two and three usher replicas behind it.

    python3 benches/scale.py                  # 3 alternating rounds of the curve, 5 s each
    python3 benches/scale.py --rounds 5 --duration 10
    python3 benches/scale.py --only ops       # only the per-operation counts

Uses run.py's helpers (its database, Redis prefix, ports and release build). Needs wrk, envoy,
psql and redis-cli, and PostgreSQL and Redis as for `usher serve`. Redis's counters are the
server's own, so run it while nothing else uses that Redis.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402  (the shared benchmark helpers)

REPLICAS = [(18110 + i, 19110 + i) for i in range(3)]  # (api, internal) of each replica
GATEWAY, ADMIN, UPSTREAM = 18120, 19120, 19121


def pg_transactions():
    """Transactions committed and rolled back in the benchmark's database (a statement sent
    outside a transaction counts as one). PostgreSQL publishes them within a second."""
    out = subprocess.run(["psql", "-At", f"{R.PG}/postgres", "-c",
                          "select xact_commit + xact_rollback, tup_returned, tup_fetched, "
                          "tup_inserted + tup_updated + tup_deleted "
                          f"from pg_stat_database where datname = '{R.db}'"],
                         capture_output=True, text=True, check=True).stdout.strip()
    xacts, returned, fetched, written = map(int, out.split("|"))
    return {"transactions": xacts, "rows_written": written, "rows_fetched": fetched}


def redis_commands():
    """Commands Redis has run, by name (INFO commandstats)."""
    out = subprocess.run(["redis-cli", "info", "commandstats"], capture_output=True, text=True,
                         check=True).stdout
    calls = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            fields = dict(kv.split("=") for kv in rest.split(","))
            if name not in ("info", "ping"):
                calls[name] = int(fields["calls"])
    return calls


def counted(action, ops):
    """What PostgreSQL and Redis saw per operation while `action` ran `ops` operations, less
    what they saw over the same time with usher idle."""
    def snapshot():
        # A backend publishes its statistics at most once a second while busy, and within
        # 10 s once idle (PostgreSQL 15): wait for the pool's idle connections to report.
        time.sleep(11)
        return pg_transactions(), redis_commands()

    pg0, rd0 = snapshot()
    t0 = time.monotonic()
    n = action() or ops
    elapsed = time.monotonic() - t0
    pg1, rd1 = snapshot()
    time.sleep(elapsed)  # the same time again, idle: background work to subtract
    pg2, rd2 = snapshot()
    per = {k: max(0, (pg1[k] - pg0[k]) - (pg2[k] - pg1[k])) / n for k in pg0}
    redis = {}
    for name in set(rd1) | set(rd0):
        busy = rd1.get(name, 0) - rd0.get(name, 0)
        idle = rd2.get(name, 0) - rd1.get(name, 0)
        if busy - idle > 0:
            redis[name] = (busy - idle) / n
    per["redis"] = dict(sorted(redis.items()))
    per["redis_total"] = sum(redis.values())
    per["ops"] = n
    return per


def ops_row(results):
    api, internal = REPLICAS[0]
    base = f"http://127.0.0.1:{api}"
    check = f"http://127.0.0.1:{internal}/ext_authz{R.PATH}"
    token = R.login_token(api)
    auth = {"authorization": f"Bearer {token['access_token']}"}
    R.http("GET", check, headers=auth)  # the token is verified and cached once

    def checks():
        out = subprocess.run(["wrk", "-t1", "-c8", "-d3s", "-H",
                              f"authorization: Bearer {token['access_token']}", check],
                             capture_output=True, text=True, check=True).stdout
        return int(next(line.split()[0] for line in out.splitlines() if "requests in" in line))

    def logins(n=20):
        for _ in range(n):
            R.login_token(api)
        return n

    def refreshes(n=300):
        current = R.login_token(api)["refresh_token"]
        for _ in range(n):
            status, body = R.http("POST", f"{base}/api/v1/auth/refresh", {"refresh_token": current})
            if status != 200:
                raise SystemExit(f"scale.py: refresh answered {status}: {body[:200]}")
            current = json.loads(body)["refresh_token"]
        return n

    def logouts(n=50):
        for _ in range(n):
            t = R.login_token(api)
            R.http("POST", f"{base}/api/v1/auth/logout",
                   headers={"authorization": f"Bearer {t['access_token']}"})
        return n

    results["ops"] = {"check": counted(checks, 0), "login": counted(logins, 20),
                      "refresh": counted(refreshes, 300)}
    # A logout includes its login; subtract one login to leave the logout's own share.
    out = counted(logouts, 50)
    login = results["ops"]["login"]
    for k in ("transactions", "rows_written", "rows_fetched", "redis_total"):
        out[k] = max(0.0, out[k] - login[k])
    out["redis"] = {c: max(0.0, v - login["redis"].get(c, 0)) for c, v in out["redis"].items()}
    out["redis"] = {c: v for c, v in out["redis"].items() if v > 0}
    results["ops"]["logout"] = out
    for name, o in results["ops"].items():
        R.log(f"{name}: {o['transactions']:.2f} PostgreSQL transactions, {o['rows_written']:.2f} rows "
              f"written, {o['redis_total']:.2f} Redis commands {o['redis']} (over {o['ops']})")


def envoy_for(n):
    """gateway-config/envoy.yaml rendered for replica 1 (`run.render_envoy`), then its two
    usher clusters widened to the first `n` replicas (each health-checked on its internal port)."""
    api, internal = REPLICAS[0]
    env = {"GATEWAY_PORT": str(GATEWAY), "ADMIN_PORT": str(ADMIN),
           "USHER_INTERNAL_HOST": "127.0.0.1", "USHER_INTERNAL_PORT": str(internal),
           "USHER_API_HOST": "127.0.0.1", "USHER_API_PORT": str(api),
           "UPSTREAM_HOST": "127.0.0.1", "UPSTREAM_PORT": str(UPSTREAM)}
    out = R.render_envoy(env, os.path.join(R.work, f"envoy-{n}.yaml"))
    text = open(out).read()

    def endpoint(port, check=None):
        s = ("              - endpoint:\n                  address:\n                    "
             f"socket_address: {{ address: 127.0.0.1, port_value: {port} }}\n")
        if check:
            s += f"                  health_check_config: {{ port_value: {check} }}\n"
        return s

    one_internal, one_api = endpoint(internal), endpoint(api, internal)
    assert one_internal in text and one_api in text, "envoy.yaml's endpoints changed shape"
    text = text.replace(one_internal, "".join(endpoint(i) for _, i in REPLICAS[:n]))
    text = text.replace(one_api, "".join(endpoint(a, i) for a, i in REPLICAS[:n]))
    open(out, "w").write(text)
    return out


def healthy(n):
    status, body = R.http("GET", f"http://127.0.0.1:{ADMIN}/clusters")
    text = body.decode()
    return all(f"usher_internal::127.0.0.1:{i}::health_flags::healthy" in text
               for _, i in REPLICAS[:n])


def curve_row(a, results):
    token = R.login_token(REPLICAS[0][0])["access_token"]
    url = f"http://127.0.0.1:{GATEWAY}{R.PATH}"
    rounds = []
    for r in range(a.rounds):
        got = {}
        for n in (1, 2, 3):
            gw = R.start(["envoy", "-c", envoy_for(n), "--concurrency", str(a.envoy_workers),
                          "--log-level", "error", "--base-id", str(GATEWAY + n)], name=f"envoy-{n}")
            R.wait_http(f"http://127.0.0.1:{ADMIN}/ready")
            deadline = time.monotonic() + 15
            while not healthy(n):
                if time.monotonic() > deadline:
                    raise SystemExit(f"scale.py: Envoy never saw {n} healthy replicas (logs in {R.work})")
                time.sleep(0.2)
            R.wrk(url, 1, a.connections, token)
            got[n] = R.wrk(url, a.duration, a.connections, token)
            R.stop(gw)
        rounds.append(got)
        R.log(f"curve round {r + 1}: " + ", ".join(f"{n} replica(s) {v:,.0f}/s" for n, v in got.items()))
    # One replica alone, straight to its internal listener: what a replica serves when it has
    # the machine to itself.
    direct = [R.wrk(f"http://127.0.0.1:{REPLICAS[0][1]}/ext_authz{R.PATH}", a.duration,
                    a.connections, token) for _ in range(a.rounds)]
    results["curve"] = {"rounds": rounds, "direct": direct}


def table(results):
    rows = []
    if "ops" in results:
        rows += ["| per | PostgreSQL transactions | rows written | rows read | Redis commands |",
                 "|---|---|---|---|---|"]
        for name, o in results["ops"].items():
            cmds = ", ".join(f"{c} {v:.2f}" for c, v in o["redis"].items()) or "none"
            rows.append(f"| {name} | {o['transactions']:.2f} | {o['rows_written']:.2f} | "
                        f"{o['rows_fetched']:.2f} | {o['redis_total']:.2f} ({cmds}) |")
        rows.append("")
    if "curve" in results:
        c = results["curve"]
        rows += ["| replicas behind Envoy | checks/s (median; spread) |", "|---|---|"]
        for n in ("1", "2", "3"):
            xs = [r[n] if n in r else r[int(n)] for r in c["rounds"]]
            rows.append(f"| {n} | **{R.med(xs):,.0f}** ({R.spread(xs)}) |")
        rows.append(f"| one replica, no Envoy | {R.med(c['direct']):,.0f} ({R.spread(c['direct'])}) |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="ops,curve")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--envoy-workers", type=int, default=2)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    only = set(a.only.split(","))
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "usher", "--example", "bare_hyper"],
                       cwd=R.ROOT, check=True)
    R.EMAIL = f"scale-{os.getpid()}@cinema.example"
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
               "args": vars(a)}
    try:
        for i, (api, internal) in enumerate(REPLICAS):
            R.start_usher(api, internal, f"usher-{i}")
        R.start([os.path.join(R.REL, "examples", "bare_hyper"), f"127.0.0.1:{UPSTREAM}"], name="upstream")
        R.wait_http(f"http://127.0.0.1:{UPSTREAM}/")
        api = REPLICAS[0][0]
        status, _ = R.http("POST", f"http://127.0.0.1:{api}/api/v1/auth/register",
                           {"email": R.EMAIL, "password": R.PASSWORD})
        assert status in (200, 201), status
        subprocess.run([os.environ.get("USHER_BIN", os.path.join(R.REL, "usher")), "roles", "grant", "user",
                        "films_watch"], env={**os.environ, **R.usher_env(api, REPLICAS[0][1])}, cwd=R.ROOT,
                       check=True, capture_output=True)
        time.sleep(0.5)
        if "ops" in only:
            ops_row(results)
        if "curve" in only:
            curve_row(a, results)
    finally:
        R.cleanup()
    with open(os.path.join(R.ROOT, "benches", "scale.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"## Scale-out ({results['date']}, {results['cores']} cores, {a.rounds} rounds)\n")
    print(table(results))


if __name__ == "__main__":
    main()
