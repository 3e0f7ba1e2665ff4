//! The route map: which permissions a request through the gateway needs.
//!
//! Operators keep the map in a TOML file (`routes.file`, see `gateway-config/routes.toml`).
//! This module loads and validates it ([`RouteMap::parse`], [`RouteMap::load`]), answers the
//! question "what does this request need?" ([`RouteMap::decide`]) on every gateway check, and
//! reloads the file when it changes or on SIGHUP ([`spawn_reloader`]). It knows nothing about
//! HTTP libraries: the check endpoint hands it a host, a method and the raw path.
//!
//! # Matching
//!
//! A request is judged by the **most specific route whose host, path and method all match**; when
//! there is none, by `default_policy`.
//!
//! - Paths are normalised first ([`normalize_path`]): the query and fragment are dropped, the path
//!   is percent-decoded once, runs of `/` are merged, `.` and `..` segments are resolved (climbing
//!   above `/` is refused) and a trailing `/` is dropped. So `//admin`, `/films/../admin` and
//!   `/admin/` are all judged as `/admin`: no spelling of a path can reach a route more permissive
//!   than the one the upstream serves.
//! - A path that a gateway and an upstream could read differently is refused before matching
//!   ([`PathError`]): a `;` in any segment (Tomcat and Spring strip path parameters), a raw `\`,
//!   a percent-encoded `/ \ . ; ? # %` in either case (upstreams disagree on decoding them), a
//!   control character, or a segment that ends in `.` or whitespace once decoded (some servers
//!   trim them).
//! - Literal segments match ASCII-case-insensitively: Express and ASP.NET route
//!   `/films/42/STREAM` to the stream route, so usher must judge it as that route.
//! - Host-specific routes are tried before host-less ones. The request's host must parse as
//!   `name[:port]` ([`parse_host`]; anything else is refused); it compares case-insensitively,
//!   with the port and one trailing `.` removed.
//! - Within one host, specificity is decided segment by segment from the left: a literal segment
//!   beats `{param}`, which beats `{*catch_all}` (which matches one or more trailing segments).
//! - A route whose path matches but whose `methods` leave out the request's method does not
//!   apply; matching goes on to the next less specific route. The alternative — stopping at the
//!   most specific path and denying — would make `methods = ["GET"]` on a narrow route silently
//!   swallow every other method of a broader one, which surprises operators more than it protects
//!   them. Methods compare case-insensitively.
//!
//! The map is compiled into a segment trie per host. matchit cannot hold routes such as
//! `/films/{id}/stream` next to `/films/{*rest}` (it refuses the pair as a conflict), and the map
//! needs both, plus the method-aware fallback above, so matching is done here; it visits each trie
//! node at most once and allocates nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use toml::Spanned;

/// What a request that no route matches needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    /// Refuse it (403 for everybody). The default, and the safe choice.
    Deny,
    /// Any signed-in user; anonymous requests get 401.
    Authenticated,
    /// Let it through without a token.
    Allow,
}

impl DefaultPolicy {
    fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::Deny => "deny",
            DefaultPolicy::Authenticated => "authenticated",
            DefaultPolicy::Allow => "allow",
        }
    }
}

/// What a matched request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement<'a> {
    /// Anyone, with or without a token (`public = true`, or `default_policy = "allow"`).
    Public,
    /// Nobody: no route matched and `default_policy = "deny"`.
    Deny,
    /// Any signed-in user (`require = []`, or `default_policy = "authenticated"`).
    Authenticated,
    /// Every one of these permissions.
    Permissions(&'a [Arc<str>]),
}

/// The verdict of the route map for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    /// A label for metrics and logs: the matched route's path pattern (prefixed by its host for
    /// host-specific routes), or `"default"` when no route matched.
    pub route: &'a str,
    /// What the request needs.
    pub requirement: Requirement<'a>,
}

/// A request path or host that cannot be judged safely; the check endpoint answers 403 (NGINX's
/// `auth_request` understands only 2xx, 401 and 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (an absolute-form or `*` target).
    #[error("the request path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hexadecimal digits.
    #[error("the request path has an invalid percent-encoding")]
    InvalidEncoding,
    /// The decoded path is not UTF-8.
    #[error("the request path is not valid UTF-8 once decoded")]
    InvalidUtf8,
    /// The decoded path holds a NUL or another control character.
    #[error("the request path contains a control character")]
    ControlCharacter,
    /// `..` segments climb above `/`.
    #[error("the request path climbs above '/'")]
    AboveRoot,
    /// A `;` (a path parameter, which Tomcat and Spring strip before routing).
    #[error("the request path contains ';'")]
    Semicolon,
    /// A raw `\` (a separator to some servers).
    #[error("the request path contains '\\'")]
    Backslash,
    /// A percent-encoded `/ \ . ; ? # %`, which upstreams decode, or not, differently.
    #[error("the request path percent-encodes '/', '\\', '.', ';', '?', '#' or '%'")]
    EncodedDelimiter,
    /// A segment ending in `.` or whitespace once decoded (some servers trim them).
    #[error("a segment of the request path ends in '.' or whitespace")]
    AmbiguousSegment,
    /// The host does not parse as `name[:port]`.
    #[error("the request host is not a host name or address with an optional port")]
    InvalidHost,
}

/// A route map that cannot be used; the message names the line at fault.
#[derive(Debug, thiserror::Error)]
pub enum RouteMapError {
    /// The file could not be read.
    #[error("cannot read the route map {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file does not parse or breaks a rule.
    #[error("{}", Located { file: file.as_deref(), line: *line, message })]
    Invalid {
        /// The file, when loaded from one.
        file: Option<PathBuf>,
        /// 1-based line of the fault, when known.
        line: Option<usize>,
        message: String,
    },
}

impl RouteMapError {
    /// The 1-based line the error names, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            RouteMapError::Read { .. } => None,
            RouteMapError::Invalid { line, .. } => *line,
        }
    }
}

struct Located<'a> {
    file: Option<&'a Path>,
    line: Option<usize>,
    message: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}, line {line}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        f.write_str(self.message)
    }
}

// ---------------------------------------------------------------------------------------------
// Path normalisation
// ---------------------------------------------------------------------------------------------

