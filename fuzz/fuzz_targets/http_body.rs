//! One plain-HTTP poll body as the OpAMP listener reads it: through the listener's request
//! decompression layer (gzip), read within the message size bound, decoded, bounded and
//! converted (`corral::edge::transport::read_message`). How the first byte picks the encoding
//! and the bound is in `corral_fuzz::http`.
#![no_main]

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::http::{Request, Response, header};
use corral::edge::protocol::DecodeError;
use corral::edge::transport::{
    BodyError, DEFAULT_MAX_MESSAGE_SIZE, read_message, request_decompression,
};
use corral_fuzz::cap_stack;
use corral_fuzz::http::*;
use flate2::write::GzEncoder;
use libfuzzer_sys::fuzz_target;
use tower::{Layer, ServiceExt, service_fn};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

/// What a read came to, comparable across encodings.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The report, printed.
    Read(String),
    TooLarge,
    Unreadable,
    Refused(&'static str),
}

fn outcome(read: Result<corral::edge::protocol::Inbound, BodyError>) -> Outcome {
    match read {
        Ok(inbound) => Outcome::Read(format!("{:?} {:?}", inbound.raw_uid, inbound.report)),
        Err(BodyError::TooLarge(_)) => Outcome::TooLarge,
        Err(BodyError::Unreadable(_)) => Outcome::Unreadable,
        Err(BodyError::Decode(e @ (DecodeError::Malformed(_) | DecodeError::OutOfBounds(_)))) => {
            Outcome::Refused(e.kind())
        }
        Err(BodyError::Decode(e)) => panic!("a poll body has no frame header to get wrong: {e}"),
    }
}

/// `body` through the listener's decompression layer into `read_message`.
fn read(body: Vec<u8>, gzip: bool, max: usize) -> Outcome {
    let out = Arc::new(Mutex::new(None));
    let seen = out.clone();
    let service = request_decompression().layer(service_fn(move |request: Request<_>| {
        let seen = seen.clone();
        async move {
            let read = read_message(Body::new(request.into_body()), max).await;
            *seen.lock().expect("not poisoned") = Some(outcome(read));
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }
    }));
    let mut request = Request::post("/v1/opamp")
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .body(Body::from(body))
        .expect("a valid request");
    if gzip {
        request.headers_mut().insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
    }
    runtime()
        .block_on(service.oneshot(request))
        .expect("infallible");
    let read = out.lock().expect("not poisoned").take();
    read.expect("the layer passes every gzip body on")
}

fuzz_target!(init: cap_stack(), |data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let max = if mode & SMALL_BOUND != 0 {
        SMALL_BOUND_BYTES
    } else {
        DEFAULT_MAX_MESSAGE_SIZE
    };
    match mode & 0b11 {
        GZIP_AS_IS => {
            read(body.to_vec(), true, max);
        }
        GZIP_WRAPPED => {
            let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(body).expect("writes to a Vec");
            let gzipped = encoder.finish().expect("writes to a Vec");
            assert_eq!(
                read(gzipped, true, max),
                read(body.to_vec(), false, max),
                "a gzipped body reads differently from the same body sent plain"
            );
        }
        _ => {
            read(body.to_vec(), false, max);
        }
    }
}
