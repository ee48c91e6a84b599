//! The client commands of the binary (`synchspeed offline`, `online`, `batch`, `status`,
//! `holds`, `ops`, `watch`) as processes against the real service: each exit code, the JSON
//! output, the token from the environment, a repeated call with one key, and the live
//! progress under a pseudo-terminal (`script`, from util-linux), its final screen read back.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::helpers::{TestApp, TestConfig};
use crate::support::eureka::{EurekaDouble, Mode};
use crate::support::gateway::{Behaviour, GatewayNode};

const TOKEN: &str = "client-token-0123456789";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The binary as a client of the service at `address`, with only the given variables of ours.
fn client(address: &str, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_synchspeed"));
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("SYNCHSPEED") {
            command.env_remove(key);
        }
    }
    command
        .env("SYNCHSPEED_URL", address)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A client run off the runtime (the service under test runs on it).
async fn run(app: &TestApp, args: &[&str]) -> Run {
    run_with(app, args, &[], None).await
}

async fn run_with(app: &TestApp, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let address = app.address.clone();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        client(&address, &args, &env, stdin.as_deref())
    })
    .await
    .unwrap()
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\n{}", run.stdout, run.stderr))
}

async fn service(nodes: Vec<String>) -> (EurekaDouble, TestApp) {
    let eureka = EurekaDouble::with_order_service().await;
    let app = TestApp::spawn(
        TestConfig::eureka(&[eureka.url()])
            .route("ORDER-SERVICE", &["GATEWAY-PUBLIC"])
            .nodes("GATEWAY-PUBLIC", nodes),
    )
    .await;
    (eureka, app)
}

#[tokio::test]
async fn offline_and_online_wait_for_every_node_and_say_so_in_lines_and_json() {
    let node = GatewayNode::start(Behaviour::Ack).await;
    let (eureka, app) = service(vec![node.address()]).await;

    let offline = run(
        &app,
        &["offline", "10.0.0.5", "--wait", "--reason", "drain"],
    )
    .await;
    assert_eq!(offline.code, 0, "{}{}", offline.stdout, offline.stderr);
    assert!(
        offline
            .stdout
            .contains(&format!("acked   {}", node.address())),
        "{}",
        offline.stdout
    );
    assert!(
        offline
            .stdout
            .contains("offline succeeded: 1 of 1 node acknowledged"),
        "{}",
        offline.stdout
    );
    assert_eq!(
        eureka
            .status("ORDER-SERVICE", "10.0.0.5:order-service:8080")
            .as_deref(),
        Some("OUT_OF_SERVICE")
    );

    let holds = run(&app, &["holds"]).await;
    assert!(
        holds
            .stdout
            .contains("ORDER-SERVICE 10.0.0.5:order-service:8080"),
        "{}",
        holds.stdout
    );
    let status = run(&app, &["status", "10.0.0.5", "--output", "json"]).await;
    assert_eq!(json(&status)["instances"][0]["held"], true);

    let online = run(&app, &["online", "10.0.0.5", "--wait", "--output", "json"]).await;
    assert_eq!(online.code, 0, "{}", online.stderr);
    let operation = json(&online);
    assert_eq!(operation["state"], "succeeded");
    // What the API has for it, field for field.
    let id = operation["id"].as_str().unwrap();
    assert_eq!(app.operation(id).await, operation);

    let ops = run(&app, &["ops", "--ip", "10.0.0.5", "--output", "json"]).await;
    let listed = json(&ops)["operations"].as_array().unwrap().len();
    assert_eq!(listed, 2);
    let holds = run(&app, &["holds"]).await;
    assert_eq!(holds.stdout.trim(), "nothing is held offline");
}

