#!/usr/bin/env python3
"""Runs every row of the spec's performance table and prints BENCHMARKS.md's table.

    python3 benches/run.py                 # all rows, 3 alternating rounds (a few minutes)
    python3 benches/run.py --only check,login --rounds 5
    python3 benches/run.py --only check --pin   # servers on CPU 0, wrk on CPU 1
    USHER_BIN=path/to/other/usher python3 benches/run.py --only latency   # another build

Rows (names for --only): check, latency, login, refresh, memory, envoy, reach.
Every ratio is taken within one round (reference and usher back to back, same connections);
the table gives the median over the rounds and the spread (min-max). It also writes
benches/latency.svg: check p99 against offered load, quiet and under a login storm, and
benches/results.json with every round.

Needs: wrk, envoy (envoy rows), psql, PostgreSQL and Redis as for `usher serve`.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
PG = os.environ.get("PG", "postgres://postgres@127.0.0.1:5432")
PATH = "/api/v1/films/42/stream"
PASSWORD = "benchmark password"
PORTS = {"api": 18080, "internal": 19191, "bare": 19292, "api_b": 18081, "internal_b": 19192,
         "mem_api": 18082, "mem_internal": 19193, "stub": 19293, "upstream": 19294,
         "gw_stub": 18100, "gw_usher": 18101, "gw_jwt": 18102,
         "adm_stub": 19900, "adm_usher": 19901, "adm_jwt": 19902}

procs = []
SERVERS = {}
work = tempfile.mkdtemp(prefix="usher-bench-")
db = f"usher_bench_{os.getpid()}"
prefix = f"usher-bench:{os.getpid()}:"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def start(cmd, env=None, name="proc"):
    out = open(os.path.join(work, name + ".log"), "w")
    p = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=out,
                         cwd=ROOT, start_new_session=True)
    procs.append(p)
    return p


def stop(p):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def cleanup():
    for p in procs:
        stop(p)
    subprocess.run(["psql", "-q", f"{PG}/postgres", "-c",
                    f'drop database if exists "{db}" with (force)'], capture_output=True)


def http(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http(url):
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"run.py: {url} did not answer (logs in {work})")


def usher_env(api, internal, **extra):
    env = {"USHER_DATABASE__URL": f"{PG}/{db}", "USHER_REDIS__PREFIX": prefix,
           "USHER_LISTEN__API": f"127.0.0.1:{api}", "USHER_LISTEN__INTERNAL": f"127.0.0.1:{internal}",
           "USHER_LOG__LEVEL": "warn",
           # One client address sends every login of the benchmark.
           "USHER_LOGIN__PER_IP": "0"}
    env.update(extra)
    return env


def start_usher(api, internal, name, **extra):
    p = start([os.environ.get("USHER_BIN", os.path.join(REL, "usher")), "serve"],
              usher_env(api, internal, **extra), name)
    wait_http(f"http://127.0.0.1:{internal}/healthz")
    return p


def loadgen(*args):
    out = subprocess.run([os.path.join(REL, "examples", "loadgen"), *map(str, args)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def loadgen_bg(*args):
    out = open(os.path.join(work, f"bg-{time.monotonic_ns()}.json"), "w+")
    p = subprocess.Popen([os.path.join(REL, "examples", "loadgen"), *map(str, args)],
                         stdout=out, stderr=subprocess.DEVNULL)
    return p, out


def wrk(url, seconds, connections, token=None, cpu=None):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url]
    if token:
        cmd[1:1] = ["-H", f"authorization: Bearer {token}"]
    if cpu is not None:
        cmd[0:0] = ["taskset", "-c", str(cpu)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = next(float(line.split()[1]) for line in out.splitlines() if line.startswith("Requests/sec"))
    non2xx = [line for line in out.splitlines() if "Non-2xx" in line]
    if non2xx:
        log(f"warning: {url}: {non2xx[0].strip()}")
    return rps


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs, fmt="{:,.0f}"):
    return f"{fmt.format(min(xs))}–{fmt.format(max(xs))}" if xs else "–"


def login_token(api):
    status, body = http("POST", f"http://127.0.0.1:{api}/api/v1/auth/login",
                        {"email": EMAIL, "password": PASSWORD})
    if status != 200:
        raise SystemExit(f"run.py: login answered {status}: {body[:200]}")
    return json.loads(body)


# --- rows -----------------------------------------------------------------------------------

def pin(p, cpus):
    """Moves every thread of `p` to `cpus` (a taskset list such as "0" or "0-1")."""
    subprocess.run(["taskset", "-a", "-cp", cpus, str(p.pid)], capture_output=True, check=True)


def row_check(a, token, results):
    usher = f"http://127.0.0.1:{PORTS['internal']}/ext_authz{PATH}"
    bare = f"http://127.0.0.1:{PORTS['bare']}{PATH}"
    # --pin: both servers on CPU 0 and wrk on CPU 1, so that the server and the load generator
    # do not take turns on the same core (what made unpinned ratios swing between rounds).
    wrk_cpu = None
    if a.pin:
        all_cpus = f"0-{(os.cpu_count() or 2) - 1}"
        for p in (SERVERS["usher"], SERVERS["bare"]):
            pin(p, "0")
        wrk_cpu = 1
    try:
        wrk(usher, 1, a.connections, token, wrk_cpu)
        rounds = []
        for r in range(a.rounds):
            b = wrk(bare, a.duration, a.connections, token, wrk_cpu)
            u = wrk(usher, a.duration, a.connections, token, wrk_cpu)
            rounds.append({"bare": b, "usher": u, "ratio": u / b, "pinned": a.pin})
            log(f"check round {r + 1}: bare {b:,.0f}/s, usher {u:,.0f}/s, {100 * u / b:.1f} %"
                + (" (pinned)" if a.pin else ""))
    finally:
        if a.pin:
            for p in (SERVERS["usher"], SERVERS["bare"]):
                pin(p, all_cpus)
    results["check"] = rounds


def row_latency(a, token, results):
    url = f"http://127.0.0.1:{PORTS['internal']}/ext_authz{PATH}"
    login = f"http://127.0.0.1:{PORTS['api']}/api/v1/auth/login"
    body = json.dumps({"email": STORM_EMAIL, "password": PASSWORD})
    header = f"authorization: Bearer {token}"
    rates = [int(x) for x in a.rates.split(",")]
    quiet = {r: [] for r in rates}
    storm = {r: [] for r in rates}
    storm_rates = []
    for rnd in range(a.rounds):
        for rate in rates:
            quiet[rate].append(loadgen("paced", url, rate, a.sweep, 64, header))
        length = len(rates) * (a.sweep + 0.6) + 1.5
        p, out = loadgen_bg("storm", login, body, length, a.storm_clients)
        time.sleep(1.0)  # the storm fills the hashing pool
        for rate in rates:
            storm[rate].append(loadgen("paced", url, rate, a.sweep, 64, header))
        p.wait()
        out.seek(0)
        s = json.loads(out.read().strip() or "{}")
        storm_rates.append(s)
        log(f"latency round {rnd + 1}: p99 quiet "
            + ", ".join(f"{r}: {quiet[r][-1]['p99']:.2f}" for r in rates)
            + " | storm " + ", ".join(f"{r}: {storm[r][-1]['p99']:.2f}" for r in rates)
            + f" ms | storm logins {s.get('rate', 0):.1f}/s, busy {s.get('busy')}, other {s.get('other')}")
    results["latency"] = {"quiet": quiet, "storm": storm, "storm_logins": storm_rates}


def row_login(a, results, params):
    login = f"http://127.0.0.1:{PORTS['api']}/api/v1/auth/login"
    body = json.dumps({"email": STORM_EMAIL, "password": PASSWORD})
    threads = os.cpu_count() or 2
    rounds = []
    for r in range(a.rounds):
        alloc = loadgen_raw(params, threads, a.duration, "alloc")
        reuse = loadgen_raw(params, threads, a.duration, "reuse")
        got = loadgen("storm", login, body, a.duration, a.storm_clients)
        raw = max(alloc, reuse, key=lambda x: x["rate"])
        rounds.append({"raw": raw["rate"], "raw_alloc": alloc["rate"], "raw_reuse": reuse["rate"],
                       "login": got["rate"], "ratio": got["rate"] / raw["rate"],
                       "busy": got["busy"], "other": got["other"]})
        log(f"login round {r + 1}: raw Argon2id {alloc['rate']:.1f}/s allocating, {reuse['rate']:.1f}/s "
            f"reusing memory; login {got['rate']:.1f}/s "
            f"({100 * got['rate'] / raw['rate']:.1f} %), busy {got['busy']}, other {got['other']}")
    results["login"] = rounds


def loadgen_raw(params, threads, seconds, mode):
    out = subprocess.run([os.path.join(REL, "examples", "argon2_rate"), str(params["memory_kib"]),
                          str(params["iterations"]), str(params["parallelism"]), str(threads),
                          str(seconds), mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def row_refresh(a, results):
    api = f"http://127.0.0.1:{PORTS['api']}"
    rounds = []
    for r in range(a.rounds):
        got = loadgen("refresh", api, EMAIL, PASSWORD, a.duration, a.refresh_chains)
        rounds.append(got)
        log(f"refresh round {r + 1}: {got['rate']:.0f}/s ({got['failed']} chains broken)")
    results["refresh"] = rounds


def row_memory(a, results):
    count = a.sessions
    p = start_usher(PORTS["mem_api"], PORTS["mem_internal"], "usher-mem")
    time.sleep(1.5)  # the startup hash's memory is returned after a second idle
    before = rss_kib(p.pid)
    tokens = os.path.join(work, "tokens.txt")
    with open(tokens, "w") as f:
        subprocess.run([os.path.join(REL, "examples", "mint_sessions"), str(count)], check=True,
                       stdout=f, env={**os.environ, **usher_env(0, 0)}, cwd=ROOT)
    url = f"http://127.0.0.1:{PORTS['mem_internal']}/ext_authz{PATH}"
    filled = loadgen("fill", url, tokens, 32)
    after_fill = rss_kib(p.pid)
    again = loadgen("fill", url, tokens, 32)  # every token now a cache hit
    after = rss_kib(p.pid)
    stop(p)
    per_entry = subprocess.run([os.path.join(REL, "examples", "cache_cost"), str(count)],
                               capture_output=True, text=True, check=True).stdout
    results["memory"] = {"sessions": count, "rss_idle_kib": before, "rss_filled_kib": after_fill,
                         "rss_kib": after, "fill": filled, "again": again, "per_entry": per_entry}
    log(f"memory: idle {before / 1024:.1f} MiB, {count} sessions cached {after / 1024:.1f} MiB "
        f"(fill {filled}, again {again})")
    stop(p)


ENVOY_JWT = """                  - name: envoy.filters.http.jwt_authn
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
                      providers:
                        usher:
                          issuer: usher
                          forward: true
                          local_jwks:
                            inline_string: '{jwks}'
                      rules:
                        - match: {{ prefix: / }}
                          requires: {{ provider_name: usher }}