/// The path a request is judged by.
///
/// Drops the query and fragment, percent-decodes once (`%252e` stays the literal `%2e`), merges
/// runs of `/`, resolves `.` and `..` and drops a trailing `/`. An empty path is `/`. Borrows
/// when the path is already in that form, which is the common case, so nothing is allocated.
///
/// Refuses what a gateway and an upstream could read differently ([`PathError`]): a `;`, a raw
/// `\`, a percent-encoded `/ \ . ; ? # %`, a control character, and a segment that ends in `.`
/// or whitespace once decoded (other than `.` and `..` themselves).
pub fn normalize_path(raw_path_and_query: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw_path_and_query.as_bytes();
    match bytes.first() {
        None | Some(b'?' | b'#') => return Ok(Cow::Borrowed("/")),
        Some(b'/') => {}
        Some(_) => return Err(PathError::NotAbsolute),
    }
    // One pass over the raw path: refuse what is refused as written, and tell whether the path
    // is already normal (no `%`, no non-ASCII byte, no empty, `.` or `..` segment).
    let mut normal = true;
    let mut segment = 1;
    let mut end = 1;
    while end < bytes.len() {
        match bytes[end] {
            b'?' | b'#' => break,
            b'/' => {
                normal &= plain_segment(&bytes[segment..end])?;
                segment = end + 1;
            }
            b';' => return Err(PathError::Semicolon),
            b'\\' => return Err(PathError::Backslash),
            b'%' | 0x80.. => normal = false,
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            _ => {}
        }
        end += 1;
    }
    if end > 1 {
        normal &= plain_segment(&bytes[segment..end])?;
    }
    let path = &raw_path_and_query[..end];
    if normal {
        return Ok(Cow::Borrowed(path));
    }

    let decoded = percent_decode(path)?;
    let mut out = String::with_capacity(decoded.len());
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => match out.rfind('/') {
                Some(at) => out.truncate(at),
                None => return Err(PathError::AboveRoot),
            },
            _ => {
                if segment.ends_with(|c: char| c == '.' || c.is_whitespace()) {
                    return Err(PathError::AmbiguousSegment);
                }
                out.push('/');
                out.push_str(segment);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Whether one raw segment (without `%`) needs no work: `Ok(false)` for an empty, `.` or `..`
/// segment, an error for one that ends in `.` or whitespace.
fn plain_segment(segment: &[u8]) -> Result<bool, PathError> {
    match segment {
        [] | [b'.'] | [b'.', b'.'] => Ok(false),
        [.., b'.' | b' ' | b'\t'] => Err(PathError::AmbiguousSegment),
        _ => Ok(true),
    }
}

/// Decodes `%XX` once. An encoded `/ \ . ; ? # %` is refused: decoded, it would change how the
/// path splits or reads, and upstreams disagree on whether to decode it at all.
fn percent_decode(path: &str) -> Result<String, PathError> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex);
            let lo = bytes.get(i + 2).copied().and_then(hex);
            match (hi, lo) {
                (Some(hi), Some(lo)) => {
                    let b = hi << 4 | lo;
                    if b"/\\.;?#%".contains(&b) {
                        return Err(PathError::EncodedDelimiter);
                    }
                    out.push(b);
                }
                _ => return Err(PathError::InvalidEncoding),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.iter().any(|b| b.is_ascii_control()) {
        return Err(PathError::ControlCharacter);
    }
    String::from_utf8(out).map_err(|_| PathError::InvalidUtf8)
}

// ---------------------------------------------------------------------------------------------
// The compiled map
// ---------------------------------------------------------------------------------------------

/// A validated, compiled route map. Immutable; a reload builds a new one.
#[derive(Debug)]
pub struct RouteMap {
    default_policy: DefaultPolicy,
    service_permissions: Vec<(String, String)>,
    routes: Vec<Route>,
    /// Host-specific tries, host names lower-case without a trailing dot.
    hosts: Vec<(Box<str>, Node)>,
    any_host: Node,
}

#[derive(Debug)]
struct Route {
    line: usize,
    host: Option<Box<str>>,
    /// Upper-case method names; `None` means every method.
    methods: Option<Box<[Box<str>]>>,
    /// The metrics label: `path`, or `host` + `path`.
    label: Box<str>,
    path_len: usize,
    rule: Rule,
}

#[derive(Debug)]
enum Rule {
    Public,
    Require(Box<[Arc<str>]>),
}

impl Route {
    fn path(&self) -> &str {
        &self.label[self.label.len() - self.path_len..]
    }

    fn allows_method(&self, method: &str) -> bool {
        match &self.methods {
            None => true,
            Some(methods) => methods.iter().any(|m| m.eq_ignore_ascii_case(method)),
        }
    }

    fn requirement(&self) -> Requirement<'_> {
        match &self.rule {
            Rule::Public => Requirement::Public,
            Rule::Require(perms) if perms.is_empty() => Requirement::Authenticated,
            Rule::Require(perms) => Requirement::Permissions(perms),
        }
    }
}

/// One level of the segment trie. Routes ending here are listed in `routes`; routes whose last
/// segment is a catch-all at this level in `catch_all`. The routes in one list have disjoint
/// method sets (validation refuses overlaps), so at most one of them fits a request.
#[derive(Debug, Default)]
struct Node {
    /// Sorted by segment for binary search.
    literals: Vec<(Box<str>, Node)>,
    param: Option<Box<Node>>,
    routes: Vec<u32>,
    catch_all: Vec<u32>,
}

impl Node {
    /// The child for `segment`, ASCII-case-insensitively (keys are stored lower-case).
    fn literal(&self, segment: &str) -> Option<&Node> {
        self.literals
            .binary_search_by(|(key, _)| {
                key.bytes()
                    .cmp(segment.bytes().map(|b| b.to_ascii_lowercase()))
            })
            .ok()
            .map(|i| &self.literals[i].1)
    }

    fn literal_mut(&mut self, segment: &str) -> &mut Node {
        let key = segment.to_ascii_lowercase();
        let i = match self.literals.binary_search_by(|(s, _)| (**s).cmp(&key)) {
            Ok(i) => i,
            Err(i) => {
                self.literals.insert(i, (key.into(), Node::default()));
                i
            }
        };
        &mut self.literals[i].1
    }
}

impl RouteMap {
    /// Parses and validates a route map. `builtin_permissions` are the permissions usher itself
    /// defines; routes may require them and the service permissions the file declares.
    pub fn parse(text: &str, builtin_permissions: &[&str]) -> Result<RouteMap, RouteMapError> {
        compile(text, builtin_permissions).map_err(|e| RouteMapError::Invalid {
            file: None,
            line: e.line,
            message: e.message,
        })
    }

