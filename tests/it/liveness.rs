use std::time::{Duration, Instant};

use crate::common::*;

async fn server_with_heartbeat(secs: u64) -> TestServer {
    TestServer::with(Options {
        heartbeat_interval: Some(secs),
        ..Options::default()
    })
    .await
}

/// A bare heartbeat from an agent that accepts the offered heartbeat interval.
fn accepting_heartbeat(uid: &[u8; 16], seq: u64) -> corral::edge::protocol::proto::AgentToServer {
    let mut hb = heartbeat(uid, seq);
    hb.capabilities |= ACCEPTS_SETTINGS;
    hb
}

/// Waits until the agent is disconnected, at least `at_least` from now; its status reason.
async fn disconnected_after(server: &TestServer, uid: &[u8; 16], at_least: Duration) -> String {
    let started = Instant::now();
    let a = server.wait_status(uid, "disconnected").await;
    let waited = started.elapsed();
    assert!(waited >= at_least, "too early: {waited:?}");
    a.agent.status_reason
}

/// An agent that accepts the offered heartbeat, connected and past its first report.
async fn accepting_agent(server: &TestServer, uid: &[u8; 16]) -> WsAgent {
    let mut msg = full_report(uid, 1, "otelcol");
    msg.capabilities |= ACCEPTS_SETTINGS;
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&msg).await;
    agent
}

#[tokio::test]
async fn a_silent_websocket_agent_becomes_disconnected_after_the_grace_period() {
    let server = server_with_heartbeat(1).await;
    let uid = new_uid();
    let mut agent = accepting_agent(&server, &uid).await;
    // Keeps its socket open but says nothing.
    let reason = disconnected_after(&server, &uid, Duration::from_millis(2400)).await;
    assert!(reason.starts_with("no message for"), "{reason}");
    assert_eq!(agent.closed_with().await, 1001);
}

#[tokio::test]
async fn heartbeats_keep_an_agent_connected() {
    let server = server_with_heartbeat(1).await;
    let uid = new_uid();
    let mut agent = accepting_agent(&server, &uid).await;
    for seq in 2..6 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        agent.exchange(&accepting_heartbeat(&uid, seq)).await;
        assert_eq!(server.agent(&uid).await.unwrap().agent.status, "connected");
    }
    assert_eq!(server.agent(&uid).await.unwrap().history.len(), 1);
}

#[tokio::test]
async fn a_polling_agent_that_stops_is_disconnected_by_its_own_pace() {
    // The agent does not accept our settings and polls every 300 ms: the server learns its
    // pace from the gaps and declares it gone after 2.5 of its (minimum 1 s) intervals.
    let server = server_with_heartbeat(30).await;
    let uid = new_uid();
    server.poll(&full_report(&uid, 1, "poller")).await;
    for seq in 2..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.poll(&heartbeat(&uid, seq)).await;
    }
    let reason = disconnected_after(&server, &uid, Duration::from_millis(2000)).await;
    assert!(reason.contains("expected every 1s"), "{reason}");
    // Polling again brings it back.
    server.poll(&heartbeat(&uid, 6)).await;
    server.wait_status(&uid, "connected").await;
}

