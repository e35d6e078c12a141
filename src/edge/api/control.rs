//! Configurations and rollouts.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use bytes::Bytes;

use super::dto::{
    AgentConfigDto, ConfigDiffDto, ConfigurationDto, ConfigurationPutDto,
    ConfigurationPutResultDto, ConfigurationsDto, ErrorDto, FileDto, PackageRefDto, ReassignedDto,
    RolloutCountsDto, RolloutDto, RolloutErrorDto, RolloutIdDto, RolloutStartDto, RolloutsDto,
    SkippedDto, VersionDto, VersionsDto, rfc3339,
};
use super::{ApiError, ApiPath, ApiState, flag, json, query_params};
use crate::core::config::{Configuration, Selector, assign, diff_files, reassigned};
use crate::core::domain::{AgentRecord, ConfigFile, ConfigMap};
use crate::core::rollout::{
    Action, ConfigChange, ConfigurationSpec, ControlView, DEFAULT_INITIAL, DEFAULT_MAX_ERRORS,
    DEFAULT_MAXIMUM, DEFAULT_MULTIPLIER, DEFAULT_WAVE_TIMEOUT_SECS, Params, Phase, Rollout,
    RolloutSpec, RolloutTarget, directive, incompatibility,
};
use crate::tasks::controller::ControlError;

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::BadRequest(m) => ApiError::BadRequest(m),
            ControlError::NotFound(m) => ApiError::NotFound(m),
            ControlError::Conflict(m) => ApiError::Conflict(m),
            ControlError::Store(e) => ApiError::Internal(e.to_string()),
            ControlError::Stopped => ApiError::Unavailable,
        }
    }
}

/// Creates or updates a configuration: its selector, priority and a new version of its files
///
/// What the body leaves out stays as stored. Content equal to the latest version's makes no
/// new version (`created: false`). The answer says what changed, the diff of the files, and
/// which agents the change moves from one configuration to another; with `?dry_run=true`
/// nothing is stored. Agents moved to a configuration that run another one's version are not
/// sent it until a rollout of it reaches them (they are pending).
#[utoipa::path(
    put,
    path = "/api/v1/configurations/{name}",
    tag = "configurations",
    params(
        ("name" = String, Path, description = "1-63 characters of lowercase letters, digits, `-`, `_`, `.`, starting with a letter or digit"),
        ("dry_run" = Option<bool>, Query, description = "only say what the change would do"),
        ("expected_reassigned" = Option<usize>, Query, description = "refuse (409) unless the change moves this many agents to another configuration, as a dry run said"),
    ),
    request_body = ConfigurationPutDto,
    responses(
        (status = 200, description = "the change, stored (or, in a dry run, what it would be)", body = ConfigurationPutResultDto),
        (status = 400, description = "a name, body, selector, file or query it does not take; an empty configuration; a new configuration without files", body = ErrorDto),
        (status = 409, description = "the configuration has as many versions as it may, or the change moves another number of agents than expected_reassigned", body = ErrorDto),
        (status = 500, description = "the configuration could not be stored", body = ErrorDto),
        (status = 503, description = "the server is shutting down", body = ErrorDto),
    ),
)]
pub(super) async fn put_configuration(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    RawQuery(query): RawQuery,
    body: Result<Json<ConfigurationPutDto>, JsonRejection>,
) -> Result<Json<ConfigurationPutResultDto>, ApiError> {
    let params = query_params(query.as_deref(), &["dry_run", "expected_reassigned"])?;
    let dry_run = flag(&params, "dry_run")?;
    let expected = params
        .get("expected_reassigned")
        .map(|n| {
            n.parse::<usize>().map_err(|_| {
                ApiError::BadRequest(format!("expected_reassigned is a count, not {n:?}"))
            })
        })
        .transpose()?;
    let body = json(body)?;
    let selector = body
        .selector
        .as_deref()
        .map(Selector::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("selector: {e}")))?;
    let files = body.files.map(|files| ConfigMap {
        files: files
            .into_iter()
            .map(|(name, f)| {
                let file = ConfigFile {
                    body: Bytes::from(f.body.into_bytes()),
                    content_type: f.content_type,
                };
                (name, file)
            })
            .collect(),
    });
    let spec = ConfigurationSpec {
        name: name.clone(),
        selector,
        priority: body.priority,
        files,
    };
    if let Some(expected) = expected {
        // What the admin confirmed must still be what happens.
        let before = state.controller.view();
        let preview = state
            .controller
            .put_configuration(spec.clone(), true)
            .await?;
        let moved = change_dto(&state, &before, &preview, true).reassigned_count;
        if moved != expected {
            return Err(ApiError::Conflict(format!(
                "the change now moves {moved} agents to another configuration, not {expected}: look at it again"
            )));
        }
    }
    let before = state.controller.view();
    let change = state.controller.put_configuration(spec, dry_run).await?;
    Ok(Json(change_dto(&state, &before, &change, dry_run)))
}

