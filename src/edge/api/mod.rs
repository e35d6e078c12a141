//! The admin API: JSON over HTTP on the API listener, plus `/metrics`, `/healthz` and its
//! OpenAPI document at `/api/v1/openapi.json`. Every other route needs an API key
//! (`auth.rs`).

pub mod auth;
mod control;
pub mod dto;
mod error;
mod guard;
mod keys;
mod lifecycle;
mod openapi;
mod packages;

use std::collections::BTreeMap;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Extension, MatchedPath, Path, RawQuery, State};
use axum::http::{HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use utoipa::IntoParams;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

pub use error::ApiError;
pub use guard::AllowedHosts;

use crate::core::config::PIN_LABEL;
use crate::core::domain::{AgentRecord, ContentHash, InstanceUid, KeptConfig};
use crate::core::status::Status;
use crate::edge::store::Store;
use crate::tasks::fleet::{AgentFilter, Fleet};
use dto::{
    AgentDetailDto, AgentDto, AgentListDto, ConfigFileDto, EffectiveConfigDto, ErrorDto, FleetDto,
    LabelsDto,
};
use openapi::AgentUid;

pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;
const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 128;
const MAX_LABEL_VALUE: usize = 256;

#[derive(Clone)]
pub struct ApiState {
    pub fleet: Arc<Fleet>,
    pub store: Arc<dyn Store>,
    pub writes: Arc<crate::edge::store::WriteBuffer>,
    pub controller: crate::tasks::controller::Controller,
    pub blobs: crate::edge::store::BlobStore,
    pub max_package_size: u64,
    /// Names besides IP addresses and `localhost` that requests may address the API by.
    pub allowed_hosts: AllowedHosts,
    /// The API keys, by hash.
    pub keys: Arc<auth::Keys>,
    /// `/metrics` needs a key.
    pub metrics_need_key: bool,
}

/// Every route, each taken with its handler's `#[utoipa::path]`: routes are added only this
/// way, so none is served without being in the document.
fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(one_path(routes!(list_agents, lifecycle::pre_register)))
        .routes(one_path(routes!(show_agent, lifecycle::delete_agent)))
        .routes(one_path(routes!(lifecycle::set_admin_state)))
        .routes(one_path(routes!(lifecycle::disconnect)))
        .routes(one_path(routes!(lifecycle::bulk_admin_state)))
        .routes(one_path(routes!(lifecycle::bulk_delete)))
        .routes(one_path(routes!(lifecycle::bulk_restart)))
        .routes(one_path(routes!(lifecycle::bulk_disconnect)))
        .routes(one_path(routes!(lifecycle::list_expected)))
        .routes(one_path(routes!(lifecycle::delete_expected)))
        .routes(one_path(routes!(
            lifecycle::list_ignore_rules,
            lifecycle::add_ignore_rule
        )))
        .routes(one_path(routes!(lifecycle::delete_ignore_rule)))
        .routes(one_path(routes!(set_labels)))
        .routes(one_path(routes!(retry_config)))
        .routes(one_path(routes!(packages::restart)))
        .routes(
            one_path(routes!(packages::list, packages::upload, packages::delete))
                .layer(DefaultBodyLimit::disable()),
        )
        .routes(one_path(routes!(effective_config)))
        .routes(one_path(routes!(fleet_summary)))
        .routes(one_path(routes!(control::list_configurations)))
        .routes(one_path(routes!(
            control::show_configuration,
            control::put_configuration,
            control::delete_configuration
        )))
        .routes(one_path(routes!(control::list_versions)))
        .routes(one_path(routes!(control::show_version)))
        .routes(one_path(routes!(control::diff_versions)))
        .routes(one_path(routes!(
            control::list_rollouts,
            control::start_rollout
        )))
        .routes(one_path(routes!(control::show_rollout)))
        .routes(one_path(routes!(control::act_on_rollout)))
        .routes(one_path(routes!(metrics)))
        .routes(one_path(routes!(healthz)))
        .routes(one_path(routes!(openapi::document)))
        .routes(one_path(routes!(keys::list_keys, keys::create_key)))
        .routes(one_path(routes!(keys::revoke_key)))
}

