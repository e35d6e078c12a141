//! Package uploads and listing, and the restart command.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use chrono::Utc;

use super::dto::{PackageDto, PackagesDto, rfc3339};
use super::{ApiError, ApiState, agent, agent_detail};
use crate::core::packages::{Package, validate_field};
use crate::edge::api::dto::AgentDetailDto;
use crate::edge::store::BlobError;

pub(super) fn package_dto(p: &Package) -> PackageDto {
    PackageDto {
        name: p.name.clone(),
        version: p.version.clone(),
        platform: p.platform.clone(),
        arch: p.arch.clone(),
        sha256: p.sha256.to_hex(),
        size: p.size,
        created_at: rfc3339(p.created_at),
    }
}

/// `POST /api/v1/packages?name=&version=v0.116.0&platform=linux&arch=amd64` with the artifact
/// as the body. The OpenTelemetry supervisor's convention is one top-level package with an
/// empty name.
pub(super) async fn upload(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Json<PackageDto>, ApiError> {
    let (mut name, mut version, mut platform, mut arch) =
        (None, None, String::new(), String::new());
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "name" => name = Some(value.into_owned()),
            "version" => version = Some(value.into_owned()),
            "platform" => platform = value.into_owned(),
            "arch" => arch = value.into_owned(),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    let name = name.unwrap_or_default();
    let version = version.ok_or_else(|| {
        ApiError::BadRequest("version is required, e.g. ?version=v0.116.0".into())
    })?;
    for (what, value, may_be_empty) in [
        ("name", &name, true),
        ("version", &version, false),
        ("platform", &platform, true),
        ("arch", &arch, true),
    ] {
        validate_field(what, value, may_be_empty).map_err(ApiError::BadRequest)?;
    }
    let (sha256, size) = state
        .blobs
        .put(body.into_data_stream(), state.max_package_size)
        .await
        .map_err(|e| match e {
            BlobError::TooLarge(_) => ApiError::TooLarge(e.to_string()),
            BlobError::Body(m) => ApiError::BadRequest(m),
            BlobError::Io(e) => ApiError::Internal(e.to_string()),
        })?;
    if size == 0 {
        return Err(ApiError::BadRequest("the package is empty".into()));
    }
    let package = state
        .controller
        .add_package(Package {
            name,
            version,
            platform,
            arch,
            sha256,
            size,
            created_at: Utc::now(),
        })
        .await?;
    Ok(Json(package_dto(&package)))
}

pub(super) async fn list(State(state): State<ApiState>) -> Json<PackagesDto> {
    Json(PackagesDto {
        packages: state
            .controller
            .view()
            .packages
            .iter()
            .map(|p| package_dto(p))
            .collect(),
    })
}

/// Sends the agent the Restart command; 409 when it cannot take it.
pub(super) async fn restart(
    State(state): State<ApiState>,
    Path(uid): Path<String>,
) -> Result<Json<AgentDetailDto>, ApiError> {
    let handle = agent(&state, &uid)?;
    handle.restart().await??;
    Ok(Json(agent_detail(&state, &handle.snapshot())))
}
