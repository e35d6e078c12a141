//! The admin lifecycle over HTTP: admin states, pre-registration, deletion, forced
//! disconnects, bulk actions over a selector (refused when the count the admin confirmed is not
//! the count matched) and ignore rules. An answer of 200 means the change is on disk.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use chrono::Utc;

use super::dto::{
    AdminStateDto, AgentDetailDto, BulkDto, BulkMoveDto, BulkResultDto, ErrorDto, ExpectedDto,
    ExpectedListDto, IgnoreRuleDto, IgnoreRuleInDto, IgnoreRulesDto, PreRegisterDto,
    PreRegisteredDto,
};
use super::openapi::AgentUid;
use super::{
    ApiError, ApiPath, ApiState, agent, agent_detail, check_pin, json, parse_uid, validate_labels,
};
use crate::core::config::Selector;
use crate::core::domain::{AgentCapabilities, AgentRecord};
use crate::core::lifecycle::{self, AdminState, Expected, IgnoreRule, STATE_NAMES};
use crate::core::session::Event;
use crate::core::status::Status;
use crate::edge::api::dto::rfc3339;

/// How long an admin's change may take to be stored before the API gives up waiting (the
/// change stays buffered and is retried).
const DURABLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);
/// Uids a bulk answer lists, for a confirmation prompt.
const SAMPLE: usize = 20;
/// Every agent's first contact is checked against each: bounded.
const MAX_IGNORE_RULES: usize = 1000;
const MAX_EXPECTED: usize = 10_000;
/// Longest selector text an ignore rule or bulk action takes.
const MAX_SELECTOR: usize = 4096;

fn state_name(name: &str) -> Result<&'static str, ApiError> {
    STATE_NAMES.into_iter().find(|n| *n == name).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "unknown admin state {name:?}; expected one of {}",
            STATE_NAMES.join(", ")
        ))
    })
}

/// Waits until what the actors buffered is stored: the admin's change is durable.
pub(super) async fn durable(state: &ApiState) -> Result<(), ApiError> {
    match tokio::time::timeout(DURABLE_WITHIN, state.writes.sync()).await {
        Ok(stored) => stored.map_err(ApiError::from),
        Err(_) => Err(ApiError::Internal(format!(
            "the store did not confirm the change within {DURABLE_WITHIN:?}"
        ))),
    }
}

/// Moves the agent to another admin state
///
/// 409 with the states allowed from where it is when the lifecycle does not allow the move.
/// Leaving maintenance: `managed` or `registered`, whichever it came from.
#[utoipa::path(
    post,
    path = "/api/v1/agents/{uid}/admin-state",
    tag = "lifecycle",
    params(AgentUid),
    request_body = AdminStateDto,
    responses(
        (status = 200, description = "the agent in its new state, stored", body = AgentDetailDto),
        (status = 400, description = "not an instance uid, or a body or state name it does not take", body = ErrorDto),
        (status = 404, description = "no such agent", body = ErrorDto),
        (status = 409, description = "the move is not allowed; `allowed` lists those that are", body = ErrorDto),
        (status = 500, description = "the change could not be stored", body = ErrorDto),
    ),
)]
pub(super) async fn set_admin_state(
    State(state): State<ApiState>,
    ApiPath(uid): ApiPath<String>,
    request: Result<Json<AdminStateDto>, JsonRejection>,
) -> Result<Json<AgentDetailDto>, ApiError> {
    let handle = agent(&state, &uid)?;
    let name = state_name(&json(request)?.state)?;
    // The session decides against the agent's state of the moment.
    let record = handle.admin(Event::RequestAdminState(name)).await??;
    durable(&state).await?;
    Ok(Json(agent_detail(&state, &record)))
}

