use corral::edge::protocol::proto;

use crate::common::*;

#[tokio::test]
async fn agents_survive_a_restart_as_disconnected_then_carry_on() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "persisted")).await;
    let mut sick = heartbeat(&uid, 2);
    sick.health = Some(proto::ComponentHealth {
        healthy: false,
        last_error: "disk full".into(),
        ..Default::default()
    });
    agent.exchange(&sick).await;
    server.wait_status(&uid, "error").await;
    let (status, _) = server
        .put(
            &format!("/api/v1/agents/{}/labels", uuid_str(&uid)),
            r#"{"labels": {"env": "prod"}}"#,
        )
        .await;
    assert_eq!(status, 200);
    let dir = server.stop().await;
    drop(agent);

    let server = TestServer::start_with(dir, Options::default()).await;
    let a = server.agent(&uid).await.expect("known after restart");
    assert_eq!(a.agent.status, "disconnected");
    // Marked when its socket closed at shutdown, or else when the server came back.
    assert!(
        ["server shutting down", "server restarted"].contains(&a.agent.status_reason.as_str()),
        "{}",
        a.agent.status_reason
    );
    assert_eq!(a.agent.labels["env"], "prod");
    assert_eq!(a.agent.identifying_attributes["service.name"], "persisted");
    let before: Vec<_> = a.history.iter().map(|h| h.to.as_str()).collect();
    assert_eq!(before, ["connected", "error", "disconnected"]);
    assert_eq!(server.fleet().await.by_status["disconnected"], 1);

    // It reconnects with a compressed message: the server asks for its full state.
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    let reply = agent.exchange(&heartbeat(&uid, 3)).await;
    assert_eq!(reply.flags & 1, 1, "the server lacks its current state");
    // Unchanged means still unhealthy, as before the restart.
    server.wait_status(&uid, "error").await;
    agent.exchange(&full_report(&uid, 4, "persisted")).await;
    let a = server.wait_status(&uid, "connected").await;
    assert_eq!(a.agent.labels["env"], "prod");
    let after: Vec<_> = a.history.iter().map(|h| h.to.as_str()).collect();
    assert_eq!(
        after,
        [
            "connected",
            "error",
            "disconnected",
            "connected",
            "error",
            "connected"
        ]
    );
    assert_eq!(a.history[3].from.as_deref(), Some("disconnected"));
}

#[tokio::test]
async fn heartbeats_do_not_write_to_the_store() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "quiet")).await;
    server.wait_status(&uid, "connected").await;
    // Let the first report's changes be flushed.
    tokio::time::sleep(corral::edge::store::FLUSH_INTERVAL * 3).await;
    let flushes = server.metric("corral_store_flushes_total").await;
    for seq in 2..50 {
        agent.exchange(&heartbeat(&uid, seq)).await;
    }
    tokio::time::sleep(corral::edge::store::FLUSH_INTERVAL * 3).await;
    assert_eq!(server.metric("corral_store_flushes_total").await, flushes);
}
