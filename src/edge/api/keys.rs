//! The API's keys: create (the key is shown in that answer only), list, revoke.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};

use super::auth::{Caller, KeyError};
use super::dto::{ErrorDto, KeyCreatedDto, KeyDto, KeyInDto, KeysDto, rfc3339};
use super::{ApiError, ApiPath, ApiState, json};
use crate::core::keys::{ApiKey, Role};

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::NotFound(_) => ApiError::NotFound(e.to_string()),
            KeyError::LastAdmin(_) | KeyError::OwnKey(_) | KeyError::TooMany => {
                ApiError::Conflict(e.to_string())
            }
            KeyError::Random(_) => ApiError::Internal(e.to_string()),
            KeyError::Store(e) => e.into(),
        }
    }
}

fn key_dto(key: &ApiKey) -> KeyDto {
    KeyDto {
        id: key.id.clone(),
        name: key.name.clone(),
        role: key.role.as_str().into(),
        created_at: rfc3339(key.created_at),
        expires_at: key.expires_at.map(rfc3339),
        last_used_at: key.last_used_at.map(rfc3339),
    }
}

/// The API keys, without the keys
#[utoipa::path(
    get,
    path = "/api/v1/keys",
    tag = "keys",
    responses((status = 200, description = "every key, oldest first", body = KeysDto)),
)]
pub(super) async fn list_keys(State(state): State<ApiState>) -> Json<KeysDto> {
    Json(KeysDto {
        keys: state.keys.list().iter().map(key_dto).collect(),
    })
}

/// Creates an API key
///
/// The answer holds the key itself, which is never shown again: only its SHA-256 is kept.
#[utoipa::path(
    post,
    path = "/api/v1/keys",
    tag = "keys",
    request_body = KeyInDto,
    responses(
        (status = 201, description = "the key, stored; `key` is shown this once", body = KeyCreatedDto),
        (status = 400, description = "a body, name, role or expiry it does not take", body = ErrorDto),
        (status = 409, description = "there are as many keys as there may be", body = ErrorDto),
        (status = 500, description = "the key could not be stored", body = ErrorDto),
    ),
)]
pub(super) async fn create_key(
    State(state): State<ApiState>,
    body: Result<Json<KeyInDto>, JsonRejection>,
) -> Result<(StatusCode, Json<KeyCreatedDto>), ApiError> {
    let body = json(body)?;
    let role = Role::parse(&body.role).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "unknown role {:?}; expected one of {}",
            body.role,
            Role::ALL.map(Role::as_str).join(", ")
        ))
    })?;
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|at| {
            DateTime::parse_from_rfc3339(at)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| ApiError::BadRequest(format!("expires_at {at:?}: {e}")))
        })
        .transpose()?;
    let now = Utc::now();
    crate::core::keys::check_new(&body.name, expires_at, now).map_err(ApiError::BadRequest)?;
    let (key, secret) = state.keys.create(&body.name, role, expires_at, now).await?;
    tracing::info!(id = %key.id, name = %key.name, role = role.as_str(), "API key created");
    Ok((
        StatusCode::CREATED,
        Json(KeyCreatedDto {
            id: key.id,
            name: key.name,
            role: role.as_str().into(),
            key: secret,
            created_at: rfc3339(key.created_at),
            expires_at: key.expires_at.map(rfc3339),
        }),
    ))
}

/// Revokes an API key
///
/// From this answer on the key lets nobody in. The last admin key that works cannot be
/// revoked, nor the key the request is made with (revoke it with another).
#[utoipa::path(
    delete,
    path = "/api/v1/keys/{id}",
    tag = "keys",
    params(("id" = String, Path, description = "the key's id")),
    responses(
        (status = 204, description = "revoked, on disk"),
        (status = 404, description = "no such key", body = ErrorDto),
        (status = 409, description = "the last admin key, or the key of this request", body = ErrorDto),
        (status = 500, description = "the revocation could not be stored", body = ErrorDto),
    ),
)]
pub(super) async fn revoke_key(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if caller.is_some_and(|Extension(c)| c.key_id == id) {
        return Err(KeyError::OwnKey(id).into());
    }
    state.keys.revoke(&id, Utc::now()).await?;
    tracing::info!(%id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}