/// Deletes the agent: everything Corral keeps of it goes
///
/// If it connects again it is discovered anew, unless an ignore rule matches it.
#[utoipa::path(
    delete,
    path = "/api/v1/agents/{uid}",
    tag = "lifecycle",
    params(AgentUid),
    responses(
        (status = 204, description = "deleted, on disk"),
        (status = 400, description = "not an instance uid", body = ErrorDto),
        (status = 404, description = "no such agent", body = ErrorDto),
        (status = 500, description = "the deletion could not be stored", body = ErrorDto),
    ),
)]
pub(super) async fn delete_agent(
    State(state): State<ApiState>,
    ApiPath(uid): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let uid = parse_uid(&uid)?;
    if !state.fleet.forget(&uid).await {
        return Err(ApiError::NotFound(format!("no agent {uid}")));
    }
    durable(&state).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Closes the agent's WebSocket, or ends its polling session, so that it connects again
#[utoipa::path(
    post,
    path = "/api/v1/agents/{uid}/disconnect",
    tag = "lifecycle",
    params(AgentUid),
    responses(
        (status = 200, description = "the agent", body = AgentDetailDto),
        (status = 400, description = "not an instance uid", body = ErrorDto),
        (status = 404, description = "no such agent", body = ErrorDto),
        (status = 409, description = "the agent is not connected", body = ErrorDto),
        (status = 500, description = "the change could not be stored", body = ErrorDto),
    ),
)]
pub(super) async fn disconnect(
    State(state): State<ApiState>,
    ApiPath(uid): ApiPath<String>,
) -> Result<Json<AgentDetailDto>, ApiError> {
    let handle = agent(&state, &uid)?;
    let record = handle.admin(Event::Disconnect).await??;
    durable(&state).await?;
    Ok(Json(agent_detail(&state, &record)))
}

/// Pre-registers an agent an admin expects
///
/// By instance uid: the agent is `not_found` until it speaks. By identifying attributes: the
/// first agent that reports them is admitted with the labels given.
#[utoipa::path(
    post,
    path = "/api/v1/agents",
    tag = "lifecycle",
    request_body = PreRegisterDto,
    responses(
        (status = 201, description = "the agent (by uid) or the expected agent (by attributes), stored", body = PreRegisteredDto),
        (status = 400, description = "neither or both of instance_uid and identifying_attributes, or a value it does not take", body = ErrorDto),
        (status = 409, description = "the agent is known already, the attributes are expected or reported already, or too many agents are expected", body = ErrorDto),
        (status = 500, description = "the agent could not be stored", body = ErrorDto),
    ),
)]
pub(super) async fn pre_register(
    State(state): State<ApiState>,
    request: Result<Json<PreRegisterDto>, JsonRejection>,
) -> Result<(StatusCode, Json<PreRegisteredDto>), ApiError> {
    let request = json(request)?;
    validate_labels(&request.labels)?;
    check_pin(&state, &request.labels)?;
    match (request.instance_uid, request.identifying_attributes) {
        (Some(uid), None) => {
            let uid = parse_uid(&uid)?;
            let Some(handle) = state.fleet.pre_register(uid, request.labels) else {
                let known = state.fleet.get(&uid).map(|h| h.record().admin_state);
                return Err(ApiError::Conflict(format!(
                    "agent {uid} is known already ({})",
                    known.map_or("deleted just now", AdminState::as_str)
                )));
            };
            durable(&state).await?;
            let detail = agent_detail(&state, &handle.record());
            Ok((
                StatusCode::CREATED,
                Json(PreRegisteredDto::Agent(Box::new(detail))),
            ))
        }
        (None, Some(attributes)) => {
            if attributes.is_empty() {
                return Err(ApiError::BadRequest(
                    "identifying_attributes needs at least one attribute".into(),
                ));
            }
            validate_labels(&attributes)?;
            let rules = state.fleet.rules();
            if rules.expected.len() >= MAX_EXPECTED {
                return Err(ApiError::Conflict(format!(
                    "at most {MAX_EXPECTED} agents can be expected by attributes at once"
                )));
            }
            if let Some(same) = rules
                .expected
                .iter()
                .find(|e| e.identifying_attributes == attributes)
            {
                return Err(ApiError::Conflict(format!(
                    "an agent with these attributes is expected already ({})",
                    same.id
                )));
            }
            let expected = Expected {
                id: uuid::Uuid::now_v7().to_string(),
                identifying_attributes: attributes,
                labels: request.labels,
                created_at: Utc::now(),
            };
            let present = state
                .fleet
                .records()
                .into_iter()
                .find(|a| expected.matches(&a.description));
            if let Some(present) = present {
                return Err(ApiError::Conflict(format!(
                    "agent {} already reports these attributes",
                    present.uid
                )));
            }
            state.store.save_expected(&expected).await?;
            let dto = expected_dto(&expected);
            state
                .fleet
                .update_rules(|rules| rules.expected.push(expected.clone()));
            Ok((StatusCode::CREATED, Json(PreRegisteredDto::Expected(dto))))
        }
        _ => Err(ApiError::BadRequest(
            "give either instance_uid or identifying_attributes".into(),
        )),
    }
}

