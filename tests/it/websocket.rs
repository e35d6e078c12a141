use corral::edge::protocol::proto::{self, RemoteConfigStatuses};
use futures_util::SinkExt;
use prost::Message;

use crate::common::*;

#[tokio::test]
async fn first_reply_echoes_the_uid_and_offers_capabilities() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    let reply = agent.exchange(&full_report(&uid, 1, "otelcol")).await;
    assert_eq!(reply.instance_uid.as_ref(), &uid);
    assert_ne!(reply.capabilities & 0x1, 0, "AcceptsStatus");
    assert_eq!(
        reply.capabilities & 0x1f,
        0x1f,
        "status, config, effective config, packages, package statuses"
    );
    assert_eq!(
        reply.flags & 0x1,
        0,
        "a full first report needs no ReportFullState"
    );
    let hb = agent.exchange(&heartbeat(&uid, 2)).await;
    assert_eq!(
        hb.instance_uid.as_ref(),
        &uid,
        "every reply carries the uid"
    );
}

#[tokio::test]
async fn a_connected_agent_shows_its_description_and_state() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "checkout")).await;
    let a = server.wait_status(&uid, "connected").await.agent;
    assert_eq!(a.instance_uid, uuid_str(&uid));
    assert_eq!(a.transport.as_deref(), Some("websocket"));
    assert_eq!(a.identifying_attributes["service.name"], "checkout");
    assert_eq!(a.non_identifying_attributes["host.name"], "host-1");
    assert!(a.capabilities.contains(&"ReportsHealth".to_string()));
    assert!(a.health.as_ref().unwrap().healthy);
    let hash = a.effective_config_hash.expect("effective config hash");
    assert_eq!(hash.len(), 64);
    assert!(
        hash.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(a.remote_config.unwrap().status, "unset");
    assert!(a.connected_at.is_some());

    let (status, config) = server
        .get(&format!(
            "/api/v1/agents/{}/effective-config",
            uuid_str(&uid)
        ))
        .await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["files"][""]["body"], "receivers:\n  otlp:\n");
}

#[tokio::test]
async fn health_drives_error_and_back() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "otelcol")).await;

    let mut sick = heartbeat(&uid, 2);
    let mut exporter = proto::ComponentHealth {
        healthy: false,
        last_error: "connection refused".into(),
        ..Default::default()
    };
    exporter.status = "StatusRecoverableError".into();
    let mut health = healthy();
    health
        .component_health_map
        .insert("exporter:otlp".into(), exporter);
    sick.health = Some(health);
    agent.exchange(&sick).await;
    let a = server.wait_status(&uid, "error").await;
    assert_eq!(a.agent.status_reason, "exporter:otlp: connection refused");

    let mut well = heartbeat(&uid, 3);
    well.health = Some(healthy());
    agent.exchange(&well).await;
    let a = server.wait_status(&uid, "connected").await;
    let path: Vec<_> = a
        .history
        .iter()
        .map(|h| (h.from.clone(), h.to.clone()))
        .collect();
    assert_eq!(
        path,
        [
            (None, "connected".to_string()),
            (Some("connected".into()), "error".into()),
            (Some("error".into()), "connected".into()),
        ]
    );
    assert_eq!(a.history[1].reason, "exporter:otlp: connection refused");
}

#[tokio::test]
async fn remote_config_status_drives_configuring_error_connected() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "otelcol")).await;
    let steps = [
        (
            RemoteConfigStatuses::Applying,
            "",
            "configuring",
            "applying remote config",
        ),
        (
            RemoteConfigStatuses::Failed,
            "unknown exporter \"foo\"",
            "error",
            "remote config failed: unknown exporter \"foo\"",
        ),
        (RemoteConfigStatuses::Applied, "", "connected", "connected"),
    ];
    for (seq, (rcs, message, status, reason)) in (2..).zip(steps) {
        let mut msg = heartbeat(&uid, seq);
        msg.remote_config_status = Some(remote_config_status(rcs, &[0xab; 32], message));
        agent.exchange(&msg).await;
        let a = server.wait_status(&uid, status).await.agent;
        assert_eq!(a.status_reason, reason);
        assert_eq!(a.remote_config.unwrap().hash, "ab".repeat(32));
    }
}

#[tokio::test]
async fn closing_the_socket_disconnects_at_once() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "otelcol")).await;
    server.wait_status(&uid, "connected").await;
    drop(agent);
    let a = server.wait_status(&uid, "disconnected").await;
    assert!(
        a.agent.status_reason.contains("closed"),
        "{}",
        a.agent.status_reason
    );
    assert_eq!(server.fleet().await.by_status["disconnected"], 1);
}

/// The Go client (the collector's opamp extension) says goodbye, closes with 1000 and waits for
/// the server's close frame; without one it logs an abnormal closure on every shutdown.
#[tokio::test]
async fn an_agents_close_frame_is_answered_with_one() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "otelcol")).await;
    let mut bye = heartbeat(&uid, 2);
    bye.agent_disconnect = Some(proto::AgentDisconnect {});
    agent.exchange(&bye).await;
    agent
        .send_raw(WsMessage::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 1000.into(),
                reason: "".into(),
            },
        )))
        .await;
    assert_eq!(agent.closed_with().await, 1000);
    server.wait_status(&uid, "disconnected").await;
}

