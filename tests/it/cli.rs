use std::process::Command;

fn serve(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
    cmd.arg("serve").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn invalid_settings_stop_the_server_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--heartbeat-interval", "0", "--data-dir", data],
            vec![],
            "heartbeat-interval",
        ),
        (
            vec!["--data-dir", data],
            vec![("CORRAL_MAX_MESSAGE_SIZE", "12")],
            "max-message-size",
        ),
        (
            vec!["--data-dir", data],
            vec![("CORRAL_OPAMP_LISTEN", "nowhere")],
            "opamp-listen",
        ),
        (
            vec!["--config", "/nonexistent/corral.toml"],
            vec![],
            "cannot read config file",
        ),
    ];
    for (args, env, expected) in cases {
        let out = serve(&args, &env);
        assert!(!out.status.success(), "{args:?} {env:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?} {env:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_config_file_with_an_unknown_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("corral.toml");
    std::fs::write(&file, "heartbeat_interval = 10\nlisten = \"0.0.0.0:1\"\n").unwrap();
    let out = serve(&["--config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field"), "{stderr}");
}

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// Runs `corral` with exactly these arguments (no `--server` added).
async fn corral(args: &[&str]) -> CliOutput {
    let mut command = Command::new(env!("CARGO_BIN_EXE_corral"));
    command.args(args).stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    CliOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A server with agents "b" and "a" (in that order of uid) that polled once over HTTP.
async fn two_agents() -> (TestServer, [[u8; 16]; 2]) {
    let server = TestServer::start().await;
    let uids = [new_uid(), new_uid()];
    for (uid, name) in uids.iter().zip(["b", "a"]) {
        server.poll(&full_report(uid, 0, name)).await;
    }
    server.wait_connected(2).await;
    (server, uids)
}

#[tokio::test]
async fn a_reader_that_goes_away_ends_every_command_quietly() {
    let (server, uids) = two_agents().await;
    let api = format!("http://{}", server.api);
    let uid = uuid_str(&uids[0]);
    let commands: [&[&str]; 7] = [
        &["agents", "list"],
        &["agents", "list", "-o", "yaml"],
        &["agents", "describe", &uid],
        &["fleet"],
        &["completions", "bash"],
        // Written with println! (a backstop catches it).
        &["config", "list"],
        &["rollout", "list"],
    ];
    for args in commands {
        let (args, api) = (args.to_vec(), api.clone());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (code, stderr) = tokio::task::spawn_blocking(move || {
            let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
                .args(&args)
                .env("CORRAL_SERVER", &api)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Closed before the command writes anything: its first write finds no reader.
            drop(child.stdout.take());
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            (child.wait().unwrap().code(), stderr)
        })
        .await
        .unwrap();
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_ne!(code, Some(101), "{stderr}");
    }
}

#[tokio::test]
async fn server_takes_host_port_and_says_what_it_reached() {
    let server = TestServer::start().await;
    // No scheme: http:// is assumed.
    let out = corral(&[
        "fleet",
        "--server",
        &server.api.to_string(),
        "--api-key",
        &server.key,
    ])
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("connected"), "{}", out.stdout);

    let opamp = server.opamp.to_string();
    let out = corral(&["agents", "list", "--server", &opamp]).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains(&format!(
            "http://{opamp} is Corral's OpAMP listener, not its admin API"
        )),
        "{}",
        out.stderr
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = corral(&["fleet", "--server", &nobody]).await;
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains(&format!("cannot reach the Corral API at http://{nobody}")),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[tokio::test]
async fn refused_values_name_the_flag_that_was_typed() {
    let server = TestServer::start().await;
    for (args, flag) in [
        (&["agents", "list", "--limit", "0"][..], "--limit"),
        (&["agents", "list", "--status", "happy"], "--status"),
        (
            &["agents", "list", "--admin-state", "bored"],
            "--admin-state",
        ),
        (&["agents", "list", "--selector", "env in"], "--selector"),
        (&["agents", "list", "--label", "novalue"], "--label"),
        (
            &["agents", "restart", "--selector", "env in", "--yes"],
            "--selector",
        ),
        (&["agents", "label", "x", "novalue"], "key=value"),
    ] {
        let out = server.cli(args).await;
        assert!(!out.ok, "{args:?}");
        assert!(out.stderr.contains(flag), "{args:?}: {}", out.stderr);
    }
    // What only the API knows is refused with its message.
    let out = server.cli(&["agents", "describe", "not-a-uid"]).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("invalid instance uid"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn fleet_counts_agents_by_status_and_admin_state() {
    let (server, _) = two_agents().await;
    let out = succeeded(server.cli(&["fleet"]).await);
    let connected = out.lines().find(|l| l.contains("connected")).unwrap();
    assert!(connected.contains(" 2 "), "{out}");
    assert!(out.contains("managed"), "{out}");
    assert!(out.contains("2 agents"), "{out}");
    let json: Value =
        serde_json::from_str(&succeeded(server.cli(&["fleet", "-o", "json"]).await)).unwrap();
    assert_eq!(json["by_status"]["connected"], 2);
    assert_eq!(json["by_admin_state"]["managed"], 2);
}

#[tokio::test]
async fn agents_list_filters_by_selector_sorts_and_prints_json_yaml_and_wide() {
    let (server, uids) = two_agents().await;
    let list = |args: &'static [&'static str]| {
        let server = &server;
        async move {
            let mut all = vec!["agents", "list"];
            all.extend_from_slice(args);
            succeeded(server.cli(&all).await)
        }
    };
    let json: Value = serde_json::from_str(&list(&["-o", "json"]).await).unwrap();
    assert_eq!(json["total"], 2);
    assert_eq!(json["agents"][0]["instance_uid"], uuid_str(&uids[0]));

    let json: Value = serde_json::from_str(&list(&["-o", "json", "--sort", "name"]).await).unwrap();
    let names: Vec<&str> = json["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a["identifying_attributes"]["service.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(names, ["a", "b"]);

    let json: Value =
        serde_json::from_str(&list(&["-o", "json", "--selector", "service.name=a"]).await).unwrap();
    assert_eq!(json["total"], 1);
    assert_eq!(json["agents"][0]["instance_uid"], uuid_str(&uids[1]));

    let yaml = list(&["-o", "yaml"]).await;
    assert!(
        yaml.contains(&format!("instance_uid: \"{}\"", uuid_str(&uids[0])))
            || yaml.contains(&format!("instance_uid: {}", uuid_str(&uids[0]))),
        "{yaml}"
    );
    assert!(yaml.contains("total: 2"), "{yaml}");

    let table = list(&[]).await;
    assert!(table.contains("2 of 2 agents"), "{table}");
    assert!(!table.contains("TRANSPORT"), "{table}");
    let wide = list(&["-o", "wide"]).await;
    assert!(
        wide.contains("TRANSPORT") && wide.contains("http"),
        "{wide}"
    );
    // Not a terminal: nothing is cut, however long.
    assert!(table.contains(&uuid_str(&uids[1])), "{table}");
}

#[tokio::test]
async fn agents_describe_is_readable_and_its_json_is_the_api_s() {
    let (server, uids) = two_agents().await;
    let uid = uuid_str(&uids[0]);
    let out = succeeded(server.cli(&["agents", "describe", &uid]).await);
    for field in [
        "Instance UID:",
        "Service:",
        "Status:",
        "Admin state:",
        "Labels:",
        "Health:",
        "Configuration:",
        "History (last",
    ] {
        assert!(out.contains(field), "{field}: {out}");
    }
    assert!(out.contains("managed"), "{out}");
    assert!(out.contains("healthy"), "{out}");
    let shown = succeeded(server.cli(&["agents", "show", &uid, "-o", "json"]).await);
    let json: Value = serde_json::from_str(&shown).unwrap();
    let (_, api) = server.get(&format!("/api/v1/agents/{uid}")).await;
    assert_eq!(json["instance_uid"], api["instance_uid"]);
    assert_eq!(json["history"], api["history"]);
}

#[tokio::test]
async fn agents_label_sets_and_removes_keeping_the_rest() {
    let (server, uids) = two_agents().await;
    let uid = uuid_str(&uids[0]);
    succeeded(
        server
            .cli(&["agents", "label", &uid, "env=prod", "team=core"])
            .await,
    );
    succeeded(server.cli(&["agents", "label", &uid, "tier=1"]).await);
    let out = succeeded(
        server
            .cli(&["agents", "label", &uid, "team-", "env=staging"])
            .await,
    );
    assert!(out.contains("env=staging, tier=1"), "{out}");
    let agent = server.agent(&uids[0]).await.unwrap();
    let labels: Vec<(&str, &str)> = agent
        .agent
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(labels, [("env", "staging"), ("tier", "1")]);
    // The API's own refusal comes through.
    let out = server.cli(&["agents", "label", &uid, "a b=c"]).await;
    assert!(!out.ok);
    assert!(out.stderr.contains("label key"), "{}", out.stderr);
}

#[tokio::test]
async fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = corral(&["completions", shell]).await;
        assert!(out.ok, "{shell}: {}", out.stderr);
        assert!(out.stdout.contains("corral"), "{shell}");
        assert!(out.stdout.contains("describe"), "{shell}");
    }
}

/// `corral serve` on port 0 with its stderr piped; returns once its API answers.
fn spawn_serve(
    dir: &std::path::Path,
) -> (std::process::Child, BufReader<std::process::ChildStderr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args([
            "serve",
            "--opamp-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let api = loop {
        line.clear();
        assert_ne!(stderr.read_line(&mut line).unwrap(), 0, "serve ended early");
        if line.contains("corral serving") {
            let api = line.split("api_addr=").nth(1).unwrap();
            break api.split_whitespace().next().unwrap().to_string();
        }
    };
    let mut http = std::net::TcpStream::connect(&api).unwrap();
    std::io::Write::write_all(
        &mut http,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    http.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    (child, stderr)
}

fn terminate(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the process to end, up to a deadline.
fn exited_within(child: &mut std::process::Child, deadline: Duration) -> bool {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn logs_into_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut stderr) = spawn_serve(dir.path());
    terminate(&child);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(exited_within(&mut child, Duration::from_secs(15)));
    assert!(rest.contains("corral stopped"), "{rest}");
    assert!(!rest.contains("\x1b["), "{rest:?}");
}

#[test]
fn the_server_stops_on_sigterm_after_its_stderr_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, stderr) = spawn_serve(dir.path());
    // Whoever read the logs is gone: the shutdown's log lines meet a closed pipe.
    drop(stderr);
    terminate(&child);
    let stopped = exited_within(&mut child, Duration::from_secs(15));
    if !stopped {
        let _ = child.kill();
    }
    assert!(stopped, "still running 15 s after SIGTERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