fn expected_dto(e: &Expected) -> ExpectedDto {
    ExpectedDto {
        id: e.id.clone(),
        identifying_attributes: e.identifying_attributes.clone(),
        labels: e.labels.clone(),
        created_at: rfc3339(e.created_at),
    }
}

/// The agents expected by identifying attributes
#[utoipa::path(
    get,
    path = "/api/v1/expected-agents",
    tag = "lifecycle",
    responses((status = 200, description = "the expected agents", body = ExpectedListDto)),
)]
pub(super) async fn list_expected(State(state): State<ApiState>) -> Json<ExpectedListDto> {
    Json(ExpectedListDto {
        expected: state
            .fleet
            .rules()
            .expected
            .iter()
            .map(expected_dto)
            .collect(),
    })
}

/// No longer expects the agent
#[utoipa::path(
    delete,
    path = "/api/v1/expected-agents/{id}",
    tag = "lifecycle",
    params(("id" = String, Path, description = "the expected agent's id")),
    responses(
        (status = 204, description = "removed, on disk"),
        (status = 404, description = "no such expected agent", body = ErrorDto),
        (status = 500, description = "the removal could not be stored", body = ErrorDto),
    ),
)]
pub(super) async fn delete_expected(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if !state.store.delete_expected(&id).await? {
        return Err(ApiError::NotFound(format!("no expected agent {id}")));
    }
    state
        .fleet
        .update_rules(|rules| rules.expected.retain(|e| e.id != id));
    Ok(StatusCode::NO_CONTENT)
}

fn rule_dto(rule: &IgnoreRule) -> IgnoreRuleDto {
    IgnoreRuleDto {
        id: rule.id.clone(),
        selector: rule.selector.to_string(),
        created_at: rfc3339(rule.created_at),
    }
}

/// The ignore rules
#[utoipa::path(
    get,
    path = "/api/v1/ignore-rules",
    tag = "lifecycle",
    responses((status = 200, description = "the rules", body = IgnoreRulesDto)),
)]
pub(super) async fn list_ignore_rules(State(state): State<ApiState>) -> Json<IgnoreRulesDto> {
    Json(IgnoreRulesDto {
        rules: state.fleet.rules().ignore.iter().map(rule_dto).collect(),
    })
}

/// Adds an ignore rule
///
/// Agents heard from for the first time whose reported attributes match the selector are
/// ignored.
#[utoipa::path(
    post,
    path = "/api/v1/ignore-rules",
    tag = "lifecycle",
    request_body = IgnoreRuleInDto,
    responses(
        (status = 201, description = "the rule, stored", body = IgnoreRuleDto),
        (status = 400, description = "a body or selector it does not take (a rule must not match everything)", body = ErrorDto),
        (status = 409, description = "there are as many rules as there may be", body = ErrorDto),
        (status = 500, description = "the rule could not be stored", body = ErrorDto),
    ),
)]
pub(super) async fn add_ignore_rule(
    State(state): State<ApiState>,
    request: Result<Json<IgnoreRuleInDto>, JsonRejection>,
) -> Result<(StatusCode, Json<IgnoreRuleDto>), ApiError> {
    let selector = parse_selector(&json(request)?.selector)?;
    if state.fleet.rules().ignore.len() >= MAX_IGNORE_RULES {
        return Err(ApiError::Conflict(format!(
            "at most {MAX_IGNORE_RULES} ignore rules"
        )));
    }
    if selector.is_empty() {
        return Err(ApiError::BadRequest(
            "an ignore rule needs a selector that does not match everything".into(),
        ));
    }
    let rule = IgnoreRule {
        id: uuid::Uuid::now_v7().to_string(),
        selector,
        created_at: Utc::now(),
    };
    state.store.save_ignore_rule(&rule).await?;
    let dto = rule_dto(&rule);
    state
        .fleet
        .update_rules(|rules| rules.ignore.push(rule.clone()));
    Ok((StatusCode::CREATED, Json(dto)))
}

/// Removes an ignore rule
#[utoipa::path(
    delete,
    path = "/api/v1/ignore-rules/{id}",
    tag = "lifecycle",
    params(("id" = String, Path, description = "the rule's id")),
    responses(
        (status = 204, description = "removed, on disk"),
        (status = 404, description = "no such rule", body = ErrorDto),
        (status = 500, description = "the removal could not be stored", body = ErrorDto),
    ),
)]
pub(super) async fn delete_ignore_rule(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if !state.store.delete_ignore_rule(&id).await? {
        return Err(ApiError::NotFound(format!("no ignore rule {id}")));
    }
    state
        .fleet
        .update_rules(|rules| rules.ignore.retain(|r| r.id != id));
    Ok(StatusCode::NO_CONTENT)
}

