//! The compiled map: one segment trie per host, and the matching.

use std::fmt::Write as _;
use std::sync::Arc;

use super::normalize::{normalize_path, parse_host};
use super::{Decision, DefaultPolicy, PathError, Requirement};

/// A validated, compiled route map. Immutable; a reload builds a new one.
#[derive(Debug)]
pub struct RouteMap {
    pub(super) default_policy: DefaultPolicy,
    pub(super) service_permissions: Vec<(String, String)>,
    pub(super) routes: Vec<Route>,
    /// Host-specific tries, host names lower-case without a trailing dot.
    pub(super) hosts: Vec<(Box<str>, Node)>,
    pub(super) any_host: Node,
}

#[derive(Debug)]
pub(super) struct Route {
    pub(super) line: usize,
    pub(super) host: Option<Box<str>>,
    /// Upper-case method names; `None` means every method.
    pub(super) methods: Option<Box<[Box<str>]>>,
    /// The metrics label: `path`, or `host` + `path`.
    pub(super) label: Box<str>,
    pub(super) path_len: usize,
    pub(super) rule: Rule,
}

#[derive(Debug)]
pub(super) enum Rule {
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
pub(super) struct Node {
    /// Sorted by segment for binary search.
    pub(super) literals: Vec<(Box<str>, Node)>,
    pub(super) param: Option<Box<Node>>,
    pub(super) routes: Vec<u32>,
    pub(super) catch_all: Vec<u32>,
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

/// One segment of a route pattern.
pub(super) enum Segment<'a> {
    Literal(&'a str),
    Param,
    CatchAll,
}

pub(super) fn insert<'n>(root: &'n mut Node, segments: &[Segment<'_>]) -> &'n mut Vec<u32> {
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