/// One path per `routes!`: given handlers of several paths, it would route each of those paths
/// to all of them, and serve what the document does not say.
fn one_path(
    routes: utoipa_axum::router::UtoipaMethodRouter<ApiState>,
) -> utoipa_axum::router::UtoipaMethodRouter<ApiState> {
    debug_assert_eq!(
        routes.1.paths.len(),
        1,
        "one path per routes!: {:?}",
        routes.1.paths.keys().collect::<Vec<_>>()
    );
    routes
}

/// The API's OpenAPI document, as `GET /api/v1/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::finish(routes().split_for_parts().1)
}

pub fn router(state: ApiState) -> Router {
    let allowed = state.allowed_hosts.clone();
    let fleet = state.fleet.clone();
    let gate = auth::Gate {
        keys: state.keys.clone(),
        metrics_need_key: state.metrics_need_key,
    };
    let (routes, doc) = routes().split_for_parts();
    let doc = openapi::finish(doc);
    let methods: Arc<BTreeMap<String, String>> = Arc::new(
        doc.paths
            .paths
            .iter()
            .map(|(path, item)| (path.clone(), methods(item)))
            .collect(),
    );
    let doc = serde_json::to_vec(&doc).expect("an OpenAPI document serializes");
    routes
        .fallback(no_route)
        .method_not_allowed_fallback(
            move |matched: Option<MatchedPath>, method: Method| async move {
                let path = matched.as_ref().map_or("this path", |m| m.as_str());
                let allowed = matched
                    .as_ref()
                    .and_then(|m| methods.get(m.as_str()))
                    .map_or("other methods", String::as_str);
                ApiError::MethodNotAllowed(format!("{path} takes {allowed}, not {method}"))
            },
        )
        .with_state(state)
        .layer(Extension(openapi::Document(doc.into())))
        .layer(axum::middleware::from_fn_with_state(gate, auth::authorize))
        .layer(axum::middleware::from_fn_with_state(allowed, guard::guard))
        .layer(axum::middleware::from_fn_with_state(fleet, count_request))
}

/// The methods a documented path takes, e.g. `GET, POST`.
fn methods(item: &utoipa::openapi::PathItem) -> String {
    [
        ("GET", item.get.is_some()),
        ("PUT", item.put.is_some()),
        ("POST", item.post.is_some()),
        ("DELETE", item.delete.is_some()),
        ("PATCH", item.patch.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, present)| present.then_some(name))
    .collect::<Vec<_>>()
    .join(", ")
}

/// A path no route takes: 404, or 400 for a configuration name with a `/` in it (the client
/// meant a name, and `/` splits it into segments no route has).
async fn no_route(uri: Uri) -> ApiError {
    const CONFIGURATIONS: &str = "/api/v1/configurations/";
    if let Some(rest) = uri.path().strip_prefix(CONFIGURATIONS) {
        let rest = rest.trim_end_matches('/');
        let versions = rest
            .split_once('/')
            .is_some_and(|(_, tail)| tail == "versions" || tail.starts_with("versions/"));
        if rest.contains('/') && !versions {
            // The path as sent (still percent-encoded): a `%2F` never comes here, since it
            // does not split the segment it is in.
            let why = crate::core::config::validate_name(rest)
                .err()
                .unwrap_or_default();
            return ApiError::BadRequest(format!("{why}: '/' cannot be part of a name"));
        }
    }
    ApiError::NotFound("no such endpoint".into())
}

