use std::process::Command;

use crate::common::*;

async fn fleet_of(server: &TestServer, services: &[&str]) -> Vec<[u8; 16]> {
    let mut uids = Vec::new();
    for service in services {
        let uid = new_uid();
        server.poll(&full_report(&uid, 1, service)).await;
        uids.push(uid);
    }
    uids
}

#[tokio::test]
async fn list_filters_by_status_and_label_and_pages_in_uid_order() {
    let server = TestServer::start().await;
    let uids = fleet_of(&server, &["a", "b", "a", "c", "a"]).await;
    let (status, body) = server.get("/api/v1/agents?label=service.name=a").await;
    assert_eq!(status, 200);
    assert_eq!(body["total"], 3);
    let (_, body) = server.get("/api/v1/agents?status=error").await;
    assert_eq!(body["total"], 0);
    assert_eq!(body["agents"].as_array().unwrap().len(), 0);

    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = server
            .get(&format!("/api/v1/agents?limit=2&cursor={cursor}"))
            .await;
        assert_eq!(page["total"], 5);
        for a in page["agents"].as_array().unwrap() {
            seen.push(a["instance_uid"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    let mut expected: Vec<_> = uids.iter().map(|u| uuid_str(u)).collect();
    expected.sort();
    assert_eq!(seen, expected, "every agent once, in uid order");
}

#[tokio::test]
async fn admin_labels_win_over_attributes_in_filters() {
    let server = TestServer::start().await;
    let uids = fleet_of(&server, &["a", "b"]).await;
    let path = format!("/api/v1/agents/{}/labels", uuid_str(&uids[1]));
    let (status, body) = server
        .put(&path, r#"{"labels": {"service.name": "a", "env": "prod"}}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["labels"]["env"], "prod");
    let (_, body) = server.get("/api/v1/agents?label=service.name=a").await;
    assert_eq!(body["total"], 2);
    let (_, body) = server
        .get("/api/v1/agents?label=service.name=a&label=env=prod")
        .await;
    assert_eq!(body["total"], 1);
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors() {
    let server = TestServer::start().await;
    let uids = fleet_of(&server, &["a"]).await;
    let cases = [
        ("/api/v1/agents?status=happy", 400, "unknown status"),
        ("/api/v1/agents?limit=0", 400, "limit"),
        ("/api/v1/agents?label=novalue", 400, "key=value"),
        ("/api/v1/agents?cursor=xyz", 400, "invalid instance uid"),
        ("/api/v1/agents?colour=red", 400, "unknown query parameter"),
        ("/api/v1/agents/not-a-uid", 400, "invalid instance uid"),
        (
            "/api/v1/agents/0191d0b5-0000-7000-8000-000000000000",
            404,
            "no agent",
        ),
        ("/api/v1/nothing", 404, "no such endpoint"),
        // Path parameters that do not decode are JSON errors too (they were text/plain).
        ("/api/v1/agents/%FF", 400, "Invalid URL"),
        ("/api/v1/configurations/%FF/versions/1", 400, "Invalid URL"),
        ("/api/v1/rollouts/%C3%28", 400, "Invalid URL"),
    ];
    for (path, status, message) in cases {
        let (got, body) = server.get(path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(message),
            "{path}: {body}"
        );
    }
    let path = format!("/api/v1/agents/{}/labels", uuid_str(&uids[0]));
    for body in [
        r#"{"labels": {"": "x"}}"#,
        r#"{"labels": {"a b": "x"}}"#,
        r#"{"labels": 3}"#,
        "not json",
    ] {
        let (got, reply) = server.put(&path, body).await;
        assert_eq!(got, 400, "{body}: {reply}");
        assert!(reply["error"].is_string());
    }
    let a = server.agent(&uids[0]).await.unwrap();
    assert!(
        a.agent.labels.is_empty(),
        "a refused request changes nothing"
    );
}

#[tokio::test]
async fn fleet_summary_metrics_and_health() {
    let server = TestServer::start().await;
    fleet_of(&server, &["a", "b", "c"]).await;
    let fleet = server.fleet().await;
    assert_eq!(fleet.total, 3);
    assert_eq!(fleet.by_status.len(), 7);
    assert_eq!(fleet.by_status["connected"], 3);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("corral_agents{status=\"connected\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("corral_messages_in_total{transport=\"http\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("corral_messages_out_total{transport=\"http\"} 3"),
        "{metrics}"
    );
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_cli_lists_and_shows_agents() {
    let server = TestServer::start().await;
    let uids = fleet_of(&server, &["checkout", "billing"]).await;
    let api = format!("http://{}", server.api);
    let bin = env!("CARGO_BIN_EXE_corral");
    let run = |args: Vec<String>| {
        let api = api.clone();
        let key = server.key.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(bin)
                    .env("CORRAL_API_KEY", key)
                    .args(&args)
                    .arg("--server")
                    .arg(api)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let out = run(vec![
        "agents".into(),
        "list".into(),
        "--label".into(),
        "service.name=billing".into(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains(&uuid_str(&uids[1])), "{table}");
    assert!(!table.contains(&uuid_str(&uids[0])), "{table}");
    assert!(table.contains("1 of 1 agents"), "{table}");

    let out = run(vec!["agents".into(), "show".into(), uuid_str(&uids[0])]).await;
    assert!(out.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["identifying_attributes"]["service.name"], "checkout");
    assert_eq!(shown["history"][0]["to"], "connected");

    let out = run(vec![
        "agents".into(),
        "show".into(),
        "0191d0b5-0000-7000-8000-000000000000".into(),
    ])
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent"));
}

/// Regression: a JSON body over the API's limit was answered 400 as if it were malformed.
#[tokio::test]
async fn a_json_body_over_the_limit_is_413() {
    let server = TestServer::start().await;
    let body = format!(
        r#"{{"selector": "", "files": {{"c.yaml": {{"body": "{}", "content_type": "text/yaml"}}}}}}"#,
        "x".repeat(3 << 20)
    );
    let (status, body) = server.put("/api/v1/configurations/big", &body).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].is_string());
}

/// Regression: a client holding a half-sent request kept the process from stopping.
#[tokio::test]
async fn a_half_sent_request_does_not_hold_the_server_up() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    server.fleet().await;
    let mut stalled = tokio::net::TcpStream::connect(server.api).await.unwrap();
    // Headers begun and never finished, on both listeners.
    stalled
        .write_all(b"PUT /api/v1/configurations/x HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let mut half = tokio::net::TcpStream::connect(server.opamp).await.unwrap();
    half.write_all(b"POST /v1/opamp HTTP/1.1\r\nHost: a\r\nContent-Type: applic")
        .await
        .unwrap();
    // No condition to wait on: give the server a moment to take the bytes.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), server.stop()).await;
    assert!(
        stopped.is_ok(),
        "still running 10 s after it was told to stop"
    );
    drop((stalled, half));
}

/// Regression: any Host and Origin were accepted, so a web page could read the API through a
/// rebound name, and change things with a cross-site POST.
#[tokio::test]
async fn requests_by_a_foreign_name_or_from_another_origin_are_refused() {
    let server = TestServer::start().await;
    let client = server.client();
    let rebound = client
        .get(server.api_url("/api/v1/fleet"))
        .header("host", "attacker.example:4321")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 421);
    let cross_site = client
        .post(server.api_url("/api/v1/ignore-rules"))
        .header("origin", "http://attacker.example")
        .header("content-type", "text/plain")
        .body(r#"{"selector": "a=b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    let (_, rules) = server.get("/api/v1/ignore-rules").await;
    assert_eq!(rules["rules"], serde_json::json!([]), "nothing changed");
    let same_origin = client
        .post(server.api_url("/api/v1/ignore-rules"))
        .header("origin", format!("http://{}", server.api))
        .json(&serde_json::json!({"selector": "a=b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(same_origin.status(), 201);
    let localhost = client
        .get(format!(
            "http://localhost:{}/api/v1/fleet",
            server.api.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(localhost.status(), 200);
}
