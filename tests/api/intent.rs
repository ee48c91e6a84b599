//! Keeping the word: the reconciler against several Eureka peers, holds that end, nodes that
//! come back, idempotency keys, per-instance ordering and a slow registry.

use serde_json::{Value, json};

use crate::helpers::{TestApp, TestConfig, error_code, eventually};
use crate::support::eureka::{EurekaDouble, Mode};
use crate::support::gateway::{Behaviour, GatewayNode};

const ORDER_ID: &str = "10.0.0.5:order-service:8080";

/// A reconciler that runs often, so the tests do not wait for the 30 s default.
fn config(peers: &[&EurekaDouble], node: &GatewayNode) -> TestConfig {
    let urls: Vec<String> = peers.iter().map(|peer| peer.url()).collect();
    TestConfig::eureka(&urls)
        .route("ORDER-SERVICE", &["EDGE"])
        .nodes("EDGE", vec![node.address()])
        .drain("reconcile_every = \"100ms\"\nretry_max = \"400ms\"")
}

async fn two_peers() -> (EurekaDouble, EurekaDouble) {
    (
        EurekaDouble::with_order_service().await,
        EurekaDouble::with_order_service().await,
    )
}

fn status(peer: &EurekaDouble) -> String {
    peer.status("ORDER-SERVICE", ORDER_ID).unwrap_or_default()
}

async fn operations(app: &TestApp, query: &str) -> Vec<Value> {
    let list: Value = app.get_json(&format!("/api/v1/operations?{query}")).await;
    list["operations"].as_array().unwrap().clone()
}

async fn held(app: &TestApp) -> usize {
    let list: Value = app.get_json("/api/v1/offline").await;
    list["instances"].as_array().unwrap().len()
}

/// The reconciler's pass counter, from `/metrics`.
async fn reconcile_runs(app: &TestApp) -> u64 {
    app.counter("synchspeed_reconcile_runs_total").await
}

/// Waits for two full passes of the reconciler that started after this call.
async fn two_passes(app: &TestApp) {
    let start = reconcile_runs(app).await;
    eventually("the reconciler ran twice more", || async {
        reconcile_runs(app).await >= start + 2
    })
    .await;
}

