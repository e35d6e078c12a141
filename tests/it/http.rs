use std::io::{Read, Write};

use corral::edge::protocol::proto;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use futures_util::stream;
use prost::Message;

use crate::common::*;

#[tokio::test]
async fn a_polling_agent_is_connected_with_its_attributes() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let reply = server.poll(&full_report(&uid, 1, "billing")).await;
    assert_eq!(reply.instance_uid.as_ref(), &uid);
    assert_ne!(reply.capabilities, 0);
    let a = server.wait_status(&uid, "connected").await.agent;
    assert_eq!(a.transport.as_deref(), Some("http"));
    assert_eq!(a.identifying_attributes["service.name"], "billing");
    assert_eq!(
        server
            .metric("corral_connections{transport=\"http\"}")
            .await,
        1.0
    );
    // The actor lives across polls: a bare poll keeps the state.
    let reply = server.poll(&heartbeat(&uid, 2)).await;
    assert_eq!(reply.instance_uid.as_ref(), &uid);
    assert_eq!(reply.flags & 0x1, 0);
    let a = server.agent(&uid).await.unwrap().agent;
    assert_eq!(a.identifying_attributes["service.name"], "billing");
    assert_eq!(server.agent(&uid).await.unwrap().history.len(), 1);
}

#[tokio::test]
async fn gzip_request_bodies_are_accepted() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&full_report(&uid, 1, "gz").encode_to_vec())
        .unwrap();
    let response = server
        .post(
            "application/x-protobuf",
            gz.finish().unwrap(),
            &[("content-encoding", "gzip")],
        )
        .await;
    assert_eq!(response.status(), 200);
    let reply = proto::ServerToAgent::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(reply.instance_uid.as_ref(), &uid);
    server.wait_status(&uid, "connected").await;
}

#[tokio::test]
async fn responses_are_gzipped_only_for_clients_that_accept_it() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let body = full_report(&uid, 1, "gz").encode_to_vec();
    let response = server
        .post(
            "application/x-protobuf",
            body,
            &[("accept-encoding", "gzip")],
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let mut plain = Vec::new();
    GzDecoder::new(&response.bytes().await.unwrap()[..])
        .read_to_end(&mut plain)
        .unwrap();
    let reply = proto::ServerToAgent::decode(&plain[..]).unwrap();
    assert_eq!(reply.instance_uid.as_ref(), &uid);

    let response = server
        .post(
            "application/x-protobuf",
            heartbeat(&uid, 2).encode_to_vec(),
            &[],
        )
        .await;
    assert!(response.headers().get("content-encoding").is_none());
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
}

#[tokio::test]
async fn chunked_bodies_without_content_length_are_accepted() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let bytes = full_report(&uid, 1, "chunked").encode_to_vec();
    let (a, b) = bytes.split_at(bytes.len() / 2);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(a.to_vec()), Ok(b.to_vec())];
    let body = reqwest::Body::wrap_stream(stream::iter(chunks));
    let response = server.post("application/x-protobuf", body, &[]).await;
    assert_eq!(response.status(), 200);
    server.wait_status(&uid, "connected").await;
}

#[tokio::test]
async fn content_type_parameters_are_tolerated_on_requests() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let response = server
        .post(
            "application/x-protobuf; charset=binary",
            full_report(&uid, 1, "x").encode_to_vec(),
            &[],
        )
        .await;
    assert_eq!(response.status(), 200);
}
