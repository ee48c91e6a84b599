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
