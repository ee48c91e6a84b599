//! Crash safety with the binary as a process of its own: `kill -9` in the middle of a fan-out
//! and SIGTERM in the middle of one.

use serde_json::Value;

use crate::helpers::{TestApp, TestConfig, eventually};
use crate::support::eureka::EurekaDouble;
use crate::support::gateway::{Behaviour, GatewayNode};

/// Nodes slow enough that a fan-out is still running when the process is stopped.
fn config(eureka: &EurekaDouble, nodes: Vec<String>) -> TestConfig {
    TestConfig::eureka(&[eureka.url()])
        .route("ORDER-SERVICE", &["EDGE"])
        .nodes("EDGE", nodes)
        .gateway("timeout = \"60s\"\nattempts = 1")
}

#[tokio::test]
async fn after_kill_9_mid_fan_out_every_node_still_receives_every_notification() {
    let eureka = EurekaDouble::with_order_service().await;
    let nodes = [
        GatewayNode::start(Behaviour::Hang).await,
        GatewayNode::start(Behaviour::Ack).await,
        GatewayNode::start(Behaviour::Hang).await,
    ];
    let app = TestApp::spawn_process(config(
        &eureka,
        nodes.iter().map(GatewayNode::address).collect(),
    ))
    .await;
    let response = app.post("/api/v1/instances/10.0.0.5/offline").await;
    assert_eq!(response.status(), 202);
    let operation: Value = response.json().await.unwrap();
    let id = operation["id"].as_str().unwrap().to_owned();
    eventually("every node was tried", || async {
        nodes.iter().all(|node| node.attempts() == 1)
    })
    .await;
    assert_eq!(app.operation(&id).await["state"], "in_progress");

    for node in &nodes {
        node.set_behaviour(Behaviour::Ack);
    }
    let app = app.kill_and_restart().await;
    let resumed = app.settled(&id).await;
    assert_eq!(resumed["state"], "succeeded", "{resumed}");
    for node in &nodes {
        let received = node.received();
        assert!(
            received
                .iter()
                .any(|n| n.body["operationId"] == id.as_str()),
            "{} never got {id}",
            node.address()
        );
    }
    assert_eq!(
        eureka
            .status("ORDER-SERVICE", "10.0.0.5:order-service:8080")
            .as_deref(),
        Some("OUT_OF_SERVICE")
    );
    let unfinished: Value = app.get_json("/api/v1/operations?state=in_progress").await;
    assert_eq!(unfinished["operations"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn sigterm_stops_accepting_and_lets_the_fan_out_finish_before_exiting() {
    let eureka = EurekaDouble::with_order_service().await;
    let slow = GatewayNode::start(Behaviour::Slow(1500)).await;
    let mut app = TestApp::spawn_process(
        config(&eureka, vec![slow.address()]).server("shutdown_grace = \"20s\""),
    )
    .await;
    let response = app.post("/api/v1/instances/10.0.0.5/offline").await;
    assert_eq!(response.status(), 202);
    let operation: Value = response.json().await.unwrap();
    let id = operation["id"].as_str().unwrap().to_owned();
    eventually("the slow node has the notification", || async {
        slow.operations_heard() == 1
    })
    .await;

    app.terminate();
    // A harmless probe on a fresh connection each time: the listener is closed.
    eventually("new connections are refused", || async {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(app.url("/healthz"))
            .send()
            .await
            .is_err()
    })
    .await;
    let exit = app.exited().await;
    assert!(exit.success(), "{exit:?}");
    assert!(
        app.logs()
            .iter()
            .any(|line| line.contains("operation settled") && line.contains(&id)),
        "the fan-out finished before the exit: {:?}",
        app.logs()
    );

    let app = app.start_again().await;
    let operation = app.operation(&id).await;
    assert_eq!(operation["state"], "succeeded", "{operation}");
    assert_eq!(slow.received().len(), 1, "nothing left to resume");
}

#[tokio::test]
async fn sigterm_past_the_grace_journals_the_fan_out_and_the_next_start_finishes_it() {
    let eureka = EurekaDouble::with_order_service().await;
    let answering = GatewayNode::start(Behaviour::Ack).await;
    let hanging = GatewayNode::start(Behaviour::Hang).await;
    let mut app = TestApp::spawn_process(
        config(&eureka, vec![answering.address(), hanging.address()])
            .server("shutdown_grace = \"500ms\""),
    )
    .await;
    let response = app.post("/api/v1/instances/10.0.0.5/offline").await;
    let operation: Value = response.json().await.unwrap();
    let id = operation["id"].as_str().unwrap().to_owned();
    // The answer as synchspeed has it, not only the node's copy: on a busy machine the node
    // has the notification a while before its answer is read.
    eventually("both nodes were tried, one answer read", || async {
        let operation = app.operation(&id).await;
        hanging.attempts() == 1
            && operation["gateways"]
                .as_array()
                .unwrap()
                .iter()
                .any(|node| node["node"] == answering.address() && node["state"] == "acked")
    })
    .await;

    app.terminate();
    let exit = app.exited().await;
    assert!(exit.success(), "{exit:?}");
    hanging.set_behaviour(Behaviour::Ack);
    let app = app.start_again().await;
    let operation = app.settled(&id).await;
    assert_eq!(operation["state"], "succeeded", "{operation}");
    assert_eq!(hanging.received().len(), 1);
    assert_eq!(
        answering.received().len(),
        1,
        "the node that had answered before the stop is not told again"
    );
    let held = app.get_json("/api/v1/offline").await;
    assert_eq!(
        held["instances"].as_array().map(Vec::len),
        Some(1),
        "the hold outlives the restart: {held}"
    );
}

#[tokio::test]
async fn a_caller_still_waiting_when_the_grace_ends_is_answered_before_the_service_goes() {
    let eureka = EurekaDouble::with_order_service().await;
    let hanging = GatewayNode::start(Behaviour::Hang).await;
    let mut app = TestApp::spawn_process(
        config(&eureka, vec![hanging.address()]).server("shutdown_grace = \"500ms\""),
    )
    .await;
    let waiting = {
        let client = app.client.clone();
        let url = app.url("/api/v1/instances/10.0.0.5/offline?wait=true&timeout=60s");
        tokio::spawn(async move { client.post(url).send().await })
    };
    eventually("the node was tried", || async { hanging.attempts() == 1 }).await;

    app.terminate();
    let response = waiting.await.unwrap().expect("answered, not cut off");
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "shutting_down");
    assert_eq!(body["operation"]["state"], "in_progress", "{body}");
    assert!(app.exited().await.success());
}
