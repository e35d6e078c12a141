//! API keys through real sockets: 401 without a working key and nothing done, 403 for a role
//! that may not, the admin key the server writes on first start, and the CLI finding it.

use std::time::Duration;

use chrono::Utc;
use corral::core::keys::{ApiKey, KeyHash, Role};
use corral::edge::api::auth::{ACCESS, Access};
use serde_json::{Value, json};

use crate::common::{Options, TestServer, WAIT, run};

/// Sends `method path` with `key` (none when `None`) and a JSON body for changes.
async fn call(server: &TestServer, key: Option<&str>, method: &str, path: &str) -> (u16, Value) {
    let method: reqwest::Method = method.parse().expect("method");
    let mut request = server
        .anonymous()
        .request(method.clone(), server.api_url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
        request = request.json(&json!({}));
    }
    let response = request.send().await.expect("api request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Creates a key through the API with the server's admin key; returns (id, key).
async fn create_key(server: &TestServer, role: &str, expires_at: Option<&str>) -> (String, String) {
    let (status, body) = server
        .post_json(
            "/api/v1/keys",
            &json!({"name": format!("{role} key"), "role": role, "expires_at": expires_at}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let key = body["key"].as_str().expect("key").to_string();
    assert!(key.starts_with("corral_"), "{key}");
    (body["id"].as_str().expect("id").to_string(), key)
}

/// A route template with its parameters filled in.
fn concrete(template: &str) -> String {
    template
        .replace("{uid}", "0190d6f2-0000-7000-8000-000000000001")
        .replace("{name}", "prod")
        .replace("{version}", "1")
        .replace("{action}", "pause")
        .replace("{id}", "nothing")
}

/// What the store holds that a refused change could have touched.
async fn state(server: &TestServer) -> Value {
    let mut keys = server.get("/api/v1/keys").await.1;
    // Using the admin key to look moves its own last use.
    for key in keys["keys"].as_array_mut().into_iter().flatten() {
        key["last_used_at"] = Value::Null;
    }
    json!({
        "configurations": server.get("/api/v1/configurations").await.1,
        "ignore_rules": server.get("/api/v1/ignore-rules").await.1,
        "expected": server.get("/api/v1/expected-agents").await.1,
        "keys": keys,
        "rollouts": server.get("/api/v1/rollouts").await.1,
    })
}

#[tokio::test]
async fn no_key_a_bad_one_a_revoked_one_or_an_expired_one_is_401_and_nothing_is_done() {
    let server = TestServer::start().await;
    let (revoked_id, revoked) = create_key(&server, "admin", None).await;
    let (status, _) = server.delete(&format!("/api/v1/keys/{revoked_id}")).await;
    assert_eq!(status, 204);
    // An expired key cannot be created through the API; write one beside the server.
    let expired = corral::core::keys::new_key(&[7; 32]);
    let past = Utc::now() - chrono::Duration::hours(1);
    let stored = ApiKey {
        id: "expired".into(),
        name: "expired".into(),
        role: Role::Admin,
        hash: KeyHash::of(&expired),
        created_at: past - chrono::Duration::hours(1),
        expires_at: Some(past),
        last_used_at: None,
    };
    corral::edge::store::SqliteStore::add_api_key(server.dir.path(), &stored)
        .await
        .expect("key written beside the server");
    // The server reads the store's keys again when it meets one it does not know.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = call(&server, Some(&expired), "GET", "/api/v1/fleet").await;
        assert_eq!(status, 401);
        if body["error"]
            .as_str()
            .is_some_and(|e| e.contains("expired"))
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = state(&server).await;
    let bad = corral::core::keys::new_key(&[1; 32]);
    let credentials: [(&str, Option<&str>); 5] = [
        ("no key", None),
        ("a bad key", Some(&bad)),
        ("not a key", Some("hunter2")),
        ("a revoked key", Some(&revoked)),
        ("an expired key", Some(&expired)),
    ];
    for (what, key) in credentials {
        for (method, path, access) in ACCESS {
            if matches!(access, Access::Open | Access::Metrics) {
                continue;
            }
            let (status, body) = call(&server, key, method, &concrete(path)).await;
            assert_eq!(status, 401, "{what}: {method} {path}: {body}");
            assert!(body["error"].is_string(), "{body}");
        }
        // A route nobody serves is no different.
        let (status, _) = call(&server, key, "GET", "/api/v1/nothing").await;
        assert_eq!(status, 401, "{what}");
        // The scheme is checked too: a key sent as Basic credentials is no key.
        if let Some(key) = key {
            let response = server
                .anonymous()
                .get(server.api_url("/api/v1/fleet"))
                .header("authorization", format!("Basic {key}"))
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 401);
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
    }
    assert_eq!(
        state(&server).await,
        before,
        "a refused request changed something"
    );
    // What stays open.
    for path in ["/healthz", "/metrics", "/api/v1/openapi.json"] {
        let (status, _) = call(&server, None, "GET", path).await;
        assert_eq!(status, 200, "{path}");
    }
}

#[tokio::test]
async fn each_role_may_do_what_its_routes_allow_and_gets_403_for_the_rest() {
    let server = TestServer::start().await;
    let (_, viewer) = create_key(&server, "viewer", None).await;
    let (_, operator) = create_key(&server, "operator", None).await;
    let before = state(&server).await;
    for (role, key) in [(Role::Viewer, &viewer), (Role::Operator, &operator)] {
        for (method, path, access) in ACCESS {
            let (status, body) = call(&server, Some(key), method, &concrete(path)).await;
            match access {
                Access::Needs(needed) if !role.allows(*needed) => {
                    assert_eq!(status, 403, "{role:?}: {method} {path}: {body}");
                    let error = body["error"].as_str().unwrap_or_default();
                    assert!(error.contains(needed.as_str()), "{error}");
                }
                _ => assert!(
                    status != 401 && status != 403,
                    "{role:?} may {method} {path}: {status} {body}"
                ),
            }
        }
    }
    // The operator's allowed calls above were all refused by their handlers (empty bodies,
    // names that do not exist), and the viewer's 403s did nothing.
    assert_eq!(state(&server).await, before);
    // An operator changes the fleet; a viewer cannot.
    let rule = json!({"selector": "env=test"});
    let post = |key: &str| {
        server
            .anonymous()
            .post(server.api_url("/api/v1/ignore-rules"))
            .bearer_auth(key.to_string())
            .json(&rule)
            .send()
    };
    assert_eq!(post(&viewer).await.expect("request").status(), 403);
    assert_eq!(post(&operator).await.expect("request").status(), 201);
    let rules = server.get("/api/v1/ignore-rules").await.1;
    assert_eq!(rules["rules"].as_array().map(Vec::len), Some(1), "{rules}");
}

#[tokio::test]
async fn first_start_writes_an_admin_key_once_and_keys_are_kept_hashed() {
    let server = TestServer::start().await;
    let file = server.dir.path().join("admin.key");
    let written = std::fs::read_to_string(&file).expect("admin.key");
    assert_eq!(written.trim(), server.key);
    assert!(written.starts_with("corral_") && written.ends_with('\n'));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let keys = server.get("/api/v1/keys").await.1;
    let listed = keys["keys"].as_array().expect("keys");
    assert_eq!(listed.len(), 1, "{keys}");
    assert_eq!(listed[0]["role"], "admin");
    assert!(listed[0].get("key").is_none(), "a list never shows a key");
    let admin_id = listed[0]["id"].as_str().expect("id").to_string();
    // A key does not revoke itself: nobody is locked out by a slip.
    let (status, body) = server.delete(&format!("/api/v1/keys/{admin_id}")).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("this request")),
        "{body}"
    );
    let (_, viewer) = create_key(&server, "viewer", Some("2999-01-01T00:00:00Z")).await;
    let (status, _) = call(&server, Some(&viewer), "GET", "/api/v1/fleet").await;
    assert_eq!(status, 200);

    let (opamp, api) = (server.opamp, server.api);
    let dir = server.stop().await;
    // Only hashes are stored.
    let db = std::fs::read(dir.path().join("corral.db")).expect("db");
    let wal = std::fs::read(dir.path().join("corral.db-wal")).unwrap_or_default();
    for secret in [&written.trim().to_string(), &viewer] {
        for bytes in [&db, &wal] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a key is stored as it is"
            );
        }
    }

    // A restart keeps the keys and writes no new one; when the viewer key was last used is
    // kept too.
    let server = TestServer::restart_at(dir, Options::default(), opamp, api).await;
    assert_eq!(server.key, written.trim());
    let keys = server.get("/api/v1/keys").await.1;
    let listed = keys["keys"].as_array().expect("keys");
    assert_eq!(listed.len(), 2, "{keys}");
    assert_eq!(listed[1]["role"], "viewer");
    assert_eq!(listed[1]["expires_at"], "2999-01-01T00:00:00.000Z");
    assert!(listed[1]["last_used_at"].is_string(), "{keys}");
}

