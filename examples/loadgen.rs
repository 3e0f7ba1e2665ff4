//! The load generator of `benches/run.py`, for the loads `wrk` cannot make: a paced
//! (open-loop) rate with latencies counted from when each request was due, a login storm,
//! refresh chains in which every client uses the token the previous refresh returned, and
//! one check per token of a file. Plain HTTP/1.1 over keep-alive connections, one JSON line
//! of results on stdout.
//!
//! ```text
//! loadgen paced   URL RATE SECONDS CONNECTIONS [HEADER]
//! loadgen storm   URL BODY SECONDS CLIENTS
//! loadgen refresh API EMAIL PASSWORD SECONDS CHAINS
//! loadgen fill    URL TOKEN_FILE CONNECTIONS
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> Res<(String, String)> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let slash = rest.find('/').unwrap_or(rest.len());
    let path = if slash == rest.len() {
        "/".to_owned()
    } else {
        rest[slash..].to_owned()
    };
    Ok((rest[..slash].to_owned(), path))
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    host: String,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(host: &str) -> Res<Conn> {
        let stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            host: host.to_owned(),
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    fn request(host: &str, method: &str, path: &str, header: &str, body: &str) -> Vec<u8> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
        if !header.is_empty() {
            req.push_str(header);
            req.push_str("\r\n");
        }
        if method == "POST" {
            req.push_str("content-type: application/json\r\n");
            req.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(body);
        req.into_bytes()
    }

    /// Sends `req`, reads one response: (status, body).
    async fn send(&mut self, req: &[u8]) -> Res<(u16, Vec<u8>)> {
        self.stream.write_all(req).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..head_end])?;
        let status: u16 = head.get(9..12).ok_or("short status line")?.parse()?;
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(Ok(0), |(_, v)| v.trim().parse::<usize>())?;
        while self.buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok((status, self.buf[head_end..head_end + length].to_vec()))
    }

    /// Like `send`, reconnecting once when the server closed the connection.
    async fn call(&mut self, req: &[u8]) -> Res<(u16, Vec<u8>)> {
        match self.send(req).await {
            Ok(answer) => Ok(answer),
            Err(_) => {
                *self = Conn::open(&self.host).await?;
                self.send(req).await
            }
        }
    }
}

fn arg(args: &[String], i: usize) -> Res<&str> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| format!("missing argument {i}; see the usage in examples/loadgen.rs").into())
}

fn num<T: std::str::FromStr>(args: &[String], i: usize) -> Res<T> {
    arg(args, i)?
        .parse()
        .map_err(|_| format!("argument {i} is not a number").into())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// RATE requests a second spread over CONNECTIONS, each due at a fixed time. A request that
/// had to wait for the previous answer on its connection counts from when it was due, so a
/// stall shows in the percentiles instead of lowering the rate it is measured at.
async fn paced(args: &[String]) -> Res<()> {
    let (host, path) = split_url(arg(args, 0)?)?;
    let rate: f64 = num(args, 1)?;
    let seconds: f64 = num(args, 2)?;
    let connections: usize = num(args, 3)?;
    let header = args.get(4).cloned().unwrap_or_default();
    let total = (rate * seconds) as usize;
    let req = Arc::new(Conn::request(&host, "GET", &path, &header, ""));
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for k in 0..connections {
        let (req, host) = (req.clone(), host.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&host).await?;
            let (mut latencies, mut non2xx, mut errors) = (Vec::new(), 0u64, 0u64);
            let mut last_answer = Instant::now();
            for i in (k..total).step_by(connections) {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                // Behind schedule because of the server: count from when it was due; behind
                // because the timer woke late: count from now.
                let from = if last_answer > due {
                    due
                } else {
                    Instant::now()
                };
                match conn.call(&req).await {
                    Ok((status, _)) if (200..300).contains(&status) => {}
                    Ok(_) => non2xx += 1,
                    Err(_) => errors += 1,
                }
                last_answer = Instant::now();
                latencies.push(last_answer.duration_since(from).as_micros() as u64);
            }
            Res::Ok((latencies, non2xx, errors))
        }));
    }
    let (mut all, mut non2xx, mut errors) = (Vec::with_capacity(total), 0, 0);
    for task in tasks {
        let (l, n, e) = task.await??;
        all.extend(l);
        non2xx += n;
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "{{\"offered\":{rate},\"served\":{:.1},\"requests\":{},\"non2xx\":{non2xx},\"errors\":{errors},\
         \"p50\":{:.3},\"p90\":{:.3},\"p99\":{:.3},\"p999\":{:.3},\"max\":{:.3}}}",
        all.len() as f64 / elapsed,
        all.len(),
        percentile(&all, 0.50),
        percentile(&all, 0.90),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        percentile(&all, 1.0),
    );
    Ok(())
}