/// How many uids of each move an answer lists.
const MOVE_SAMPLE: usize = 10;

fn change_dto(
    state: &ApiState,
    before: &ControlView,
    change: &ConfigChange,
    dry_run: bool,
) -> ConfigurationPutResultDto {
    let old = change.before.as_deref();
    let previous = old.and_then(|c| c.latest());
    let empty = ConfigMap::default();
    let label = |v: Option<u32>| match v {
        Some(v) => format!("{} v{v}", change.config.name),
        None => format!("{} (new)", change.config.name),
    };
    let diff = diff_files(
        &label(previous.map(|v| v.version)),
        previous.map_or(&empty, |v| &v.files),
        &label(Some(change.version.version)),
        &change.version.files,
    );
    let mut after = before.configurations.clone();
    after.retain(|c| c.name != change.config.name);
    after.push(Arc::new(change.config.clone()));
    after.sort_by(|a, b| a.name.cmp(&b.name));
    let records = state.fleet.records();
    let moves = reassigned(&before.configurations, &after, records.iter().map(|a| &**a));
    ConfigurationPutResultDto {
        name: change.config.name.clone(),
        version: change.version.version,
        hash: change.version.hash.to_hex(),
        created: change.new_version.is_some(),
        dry_run,
        changed: change.changed().into_iter().map(String::from).collect(),
        previous_version: previous.map(|v| v.version),
        selector: change.config.selector.to_string(),
        priority: change.config.priority,
        previous_selector: old.map(|c| c.selector.to_string()),
        previous_priority: old.map(|c| c.priority),
        diff,
        reassigned_count: moves.values().map(Vec::len).sum(),
        reassigned: moves
            .into_iter()
            .map(|((from, to), mut uids)| {
                uids.sort();
                ReassignedDto {
                    from,
                    to,
                    count: uids.len(),
                    sample: uids
                        .iter()
                        .take(MOVE_SAMPLE)
                        .map(|u| u.to_string())
                        .collect(),
                }
            })
            .collect(),
    }
}