    /// Reads and parses the route map in `path`.
    pub fn load(path: &Path, builtin_permissions: &[&str]) -> Result<RouteMap, RouteMapError> {
        let text = std::fs::read_to_string(path).map_err(|source| RouteMapError::Read {
            path: path.to_owned(),
            source,
        })?;
        compile(&text, builtin_permissions).map_err(|e| RouteMapError::Invalid {
            file: Some(path.to_owned()),
            line: e.line,
            message: e.message,
        })
    }

    /// The service permissions the file declares, `(name, description)`, sorted by name.
    pub fn service_permissions(&self) -> &[(String, String)] {
        &self.service_permissions
    }

    /// What a request that no route matches needs.
    pub fn default_policy(&self) -> DefaultPolicy {
        self.default_policy
    }

    /// How many routes the map holds.
    pub fn routes(&self) -> usize {
        self.routes.len()
    }

    /// Judges one request: `host` is the request's host as received (or `None` when unknown),
    /// `method` its method, `raw_path_and_query` its target as received. See the module docs for
    /// the rules.
    pub fn decide(
        &self,
        host: Option<&str>,
        method: &str,
        raw_path_and_query: &str,
    ) -> Result<Decision<'_>, PathError> {
        let host = match host {
            Some(host) => Some(parse_host(host).ok_or(PathError::InvalidHost)?),
            None => None,
        };
        let path = normalize_path(raw_path_and_query)?;
        Ok(self.decide_normalized(host, method, &path))
    }

    /// Like [`RouteMap::decide`], for a host already passed through [`parse_host`] and a path
    /// already passed through [`normalize_path`].
    pub fn decide_normalized(&self, host: Option<&str>, method: &str, path: &str) -> Decision<'_> {
        let rest = match path.strip_prefix('/') {
            Some("") | None => None,
            Some(rest) => Some(rest),
        };
        let by_host = host.and_then(|host| {
            self.hosts
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(host))
        });
        let found = by_host
            .and_then(|(_, node)| self.walk(node, rest, method))
            .or_else(|| self.walk(&self.any_host, rest, method));
        match found {
            Some(route) => Decision {
                route: &route.label,
                requirement: route.requirement(),
            },
            None => Decision {
                route: "default",
                requirement: match self.default_policy {
                    DefaultPolicy::Deny => Requirement::Deny,
                    DefaultPolicy::Authenticated => Requirement::Authenticated,
                    DefaultPolicy::Allow => Requirement::Public,
                },
            },
        }
    }

    /// Depth-first: literal child, then parameter child, then a catch-all here. The first route
    /// found that also takes the method is the most specific one. The depth of the recursion is
    /// bounded by the depth of the trie, not by the request path.
    fn walk<'s>(&'s self, node: &'s Node, rest: Option<&str>, method: &str) -> Option<&'s Route> {
        let Some(rest) = rest else {
            return self.pick(&node.routes, method);
        };
        let (segment, tail) = match rest.split_once('/') {
            Some((segment, tail)) => (segment, Some(tail)),
            None => (rest, None),
        };
        if let Some(found) = node
            .literal(segment)
            .and_then(|child| self.walk(child, tail, method))
        {
            return Some(found);
        }
        if let Some(found) = node
            .param
            .as_deref()
            .and_then(|child| self.walk(child, tail, method))
        {
            return Some(found);
        }
        self.pick(&node.catch_all, method)
    }

    fn pick(&self, candidates: &[u32], method: &str) -> Option<&Route> {
        candidates
            .iter()
            .map(|&i| &self.routes[i as usize])
            .find(|route| route.allows_method(method))
    }

    /// A human description of the map, for `usher routes check FILE`.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "default policy: {} (for requests no route matches)",
            self.default_policy.as_str()
        );
        let _ = writeln!(out, "{} route(s):", self.routes.len());
        for route in &self.routes {
            let methods = match &route.methods {
                None => "any method".to_owned(),
                Some(methods) => methods.join(","),
            };
            let needs = match route.requirement() {
                Requirement::Public => "public (anyone, token or not)".to_owned(),
                Requirement::Authenticated => "any signed-in user".to_owned(),
                Requirement::Permissions(perms) => format!("all of: {}", perms.join(", ")),
                Requirement::Deny => "nobody".to_owned(),
            };
            let _ = writeln!(
                out,
                "  line {:>3}  host {:<20} {:<36} {:<16} -> {}",
                route.line,
                route.host.as_deref().unwrap_or("*"),
                route.path(),
                methods,
                needs
            );
        }
        if self.service_permissions.is_empty() {
            let _ = writeln!(out, "no service permissions");
        } else {
            let _ = writeln!(out, "service permissions:");
            for (name, description) in &self.service_permissions {
                let _ = writeln!(out, "  {name:<24} {description}");
            }
        }
        out
    }
}

/// The name a request host is matched by: `name[:port]` without the port and one trailing `.`
/// (`[v6]:port` keeps its brackets), or `None` when the host does not parse that way — an
/// empty label (`a..b`, `a..`), a character outside letters, digits, `-` and `_` (`%2e`), or a
/// port that is not 1 to 5 digits (`:abc`, `:8000:`, a bare `:`). Compare the result
/// ASCII-case-insensitively.
pub fn parse_host(host: &str) -> Option<&str> {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let end = rest.find(']')? + 2;
            let inside = &host[1..end - 1];
            let valid = !inside.is_empty()
                && inside
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            if !valid {
                return None;
            }
            (&host[..end], &host[end..])
        }
        None => match host.find(':') {
            Some(at) => (&host[..at], &host[at..]),
            None => (host, ""),
        },
    };
    if let Some(digits) = port.strip_prefix(':') {
        if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    } else if !port.is_empty() {
        return None;
    }
    if name.starts_with('[') {
        return Some(name);
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut label = 0usize;
    for b in name.bytes() {
        match b {
            b'.' if label == 0 => return None,
            b'.' => label = 0,
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => label += 1,
            _ => return None,
        }
    }
    (label > 0 && name.len() <= 253).then_some(name)
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    default_policy: Option<DefaultPolicy>,
    #[serde(default)]
    permissions: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: Option<Spanned<String>>,
    path: Spanned<String>,
    methods: Option<Spanned<Vec<Spanned<String>>>>,
    public: Option<Spanned<bool>>,
    require: Option<Spanned<Vec<Spanned<String>>>>,
}

