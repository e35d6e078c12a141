use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use prost::Message;
use tokio::sync::oneshot;

use super::OpampState;
use crate::core::domain::{ReplyError, ServerReply};
use crate::edge::protocol::{Inbound, decode_agent_message, proto, reply_to_proto};
use crate::tasks::agent::{Reply, Source};
use crate::tasks::fleet::DispatchError;

const PROTOBUF: &str = "application/x-protobuf";
/// How long a poll waits for its agent's actor before giving up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// What an overloaded or stopping server asks clients to wait.
const RETRY_AFTER_SECS: u64 = 5;

fn protobuf_response(status: StatusCode, msg: &proto::ServerToAgent) -> Response {
    let mut response = (status, msg.encode_to_vec()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    response
}

fn error_response(status: StatusCode, raw_uid: Bytes, error: ReplyError) -> Response {
    let reply = ServerReply {
        error: Some(error),
        ..ServerReply::default()
    };
    reply_response(status, raw_uid, &reply)
}

/// A reply, with `Retry-After` when it asks the agent to come back later.
fn reply_response(status: StatusCode, raw_uid: Bytes, reply: &ServerReply) -> Response {
    let mut response = protobuf_response(status, &reply_to_proto(raw_uid, reply));
    if let Some(ReplyError::Unavailable {
        retry_after_nanos, ..
    }) = &reply.error
    {
        let secs = Duration::from_nanos(*retry_after_nanos).as_secs().max(1);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn unavailable(raw_uid: Bytes) -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        raw_uid,
        ReplyError::Unavailable {
            message: "server is shutting down".into(),
            retry_after_nanos: Duration::from_secs(RETRY_AFTER_SECS).as_nanos() as u64,
        },
    )
}

fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(PROTOBUF))
}

fn is_length_limit(error: &axum::Error) -> bool {
    crate::edge::find_cause::<http_body_util::LengthLimitError>(error).is_some()
}

/// One plain-HTTP poll: an AgentToServer in, the agent's ServerToAgent out.
pub(super) async fn poll(
    State(state): State<OpampState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let metrics = state.fleet.metrics();
    if !is_protobuf(&headers) {
        metrics.rejected("unsupported_media_type");
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be {PROTOBUF}"),
        )
            .into_response();
    }
    let bytes = match axum::body::to_bytes(body, state.max_message_size).await {
        Ok(bytes) => bytes,
        Err(e) if is_length_limit(&e) => {
            metrics.rejected("too_large");
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("message exceeds {} bytes", state.max_message_size),
            )
                .into_response();
        }
        Err(e) => {
            metrics.decode_error("bad_body");
            let reason = ReplyError::BadRequest(format!("cannot read request body: {e}"));
            return error_response(StatusCode::BAD_REQUEST, Bytes::new(), reason);
        }
    };
    let inbound = match decode_agent_message(bytes) {
        Ok(msg) => Inbound::from(msg),
        Err(e) => {
            metrics.decode_error(e.kind());
            return error_response(
                StatusCode::BAD_REQUEST,
                Bytes::new(),
                ReplyError::BadRequest(e.to_string()),
            );
        }
    };
    let raw_uid = inbound.raw_uid.clone();
    let (reply, answer) = oneshot::channel();
    let origin = super::origin(&headers);
    match state
        .fleet
        .dispatch(inbound, Source::Http { reply }, origin)
        .await
    {
        Ok(_) => {}
        Err(DispatchError::BadRequest(message)) => {
            metrics.decode_error("bad_instance_uid");
            return error_response(
                StatusCode::BAD_REQUEST,
                raw_uid,
                ReplyError::BadRequest(message),
            );
        }
        Err(DispatchError::Unavailable) => return unavailable(raw_uid),
    }
    match tokio::time::timeout(REPLY_TIMEOUT, answer).await {
        Ok(Ok(Reply { raw_uid, reply })) => {
            let status = match reply.error {
                None => StatusCode::OK,
                // An agent an admin chose to ignore, refused.
                Some(ReplyError::BadRequest(_)) => StatusCode::FORBIDDEN,
                // The server holds as many agents as it may.
                Some(ReplyError::Unavailable { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            };
            reply_response(status, raw_uid, &reply)
        }
        Ok(Err(_)) | Err(_) => unavailable(raw_uid),
    }
}
