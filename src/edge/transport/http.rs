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
use crate::core::session::quiet_reply;
use crate::edge::protocol::{DecodeError, Inbound, decode_agent_message, proto, reply_to_proto};
use crate::tasks::agent::{POLLING, Reply, Source};
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

/// Why a poll's body is not an agent message.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("message exceeds {0} bytes")]
    TooLarge(usize),
    /// The body could not be read, or its gzip stream is broken.
    #[error("cannot read request body: {0}")]
    Unreadable(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A poll's body as the decompression layer ([`super::request_decompression`]) hands it over:
/// read up to `max_message_size` bytes after decompression (so a gzip bomb stops there), then
/// decoded, checked against the bounds and converted.
pub async fn read_message(body: Body, max_message_size: usize) -> Result<Inbound, BodyError> {
    let bytes = match axum::body::to_bytes(body, max_message_size).await {
        Ok(bytes) => bytes,
        Err(e) if is_length_limit(&e) => return Err(BodyError::TooLarge(max_message_size)),
        Err(e) => return Err(BodyError::Unreadable(e.to_string())),
    };
    Ok(Inbound::from(decode_agent_message(bytes)?))
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
    let inbound = match read_message(body, state.max_message_size).await {
        Ok(inbound) => inbound,
        Err(BodyError::TooLarge(max)) => {
            metrics.rejected("too_large");
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("message exceeds {max} bytes"),
            )
                .into_response();
        }
        Err(e @ BodyError::Unreadable(_)) => {
            metrics.decode_error("bad_body");
            let reason = ReplyError::BadRequest(e.to_string());
            return error_response(StatusCode::BAD_REQUEST, Bytes::new(), reason);
        }
        Err(BodyError::Decode(e)) => {
            metrics.decode_error(e.kind());
            return error_response(
                StatusCode::BAD_REQUEST,
                Bytes::new(),
                ReplyError::BadRequest(e.to_string()),
            );
        }
    };
    // A bare poll the agent's session said it has nothing to add to (rule 10) is answered
    // here, without waking the actor.
    if let Ok(uid) = &inbound.uid
        && let Some(agent) = state.fleet.get(uid)
        && state
            .fleet
            .answer_heartbeat(&agent, &inbound.report, POLLING)
    {
        return reply_response(StatusCode::OK, inbound.raw_uid, &quiet_reply());
    }
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::io::Write;
    use std::sync::Arc;

    use axum::http::Request;
    use flate2::write::GzEncoder;
    use parking_lot::Mutex;
    use tower::{Layer, ServiceExt, service_fn};

    use super::*;

    /// `body` through the listener's decompression layer into `read_message`.
    async fn read(body: Vec<u8>, gzip: bool, max: usize) -> Result<Inbound, BodyError> {
        let out = Arc::new(Mutex::new(None));
        let seen = out.clone();
        let service =
            super::super::request_decompression().layer(service_fn(move |request: Request<_>| {
                let seen = seen.clone();
                async move {
                    let read = read_message(Body::new(request.into_body()), max).await;
                    *seen.lock() = Some(read);
                    Ok::<_, Infallible>(Response::new(Body::empty()))
                }
            }));
        let mut request = Request::post("/").body(Body::from(body)).unwrap();
        if gzip {
            request
                .headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        service.oneshot(request).await.unwrap();
        out.lock().take().expect("the body was read")
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[tokio::test]
    async fn a_body_is_read_after_decompression_within_its_bound() {
        let msg = proto::AgentToServer {
            instance_uid: Bytes::from_static(&[7; 16]),
            sequence_num: 3,
            ..Default::default()
        }
        .encode_to_vec();
        let plain = read(msg.clone(), false, 1024).await.unwrap();
        let gzipped = read(gzip(&msg), true, 1024).await.unwrap();
        assert_eq!(plain.report.sequence_num, 3);
        assert_eq!(gzipped.report.sequence_num, 3);

        // The bound counts the bytes after decompression: a small bomb is too large.
        let bomb = gzip(&vec![0; 4096]);
        assert!(bomb.len() < 1024);
        assert!(matches!(
            read(bomb, true, 1024).await,
            Err(BodyError::TooLarge(1024))
        ));
        let mut broken = gzip(&msg);
        broken.truncate(broken.len() - 4);
        assert!(matches!(
            read(broken, true, 1024).await,
            Err(BodyError::Unreadable(_))
        ));
        assert!(matches!(
            read(vec![0x0a, 0xff, 0x01], false, 1024).await,
            Err(BodyError::Decode(DecodeError::Malformed(_)))
        ));
    }
}