/// CLIENTS loops posting BODY to URL for SECONDS: a login storm. `%d` in BODY becomes the
/// client's number, so that each client logs in as a user of its own.
async fn storm(args: &[String]) -> Res<()> {
    let (host, path) = split_url(arg(args, 0)?)?;
    let body = arg(args, 1)?;
    let seconds: f64 = num(args, 2)?;
    let clients: usize = num(args, 3)?;
    let (ok, busy, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for n in 0..clients {
        let req = Conn::request(
            &host,
            "POST",
            &path,
            "",
            &body.replace("%d", &n.to_string()),
        );
        let host = host.clone();
        let (ok, busy, other) = (ok.clone(), busy.clone(), other.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&host).await?;
            while Instant::now() < end {
                let counter = match conn.call(&req).await {
                    Ok((200, _)) => &ok,
                    Ok((503, _)) => &busy,
                    _ => &other,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Res::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "{{\"rate\":{:.2},\"ok\":{ok},\"busy\":{},\"other\":{},\"seconds\":{elapsed:.2}}}",
        ok as f64 / elapsed,
        busy.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed)
    );
    Ok(())
}

fn json_field(body: &[u8], field: &str) -> Res<String> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    Ok(value
        .get(field)
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("no {field} in {value}"))?
        .to_owned())
}

/// CHAINS clients, each logged in once, then refreshing for SECONDS, every refresh with the
/// token the previous one returned (genuine one-use rotation, never the grace window).
async fn refresh(args: &[String]) -> Res<()> {
    let api = arg(args, 0)?;
    let (host, _) = split_url(api)?;
    let login_body = serde_json::json!({"email": arg(args, 1)?, "password": arg(args, 2)?});
    let seconds: f64 = num(args, 3)?;
    let chains: usize = num(args, 4)?;
    let login = Conn::request(
        &host,
        "POST",
        "/api/v1/auth/login",
        "",
        &login_body.to_string(),
    );
    let mut tokens = Vec::new();
    let mut conn = Conn::open(&host).await?;
    for _ in 0..chains {
        let (status, body) = conn.call(&login).await?;
        if status != 200 {
            return Err(format!("login answered {status}").into());
        }
        tokens.push(json_field(&body, "refresh_token")?);
    }
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for mut token in tokens {
        let host = host.clone();
        let (ok, failed) = (ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&host).await?;
            while Instant::now() < end {
                let body = format!("{{\"refresh_token\":\"{token}\"}}");
                let req = Conn::request(&host, "POST", "/api/v1/auth/refresh", "", &body);
                match conn.call(&req).await {
                    Ok((200, body)) => {
                        token = json_field(&body, "refresh_token")?;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        // The chain is broken: this client stops.
                        failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            Res::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "{{\"rate\":{:.1},\"ok\":{ok},\"failed\":{},\"seconds\":{elapsed:.2}}}",
        ok as f64 / elapsed,
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}

/// One check per token of TOKEN_FILE (one a line), over CONNECTIONS: fills the caches.
async fn fill(args: &[String]) -> Res<()> {
    let (host, path) = split_url(arg(args, 0)?)?;
    let tokens = std::fs::read_to_string(arg(args, 1)?)?;
    let connections: usize = num(args, 2)?;
    let tokens: Arc<Vec<String>> = Arc::new(tokens.lines().map(str::to_owned).collect());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (tokens, next, host, path) = (tokens.clone(), next.clone(), host.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&host).await?;
            let (mut ok, mut other) = (0u64, 0u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(token) = tokens.get(i) else { break };
                let header = format!("authorization: Bearer {token}");
                match conn
                    .call(&Conn::request(&host, "GET", &path, &header, ""))
                    .await
                {
                    Ok((200, _)) => ok += 1,
                    _ => other += 1,
                }
            }
            Res::Ok((ok, other))
        }));
    }
    let (mut ok, mut other) = (0, 0);
    for task in tasks {
        let (o, x) = task.await??;
        ok += o;
        other += x;
    }
    println!(
        "{{\"ok\":{ok},\"other\":{other},\"seconds\":{:.2}}}",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("paced") => paced(rest).await,
        Some("storm") => storm(rest).await,
        Some("refresh") => refresh(rest).await,
        Some("fill") => fill(rest).await,
        _ => Err("usage: see examples/loadgen.rs".into()),
    }
}
