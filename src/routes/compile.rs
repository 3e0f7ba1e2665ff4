//! Parsing and validation: the file into a [`RouteMap`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::map::{insert, Node, Route, Rule, Segment};
use super::{DefaultPolicy, RouteMap, RouteMapError};

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
}

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

/// The file, step by step: parse the TOML, check the declared permissions, then compile each
/// route and place it in its host's trie. The first fault stops it.
fn compile(text: &str, builtin: &[&str]) -> Result<RouteMap, Fault> {
    let lines = Lines(text);
    let raw = parse_toml(text, &lines)?;
    let service_permissions = declared_permissions(&raw.permissions, builtin, &lines)?;
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
        let (route, segments) = compile_route(raw_route, &known, &lines)?;
        place(&mut map, route, &segments)?;
    }
    Ok(map)
}

/// Step 1: the TOML, into the shape of the file.
fn parse_toml(text: &str, lines: &Lines<'_>) -> Result<RawMap, Fault> {
    toml::from_str(text).map_err(|e| Fault {
        line: e.span().map(|span| lines.at(span.start)),
        message: e.message().trim_end().to_owned(),
    })
}

/// Step 2: the `[permissions]` table: well-formed names, none of them built in.
fn declared_permissions(
    declared: &BTreeMap<Spanned<String>, Spanned<String>>,
    builtin: &[&str],
    lines: &Lines<'_>,
) -> Result<Vec<(String, String)>, Fault> {
    let mut service_permissions = Vec::with_capacity(declared.len());
    for (name, description) in declared {
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
    Ok(service_permissions)
}

/// Step 3: one `[[route]]`: its rule, host, methods and path pattern.
fn compile_route<'t>(
    raw_route: &'t Spanned<RawRoute>,
    known: &[Arc<str>],
    lines: &Lines<'_>,
) -> Result<(Route, Vec<Segment<'t>>), Fault> {
    let line = lines.at(raw_route.span().start);
    let r = raw_route.get_ref();
    let rule = route_rule(r, line, known, lines)?;
    let host = match &r.host {
        None => None,
        Some(host) => Some(check_host(host.get_ref()).map_err(|m| lines.fault(host, m))?),
    };
    let methods = match &r.methods {
        None => None,
        Some(methods) => Some(route_methods(methods, lines)?),
    };
    let path = r.path.get_ref();
    let segments = parse_pattern(path).map_err(|m| lines.fault(&r.path, m))?;
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
    Ok((route, segments))
}

/// `public = true`, or `require = [...]` of known permissions (each once).
fn route_rule(
    r: &RawRoute,
    line: usize,
    known: &[Arc<str>],
    lines: &Lines<'_>,
) -> Result<Rule, Fault> {
    match (r.public.as_ref().map(|p| *p.get_ref()), &r.require) {
        (Some(true), Some(require)) => Err(lines.fault(
            require,
            "a route is either `public = true` or has `require = [...]`, not both",
        )),
        (Some(true), None) => Ok(Rule::Public),
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
            Ok(Rule::Require(perms.into()))
        }
        (_, None) => Err(Fault {
            line: Some(line),
            message: "a route needs `public = true` or `require = [...]` \
                      (`require = []` for any signed-in user)"
                .to_owned(),
        }),
    }
}

/// A non-empty list of method names, upper-cased, each once.
fn route_methods(
    methods: &Spanned<Vec<Spanned<String>>>,
    lines: &Lines<'_>,
) -> Result<Box<[Box<str>]>, Fault> {
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
    Ok(names.into_boxed_slice())
}

/// Step 4: the route into its host's trie, refusing a second route with the same host, path
/// and an overlapping method.
fn place(map: &mut RouteMap, route: Route, segments: &[Segment<'_>]) -> Result<(), Fault> {
    let index = u32::try_from(map.routes.len()).map_err(|_| Fault {
        line: Some(route.line),
        message: "too many routes".to_owned(),
    })?;
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
    let slot = insert(root, segments);
    if let Some(&other) = slot
        .iter()
        .find(|&&other| methods_overlap(&map.routes[other as usize].methods, &route.methods))
    {
        let other = &map.routes[other as usize];
        return Err(Fault {
            line: Some(route.line),
            message: format!(
                "route `{}` duplicates the route on line {} (same host, path and method)",
                route.label, other.line
            ),
        });
    }
    slot.push(index);
    map.routes.push(route);
    Ok(())
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