struct Fault {
    line: Option<usize>,
    message: String,
}

/// Maps byte offsets of the file to 1-based line numbers.
struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn at(&self, offset: usize) -> usize {
        let end = offset.min(self.0.len());
        self.0.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn fault<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> Fault {
        Fault {
            line: Some(self.at(spanned.span().start)),
            message: message.into(),
        }
    }
}

/// One segment of a route pattern.
enum Segment<'a> {
    Literal(&'a str),
    Param,
    CatchAll,
}

fn compile(text: &str, builtin: &[&str]) -> Result<RouteMap, Fault> {
    let lines = Lines(text);
    let raw: RawMap = toml::from_str(text).map_err(|e| Fault {
        line: e.span().map(|span| lines.at(span.start)),
        message: e.message().trim_end().to_owned(),
    })?;

    let mut service_permissions = Vec::with_capacity(raw.permissions.len());
    for (name, description) in &raw.permissions {
        let n = name.get_ref();
        if n.is_empty()
            || n.len() > 64
            || !n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(lines.fault(
                name,
                format!("permission name `{n}` must be 1 to 64 characters of a-z, 0-9 and _"),
            ));
        }
        if builtin.contains(&n.as_str()) {
            return Err(lines.fault(
                name,
                format!("permission `{n}` is built into usher; declare only service permissions"),
            ));
        }
        service_permissions.push((n.clone(), description.get_ref().clone()));
    }
    // One shared name per permission, so a reload-stable Arc can be compared cheaply.
    let known: Vec<Arc<str>> = builtin
        .iter()
        .copied()
        .chain(service_permissions.iter().map(|(n, _)| n.as_str()))
        .map(Arc::from)
        .collect();

    let mut map = RouteMap {
        default_policy: raw.default_policy.unwrap_or(DefaultPolicy::Deny),
        service_permissions,
        routes: Vec::with_capacity(raw.route.len()),
        hosts: Vec::new(),
        any_host: Node::default(),
    };

    for raw_route in &raw.route {
        let line = lines.at(raw_route.span().start);
        let r = raw_route.get_ref();

        let rule = match (r.public.as_ref().map(|p| *p.get_ref()), &r.require) {
            (Some(true), Some(require)) => {
                return Err(lines.fault(
                    require,
                    "a route is either `public = true` or has `require = [...]`, not both",
                ))
            }
            (Some(true), None) => Rule::Public,
            (_, Some(require)) => {
                let mut perms: Vec<Arc<str>> = Vec::with_capacity(require.get_ref().len());
                for perm in require.get_ref() {
                    let Some(known) = known.iter().find(|k| ***k == **perm.get_ref()) else {
                        return Err(lines.fault(
                            perm,
                            format!(
                                "unknown permission `{}`: neither built in nor declared under [permissions]",
                                perm.get_ref()
                            ),
                        ));
                    };
                    if !perms.contains(known) {
                        perms.push(known.clone());
                    }
                }
                Rule::Require(perms.into())
            }
            (_, None) => {
                return Err(Fault {
                    line: Some(line),
                    message: "a route needs `public = true` or `require = [...]` \
                              (`require = []` for any signed-in user)"
                        .to_owned(),
                })
            }
        };

        let host = match &r.host {
            None => None,
            Some(host) => Some(check_host(host.get_ref()).map_err(|m| lines.fault(host, m))?),
        };

        let methods = match &r.methods {
            None => None,
            Some(methods) => {
                if methods.get_ref().is_empty() {
                    return Err(lines.fault(
                        methods,
                        "`methods = []` matches nothing; leave `methods` out to match every method",
                    ));
                }
                let mut names: Vec<Box<str>> = Vec::new();
                for method in methods.get_ref() {
                    let m = method.get_ref();
                    if m.is_empty()
                        || !m
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        return Err(lines.fault(method, format!("`{m}` is not an HTTP method")));
                    }
                    let upper: Box<str> = m.to_ascii_uppercase().into();
                    if !names.contains(&upper) {
                        names.push(upper);
                    }
                }
                Some(names.into_boxed_slice())
            }
        };

        let path = r.path.get_ref();
        let segments = parse_pattern(path).map_err(|m| lines.fault(&r.path, m))?;

        let index = u32::try_from(map.routes.len()).map_err(|_| Fault {
            line: Some(line),
            message: "too many routes".to_owned(),
        })?;
        let label: Box<str> = match &host {
            Some(host) => format!("{host}{path}").into(),
            None => path.as_str().into(),
        };
        let route = Route {
            line,
            host,
            methods,
            label,
            path_len: path.len(),
            rule,
        };

        let root = match &route.host {
            None => &mut map.any_host,
            Some(host) => {
                let i = match map.hosts.iter().position(|(h, _)| h == host) {
                    Some(i) => i,
                    None => {
                        map.hosts.push((host.clone(), Node::default()));
                        map.hosts.len() - 1
                    }
                };
                &mut map.hosts[i].1
            }
        };
        let slot = insert(root, &segments);
        if let Some(&other) = slot
            .iter()
            .find(|&&other| methods_overlap(&map.routes[other as usize].methods, &route.methods))
        {
            let other = &map.routes[other as usize];
            return Err(Fault {
                line: Some(line),
                message: format!(
                    "route `{}` duplicates the route on line {} (same host, path and method)",
                    route.label, other.line
                ),
            });
        }
        slot.push(index);
        map.routes.push(route);
    }
    Ok(map)
}

/// Walks (creating) the trie along `segments`; returns the list the route belongs in.
fn insert<'n>(root: &'n mut Node, segments: &[Segment<'_>]) -> &'n mut Vec<u32> {
    let mut node = root;
    for segment in segments {
        node = match segment {
            Segment::Literal(s) => node.literal_mut(s),
            Segment::Param => node.param.get_or_insert_with(Default::default),
            Segment::CatchAll => return &mut node.catch_all,
        };
    }
    &mut node.routes
}

fn methods_overlap(a: &Option<Box<[Box<str>]>>, b: &Option<Box<[Box<str>]>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}

fn check_host(host: &str) -> Result<Box<str>, String> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = !host.is_empty()
        && if host.starts_with('[') {
            host.ends_with(']')
                && host[1..host.len() - 1]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        } else {
            host.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        };
    if valid {
        Ok(host.to_ascii_lowercase().into())
    } else {
        Err(format!(
            "host `{host}` must be a bare host name or IP address, without scheme, port or path"
        ))
    }
}