async fn take_out(app: &TestApp) -> Value {
    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn an_eureka_fast_restart_with_the_same_id_is_re_asserted_on_every_peer() {
    let (a, b) = two_peers().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(config(&[&a, &b], &node)).await;
    take_out(&app).await;
    assert_eq!(
        (status(&a), status(&b)),
        ("OUT_OF_SERVICE".into(), "OUT_OF_SERVICE".into())
    );

    // The process stops gracefully (its cancel removes the override everywhere) and is back
    // with the same id before synchspeed looks again.
    for peer in [&a, &b] {
        peer.cancel("ORDER-SERVICE", ORDER_ID);
        peer.register("ORDER-SERVICE", ORDER_ID, "10.0.0.5", 8080, "UP");
    }
    assert_eq!(status(&a), "UP");

    eventually("both peers show it out of service again", || async {
        status(&a) == "OUT_OF_SERVICE" && status(&b) == "OUT_OF_SERVICE"
    })
    .await;
    eventually("the gateway is told again", || async {
        node.operations_heard() >= 2
    })
    .await;
    let reassertion = operations(&app, "ip=10.0.0.5")
        .await
        .into_iter()
        .find(|op| op["caller"]["principal"] == "synchspeed-reconciler")
        .expect("the re-assertion is an audited operation");
    assert!(
        reassertion["reason"]
            .as_str()
            .unwrap()
            .starts_with("re-asserted"),
        "{reassertion}"
    );
    assert_eq!(
        reassertion["instances"][0]["peers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(held(&app).await, 1);
}

#[tokio::test]
async fn a_peer_that_missed_the_offline_catches_up_when_it_is_back() {
    let (a, b) = two_peers().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(config(&[&a, &b], &node)).await;
    b.set_mode(Mode::Unavailable);
    let operation = take_out(&app).await;
    assert_eq!(operation["state"], "succeeded");
    let peers = operation["instances"][0]["peers"].as_array().unwrap();
    assert!(
        peers.iter().any(|p| p["outcome"] != "accepted"),
        "the down peer is on the record: {operation}"
    );
    assert_eq!(status(&b), "UP", "b missed the write");

    b.set_mode(Mode::Normal);
    eventually("b catches up", || async { status(&b) == "OUT_OF_SERVICE" }).await;
    assert_eq!(status(&a), "OUT_OF_SERVICE");
    eventually("the gateway is told again", || async {
        node.operations_heard() >= 2
    })
    .await;
}

#[tokio::test]
async fn a_departed_instance_leaves_the_offline_list_and_a_newcomer_on_its_ip_stays_up() {
    let (a, b) = two_peers().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(config(&[&a, &b], &node)).await;
    take_out(&app).await;
    assert_eq!(held(&app).await, 1);

    // The scale-down finished: the instance deregistered from every peer.
    for peer in [&a, &b] {
        peer.cancel("ORDER-SERVICE", ORDER_ID);
    }
    eventually("the hold ends", || async { held(&app).await == 0 }).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("synchspeed_holds_ended_total{why=\"departed\"} 1"),
        "{metrics}"
    );

    // A new instance on the same IP is not held.
    let newcomer = "10.0.0.5:order-service:9090";
    for peer in [&a, &b] {
        peer.register("ORDER-SERVICE", newcomer, "10.0.0.5", 9090, "UP");
    }
    eventually("synchspeed sees the newcomer", || async {
        let view: Value = app.get_json("/api/v1/instances/10.0.0.5").await;
        view["instances"].as_array().is_some_and(|i| i.len() == 1)
    })
    .await;
    two_passes(&app).await;
    for peer in [&a, &b] {
        assert_eq!(
            peer.status("ORDER-SERVICE", newcomer).as_deref(),
            Some("UP")
        );
    }
    assert_eq!(
        node.received().len(),
        1,
        "no gateway was told about the newcomer"
    );
}

#[tokio::test]
async fn a_hold_ends_after_hold_max_and_the_registry_is_left_alone() {
    let a = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(
        config(&[&a], &node)
            .drain("reconcile_every = \"100ms\"\nretry_max = \"400ms\"\nhold_max = \"300ms\""),
    )
    .await;
    take_out(&app).await;
    eventually("the hold expires", || async { held(&app).await == 0 }).await;
    assert_eq!(status(&a), "OUT_OF_SERVICE");
    // No longer held: an UP written back is not corrected any more.
    a.cancel("ORDER-SERVICE", ORDER_ID);
    a.register("ORDER-SERVICE", ORDER_ID, "10.0.0.5", 8080, "UP");
    two_passes(&app).await;
    assert_eq!(status(&a), "UP");
    assert_eq!(node.received().len(), 1);
}

#[tokio::test]
async fn a_node_down_for_a_while_is_told_once_it_is_back_and_the_operation_updates() {
    let a = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Fail(503)).await;
    let app = TestApp::spawn(config(&[&a], &node)).await;
    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 502);
    let operation: Value = response.json().await.unwrap();
    let id = operation["id"].as_str().unwrap().to_owned();
    assert_eq!(operation["state"], "partial");
    let tried = node.attempts();

    eventually("the reconciler keeps trying", || async {
        node.attempts() > tried
    })
    .await;
    node.set_behaviour(Behaviour::Ack);
    eventually("the node acknowledges", || async {
        app.operation(&id).await["gateways"][0]["state"] == "acked"
    })
    .await;
    let operation = app.operation(&id).await;
    assert_eq!(operation["state"], "succeeded", "{operation}");
    assert!(
        operation["gateways"][0]["attempts"].as_u64().unwrap() > u64::from(tried),
        "tried {tried}, the node counted {}: {operation}",
        node.attempts()
    );
    assert_eq!(node.received().len(), 1);
    assert_eq!(node.received()[0].body["operationId"], id.as_str());
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_first_operation_and_another_request_is_refused() {
    let a = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(config(&[&a], &node)).await;
    let send = |path: &'static str, key: &'static str| {
        app.client
            .post(app.url(path))
            .header("Idempotency-Key", key)
            .send()
    };
    let first = send("/api/v1/instances/10.0.0.5/offline?wait=true", "deploy-42")
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();

    let again = send("/api/v1/instances/10.0.0.5/offline?wait=true", "deploy-42")
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(node.received().len(), 1, "no second fan-out");
    assert_eq!(operations(&app, "ip=10.0.0.5").await.len(), 1);

    let other = send("/api/v1/instances/10.0.0.5/online", "deploy-42")
        .await
        .unwrap();
    assert_eq!(other.status(), 422);
    assert_eq!(error_code(other).await, "idempotency_key_reused");
    assert_eq!(
        status(&a),
        "OUT_OF_SERVICE",
        "the refused request changed nothing"
    );

    let bad = app
        .client
        .post(app.url("/api/v1/instances/10.0.0.5/online"))
        .header("Idempotency-Key", "with space")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(error_code(bad).await, "invalid_idempotency_key");
}

#[tokio::test]
async fn an_offline_of_a_held_instance_answers_with_the_holding_operation_unless_forced() {
    let a = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(config(&[&a], &node)).await;
    let first = take_out(&app).await;
    let writes = a.status_writes().len();

    let again = app.post("/api/v1/instances/10.0.0.5/offline").await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["synchspeed-already-held"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(node.received().len(), 1, "no second fan-out");
    assert_eq!(a.status_writes().len(), writes, "no second registry write");

    let forced = app
        .post_json(
            "/api/v1/instances/10.0.0.5/offline",
            &json!({"force": true, "wait": true}),
        )
        .await;
    assert_eq!(forced.status(), 200);
    let forced: Value = forced.json().await.unwrap();
    assert_ne!(forced["id"], first["id"]);
    assert_eq!(node.received().len(), 2);
}

#[tokio::test]
async fn an_online_sent_during_an_offline_fan_out_runs_after_it() {
    let a = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Slow(400)).await;
    let app = TestApp::spawn(config(&[&a], &node)).await;
    let offline = app.post("/api/v1/instances/10.0.0.5/offline").await;
    assert_eq!(offline.status(), 202);
    let offline: Value = offline.json().await.unwrap();
    let online = app
        .post("/api/v1/instances/10.0.0.5/online?wait=true")
        .await;
    assert_eq!(online.status(), 200);
    let online: Value = online.json().await.unwrap();

    let offline = app.settled(offline["id"].as_str().unwrap()).await;
    assert!(
        online["registryUpdatedAt"].as_str().unwrap() >= offline["completedAt"].as_str().unwrap(),
        "the online reached the registry only after the offline's last answer: {offline} {online}"
    );
    let events: Vec<String> = node.received().into_iter().map(|n| n.event).collect();
    assert_eq!(events, ["offline", "online"]);
    assert_eq!(status(&a), "UP");
    assert_eq!(held(&app).await, 0);
}

#[tokio::test]
async fn offline_and_online_racing_leave_the_registry_and_the_gateways_agreeing() {
    let a = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(config(&[&a], &node)).await;
    for _ in 0..8 {
        let (offline, online) = tokio::join!(
            app.post("/api/v1/instances/10.0.0.5/offline?wait=true&force=true"),
            app.post("/api/v1/instances/10.0.0.5/online?wait=true"),
        );
        assert_eq!(offline.status(), 200);
        assert_eq!(online.status(), 200);
        let last = node.received().last().map(|n| n.event.clone()).unwrap();
        let registry = status(&a);
        let held = held(&app).await;
        match last.as_str() {
            "online" => assert_eq!((registry.as_str(), held), ("UP", 0)),
            _ => assert_eq!((registry.as_str(), held), ("OUT_OF_SERVICE", 1)),
        }
    }
}

#[tokio::test]
async fn a_registry_slower_than_the_timeout_is_a_clear_503_and_no_gateway_is_told() {
    let a = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(config(&[&a], &node)).await;
    a.set_mode(Mode::Slow(2500));
    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "registry_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no answer within"),
        "{body}"
    );
    assert_eq!(body["operation"]["state"], "failed");
    assert!(node.received().is_empty());
    assert_eq!(held(&app).await, 0);
    // The late write may still land on the peer; the revert sent after it puts it back.
    a.set_mode(Mode::Normal);
    eventually("the peer is back to UP", || async { status(&a) == "UP" }).await;
}