/// Deletes a configuration, its versions and its rollouts
///
/// Refused while agents are assigned to it or one of its rollouts is unfinished, unless
/// `?force=true`; its agents then fall to the next configuration that matches them, and are
/// pending until a rollout of that one reaches them.
#[utoipa::path(
    delete,
    path = "/api/v1/configurations/{name}",
    tag = "configurations",
    params(
        ("name" = String, Path, description = "the configuration's name"),
        ("force" = Option<bool>, Query, description = "delete even with agents assigned or a rollout unfinished"),
    ),
    responses(
        (status = 204, description = "deleted, on disk"),
        (status = 400, description = "a query it does not take", body = ErrorDto),
        (status = 404, description = "no such configuration", body = ErrorDto),
        (status = 409, description = "agents are assigned to it, or a rollout of it is unfinished", body = ErrorDto),
        (status = 500, description = "the deletion could not be stored", body = ErrorDto),
        (status = 503, description = "the server is shutting down", body = ErrorDto),
    ),
)]
pub(super) async fn delete_configuration(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let force = flag(&query_params(query.as_deref(), &["force"])?, "force")?;
    state.controller.delete_configuration(name, force).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A configuration's versions, oldest first, without their files
#[utoipa::path(
    get,
    path = "/api/v1/configurations/{name}/versions",
    tag = "configurations",
    params(("name" = String, Path, description = "the configuration's name")),
    responses(
        (status = 200, description = "its versions", body = VersionsDto),
        (status = 404, description = "no such configuration", body = ErrorDto),
    ),
)]
pub(super) async fn list_versions(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<VersionsDto>, ApiError> {
    let view = state.controller.view();
    let config = find_configuration(&view, &name)?;
    Ok(Json(VersionsDto {
        versions: config
            .versions
            .iter()
            .map(|v| version_dto(&config, v, false))
            .collect(),
    }))
}

/// The unified diff between two versions of a configuration
#[utoipa::path(
    get,
    path = "/api/v1/configurations/{name}/diff",
    tag = "configurations",
    params(
        ("name" = String, Path, description = "the configuration's name"),
        ("from" = u32, Query, description = "the older version"),
        ("to" = u32, Query, description = "the newer version"),
    ),
    responses(
        (status = 200, description = "the diff", body = ConfigDiffDto),
        (status = 400, description = "from or to missing or not a number, or another query", body = ErrorDto),
        (status = 404, description = "no such configuration or version", body = ErrorDto),
    ),
)]
pub(super) async fn diff_versions(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<ConfigDiffDto>, ApiError> {
    let params = query_params(query.as_deref(), &["from", "to"])?;
    let number = |key: &str| match params.get(key) {
        None => Err(ApiError::BadRequest(
            "give both versions, e.g. ?from=3&to=4".into(),
        )),
        Some(value) => value
            .trim_start_matches('v')
            .parse::<u32>()
            .map_err(|_| ApiError::BadRequest(format!("{key} is a version number, not {value:?}"))),
    };
    let (from, to) = (number("from")?, number("to")?);
    let view = state.controller.view();
    let config = find_configuration(&view, &name)?;
    let version = |n: u32| {
        config
            .version(n)
            .ok_or_else(|| ApiError::NotFound(format!("configuration {name} has no version {n}")))
    };
    let (old, new) = (version(from)?, version(to)?);
    Ok(Json(ConfigDiffDto {
        diff: diff_files(
            &format!("{name} v{from}"),
            &old.files,
            &format!("{name} v{to}"),
            &new.files,
        ),
        name: name.clone(),
        from,
        to,
    }))
}

fn matched_agents(
    state: &ApiState,
    view: &ControlView,
    config: &Configuration,
) -> Vec<Arc<AgentRecord>> {
    let mut agents: Vec<_> = state
        .fleet
        .records()
        .into_iter()
        .filter(|a| assign(&view.configurations, a).is_some_and(|c| c.name == config.name))
        .collect();
    agents.sort_by_key(|a| a.uid);
    agents
}

fn configuration_dto(
    state: &ApiState,
    view: &ControlView,
    config: &Configuration,
    detail: bool,
) -> ConfigurationDto {
    let agents = matched_agents(state, view, config);
    ConfigurationDto {
        name: config.name.clone(),
        selector: config.selector.to_string(),
        priority: config.priority,
        latest_version: config.latest().map(|v| v.version),
        latest_hash: config.latest().map(|v| v.hash.to_hex()),
        agent_count: agents.len(),
        rollout: view.latest_rollout(&config.name).and_then(|r| {
            Some(RolloutIdDto {
                id: r.id.clone(),
                state: r.progress.state.as_str().to_string(),
                version: r.config()?.version,
            })
        }),
        created_at: rfc3339(config.created_at),
        updated_at: rfc3339(config.updated_at),
        versions: detail.then(|| {
            config
                .versions
                .iter()
                .map(|v| version_dto(config, v, false))
                .collect()
        }),
        agents: detail.then(|| agents.iter().map(|a| a.uid.to_string()).collect()),
    }
}

fn version_dto(
    config: &Configuration,
    v: &crate::core::config::ConfigVersion,
    with_files: bool,
) -> VersionDto {
    VersionDto {
        name: config.name.clone(),
        version: v.version,
        hash: v.hash.to_hex(),
        created_at: rfc3339(v.created_at),
        components: v
            .components
            .iter()
            .map(|(k, t)| format!("{k}/{t}"))
            .collect(),
        files: with_files.then(|| {
            v.files
                .files
                .iter()
                .map(|(name, f)| {
                    let file = FileDto {
                        body: String::from_utf8_lossy(&f.body).into_owned(),
                        content_type: f.content_type.clone(),
                    };
                    (name.clone(), file)
                })
                .collect::<BTreeMap<_, _>>()
        }),
    }
}

/// The configurations
#[utoipa::path(
    get,
    path = "/api/v1/configurations",
    tag = "configurations",
    responses((status = 200, description = "every configuration, by name", body = ConfigurationsDto)),
)]
pub(super) async fn list_configurations(State(state): State<ApiState>) -> Json<ConfigurationsDto> {
    let view = state.controller.view();
    Json(ConfigurationsDto {
        configurations: view
            .configurations
            .iter()
            .map(|c| configuration_dto(&state, &view, c, false))
            .collect(),
    })
}

