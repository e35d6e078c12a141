//! The admin API: JSON over HTTP on the API listener, plus `/metrics` and `/healthz`.

mod control;
pub mod dto;
mod error;
mod guard;
mod lifecycle;
mod packages;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

pub use error::ApiError;
pub use guard::AllowedHosts;

use crate::core::domain::{AgentRecord, ContentHash, InstanceUid, KeptConfig};
use crate::core::status::Status;
use crate::edge::store::Store;
use crate::tasks::fleet::{AgentFilter, Fleet};
use dto::{
    AgentDetailDto, AgentDto, AgentListDto, ConfigFileDto, EffectiveConfigDto, FleetDto, LabelsDto,
};

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
}

pub fn router(state: ApiState) -> Router {
    let allowed = state.allowed_hosts.clone();
    Router::new()
        .route(
            "/api/v1/agents",
            get(list_agents).post(lifecycle::pre_register),
        )
        .route(
            "/api/v1/agents/{uid}",
            get(show_agent).delete(lifecycle::delete_agent),
        )
        .route(
            "/api/v1/agents/{uid}/admin-state",
            post(lifecycle::set_admin_state),
        )
        .route(
            "/api/v1/agents/{uid}/disconnect",
            post(lifecycle::disconnect),
        )
        .route(
            "/api/v1/agents/admin-state",
            post(lifecycle::bulk_admin_state),
        )
        .route("/api/v1/agents/delete", post(lifecycle::bulk_delete))
        .route("/api/v1/agents/restart", post(lifecycle::bulk_restart))
        .route(
            "/api/v1/agents/disconnect",
            post(lifecycle::bulk_disconnect),
        )
        .route("/api/v1/expected-agents", get(lifecycle::list_expected))
        .route(
            "/api/v1/expected-agents/{id}",
            axum::routing::delete(lifecycle::delete_expected),
        )
        .route(
            "/api/v1/ignore-rules",
            get(lifecycle::list_ignore_rules).post(lifecycle::add_ignore_rule),
        )
        .route(
            "/api/v1/ignore-rules/{id}",
            axum::routing::delete(lifecycle::delete_ignore_rule),
        )
        .route("/api/v1/agents/{uid}/labels", put(set_labels))
        .route("/api/v1/agents/{uid}/retry-config", post(retry_config))
        .route("/api/v1/agents/{uid}/restart", post(packages::restart))
        .route(
            "/api/v1/packages",
            get(packages::list)
                .post(packages::upload)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/agents/{uid}/effective-config",
            get(effective_config),
        )
        .route("/api/v1/fleet", get(fleet_summary))
        .route("/api/v1/configurations", get(control::list_configurations))
        .route(
            "/api/v1/configurations/{name}",
            get(control::show_configuration).put(control::put_configuration),
        )
        .route(
            "/api/v1/configurations/{name}/versions/{version}",
            get(control::show_version),
        )
        .route(
            "/api/v1/rollouts",
            get(control::list_rollouts).post(control::start_rollout),
        )
        .route("/api/v1/rollouts/{id}", get(control::show_rollout))
        .route(
            "/api/v1/rollouts/{id}/{action}",
            post(control::act_on_rollout),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(allowed, guard::guard))
}

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

async fn show_agent(
    State(state): State<ApiState>,
    Path(uid): Path<String>,
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

/// Replaces the agent's admin labels.
async fn set_labels(
    State(state): State<ApiState>,
    Path(uid): Path<String>,
    body: Result<Json<LabelsDto>, JsonRejection>,
) -> Result<Json<AgentDetailDto>, ApiError> {
    let handle = agent(&state, &uid)?;
    let body = json(body)?;
    validate_labels(&body.labels)?;
    let record = handle.set_labels(body.labels).await?;
    lifecycle::durable(&state).await?;
    Ok(Json(agent_detail(&state, &record)))
}

/// Sends an agent the configuration it reported FAILED once more.
async fn retry_config(
    State(state): State<ApiState>,
    Path(uid): Path<String>,
) -> Result<Json<AgentDetailDto>, ApiError> {
    let handle = agent(&state, &uid)?;
    let record = handle.retry_config().await??;
    lifecycle::durable(&state).await?;
    Ok(Json(agent_detail(&state, &record)))
}

async fn effective_config(
    State(state): State<ApiState>,
    Path(uid): Path<String>,
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

/// `ok`, or 503 with why while the store is not taking writes (they are kept and retried).
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

async fn fleet_summary(State(state): State<ApiState>) -> Json<FleetDto> {
    Json(FleetDto::from(state.fleet.summary()))
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let mut response = state.fleet.metrics().render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