#[tokio::test]
async fn gateways_are_told_before_the_registry_is_read_back() {
    let eureka = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(
        TestConfig::eureka(&[eureka.url()])
            .route("ORDER-SERVICE", &["EDGE"])
            .nodes("EDGE", vec![node.address()]),
    )
    .await;
    eureka.hold_instance_reads();
    let accepted = app.post("/api/v1/instances/10.0.0.5/offline").await;
    assert_eq!(accepted.status(), 202);
    let id = accepted.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The write took, so the node is told while the read-back still waits for an answer;
    // the operation settles only with it.
    eventually("the node is told", || async { !node.received().is_empty() }).await;
    let live = app.get_json(&format!("/api/v1/operations/{id}")).await;
    assert_eq!(live["state"], "in_progress", "{live}");
    assert!(live["instances"][0]["peers"][0]["verifiedStatus"].is_null());

    eureka.release_instance_reads();
    let settled = app.settled(&id).await;
    assert_eq!(settled["state"], "succeeded");
    assert_eq!(
        settled["instances"][0]["peers"][0]["verifiedStatus"],
        "OUT_OF_SERVICE"
    );
}

/// The reconciler's pass far beyond any test (the default is 10 s, which a test on a busy
/// machine can outlast): what these tests show is re-asserted by what the registry copy saw,
/// or by a peer coming back, never by the pass.
fn default_reconciler(peers: &[&EurekaDouble], node: &GatewayNode) -> TestConfig {
    let urls: Vec<String> = peers.iter().map(|peer| peer.url()).collect();
    TestConfig::eureka(&urls)
        .route("ORDER-SERVICE", &["EDGE"])
        .nodes("EDGE", vec![node.address()])
        .drain("reconcile_every = \"1h\"")
}

