//! The OpAMP wire format: generated protobuf types, WebSocket framing and the conversions
//! between wire messages and domain types. The only module that sees prost.

pub mod bounds;
mod convert;
mod framing;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/opamp.proto.v1.rs"));
}

pub use convert::{
    Inbound, config_map_from_proto, config_map_to_proto, description_from_proto,
    description_to_proto, health_from_proto, health_report, health_report_from_bytes,
    health_to_proto, health_tree, packages_from_proto, packages_to_proto, reply_to_proto,
};
pub use framing::{DecodeError, decode_agent_message, encode_ws_frame, unframe_ws};
