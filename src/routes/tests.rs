use std::borrow::Cow;

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