/// `synchspeed_reassertions_total{trigger}`, from `/metrics`.
async fn reassertions(app: &TestApp, trigger: &str) -> u64 {
    app.counter(&format!(
        "synchspeed_reassertions_total{{trigger=\"{trigger}\"}}"
    ))
    .await
}

#[tokio::test]
async fn a_fast_restart_on_eureka_is_re_asserted_from_the_refresh_not_the_periodic_pass() {
    let (a, b) = two_peers().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(default_reconciler(&[&a, &b], &node)).await;
    take_out(&app).await;
    for peer in [&a, &b] {
        peer.cancel("ORDER-SERVICE", ORDER_ID);
        peer.register("ORDER-SERVICE", ORDER_ID, "10.0.0.5", 8080, "UP");
    }
    eventually("both peers show it out of service again", || async {
        status(&a) == "OUT_OF_SERVICE" && status(&b) == "OUT_OF_SERVICE"
    })
    .await;
    eventually("the gateway is told again", || async {
        node.operations_heard() >= 2
    })
    .await;
    assert!(reassertions(&app, "change").await >= 1);
    assert_eq!(
        reassertions(&app, "periodic").await,
        0,
        "not the periodic pass"
    );
}

#[tokio::test]
async fn a_peer_back_from_503_is_checked_at_once_not_at_the_next_pass() {
    let (a, b) = two_peers().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(default_reconciler(&[&a, &b], &node)).await;
    b.set_mode(Mode::Unavailable);
    take_out(&app).await;
    assert_eq!(status(&b), "UP", "b missed the write");

    b.set_mode(Mode::Normal);
    // Found by the peer's return or by its copy showing the instance UP, whichever comes
    // first on this machine; never by the pass.
    eventually("b catches up, re-asserted", || async {
        status(&b) == "OUT_OF_SERVICE"
            && reassertions(&app, "peer_back").await + reassertions(&app, "change").await >= 1
    })
    .await;
    assert_eq!(
        reassertions(&app, "periodic").await,
        0,
        "not the periodic pass"
    );
}

#[tokio::test]
async fn a_departure_the_refresh_shows_ends_the_hold_at_once() {
    let (a, b) = two_peers().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(default_reconciler(&[&a, &b], &node)).await;
    take_out(&app).await;
    assert_eq!(held(&app).await, 1);
    // The scale-down finished: the instance deregistered from both peers.
    for peer in [&a, &b] {
        peer.cancel("ORDER-SERVICE", ORDER_ID);
    }
    // What is asserted is waited for: the hold gone, and counted as a departure.
    eventually("the hold ends, counted as a departure", || async {
        held(&app).await == 0
            && app
                .counter("synchspeed_holds_ended_total{why=\"departed\"}")
                .await
                == 1
    })
    .await;
    assert_eq!(reconcile_runs(&app).await, 1, "only the pass at start ran");
}

/// Eureka serves `GET apps` and `apps/delta` from a read-only map refreshed every 30 s, so
/// the refreshes right after an offline still show the instance UP. That is an old copy, not
/// a loss: each peer is asked directly before anything is re-asserted, and nothing is.
#[tokio::test]
async fn a_stale_read_after_an_offline_is_checked_at_the_source_and_not_re_asserted() {
    let (a, b) = two_peers().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(default_reconciler(&[&a, &b], &node)).await;
    for peer in [&a, &b] {
        peer.refresh_read_cache();
    }
    take_out(&app).await;
    assert_eq!(
        (status(&a), status(&b)),
        ("OUT_OF_SERVICE".into(), "OUT_OF_SERVICE".into())
    );
    // Refreshes served from the stale map after the offline, on both peers.
    let deltas = |peer: &EurekaDouble| {
        peer.requests()
            .iter()
            .filter(|r| r.path.ends_with("/apps/delta"))
            .count()
    };
    let (from_a, from_b) = (deltas(&a), deltas(&b));
    eventually("five more refreshes", || async {
        deltas(&a) + deltas(&b) >= from_a + from_b + 5
    })
    .await;
    assert_eq!(reassertions(&app, "change").await, 0);
    assert_eq!(node.received().len(), 1, "the gateway was told once");
    assert_eq!(operations(&app, "ip=10.0.0.5").await.len(), 1);
    assert_eq!(held(&app).await, 1);
}