fn find_configuration(view: &ControlView, name: &str) -> Result<Arc<Configuration>, ApiError> {
    view.configuration(name)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("no configuration {name:?}")))
}

/// One configuration, with its versions and the agents assigned to it
#[utoipa::path(
    get,
    path = "/api/v1/configurations/{name}",
    tag = "configurations",
    params(("name" = String, Path, description = "the configuration's name")),
    responses(
        (status = 200, description = "the configuration", body = ConfigurationDto),
        (status = 404, description = "no such configuration", body = ErrorDto),
    ),
)]
pub(super) async fn show_configuration(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ConfigurationDto>, ApiError> {
    let view = state.controller.view();
    let config = find_configuration(&view, &name)?;
    Ok(Json(configuration_dto(&state, &view, &config, true)))
}

/// One version of a configuration, with its files
#[utoipa::path(
    get,
    path = "/api/v1/configurations/{name}/versions/{version}",
    tag = "configurations",
    params(
        ("name" = String, Path, description = "the configuration's name"),
        ("version" = u32, Path, description = "the version number, from 1"),
    ),
    responses(
        (status = 200, description = "the version", body = VersionDto),
        (status = 400, description = "the version is not a number", body = ErrorDto),
        (status = 404, description = "no such configuration or version", body = ErrorDto),
    ),
)]
pub(super) async fn show_version(
    State(state): State<ApiState>,
    ApiPath((name, version)): ApiPath<(String, String)>,
) -> Result<Json<VersionDto>, ApiError> {
    let view = state.controller.view();
    let config = find_configuration(&view, &name)?;
    let n: u32 = version
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("version {version:?} is not a number")))?;
    let v = config
        .version(n)
        .ok_or_else(|| ApiError::NotFound(format!("configuration {name} has no version {n}")))?;
    Ok(Json(version_dto(&config, v, true)))
}

