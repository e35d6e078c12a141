//! The API's OpenAPI 3.1 document. Each handler carries its own `#[utoipa::path]` (path,
//! parameters, body, every status it answers) and the router is built from those annotations
//! alone (`super::routes`), so a route cannot be served undocumented. What every operation
//! shares, the guard's refusals and the body limit, is added here once.

use axum::extract::Extension;
use bytes::Bytes;
use utoipa::openapi::link::{Link, LinkBuilder};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr};
use utoipa::{IntoParams, OpenApi as _};

use axum::http::Method;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};

use super::auth::Access;
use super::dto::ErrorDto;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Corral admin API",
        description = "Manage a fleet of OpenTelemetry collectors over OpAMP. Errors are \
            `{\"error\": \"message\"}`; a write is answered once it is on disk. Every \
            operation but health, metrics and this document needs an API key \
            (`Authorization: Bearer <key>`) whose role may do it: `viewer` reads, `operator` \
            also changes the fleet, `admin` also manages keys.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorDto)),
    tags(
        (name = "agents", description = "What the fleet reports, and commands to one agent"),
        (name = "lifecycle", description = "Admin states, pre-registration, deletion, bulk actions, ignore rules"),
        (name = "configurations", description = "Configurations and their versions"),
        (name = "rollouts", description = "Configuration and package rollouts in waves"),
        (name = "packages", description = "Collector builds agents can be upgraded to"),
        (name = "keys", description = "API keys and their roles (admin only)"),
        (name = "server", description = "Health, metrics and this document: no key needed"),
    )
)]
struct ApiDoc;

/// The document the routes are collected into.
pub(super) fn base() -> OpenApi {
    ApiDoc::openapi()
}

/// An agent's instance uid in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(super) struct AgentUid {
    /// The agent's instance uid (a canonical UUID).
    #[param(format = "uuid")]
    uid: String,
}

/// The responses every operation shares, by the name they have under `components/responses`:
/// the Host/Origin guard's (421 for every request, 403 for changes), the key check's (401, and
/// 403 for a role that may not: one 403 for reads, one that also names the guard's for
/// changes) and the body limit's (413 for operations that take a body).
const MISDIRECTED: &str = "Misdirected";
const CROSS_ORIGIN: &str = "CrossOrigin";
const UNAUTHORIZED: &str = "Unauthorized";
const FORBIDDEN: &str = "Forbidden";
const FORBIDDEN_CHANGE: &str = "ForbiddenChange";
const TOO_LARGE: &str = "TooLarge";
/// The security scheme's name: a bearer API key.
const BEARER: &str = "bearer";

fn error_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorDto")))
                .build(),
        )
        .build()
        .into()
}

/// Where path parameters come from, as OpenAPI links: from an answer of operation `from` with
/// `status`, each parameter is the value at a JSON pointer into its body, for every operation
/// on `to` and the paths below it. A client (or CI's schemathesis run) follows them from what
/// it listed or created to what it can do with it.
struct Source {
    from: &'static str,
    status: &'static str,
    to: &'static str,
    params: &'static [(&'static str, &'static str)],
}

const SOURCES: &[Source] = &[
    Source {
        from: "list_agents",
        status: "200",
        to: "/api/v1/agents/{uid}",
        params: &[("uid", "/agents/0/instance_uid")],
    },
    Source {
        from: "pre_register",
        status: "201",
        to: "/api/v1/agents/{uid}",
        params: &[("uid", "/instance_uid")],
    },
    Source {
        from: "pre_register",
        status: "201",
        to: "/api/v1/expected-agents/{id}",
        params: &[("id", "/id")],
    },
    Source {
        from: "list_expected",
        status: "200",
        to: "/api/v1/expected-agents/{id}",
        params: &[("id", "/expected/0/id")],
    },
    Source {
        from: "add_ignore_rule",
        status: "201",
        to: "/api/v1/ignore-rules/{id}",
        params: &[("id", "/id")],
    },
    Source {
        from: "list_ignore_rules",
        status: "200",
        to: "/api/v1/ignore-rules/{id}",
        params: &[("id", "/rules/0/id")],
    },
    Source {
        from: "put_configuration",
        status: "200",
        to: "/api/v1/configurations/{name}",
        params: &[("name", "/name"), ("version", "/version")],
    },
    Source {
        from: "list_configurations",
        status: "200",
        to: "/api/v1/configurations/{name}",
        params: &[
            ("name", "/configurations/0/name"),
            ("version", "/configurations/0/latest_version"),
        ],
    },
    Source {
        from: "start_rollout",
        status: "200",
        to: "/api/v1/rollouts/{id}",
        params: &[("id", "/id")],
    },
    Source {
        from: "create_key",
        status: "201",
        to: "/api/v1/keys/{id}",
        params: &[("id", "/id")],
    },
    Source {
        from: "list_rollouts",
        status: "200",
        to: "/api/v1/rollouts/{id}",
        params: &[("id", "/rollouts/0/id")],
    },
];

