//! What the fuzz targets and the seed generator share: how a target reads its input.
//!
//! Each target takes plain bytes so libFuzzer's mutations of a real message stay close to a
//! real message; where a target needs more than one input, a small header says how to read the
//! rest. Every target runs its inputs on a stack no larger than a tokio worker's
//! ([`cap_stack`]).

use rlimit::Resource;

/// The stack of a tokio worker thread, where the server decodes, parses and steps sessions.
pub const WORKER_STACK: u64 = 2 << 20;

/// Caps the stack of the thread libFuzzer runs inputs on to a tokio worker's, so recursion too
/// deep for a worker crashes here too. That thread is the main one, whose stack grows up to
/// the process's stack limit (8 MiB by default) and stops at a lower limit set once running.
/// Each target calls it from its `init`.
pub fn cap_stack() {
    let (_, hard) = rlimit::getrlimit(Resource::STACK).expect("the stack limit");
    rlimit::setrlimit(Resource::STACK, WORKER_STACK.min(hard), hard).expect("a lower stack limit");
}

/// The `http_body` target: the first byte says how the rest reaches the decompression layer.
pub mod http {
    /// The rest is the body as sent, without `Content-Encoding`.
    pub const IDENTITY: u8 = 0;
    /// The rest is the body as sent, labelled `Content-Encoding: gzip` (a gzip stream as
    /// mutated: the decompressor's own input).
    pub const GZIP_AS_IS: u8 = 1;
    /// The rest is an AgentToServer the target gzips before sending, so mutations reach the
    /// decoder behind a valid gzip stream; its outcome must be the identity path's.
    pub const GZIP_WRAPPED: u8 = 2;
    /// Bit 2 of the first byte: a 1 KiB bound instead of the server's default, so the limit is
    /// reached by small inputs too.
    pub const SMALL_BOUND: u8 = 0b100;
    pub const SMALL_BOUND_BYTES: usize = 1024;

    pub fn input(mode: u8, body: &[u8]) -> Vec<u8> {
        let mut input = vec![mode];
        input.extend_from_slice(body);
        input
    }
}

/// The `session` target: a script of events for one agent's session.
///
/// The first two bytes set the session up: `[setup, flags]`, where the low four bits of
/// `setup` index `AdminState::ALL` and the high four `Status::ALL` (a restored record's
/// status); `flags` bit 0 restores the record from the store instead of making a new one, bit 1
/// sets a public URL, bit 2 refuses ignored agents, and the rest picks the admission. Records
/// follow until the input ends, each `[op, arg]`; a report also carries `[len_lo, len_hi]`
/// and `len` bytes of AgentToServer (cut short by the end of the input).
pub mod session {
    pub const REPORT: u8 = 0;
    pub const CONNECTION_CLOSED: u8 = 1;
    pub const OVERFLOWED: u8 = 2;
    pub const DIRECT: u8 = 3;
    pub const SET_LABELS: u8 = 4;
    pub const REQUEST_ADMIN_STATE: u8 = 5;
    pub const RETAIN: u8 = 6;
    pub const RESTART: u8 = 7;
    pub const RETRY_CONFIG: u8 = 8;
    pub const DISCONNECT: u8 = 9;
    pub const SILENCE: u8 = 10;
    pub const ANSWERED: u8 = 11;
    pub const SHUTDOWN: u8 = 12;
    pub const FORGET: u8 = 13;
    /// Time passes: `arg` × 10 seconds.
    pub const WAIT: u8 = 14;
    pub const OPS: u8 = 15;

    /// The configuration versions a `DIRECT` event may carry (`arg % 3`: none, the first or
    /// the second), so seeds can report their hashes.
    pub const VERSIONS: [&str; 2] = [
        "receivers: {otlp: {}}\nexporters: {debug: {}}\n",
        "exporters: {kafka: {}}\n",
    ];

    /// The package a `DIRECT` event with bit 4 of `arg` offers.
    pub fn package(at: chrono::DateTime<chrono::Utc>) -> corral::core::packages::Package {
        corral::core::packages::Package {
            name: "otelcol-contrib".into(),
            version: "0.120.0".into(),
            platform: "linux".into(),
            arch: "amd64".into(),
            sha256: corral::core::domain::ContentHash(vec![0xab; 32]),
            size: 1 << 20,
            created_at: at,
        }
    }

    /// A single-file collector configuration, as the versions above are made.
    pub fn config_files(body: &str) -> corral::core::domain::ConfigMap {
        use corral::core::domain::{ConfigFile, ConfigMap};
        ConfigMap {
            files: [(
                String::new(),
                ConfigFile {
                    body: body.to_owned().into(),
                    content_type: "text/yaml".into(),
                },
            )]
            .into(),
        }
    }

    /// For a report, the low two bits of `arg` pick the transport: WebSocket connection 1, 2
    /// or 3, or plain HTTP.
    pub const VIA_HTTP: u8 = 3;
    /// The server just assigned the agent its uid.
    pub const ASSIGNED: u8 = 0b100;
    /// The component set the agent reports by hash is known already.
    pub const COMPONENTS_KNOWN: u8 = 0b1000;

    /// Builds scripts for the seed corpus.
    pub struct Script(Vec<u8>);

    impl Script {
        /// `setup` as above; `restored` starts from a stored record.
        pub fn new(setup: u8, restored: bool) -> Self {
            Script(vec![setup, u8::from(restored)])
        }

        pub fn report(mut self, arg: u8, msg: &[u8]) -> Self {
            let len = u16::try_from(msg.len()).expect("a seed message under 64 KiB");
            self.0.extend_from_slice(&[REPORT, arg]);
            self.0.extend_from_slice(&len.to_le_bytes());
            self.0.extend_from_slice(msg);
            self
        }

        pub fn event(mut self, op: u8, arg: u8) -> Self {
            self.0.extend_from_slice(&[op, arg]);
            self
        }

        pub fn into_bytes(self) -> Vec<u8> {
            self.0
        }
    }
}
