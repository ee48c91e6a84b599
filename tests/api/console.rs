//! The web console in a real browser: headless Chromium (Debian's `chromium`) driven by
//! playwright-core (npm, in `.tools/node`), both installed by `scripts/test`. The browser
//! side is `tests/console/console.mjs`; this side starts the service and checks what the
//! registry ended with. Screenshots are kept in `target/console-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{TestApp, TestConfig};
use crate::support::eureka::EurekaDouble;
use crate::support::gateway::{Behaviour, GatewayNode};

const TOKEN: &str = "console-token-0123456789";
const CHROMIUM: &str = "/usr/bin/chromium";

/// playwright-core's folder, or `None` when the tools are missing (then the test says so,
/// and fails under CI).
fn playwright() -> Option<PathBuf> {
    let folder =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/node/node_modules/playwright-core");
    if folder.exists() && Path::new(CHROMIUM).exists() {
        return Some(folder);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "chromium or playwright-core is missing: scripts/test installs them"
    );
    eprintln!("skipped: no chromium or .tools/node (scripts/test installs them)");
    None
}

#[tokio::test]
async fn an_operator_sees_holds_and_fan_outs_live_and_brings_an_instance_online() {
    let Some(playwright) = playwright() else {
        return;
    };
    let eureka = EurekaDouble::with_order_and_payment().await;
    let quick = GatewayNode::start(Behaviour::Ack).await;
    // Slow enough for the page to show it pending, within the node timeout set below.
    let slow = GatewayNode::start(Behaviour::Slow(2500)).await;
    let app = TestApp::spawn(
        TestConfig::eureka(&[eureka.url()])
            .route("ORDER-SERVICE", &["GATEWAY-PUBLIC"])
            .route("PAYMENT-SERVICE", &["GATEWAY-SLOW"])
            .nodes("GATEWAY-PUBLIC", vec![quick.address()])
            .nodes("GATEWAY-SLOW", vec![slow.address()])
            .gateway("timeout = \"5s\"\nattempts = 1")
            .security(&format!(
                "allow = [\"127.0.0.0/8\"]\ntokens = [{{ principal = \"deployer\", token = \"{TOKEN}\" }}]"
            )),
    )
    .await;
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.mjs");
    let base = app.address.clone();
    let shots = screenshots.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .env("BASE", base)
            .env("TOKEN", TOKEN)
            .env("SCREENSHOTS", shots)
            .env("PLAYWRIGHT", playwright)
            .env("CHROMIUM", CHROMIUM)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // What the page did, as the registry and the audit trail have it.
    assert_eq!(
        eureka
            .status("ORDER-SERVICE", "10.0.0.5:order-service:8080")
            .as_deref(),
        Some("UP")
    );
    let client = reqwest::Client::new();
    let list: serde_json::Value = client
        .get(app.url("/api/v1/operations?ip=10.0.0.5"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operations = list["operations"].as_array().unwrap();
    // The offline through the API, the online from the page; the cross-site POST nothing.
    assert_eq!(operations.len(), 2, "{list}");
    assert_eq!(operations[0]["action"], "online");
    assert_eq!(operations[0]["reason"], "back from the console");
    assert_eq!(operations[0]["caller"]["principal"], "deployer");
    for shot in [
        "1-held",
        "2-fan-out-running",
        "3-fan-out-done",
        "4-confirm",
        "5-phone",
    ] {
        assert!(screenshots.join(format!("{shot}.png")).exists(), "{shot}");
    }
}
