//! The admin API's answers to requests no route takes, and its own metrics.

use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn a_method_or_path_no_route_takes_gets_a_json_error() {
    let server = TestServer::start().await;
    let http = server.client();
    let response = http
        .delete(server.api_url("/api/v1/fleet"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET,HEAD");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "/api/v1/fleet takes GET, not DELETE");

    let response = http
        .patch(server.api_url("/api/v1/agents/0191d0b5-0000-7000-8000-000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"],
        "/api/v1/agents/{uid} takes GET, DELETE, not PATCH"
    );

    let response = http
        .get(server.api_url("/api/v1/nothing/here"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "no such endpoint");
}

#[tokio::test]
async fn a_configuration_name_with_a_slash_is_a_clear_400() {
    let server = TestServer::start().await;
    let body = json!({"selector": "", "files": {}}).to_string();
    for path in [
        "/api/v1/configurations/a/b",
        "/api/v1/configurations/a%2Fb",
        "/api/v1/configurations/team/prod/",
    ] {
        let (status, reply) = server.put(path, &body).await;
        assert_eq!(status, 400, "{path}: {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains("configuration name"), "{path}: {error}");
    }
    // A missing version number is just no such endpoint.
    let (status, _) = server.get("/api/v1/configurations/a/versions").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_show_the_build_and_rollouts() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 0, "otelcol")).await;
    server.wait_connected(1).await;
    let (status, _) = server
        .get(&format!("/api/v1/agents/{}", uuid_str(&uid)))
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .get("/api/v1/agents/0191d0b5-0000-7000-8000-000000000000")
        .await;
    assert_eq!(status, 404);
    server.get("/api/v1/nowhere").await;

    let files =
        json!({"collector.yaml": {"body": "receivers:\n  otlp:\n", "content_type": "text/yaml"}});
    let (status, reply) = server
        .put(
            "/api/v1/configurations/prod",
            &json!({"selector": "", "files": files}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    // The agent never confirms: the rollout stays in its first wave.
    let id = server
        .start_rollout(json!({"configuration": "prod", "wave_timeout_seconds": 3600}))
        .await;
    server.wait_rollout(&id, "started").await;

    let metrics = server.metrics().await;
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    let by_uid = "corral_api_requests_total{route=\"/api/v1/agents/{uid}\",method=\"GET\"";
    assert!(value(&format!("{by_uid},status=\"200\"}}")) >= 1.0);
    assert!(value(&format!("{by_uid},status=\"404\"}}")) >= 1.0);
    assert!(
        value("corral_api_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}")
            >= 1.0
    );
    assert!(!metrics.contains("0191d0b5"), "a raw path became a label");
    assert!(
        !metrics.contains("/api/v1/nowhere"),
        "a raw path became a label"
    );
    assert!(
        value(
            "corral_api_request_duration_seconds_count{route=\"/api/v1/agents/{uid}\",method=\"GET\"}"
        ) >= 2.0
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(&format!("corral_build_info{{version=\"{version}\"}}")),
        1.0
    );
    assert_eq!(value("corral_rollouts{state=\"started\"}"), 1.0);
    assert_eq!(value("corral_rollouts{state=\"stable\"}"), 0.0);
    assert_eq!(
        value(&format!("corral_rollout_wave{{rollout=\"{id}\"}}")),
        1.0
    );
    assert_eq!(
        value(&format!("corral_rollout_errors{{rollout=\"{id}\"}}")),
        0.0
    );
    assert!(metrics.ends_with("# EOF\n"));
    drop(agent);
}
