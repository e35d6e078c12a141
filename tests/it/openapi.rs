//! The API's OpenAPI document: served without a key, OpenAPI 3.1, and every operation in it is
//! one the server routes. (The router is built from the documented handlers alone, so no route
//! can be missing from it; `src/edge/api/mod.rs` checks that no route is added another way.)

use serde_json::Value;

use crate::common::*;

/// A value for a path parameter that the route takes (the handler may still refuse it).
fn fill(path: &str) -> String {
    path.replace("{uid}", "0191d0b5-0000-7000-8000-000000000000")
        .replace("{version}", "1")
        .replace("{action}", "pause")
        .replace("{id}", "x")
        .replace("{name}", "x")
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_every_operation_in_it_is_served() {
    let server = TestServer::start().await;
    let http = server.client();
    let response = server
        .anonymous()
        .get(server.api_url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let doc: Value = response.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc,
        serde_json::to_value(corral::edge::api::openapi()).unwrap(),
        "what is served is what the code builds"
    );

    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.contains_key("421"),
                "{method} {path}: the guard's 421"
            );
            assert!(
                responses
                    .keys()
                    .any(|s| s.starts_with('2') || s.starts_with('3')),
                "{method} {path}: a success"
            );
            // `/metrics` is open unless the server is told otherwise: both are documented.
            let open = ["/healthz", "/api/v1/openapi.json"].contains(&path.as_str());
            assert_eq!(
                responses.contains_key("401") && responses.contains_key("403"),
                !open,
                "{method} {path}: 401 and 403 where a key is needed"
            );
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut request = http.request(method.clone(), server.api_url(&fill(path)));
            if operation.get("requestBody").is_some() {
                // Routing is all that is checked: an empty body is refused by the handler.
                request = request.header("content-type", "application/json");
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_ne!(status, 405, "{method} {path} is not routed");
            assert!(
                !(status == 404 && body["error"] == "no such endpoint"),
                "{method} {path} is not routed"
            );
        }
    }
    // Every route of README's table, and the document itself.
    assert_eq!(operations, 40, "operations documented");
}

#[tokio::test]
async fn every_status_an_operation_answers_is_documented_with_its_body() {
    let server = TestServer::start().await;
    let (_, doc) = server.get("/api/v1/openapi.json").await;
    let responses = |method: &str, path: &str| -> Vec<String> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} is documented"))
            .keys()
            .cloned()
            .collect()
    };
    // A few answers of each kind, checked against what the document lists for them.
    let uid = "0191d0b5-0000-7000-8000-000000000000";
    let (status, _) = server.get(&format!("/api/v1/agents/{uid}")).await;
    assert!(responses("get", "/api/v1/agents/{uid}").contains(&status.to_string()));
    let (status, _) = server.get("/api/v1/agents/%FF").await;
    assert!(responses("get", "/api/v1/agents/{uid}").contains(&status.to_string()));
    let (status, body) = server
        .post_json("/api/v1/agents", &serde_json::json!({"instance_uid": uid}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(responses("post", "/api/v1/agents").contains(&"201".to_string()));
    let (status, body) = server
        .post_json(
            &format!("/api/v1/agents/{uid}/admin-state"),
            &serde_json::json!({"state": "maintenance"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["allowed"].is_array(), "{body}");
    assert!(responses("post", "/api/v1/agents/{uid}/admin-state").contains(&"409".to_string()));
    // The shared answers are documented once, and referenced.
    assert_eq!(
        doc["paths"]["/api/v1/agents"]["post"]["responses"]["413"]["$ref"],
        "#/components/responses/TooLarge"
    );
    assert_eq!(
        doc["paths"]["/api/v1/agents"]["post"]["responses"]["403"]["$ref"],
        "#/components/responses/ForbiddenChange",
        "the role's 403 and the guard's, in one"
    );
    assert_eq!(
        doc["paths"]["/api/v1/agents"]["post"]["responses"]["401"]["$ref"],
        "#/components/responses/Unauthorized"
    );
    assert!(doc["components"]["responses"]["Misdirected"].is_object());
}
