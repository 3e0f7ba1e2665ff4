//! The API's operations as a type: which method and path reach which operation
//! ([`Endpoint::recognise`], one `match`), who may call it ([`Endpoint::access`]), and its
//! path template ([`Endpoint::template`], also its metrics label). The router
//! (`http::api`), the metrics and the tests that hold `openapi.json` to the code all read this
//! one table.
//!
//! Path parameters are carried as the raw segment: the handler parses them after the caller is
//! authenticated, so a malformed id without a token is 401, and with one is 404.

use std::sync::LazyLock;

use http::Method;

use super::Listener;
use crate::metrics::UNMATCHED;
use crate::permissions::Permission;

/// One operation of the API listener, or of the internal listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `POST /api/v1/auth/register`
    Register,
    /// `POST /api/v1/auth/login`
    Login,
    /// `POST /api/v1/auth/refresh`
    Refresh,
    /// `POST /api/v1/auth/logout`
    Logout,
    /// `POST /api/v1/auth/logout-all`
    LogoutAll,
    /// `GET /api/v1/auth/sessions`
    Sessions,
    /// `DELETE /api/v1/auth/sessions/{id}`
    EndSession { session: &'a str },
    /// `GET /api/v1/auth/history`
    OwnHistory,
    /// `GET /api/v1/users/me`
    Me,
    /// `PATCH /api/v1/users/me`
    UpdateMe,
    /// `DELETE /api/v1/users/me`
    DisableMe,
    /// `POST /api/v1/users/me/password`
    ChangePassword,
    /// `GET /api/v1/users`
    Users,
    /// `GET /api/v1/users/{id}`
    User { user: &'a str },
    /// `PATCH /api/v1/users/{id}`
    UpdateUser { user: &'a str },
    /// `DELETE /api/v1/users/{id}`
    DisableUser { user: &'a str },
    /// `GET /api/v1/users/{id}/history`
    UserHistory { user: &'a str },
    /// `GET /api/v1/users/{id}/roles`
    UserRoles { user: &'a str },
    /// `PUT /api/v1/users/{id}/roles/{role_id}`
    AssignRole { user: &'a str, role: &'a str },
    /// `DELETE /api/v1/users/{id}/roles/{role_id}`
    RemoveRole { user: &'a str, role: &'a str },
    /// `GET /api/v1/roles`
    Roles,
    /// `POST /api/v1/roles`
    CreateRole,
    /// `GET /api/v1/roles/{id}`
    Role { role: &'a str },
    /// `PATCH /api/v1/roles/{id}`
    UpdateRole { role: &'a str },
    /// `DELETE /api/v1/roles/{id}`
    DeleteRole { role: &'a str },
    /// `GET /api/v1/permissions`
    Permissions,
    /// `GET /.well-known/jwks.json`
    Jwks,
    /// `GET /openapi.json`
    OpenApi,
    /// `GET /docs`
    Docs,
    /// Internal listener: `ANY /ext_authz/{path}` (Envoy `ext_authz` over HTTP).
    ExtAuthz,
    /// Internal listener: `GET /auth` (NGINX `auth_request`, Traefik `forwardAuth`).
    AuthRequest,
    /// Internal listener: `POST /envoy.service.auth.v3.Authorization/Check` (gRPC).
    GrpcCheck,
    /// Internal listener: `GET /healthz`
    Healthz,
    /// Internal listener: `GET /readyz`
    Readyz,
    /// Internal listener: `GET /metrics`
    Metrics,
}

/// Who may call an endpoint. Every endpoint but the [`Access::Anyone`] ones needs an access
/// token first (401 without a usable one); then:
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed.
    Anyone,
    /// Any access token.
    Token,
    /// An access token whose roles hold this permission (403 otherwise).
    Holds(Permission),
    /// `own` when the user in the path is the caller, `any` for anyone (holding `any` is
    /// enough for oneself too); decided once the handler has parsed the user id.
    OwnOrAny { own: Permission, any: Permission },
}

/// Why a request is no operation: 404, or 405 naming the methods the path has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrecognised {
    /// No operation has this path.
    NotFound,
    /// Operations have this path, not with this method.
    MethodNotAllowed {
        /// The `Allow` header.
        allow: &'static str,
        /// The path's template, for the metrics.
        template: &'static str,
    },
}

impl Unrecognised {
    /// 405 for a path whose `operations` all take another method.
    fn not_allowed(operations: &[Endpoint<'_>]) -> Unrecognised {
        // Each path's `Allow`, joined once from the table.
        static ALLOW: LazyLock<Vec<(&'static str, String)>> = LazyLock::new(|| {
            let mut allow: Vec<(&'static str, String)> = Vec::new();
            for e in Endpoint::ALL
                .iter()
                .filter(|e| e.listener() == Listener::Api)
            {
                match allow.iter_mut().find(|(t, _)| *t == e.template()) {
                    Some((_, methods)) => {
                        methods.push_str(", ");
                        methods.push_str(e.method().as_str());
                    }
                    None => allow.push((e.template(), e.method().as_str().to_owned())),
                }
            }
            allow
        });
        let template = operations.first().map_or("", Endpoint::template);
        let allow = ALLOW
            .iter()
            .find(|(t, _)| *t == template)
            .map_or("", |(_, methods)| methods.as_str());
        Unrecognised::MethodNotAllowed { allow, template }
    }
}

const SAMPLE_ID: &str = "00000000-0000-4000-8000-000000000000";

impl<'a> Endpoint<'a> {
    /// One of each operation (path parameters filled with a sample id).
    pub const ALL: &'static [Endpoint<'static>] = &[
        Endpoint::Register,
        Endpoint::Login,
        Endpoint::Refresh,
        Endpoint::Logout,
        Endpoint::LogoutAll,
        Endpoint::Sessions,
        Endpoint::EndSession { session: SAMPLE_ID },
        Endpoint::OwnHistory,
        Endpoint::Me,
        Endpoint::UpdateMe,
        Endpoint::DisableMe,
        Endpoint::ChangePassword,
        Endpoint::Users,
        Endpoint::User { user: SAMPLE_ID },
        Endpoint::UpdateUser { user: SAMPLE_ID },
        Endpoint::DisableUser { user: SAMPLE_ID },
        Endpoint::UserHistory { user: SAMPLE_ID },
        Endpoint::UserRoles { user: SAMPLE_ID },
        Endpoint::AssignRole {
            user: SAMPLE_ID,
            role: SAMPLE_ID,
        },
        Endpoint::RemoveRole {
            user: SAMPLE_ID,
            role: SAMPLE_ID,
        },
        Endpoint::Roles,
        Endpoint::CreateRole,
        Endpoint::Role { role: SAMPLE_ID },
        Endpoint::UpdateRole { role: SAMPLE_ID },
        Endpoint::DeleteRole { role: SAMPLE_ID },
        Endpoint::Permissions,
        Endpoint::Jwks,
        Endpoint::OpenApi,
        Endpoint::Docs,
        Endpoint::ExtAuthz,
        Endpoint::AuthRequest,
        Endpoint::GrpcCheck,
        Endpoint::Healthz,
        Endpoint::Readyz,
        Endpoint::Metrics,
    ];

    /// The API listener's operation for `method` and `path`: the path names its operations,
    /// the method picks one (405 with the others in `Allow` when none has it). `{id}` of a user
    /// may be `me`; the literal `/users/me` operations come first.
    pub fn recognise(method: &Method, path: &'a str) -> Result<Endpoint<'a>, Unrecognised> {
        use Endpoint as E;
        let segments: Vec<&'a str> = path.trim_start_matches('/').split('/').collect();
        let operations: &[Endpoint<'a>] = match segments.as_slice() {
            ["api", "v1", "auth", "register"] => &[E::Register],
            ["api", "v1", "auth", "login"] => &[E::Login],
            ["api", "v1", "auth", "refresh"] => &[E::Refresh],
            ["api", "v1", "auth", "logout"] => &[E::Logout],
            ["api", "v1", "auth", "logout-all"] => &[E::LogoutAll],
            ["api", "v1", "auth", "sessions"] => &[E::Sessions],
            ["api", "v1", "auth", "sessions", session] => &[E::EndSession { session }],
            ["api", "v1", "auth", "history"] => &[E::OwnHistory],

            ["api", "v1", "users"] => &[E::Users],
            ["api", "v1", "users", "me"] => &[E::Me, E::UpdateMe, E::DisableMe],
            ["api", "v1", "users", "me", "password"] => &[E::ChangePassword],
            ["api", "v1", "users", user] => &[
                E::User { user },
                E::UpdateUser { user },
                E::DisableUser { user },
            ],
            ["api", "v1", "users", user, "history"] => &[E::UserHistory { user }],
            ["api", "v1", "users", user, "roles"] => &[E::UserRoles { user }],
            ["api", "v1", "users", user, "roles", role] => {
                &[E::AssignRole { user, role }, E::RemoveRole { user, role }]
            }

            ["api", "v1", "roles"] => &[E::Roles, E::CreateRole],
            ["api", "v1", "roles", role] => &[
                E::Role { role },
                E::UpdateRole { role },
                E::DeleteRole { role },
            ],
            ["api", "v1", "permissions"] => &[E::Permissions],

            [".well-known", "jwks.json"] => &[E::Jwks],
            ["openapi.json"] => &[E::OpenApi],
            ["docs"] => &[E::Docs],
            _ => return Err(Unrecognised::NotFound),
        };
        match operations.iter().find(|e| e.method() == method) {
            Some(endpoint) => Ok(*endpoint),
            None => Err(Unrecognised::not_allowed(operations)),
        }
    }

    /// The internal listener's operation for `method` and `path`. The checks come first: they
    /// are nearly all of this listener's traffic, and take any method (the original request's,
    /// for Envoy). A gRPC check is told apart by its content type before this
    /// (`grpc::is_grpc`).
    pub fn recognise_internal(
        method: &Method,
        path: &str,
    ) -> Result<Endpoint<'static>, Unrecognised> {
        if super::check::is_check(path) {
            return Ok(if path == "/auth" {
                Endpoint::AuthRequest
            } else {
                Endpoint::ExtAuthz
            });
        }
        let endpoint = match path {
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            "/metrics" => Endpoint::Metrics,
            _ => return Err(Unrecognised::NotFound),
        };
        if method == Method::GET {
            Ok(endpoint)
        } else {
            Err(Unrecognised::MethodNotAllowed {
                allow: "GET",
                template: endpoint.template(),
            })
        }
    }

    /// Who may call it.
    pub fn access(&self) -> Access {
        use Endpoint as E;
        use Permission as P;
        match self {
            E::Register | E::Login | E::Refresh | E::Jwks | E::OpenApi | E::Docs => Access::Anyone,
            // The internal listener is the gateway's: its checks judge the token they carry.
            E::ExtAuthz | E::AuthRequest | E::GrpcCheck | E::Healthz | E::Readyz | E::Metrics => {
                Access::Anyone
            }
            E::Logout | E::LogoutAll | E::Sessions | E::EndSession { .. } => Access::Token,
            E::OwnHistory | E::Me => Access::Holds(P::UserSelfRead),
            E::ChangePassword => Access::Holds(P::UserSelfUpdate),
            E::Users => Access::Holds(P::UserAllRead),
            E::AssignRole { .. } | E::RemoveRole { .. } => Access::Holds(P::UserAllSetRole),
            E::User { .. } | E::UserHistory { .. } | E::UserRoles { .. } => Access::OwnOrAny {
                own: P::UserSelfRead,
                any: P::UserAllRead,
            },
            E::UpdateMe | E::UpdateUser { .. } => Access::OwnOrAny {
                own: P::UserSelfUpdate,
                any: P::UserAllUpdate,
            },
            E::DisableMe | E::DisableUser { .. } => Access::OwnOrAny {
                own: P::UserSelfDelete,
                any: P::UserAllDelete,
            },
            E::Roles | E::Role { .. } => Access::Holds(P::RoleRead),
            E::CreateRole => Access::Holds(P::RoleCreate),
            E::UpdateRole { .. } => Access::Holds(P::RoleUpdate),
            E::DeleteRole { .. } => Access::Holds(P::RoleDelete),
            E::Permissions => Access::Holds(P::PermissionRead),
        }
    }

    /// The permission it needs whoever the caller is; `None` for public endpoints and those
    /// any token may call. (For [`Access::OwnOrAny`], the one that covers everybody.)
    pub fn permission(&self) -> Option<Permission> {
        match self.access() {
            Access::Anyone | Access::Token => None,
            Access::Holds(p) | Access::OwnOrAny { any: p, .. } => Some(p),
        }
    }

    /// Its method, as `openapi.json` documents it (`ExtAuthz` takes any; GET is shown).
    pub fn method(&self) -> Method {
        use Endpoint as E;
        match self {
            E::Register
            | E::Login
            | E::Refresh
            | E::Logout
            | E::LogoutAll
            | E::ChangePassword
            | E::CreateRole
            | E::GrpcCheck => Method::POST,
            E::UpdateMe | E::UpdateUser { .. } | E::UpdateRole { .. } => Method::PATCH,
            E::EndSession { .. }
            | E::DisableMe
            | E::DisableUser { .. }
            | E::RemoveRole { .. }
            | E::DeleteRole { .. } => Method::DELETE,
            E::AssignRole { .. } => Method::PUT,
            _ => Method::GET,
        }
    }

    /// Its path template, as in `openapi.json`; also its `endpoint` label in the metrics.
    pub fn template(&self) -> &'static str {
        use Endpoint as E;
        match self {
            E::Register => "/api/v1/auth/register",
            E::Login => "/api/v1/auth/login",
            E::Refresh => "/api/v1/auth/refresh",
            E::Logout => "/api/v1/auth/logout",
            E::LogoutAll => "/api/v1/auth/logout-all",
            E::Sessions => "/api/v1/auth/sessions",
            E::EndSession { .. } => "/api/v1/auth/sessions/{id}",
            E::OwnHistory => "/api/v1/auth/history",
            E::Me | E::UpdateMe | E::DisableMe => "/api/v1/users/me",
            E::ChangePassword => "/api/v1/users/me/password",
            E::Users => "/api/v1/users",
            E::User { .. } | E::UpdateUser { .. } | E::DisableUser { .. } => "/api/v1/users/{id}",
            E::UserHistory { .. } => "/api/v1/users/{id}/history",
            E::UserRoles { .. } => "/api/v1/users/{id}/roles",
            E::AssignRole { .. } | E::RemoveRole { .. } => "/api/v1/users/{id}/roles/{role_id}",
            E::Roles | E::CreateRole => "/api/v1/roles",
            E::Role { .. } | E::UpdateRole { .. } | E::DeleteRole { .. } => "/api/v1/roles/{id}",
            E::Permissions => "/api/v1/permissions",
            E::Jwks => "/.well-known/jwks.json",
            E::OpenApi => "/openapi.json",
            E::Docs => "/docs",
            E::ExtAuthz => "/ext_authz/{path}",
            E::AuthRequest => "/auth",
            E::GrpcCheck => "/envoy.service.auth.v3.Authorization/Check",
            E::Healthz => "/healthz",
            E::Readyz => "/readyz",
            E::Metrics => "/metrics",
        }
    }

    /// The listener that serves it.
    pub fn listener(&self) -> Listener {
        use Endpoint as E;
        match self {
            E::ExtAuthz | E::AuthRequest | E::GrpcCheck | E::Healthz | E::Readyz | E::Metrics => {
                Listener::Internal
            }
            _ => Listener::Api,
        }
    }

    /// A path that reaches it, with the sample's parameters (for tests and docs).
    pub fn sample_path(&self) -> String {
        use Endpoint as E;
        let template = self.template();
        match self {
            E::EndSession { session: id }
            | E::User { user: id }
            | E::UpdateUser { user: id }
            | E::DisableUser { user: id }
            | E::UserHistory { user: id }
            | E::UserRoles { user: id }
            | E::Role { role: id }
            | E::UpdateRole { role: id }
            | E::DeleteRole { role: id } => template.replace("{id}", id),
            E::AssignRole { user, role } | E::RemoveRole { user, role } => {
                template.replace("{id}", user).replace("{role_id}", role)
            }
            E::ExtAuthz => "/ext_authz/api/v1/films".to_owned(),
            _ => template.to_owned(),
        }
    }
}

/// The `endpoint` label of a request in the metrics: its template, the template of a known
/// path called with another method, or [`UNMATCHED`]. A fixed set: nothing a client sends
/// becomes a label value.
pub fn label(endpoint: &Result<Endpoint<'_>, Unrecognised>) -> &'static str {
    match endpoint {
        Ok(endpoint) => endpoint.template(),
        Err(Unrecognised::MethodNotAllowed { template, .. }) => template,
        Err(Unrecognised::NotFound) => UNMATCHED,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_recognised_at_its_own_path() {
        for e in Endpoint::ALL {
            let path = e.sample_path();
            let got = match e.listener() {
                Listener::Api => Endpoint::recognise(&e.method(), &path).ok(),
                // gRPC is told apart by content type, before the path is looked at.
                Listener::Internal if *e == Endpoint::GrpcCheck => Some(Endpoint::GrpcCheck),
                Listener::Internal => Endpoint::recognise_internal(&e.method(), &path).ok(),
            };
            assert_eq!(got, Some(*e), "{} {path}", e.method());
        }
    }

    #[test]
    fn a_known_path_with_another_method_is_405_with_its_methods() {
        for e in Endpoint::ALL
            .iter()
            .filter(|e| e.listener() == Listener::Api)
        {
            let path = e.sample_path();
            match Endpoint::recognise(&Method::TRACE, &path) {
                Err(Unrecognised::MethodNotAllowed { allow, template }) => {
                    assert_eq!(template, e.template(), "{path}");
                    assert!(allow.contains(e.method().as_str()), "{allow} for {path}");
                    for listed in allow.split(", ") {
                        let method = Method::from_bytes(listed.as_bytes()).unwrap();
                        assert!(
                            Endpoint::recognise(&method, &path).is_ok(),
                            "{listed} {path}"
                        );
                    }
                }
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_literal_me_paths_come_before_the_id_ones() {
        let r = |m: Method, p: &'static str| Endpoint::recognise(&m, p);
        assert_eq!(r(Method::GET, "/api/v1/users/me"), Ok(Endpoint::Me));
        assert_eq!(
            r(Method::DELETE, "/api/v1/users/me"),
            Ok(Endpoint::DisableMe)
        );
        assert_eq!(
            r(Method::GET, "/api/v1/users/me/roles"),
            Ok(Endpoint::UserRoles { user: "me" })
        );
        assert_eq!(
            r(Method::GET, "/api/v1/users/"),
            Ok(Endpoint::User { user: "" })
        );
        assert_eq!(
            r(Method::POST, "/api/v1/users/x/password"),
            Err(Unrecognised::NotFound)
        );
        assert_eq!(
            r(Method::GET, "/api/v1/auth/nothing"),
            Err(Unrecognised::NotFound)
        );
        assert_eq!(r(Method::GET, "/"), Err(Unrecognised::NotFound));
        assert_eq!(
            Endpoint::recognise_internal(&Method::TRACE, "/healthz"),
            Err(Unrecognised::MethodNotAllowed {
                allow: "GET",
                template: "/healthz"
            })
        );
        assert_eq!(
            Endpoint::recognise_internal(&Method::DELETE, "/auth"),
            Ok(Endpoint::AuthRequest)
        );
        assert_eq!(
            r(Method::GET, "/api/v1/users/a/b/c/d"),
            Err(Unrecognised::NotFound)
        );
    }

    #[test]
    fn the_catalog_names_every_permission_the_api_requires() {
        let names = crate::permissions::builtin_names();
        for e in Endpoint::ALL {
            if let Access::OwnOrAny { own, any } = e.access() {
                assert!(names.contains(&own.name()) && names.contains(&any.name()));
            }
            if let Some(p) = e.permission() {
                assert!(names.contains(&p.name()), "{e:?}");
            }
        }
    }

    /// `openapi.json`'s operations: `(METHOD, template, served on the internal listener)`.
    fn documented() -> Vec<(String, String, bool)> {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let mut all = Vec::new();
        for (template, item) in doc["paths"].as_object().unwrap() {
            // Operations of the internal listener name its server.
            let internal = item.get("servers").is_some();
            for method in [
                "get", "put", "post", "delete", "patch", "head", "options", "trace",
            ] {
                if item.get(method).is_some() {
                    all.push((method.to_uppercase(), template.clone(), internal));
                }
            }
        }
        all
    }

    #[test]
    fn every_operation_is_documented() {
        let documented = documented();
        for e in Endpoint::ALL {
            let operation = (
                e.method().to_string(),
                e.template().to_owned(),
                e.listener() == Listener::Internal,
            );
            assert!(
                documented.contains(&operation),
                "{e:?} ({} {}) is not in openapi.json",
                operation.0,
                operation.1
            );
        }
    }

    #[test]
    fn every_documented_operation_is_recognised() {
        for (method, template, internal) in documented() {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let path = template
                .replace("{id}", SAMPLE_ID)
                .replace("{role_id}", SAMPLE_ID)
                .replace("{path}", "api/v1/films");
            let found = if internal {
                Endpoint::recognise_internal(&method, &path)
                    .ok()
                    .or((path == Endpoint::GrpcCheck.template()).then_some(Endpoint::GrpcCheck))
            } else {
                Endpoint::recognise(&method, &path).ok()
            };
            let found = found.unwrap_or_else(|| panic!("{method} {template} is no operation"));
            assert_eq!(
                (found.method(), found.template()),
                (method.clone(), template.as_str()),
                "{method} {template}"
            );
        }
    }

    #[test]
    fn the_documented_permission_is_the_one_checked() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        for e in Endpoint::ALL
            .iter()
            .filter(|e| e.listener() == Listener::Api)
        {
            let method = e.method().as_str().to_lowercase();
            let operation = &doc["paths"][e.template()][method.as_str()];
            let documented = operation.get("x-permission").and_then(|p| p.as_str());
            let expected = match e.access() {
                Access::Anyone => None,
                Access::Token => Some("none".to_owned()),
                Access::Holds(p) => Some(p.name().to_owned()),
                Access::OwnOrAny { own, any } => {
                    Some(format!("self: `{}`; others: `{}`", own.name(), any.name()))
                }
            };
            assert_eq!(documented, expected.as_deref(), "{e:?}");
        }
    }
}