pub(super) fn rollout_dto(state: &ApiState, view: &ControlView, r: &Rollout) -> RolloutDto {
    let counts = r.progress.counts();
    let config = r.config();
    let package = r.package();
    let skipped = view.skipped.get(&r.id);
    let skipped_list: Vec<SkippedDto> = skipped
        .iter()
        .flat_map(|skipped| skipped.iter())
        .map(|(uid, reason)| SkippedDto {
            instance_uid: uid.to_string(),
            reason: reason.clone(),
        })
        .collect();
    let passed_over = |uid| skipped.is_some_and(|s| s.contains_key(uid));
    let tracked_only = r
        .progress
        .agents
        .keys()
        .filter(|u| !passed_over(*u))
        .count();
    let eligible = u32::try_from(tracked_only).unwrap_or(u32::MAX);
    let matched = eligible.saturating_add(u32::try_from(skipped_list.len()).unwrap_or(u32::MAX));
    let by_reason = view.skipped_by_reason(&r.id);
    let mut summary = format!("{matched} agents matched, {eligible} eligible");
    for (reason, n) in &by_reason {
        summary.push_str(&format!(", {n} skipped ({reason})"));
    }
    // An ended rollout has nothing in flight: what was sent or waiting is left out.
    let ended = r.progress.state.is_terminal();
    let in_flight = counts.configuring + counts.pending;
    let reached = counts.completed + counts.errors + counts.configuring;
    RolloutDto {
        id: r.id.clone(),
        configuration: config.map(|c| c.configuration.clone()),
        version: config.map(|c| c.version),
        previous_version: config.and_then(|c| c.previous_version),
        package: package.map(|p| PackageRefDto {
            name: p.name.clone(),
            version: p.version.clone(),
        }),
        selector: package.map(|p| p.selector.to_string()),
        skipped: skipped_list,
        matched,
        eligible,
        summary,
        errors: rollout_errors(state, view, r),
        state: r.progress.state.as_str().to_string(),
        wave: r.progress.wave,
        wave_sizes: wave_sizes(r, reached, if ended { 0 } else { counts.pending }),
        counts: RolloutCountsDto {
            total: counts.total,
            completed: counts.completed,
            errors: counts.errors,
            configuring: if ended { 0 } else { counts.configuring },
            pending: if ended { 0 } else { counts.pending },
            left_out: if ended { in_flight } else { 0 },
            skipped: by_reason,
        },
        initial: r.params.initial,
        multiplier: r.params.multiplier,
        maximum: r.params.maximum,
        max_errors: r.params.max_errors,
        rollback_on_failure: r.rollback,
        wave_timeout_seconds: r.params.wave_timeout_ms / 1000,
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
    }
}

/// The waves started, each as large as the agents it took (the planned size, trimmed to the
/// agents reached), and the next one while agents wait (trimmed to them).
fn wave_sizes(r: &Rollout, reached: u32, waiting: u32) -> Vec<u32> {
    let mut left = reached;
    let mut sizes: Vec<u32> = (0..r.progress.wave)
        .map(|k| {
            let size = r.params.wave_size(k).min(left);
            left -= size;
            size
        })
        .collect();
    if let Some(last) = sizes.last_mut() {
        // A canary's agent and agents that joined late are in no planned wave.
        *last += left;
    }
    if waiting > 0 {
        let next = if r.progress.canary {
            1
        } else {
            r.params.wave_size(r.progress.wave)
        };
        sizes.push(next.min(waiting));
    }
    sizes
}

