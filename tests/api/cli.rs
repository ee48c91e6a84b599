//! The binary's command line: configuration layering (file, then SYNCHSPEED__* variables)
//! and exit code 64 for a configuration it refuses, naming the key.

use std::process::Command;

fn synchspeed(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_synchspeed"));
    command.args(args);
    // Variables from the environment of whoever runs the tests must not leak in.
    for (key, _) in std::env::vars() {
        if key.starts_with("SYNCHSPEED") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_embedded_default_is_valid() {
    assert_eq!(synchspeed(&["check-config"], &[]).0, 0);
}

#[test]
fn environment_variables_override_the_file_and_split_lists() {
    let (code, stderr) = synchspeed(
        &["check-config"],
        &[("SYNCHSPEED__SECURITY__ALLOW", "10.0.0.0/8,10.0.0.0/33")],
    );
    assert_eq!(code, 64);
    assert!(stderr.contains("security.allow[1]"), "{stderr}");

    let (code, stderr) = synchspeed(
        &["check-config"],
        &[("SYNCHSPEED__REGISTRY__KIND", "consul")],
    );
    assert_eq!(code, 64);
    assert!(stderr.contains("registry.kind"), "{stderr}");

    let (code, _) = synchspeed(
        &["check-config"],
        &[
            ("SYNCHSPEED__REGISTRY__KIND", "eureka"),
            (
                "SYNCHSPEED__REGISTRY__EUREKA__URLS",
                "http://a:8761/eureka,http://b:8761/eureka/v2",
            ),
        ],
    );
    assert_eq!(code, 0);
}

#[test]
fn serve_refuses_an_invalid_file_with_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[gateway]\nattempts = 0\n").unwrap();
    let (code, stderr) = synchspeed(&["serve", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 64);
    assert!(stderr.contains("gateway.attempts"), "{stderr}");
}

#[test]
fn json_logs_are_one_object_per_line_and_sigterm_stops_cleanly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let instances = concat!(env!("CARGO_MANIFEST_DIR"), "/config/instances.toml");
    let store = format!("sqlite://{}/s.db", dir.path().display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_synchspeed"))
        .arg("serve")
        .env("SYNCHSPEED__LOG__FORMAT", "json")
        .env("SYNCHSPEED__SERVER__LISTEN", "127.0.0.1:0")
        .env("SYNCHSPEED__STORE__URL", &store)
        .env("SYNCHSPEED__REGISTRY__FILE__PATH", instances)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut serving = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            event["level"].is_string() && event["timestamp"].is_string(),
            "{line}"
        );
        if event["message"] == "synchspeed serving" {
            serving = Some(event);
            break;
        }
    }
    let serving = serving.expect("the service logged that it serves");
    assert_eq!(serving["registry"], "file");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "SIGTERM is a clean stop: {exit:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("synchspeed stopped")),
        "{rest:?}"
    );
}

/// A configuration holding every kind of secret synchspeed takes.
const SECRETS: &str = r#"
[security]
tokens = [{ principal = "ci", token = "token-secret-0123456789" }]
[gateway]
secret = "hmac-secret-0123456789"
[registry]
kind = "eureka"
[registry.eureka]
urls = ["http://user:url-password-0123@127.0.0.1:9/eureka"]
refresh = "100ms"
timeout = "100ms"
"#;

fn assert_no_secret(text: &str) {
    for secret in [
        "token-secret-0123456789",
        "hmac-secret-0123456789",
        "url-password-0123",
    ] {
        assert!(!text.contains(secret), "{secret} shows in:\n{text}");
    }
}

#[test]
fn check_config_prints_what_the_layers_produce_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synchspeed.toml");
    std::fs::write(&path, SECRETS).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_synchspeed"))
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env("SYNCHSPEED__DRAIN__RECONCILE_EVERY", "7s")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_no_secret(&stdout);
    let effective: toml::Value = toml::from_str(&stdout).unwrap();
    assert_eq!(
        effective["registry"]["kind"].as_str(),
        Some("eureka"),
        "the file"
    );
    assert_eq!(
        effective["drain"]["reconcile_every"].as_str(),
        Some("7s"),
        "the environment over the file"
    );
    assert_eq!(
        effective["server"]["listen"].as_str(),
        Some("0.0.0.0:8080"),
        "the defaults under both"
    );
    assert_eq!(
        effective["registry"]["eureka"]["urls"][0].as_str(),
        Some("http://user:***@127.0.0.1:9/eureka")
    );
}

#[test]
fn human_logs_to_a_pipe_are_plain_text_and_hold_no_secret() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synchspeed.toml");
    std::fs::write(&path, SECRETS).unwrap();
    let store = format!("sqlite://{}/s.db", dir.path().display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_synchspeed"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("SYNCHSPEED__SERVER__LISTEN", "127.0.0.1:0")
        .env("SYNCHSPEED__STORE__URL", &store)
        .env("SYNCHSPEED__LOG__LEVEL", "info,synchspeed=debug")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Up to the serving line, and on until the unreachable peer was reported: the lines
    // most likely to print a peer's URL.
    // In either order: the first failed refresh may be logged before the serving line, and
    // a failing peer is logged once, when it starts failing.
    for line in lines.by_ref() {
        seen.push(line.unwrap());
        let has = |text: &str| seen.iter().any(|l: &String| l.contains(text));
        if (has("127.0.0.1:9") && has("synchspeed serving")) || seen.len() > 500 {
            break;
        }
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    seen.extend(lines.map_while(Result::ok));
    let text = seen.join("\n");
    assert!(text.contains("synchspeed serving"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes outside a terminal:\n{text}"
    );
    assert_no_secret(&text);
}