fn parse_selector(s: &str) -> Result<Selector, ApiError> {
    if s.len() > MAX_SELECTOR {
        return Err(ApiError::BadRequest(format!(
            "selector: at most {MAX_SELECTOR} bytes"
        )));
    }
    Selector::parse(s).map_err(|e| ApiError::BadRequest(format!("selector: {e}")))
}

/// What a bulk action does to one agent.
#[derive(Clone, Copy)]
enum Bulk {
    Move(&'static str),
    Delete,
    Restart,
    Disconnect,
}

impl Bulk {
    /// Why `agent` is passed over, if it is.
    fn excludes(self, agent: &AgentRecord) -> Option<String> {
        let state = agent.admin_state;
        if matches!(state, AdminState::Maintenance(_)) {
            // Resuming them is asked for by their admin state (see `bulk`).
            return Some("in maintenance".into());
        }
        let connected = agent.status != Status::Disconnected;
        match self {
            Bulk::Move(name) => match lifecycle::request(state, name) {
                Ok(_) => None,
                Err(_) if state.as_str() == name => Some(format!("already {name}")),
                Err(_) => Some(format!("cannot move from {state}")),
            },
            Bulk::Delete => None,
            Bulk::Restart if !state.is_managed() => Some(format!("{state}, not managed")),
            Bulk::Restart if !connected => Some("not connected".into()),
            Bulk::Restart
                if !agent
                    .capabilities
                    .contains(AgentCapabilities::ACCEPTS_RESTART_COMMAND) =>
            {
                Some("does not accept restart".into())
            }
            Bulk::Restart => None,
            Bulk::Disconnect if !connected => Some("not connected".into()),
            Bulk::Disconnect => None,
        }
    }
}

/// Moves the agents a selector matches to an admin state
///
/// With `admin_state: "maintenance"` it resumes the agents in maintenance. A dry run gives the
/// count and a sample; the real one must carry `expected_count`.
#[utoipa::path(
    post,
    path = "/api/v1/agents/admin-state",
    tag = "lifecycle",
    request_body = BulkMoveDto,
    responses(
        (status = 200, description = "what matched and what was done (on a dry run: what would be)", body = BulkResultDto),
        (status = 400, description = "a body, selector or state it does not take, or neither expected_count nor dry_run", body = ErrorDto),
        (status = 409, description = "expected_count is not the number matched; `matched` says it, and nothing was done", body = ErrorDto),
        (status = 500, description = "the changes could not be stored", body = ErrorDto),
    ),
)]
pub(super) async fn bulk_admin_state(
    State(state): State<ApiState>,
    request: Result<Json<BulkMoveDto>, JsonRejection>,
) -> Result<Json<BulkResultDto>, ApiError> {
    let (request, name) = json(request)?.split();
    let name = state_name(&name)?;
    bulk(&state, request, Bulk::Move(name)).await
}

/// Deletes the agents a selector matches
#[utoipa::path(
    post,
    path = "/api/v1/agents/delete",
    tag = "lifecycle",
    request_body = BulkDto,
    responses(
        (status = 200, description = "what matched and what was done (on a dry run: what would be)", body = BulkResultDto),
        (status = 400, description = "a body, selector or state it does not take, or neither expected_count nor dry_run", body = ErrorDto),
        (status = 409, description = "expected_count is not the number matched; `matched` says it, and nothing was done", body = ErrorDto),
        (status = 500, description = "the changes could not be stored", body = ErrorDto),
    ),
)]
pub(super) async fn bulk_delete(
    State(state): State<ApiState>,
    request: Result<Json<BulkDto>, JsonRejection>,
) -> Result<Json<BulkResultDto>, ApiError> {
    bulk(&state, json(request)?, Bulk::Delete).await
}

/// Disconnects the agents a selector matches
#[utoipa::path(
    post,
    path = "/api/v1/agents/disconnect",
    tag = "lifecycle",
    request_body = BulkDto,
    responses(
        (status = 200, description = "what matched and what was done (on a dry run: what would be)", body = BulkResultDto),
        (status = 400, description = "a body, selector or state it does not take, or neither expected_count nor dry_run", body = ErrorDto),
        (status = 409, description = "expected_count is not the number matched; `matched` says it, and nothing was done", body = ErrorDto),
        (status = 500, description = "the changes could not be stored", body = ErrorDto),
    ),
)]
pub(super) async fn bulk_disconnect(
    State(state): State<ApiState>,
    request: Result<Json<BulkDto>, JsonRejection>,
) -> Result<Json<BulkResultDto>, ApiError> {
    bulk(&state, json(request)?, Bulk::Disconnect).await
}

