//! One binary WebSocket frame as the OpAMP listener reads it: the varint header, the
//! AgentToServer decode, the bounds check and the conversion to a domain report. Then what the
//! store does with a report: the description and the health tree are kept as their protobuf
//! encoding and read back, which must give the same thing.
#![no_main]

use bytes::Bytes;
use corral::edge::protocol::{
    Inbound, decode_agent_message, description_from_proto, description_to_proto,
    health_report_from_bytes, proto, unframe_ws,
};
use corral_fuzz::cap_stack;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(init: cap_stack(), |data: &[u8]| run(data));

fn run(data: &[u8]) {
    let frame = Bytes::copy_from_slice(data);
    let Ok(msg) = unframe_ws(frame).and_then(decode_agent_message) else {
        return;
    };
    let report = Inbound::from(msg).report;

    if let Some(description) = &report.description {
        let stored = description_to_proto(description).encode_to_vec();
        let read = proto::AgentDescription::decode(stored.as_slice())
            .expect("a stored description decodes");
        let again = description_to_proto(&description_from_proto(read)).encode_to_vec();
        assert_eq!(
            stored, again,
            "a description changes when stored and read back"
        );
    }
    if let Some(health) = &report.health {
        let read = health_report_from_bytes(&health.encoded).expect("a stored health decodes");
        assert_eq!(
            read.problem, health.problem,
            "the health problem changes when read back"
        );
    }
}
