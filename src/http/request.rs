//! Reading requests: the body with its limits, JSON with field-named errors, the bearer token,
//! the client's origin, pagination.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::request::Parts;
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;

use super::error::{ApiError, FieldError};
use crate::domain::Origin;

/// Largest body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// A request read whole: head, body, peer.
#[derive(Debug)]
pub struct Req {
    /// Method, URI, headers.
    pub parts: Parts,
    /// The body (at most `MAX_BODY` bytes).
    pub body: Bytes,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// How many proxies in front of usher append to `X-Forwarded-For` (`listen.trusted_proxies`).
    pub trusted_proxies: usize,
}

impl Req {
    /// Reads the body of a hyper request, enforcing the size limit.
    pub async fn read<B>(req: http::Request<B>, peer: SocketAddr) -> Result<Req, ApiError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(ApiError::PayloadTooLarge);
        }
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::BadRequest("the request body could not be read".into())
                }
            })?
            .to_bytes();
        storable_query(parts.uri.query())?;
        Ok(Req {
            parts,
            body,
            peer,
            trusted_proxies: DEFAULT_TRUSTED_PROXIES,
        })
    }

    /// A request built in memory, for tests and benches.
    pub fn new(parts: Parts, body: Bytes, peer: SocketAddr) -> Req {
        Req {
            parts,
            body,
            peer,
            trusted_proxies: DEFAULT_TRUSTED_PROXIES,
        }
    }

    /// The same request, its client IP read through `trusted_proxies` proxies.
    pub fn behind(mut self, trusted_proxies: usize) -> Req {
        self.trusted_proxies = trusted_proxies;
        self
    }

    /// The client's IP: see [`client_ip`].
    pub fn client_ip(&self) -> IpAddr {
        client_ip(&self.parts.headers, self.peer, self.trusted_proxies)
    }

    /// The body as `T`: 415 unless JSON, 400 when not JSON at all, 422 naming the field
    /// when the shape is wrong (unknown, missing or mistyped fields).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let content_type = self
            .parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse_json(&self.body)
    }

    /// The bearer token, if an `Authorization: Bearer` header is present.
    pub fn bearer(&self) -> Option<&str> {
        bearer(&self.parts.headers)
    }

    /// The client's IP and user agent, for sessions and history.
    pub fn origin(&self) -> Origin {
        let user_agent = self
            .parts
            .headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(512).collect());
        Origin {
            ip: Some(self.client_ip().to_string()),
            user_agent,
        }
    }

    /// A query parameter, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.parts.uri.query()?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| {
                percent_encoding::percent_decode_str(&v.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    }

    /// `page` and `per_page` (default 1 and 20, `per_page` at most 100) → `(page, per_page)`.
    pub fn pagination(&self) -> Result<(i64, i64), ApiError> {
        let mut errors = Vec::new();
        let mut read = |name: &str, default: i64, max: i64| match self.query(name) {
            None => default,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => {
                    errors.push(FieldError::new(
                        name,
                        format!("must be a whole number from 1 to {max}"),
                    ));
                    default
                }
            },
        };
        let page = read("page", 1, 1_000_000);
        let per_page = read("per_page", 20, 100);
        if errors.is_empty() {
            Ok((page, per_page))
        } else {
            Err(ApiError::Validation(errors))
        }
    }
}

/// Parses JSON, telling a syntax error (400) from a shape error (422, naming the field).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = match result {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            // A shape error is only a 422 when the body is JSON at all (`{} {}` is not).
            let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
            return Err(match inner.classify() {
                serde_json::error::Category::Data if is_json => {
                    let message = inner.to_string();
                    let field = field_of(&path, &message);
                    ApiError::Validation(vec![FieldError::new(field, strip_position(&message))])
                }
                _ => ApiError::MalformedJson(strip_position(&inner.to_string())),
            });
        }
    };
    de.end()
        .map_err(|e| ApiError::MalformedJson(strip_position(&e.to_string())))?;
    // Only a body that spells a NUL escape can hold one (raw control characters are not JSON).
    if body.windows(6).any(|w| w == b"\\u0000") {
        let tree: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::MalformedJson(strip_position(&e.to_string())))?;
        if let Some(field) = first_nul(&tree, "") {
            return Err(ApiError::Validation(vec![FieldError::new(
                field,
                NUL_MESSAGE,
            )]));
        }
    }
    Ok(value)
}