/// Once an agent is settled, the server answers its bare heartbeats without waking the agent's
/// actor. They must still count: the agent stays connected past many grace periods, a later
/// status report continues the numbering (no full state asked), and silence still ends it.
#[tokio::test]
async fn heartbeats_answered_by_the_transport_count_as_heard_and_in_sequence() {
    let server = server_with_heartbeat(1).await;
    let uid = new_uid();
    let mut agent = accepting_agent(&server, &uid).await;
    let messages_before = server
        .metric("corral_messages_in_total{transport=\"websocket\"}")
        .await;
    let mut seq = 1;
    for _ in 0..16 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        seq += 1;
        let reply = agent.exchange(&accepting_heartbeat(&uid, seq)).await;
        assert_eq!(reply.flags & 0x1, 0, "heartbeat {seq} asked for full state");
        assert_eq!(reply.instance_uid.as_ref(), &uid);
    }
    // Four seconds of heartbeats: past the 2.5 s grace more than once.
    let a = server.agent(&uid).await.unwrap();
    assert_eq!(a.agent.status, "connected");
    assert_eq!(a.history.len(), 1);
    assert_eq!(
        server
            .metric("corral_messages_in_total{transport=\"websocket\"}")
            .await
            - messages_before,
        16.0
    );
    // A status change goes on from the last heartbeat's number.
    seq += 1;
    let mut unhealthy = accepting_heartbeat(&uid, seq);
    unhealthy.health = Some(corral::edge::protocol::proto::ComponentHealth {
        healthy: false,
        last_error: "exporter failing".into(),
        ..Default::default()
    });
    let reply = agent.exchange(&unhealthy).await;
    assert_eq!(
        reply.flags & 0x1,
        0,
        "the report after heartbeats asked for full state"
    );
    server.wait_status(&uid, "error").await;
    // Then silence: gone after the grace period, counted from the last message.
    let reason = disconnected_after(&server, &uid, Duration::from_millis(2000)).await;
    assert!(reason.starts_with("no message for"), "{reason}");
}

/// A settled polling agent's bare polls are answered without its actor, as WebSocket
/// heartbeats are. They must count the same: the agent stays connected past many grace
/// periods, a later report continues the numbering, an offer still goes out with the next
/// poll, and silence still ends it.
#[tokio::test]
async fn polls_answered_by_the_transport_count_as_heard_and_in_sequence() {
    let server = server_with_heartbeat(1).await;
    let uid = new_uid();
    let mut hello = full_report(&uid, 1, "otelcol");
    hello.capabilities |= ACCEPTS_SETTINGS;
    let reply = server.poll(&hello).await;
    let settings = reply.connection_settings.and_then(|s| s.opamp);
    assert_eq!(settings.map(|s| s.heartbeat_interval_seconds), Some(1));
    let mut seq = 1;
    for _ in 0..16 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        seq += 1;
        let reply = server.poll(&accepting_heartbeat(&uid, seq)).await;
        assert_eq!(reply.flags & 0x1, 0, "poll {seq} asked for full state");
        assert_eq!(reply.instance_uid.as_ref(), &uid);
        assert_ne!(reply.capabilities, 0);
    }
    let a = server.agent(&uid).await.unwrap();
    assert_eq!(a.agent.status, "connected");
    assert_eq!(a.history.len(), 1);
    assert_eq!(
        server
            .metric("corral_messages_in_total{transport=\"http\"}")
            .await,
        17.0
    );

    // A configuration assigned now goes out with the next poll.
    let request = serde_json::json!({
        "selector": "",
        "files": {"collector.yaml": {"body": "receivers:\n  otlp:\n", "content_type": "text/yaml"}},
    });
    let (status, body) = server
        .put("/api/v1/configurations/main", &request.to_string())
        .await;
    assert_eq!(status, 200, "{body}");
    server
        .start_rollout(serde_json::json!({"configuration": "main"}))
        .await;
    let offer = loop {
        seq += 1;
        let reply = server.poll(&accepting_heartbeat(&uid, seq)).await;
        assert_eq!(reply.flags & 0x1, 0, "poll {seq} asked for full state");
        if reply.remote_config.is_some() {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let hash = offer.remote_config.unwrap().config_hash;

    // A status change goes on from the last poll's number.
    seq += 1;
    let mut unhealthy = accepting_heartbeat(&uid, seq);
    unhealthy.remote_config_status = Some(remote_config_status(
        corral::edge::protocol::proto::RemoteConfigStatuses::Applied,
        &hash,
        "",
    ));
    unhealthy.health = Some(corral::edge::protocol::proto::ComponentHealth {
        healthy: false,
        last_error: "exporter failing".into(),
        ..Default::default()
    });
    let reply = server.poll(&unhealthy).await;
    assert_eq!(
        reply.flags & 0x1,
        0,
        "the report after the polls asked for full state"
    );
    server.wait_status(&uid, "error").await;
    let reason = disconnected_after(&server, &uid, Duration::from_millis(2000)).await;
    assert!(reason.starts_with("no message for"), "{reason}");
}