/// The agents a rollout failed on, with what each said (or that it did not answer).
fn rollout_errors(state: &ApiState, view: &ControlView, r: &Rollout) -> Vec<RolloutErrorDto> {
    r.progress
        .agents
        .iter()
        .filter(|(_, phase)| matches!(phase, Phase::Failed | Phase::TimedOut))
        .map(|(uid, phase)| {
            let kept = view.failures.get(&r.id).and_then(|f| f.get(uid)).cloned();
            let record = state.fleet.get(uid).map(|h| h.record());
            let now = record.as_ref().and_then(|a| match r.config() {
                Some(_) => a
                    .remote_config
                    .as_ref()
                    .map(|rc| rc.error.clone())
                    .filter(|e| !e.is_empty()),
                None => Some(a.status_reason.clone()).filter(|s| !s.is_empty()),
            });
            // What it said when it failed; else (a failure from before a restart) what it
            // says now.
            let said = kept.filter(|s| !s.is_empty()).or(now);
            let message = match (phase, said) {
                (_, Some(said)) => said,
                (Phase::TimedOut, None) => format!(
                    "no answer within the wave timeout ({} s)",
                    r.params.wave_timeout_ms / 1000
                ),
                _ => "failed without a message".to_string(),
            };
            RolloutErrorDto {
                instance_uid: uid.to_string(),
                phase: phase.as_str().to_string(),
                message,
            }
        })
        .collect()
}

/// Starts a rollout of a configuration version, or of a package (an upgrade)
///
/// It replaces the unfinished rollouts of the same configuration, or of the same package.
#[utoipa::path(
    post,
    path = "/api/v1/rollouts",
    tag = "rollouts",
    request_body = RolloutStartDto,
    responses(
        (status = 200, description = "the rollout, stored", body = RolloutDto),
        (status = 400, description = "neither or both of configuration and package, or a value it does not take", body = ErrorDto),
        (status = 404, description = "no such configuration, version or package", body = ErrorDto),
        (status = 500, description = "the rollout could not be stored", body = ErrorDto),
        (status = 503, description = "the server is shutting down", body = ErrorDto),
    ),
)]
pub(super) async fn start_rollout(
    State(state): State<ApiState>,
    body: Result<Json<RolloutStartDto>, JsonRejection>,
) -> Result<Json<RolloutDto>, ApiError> {
    let body = json(body)?;
    let params = Params {
        initial: body.initial.unwrap_or(DEFAULT_INITIAL),
        multiplier: body.multiplier.unwrap_or(DEFAULT_MULTIPLIER),
        maximum: body.maximum.unwrap_or(DEFAULT_MAXIMUM),
        max_errors: body.max_errors.unwrap_or(DEFAULT_MAX_ERRORS),
        wave_timeout_ms: body
            .wave_timeout_seconds
            .unwrap_or(DEFAULT_WAVE_TIMEOUT_SECS)
            .saturating_mul(1000),
    };
    let target = match (body.configuration, body.package) {
        (Some(configuration), None) => {
            if body.selector.is_some() {
                return Err(ApiError::BadRequest(
                    "a configuration rollout goes to the agents assigned to it; selector is for package rollouts".into(),
                ));
            }
            RolloutTarget::Config {
                configuration,
                version: body.version,
            }
        }
        (None, Some(package)) => RolloutTarget::Package {
            name: package.name,
            version: package.version,
            selector: Selector::parse(body.selector.as_deref().unwrap_or_default())
                .map_err(|e| ApiError::BadRequest(format!("selector: {e}")))?,
        },
        _ => {
            return Err(ApiError::BadRequest(
                "give either \"configuration\" or \"package\"".into(),
            ));
        }
    };
    let rollout = state
        .controller
        .start_rollout(RolloutSpec {
            target,
            params,
            rollback: body.rollback_on_failure.unwrap_or(false),
        })
        .await?;
    // The controller answers once its first step is taken: show the rollout as it is now.
    let view = state.controller.view();
    let rollout = view.rollout(&rollout.id).unwrap_or(&rollout);
    Ok(Json(rollout_dto(&state, &view, rollout)))
}

/// The rollouts, newest first
#[utoipa::path(
    get,
    path = "/api/v1/rollouts",
    tag = "rollouts",
    responses((status = 200, description = "every rollout", body = RolloutsDto)),
)]
pub(super) async fn list_rollouts(State(state): State<ApiState>) -> Json<RolloutsDto> {
    let view = state.controller.view();
    Json(RolloutsDto {
        rollouts: view
            .rollouts
            .iter()
            .rev()
            .map(|r| rollout_dto(&state, &view, r))
            .collect(),
    })
}

