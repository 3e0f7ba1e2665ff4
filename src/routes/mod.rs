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
//!
//! # Layout
//!
//! - `normalize`: the path and host a request is judged by;
//! - `map`: the compiled map, its segment tries and the matching;
//! - `compile`: parsing and validating the file into a map;
//! - `reload`: following the file as it changes.

mod compile;
mod map;
mod normalize;
mod reload;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

pub use map::RouteMap;
pub use normalize::{normalize_path, parse_host};
pub use reload::{spawn_reloader, Reload};

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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
