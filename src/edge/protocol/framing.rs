use bytes::Bytes;
use prost::Message;

use super::proto::{AgentToServer, ServerToAgent};

/// Why bytes from an agent are not an AgentToServer message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("websocket frame has no header")]
    MissingHeader,
    #[error("websocket frame header must be 0, got {0}")]
    NonZeroHeader(u64),
    #[error("malformed AgentToServer message: {0}")]
    Malformed(String),
    #[error("AgentToServer message out of bounds: {0}")]
    OutOfBounds(String),
}

impl DecodeError {
    /// A short name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::MissingHeader | DecodeError::NonZeroHeader(_) => "bad_header",
            DecodeError::Malformed(_) => "malformed_protobuf",
            DecodeError::OutOfBounds(_) => "out_of_bounds",
        }
    }
}

/// Strips the varint header (which must be 0) of a binary WebSocket frame.
pub fn unframe_ws(mut frame: Bytes) -> Result<Bytes, DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError::MissingHeader);
    }
    let header =
        prost::encoding::decode_varint(&mut frame).map_err(|_| DecodeError::MissingHeader)?;
    if header != 0 {
        return Err(DecodeError::NonZeroHeader(header));
    }
    Ok(frame)
}

/// A ServerToAgent as one binary WebSocket frame: header 0, then the message.
pub fn encode_ws_frame(msg: &ServerToAgent) -> Bytes {
    let mut buf = Vec::with_capacity(1 + msg.encoded_len());
    buf.push(0);
    msg.encode(&mut buf)
        .expect("a Vec grows to fit any message");
    Bytes::from(buf)
}

/// Decodes one AgentToServer and checks it against the bounds of what a message may carry.
pub fn decode_agent_message(bytes: Bytes) -> Result<AgentToServer, DecodeError> {
    let msg = AgentToServer::decode(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    super::bounds::check(&msg).map_err(DecodeError::OutOfBounds)?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip() {
        let msg = ServerToAgent {
            instance_uid: Bytes::from_static(&[1; 16]),
            capabilities: 3,
            ..Default::default()
        };
        let framed = encode_ws_frame(&msg);
        assert_eq!(framed[0], 0);
        let body = unframe_ws(framed).unwrap();
        assert_eq!(ServerToAgent::decode(body).unwrap(), msg);
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(unframe_ws(Bytes::new()), Err(DecodeError::MissingHeader));
        assert_eq!(
            unframe_ws(Bytes::from_static(&[5, 1, 2])),
            Err(DecodeError::NonZeroHeader(5))
        );
        // A varint that never ends.
        assert_eq!(
            unframe_ws(Bytes::from_static(&[0x80, 0x80])),
            Err(DecodeError::MissingHeader)
        );
    }

    #[test]
    fn malformed_protobuf_is_an_error_not_a_panic() {
        let err = decode_agent_message(Bytes::from_static(&[0x0a, 0xff, 0x01])).unwrap_err();
        assert_eq!(err.kind(), "malformed_protobuf");
    }
}
