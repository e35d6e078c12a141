use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::dto::ErrorDto;

/// Every error the admin API returns: `{"error": "message"}` ([`ErrorDto`]) with a 4xx or 5xx
/// status. Internal causes are logged, not shown.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A lifecycle move that is not allowed (409): the message, and the states that are.
    #[error("{message}")]
    Refused {
        message: String,
        allowed: Vec<&'static str>,
    },
    /// A bulk action whose confirmed count is not what matches now (409): nothing was done.
    #[error("{message}")]
    CountMismatch { message: String, matched: usize },
    /// A method the path has no route for (405; axum adds the `Allow` header).
    #[error("{0}")]
    MethodNotAllowed(String),
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
            ApiError::Conflict(_) | ApiError::Refused { .. } | ApiError::CountMismatch { .. } => {
                StatusCode::CONFLICT
            }
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "api request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut body = ErrorDto {
            error: self.to_string(),
            allowed: None,
            matched: None,
        };
        match self {
            ApiError::Refused { allowed, .. } => {
                body.allowed = Some(allowed.into_iter().map(String::from).collect());
            }
            ApiError::CountMismatch { matched, .. } => body.matched = Some(matched),
            _ => {}
        }
        (status, Json(body)).into_response()
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    /// A body over the API's size limit is 413, like every other size refusal; anything else
    /// wrong with it is 400 with serde's or axum's explanation.
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(rejection.body_text())
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    /// A path that does not decode is the client's (400); a handler asking for parameters its
    /// route does not have is ours.
    fn from(rejection: axum::extract::rejection::PathRejection) -> Self {
        if rejection.status().is_server_error() {
            ApiError::Internal(rejection.body_text())
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    }
}

impl From<crate::edge::store::StoreError> for ApiError {
    fn from(e: crate::edge::store::StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<crate::core::lifecycle::MoveRefused> for ApiError {
    fn from(refused: crate::core::lifecycle::MoveRefused) -> Self {
        ApiError::Refused {
            message: refused.to_string(),
            allowed: refused.allowed,
        }
    }
}

impl From<crate::tasks::agent::ActorGone> for ApiError {
    /// The actor stopped while the request was on its way: the agent was deleted meanwhile
    /// (or the server is stopping, and then nobody reads the answer).
    fn from(_: crate::tasks::agent::ActorGone) -> Self {
        ApiError::NotFound("the agent was deleted".into())
    }
}

impl From<crate::core::session::Refused> for ApiError {
    fn from(refused: crate::core::session::Refused) -> Self {
        match refused.allowed {
            Some(allowed) => ApiError::Refused {
                message: refused.message,
                allowed,
            },
            None => ApiError::Conflict(refused.message),
        }
    }
}