/// Links to operations that take what an answer names in their body: (operation, status, the
/// operation it links to, the body, with runtime expressions in it).
fn body_links() -> [(&'static str, &'static str, &'static str, serde_json::Value); 2] {
    [
        (
            "put_configuration",
            "200",
            "start_rollout",
            serde_json::json!({"configuration": "$response.body#/name"}),
        ),
        (
            "upload_package",
            "200",
            "start_rollout",
            serde_json::json!({"package": {
                "name": "$response.body#/name",
                "version": "$response.body#/version",
            }}),
        ),
    ]
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// Adds the links of [`SOURCES`] to the answers they start from.
fn link(doc: &mut OpenApi) {
    for source in SOURCES {
        let mut links = Vec::new();
        for (path, item) in doc.paths.paths.iter_mut() {
            let below = path
                .strip_prefix(source.to)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            if !below {
                continue;
            }
            for operation in operations(item) {
                let Some(id) = operation.operation_id.clone() else {
                    continue;
                };
                let mut link = LinkBuilder::new().operation_id(id.clone());
                for (param, pointer) in source.params {
                    if path.contains(&format!("{{{param}}}")) {
                        link = link.parameter(*param, format!("$response.body#{pointer}"));
                    }
                }
                links.push((id, link.build()));
            }
        }
        for (name, link) in links {
            add_link(doc, source.from, source.status, name, link);
        }
    }
    for (from, status, to, body) in body_links() {
        let link = LinkBuilder::new()
            .operation_id(to)
            .request_body(Some(body))
            .build();
        add_link(doc, from, status, to.into(), link);
    }
}

fn add_link(doc: &mut OpenApi, from: &str, status: &str, name: String, link: Link) {
    let from = doc
        .paths
        .paths
        .values_mut()
        .flat_map(operations)
        .find(|op| op.operation_id.as_deref() == Some(from));
    if let Some(RefOr::T(response)) = from.and_then(|op| op.responses.responses.get_mut(status)) {
        response.links.insert(name, RefOr::T(link));
    }
}

/// The document as served: the collected routes plus the shared responses and the links.
pub(super) fn finish(mut doc: OpenApi) -> OpenApi {
    link(&mut doc);
    let components = doc.components.get_or_insert_with(Default::default);
    components.responses.insert(
        MISDIRECTED.into(),
        error_response(
            "the request's Host is not an IP address, localhost or a name listed in \
             --api-allowed-hosts",
        ),
    );
    components.responses.insert(
        CROSS_ORIGIN.into(),
        error_response("a change whose Origin is not the API's own"),
    );
    components.responses.insert(
        TOO_LARGE.into(),
        error_response("the body is larger than the API takes (2 MiB of JSON)"),
    );
    components.responses.insert(
        UNAUTHORIZED.into(),
        error_response("no API key, or one unknown, revoked or expired: nothing was done"),
    );
    components.responses.insert(
        FORBIDDEN.into(),
        error_response("the API key's role may not do this"),
    );
    components.responses.insert(
        FORBIDDEN_CHANGE.into(),
        error_response(
            "the API key's role may not do this, or the change's Origin is not the API's own",
        ),
    );
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "an API key (`corral_...`): `corral keys create`, or the admin.key file \
                     the server writes in its data directory on first start",
                ))
                .build(),
        ),
    );
    for (path, item) in doc.paths.paths.iter_mut() {
        let reads = [
            (Method::GET, &mut item.get),
            (Method::HEAD, &mut item.head),
            (Method::OPTIONS, &mut item.options),
        ];
        for (method, operation) in reads {
            let Some(operation) = operation else { continue };
            share(operation, MISDIRECTED, "421");
            protect(operation, &method, path, FORBIDDEN);
        }
        let changes = [
            (Method::POST, &mut item.post),
            (Method::PUT, &mut item.put),
            (Method::DELETE, &mut item.delete),
            (Method::PATCH, &mut item.patch),
        ];
        for (method, operation) in changes {
            let Some(operation) = operation else { continue };
            share(operation, MISDIRECTED, "421");
            if matches!(
                protect(operation, &method, path, FORBIDDEN_CHANGE),
                Access::Open | Access::Metrics
            ) {
                share(operation, CROSS_ORIGIN, "403");
            }
            if operation.request_body.is_some() {
                share(operation, TOO_LARGE, "413");
            }
        }
    }
    doc
}

/// Adds what an operation that needs a key answers (401, and `forbidden` as its 403), the
/// security requirement, and the role it needs to its description.
fn protect(operation: &mut Operation, method: &Method, path: &str, forbidden: &str) -> Access {
    let access = super::auth::access(method, Some(path));
    let needs = match access {
        Access::Open => None,
        Access::Needs(role) => {
            operation.security = Some(vec![SecurityRequirement::new::<_, _, &str>(BEARER, [])]);
            Some(format!(
                "Needs a key with role `{}` or above.",
                role.as_str()
            ))
        }
        Access::Metrics => {
            // Either no key or a key: which one, the server's settings say.
            operation.security = Some(vec![
                SecurityRequirement::default(),
                SecurityRequirement::new::<_, _, &str>(BEARER, []),
            ]);
            Some("Needs a key (any role) when the server runs with `--metrics-need-key`.".into())
        }
    };
    if let Some(needs) = needs {
        share(operation, UNAUTHORIZED, "401");
        share(operation, forbidden, "403");
        operation.description = Some(match operation.description.take() {
            Some(text) if !text.is_empty() => format!("{text}\n\n{needs}"),
            _ => needs,
        });
    }
    access
}