const NUL_MESSAGE: &str = "must not contain NUL characters";

/// The path of the first string or key of `value` holding a NUL, which PostgreSQL cannot
/// store: checked here, once, for every body.
fn first_nul(value: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    let here = || {
        if path.is_empty() {
            "body".to_owned()
        } else {
            path.to_owned()
        }
    };
    match value {
        Value::String(s) => s.contains('\0').then(here),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| first_nul(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let field = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') {
                Some(here())
            } else {
                first_nul(v, &field)
            }
        }),
        _ => None,
    }
}

/// Refuses a query string whose parameters, percent-decoded, hold a NUL or are not UTF-8:
/// PostgreSQL could not take them, and no handler should have to think of it (422 naming
/// the parameter).
fn storable_query(query: Option<&str>) -> Result<(), ApiError> {
    let Some(query) = query else {
        return Ok(());
    };
    let mut errors = Vec::new();
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            let bytes: Vec<u8> =
                percent_encoding::percent_decode_str(&s.replace('+', " ")).collect();
            String::from_utf8(bytes).ok().filter(|s| !s.contains('\0'))
        };
        let field = decode(name);
        if field.is_none() || decode(value).is_none() {
            let field = field.unwrap_or_else(|| "query".into());
            errors.push(FieldError::new(
                field,
                "must be UTF-8 without NUL characters",
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// The field a serde message is about: the path, or for unknown/missing fields the name
/// in backticks.
fn field_of(path: &str, message: &str) -> String {
    let named = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))
        .and_then(|rest| rest.split('`').next());
    match (named, path) {
        (Some(name), "." | "") => name.to_owned(),
        (Some(name), p) if message.starts_with("missing") => format!("{p}.{name}"),
        (_, "." | "") => "body".into(),
        (_, p) => p.to_owned(),
    }
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// The bearer token of a header map.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    bearer_of(headers.get(AUTHORIZATION)?.to_str().ok()?)
}

/// The token of an `Authorization` header value, if its scheme is `Bearer`.
pub fn bearer_of(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The default of `listen.trusted_proxies`: the TCP peer is the gateway.
pub const DEFAULT_TRUSTED_PROXIES: usize = 1;

/// The client IP, given that the last `trusted_proxies` hops before usher are proxies that each
/// append the address they received the request from to `X-Forwarded-For`.
///
/// The hops, oldest first, are the `X-Forwarded-For` entries (every such header, in order)
/// followed by the TCP peer. The last `trusted_proxies` of them are trusted proxies; the client
/// is the hop just before them — the rightmost entry a trusted proxy wrote. Anything further
/// left came from the client and never counts. With fewer hops than that (a proxy that did not
/// append), the leftmost hop; with `trusted_proxies = 0`, the TCP peer. An entry that is not an
/// IP address (or `IP:port`) falls back to the TCP peer.
pub fn client_ip(headers: &http::HeaderMap, peer: SocketAddr, trusted_proxies: usize) -> IpAddr {
    if trusted_proxies == 0 {
        return peer.ip();
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .collect();
    // Hops: the entries, then the peer. The peer is the first trusted proxy, so the client is
    // entry `len - trusted_proxies`; with fewer entries, the leftmost.
    let at = entries.len().saturating_sub(trusted_proxies);
    entries
        .get(at)
        .and_then(|entry| parse_hop(entry))
        .unwrap_or(peer.ip())
}

/// An `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Login {
        email: String,
        password: String,
    }

    fn codes(body: &str) -> (u16, String) {
        match parse_json::<Login>(body.as_bytes()) {
            Ok(_) => (200, String::new()),
            Err(ApiError::Validation(e)) => (422, e[0].field.clone()),
            Err(e) => (e.status().as_u16(), String::new()),
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        assert_eq!(codes(r#"{"email":"a@b","password":"x"}"#).0, 200);
        assert_eq!(codes(r#"{"email":"a@b"}"#), (422, "password".into()));
        assert_eq!(
            codes(r#"{"email":5,"password":"x"}"#),
            (422, "email".into())
        );
        assert_eq!(
            codes(r#"{"email":"a","password":"x","admin":true}"#),
            (422, "admin".into())
        );
        assert_eq!(codes(r#"[1,2]"#).0, 422);
        assert_eq!(codes(r#"{"email":"a""#).0, 400);
        assert_eq!(codes("").0, 400);
        assert_eq!(codes(r#"{"email":"a","password":"x"} trailing"#).0, 400);
        assert_eq!(codes(&"[".repeat(100_000)).0, 400);
        assert_eq!(
            parse_json::<serde_json::Value>("[".repeat(100_000).as_bytes())
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            parse_json::<Login>(b"{\"email\":\"\xff\"}")
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn nul_characters_are_refused_in_every_field_and_parameter() {
        assert_eq!(
            codes(r#"{"email":"a\u0000@b","password":"x"}"#),
            (422, "email".into())
        );
        assert_eq!(
            codes(r#"{"email":"a@b","password":"\u0000"}"#),
            (422, "password".into())
        );
        // an escaped backslash followed by "u0000" is no NUL
        assert_eq!(codes(r#"{"email":"a\\u0000@b","password":"x"}"#).0, 200);
        let nested = parse_json::<serde_json::Value>(br#"{"a":[1,{"b":"\u0000"}]}"#);
        match nested {
            Err(ApiError::Validation(e)) => assert_eq!(e[0].field, "a[1].b"),
            other => panic!("{other:?}"),
        }
        assert!(storable_query(Some("page=1&email=a%40b")).is_ok());
        assert!(storable_query(None).is_ok());
        for bad in ["email=%00", "email=a%00b", "e%00=1", "email=%ff"] {
            assert!(
                matches!(storable_query(Some(bad)), Err(ApiError::Validation(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn client_ip_is_the_rightmost_untrusted_hop() {
        let peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let ip = |xff: &[&str], trusted| {
            let mut h = http::HeaderMap::new();
            for v in xff {
                h.append("x-forwarded-for", v.parse().unwrap());
            }
            client_ip(&h, peer, trusted).to_string()
        };
        // The gateway appends the address it saw; whatever the client wrote is further left.
        assert_eq!(ip(&["203.0.113.9, 198.51.100.7"], 1), "198.51.100.7");
        assert_eq!(ip(&["203.0.113.9", "198.51.100.7"], 1), "198.51.100.7");
        assert_eq!(ip(&["198.51.100.7"], 1), "198.51.100.7");
        assert_eq!(ip(&["198.51.100.7:5555"], 1), "198.51.100.7");
        assert_eq!(ip(&["[2001:db8::1]:80"], 1), "2001:db8::1");
        // Two proxies (a load balancer, then the gateway).
        assert_eq!(
            ip(&["203.0.113.9, 198.51.100.7, 10.0.0.2"], 2),
            "198.51.100.7"
        );
        assert_eq!(ip(&["198.51.100.7"], 2), "198.51.100.7");
        // No proxy trusted, no header, or garbage: the TCP peer.
        assert_eq!(ip(&["203.0.113.9"], 0), "10.0.0.1");
        assert_eq!(ip(&[], 1), "10.0.0.1");
        assert_eq!(ip(&["203.0.113.9, unknown"], 1), "10.0.0.1");
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut h = http::HeaderMap::new();
        h.insert(AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
