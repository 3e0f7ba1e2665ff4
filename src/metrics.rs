//! Prometheus metrics, kept with atomics: requests by endpoint and status, check decisions by
//! outcome and route, latency histograms, cache hits and misses; pool and Redis health are read
//! when scraped.
//!
//! Counters live in maps keyed by their labels. A read lock finds an existing counter (the
//! common case, no allocation); the write lock is taken only the first time a label set is
//! seen, and label sets are bounded by design: route labels of the map plus a few fixed ones
//! (`default`, `invalid_path`, `invalid_host`, `bad_request`), the API's endpoint templates
//! (`http::endpoint`, handed in as `&'static str`) plus [`UNMATCHED`], and the statuses usher
//! answers with. Nothing a client sends becomes a label value.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5,
];

/// A latency histogram.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let trimmed = labels.trim_end_matches(',');
        let braces = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{{{trimmed}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Counters keyed by a label set.
struct Family<K: Ord> {
    map: RwLock<BTreeMap<K, Arc<AtomicU64>>>,
}

impl<K: Ord + Clone> Family<K> {
    fn new() -> Self {
        Family {
            map: RwLock::new(BTreeMap::new()),
        }
    }

    fn inc<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized + ToOwned<Owned = K>,
    {
        if let Ok(map) = self.map.read() {
            if let Some(c) = map.get(key) {
                c.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if let Ok(mut map) = self.map.write() {
            map.entry(key.to_owned())
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> Vec<(K, u64)> {
        self.map
            .read()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Every outcome, in the order of their counters.
const OUTCOMES: [Outcome; 5] = [
    Outcome::Allow,
    Outcome::Unauthenticated,
    Outcome::Forbidden,
    Outcome::BadRequest,
    Outcome::Unavailable,
];

/// The outcome of a gateway check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// 200.
    Allow,
    /// 401.
    Unauthenticated,
    /// 403.
    Forbidden,
    /// 400.
    BadRequest,
    /// 503.
    Unavailable,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Forbidden => "forbidden",
            Outcome::BadRequest => "bad_request",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// Every metric of one usher process.
pub struct Metrics {
    requests: Family<(&'static str, u16)>,
    /// One histogram per endpoint template seen (or [`UNMATCHED`]).
    request_latency: RwLock<BTreeMap<&'static str, Arc<Histogram>>>,
    /// route → one counter per outcome, looked up by `&str` without allocating.
    checks: RwLock<BTreeMap<String, Arc<[AtomicU64; OUTCOMES.len()]>>>,
    check_latency: Histogram,
    /// Logins by outcome: success, failure, lockout.
    logins: [AtomicU64; 3],
    /// Rows pruned by retention: sessions, refresh tokens, login history.
    pruned: [AtomicU64; 3],
    /// Change-feed messages no replica of this version reads.
    feed_unknown: AtomicU64,
    /// Attempts to subscribe to the change feed that failed (or subscriptions that dropped).
    feed_failures: AtomicU64,
    /// Route map reloads: loaded, refused.
    route_reloads: [AtomicU64; 2],
}

/// How a login ended, for `usher_logins_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Tokens issued.
    Success,
    /// Wrong e-mail or password.
    Failure,
    /// Refused by the failure limit (429).
    Lockout,
}

const LOGIN_OUTCOMES: [&str; 3] = ["success", "failure", "lockout"];
const PRUNED_TABLES: [&str; 3] = ["sessions", "refresh_tokens", "login_history"];
const RELOAD_OUTCOMES: [&str; 2] = ["loaded", "refused"];
/// The states `/readyz` reports, in the order of `usher_readiness`.
pub const READINESS: [&str; 4] = ["ready", "degraded", "draining", "unready"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::new(),
            request_latency: RwLock::new(BTreeMap::new()),
            checks: RwLock::new(BTreeMap::new()),
            check_latency: Histogram::default(),
            logins: Default::default(),
            pruned: Default::default(),
            feed_unknown: AtomicU64::new(0),
            feed_failures: AtomicU64::new(0),
            route_reloads: Default::default(),
        }
    }
}

/// Gauges read at scrape time: pool, Redis, token cache.
pub struct Health {
    /// Token checks answered from memory.
    pub cache_hits: u64,
    /// Token checks that verified a signature or asked Redis or PostgreSQL.
    pub cache_misses: u64,
    /// Pooled connections idle.
    pub pool_idle: usize,
    /// Pooled connections lent to a request.
    pub pool_in_use: usize,
    /// Largest pool size.
    pub pool_max: usize,
    /// What `/readyz` answers now: one of [`READINESS`].
    pub readiness: &'static str,
    /// Redis answered a PING.
    pub redis_up: bool,
    /// The change feed is subscribed.
    pub feed_up: bool,
    /// Changes not yet written to Redis.
    pub pending: usize,
}

impl Metrics {
    /// An API request answered; `endpoint` is its template (`http::endpoint::label`).
    pub fn request(&self, endpoint: &'static str, status: u16, latency: Duration) {
        self.requests.inc(&(endpoint, status));
        if let Some(h) = self
            .request_latency
            .read()
            .ok()
            .as_ref()
            .and_then(|m| m.get(endpoint))
        {
            h.observe(latency);
            return;
        }
        if let Ok(mut m) = self.request_latency.write() {
            m.entry(endpoint).or_default().observe(latency);
        }
    }

    /// A login answered.
    pub fn login(&self, outcome: LoginOutcome) {
        self.logins[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Rows deleted by a retention run.
    pub fn pruned(&self, p: &crate::store::retention::Pruned) {
        for (slot, n) in [p.sessions, p.refresh_tokens, p.login_history]
            .into_iter()
            .enumerate()
        {
            self.pruned[slot].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A change-feed message that was not understood.
    pub fn feed_unknown(&self) {
        self.feed_unknown.fetch_add(1, Ordering::Relaxed);
    }

    /// The change feed could not subscribe, or its subscription dropped.
    pub fn feed_failure(&self) {
        self.feed_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The route map file changed (or SIGHUP): `loaded` tells whether the new map is in force.
    pub fn route_reload(&self, loaded: bool) {
        self.route_reloads[usize::from(!loaded)].fetch_add(1, Ordering::Relaxed);
    }

    /// A gateway check decided; `route` is the route map's label.
    pub fn check(&self, route: &str, outcome: Outcome, latency: Duration) {
        let slot = outcome as usize;
        self.check_latency.observe(latency);
        // Counted under the read lock: no reference count to raise and drop on every check.
        if let Some(counters) = self.checks.read().ok().as_ref().and_then(|m| m.get(route)) {
            counters[slot].fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Ok(mut m) = self.checks.write() {
            m.entry(route.to_owned()).or_default()[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, health: &Health) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP usher_http_requests_total API requests by endpoint and status.\n");
        out.push_str("# TYPE usher_http_requests_total counter\n");
        for ((endpoint, status), n) in self.requests.snapshot() {
            let _ = writeln!(
                out,
                "usher_http_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {n}",
                escape(endpoint)
            );
        }
        out.push_str(
            "# HELP usher_http_request_duration_seconds API request latency by endpoint.\n",
        );
        out.push_str("# TYPE usher_http_request_duration_seconds histogram\n");
        if let Ok(latency) = self.request_latency.read() {
            for (endpoint, histogram) in latency.iter() {
                let labels = format!("endpoint=\"{}\",", escape(endpoint));
                histogram.render(&mut out, "usher_http_request_duration_seconds", &labels);
            }
        }
        out.push_str(
            "# HELP usher_check_decisions_total Gateway check decisions by outcome and route.\n",
        );
        out.push_str("# TYPE usher_check_decisions_total counter\n");
        if let Ok(checks) = self.checks.read() {
            for (route, counters) in checks.iter() {
                for outcome in OUTCOMES {
                    let n = counters[outcome as usize].load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "usher_check_decisions_total{{route=\"{}\",outcome=\"{}\"}} {n}",
                            escape(route),
                            outcome.as_str()
                        );
                    }
                }
            }
        }
        out.push_str("# HELP usher_check_duration_seconds Gateway check latency.\n");
        out.push_str("# TYPE usher_check_duration_seconds histogram\n");
        self.check_latency
            .render(&mut out, "usher_check_duration_seconds", "");
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "usher_token_cache_hits_total",
            "Checks answered from memory.",
            "counter",
            health.cache_hits,
        );
        gauge(
            &mut out,
            "usher_token_cache_misses_total",
            "Checks that verified a signature or asked Redis/PostgreSQL.",
            "counter",
            health.cache_misses,
        );
        self.render_operations(&mut out, health);
        gauge(
            &mut out,
            "usher_redis_up",
            "Redis answers.",
            "gauge",
            u64::from(health.redis_up),
        );
        gauge(
            &mut out,
            "usher_change_feed_up",
            "The change feed is subscribed.",
            "gauge",
            u64::from(health.feed_up),
        );
        gauge(
            &mut out,
            "usher_feed_unknown_total",
            "Change-feed messages not understood (from a newer version, or not from usher), ignored.",
            "counter",
            self.feed_unknown.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "usher_change_feed_failures_total",
            "Change-feed subscriptions that failed or dropped (each followed by a retry).",
            "counter",
            self.feed_failures.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "usher_revocation_pending",
            "Revocations and roles changes not yet written to Redis (retried; PostgreSQL decides meanwhile).",
            "gauge",
            health.pending as u64,
        );
        out
    }
}

impl Metrics {
    /// Build, readiness, pool, logins and retention.
    fn render_operations(&self, out: &mut String, health: &Health) {
        let _ = writeln!(
            out,
            "# HELP usher_build_info The running usher's version.\n\
             # TYPE usher_build_info gauge\n\
             usher_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out.push_str(
            "# HELP usher_readiness What /readyz answers: 1 for the current state.\n\
             # TYPE usher_readiness gauge\n",
        );
        for state in READINESS {
            let v = u8::from(state == health.readiness);
            let _ = writeln!(out, "usher_readiness{{state=\"{state}\"}} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP usher_db_pool_connections PostgreSQL connections open, by state.\n\
             # TYPE usher_db_pool_connections gauge\n\
             usher_db_pool_connections{{state=\"idle\"}} {}\n\
             usher_db_pool_connections{{state=\"in_use\"}} {}\n\
             # HELP usher_db_pool_max_connections PostgreSQL pool size limit.\n\
             # TYPE usher_db_pool_max_connections gauge\n\
             usher_db_pool_max_connections {}",
            health.pool_idle, health.pool_in_use, health.pool_max
        );
        counters(
            out,
            ("usher_logins_total", "Logins by outcome."),
            "outcome",
            &LOGIN_OUTCOMES,
            &self.logins,
        );
        counters(
            out,
            (
                "usher_retention_pruned_rows_total",
                "Rows deleted by retention, by table.",
            ),
            "table",
            &PRUNED_TABLES,
            &self.pruned,
        );
        counters(
            out,
            (
                "usher_route_map_reloads_total",
                "Route map reloads by outcome.",
            ),
            "outcome",
            &RELOAD_OUTCOMES,
            &self.route_reloads,
        );
    }
}

/// One counter per value of a fixed label: `name{label="value"} n`.
fn counters(
    out: &mut String,
    (name, help): (&str, &str),
    label: &str,
    values: &[&str],
    counts: &[AtomicU64],
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, count) in values.iter().zip(counts) {
        let n = count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The label of every API request no endpoint template fits.
pub const UNMATCHED: &str = "unmatched";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request("/api/v1/auth/login", 200, Duration::from_millis(3));
        m.request("/api/v1/auth/login", 200, Duration::from_millis(3));
        m.request(UNMATCHED, 404, Duration::from_micros(40));
        m.check(
            "/api/v1/films/{*rest}",
            Outcome::Allow,
            Duration::from_micros(80),
        );
        m.check(
            "/api/v1/films/{*rest}",
            Outcome::Allow,
            Duration::from_micros(80),
        );
        m.check("default", Outcome::Forbidden, Duration::from_micros(80));
        let text = m.render(&Health {
            cache_hits: 5,
            cache_misses: 1,
            pool_idle: 1,
            pool_in_use: 1,
            pool_max: 16,
            readiness: "degraded",
            redis_up: true,
            feed_up: true,
            pending: 0,
        });
        assert!(
            text.contains(
                "usher_http_requests_total{endpoint=\"/api/v1/auth/login\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "usher_check_decisions_total{route=\"/api/v1/films/{*rest}\",outcome=\"allow\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("usher_check_decisions_total{route=\"default\",outcome=\"forbidden\"} 1")
        );
        assert!(
            text.contains("usher_check_duration_seconds_bucket{le=\"0.0001\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("usher_check_duration_seconds_count 3"),
            "{text}"
        );
        assert!(text.contains("usher_redis_up 1"));
        // API latency by endpoint template; templates never called add no series
        for needle in [
            "usher_http_request_duration_seconds_bucket{endpoint=\"/api/v1/auth/login\",le=\"0.005\"} 2",
            "usher_http_request_duration_seconds_count{endpoint=\"/api/v1/auth/login\"} 2",
            "usher_http_request_duration_seconds_count{endpoint=\"unmatched\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        assert!(!text.contains("usher_http_request_duration_seconds_count{endpoint=\"/docs\"}"));
        m.login(LoginOutcome::Lockout);
        let text = m.render(&Health {
            cache_hits: 0,
            cache_misses: 0,
            pool_idle: 3,
            pool_in_use: 1,
            pool_max: 16,
            readiness: "degraded",
            redis_up: false,
            feed_up: false,
            pending: 0,
        });
        for needle in [
            "usher_build_info{version=\"",
            "usher_readiness{state=\"degraded\"} 1",
            "usher_readiness{state=\"ready\"} 0",
            "usher_db_pool_connections{state=\"idle\"} 3",
            "usher_db_pool_connections{state=\"in_use\"} 1",
            "usher_db_pool_max_connections 16",
            "usher_logins_total{outcome=\"lockout\"} 1",
            "usher_logins_total{outcome=\"success\"} 0",
            "usher_retention_pruned_rows_total{table=\"sessions\"} 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