/// Adds the shared response `name` under `status`, unless the operation says more about it.
fn share(operation: &mut Operation, name: &str, status: &str) {
    operation
        .responses
        .responses
        .entry(status.into())
        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
}

/// The document, serialized once when the router is built.
#[derive(Clone)]
pub(super) struct Document(pub Bytes);

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "openapi_document",
    tag = "server",
    responses((status = 200, description = "the OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)),
)]
pub(super) async fn document(
    Extension(doc): Extension<Document>,
) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> OpenApi {
        super::super::openapi()
    }

    /// The router is `super::routes()`: `OpenApiRouter::routes` with `routes!` of documented
    /// handlers. `OpenApiRouter` also passes plain axum routes through; none may be used, or a
    /// route could be served that the document does not list.
    #[test]
    fn no_route_is_added_without_its_documentation() {
        let sources = [
            ("mod.rs", include_str!("mod.rs")),
            ("control.rs", include_str!("control.rs")),
            ("lifecycle.rs", include_str!("lifecycle.rs")),
            ("packages.rs", include_str!("packages.rs")),
            ("keys.rs", include_str!("keys.rs")),
            ("auth.rs", include_str!("auth.rs")),
            ("openapi.rs", include_str!("openapi.rs")),
        ];
        // Split so that this test does not find itself.
        let undocumented = [
            concat!(".", "route("),
            concat!(".", "route_service("),
            concat!(".", "nest_service("),
            concat!(".", "merge("),
            concat!("axum::", "routing"),
        ];
        for (file, text) in sources {
            for needle in undocumented {
                assert!(
                    !text.contains(needle),
                    "{file} adds a route without documenting it ({needle})"
                );
            }
        }
    }

    #[test]
    fn operation_ids_are_unique_and_links_point_at_operations_that_exist() {
        let mut doc = doc();
        let mut ids = std::collections::BTreeSet::new();
        for item in doc.paths.paths.values_mut() {
            for operation in operations(item) {
                let id = operation.operation_id.clone().expect("an operation id");
                assert!(ids.insert(id.clone()), "{id} twice");
            }
        }
        for source in SOURCES {
            assert!(ids.contains(source.from), "{}", source.from);
            assert!(doc.paths.paths.contains_key(source.to), "{}", source.to);
            for (param, _) in source.params {
                assert!(
                    doc.paths
                        .paths
                        .keys()
                        .any(|p| p.starts_with(source.to) && p.contains(&format!("{{{param}}}"))),
                    "{}: no path below {} takes {param}",
                    source.from,
                    source.to
                );
            }
        }
        for (from, _, to, _) in body_links() {
            assert!(ids.contains(from) && ids.contains(to), "{from} -> {to}");
        }
        let json = serde_json::to_value(&doc).expect("serializes");
        let links = &json["paths"]["/api/v1/agents"]["get"]["responses"]["200"]["links"];
        assert_eq!(links["show_agent"]["operationId"], "show_agent");
        assert_eq!(
            links["show_agent"]["parameters"]["uid"],
            "$response.body#/agents/0/instance_uid"
        );
    }

    #[test]
    fn shared_responses_go_where_they_apply() {
        let json = serde_json::to_value(doc()).expect("serializes");
        let responses = |method: &str, path: &str| json["paths"][path][method]["responses"].clone();
        let fleet = responses("get", "/api/v1/fleet");
        assert_eq!(fleet["421"]["$ref"], "#/components/responses/Misdirected");
        assert_eq!(fleet["401"]["$ref"], "#/components/responses/Unauthorized");
        assert_eq!(
            fleet["403"]["$ref"], "#/components/responses/Forbidden",
            "a read carries no Origin check, only the role's"
        );
        let delete = responses("delete", "/api/v1/agents/{uid}");
        assert_eq!(
            delete["403"]["$ref"],
            "#/components/responses/ForbiddenChange"
        );
        assert_eq!(
            json["paths"]["/api/v1/agents/{uid}"]["delete"]["security"][0]["bearer"],
            serde_json::json!([])
        );
        let health = responses("get", "/healthz");
        assert!(health["401"].is_null() && health["403"].is_null(), "open");
        assert!(json["paths"]["/healthz"]["get"]["security"].is_null());
        assert!(json["components"]["securitySchemes"]["bearer"].is_object());
        assert!(delete["413"].is_null(), "no body, no body limit");
        let labels = responses("put", "/api/v1/agents/{uid}/labels");
        assert_eq!(labels["413"]["$ref"], "#/components/responses/TooLarge");
        let upload = responses("post", "/api/v1/packages");
        assert!(
            upload["413"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("--max-package-size")),
            "the upload's own limit, not the JSON one: {upload}"
        );
    }
}
