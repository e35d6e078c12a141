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