/// Splits a route pattern into segments. Patterns are written in normalised form — the form
/// requests are judged in — so a pattern that no normalised path could match is refused.
fn parse_pattern(path: &str) -> Result<Vec<Segment<'_>>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("path `{path}` must start with '/'"));
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if part.is_empty() || *part == "." || *part == ".." {
            return Err(format!(
                "path `{path}` is not normalised: no empty, '.' or '..' segments and no trailing \
                 '/' (requests are judged after normalisation, so it could never match)"
            ));
        }
        if part
            .bytes()
            .any(|b| b.is_ascii_control() || b"%?#;\\".contains(&b))
            || part.ends_with(|c: char| c == '.' || c.is_whitespace())
        {
            return Err(format!(
                "path `{path}` must be written decoded, without '%', '?', '#', ';', '\\', control \
                 characters or a segment ending in '.' or whitespace (requests with those are refused)"
            ));
        }
        let segment = if let Some(name) = part.strip_prefix("{*").and_then(|p| p.strip_suffix('}'))
        {
            check_param_name(path, name)?;
            if !last {
                return Err(format!(
                    "path `{path}`: a catch-all `{{*{name}}}` must be the last segment"
                ));
            }
            Segment::CatchAll
        } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            check_param_name(path, name)?;
            Segment::Param
        } else if part.contains(['{', '}']) {
            return Err(format!(
                "path `{path}`: a parameter must fill a whole segment, like `/{{id}}` or `/{{*rest}}`"
            ));
        } else {
            Segment::Literal(part)
        };
        segments.push(segment);
    }
    Ok(segments)
}

