use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Every error the admin API returns: `{"error": "message"}` with a 4xx or 5xx status.
/// Internal causes are logged, not shown.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("internal error")]
    Internal(String),
    #[error("server is shutting down")]
    Unavailable,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "api request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

impl From<crate::edge::store::StoreError> for ApiError {
    fn from(e: crate::edge::store::StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<crate::tasks::agent::ActorGone> for ApiError {
    fn from(_: crate::tasks::agent::ActorGone) -> Self {
        ApiError::Unavailable
    }
}
