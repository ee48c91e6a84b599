//! The API against its own OpenAPI document: the document is valid (openapi-spec-validator),
//! and schemathesis, generating valid and invalid requests for every operation and checking
//! every answer (status, headers, body, schema), finds nothing, with tokens and without.
//! Both run from the project's `.tools/venv`, which `scripts/test` installs.

use std::path::PathBuf;
use std::process::Command;

use crate::helpers::{TestApp, TestConfig};
use crate::support::eureka::EurekaDouble;
use crate::support::gateway::{Behaviour, GatewayNode};

const TOKEN: &str = "contract-token-0123456789";

/// The tools' virtualenv, or `None` (then the test says so, and fails under CI).
fn tools() -> Option<PathBuf> {
    let venv = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/venv/bin"));
    if venv.join("st").exists() {
        return Some(venv);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "schemathesis is missing from .tools/venv: scripts/test installs it"
    );
    eprintln!("skipped: no .tools/venv (scripts/test installs schemathesis there)");
    None
}

/// Runs a tool to its end, off the runtime; its whole output when it fails.
async fn run(program: PathBuf, args: Vec<String>) {
    let (status, output) = tokio::task::spawn_blocking(move || {
        let output = Command::new(&program).args(&args).output().unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status, text)
    })
    .await
    .unwrap();
    assert!(status.success(), "{output}");
}

async fn check_the_contract(security: &str, token: Option<&str>) {
    let Some(tools) = tools() else {
        return;
    };
    let eureka = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(
        TestConfig::eureka(&[eureka.url()])
            .security(security)
            .route("ORDER-SERVICE", &["GATEWAY-PUBLIC"])
            .nodes("GATEWAY-PUBLIC", vec![node.address()]),
    )
    .await;
    let document = app.get("/api/v1/openapi.json").await.text().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, document).unwrap();
    run(
        tools.join("openapi-spec-validator"),
        vec![path.display().to_string()],
    )
    .await;

    let mut args = vec![
        "--config-file".to_owned(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml").to_owned(),
        "run".to_owned(),
        app.url("/api/v1/openapi.json"),
        "--checks".to_owned(),
        "all".to_owned(),
        // Bounded for CI's time, and the same cases every run: a failure is reproducible.
        "--max-examples".to_owned(),
        "25".to_owned(),
        "--seed".to_owned(),
        "20261201".to_owned(),
        "--no-color".to_owned(),
        // The stream of everything never ends by design (an operation's stream does, and is
        // checked): schemathesis would wait on it for good.
        "--exclude-path".to_owned(),
        "/api/v1/events".to_owned(),
    ];
    if let Some(token) = token {
        args.push("-H".to_owned());
        args.push(format!("Authorization: Bearer {token}"));
    }
    run(tools.join("st"), args).await;
}

#[tokio::test]
async fn schemathesis_finds_nothing_without_tokens() {
    check_the_contract("allow = [\"127.0.0.0/8\"]", None).await;
}

#[tokio::test]
async fn schemathesis_finds_nothing_with_tokens() {
    check_the_contract(
        &format!("allow = [\"127.0.0.0/8\"]\ntokens = [{{ principal = \"contract\", token = \"{TOKEN}\" }}]"),
        Some(TOKEN),
    )
    .await;
}