/// Counts each request by its route's template (never its path: the series stay as many as
/// the routes) and status, and how long it took to answer.
async fn count_request(
    State(fleet): State<Arc<Fleet>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let method = request.method().clone();
    let response = next.run(request).await;
    fleet.metrics().api_request(
        route
            .as_deref()
            .unwrap_or(crate::telemetry::UNMATCHED_ROUTE),
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Path parameters, with a path that does not decode (e.g. percent-encoded bytes that are not
/// UTF-8) refused like every other bad request: a JSON 400, as the document says.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(Path), rejection(ApiError))]
pub(super) struct ApiPath<T>(pub T);

/// A JSON body, or why it cannot be read (400; 413 over the body limit).
pub(super) fn json<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(t)| t).map_err(ApiError::from)
}

fn parse_uid(s: &str) -> Result<InstanceUid, ApiError> {
    InstanceUid::parse(s).ok_or_else(|| ApiError::BadRequest(format!("invalid instance uid {s:?}")))
}

pub(super) fn agent(
    state: &ApiState,
    uid: &str,
) -> Result<crate::tasks::agent::AgentHandle, ApiError> {
    let uid = parse_uid(uid)?;
    state
        .fleet
        .get(&uid)
        .ok_or_else(|| ApiError::NotFound(format!("no agent {uid}")))
}

/// Query of `GET /api/v1/agents`: `status`, `label=key=value` (repeatable, all must match),
/// `limit`, `cursor`.
fn parse_list_query(
    query: Option<&str>,
) -> Result<(AgentFilter, Option<InstanceUid>, usize), ApiError> {
    let mut filter = AgentFilter::default();
    let mut cursor = None;
    let mut limit = DEFAULT_PAGE;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "status" => {
                filter.status = Some(Status::parse(&value).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "unknown status {value:?}; expected one of {}",
                        Status::ALL.map(Status::as_str).join(", ")
                    ))
                })?);
            }
            "admin_state" => {
                filter.admin_state = Some(
                    crate::core::lifecycle::STATE_NAMES
                        .into_iter()
                        .find(|name| *name == value)
                        .ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "unknown admin state {value:?}; expected one of {}",
                                crate::core::lifecycle::STATE_NAMES.join(", ")
                            ))
                        })?,
                );
            }
            "label" => {
                let (k, v) = value.split_once('=').ok_or_else(|| {
                    ApiError::BadRequest(format!("label filter {value:?} must be key=value"))
                })?;
                filter.labels.0.push((k.to_string(), v.to_string()));
            }
            "selector" => {
                filter.selector = Some(
                    crate::core::config::Selector::parse(&value)
                        .map_err(|e| ApiError::BadRequest(format!("selector: {e}")))?,
                );
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!("limit must be between 1 and {MAX_PAGE}"))
                    })?;
            }
            "cursor" if value.is_empty() => {}
            "cursor" => cursor = Some(parse_uid(&value)?),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    Ok((filter, cursor, limit))
}

/// The query of `GET /api/v1/agents` (the handler reads it itself, for its own errors).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct AgentQuery {
    /// Only agents with this runtime status.
    #[param(value_type = Option<dto::StatusName>)]
    status: Option<String>,
    /// Only agents in this admin state.
    #[param(value_type = Option<dto::AdminStateName>)]
    admin_state: Option<String>,
    /// `key=value`; may repeat, and all must match (admin labels win over reported attributes).
    #[param(style = Form, explode)]
    label: Option<Vec<String>>,
    /// A selector in the full selector syntax, e.g. `env=prod,os.type!=windows`.
    selector: Option<String>,
    /// Agents per page.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// The `next_cursor` of the page before (empty: the first page).
    cursor: Option<String>,
}

/// Lists agents, a page at a time in instance-uid order
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    tag = "agents",
    params(AgentQuery),
    responses(
        (status = 200, description = "a page of agents and how many match in all", body = AgentListDto),
        (status = 400, description = "an unknown query parameter or a value it does not take", body = ErrorDto),
    ),
)]
async fn list_agents(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<AgentListDto>, ApiError> {
    let (filter, cursor, limit) = parse_list_query(query.as_deref())?;
    let page = state.fleet.list(&filter, cursor, limit);
    let view = state.controller.view();
    Ok(Json(AgentListDto {
        agents: page
            .agents
            .iter()
            .map(|a| agent_dto(&state, &view, a))
            .collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
        total: page.total,
    }))
}

/// One agent, with its status history
#[utoipa::path(
    get,
    path = "/api/v1/agents/{uid}",
    tag = "agents",
    params(AgentUid),
    responses(
        (status = 200, description = "the agent", body = AgentDetailDto),
        (status = 400, description = "not an instance uid", body = ErrorDto),
        (status = 404, description = "no such agent", body = ErrorDto),
    ),
)]
async fn show_agent(
    State(state): State<ApiState>,
    ApiPath(uid): ApiPath<String>,
) -> Result<Json<AgentDetailDto>, ApiError> {
    let handle = agent(&state, &uid)?;
    Ok(Json(agent_detail(&state, &handle.snapshot())))
}

