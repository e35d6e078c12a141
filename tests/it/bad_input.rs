use corral::edge::protocol::proto;
use prost::Message;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::common::*;

/// A second, healthy agent that must not notice anything.
async fn bystander(server: &TestServer) -> (WsAgent, [u8; 16]) {
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "bystander")).await;
    (agent, uid)
}

async fn still_fine(server: &TestServer, agent: &mut WsAgent, uid: &[u8; 16]) {
    let reply = agent.exchange(&heartbeat(uid, 2)).await;
    assert_eq!(reply.instance_uid.as_ref(), uid);
    assert_eq!(server.agent(uid).await.unwrap().agent.status, "connected");
}

#[tokio::test]
async fn websocket_nonzero_header_closes_with_1002() {
    let server = TestServer::start().await;
    let (mut other, other_uid) = bystander(&server).await;
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    let mut frame = vec![1u8];
    full_report(&new_uid(), 1, "x").encode(&mut frame).unwrap();
    agent.send_raw(WsMessage::Binary(frame.into())).await;
    assert_eq!(agent.closed_with().await, 1002);
    assert_eq!(
        server
            .metric("corral_decode_errors_total{kind=\"bad_header\"}")
            .await,
        1.0
    );
    still_fine(&server, &mut other, &other_uid).await;
}

#[tokio::test]
async fn websocket_malformed_protobuf_closes_with_1007() {
    let server = TestServer::start().await;
    let (mut other, other_uid) = bystander(&server).await;
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent
        .send_raw(WsMessage::Binary(vec![0u8, 0x0a, 0xff, 0xff, 0x01].into()))
        .await;
    assert_eq!(agent.closed_with().await, 1007);
    assert_eq!(
        server
            .metric("corral_decode_errors_total{kind=\"malformed_protobuf\"}")
            .await,
        1.0
    );
    still_fine(&server, &mut other, &other_uid).await;
}

#[tokio::test]
async fn websocket_text_frame_closes_with_1003() {
    let server = TestServer::start().await;
    let (mut other, other_uid) = bystander(&server).await;
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.send_raw(WsMessage::Text("hello".into())).await;
    assert_eq!(agent.closed_with().await, 1003);
    assert_eq!(
        server
            .metric("corral_decode_errors_total{kind=\"text_frame\"}")
            .await,
        1.0
    );
    still_fine(&server, &mut other, &other_uid).await;
}

#[tokio::test]
async fn websocket_oversized_message_closes_with_1009() {
    let server = TestServer::small_messages().await;
    let (mut other, other_uid) = bystander(&server).await;
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    let uid = new_uid();
    let mut msg = full_report(&uid, 1, "big");
    msg.effective_config = Some(effective_config(&"x".repeat(100 * 1024)));
    agent.send(&msg).await;
    assert_eq!(agent.closed_with().await, 1009);
    assert_eq!(
        server
            .metric("corral_rejected_requests_total{kind=\"too_large\"}")
            .await,
        1.0
    );
    assert!(
        server.agent(&uid).await.is_none(),
        "nothing of the message was taken"
    );
    still_fine(&server, &mut other, &other_uid).await;
}

#[tokio::test]
async fn websocket_bad_uid_gets_bad_request_and_stays_open() {
    let server = TestServer::start().await;
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    let mut msg = full_report(&new_uid(), 1, "x");
    msg.instance_uid = bytes::Bytes::from_static(b"short");
    let reply = agent.exchange(&msg).await;
    assert_eq!(reply.instance_uid.as_ref(), b"short");
    let err = reply.error_response.expect("error_response");
    assert_eq!(
        err.r#type,
        proto::ServerErrorResponseType::BadRequest as i32
    );
    assert!(
        err.error_message.contains("16 bytes"),
        "{}",
        err.error_message
    );
    let uid = new_uid();
    let reply = agent.exchange(&full_report(&uid, 1, "x")).await;
    assert!(reply.error_response.is_none(), "the connection still works");
}

