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

/// Regression: two servers could run on one data directory, each thinking it owned every
/// agent.
#[tokio::test]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let server = TestServer::start().await;
    server.fleet().await; // up, with its store open
    let err = corral::edge::store::SqliteStore::open(server.dir.path())
        .await
        .err()
        .expect("refused while the first runs");
    assert!(err.to_string().contains("another Corral server"), "{err}");
    let dir = server.stop().await;
    assert!(
        corral::edge::store::SqliteStore::open(dir.path())
            .await
            .is_ok(),
        "free again once the first stopped"
    );
}

/// Regression: a 0-byte database started silently as an empty fleet.
#[tokio::test]
async fn an_empty_or_foreign_database_file_is_an_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("corral.db"), b"").unwrap();
    let err = corral::edge::store::SqliteStore::open(dir.path())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("is empty"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("corral.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE something_else (x INTEGER)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let err = corral::edge::store::SqliteStore::open(dir.path())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not a Corral store"), "{err}");
}

/// Regression: one corrupt agent row refused the whole start.
#[tokio::test]
async fn a_corrupt_agent_row_is_set_aside_and_the_server_starts() {
    let server = TestServer::start().await;
    let (broken, fine) = (new_uid(), new_uid());
    for uid in [&broken, &fine] {
        server.poll(&full_report(uid, 1, "svc")).await;
    }
    server.wait_status(&fine, "connected").await;
    let (opamp, api) = (server.opamp, server.api);
    let dir = server.stop().await;

    let url = format!("sqlite://{}", dir.path().join("corral.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE agents SET status = 'melted' WHERE instance_uid = ?")
        .bind(broken.to_vec())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let server = TestServer::restart_at(dir, Options::default(), opamp, api).await;
    assert!(server.agent(&fine).await.is_some(), "the other agents load");
    assert!(server.agent(&broken).await.is_none());
    assert_eq!(
        server.metric("corral_store_rows_set_aside_total").await,
        1.0
    );
    // It comes back as a new agent; the old row stays aside for inspection.
    server.poll(&full_report(&broken, 1, "svc")).await;
    server.wait_status(&broken, "connected").await;
}