fn agent_dto(
    state: &ApiState,
    view: &crate::core::rollout::ControlView,
    agent: &AgentRecord,
) -> AgentDto {
    let mut dto = AgentDto::from(agent);
    dto.configuration = control::agent_config(state, view, agent);
    dto
}

pub(super) fn agent_detail(state: &ApiState, agent: &AgentRecord) -> AgentDetailDto {
    let mut dto = AgentDetailDto::from(agent);
    dto.agent.configuration = control::agent_config(state, &state.controller.view(), agent);
    dto
}

/// A query's parameters, each given at most once, of the names `allowed`; any other, or one
/// given twice, is refused.
fn query_params(
    query: Option<&str>,
    allowed: &[&str],
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut params = BTreeMap::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&key.as_ref()) {
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter {key:?}"
            )));
        }
        if params
            .insert(key.clone().into_owned(), value.into_owned())
            .is_some()
        {
            return Err(ApiError::BadRequest(format!(
                "query parameter {key:?} is given twice"
            )));
        }
    }
    Ok(params)
}

/// A `true`/`false` query flag (absent: false).
pub(super) fn flag(params: &BTreeMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "{name} is true or false, not {other:?}"
        ))),
    }
}

/// A `configuration=<name>` label must name a configuration that exists.
pub(super) fn check_pin(
    state: &ApiState,
    labels: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    match labels.get(PIN_LABEL) {
        Some(pinned) if state.controller.view().configuration(pinned).is_none() => {
            Err(ApiError::BadRequest(format!(
                "label {PIN_LABEL}={pinned} pins the agent to a configuration that does not exist"
            )))
        }
        _ => Ok(()),
    }
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::BadRequest(format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_KEY
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
        if !key_ok {
            return Err(ApiError::BadRequest(format!(
                "label key {k:?} must be 1-{MAX_LABEL_KEY} characters of letters, digits, '.', '_', '-', '/'"
            )));
        }
        if v.len() > MAX_LABEL_VALUE || v.chars().any(char::is_control) {
            return Err(ApiError::BadRequest(format!(
                "label {k:?}: value must be at most {MAX_LABEL_VALUE} bytes without control characters"
            )));
        }
    }
    Ok(())
}

/// Replaces the agent's admin labels
///
/// Keys are 1-128 characters of letters, digits, `.`, `_`, `-`, `/`; values at most 256 bytes
/// without control characters; at most 64 labels.
#[utoipa::path(
    put,
    path = "/api/v1/agents/{uid}/labels",
    tag = "agents",
    params(AgentUid),
    request_body = LabelsDto,
    responses(
        (status = 200, description = "the agent with its new labels, stored", body = AgentDetailDto),
        (status = 400, description = "not an instance uid, or a body or label it does not take", body = ErrorDto),
        (status = 404, description = "no such agent", body = ErrorDto),
        (status = 500, description = "the change could not be stored", body = ErrorDto),
    ),
)]
async fn set_labels(
    State(state): State<ApiState>,
    ApiPath(uid): ApiPath<String>,
    body: Result<Json<LabelsDto>, JsonRejection>,
) -> Result<Json<AgentDetailDto>, ApiError> {
    let handle = agent(&state, &uid)?;
    let body = json(body)?;
    validate_labels(&body.labels)?;
    // A pin already there (its configuration deleted since) may stay; a new one must hold.
    let kept = handle.record().labels.get(PIN_LABEL).cloned();
    if body.labels.get(PIN_LABEL) != kept.as_ref() {
        check_pin(&state, &body.labels)?;
    }
    let record = handle.set_labels(body.labels).await?;
    lifecycle::durable(&state).await?;
    Ok(Json(agent_detail(&state, &record)))
}