#[tokio::test]
async fn http_malformed_protobuf_is_400_with_bad_request_body() {
    let server = TestServer::start().await;
    let response = server
        .post("application/x-protobuf", vec![0x0a, 0xff, 0xff, 0x01], &[])
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let reply = proto::ServerToAgent::decode(response.bytes().await.unwrap()).unwrap();
    let err = reply.error_response.expect("error_response");
    assert_eq!(
        err.r#type,
        proto::ServerErrorResponseType::BadRequest as i32
    );
    assert_eq!(
        server
            .metric("corral_decode_errors_total{kind=\"malformed_protobuf\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn http_bad_uid_is_400_with_bad_request_body() {
    let server = TestServer::start().await;
    let mut msg = full_report(&new_uid(), 1, "x");
    msg.instance_uid = bytes::Bytes::from_static(&[1, 2, 3]);
    let response = server
        .post("application/x-protobuf", msg.encode_to_vec(), &[])
        .await;
    assert_eq!(response.status(), 400);
    let reply = proto::ServerToAgent::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(reply.instance_uid.as_ref(), &[1, 2, 3]);
    assert!(reply.error_response.is_some());
    assert_eq!(server.fleet().await.total, 0);
}

#[tokio::test]
async fn http_wrong_content_type_is_415() {
    let server = TestServer::start().await;
    let response = server
        .post(
            "application/json",
            full_report(&new_uid(), 1, "x").encode_to_vec(),
            &[],
        )
        .await;
    assert_eq!(response.status(), 415);
    assert_eq!(
        server
            .metric("corral_rejected_requests_total{kind=\"unsupported_media_type\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn http_oversized_body_is_413() {
    let server = TestServer::small_messages().await;
    let uid = new_uid();
    let mut msg = full_report(&uid, 1, "big");
    msg.effective_config = Some(effective_config(&"x".repeat(100 * 1024)));
    let response = server
        .post("application/x-protobuf", msg.encode_to_vec(), &[])
        .await;
    assert_eq!(response.status(), 413);
    assert_eq!(
        server
            .metric("corral_rejected_requests_total{kind=\"too_large\"}")
            .await,
        1.0
    );
    assert!(server.agent(&uid).await.is_none());
}

#[tokio::test]
async fn http_gzip_bomb_is_413_not_memory() {
    use std::io::Write;
    let server = TestServer::small_messages().await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0u8; 50 * 1024 * 1024]).unwrap();
    let small = gz.finish().unwrap();
    assert!(small.len() < 64 * 1024);
    let response = server
        .post(
            "application/x-protobuf",
            small,
            &[("content-encoding", "gzip")],
        )
        .await;
    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405() {
    let server = TestServer::start().await;
    let client = server.client();
    let response = client
        .post(format!("http://{}/v2/opamp", server.opamp))
        .header("content-type", "application/x-protobuf")
        .body(vec![])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = client.put(server.http_url()).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(
        server
            .metric("corral_rejected_requests_total{kind=\"not_found\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_bad_websocket_handshake_is_refused_with_the_reason() {
    let server = TestServer::start().await;
    let client = server.client();
    let plain = client.get(server.http_url()).send().await.unwrap();
    assert_eq!(plain.status(), 400);
    assert!(plain.text().await.unwrap().contains("upgrade"));
    let old_version = client
        .get(server.http_url())
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(old_version.status(), 426);
    assert_eq!(old_version.headers()["sec-websocket-version"], "13");
    let no_key = client
        .get(server.http_url())
        .header("connection", "keep-alive, Upgrade")
        .header("upgrade", "WebSocket")
        .header("sec-websocket-version", "13")
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 400);
    // Nothing was registered, and real agents still connect.
    let (mut agent, uid) = bystander(&server).await;
    still_fine(&server, &mut agent, &uid).await;
}

/// An unhealthy chain of components, `depth` below the root.
fn unhealthy_chain(depth: usize, error: &str) -> proto::ComponentHealth {
    let mut node = proto::ComponentHealth {
        last_error: error.into(),
        ..Default::default()
    };
    for level in 0..depth {
        let mut parent = proto::ComponentHealth::default();
        parent
            .component_health_map
            .insert(format!("c{level}"), node);
        node = parent;
    }
    node
}

/// Regression: a report whose health was about 50 unhealthy levels deep (under 1 KiB) pinned a
/// worker thread for hours; now it is refused at once, and the deepest allowed tree costs
/// nothing. (40 levels: deeper ones hit the protobuf decoder's recursion limit first.)
#[tokio::test]
async fn a_health_tree_past_the_bounds_is_refused_and_one_within_them_is_cheap() {
    let server = TestServer::start().await;
    let (mut other, other_uid) = bystander(&server).await;
    let uid = new_uid();
    let mut deep = full_report(&uid, 1, "deep");
    deep.health = Some(unhealthy_chain(40, "bottom"));
    let response = server
        .post("application/x-protobuf", deep.encode_to_vec(), &[])
        .await;
    assert_eq!(response.status(), 400);
    let reply = proto::ServerToAgent::decode(response.bytes().await.unwrap()).unwrap();
    let err = reply.error_response.expect("error_response");
    assert!(
        err.error_message.contains("nested"),
        "{}",
        err.error_message
    );
    assert_eq!(
        server
            .metric("corral_decode_errors_total{kind=\"out_of_bounds\"}")
            .await,
        1.0
    );
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.send(&deep).await;
    assert_eq!(agent.closed_with().await, 1007);

    let mut allowed = full_report(&uid, 1, "deep");
    allowed.health = Some(unhealthy_chain(15, "bottom"));
    server.poll(&allowed).await;
    let a = server.wait_status(&uid, "error").await;
    assert!(
        a.agent.status_reason.ends_with("c0: bottom"),
        "{}",
        a.agent.status_reason
    );
    still_fine(&server, &mut other, &other_uid).await;
}

/// Regression: errors were kept verbatim (megabytes each, in memory, in every history entry and
/// in the store); now every agent-supplied text kept for display is cut to 1 KiB.
#[tokio::test]
async fn agent_supplied_errors_are_kept_cut_to_a_kilobyte() {
    let server = TestServer::start().await;
    let uid = new_uid();
    // Three of them fit in one message under the 4 MiB limit.
    let huge = "x".repeat(1 << 20);
    let mut sick = full_report(&uid, 1, "verbose");
    sick.health = Some(proto::ComponentHealth {
        healthy: false,
        last_error: huge.clone(),
        status: huge.clone(),
        ..Default::default()
    });
    sick.remote_config_status = Some(remote_config_status(
        proto::RemoteConfigStatuses::Failed,
        &[1; 32],
        &huge,
    ));
    server.poll(&sick).await;
    let a = server.wait_status(&uid, "error").await;
    assert!(
        a.agent.status_reason.len() <= 1024,
        "{}",
        a.agent.status_reason.len()
    );
    let health = a.agent.health.expect("health");
    assert!(health.last_error.len() <= 1024 && health.status.len() <= 1024);
    assert!(a.agent.remote_config.expect("reported").error.len() <= 1024);
    let (_, body) = server
        .get(&format!("/api/v1/agents/{}", uuid_str(&uid)))
        .await;
    let json = body.to_string();
    assert!(json.len() < 16 * 1024, "agent JSON is {} bytes", json.len());
}

/// A server holding `--max-agents` asks new agents to come back later; the agents it knows
/// carry on.
#[tokio::test]
async fn new_agents_beyond_the_maximum_are_asked_to_come_back_later() {
    let server = TestServer::with(Options {
        max_agents: Some(2),
        ..Options::default()
    })
    .await;
    let (first, second) = (new_uid(), new_uid());
    server.poll(&full_report(&first, 1, "one")).await;
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&second, 1, "two")).await;

    let third = new_uid();
    let response = server
        .post(
            "application/x-protobuf",
            full_report(&third, 1, "three").encode_to_vec(),
            &[],
        )
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "60");
    let reply = proto::ServerToAgent::decode(response.bytes().await.unwrap()).unwrap();
    let err = reply.error_response.expect("error_response");
    assert_eq!(
        err.r#type,
        proto::ServerErrorResponseType::Unavailable as i32
    );
    assert!(server.agent(&third).await.is_none(), "nothing kept of it");

    let mut late = WsAgent::connect(&server.ws_url()).await;
    let reply = late.exchange(&full_report(&third, 1, "three")).await;
    let err = reply.error_response.expect("error_response");
    assert!(matches!(
        err.details,
        Some(proto::server_error_response::Details::RetryInfo(_))
    ));
    server.poll(&heartbeat(&first, 2)).await;
    agent.exchange(&heartbeat(&second, 2)).await;
    assert_eq!(server.fleet().await.total, 2);
}

/// Effective configs stored, read from the database file.
async fn stored_effective_configs(server: &TestServer) -> i64 {
    let url = format!(
        "sqlite://{}?mode=ro",
        server.dir.path().join("corral.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open db");
    let n = sqlx::query_scalar("SELECT COUNT(*) FROM effective_configs")
        .fetch_one(&pool)
        .await
        .expect("count");
    pool.close().await;
    n
}

#[tokio::test]
async fn an_agent_cycling_through_effective_configs_leaves_only_the_latest_stored() {
    let server = TestServer::with(Options {
        max_effective_config: Some(64 * 1024),
        ..Options::default()
    })
    .await;
    let (uid, other) = (new_uid(), new_uid());
    let mut bystander = WsAgent::connect(&server.ws_url()).await;
    bystander.exchange(&full_report(&other, 1, "other")).await;
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "cycling")).await;
    for n in 0..30u64 {
        let mut msg = heartbeat(&uid, n + 2);
        msg.effective_config = Some(effective_config(&format!("# {n}\n{}", "x".repeat(10_000))));
        agent.exchange(&msg).await;
    }
    // Larger than the server keeps: its hash and size only.
    let large = "y".repeat(100 * 1024);
    let mut msg = heartbeat(&uid, 32);
    msg.effective_config = Some(effective_config(&large));
    agent.exchange(&msg).await;
    let path = format!("/api/v1/agents/{}/effective-config", uuid_str(&uid));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = server.get(&path).await;
        if status == 200 && body["kept"] == false {
            assert_eq!(body["bytes"], large.len() + "text/yaml".len());
            assert_eq!(body["files"], serde_json::json!({}));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The shared first config stays for the bystander; the agent's own are gone but the last.
    let deadline = tokio::time::Instant::now() + WAIT;
    while stored_effective_configs(&server).await != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} effective configs stored",
            stored_effective_configs(&server).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Adds what `add` makes, numbered, for as long as the message stays within every bound.
fn fill_to_bound(msg: &mut proto::AgentToServer, add: impl Fn(&mut proto::AgentToServer, usize)) {
    for n in 0.. {
        let mut next = msg.clone();
        add(&mut next, n);
        if corral::edge::protocol::bounds::check(&next).is_err() {
            return;
        }
        *msg = next;
    }
}

fn string_value(s: String) -> Option<proto::AnyValue> {
    Some(proto::AnyValue {
        value: Some(proto::any_value::Value::StringValue(s)),
    })
}

/// Regression: one agent's JSON was 156 MB. The largest report every bound lets through,
/// its text made of what JSON escapes longest, with a full history of long reasons.
#[tokio::test]
async fn an_agent_json_stays_under_256_kib_whatever_it_sends() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let garbled = |n: usize| "\u{1}\"".repeat(n);
    let mut msg = full_report(&uid, 1, "huge");
    fill_to_bound(&mut msg, |m, n| {
        let d = m.agent_description.as_mut().unwrap();
        d.non_identifying_attributes.push(proto::KeyValue {
            key: format!("k{n}{}", garbled(8)),
            value: string_value(garbled(40)),
        });
    });
    fill_to_bound(&mut msg, |m, n| {
        let h = m.health.as_mut().unwrap();
        h.healthy = false;
        h.component_health_map.insert(
            format!("c{n}{}", garbled(400)),
            proto::ComponentHealth {
                healthy: false,
                status: garbled(2000),
                last_error: garbled(2000),
                start_time_unix_nano: u64::MAX,
                status_time_unix_nano: u64::MAX,
                ..Default::default()
            },
        );
    });
    fill_to_bound(&mut msg, |m, n| {
        let p = m.package_statuses.get_or_insert_with(Default::default);
        p.packages.insert(
            format!("p{n}{}", garbled(4)),
            proto::PackageStatus {
                name: format!("p{n}"),
                agent_has_version: garbled(4),
                agent_has_hash: vec![0xab; 32].into(),
                error_message: garbled(2000),
                ..Default::default()
            },
        );
    });
    server.poll(&msg).await;
    // A history full of long reasons: the agent's own error, flipping.
    for seq in 2..120u64 {
        let mut flip = heartbeat(&uid, seq);
        flip.health = Some(proto::ComponentHealth {
            healthy: seq % 2 == 0,
            last_error: format!("{seq} {}", garbled(2000)),
            ..Default::default()
        });
        server.poll(&flip).await;
    }
    let response = server
        .client()
        .get(server.api_url(&format!("/api/v1/agents/{}", uuid_str(&uid))))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let json = response.bytes().await.unwrap();
    let detail: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(detail["history"].as_array().unwrap().len(), 100);
    eprintln!("the largest agent JSON: {} bytes", json.len());
    assert!(
        json.len() < 256 * 1024,
        "the agent's JSON is {} bytes",
        json.len()
    );
}