#[tokio::test]
async fn agent_disconnect_message_disconnects_at_once() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "otelcol")).await;
    let mut bye = heartbeat(&uid, 2);
    bye.agent_disconnect = Some(proto::AgentDisconnect {});
    let reply = agent.exchange(&bye).await;
    assert_eq!(reply.instance_uid.as_ref(), &uid);
    let a = server.wait_status(&uid, "disconnected").await;
    assert_eq!(a.agent.status_reason, "agent disconnected");
}

#[tokio::test]
async fn many_agents_on_many_sockets_are_counted_apart() {
    let server = TestServer::start().await;
    let mut agents = Vec::new();
    for i in 0..20 {
        let uid = new_uid();
        let mut agent = WsAgent::connect(&server.ws_url()).await;
        agent
            .exchange(&full_report(&uid, 1, &format!("svc-{i}")))
            .await;
        agents.push((uid, agent));
    }
    let fleet = server.fleet().await;
    assert_eq!(fleet.total, 20);
    assert_eq!(fleet.by_status["connected"], 20);
    assert_eq!(
        server
            .metric("corral_connections{transport=\"websocket\"}")
            .await,
        20.0
    );
    agents.truncate(5);
    for (uid, _) in &agents {
        assert_eq!(server.agent(uid).await.unwrap().agent.status, "connected");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.fleet().await.by_status["disconnected"] != 15 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "15 agents should disconnect"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn heartbeats_advance_last_seen_without_new_history() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "otelcol")).await;
    let first = server.wait_status(&uid, "connected").await;
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    agent.exchange(&heartbeat(&uid, 2)).await;
    let later = server.agent(&uid).await.unwrap();
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    assert!(parse(&later.agent.last_seen) > parse(&first.agent.last_seen));
    assert_eq!(later.history.len(), 1);
    let (_, list) = server.get("/api/v1/agents").await;
    assert_eq!(
        list["agents"][0]["last_seen"],
        later.agent.last_seen.as_str()
    );
}

/// Large reports make the server rebuild the socket's buffers; messages the agent sent right
/// behind them, already read from the network, must still arrive, in order.
#[tokio::test]
async fn messages_pipelined_behind_large_reports_are_not_lost() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "otelcol")).await;
    let mut seq = 1;
    let mut last_body = String::new();
    for round in 0..10 {
        // A large report and a heartbeat, written together.
        seq += 1;
        let mut big = heartbeat(&uid, seq);
        last_body = format!("# round {round}\n{}", "x: y\n".repeat(4000));
        big.effective_config = Some(effective_config(&last_body));
        let mut frame = vec![0u8];
        big.encode(&mut frame).unwrap();
        agent
            .ws
            .feed(WsMessage::Binary(frame.into()))
            .await
            .unwrap();
        seq += 1;
        let mut frame = vec![0u8];
        heartbeat(&uid, seq).encode(&mut frame).unwrap();
        agent
            .ws
            .feed(WsMessage::Binary(frame.into()))
            .await
            .unwrap();
        agent.ws.flush().await.unwrap();
        for _ in 0..2 {
            let reply = agent.recv().await;
            assert_eq!(
                reply.flags & 0x1,
                0,
                "round {round}: the server saw a sequence gap and asked for full state"
            );
        }
    }
    server.wait_status(&uid, "connected").await;
    let path = format!("/api/v1/agents/{}/effective-config", uuid_str(&uid));
    for _ in 0..100 {
        let (status, body) = server.get(&path).await;
        if status == 200 && body["files"][""]["body"] == last_body.as_str() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the last large report's effective config never showed");
}

#[tokio::test]
async fn a_server_shutting_down_closes_every_websocket_as_going_away() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut speaking = WsAgent::connect(&server.ws_url()).await;
    speaking.exchange(&full_report(&uid, 1, "a")).await;
    speaking.exchange(&heartbeat(&uid, 2)).await;
    // Connected, but no agent has spoken on it yet.
    let mut silent = WsAgent::connect(&server.ws_url()).await;
    // Said goodbye, so its actor let go of the socket, but left it open.
    let leaving_uid = new_uid();
    let mut leaving = WsAgent::connect(&server.ws_url()).await;
    leaving.exchange(&full_report(&leaving_uid, 1, "b")).await;
    let mut bye = heartbeat(&leaving_uid, 2);
    bye.agent_disconnect = Some(proto::AgentDisconnect {});
    leaving.exchange(&bye).await;
    server.wait_status(&leaving_uid, "disconnected").await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(speaking.closed_with().await, 1001);
    assert_eq!(silent.closed_with().await, 1001);
    assert_eq!(leaving.closed_with().await, 1001);
    stopping.await.expect("server stopped");
}