/// Sends the agent the configuration it reported failed once more
#[utoipa::path(
    post,
    path = "/api/v1/agents/{uid}/retry-config",
    tag = "agents",
    params(AgentUid),
    responses(
        (status = 200, description = "the agent; the configuration is on its way", body = AgentDetailDto),
        (status = 400, description = "not an instance uid", body = ErrorDto),
        (status = 404, description = "no such agent", body = ErrorDto),
        (status = 409, description = "the agent has no failed configuration to retry", body = ErrorDto),
        (status = 500, description = "the change could not be stored", body = ErrorDto),
    ),
)]
async fn retry_config(
    State(state): State<ApiState>,
    ApiPath(uid): ApiPath<String>,
) -> Result<Json<AgentDetailDto>, ApiError> {
    let handle = agent(&state, &uid)?;
    let record = handle.retry_config().await??;
    lifecycle::durable(&state).await?;
    Ok(Json(agent_detail(&state, &record)))
}

/// The configuration the agent last reported running
#[utoipa::path(
    get,
    path = "/api/v1/agents/{uid}/effective-config",
    tag = "agents",
    params(AgentUid),
    responses(
        (status = 200, description = "its files", body = EffectiveConfigDto),
        (status = 400, description = "not an instance uid", body = ErrorDto),
        (status = 404, description = "no such agent, or it has reported no effective configuration", body = ErrorDto),
        (status = 500, description = "the store could not be read", body = ErrorDto),
    ),
)]
async fn effective_config(
    State(state): State<ApiState>,
    ApiPath(uid): ApiPath<String>,
) -> Result<Json<EffectiveConfigDto>, ApiError> {
    let handle = agent(&state, &uid)?;
    let hash: ContentHash = handle
        .snapshot()
        .effective_config_hash
        .clone()
        .ok_or_else(|| ApiError::NotFound("agent has not reported an effective config".into()))?;
    let config = match state.writes.unwritten_config(&hash) {
        Some(config) => config,
        None => state.store.effective_config(&hash).await?.ok_or_else(|| {
            ApiError::Internal(format!("effective config {} is missing", hash.to_hex()))
        })?,
    };
    let config = match config {
        KeptConfig::Whole(config) => config,
        KeptConfig::TooLarge { bytes } => {
            return Ok(Json(EffectiveConfigDto {
                hash: hash.to_hex(),
                bytes,
                kept: false,
                files: Default::default(),
            }));
        }
    };
    Ok(Json(EffectiveConfigDto {
        hash: hash.to_hex(),
        bytes: config.total_bytes() as u64,
        kept: true,
        files: config
            .files
            .into_iter()
            .map(|(name, f)| {
                (
                    name,
                    ConfigFileDto {
                        body: String::from_utf8_lossy(&f.body).into_owned(),
                        content_type: f.content_type,
                    },
                )
            })
            .collect(),
    }))
}

/// How many agents there are, by runtime status and by admin state
#[utoipa::path(
    get,
    path = "/api/v1/fleet",
    tag = "agents",
    responses((status = 200, description = "the counts", body = FleetDto)),
)]
async fn fleet_summary(State(state): State<ApiState>) -> Json<FleetDto> {
    Json(FleetDto::from(state.fleet.summary()))
}

/// The server's metrics
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "server",
    responses((
        status = 200,
        description = "Prometheus metrics in the OpenMetrics text format",
        body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )),
)]
async fn metrics(State(state): State<ApiState>) -> Response {
    let view = state.controller.view();
    let mut response = state
        .fleet
        .metrics()
        .render_with(&view.rollouts)
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Whether the server is up and its store takes writes
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "server",
    responses(
        (status = 200, description = "`ok`", body = String, content_type = "text/plain; charset=utf-8"),
        (status = 503, description = "the store is not taking writes (they are kept and retried), with why", body = String, content_type = "text/plain; charset=utf-8"),
    ),
)]
async fn healthz(State(state): State<ApiState>) -> Response {
    match state.writes.failing() {
        None => "ok".into_response(),
        Some(error) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("store writes failing (kept and retried): {error}"),
        )
            .into_response(),
    }
}