/// One rollout
#[utoipa::path(
    get,
    path = "/api/v1/rollouts/{id}",
    tag = "rollouts",
    params(("id" = String, Path, description = "the rollout's id")),
    responses(
        (status = 200, description = "the rollout", body = RolloutDto),
        (status = 404, description = "no such rollout", body = ErrorDto),
    ),
)]
pub(super) async fn show_rollout(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RolloutDto>, ApiError> {
    let view = state.controller.view();
    let rollout = view
        .rollout(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no rollout {id}")))?;
    Ok(Json(rollout_dto(&state, &view, rollout)))
}

/// Pauses, resumes or cancels a rollout
#[utoipa::path(
    post,
    path = "/api/v1/rollouts/{id}/{action}",
    tag = "rollouts",
    params(
        ("id" = String, Path, description = "the rollout's id"),
        ("action" = inline(RolloutAction), Path, description = "what to do"),
    ),
    responses(
        (status = 200, description = "the rollout after it, stored", body = RolloutDto),
        (status = 404, description = "no such rollout or action", body = ErrorDto),
        (status = 409, description = "the rollout's state does not allow it", body = ErrorDto),
        (status = 500, description = "the change could not be stored", body = ErrorDto),
        (status = 503, description = "the server is shutting down", body = ErrorDto),
    ),
)]
pub(super) async fn act_on_rollout(
    State(state): State<ApiState>,
    ApiPath((id, action)): ApiPath<(String, String)>,
) -> Result<Json<RolloutDto>, ApiError> {
    let action = match action.as_str() {
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "cancel" => Action::Cancel,
        other => return Err(ApiError::NotFound(format!("no rollout action {other:?}"))),
    };
    let rollout = state.controller.act(id, action).await?;
    Ok(Json(rollout_dto(
        &state,
        &state.controller.view(),
        &rollout,
    )))
}

/// The actions `POST /api/v1/rollouts/{id}/{action}` takes.
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum RolloutAction {
    Pause,
    Resume,
    Cancel,
}

/// The agent's configuration as the API shows it: assignment, the version it runs, the one it
/// was sent and has not confirmed, the one it should run, and whether it can.
pub(super) fn agent_config(
    state: &ApiState,
    view: &ControlView,
    agent: &AgentRecord,
) -> Option<AgentConfigDto> {
    let config = assign(&view.configurations, agent)?;
    let version_of = |hash: &crate::core::domain::ContentHash| {
        config
            .versions
            .iter()
            .find(|v| &v.hash == hash)
            .map(|v| v.version)
    };
    let current = agent.applied_config_hash.as_ref().and_then(version_of);
    let pending = agent
        .offered_config_hash
        .as_ref()
        .filter(|h| agent.remote_config.as_ref().map(|rc| &rc.hash) != Some(*h))
        .and_then(version_of);
    let available = agent
        .components_hash
        .as_ref()
        .and_then(|h| state.fleet.components(h));
    let directive = directive(
        config,
        view.latest_rollout(&config.name).map(Arc::as_ref),
        agent,
        available.as_deref(),
    );
    // Judged against what the agent is headed to, else the latest version.
    let judged = directive.version.as_ref().or(config.latest());
    let incompatible = directive.incompatible.or_else(|| {
        let (set, version) = (available.as_deref()?, judged?);
        incompatibility(config, version, Some(set))
    });
    let compatibility = match (&available, &incompatible) {
        (None, _) => "unknown",
        (_, Some(_)) => "incompatible",
        _ => "compatible",
    };
    Some(AgentConfigDto {
        name: config.name.clone(),
        current_version: current,
        pending_version: pending,
        target_version: directive.version.as_ref().map(|v| v.version),
        compatibility: compatibility.to_string(),
        incompatible_reason: incompatible,
    })
}
