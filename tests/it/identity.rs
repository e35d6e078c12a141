use crate::common::*;

#[tokio::test]
async fn request_instance_uid_gets_a_new_uuid_v7() {
    let server = TestServer::start().await;
    let temp = new_uid();
    let mut msg = full_report(&temp, 1, "otelcol");
    msg.flags = 0x1;
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    let reply = agent.exchange(&msg).await;
    assert_eq!(
        reply.instance_uid.as_ref(),
        &temp,
        "the reply echoes what the agent sent"
    );
    let new_uid: [u8; 16] = reply
        .agent_identification
        .expect("agent_identification")
        .new_instance_uid
        .as_ref()
        .try_into()
        .expect("16 bytes");
    assert_ne!(new_uid, temp);
    assert_eq!(uuid::Uuid::from_bytes(new_uid).get_version_num(), 7);
    // The agent carries on under its new uid.
    let reply = agent.exchange(&heartbeat(&new_uid, 2)).await;
    assert_eq!(reply.instance_uid.as_ref(), &new_uid);
    let a = server.wait_status(&new_uid, "connected").await.agent;
    assert_eq!(a.identifying_attributes["service.name"], "otelcol");
    assert!(server.agent(&temp).await.is_none());
}

#[tokio::test]
async fn a_cloned_machine_gets_a_new_uid() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut original = WsAgent::connect(&server.ws_url()).await;
    for seq in 1..=3 {
        let msg = if seq == 1 {
            full_report(&uid, 1, "otelcol")
        } else {
            heartbeat(&uid, seq)
        };
        original.exchange(&msg).await;
    }
    // The clone starts its own numbering.
    let mut clone = WsAgent::connect(&server.ws_url()).await;
    let reply = clone.exchange(&full_report(&uid, 1, "otelcol")).await;
    assert_eq!(reply.instance_uid.as_ref(), &uid);
    let assigned = reply
        .agent_identification
        .expect("clone is given a new uid");
    assert_eq!(assigned.new_instance_uid.len(), 16);
    assert_ne!(assigned.new_instance_uid.as_ref(), &uid);
    // A clone that ignores the new uid stays the same new agent, not a new one per message.
    clone.exchange(&heartbeat(&uid, 2)).await;
    assert_eq!(server.fleet().await.total, 2);
    // The original is undisturbed.
    let reply = original.exchange(&heartbeat(&uid, 4)).await;
    assert!(reply.agent_identification.is_none());
    assert_eq!(server.agent(&uid).await.unwrap().agent.status, "connected");
}

#[tokio::test]
async fn the_same_agent_reconnecting_takes_over_its_connection() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut old = WsAgent::connect(&server.ws_url()).await;
    old.exchange(&full_report(&uid, 1, "otelcol")).await;
    // Reconnects before the server saw the old socket drop; numbering continues.
    let mut new = WsAgent::connect(&server.ws_url()).await;
    let reply = new.exchange(&heartbeat(&uid, 2)).await;
    assert!(reply.agent_identification.is_none());
    assert_eq!(
        old.closed_with().await,
        1000,
        "the stale connection is closed"
    );
    assert_eq!(server.fleet().await.total, 1);
    let a = server.agent(&uid).await.unwrap();
    assert_eq!(a.agent.status, "connected");
}

#[tokio::test]
async fn a_sequence_gap_asks_for_full_state_once() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "otelcol")).await;
    assert_eq!(agent.exchange(&heartbeat(&uid, 2)).await.flags & 1, 0);
    assert_eq!(
        agent.exchange(&heartbeat(&uid, 7)).await.flags & 1,
        1,
        "gap"
    );
    assert_eq!(
        agent.exchange(&heartbeat(&uid, 9)).await.flags & 1,
        0,
        "already asked"
    );
    assert_eq!(
        agent
            .exchange(&full_report(&uid, 10, "otelcol"))
            .await
            .flags
            & 1,
        0
    );
    assert_eq!(agent.exchange(&heartbeat(&uid, 11)).await.flags & 1, 0);
}

#[tokio::test]
async fn a_compressed_first_message_asks_for_full_state_and_merges_the_answer() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let reply = server.poll(&heartbeat(&uid, 5)).await;
    assert_eq!(reply.flags & 1, 1);
    let reply = server.poll(&full_report(&uid, 6, "late")).await;
    assert_eq!(reply.flags & 1, 0);
    // Partial reports merge into the full state.
    let mut partial = heartbeat(&uid, 7);
    partial.health = Some(healthy());
    server.poll(&partial).await;
    let a = server.agent(&uid).await.unwrap().agent;
    assert_eq!(a.identifying_attributes["service.name"], "late");
    assert!(a.effective_config_hash.is_some());
}

#[tokio::test]
async fn connection_settings_offer_the_heartbeat_to_agents_that_accept_them() {
    let server = TestServer::with(Options {
        heartbeat_interval: Some(7),
        ..Options::default()
    })
    .await;
    let uid = new_uid();
    let mut msg = full_report(&uid, 1, "otelcol");
    msg.capabilities |= ACCEPTS_SETTINGS;
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    let reply = agent.exchange(&msg).await;
    let offer = reply.connection_settings.expect("settings offered");
    assert_eq!(offer.opamp.unwrap().heartbeat_interval_seconds, 7);
    let mut hb = heartbeat(&uid, 2);
    hb.capabilities |= ACCEPTS_SETTINGS;
    assert!(
        agent.exchange(&hb).await.connection_settings.is_none(),
        "offered once"
    );

    let other = new_uid();
    let reply = server.poll(&full_report(&other, 1, "no-settings")).await;
    assert!(reply.connection_settings.is_none());
}

/// Regression: one plain-HTTP message carrying the uid of an agent live on a WebSocket closed
/// that socket and replaced the agent's state. Without sequence continuity it is another agent
/// now, and is given a uid of its own.
#[tokio::test]
async fn a_plain_http_message_cannot_take_over_a_live_websocket_agent() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "genuine")).await;
    agent.exchange(&heartbeat(&uid, 2)).await;
    let reply = server.poll(&full_report(&uid, 1, "impostor")).await;
    let other = reply
        .agent_identification
        .expect("told to take another uid")
        .new_instance_uid;
    assert_ne!(other.as_ref(), uid.as_slice());
    let a = server.agent(&uid).await.expect("still there");
    assert_eq!(a.agent.identifying_attributes["service.name"], "genuine");
    assert_eq!(a.agent.transport.as_deref(), Some("websocket"));
    let reply = agent.exchange(&heartbeat(&uid, 3)).await;
    assert_eq!(
        reply.instance_uid.as_ref(),
        uid.as_slice(),
        "its socket is still open"
    );
    assert_eq!(server.agent(&uid).await.unwrap().agent.status, "connected");

    // The same agent moving to plain HTTP continues its numbering, and is let through.
    server.poll(&heartbeat(&uid, 4)).await;
    let a = server
        .wait_agent(&uid, |a| a.agent.transport.as_deref() == Some("http"))
        .await;
    assert_eq!(a.agent.identifying_attributes["service.name"], "genuine");
}
