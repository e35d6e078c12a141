//! Package uploads and listing, and the restart command.

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use chrono::Utc;

use super::dto::{ErrorDto, PackageDto, PackagesDto, rfc3339};
use super::openapi::AgentUid;
use super::{ApiError, ApiPath, ApiState, agent, agent_detail, query_params};
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

/// The query of `POST /api/v1/packages` (the handler reads it itself, for its own errors).
/// Each value is at most 128 characters of letters, digits, `.`, `_`, `-`, `+`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct UploadQuery {
    /// The package's name; the OpenTelemetry supervisor's convention is one top-level package
    /// with an empty name.
    #[param(default = "", pattern = "^[A-Za-z0-9._+-]{0,128}$")]
    name: Option<String>,
    /// Its version, e.g. `v0.116.0`; a version never changes once uploaded.
    #[param(pattern = "^[A-Za-z0-9._+-]{1,128}$")]
    version: String,
    /// The platform it is for (e.g. `linux`; empty: any).
    #[param(pattern = "^[A-Za-z0-9._+-]{0,128}$")]
    platform: Option<String>,
    /// The architecture it is for (e.g. `amd64`; empty: any).
    #[param(pattern = "^[A-Za-z0-9._+-]{0,128}$")]
    arch: Option<String>,
}

/// The bytes of a package, as the upload's body.
struct Artifact;

impl utoipa::PartialSchema for Artifact {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Artifact {}

/// Uploads a package: the body is the artifact
///
/// The same bytes again under the same name, version, platform and arch answer the package as
/// it is; other bytes are refused.
#[utoipa::path(
    post,
    path = "/api/v1/packages",
    operation_id = "upload_package",
    tag = "packages",
    params(UploadQuery),
    request_body(content = inline(Artifact), content_type = "application/octet-stream", description = "the artifact, at most --max-package-size bytes"),
    responses(
        (status = 200, description = "the package, stored", body = PackageDto),
        (status = 400, description = "an empty body, a missing version, or a query it does not take", body = ErrorDto),
        (status = 409, description = "this version exists with other bytes", body = ErrorDto),
        (status = 413, description = "the artifact is larger than --max-package-size", body = ErrorDto),
        (status = 500, description = "the package could not be stored", body = ErrorDto),
        (status = 503, description = "the server is shutting down", body = ErrorDto),
    ),
)]
pub(super) async fn upload(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Json<PackageDto>, ApiError> {
    let mut params = query_params(query.as_deref(), &["name", "version", "platform", "arch"])?;
    let mut take = |key: &str| params.remove(key);
    let (name, version) = (take("name"), take("version"));
    let (platform, arch) = (
        take("platform").unwrap_or_default(),
        take("arch").unwrap_or_default(),
    );
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

/// Deletes a package version: every platform's build, and its bytes
///
/// Refused while an unfinished rollout delivers it, the newest upgrade of that package offers
/// it, or an agent reports running it.
#[utoipa::path(
    delete,
    path = "/api/v1/packages",
    operation_id = "delete_package",
    tag = "packages",
    params(
        ("name" = Option<String>, Query, description = "the package's name; empty or left out: the agent itself"),
        ("version" = String, Query, description = "the version to delete"),
    ),
    responses(
        (status = 204, description = "deleted, on disk"),
        (status = 400, description = "no version, or a query it does not take", body = ErrorDto),
        (status = 404, description = "no such package version", body = ErrorDto),
        (status = 409, description = "a rollout or an agent uses it", body = ErrorDto),
        (status = 500, description = "the deletion could not be stored", body = ErrorDto),
        (status = 503, description = "the server is shutting down", body = ErrorDto),
    ),
)]
pub(super) async fn delete(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let mut params = query_params(query.as_deref(), &["name", "version"])?;
    let name = params.remove("name").unwrap_or_default();
    let version = params.remove("version");
    let version = version.ok_or_else(|| {
        ApiError::BadRequest("version is required, e.g. ?version=v0.116.0".into())
    })?;
    let builds = state.controller.delete_package(name, version).await?;
    let view = state.controller.view();
    for build in builds {
        // Identical bytes are kept once: another package may still serve them.
        if !view.packages.iter().any(|p| p.sha256 == build.sha256)
            && let Err(e) = state.blobs.remove(&build.sha256).await
        {
            tracing::warn!(error = %e, sha256 = %build.sha256.to_hex(), "cannot remove a deleted package's bytes");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The packages uploaded
#[utoipa::path(
    get,
    path = "/api/v1/packages",
    operation_id = "list_packages",
    tag = "packages",
    responses((status = 200, description = "every package", body = PackagesDto)),
)]
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

/// Sends the agent the Restart command
#[utoipa::path(
    post,
    path = "/api/v1/agents/{uid}/restart",
    operation_id = "restart_agent",
    tag = "agents",
    params(AgentUid),
    responses(
        (status = 200, description = "the agent; the command is on its way", body = AgentDetailDto),
        (status = 400, description = "not an instance uid", body = ErrorDto),
        (status = 404, description = "no such agent", body = ErrorDto),
        (status = 409, description = "the agent cannot take it (not managed, not connected, or it does not accept restarts)", body = ErrorDto),
    ),
)]
pub(super) async fn restart(
    State(state): State<ApiState>,
    ApiPath(uid): ApiPath<String>,
) -> Result<Json<AgentDetailDto>, ApiError> {
    let handle = agent(&state, &uid)?;
    handle.restart().await??;
    Ok(Json(agent_detail(&state, &handle.snapshot())))
}