"""


def render_envoy(env, out, swap=None):
    """gateway-config/envoy.yaml rendered by render.sh into `out` with the placeholders in
    `env`, its access log off (it would cost every variant the same); `swap` maps the first line
    of a block (stripped) to the text that replaces the whole block."""
    subprocess.run(["sh", os.path.join(ROOT, "gateway-config", "render.sh"),
                    os.path.join(ROOT, "gateway-config", "envoy.yaml"), out],
                   env={**os.environ, **env}, check=True)
    swap = {"access_log:": "", **(swap or {})}
    kept, skip_indent = [], None
    for line in open(out).read().split("\n"):
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if line.strip() and indent <= skip_indent:
                skip_indent = None
            else:
                continue
        if line.strip() in swap:
            skip_indent = indent
            if swap[line.strip()]:
                kept.append(swap[line.strip()].rstrip("\n"))
            continue
        kept.append(line)
    open(out, "w").write("\n".join(kept))
    return out


def envoy_config(variant, jwks):
    """The gateway for `variant`: usher (or the allow-all stub) as its ext_authz, or for `jwt`
    the ext_authz filter replaced by jwt_authn."""
    authz = PORTS["stub"] if variant == "stub" else PORTS["internal"]
    env = {"GATEWAY_PORT": str(PORTS[f"gw_{variant}"]), "ADMIN_PORT": str(PORTS[f"adm_{variant}"]),
           "USHER_INTERNAL_HOST": "127.0.0.1", "USHER_INTERNAL_PORT": str(authz),
           "USHER_API_HOST": "127.0.0.1", "USHER_API_PORT": str(PORTS["api"]),
           "UPSTREAM_HOST": "127.0.0.1", "UPSTREAM_PORT": str(PORTS["upstream"])}
    swap = {"- name: envoy.filters.http.ext_authz": ENVOY_JWT.format(jwks=jwks)} if variant == "jwt" else None
    return render_envoy(env, os.path.join(work, f"envoy-{variant}.yaml"), swap)


def row_envoy(a, token, results):
    status, jwks = http("GET", f"http://127.0.0.1:{PORTS['api']}/.well-known/jwks.json")
    jwks = json.dumps(json.loads(jwks))
    variants = ["stub", "usher", "jwt"]
    gws = []
    for v in variants:
        cfg = envoy_config(v, jwks)
        gws.append(start(["envoy", "-c", cfg, "--concurrency", "1", "--log-level", "error",
                          "--base-id", str(PORTS[f"gw_{v}"])], name=f"envoy-{v}"))
    for v in variants:
        wait_http(f"http://127.0.0.1:{PORTS[f'adm_{v}']}/ready")
        url = f"http://127.0.0.1:{PORTS[f'gw_{v}']}{PATH}"
        status, body = http("GET", url, headers={"authorization": f"Bearer {token}"})
        if status != 200:
            raise SystemExit(f"run.py: Envoy ({v}) answered {status}: {body[:300]} (logs in {work})")
        wrk(url, 1, a.connections, token)
    rounds = []
    for r in range(a.rounds):
        got = {v: wrk(f"http://127.0.0.1:{PORTS[f'gw_{v}']}{PATH}", a.duration, a.connections, token)
               for v in variants}
        got["ratio"] = got["usher"] / got["stub"]
        got["jwt_ratio"] = got["jwt"] / got["stub"]
        rounds.append(got)
        log(f"envoy round {r + 1}: stub {got['stub']:,.0f}/s, usher {got['usher']:,.0f}/s "
            f"({100 * got['ratio']:.1f} %), jwt_authn {got['jwt']:,.0f}/s ({100 * got['jwt_ratio']:.1f} %)")
    for p in gws:
        stop(p)
    results["envoy"] = rounds


def row_reach(a, results):
    """Logout on replica A, then replica B polled until it refuses the token; both replicas
    serve a paced 5,000 checks/s meanwhile (with a token of their own)."""
    b = start_usher(PORTS["api_b"], PORTS["internal_b"], "usher-b")
    url_a = f"http://127.0.0.1:{PORTS['internal']}/ext_authz{PATH}"
    url_b = f"http://127.0.0.1:{PORTS['internal_b']}/ext_authz{PATH}"
    load_token = login_token(PORTS["api"])["access_token"]
    samples = a.reach_samples
    tokens = [login_token(PORTS["api"]) for _ in range(samples)]
    length = samples * 0.5 + 3
    header = f"authorization: Bearer {load_token}"
    bg = [loadgen_bg("paced", u, 5000, length, 64, header) for u in (url_a, url_b)]
    time.sleep(0.5)
    reach = []
    for t in tokens:
        auth = {"authorization": f"Bearer {t['access_token']}"}
        status, _ = http("GET", url_b, headers=auth)
        if status != 200:
            raise SystemExit(f"run.py: replica B answered {status} before the logout")
        http("POST", f"http://127.0.0.1:{PORTS['api']}/api/v1/auth/logout", headers=auth)
        t0 = time.monotonic()
        while http("GET", url_b, headers=auth)[0] == 200:
            if time.monotonic() - t0 > 5:
                break
        reach.append(1000 * (time.monotonic() - t0))
        time.sleep(0.3)
    loads = []
    for p, out in bg:
        p.wait()
        out.seek(0)
        loads.append(json.loads(out.read().strip() or "{}"))
    stop(b)
    reach.sort()
    results["reach"] = {"ms": reach, "load": loads}
    log(f"reach: median {med(reach):.1f} ms, max {max(reach):.1f} ms over {len(reach)} logouts; "
        f"load served {[round(l.get('served', 0)) for l in loads]}/s")


# --- output -----------------------------------------------------------------------------------

def table(results, a):
    rows = ["| what | target | measured (median of rounds; spread) | |", "|---|---|---|---|"]
    if "check" in results:
        c = results["check"]
        r = [x["ratio"] * 100 for x in c]
        rows.append(f"| check endpoint vs bare hyper | ≥ 85 % | **{med(r):.1f} %** ({spread(r, '{:.1f}')} %); "
                    f"usher {med([x['usher'] for x in c]):,.0f}/s, bare {med([x['bare'] for x in c]):,.0f}/s | "
                    f"{'met' if med(r) >= 85 else 'not met'} |")
    if "latency" in results:
        lat = results["latency"]
        q = [x["p99"] for x in lat["quiet"].get(5000, lat["quiet"].get("5000", []))]
        s = [x["p99"] for x in lat["storm"].get(5000, lat["storm"].get("5000", []))]
        qs = [x["served"] for x in lat["quiet"].get(5000, [])]
        ss = [x["served"] for x in lat["storm"].get(5000, [])]
        ls = [x.get("rate", 0) for x in lat["storm_logins"]]
        if q:
            rows.append(f"| check p99 at 5,000/s, quiet | < 1 ms | **{med(q):.2f} ms** ({spread(q, '{:.2f}')}); "
                        f"served {med(qs):,.0f}/s | {'met' if med(q) < 1 else 'not met'} |")
        if s:
            rows.append(f"| check p99 at 5,000/s, logins saturating hashing | < 2 ms | **{med(s):.2f} ms** "
                        f"({spread(s, '{:.2f}')}); served {med(ss):,.0f}/s; logins meanwhile "
                        f"{med(ls):.1f}/s | {'met' if med(s) < 2 else 'not met'} |")
    if "envoy" in results:
        e = results["envoy"]
        r = [x["ratio"] * 100 for x in e]
        j = [x["jwt_ratio"] * 100 for x in e]
        rows.append(f"| Envoy + usher vs Envoy + stub (HTTP) | ≥ 95 % | **{med(r):.1f} %** ({spread(r, '{:.1f}')} %); "
                    f"usher {med([x['usher'] for x in e]):,.0f}/s, stub {med([x['stub'] for x in e]):,.0f}/s; "
                    f"Envoy jwt_authn {med(j):.0f} % of stub | {'met' if med(r) >= 95 else 'not met'} |")
    if "login" in results:
        lg = results["login"]
        r = [x["ratio"] * 100 for x in lg]
        rows.append(f"| login vs raw Argon2id | ≥ 85 % | **{med(r):.1f} %** ({spread(r, '{:.1f}')} %); "
                    f"login {med([x['login'] for x in lg]):.1f}/s, raw {med([x['raw'] for x in lg]):.1f}/s "
                    f"(the faster of allocating {med([x['raw_alloc'] for x in lg]):.1f}/s and reusing memory "
                    f"{med([x['raw_reuse'] for x in lg]):.1f}/s) | "
                    f"{'met' if med(r) >= 85 else 'not met'} |")
    if "refresh" in results:
        f = [x["rate"] for x in results["refresh"]]
        rows.append(f"| refresh, one-use chains | ≥ 1,500/s | **{med(f):,.0f}/s** ({spread(f)}) | "
                    f"{'met' if med(f) >= 1500 else 'not met'} |")
    if "memory" in results:
        m = results["memory"]
        mib = m["rss_kib"] / 1024
        per = (m["rss_filled_kib"] - m["rss_idle_kib"]) * 1024 / m["sessions"]
        rows.append(f"| RSS, {m['sessions']:,} sessions cached | ≤ 64 MiB | **{mib:.1f} MiB** "
                    f"(idle {m['rss_idle_kib'] / 1024:.1f} MiB; ≈ {per:,.0f} B per session) | "
                    f"{'met' if mib <= 64 else 'not met'} |")
    if "reach" in results:
        ms = results["reach"]["ms"]
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        rows.append(f"| revocation reach A → B at 5,000 checks/s each | p99 < 50 ms | **p99 {p99:.1f} ms** "
                    f"(median {med(ms):.1f} ms, {len(ms)} logouts) | {'met' if p99 < 50 else 'not met'} |")
    return "\n".join(rows)


def svg(results, path):
    lat = results["latency"]
    rates = sorted(int(r) for r in lat["quiet"])
    series = {"quiet": [med([x["p99"] for x in lat["quiet"][r]]) for r in rates],
              "login storm": [med([x["p99"] for x in lat["storm"][r]]) for r in rates]}
    w, h, left, bottom, top, right = 640, 400, 60, 50, 30, 20
    ymax = max(2.5, max(max(v) for v in series.values()) * 1.1)
    xs = lambda i: left + i * (w - left - right) / max(1, len(rates) - 1)
    ys = lambda v: h - bottom - min(v, ymax) * (h - bottom - top) / ymax
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="14">check endpoint p99 latency vs offered load (median of rounds)</text>']
    step = 0.5 if ymax <= 5 else (1 if ymax <= 10 else 5)
    y = 0.0
    while y <= ymax:
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{ys(y):.1f}" y2="{ys(y):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{ys(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
        y += step
    for target, label in ((1, "target quiet"), (2, "target under storm")):
        if target <= ymax:
            out.append(f'<line x1="{left}" x2="{w - right}" y1="{ys(target):.1f}" y2="{ys(target):.1f}" '
                       f'stroke="#999" stroke-dasharray="4 4"/>')
            out.append(f'<text x="{w - right - 4}" y="{ys(target) - 4:.1f}" text-anchor="end" fill="#666">{label}</text>')
    for i, r in enumerate(rates):
        out.append(f'<text x="{xs(i):.1f}" y="{h - bottom + 18}" text-anchor="middle">{r:,}</text>')
    out.append(f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">offered checks/s (paced, 64 connections)</text>')
    out.append(f'<text x="16" y="{h / 2}" text-anchor="middle" transform="rotate(-90 16 {h / 2})">p99 (ms)</text>')
    for (name, values), colour in zip(series.items(), ("#1f77b4", "#d62728")):
        pts = " ".join(f"{xs(i):.1f},{ys(v):.1f}" for i, v in enumerate(values))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for i, v in enumerate(values):
            out.append(f'<circle cx="{xs(i):.1f}" cy="{ys(v):.1f}" r="3" fill="{colour}"/>')
        k = list(series).index(name)
        out.append(f'<rect x="{left + 10}" y="{top + 6 + 18 * k}" width="12" height="3" fill="{colour}"/>')
        out.append(f'<text x="{left + 28}" y="{top + 11 + 18 * k}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    global EMAIL, STORM_EMAIL
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="check,latency,login,refresh,memory,envoy,reach")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per throughput run")
    ap.add_argument("--sweep", type=float, default=3, help="seconds per paced-latency run")
    ap.add_argument("--rates", default="1000,2000,5000,10000,20000")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--storm-clients", type=int, default=16)
    ap.add_argument("--refresh-chains", type=int, default=32)
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--reach-samples", type=int, default=20)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--pin", action="store_true",
                    help="check row: both servers on CPU 0, wrk on CPU 1 (needs taskset)")
    a = ap.parse_args()
    only = set(a.only.split(","))
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "usher", "--example", "bare_hyper",
                        "--example", "loadgen", "--example", "argon2_rate", "--example", "mint_sessions", "--example", "cache_cost"],
                       cwd=ROOT, check=True)
    EMAIL = f"bench-{os.getpid()}@cinema.example"
    # Each storm client logs in as its own user: the per-account limit counts attempts in flight.
    STORM_EMAIL = f"bench-{os.getpid()}-%d@cinema.example"
    try:
        SERVERS["usher"] = start_usher(PORTS["api"], PORTS["internal"], "usher")
        for port in ("bare", "stub", "upstream"):
            SERVERS[port] = start([os.path.join(REL, "examples", "bare_hyper"), f"127.0.0.1:{PORTS[port]}"],
                                  name=port)
            wait_http(f"http://127.0.0.1:{PORTS[port]}/")
        status, _ = http("POST", f"http://127.0.0.1:{PORTS['api']}/api/v1/auth/register",
                         {"email": EMAIL, "password": PASSWORD})
        assert status in (200, 201), status
        for n in range(a.storm_clients):
            status, _ = http("POST", f"http://127.0.0.1:{PORTS['api']}/api/v1/auth/register",
                             {"email": STORM_EMAIL.replace("%d", str(n)), "password": PASSWORD})
            assert status in (200, 201), status
        subprocess.run([os.environ.get("USHER_BIN", os.path.join(REL, "usher")), "roles", "grant", "user", "films_watch"],
                       env={**os.environ, **usher_env(PORTS["api"], PORTS["internal"])}, cwd=ROOT, check=True,
                       capture_output=True)
        time.sleep(0.5)
        token = login_token(PORTS["api"])["access_token"]
        status, _ = http("GET", f"http://127.0.0.1:{PORTS['internal']}/ext_authz{PATH}",
                         headers={"authorization": f"Bearer {token}"})
        if status != 200:
            raise SystemExit(f"run.py: the check answered {status}, not 200")
        params = {"memory_kib": 19456, "iterations": 2, "parallelism": 1}
        results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
                   "args": vars(a), "argon2": params}
        if "check" in only:
            row_check(a, token, results)
        if "latency" in only:
            row_latency(a, token, results)
        if "envoy" in only:
            row_envoy(a, token, results)
        if "login" in only:
            row_login(a, results, params)
        if "refresh" in only:
            row_refresh(a, results)
        if "reach" in only:
            row_reach(a, results)
        if "memory" in only:
            row_memory(a, results)
    finally:
        cleanup()
    with open(os.path.join(ROOT, "benches", "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if "latency" in results:
        svg(results, os.path.join(ROOT, "benches", "latency.svg"))
    print(f"## Performance table ({results['date']}, {results['cores']} cores, "
          f"{a.rounds} alternating rounds)\n")
    print(table(results, a))
    if "memory" in results:
        print("\nPer cache entry (`cache_cost`):\n\n```\n" + results["memory"]["per_entry"] + "```")


if __name__ == "__main__":
    main()