#[tokio::test]
async fn the_cli_finds_the_key_in_the_default_data_directory_or_takes_one() {
    let server = TestServer::start().await;
    let corral = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_corral"));
        command
            .env_remove("CORRAL_API_KEY")
            .env_remove("CORRAL_DATA_DIR");
        command
    };
    // `corral serve` then `corral agents list` in the same directory: ./corral-data/admin.key.
    let cwd = tempfile::tempdir().expect("tempdir");
    #[cfg(unix)]
    std::os::unix::fs::symlink(server.dir.path(), cwd.path().join("corral-data")).expect("link");
    let mut here = corral();
    here.current_dir(cwd.path());
    let out = server.run_cli(here, &["agents", "list"]).await;
    assert!(out.ok, "{}", out.stderr);
    let mut here = corral();
    here.current_dir(cwd.path());
    let out = server.run_cli(here, &["keys", "list", "-o", "json"]).await;
    assert!(out.ok && out.stdout.contains("\"admin\""), "{}", out.stderr);

    // Elsewhere, without a key: a 401 that says where a key comes from.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let mut there = corral();
    there.current_dir(elsewhere.path());
    let out = server.run_cli(there, &["fleet"]).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("401") && out.stderr.contains("--api-key"),
        "{}",
        out.stderr
    );

    // CORRAL_DATA_DIR, CORRAL_API_KEY and --api-key.
    let mut there = corral();
    there
        .current_dir(elsewhere.path())
        .env("CORRAL_DATA_DIR", server.dir.path());
    assert!(server.run_cli(there, &["fleet"]).await.ok);
    let out = server
        .cli(&["keys", "create", "--name", "ci", "--role", "viewer"])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let viewer = out.stdout.trim().to_string();
    assert!(
        viewer.starts_with("corral_") && !viewer.contains('\n'),
        "{}",
        out.stdout
    );
    let mut there = corral();
    there
        .current_dir(elsewhere.path())
        .env("CORRAL_API_KEY", &viewer);
    assert!(server.run_cli(there, &["fleet"]).await.ok);
    let mut there = corral();
    there.current_dir(elsewhere.path());
    let out = server
        .run_cli(there, &["--api-key", &viewer, "keys", "list"])
        .await;
    assert!(!out.ok && out.stderr.contains("403"), "{}", out.stderr);

    // Revoked through the CLI: from then on it lets nobody in.
    let keys = server.get("/api/v1/keys").await.1;
    let id = keys["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["name"] == "ci")
        .and_then(|k| k["id"].as_str())
        .expect("the ci key")
        .to_string();
    let out = server.cli(&["keys", "revoke", &id]).await;
    assert!(out.ok, "{}", out.stderr);
    let (status, _) = call(&server, Some(&viewer), "GET", "/api/v1/fleet").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn admin_create_key_works_offline_and_beside_a_running_server() {
    let server = TestServer::start().await;
    let dir = server.dir.path().to_str().expect("path").to_string();
    let create = |role: &str, name: &str| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_corral"));
        command
            .env_remove("CORRAL_API_KEY")
            .args(["admin", "create-key", "--role", role, "--name", name])
            .args(["--data-dir", &dir])
            .stdin(std::process::Stdio::null());
        run(command)
    };
    // Beside the running server: it takes the key at its first use.
    let out = create("operator", "alice").await;
    assert!(out.ok, "{}", out.stderr);
    let alice = out.stdout.trim().to_string();
    assert_eq!(out.stdout, format!("{alice}\n"), "the key alone on stdout");
    assert!(alice.starts_with("corral_"));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) = call(&server, Some(&alice), "GET", "/api/v1/fleet").await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never let in: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = call(&server, Some(&alice), "GET", "/api/v1/keys").await;
    assert_eq!(status, 403, "an operator");

    // With the server stopped, then started again.
    let (opamp, api) = (server.opamp, server.api);
    let data = server.stop().await;
    let out = create("admin", "bob").await;
    assert!(out.ok, "{}", out.stderr);
    let bob = out.stdout.trim().to_string();
    let out = create("root", "eve").await;
    assert!(!out.ok && out.stderr.contains("role"), "{}", out.stderr);
    let server = TestServer::restart_at(data, Options::default(), opamp, api).await;
    let (status, body) = call(&server, Some(&bob), "GET", "/api/v1/keys").await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(names, ["admin", "alice", "bob"]);
}

#[tokio::test]
async fn metrics_need_a_key_when_the_server_is_told_so() {
    let open = TestServer::start().await;
    let (status, _) = call(&open, None, "GET", "/metrics").await;
    assert_eq!(status, 200);
    let server = TestServer::with(Options {
        metrics_need_key: Some(true),
        ..Options::default()
    })
    .await;
    let (status, _) = call(&server, None, "GET", "/metrics").await;
    assert_eq!(status, 401);
    let (_, viewer) = create_key(&server, "viewer", None).await;
    let response = server
        .anonymous()
        .get(server.api_url("/metrics"))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    for path in ["/healthz", "/api/v1/openapi.json"] {
        let (status, _) = call(&server, None, "GET", path).await;
        assert_eq!(status, 200, "{path}");
    }
}