/// Restarts the agents a selector matches
#[utoipa::path(
    post,
    path = "/api/v1/agents/restart",
    tag = "lifecycle",
    request_body = BulkDto,
    responses(
        (status = 200, description = "what matched and what was done (on a dry run: what would be)", body = BulkResultDto),
        (status = 400, description = "a body, selector or state it does not take, or neither expected_count nor dry_run", body = ErrorDto),
        (status = 409, description = "expected_count is not the number matched; `matched` says it, and nothing was done", body = ErrorDto),
        (status = 500, description = "the changes could not be stored", body = ErrorDto),
    ),
)]
pub(super) async fn bulk_restart(
    State(state): State<ApiState>,
    request: Result<Json<BulkDto>, JsonRejection>,
) -> Result<Json<BulkResultDto>, ApiError> {
    bulk(&state, json(request)?, Bulk::Restart).await
}

async fn bulk(
    state: &ApiState,
    request: BulkDto,
    action: Bulk,
) -> Result<Json<BulkResultDto>, ApiError> {
    let selector = parse_selector(&request.selector)?;
    let only = request.admin_state.as_deref().map(state_name).transpose()?;
    let mut result = BulkResultDto::default();
    let mut chosen = Vec::new();
    for handle in state.fleet.select(&selector) {
        let record = handle.record();
        if only.is_some_and(|name| record.admin_state.as_str() != name) {
            continue;
        }
        let excluded = match (action, only) {
            // Asked for by their admin state: agents in maintenance are what is wanted.
            (Bulk::Move(name), Some("maintenance")) => lifecycle::request(record.admin_state, name)
                .err()
                .map(|_| format!("does not resume to {name}")),
            _ => action.excludes(&record),
        };
        match excluded {
            Some(reason) => *result.excluded.entry(reason).or_default() += 1,
            None => chosen.push((record.uid, handle)),
        }
    }
    chosen.sort_by_key(|(uid, _)| *uid);
    result.matched = chosen.len();
    result.sample = chosen
        .iter()
        .take(SAMPLE)
        .map(|(uid, _)| uid.to_string())
        .collect();
    if request.dry_run {
        return Ok(Json(result));
    }
    let Some(expected) = request.expected_count else {
        return Err(ApiError::BadRequest(
            "give expected_count (the number of agents you confirmed), or dry_run".into(),
        ));
    };
    if expected != result.matched {
        return Err(ApiError::CountMismatch {
            message: format!(
                "the selector matches {} agents, not the {expected} expected; nothing was done",
                result.matched
            ),
            matched: result.matched,
        });
    }
    let mut failed = BTreeMap::new();
    for (uid, handle) in chosen {
        // Each agent is looked at again: it may have changed since it was counted.
        let now_excluded = match (action, only) {
            (Bulk::Move(_), Some(_)) => None,
            _ => action.excludes(&handle.record()),
        };
        let outcome = match (now_excluded, action) {
            (Some(why), _) => Err(why),
            (None, Bulk::Move(name)) => session(handle.admin(Event::RequestAdminState(name))).await,
            (None, Bulk::Delete) => match state.fleet.forget(&uid).await {
                true => Ok(()),
                false => Err("deleted meanwhile".into()),
            },
            (None, Bulk::Restart) => session(handle.admin(Event::Restart)).await,
            (None, Bulk::Disconnect) => session(handle.admin(Event::Disconnect)).await,
        };
        match outcome {
            Ok(()) => result.done += 1,
            Err(why) => {
                failed.insert(uid.to_string(), why);
            }
        }
    }
    result.failed = failed;
    durable(state).await?;
    Ok(Json(result))
}

/// What an agent's session answered an admin's request, as a bulk action records it.
async fn session(
    answer: impl std::future::Future<
        Output = Result<
            Result<std::sync::Arc<AgentRecord>, crate::core::session::Refused>,
            crate::tasks::agent::ActorGone,
        >,
    >,
) -> Result<(), String> {
    match answer.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(refused)) => Err(refused.message),
        Err(_) => Err("deleted meanwhile".into()),
    }
}