#[tokio::test]
async fn each_outcome_has_its_own_exit_code() {
    let failing = GatewayNode::start(Behaviour::Fail(500)).await;
    let gated = GatewayNode::start(Behaviour::Gated).await;
    let (eureka, app) = service(vec![failing.address()]).await;

    let partial = run(&app, &["offline", "10.0.0.5", "--wait"]).await;
    assert_eq!(partial.code, 2, "{}{}", partial.stdout, partial.stderr);
    assert!(partial.stdout.contains("failed  "), "{}", partial.stdout);

    let not_found = run(&app, &["offline", "10.9.9.9"]).await;
    assert_eq!(not_found.code, 5, "{}", not_found.stderr);
    assert!(
        not_found.stderr.contains("instance_not_found"),
        "{}",
        not_found.stderr
    );

    let bad_ip = run(&app, &["offline", "not-an-ip"]).await;
    assert_eq!(bad_ip.code, 64, "{}", bad_ip.stderr);
    let bad_usage = run(&app, &["offline"]).await;
    assert_eq!(bad_usage.code, 64);
    let bad_flag = run(&app, &["offline", "10.0.0.5", "--timeout", "soon"]).await;
    assert_eq!(bad_flag.code, 64);

    let nobody = run_with(
        &app,
        &["holds"],
        &[("SYNCHSPEED_URL", "http://127.0.0.1:1")],
        None,
    )
    .await;
    assert_eq!(nobody.code, 1);
    assert!(
        nobody.stderr.contains("cannot reach synchspeed"),
        "{}",
        nobody.stderr
    );

    eureka.set_mode(Mode::Unavailable);
    let registry_down = run(&app, &["online", "10.0.0.5", "--wait"]).await;
    assert_eq!(registry_down.code, 4, "{}", registry_down.stderr);
    eureka.set_mode(Mode::Normal);

    // Timed out: the gated node answers only after the client gave up.
    let (_eureka, slow) = service(vec![gated.address()]).await;
    let timed_out = run(
        &slow,
        &["offline", "10.0.0.5", "--wait", "--timeout", "300ms"],
    )
    .await;
    assert_eq!(
        timed_out.code, 3,
        "{}{}",
        timed_out.stdout, timed_out.stderr
    );
    assert!(
        timed_out.stderr.contains("timed out"),
        "{}",
        timed_out.stderr
    );
    let id = timed_out
        .stdout
        .split_whitespace()
        .find(|word| word.starts_with("op_"))
        .unwrap()
        .to_owned();
    gated.open_gate();
    let watched = run(&slow, &["watch", &id]).await;
    assert_eq!(watched.code, 0, "{}{}", watched.stdout, watched.stderr);
    assert!(watched.stdout.contains("succeeded"), "{}", watched.stdout);
}

#[tokio::test]
async fn the_token_comes_from_the_environment_and_a_wrong_one_is_not_allowed() {
    let node = GatewayNode::start(Behaviour::Ack).await;
    let eureka = EurekaDouble::with_order_service().await;
    let app = TestApp::spawn(
        TestConfig::eureka(&[eureka.url()])
            .route("ORDER-SERVICE", &["GATEWAY-PUBLIC"])
            .nodes("GATEWAY-PUBLIC", vec![node.address()])
            .security(&format!(
                "allow = [\"127.0.0.0/8\"]\ntokens = [{{ principal = \"deployer\", token = \"{TOKEN}\" }}]"
            )),
    )
    .await;
    let without = run(&app, &["holds"]).await;
    assert_eq!(without.code, 6, "{}", without.stderr);
    let wrong = run_with(
        &app,
        &["holds"],
        &[("SYNCHSPEED_TOKEN", "wrong-token-000000000")],
        None,
    )
    .await;
    assert_eq!(wrong.code, 6);
    let with = run_with(
        &app,
        &["offline", "10.0.0.5", "--wait", "--output", "json"],
        &[("SYNCHSPEED_TOKEN", TOKEN)],
        None,
    )
    .await;
    assert_eq!(with.code, 0, "{}", with.stderr);
    assert_eq!(json(&with)["caller"]["principal"], "deployer");
}

