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
