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

/// A reply's protobuf, ungzipped when it came gzipped; and whether it did.
async fn reply_of(response: reqwest::Response) -> (proto::ServerToAgent, bool) {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let gzipped = match response.headers().get("content-encoding") {
        None => false,
        Some(v) if v == "gzip" => true,
        Some(v) => panic!("unexpected content-encoding {v:?}"),
    };
    let bytes = response.bytes().await.unwrap();
    let mut plain = Vec::new();
    if gzipped {
        GzDecoder::new(&bytes[..]).read_to_end(&mut plain).unwrap();
    } else {
        plain = bytes.to_vec();
    }
    (proto::ServerToAgent::decode(&plain[..]).unwrap(), gzipped)
}

#[tokio::test]
async fn only_large_replies_are_gzipped_and_only_for_clients_that_accept_it() {
    let server = TestServer::start().await;
    let poll = |msg: proto::AgentToServer, gzip: bool| {
        let server = &server;
        async move {
            let accept: &[(&str, &str)] = if gzip {
                &[("accept-encoding", "gzip")]
            } else {
                &[]
            };
            reply_of(
                server
                    .post("application/x-protobuf", msg.encode_to_vec(), accept)
                    .await,
            )
            .await
        }
    };
    // A small reply goes out as it is, even to a client that accepts gzip.
    let (asks, plain) = (new_uid(), new_uid());
    let (reply, gzipped) = poll(full_report(&asks, 1, "gz"), true).await;
    assert_eq!(reply.instance_uid.as_ref(), &asks);
    assert!(
        !gzipped,
        "a reply of a few bytes is not worth a deflate stream"
    );
    assert!(!poll(heartbeat(&asks, 2), true).await.1);
    poll(full_report(&plain, 1, "plain"), false).await;

    // A reply carrying a configuration of 600 B is not gzipped either; one of 6 KiB is, for
    // the client that accepts it.
    let mut seq = 3;
    for (lines, big) in [(35, false), (400, true)] {
        let body = format!(
            "receivers:\n  otlp:\n{}",
            "# a comment line\n".repeat(lines)
        );
        let request = serde_json::json!({
            "selector": "",
            "files": {"collector.yaml": {"body": body, "content_type": "text/yaml"}},
        });
        let (status, reply) = server
            .put("/api/v1/configurations/main", &request.to_string())
            .await;
        assert_eq!(status, 200, "{reply}");
        let id = server
            .start_rollout(serde_json::json!({"configuration": "main", "initial": 10}))
            .await;
        for (uid, gzip) in [(asks, true), (plain, false)] {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            let (offer, gzipped) = loop {
                let (reply, gzipped) = poll(heartbeat(&uid, seq), gzip).await;
                seq += 1;
                if reply.remote_config.is_some() {
                    break (reply, gzipped);
                }
                assert!(tokio::time::Instant::now() < deadline, "no offer came");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            };
            assert_eq!(
                gzipped,
                gzip && big,
                "a {} B config, to a client asking for gzip: {gzip}",
                body.len()
            );
            let files = offer.remote_config.unwrap().config.unwrap().config_map;
            assert_eq!(files["collector.yaml"].body, body.as_bytes());
        }
        server
            .post_json(
                &format!("/api/v1/rollouts/{id}/cancel"),
                &serde_json::json!({}),
            )
            .await;
    }
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