#[tokio::test]
async fn a_repeated_call_with_one_key_is_one_operation_and_a_batch_reads_a_file_or_stdin() {
    let node = GatewayNode::start(Behaviour::Ack).await;
    let (eureka, app) = service(vec![node.address()]).await;
    let once = [
        "offline",
        "10.0.0.5",
        "--key",
        "deploy-42",
        "--wait",
        "--output",
        "json",
    ];
    let first = run(&app, &once).await;
    let again = run(&app, &once).await;
    assert_eq!(
        (first.code, again.code),
        (0, 0),
        "{}{}",
        first.stderr,
        again.stderr
    );
    assert_eq!(json(&first)["id"], json(&again)["id"]);
    assert_eq!(node.received().len(), 1, "one key, one drain");
    assert_eq!(eureka.status_writes().len(), 1);

    let dry = run(&app, &["online", "10.0.0.5", "--dry-run"]).await;
    assert_eq!(dry.code, 0);
    assert!(dry.stdout.contains("online planned"), "{}", dry.stdout);

    let request = r#"{"action":"online","targets":[{"ip":"10.0.0.5"}],"reason":"rollback"}"#;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batch.json");
    std::fs::write(&file, request).unwrap();
    let from_file = run(
        &app,
        &[
            "batch",
            file.to_str().unwrap(),
            "--wait",
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(from_file.code, 0, "{}", from_file.stderr);
    assert_eq!(json(&from_file)["reason"], "rollback");
    let from_stdin = run_with(
        &app,
        &["batch", "-", "--dry-run", "--output", "json"],
        &[],
        Some(r#"{"action":"offline","targets":[{"ip":"10.0.0.5"}]}"#),
    )
    .await;
    assert_eq!(from_stdin.code, 0, "{}", from_stdin.stderr);
    assert_eq!(json(&from_stdin)["state"], "planned");
    let not_json = run_with(&app, &["batch", "-"], &[], Some("{oops")).await;
    assert_eq!(not_json.code, 64);
}

#[tokio::test]
async fn on_a_terminal_each_node_gets_a_live_line_and_the_final_screen_says_the_outcome() {
    let (a, b) = (
        GatewayNode::start(Behaviour::Ack).await,
        GatewayNode::start(Behaviour::Slow(300)).await,
    );
    let (_eureka, app) = service(vec![a.address(), b.address()]).await;
    let address = app.address.clone();
    let raw = tokio::task::spawn_blocking(move || {
        let binary = env!("CARGO_BIN_EXE_synchspeed");
        let output = Command::new("script")
            .args([
                "-qfec",
                &format!(
                    "stty cols 160 rows 40; {binary} offline 10.0.0.5 --wait --server {address}"
                ),
                "/dev/null",
            ])
            .env_remove("SYNCHSPEED_TOKEN")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        output.stdout
    })
    .await
    .unwrap();
    let mut screen = vt100::Parser::new(40, 160, 0);
    screen.process(&raw);
    let text = screen.screen().contents();
    assert!(text.contains("2/2 nodes acknowledged"), "{text}");
    for node in [&a, &b] {
        assert!(
            text.contains(&format!("acked   {}", node.address())),
            "{text}"
        );
    }
    assert!(
        text.contains("offline succeeded: 2 of 2 nodes acknowledged"),
        "{text}"
    );
    // Drawn live: the terminal was redrawn while the slow node was pending.
    assert!(String::from_utf8_lossy(&raw).contains("pending"), "{text}");
}

#[tokio::test]
async fn a_refusal_as_it_stands_and_a_busy_service_have_their_own_codes() {
    let gated = GatewayNode::start(Behaviour::Gated).await;
    let eureka = EurekaDouble::with_order_and_payment().await;
    let app = TestApp::spawn(
        TestConfig::eureka(&[eureka.url()])
            .route("ORDER-SERVICE", &["GATEWAY-PUBLIC"])
            .route("PAYMENT-SERVICE", &["GATEWAY-PUBLIC"])
            .nodes("GATEWAY-PUBLIC", vec![gated.address()])
            .drain("max_in_flight = 1")
            .tables("[drain.min_up]\n\"order-service\" = 1"),
    )
    .await;
    // The only UP instance of ORDER-SERVICE: drain.min_up refuses it.
    let refused = run(&app, &["offline", "10.0.0.5"]).await;
    assert_eq!(refused.code, 7, "{}", refused.stderr);
    assert!(refused.stderr.contains("min_up"), "{}", refused.stderr);

    // One operation in flight (its node is gated) takes the only slot: the next is 429.
    let first = run(&app, &["offline", "10.0.0.7"]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let busy = run(&app, &["online", "10.0.0.5"]).await;
    assert_eq!(busy.code, 8, "{}", busy.stderr);
    gated.open_gate();
}