fn check_param_name(path: &str, name: &str) -> Result<(), String> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(format!(
            "path `{path}`: parameter names are letters, digits and _ (`{{{name}}}`)"
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Reloading
// ---------------------------------------------------------------------------------------------

/// What identifies a version of the file cheaply: modification time, length and inode (through
/// symlinks, so a Kubernetes ConfigMap update, which swaps the `..data` link to a new folder,
/// is a change even if the new file has the old one's time and length).
type Stamp = Option<(SystemTime, u64, u64)>;

async fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = tokio::fs::metadata(path).await.ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// Keeps `current` in step with the file at `path`: checks its modification time and length
/// every second and reloads when they change, and reloads on SIGHUP. A file that fails to load
/// leaves the old map in force and is logged; a good one is swapped in atomically (requests in
/// flight finish with the map they started with) and passed to `on_reload`.
pub fn spawn_reloader(
    path: PathBuf,
    builtin: Vec<String>,
    current: Arc<arc_swap::ArcSwap<RouteMap>>,
    on_reload: impl Fn(&RouteMap) + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let builtin: Vec<&str> = builtin.iter().map(String::as_str).collect();
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; the route map reloads only when its file changes");
                None
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The map in `current` was loaded from the file as it is now.
        let mut seen = stamp(&path).await;
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            let now = stamp(&path).await;
            if !forced && now == seen {
                continue;
            }
            seen = now;
            let loaded = match tokio::fs::read_to_string(&path).await {
                Ok(text) => compile(&text, &builtin).map_err(|e| RouteMapError::Invalid {
                    file: Some(path.clone()),
                    line: e.line,
                    message: e.message,
                }),
                Err(source) => Err(RouteMapError::Read {
                    path: path.clone(),
                    source,
                }),
            };
            match loaded {
                Ok(map) => {
                    tracing::info!(
                        file = %path.display(),
                        routes = map.routes(),
                        "route map reloaded"
                    );
                    let map = Arc::new(map);
                    current.store(map.clone());
                    on_reload(&map);
                }
                Err(error) => {
                    tracing::warn!(%error, "route map not reloaded; the previous one stays in force");
                }
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const BUILTIN: &[&str] = &["user_self_read", "user_all_read", "role_read"];

    #[test]
    fn normalisation_table() {
        let ok: &[(&str, &str)] = &[
            ("", "/"),
            ("/", "/"),
            ("?x=1", "/"),
            ("/films", "/films"),
            ("/films/", "/films"),
            ("/films?page=2", "/films"),
            ("/films/?page=2#top", "/films"),
            ("/films#frag", "/films"),
            ("//films", "/films"),
            ("/api//v1///films", "/api/v1/films"),
            ("/./films/.", "/films"),
            ("/api/v1/films/../admin", "/api/v1/admin"),
            ("/api/v1/films/1/../../admin", "/api/v1/admin"),
            ("/%61pi/v1/%46ilms", "/api/v1/Films"),
            ("/a%20b/c", "/a b/c"),
            ("/caf%C3%A9", "/café"),
            ("/café", "/café"),
            ("/a/..", "/"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize_path(raw).as_deref(), Ok(*want), "{raw:?}");
        }
        let bad: &[(&str, PathError)] = &[
            ("/..", PathError::AboveRoot),
            ("/../etc/passwd", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/..?x=/../..", PathError::AboveRoot),
            // What a gateway and an upstream could read differently.
            ("/films/42/stream;jsessionid=x", PathError::Semicolon),
            ("/films;x/42/stream", PathError::Semicolon),
            ("/films/42/stream\\", PathError::Backslash),
            ("/films\\..\\admin", PathError::Backslash),
            ("/films/42/stream.", PathError::AmbiguousSegment),
            ("/films/42/stream./", PathError::AmbiguousSegment),
            ("/films/42/stream...", PathError::AmbiguousSegment),
            ("/films/42/stream%20", PathError::AmbiguousSegment),
            ("/films/42/stream%C2%A0", PathError::AmbiguousSegment),
            ("/films/42/stream%20/x", PathError::AmbiguousSegment),
            ("/films/42/stream%09", PathError::ControlCharacter),
            ("/films/42/stream%3Fx=1", PathError::EncodedDelimiter),
            ("/films/42/stream%3fx=1", PathError::EncodedDelimiter),
            ("/films/42/stream%3B", PathError::EncodedDelimiter),
            ("/films/42/stream%23", PathError::EncodedDelimiter),
            ("/films/42/stream%5c", PathError::EncodedDelimiter),
            ("/films%2F..%2Fadmin", PathError::EncodedDelimiter),
            ("/films%2fx", PathError::EncodedDelimiter),
            ("/films/%2e%2e/admin", PathError::EncodedDelimiter),
            ("/films/.%2E/admin", PathError::EncodedDelimiter),
            ("/films/%252e%252e/admin", PathError::EncodedDelimiter),
            ("/%ff", PathError::InvalidUtf8),
            ("/%c3", PathError::InvalidUtf8),
            ("/%00", PathError::ControlCharacter),
            ("/a\0b", PathError::ControlCharacter),
            ("/a%0d%0aX-Injected:1", PathError::ControlCharacter),
            ("/%", PathError::InvalidEncoding),
            ("/%2", PathError::InvalidEncoding),
            ("/%zz", PathError::InvalidEncoding),
            ("films", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("http://evil/admin", PathError::NotAbsolute),
        ];
        for (raw, want) in bad {
            assert_eq!(normalize_path(raw).as_ref(), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for raw in ["/", "/api/v1/films", "/api/v1/films/42?x=1", "/a.b/c..d/.e"] {
            assert!(
                matches!(normalize_path(raw), Ok(Cow::Borrowed(_))),
                "{raw:?}"
            );
        }
        for raw in ["/a/", "/a//b", "/a/./b", "/a/../b", "/a%20b", "/a/."] {
            assert!(matches!(normalize_path(raw), Ok(Cow::Owned(_))), "{raw:?}");
        }
    }

    const CINEMA: &str = r#"
default_policy = "deny"

[permissions]
films_read = "Browse the film catalog"
films_watch = "Stream films"
films_admin = "Manage the catalog"

[[route]]
path = "/api/v1/films"
methods = ["GET", "head"]
require = ["films_read"]

[[route]]
path = "/api/v1/films/{*rest}"
methods = ["GET", "HEAD"]
require = ["films_read"]

[[route]]
path = "/api/v1/films/{id}/stream"
methods = ["GET"]
require = ["films_watch"]

[[route]]
path = "/api/v1/films/{id}"
methods = ["PUT", "DELETE"]
require = ["films_admin"]

[[route]]
path = "/api/v1/films/new"
methods = ["GET"]
require = []

[[route]]
path = "/api/v1/admin/{*rest}"
require = ["films_admin"]

[[route]]
path = "/api/v1/auth/{*rest}"
public = true

[[route]]
path = "/"
public = true

[[route]]
host = "Admin.Cinema.Local"
path = "/{*rest}"
require = ["user_all_read"]
"#;

    fn cinema() -> RouteMap {
        RouteMap::parse(CINEMA, BUILTIN).unwrap()
    }

    fn needs<'a>(map: &'a RouteMap, host: Option<&str>, method: &str, path: &str) -> Decision<'a> {
        map.decide(host, method, path).unwrap()
    }

    #[test]
    fn most_specific_route_wins() {
        let map = cinema();
        let read = Requirement::Permissions(&[Arc::from("films_read")][..]);
        let d = needs(&map, None, "GET", "/api/v1/films/42");
        assert_eq!(d.route, "/api/v1/films/{*rest}");
        assert_eq!(format!("{:?}", d.requirement), format!("{read:?}"));

        // A literal segment beats `{id}`, which beats the catch-all.
        let d = needs(&map, None, "GET", "/api/v1/films/new");
        assert_eq!(d.route, "/api/v1/films/new");
        assert_eq!(d.requirement, Requirement::Authenticated);
        let d = needs(&map, None, "GET", "/api/v1/films/42/stream");
        assert_eq!(d.route, "/api/v1/films/{id}/stream");
        assert!(matches!(d.requirement, Requirement::Permissions(p) if &*p[0] == "films_watch"));
        // Deeper than `{id}/stream`: back to the catch-all.
        let d = needs(&map, None, "GET", "/api/v1/films/42/stream/hd");
        assert_eq!(d.route, "/api/v1/films/{*rest}");
        let d = needs(&map, None, "GET", "/api/v1/films");
        assert_eq!(d.route, "/api/v1/films");
        let d = needs(&map, None, "POST", "/api/v1/auth/login");
        assert_eq!(d.requirement, Requirement::Public);
        let d = needs(&map, None, "GET", "/");
        assert_eq!((d.route, d.requirement), ("/", Requirement::Public));
    }

    #[test]
    fn methods_filter_and_fall_back() {
        let map = cinema();
        // Only GET/HEAD reach the catalog route; anything else is not covered → default deny.
        let d = needs(&map, None, "POST", "/api/v1/films/42");
        assert_eq!((d.route, d.requirement), ("default", Requirement::Deny));
        // `{id}` takes PUT and DELETE only; GET falls back to the catch-all.
        let d = needs(&map, None, "DELETE", "/api/v1/films/42");
        assert_eq!(d.route, "/api/v1/films/{id}");
        let d = needs(&map, None, "GET", "/api/v1/films/42");
        assert_eq!(d.route, "/api/v1/films/{*rest}");
        // The stream route is GET only; HEAD falls back to the catch-all's films_read.
        let d = needs(&map, None, "HEAD", "/api/v1/films/42/stream");
        assert_eq!(d.route, "/api/v1/films/{*rest}");
        // Methods compare case-insensitively both ways ("head" in the file, "get" on the wire).
        let d = needs(&map, None, "head", "/api/v1/films");
        assert_eq!(d.route, "/api/v1/films");
        let d = needs(&map, None, "get", "/api/v1/films/42/stream");
        assert_eq!(d.route, "/api/v1/films/{id}/stream");
        // `new` is GET only; DELETE on it falls back to `{id}`.
        let d = needs(&map, None, "DELETE", "/api/v1/films/new");
        assert_eq!(d.route, "/api/v1/films/{id}");
    }

    #[test]
    fn host_routes_come_first() {
        let map = cinema();
        for host in [
            "admin.cinema.local",
            "ADMIN.cinema.local",
            "admin.cinema.local:8443",
            "admin.cinema.local.",
        ] {
            let d = needs(&map, Some(host), "GET", "/api/v1/auth/login");
            assert_eq!(d.route, "admin.cinema.local/{*rest}", "{host}");
        }
        // `/{*rest}` does not match `/`; the host-less `/` route does.
        let d = needs(&map, Some("admin.cinema.local"), "GET", "/");
        assert_eq!(d.route, "/");
        let d = needs(&map, Some("www.cinema.local"), "GET", "/api/v1/auth/login");
        assert_eq!(d.route, "/api/v1/auth/{*rest}");
        let d = needs(&map, None, "GET", "/api/v1/auth/login");
        assert_eq!(d.route, "/api/v1/auth/{*rest}");
        assert_eq!(parse_host("[::1]:8080"), Some("[::1]"));
        assert_eq!(parse_host("[::1]"), Some("[::1]"));
        assert_eq!(parse_host("Example.COM."), Some("Example.COM"));
        assert_eq!(parse_host("10.0.0.1:65535"), Some("10.0.0.1"));
        // Hosts that do not parse are refused, never judged as "no host".
        for host in [
            "admin.cinema.local:abc",
            "admin.cinema.local:8000:",
            "admin.cinema.local:",
            "admin.cinema.local..",
            "admin..cinema.local",
            ".admin.cinema.local",
            "admin%2ecinema.local",
            "admin.cinema.local%2e",
            "admin.cinema.local:123456",
            "admin.cinema.local/x",
            "user@admin.cinema.local",
            "",
            ".",
            ":80",
            "[::1",
            "[]:80",
            "[::1]x",
            "[::1]:",
        ] {
            assert_eq!(parse_host(host), None, "{host:?}");
            assert_eq!(
                map.decide(Some(host), "GET", "/api/v1/auth/login"),
                Err(PathError::InvalidHost),
                "{host:?}"
            );
        }
    }

    #[test]
    fn literal_segments_match_case_insensitively() {
        let map = cinema();
        for path in [
            "/api/v1/films/42/STREAM",
            "/API/V1/Films/42/Stream",
            "/api/v1/films/42/%53tream",
        ] {
            let d = needs(&map, None, "GET", path);
            assert_eq!(d.route, "/api/v1/films/{id}/stream", "{path}");
        }
        let d = needs(&map, None, "GET", "/API/v1/ADMIN/users");
        assert_eq!(d.route, "/api/v1/admin/{*rest}");
        // Two spellings of one route are one route.
        let text = "[[route]]\npath = \"/Films\"\npublic = true\n\
                    [[route]]\npath = \"/films\"\nrequire = []\n";
        let (line, message) = line_of(text);
        assert_eq!(line, 4, "{message}");
    }

    #[test]
    fn default_policies() {
        let rest = "\n[[route]]\npath = \"/open\"\npublic = true\n";
        for (policy, want) in [
            ("deny", Requirement::Deny),
            ("authenticated", Requirement::Authenticated),
            ("allow", Requirement::Public),
        ] {
            let map =
                RouteMap::parse(&format!("default_policy = \"{policy}\"{rest}"), BUILTIN).unwrap();
            let d = needs(&map, None, "GET", "/elsewhere");
            assert_eq!((d.route, d.requirement), ("default", want), "{policy}");
            assert_eq!(
                needs(&map, None, "GET", "/open").requirement,
                Requirement::Public
            );
        }
        let map = RouteMap::parse(rest, BUILTIN).unwrap();
        assert_eq!(map.default_policy(), DefaultPolicy::Deny);
        let map = RouteMap::parse("", BUILTIN).unwrap();
        assert_eq!(map.routes(), 0);
        assert_eq!(needs(&map, None, "GET", "/").requirement, Requirement::Deny);
    }

    #[test]
    fn traversal_reaches_the_stricter_route() {
        let map = cinema();
        for path in [
            "/api/v1/films/../admin/users",
            "/api/v1/films/1/../../admin/users?films",
            "//api//v1/admin/users/",
            "/api/v1/auth/../admin/users",
            "/api/v1/./admin/./users",
        ] {
            let d = needs(&map, None, "GET", path);
            assert_eq!(d.route, "/api/v1/admin/{*rest}", "{path}");
        }
        // Encoded dots and slashes are refused, not resolved: NGINX forwards them as written.
        for path in [
            "/api/v1/films/%2e%2e/admin/users",
            "/api/v1/films/.%2E/admin/users",
            "/api/v1/films%2f..%2fadmin/users",
            "/api/v1/films/%252e%252e/admin",
        ] {
            assert_eq!(
                map.decide(None, "GET", path),
                Err(PathError::EncodedDelimiter),
                "{path}"
            );
        }
        assert_eq!(
            map.decide(None, "GET", "/api/../../admin"),
            Err(PathError::AboveRoot)
        );
        assert_eq!(
            map.decide(None, "GET", "/api/v1/films/%ff"),
            Err(PathError::InvalidUtf8)
        );
    }

    #[test]
    fn service_permissions_and_explain() {
        let map = cinema();
        let names: Vec<&str> = map
            .service_permissions()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["films_admin", "films_read", "films_watch"]);
        assert_eq!(map.routes(), 9);
        let text = map.explain();
        assert!(text.contains("default policy: deny"), "{text}");
        assert!(text.contains("/api/v1/films/{id}/stream"), "{text}");
        assert!(text.contains("all of: films_watch"), "{text}");
        assert!(text.contains("admin.cinema.local"), "{text}");
        assert!(text.contains("Stream films"), "{text}");
    }

    fn line_of(text: &str) -> (usize, String) {
        let err = RouteMap::parse(text, BUILTIN).unwrap_err();
        (err.line().unwrap_or(0), err.to_string())
    }

    #[test]
    fn validation_names_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("default_policy = \"deny\"\n[[route]\n", 2, ""),
            ("default_policy = \"maybe\"\n", 1, "maybe"),
            (
                "[permissions]\nfilms_read = \"x\"\n\n[[route]]\npath = \"/a\"\nrequire = [\n  \"films_read\",\n  \"films_raed\",\n]\n",
                8,
                "films_raed",
            ),
            (
                "[[route]]\npath = \"/a\"\npublic = true\n\n[[route]]\npath = \"/b/{id}\"\nrequire = []\n\n[[route]]\npath = \"/b/{name}\"\nmethods = [\"GET\"]\nrequire = []\n",
                9,
                "line 5",
            ),
            (
                "[[route]]\nhost = \"a.b\"\npath = \"/x\"\nmethods = [\"GET\", \"POST\"]\npublic = true\n[[route]]\nhost = \"A.B\"\npath = \"/x\"\nmethods = [\"post\"]\npublic = true\n",
                6,
                "line 1",
            ),
            ("\n[[route]]\npath = \"/a/{*rest}/b\"\npublic = true\n", 3, "catch-all"),
            ("\n[[route]]\npath = \"a\"\npublic = true\n", 3, "start with"),
            ("\n[[route]]\npath = \"/a/\"\npublic = true\n", 3, "normalised"),
            ("\n[[route]]\npath = \"/a//b\"\npublic = true\n", 3, "normalised"),
            ("\n[[route]]\npath = \"/a/x{id}\"\npublic = true\n", 3, "whole segment"),
            ("\n[[route]]\npath = \"/a/{}\"\npublic = true\n", 3, "parameter names"),
            ("\n[[route]]\npath = \"/a%2Fb\"\npublic = true\n", 3, "decoded"),
            ("\n\n[[route]]\npath = \"/a\"\npublik = true\n", 5, "publik"),
            ("colour = 1\n", 1, "colour"),
            ("\n[[route]]\npath = \"/a\"\npublic = true\nrequire = []\n", 5, "not both"),
            ("\n[[route]]\npath = \"/a\"\n", 2, "public = true"),
            ("\n[[route]]\npath = \"/a\"\npublic = false\n", 2, "public = true"),
            ("\n[[route]]\npath = \"/a\"\nmethods = []\nrequire = []\n", 4, "methods"),
            ("\n[[route]]\npath = \"/a\"\nmethods = [\"G T\"]\nrequire = []\n", 4, "G T"),
            ("\n[[route]]\nhost = \"a.b:80\"\npath = \"/a\"\npublic = true\n", 3, "port"),
            ("\n[permissions]\nFilms = \"x\"\n", 3, "Films"),
            ("\n[permissions]\nrole_read = \"x\"\n", 3, "built into"),
        ];
        for (text, line, needle) in cases {
            let (got, message) = line_of(text);
            assert_eq!(got, *line, "{text:?} → {message}");
            assert!(message.contains(needle), "{text:?} → {message}");
            assert!(message.starts_with(&format!("line {line}: ")), "{message}");
        }
    }

    #[test]
    fn non_overlapping_methods_may_share_a_path() {
        let text = "[[route]]\npath = \"/a/{id}\"\nmethods = [\"GET\"]\npublic = true\n\
                    [[route]]\npath = \"/a/{name}\"\nmethods = [\"POST\"]\nrequire = []\n";
        let map = RouteMap::parse(text, BUILTIN).unwrap();
        assert_eq!(
            needs(&map, None, "GET", "/a/1").requirement,
            Requirement::Public
        );
        assert_eq!(
            needs(&map, None, "POST", "/a/1").requirement,
            Requirement::Authenticated
        );
        assert_eq!(
            needs(&map, None, "PUT", "/a/1").requirement,
            Requirement::Deny
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("usher-routes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("routes.toml");
        std::fs::write(&file, "\n[[route]]\npath = \"/a\"\nrequire = [\"nope\"]\n").unwrap();
        let err = RouteMap::load(&file, BUILTIN).unwrap_err();
        assert_eq!(err.line(), Some(4));
        assert!(err
            .to_string()
            .contains("routes.toml, line 4: unknown permission `nope`"));
        let missing = RouteMap::load(&dir.join("missing.toml"), BUILTIN).unwrap_err();
        assert!(matches!(missing, RouteMapError::Read { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn example_route_map_is_valid() {
        let text = include_str!("../../gateway-config/routes.toml");
        let builtin = [
            "user_self_read",
            "user_self_update",
            "user_self_delete",
            "user_all_read",
            "user_all_update",
            "user_all_delete",
            "user_all_set_role",
            "role_read",
            "role_create",
            "role_update",
            "role_delete",
            "permission_read",
        ];
        let map = RouteMap::parse(text, &builtin).unwrap();
        assert_eq!(map.default_policy(), DefaultPolicy::Deny);
        let d = needs(&map, None, "GET", "/api/v1/films/42/stream");
        assert!(matches!(d.requirement, Requirement::Permissions(p) if &*p[0] == "films_watch"));
        let d = needs(&map, None, "GET", "/api/v1/films?page=2");
        assert!(matches!(d.requirement, Requirement::Permissions(p) if &*p[0] == "films_read"));
        for path in [
            "/api/v1/auth/login",
            "/api/v1/users/me",
            "/api/v1/roles",
            "/api/v1/permissions",
            "/.well-known/jwks.json",
        ] {
            assert_eq!(
                needs(&map, None, "GET", path).requirement,
                Requirement::Public,
                "{path}"
            );
        }
        assert_eq!(
            needs(&map, None, "GET", "/api/v1/films/../../v2/secret").requirement,
            Requirement::Deny
        );
    }

    #[tokio::test]
    async fn reloader_swaps_good_maps_and_keeps_the_old_on_bad_ones() {
        let dir = std::env::temp_dir().join(format!("usher-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("routes.toml");
        std::fs::write(&file, "default_policy = \"deny\"\n").unwrap();
        let map = RouteMap::load(&file, BUILTIN).unwrap();
        let current = Arc::new(arc_swap::ArcSwap::from_pointee(map));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = spawn_reloader(
            file.clone(),
            BUILTIN.iter().map(|s| s.to_string()).collect(),
            current.clone(),
            move |map| {
                let _ = tx.send(map.default_policy());
            },
        );
        // A bad file (and a different length, so the stamp changes) is refused.
        std::fs::write(&file, "default_policy = \"allow\"\nbogus = 1\n").unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(current.load().default_policy(), DefaultPolicy::Deny);

        std::fs::write(&file, "default_policy = \"allow\"\n").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        assert_eq!(got, Some(DefaultPolicy::Allow));
        assert_eq!(current.load().default_policy(), DefaultPolicy::Allow);
        task.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn sighup_reloads_even_when_the_file_looks_unchanged() {
        let dir = std::env::temp_dir().join(format!("usher-hup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("routes.toml");
        std::fs::write(&file, "default_policy = \"deny\" \n").unwrap();
        let stamp = std::fs::metadata(&file).unwrap().modified().unwrap();
        let current = Arc::new(arc_swap::ArcSwap::from_pointee(
            RouteMap::load(&file, BUILTIN).unwrap(),
        ));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = spawn_reloader(
            file.clone(),
            BUILTIN.iter().map(|s| s.to_string()).collect(),
            current.clone(),
            move |map| {
                let _ = tx.send(map.default_policy());
            },
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Same length, same modification time: only a SIGHUP can tell usher to look again.
        std::fs::write(&file, "default_policy = \"allow\"\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(stamp)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            rx.try_recv().is_err(),
            "the poller should not have seen a change"
        );
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        assert_eq!(got, Some(DefaultPolicy::Allow));
        task.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
