//! The core flow: registry first, then every gateway node, with every outcome the contract
//! names. One room past 500 lines: every test is a case of the same flow, on the same helpers.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::helpers::{TestApp, TestConfig, error_code, eventually, node_addresses};
use crate::support::eureka::{EurekaDouble, Mode};
use crate::support::gateway::{Behaviour, GatewayNode};

const ORDER_8080: &str = "10.0.0.5:order-service:8080";
const ORDER_8081: &str = "10.0.0.5:order-service:8081";

/// ORDER-SERVICE twice on 10.0.0.5 and once on 10.0.0.6, routed by GATEWAY-PUBLIC, whose
/// nodes are registered in Eureka: the given ones UP, plus one DOWN node that must never be
/// told anything.
struct Fleet {
    eureka: EurekaDouble,
    down_node: GatewayNode,
}

async fn fleet(nodes: &[&GatewayNode]) -> Fleet {
    let eureka = EurekaDouble::start().await;
    eureka.register("ORDER-SERVICE", ORDER_8080, "10.0.0.5", 8080, "UP");
    eureka.register("ORDER-SERVICE", ORDER_8081, "10.0.0.5", 8081, "UP");
    eureka.register(
        "ORDER-SERVICE",
        "10.0.0.6:order-service:8080",
        "10.0.0.6",
        8080,
        "UP",
    );
    for (i, node) in nodes.iter().enumerate() {
        eureka.register(
            "GATEWAY-PUBLIC",
            &format!("gw-{i}"),
            "127.0.0.1",
            node.port(),
            "UP",
        );
    }
    let down_node = GatewayNode::start(Behaviour::Ack).await;
    eureka.register(
        "GATEWAY-PUBLIC",
        "gw-down",
        "127.0.0.1",
        down_node.port(),
        "DOWN",
    );
    Fleet { eureka, down_node }
}

fn config(eureka: &EurekaDouble) -> TestConfig {
    TestConfig::eureka(&[eureka.url()]).route("ORDER-SERVICE", &["GATEWAY-PUBLIC"])
}

fn instance_ports(notification: &Value) -> Vec<u64> {
    let mut ports: Vec<u64> = notification["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["port"].as_u64().unwrap())
        .collect();
    ports.sort_unstable();
    ports
}

#[tokio::test]
async fn offline_with_wait_marks_every_instance_on_the_ip_then_tells_every_up_node() {
    let (a, b) = (
        GatewayNode::start(Behaviour::Ack).await,
        GatewayNode::start(Behaviour::Ack).await,
    );
    let fleet = fleet(&[&a, &b]).await;
    let app = TestApp::spawn(config(&fleet.eureka)).await;

    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true&reason=scale-down%2012%20-%3E%2011")
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    assert_eq!(operation["state"], "succeeded");
    assert_eq!(operation["reason"], "scale-down 12 -> 11");
    assert_eq!(operation["caller"]["addr"], "127.0.0.1");
    assert_eq!(operation["instances"].as_array().unwrap().len(), 2);
    for instance in operation["instances"].as_array().unwrap() {
        assert_eq!(instance["registry"], "updated");
        assert_eq!(instance["peers"][0]["verifiedStatus"], "OUT_OF_SERVICE");
    }
    let gateways = operation["gateways"].as_array().unwrap();
    assert_eq!(
        gateways.len(),
        2,
        "the DOWN node is not a node: {gateways:?}"
    );
    assert!(
        gateways
            .iter()
            .all(|n| n["state"] == "acked" && n["attempts"] == 1)
    );
    assert!(operation["registryUpdatedAt"].is_string() && operation["completedAt"].is_string());

    // The registry holds an override (status, never deregistration); the other IP is untouched.
    for id in [ORDER_8080, ORDER_8081] {
        assert_eq!(
            fleet.eureka.status("ORDER-SERVICE", id).as_deref(),
            Some("OUT_OF_SERVICE")
        );
        assert_eq!(
            fleet.eureka.override_of(id).as_deref(),
            Some("OUT_OF_SERVICE")
        );
    }
    assert_eq!(
        fleet
            .eureka
            .status("ORDER-SERVICE", "10.0.0.6:order-service:8080")
            .as_deref(),
        Some("UP")
    );

    // Each UP node heard once, about both instances, in the contract's shape.
    for node in [&a, &b] {
        let received = node.received();
        assert_eq!(received.len(), 1);
        let notification = &received[0];
        assert_eq!(notification.event, "offline");
        assert_eq!(notification.body["event"], "offline");
        assert_eq!(notification.body["app"], "ORDER-SERVICE");
        assert_eq!(notification.body["operationId"], operation["id"]);
        assert_eq!(instance_ports(&notification.body), vec![8080, 8081]);
        assert!(notification.signature.is_none(), "no secret, no signature");
    }
    assert_eq!(fleet.down_node.attempts(), 0);

    let held: Value = app.get_json("/api/v1/offline").await;
    assert_eq!(held["instances"].as_array().unwrap().len(), 2);
    let view: Value = app.get_json("/api/v1/instances/10.0.0.5").await;
    assert!(
        view["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["held"] == true && i["status"] == "OUT_OF_SERVICE")
    );
    assert_eq!(view["lastOperation"]["id"], operation["id"]);
}

#[tokio::test]
async fn offline_without_wait_answers_202_with_the_operation_to_follow() {
    let node = GatewayNode::start(Behaviour::Ack).await;
    let fleet = fleet(&[&node]).await;
    let app = TestApp::spawn(config(&fleet.eureka)).await;

    let response = app.post("/api/v1/instances/10.0.0.5/offline").await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let operation: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/v1/operations/{}", operation["id"].as_str().unwrap())
    );
    // The registry step is done before the 202: that is what the 202 promises.
    assert!(operation["registryUpdatedAt"].is_string());
    assert_eq!(
        fleet.eureka.status("ORDER-SERVICE", ORDER_8080).as_deref(),
        Some("OUT_OF_SERVICE")
    );

    let settled = app.settled(operation["id"].as_str().unwrap()).await;
    assert_eq!(settled["state"], "succeeded");
    assert_eq!(node.received().len(), 1);
}

#[tokio::test]
async fn online_removes_the_override_and_tells_the_nodes() {
    let node = GatewayNode::start(Behaviour::Ack).await;
    let fleet = fleet(&[&node]).await;
    let app = TestApp::spawn(config(&fleet.eureka)).await;
    assert_eq!(
        app.post("/api/v1/instances/10.0.0.5/offline?wait=true")
            .await
            .status(),
        200
    );

    let response = app
        .post("/api/v1/instances/10.0.0.5/online?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    assert_eq!(operation["action"], "online");
    for id in [ORDER_8080, ORDER_8081] {
        assert_eq!(
            fleet.eureka.status("ORDER-SERVICE", id).as_deref(),
            Some("UP")
        );
        assert_eq!(
            fleet.eureka.override_of(id),
            None,
            "online deletes the override, never pins UP"
        );
    }
    // DELETE .../status?value=UP, not PUT value=UP.
    let onlines: Vec<_> = fleet
        .eureka
        .status_writes()
        .into_iter()
        .filter(|r| r.query == "value=UP")
        .collect();
    assert_eq!(onlines.len(), 2);
    assert!(onlines.iter().all(|r| r.method == "DELETE"));

    let events: Vec<String> = node.received().iter().map(|r| r.event.clone()).collect();
    assert_eq!(events, vec!["offline", "online"]);
    let held: Value = app.get_json("/api/v1/offline").await;
    assert!(held["instances"].as_array().unwrap().is_empty());
}

/// The node addresses an offline of 10.0.0.5 would tell, as a dry run resolves them.
async fn planned_nodes(app: &TestApp) -> Vec<String> {
    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?dry_run=true")
        .await;
    node_addresses(&response.json().await.unwrap())
}

#[tokio::test]
async fn a_gateway_group_follows_its_nodes_going_down_and_coming_up() {
    let (a, b) = (
        GatewayNode::start(Behaviour::Ack).await,
        GatewayNode::start(Behaviour::Ack).await,
    );
    let fleet = fleet(&[&a, &b]).await;
    let app = TestApp::spawn(config(&fleet.eureka)).await;
    for action in ["offline", "online"] {
        let path = format!("/api/v1/instances/10.0.0.5/{action}?wait=true");
        assert_eq!(app.post(&path).await.status(), 200);
    }

    // b goes DOWN and c joins the group: the next operation's nodes follow the registry,
    // whatever the operations before them resolved.
    let c = GatewayNode::start(Behaviour::Ack).await;
    let eureka = &fleet.eureka;
    eureka.register("GATEWAY-PUBLIC", "gw-1", "127.0.0.1", b.port(), "DOWN");
    eureka.register("GATEWAY-PUBLIC", "gw-c", "127.0.0.1", c.port(), "UP");
    let mut expected = vec![a.address(), c.address()];
    expected.sort();
    eventually("the group's nodes are a and c", || async {
        planned_nodes(&app).await == expected
    })
    .await;

    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    assert_eq!(node_addresses(&operation), expected);
    // By operation, not by request: on a loaded machine an acknowledgement slower than the
    // node timeout is retried, and the node records the same notification twice.
    let told = |node: &GatewayNode| {
        node.received()
            .iter()
            .any(|r| r.body["operationId"] == operation["id"])
    };
    assert!(!told(&b), "the DOWN node hears nothing more");
    assert!(told(&c));
    assert!(fleet.down_node.received().is_empty());
}

#[tokio::test]
async fn port_and_app_filters_pick_one_instance_of_several_on_an_ip() {
    let eureka = EurekaDouble::start().await;
    eureka.register("ORDER-SERVICE", ORDER_8080, "10.0.0.5", 8080, "UP");
    eureka.register("BILLING", "10.0.0.5:billing:9090", "10.0.0.5", 9090, "UP");
    let app = TestApp::spawn(TestConfig::eureka(&[eureka.url()])).await;

    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?port=9090&wait=true")
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        eureka.status("BILLING", "10.0.0.5:billing:9090").as_deref(),
        Some("OUT_OF_SERVICE")
    );
    assert_eq!(
        eureka.status("ORDER-SERVICE", ORDER_8080).as_deref(),
        Some("UP")
    );

    // The app filter, case-insensitively, from a JSON body.
    let response = app
        .post_json(
            "/api/v1/instances/10.0.0.5/offline",
            &json!({"app": "order-service", "wait": true}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    assert_eq!(operation["instances"].as_array().unwrap().len(), 1);
    assert_eq!(
        eureka.status("ORDER-SERVICE", ORDER_8080).as_deref(),
        Some("OUT_OF_SERVICE")
    );

    // A filter that matches nothing is a 404 and changes nothing.
    let writes = eureka.status_writes().len();
    let response = app.post("/api/v1/instances/10.0.0.5/offline?port=1").await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "instance_not_found");
    assert_eq!(eureka.status_writes().len(), writes);
}

#[tokio::test]
async fn registry_down_means_503_and_no_gateway_is_told() {
    let node = GatewayNode::start(Behaviour::Ack).await;
    let fleet = fleet(&[&node]).await;
    let app = TestApp::spawn(config(&fleet.eureka)).await;
    fleet.eureka.stop();

    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "registry_unavailable");
    assert_eq!(body["operation"]["state"], "failed");
    assert_eq!(
        node.attempts(),
        0,
        "the soft transaction: no registry, no notification"
    );

    // The failure is in the audit trail, and nothing is held.
    let failed: Value = app.get_json("/api/v1/operations?state=failed").await;
    assert_eq!(
        failed["operations"][0]["error"]["code"],
        "registry_unavailable"
    );
    let held: Value = app.get_json("/api/v1/offline").await;
    assert!(held["instances"].as_array().unwrap().is_empty());
    eventually("readyz reports the registry", || async {
        app.get("/readyz").await.status() == 503
    })
    .await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(
            "synchspeed_registry_errors_total{registry=\"eureka\",call=\"write_status\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("synchspeed_operations_total{action=\"offline\",state=\"failed\"} 1"),
        "{metrics}"
    );
    for (step, count) in [("registry", 1), ("gateways", 0)] {
        let line =
            format!("synchspeed_operation_step_duration_seconds_count{{step=\"{step}\"}} {count}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn registry_refusal_means_502_and_no_gateway_is_told() {
    let node = GatewayNode::start(Behaviour::Ack).await;
    let fleet = fleet(&[&node]).await;
    let app = TestApp::spawn(config(&fleet.eureka)).await;
    fleet.eureka.set_mode(Mode::RefuseWrites);

    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "registry_refused");
    assert_eq!(node.attempts(), 0);
}

#[tokio::test]
async fn one_failing_peer_of_two_is_recorded_and_the_change_stands() {
    let node = GatewayNode::start(Behaviour::Ack).await;
    let broken = EurekaDouble::start().await;
    let healthy = EurekaDouble::start().await;
    for eureka in [&broken, &healthy] {
        eureka.register("ORDER-SERVICE", ORDER_8080, "10.0.0.5", 8080, "UP");
        eureka.register("GATEWAY-PUBLIC", "gw", "127.0.0.1", node.port(), "UP");
    }
    broken.set_mode(Mode::Unavailable);
    // The broken peer first: reads fail over to the healthy one.
    let app = TestApp::spawn(
        TestConfig::eureka(&[broken.url(), healthy.url()])
            .route("ORDER-SERVICE", &["GATEWAY-PUBLIC"]),
    )
    .await;

    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    let peers = operation["instances"][0]["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    let outcome = |url: &str| {
        peers
            .iter()
            .find(|p| p["peer"].as_str().unwrap().starts_with(url))
            .map(|p| p["outcome"].as_str().unwrap().to_owned())
    };
    assert_eq!(outcome(&broken.url()).as_deref(), Some("unreachable"));
    assert_eq!(outcome(&healthy.url()).as_deref(), Some("accepted"));
    assert_eq!(
        healthy.status("ORDER-SERVICE", ORDER_8080).as_deref(),
        Some("OUT_OF_SERVICE")
    );
    assert_eq!(node.received().len(), 1);
}

#[tokio::test]
async fn a_flapping_node_is_retried_until_it_acknowledges() {
    let node = GatewayNode::start(Behaviour::FailTimes(2, 503)).await;
    let fleet = fleet(&[&node]).await;
    let app = TestApp::spawn(config(&fleet.eureka)).await;

    let operation: Value = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(operation["state"], "succeeded");
    assert_eq!(operation["gateways"][0]["state"], "acked");
    assert_eq!(operation["gateways"][0]["attempts"], 3);
    assert_eq!(node.attempts(), 3);
}

#[tokio::test]
async fn nodes_failing_after_every_retry_make_a_partial_502() {
    let good = GatewayNode::start(Behaviour::Ack).await;
    let bad = GatewayNode::start(Behaviour::Fail(500)).await;
    let rejecting = GatewayNode::start(Behaviour::Fail(400)).await;
    let fleet = fleet(&[&good, &bad, &rejecting]).await;
    let app = TestApp::spawn(config(&fleet.eureka)).await;

    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 502);
    let operation: Value = response.json().await.unwrap();
    assert_eq!(operation["state"], "partial");
    let node = |addr: String| {
        operation["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == addr.as_str())
            .cloned()
            .unwrap()
    };
    assert_eq!(node(good.address())["state"], "acked");
    let failed = node(bad.address());
    assert_eq!(failed["state"], "failed");
    assert_eq!(
        failed["attempts"], 3,
        "a 5xx is retried up to the configured attempts"
    );
    assert!(failed["error"].as_str().unwrap().contains("500"));
    let rejected = node(rejecting.address());
    assert_eq!(rejected["state"], "failed");
    assert_eq!(
        rejected["attempts"], 1,
        "a 4xx other than 408/429 fails at once"
    );
    assert_eq!(rejecting.attempts(), 1);
    // The registry change stands: partial is about gateways only.
    assert_eq!(
        fleet.eureka.status("ORDER-SERVICE", ORDER_8080).as_deref(),
        Some("OUT_OF_SERVICE")
    );
}

#[tokio::test]
async fn a_hanging_node_makes_wait_time_out_with_504_and_the_operation_in_progress() {
    let hanging = GatewayNode::start(Behaviour::Hang).await;
    let fleet = fleet(&[&hanging]).await;
    let app =
        TestApp::spawn(config(&fleet.eureka).gateway("timeout = \"10s\"\nattempts = 1")).await;

    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true&timeout=300ms")
        .await;
    assert_eq!(response.status(), 504);
    let operation: Value = response.json().await.unwrap();
    assert_eq!(operation["state"], "in_progress");
    assert_eq!(operation["gateways"][0]["state"], "pending");
    // The operation is readable while it runs.
    let live = app.operation(operation["id"].as_str().unwrap()).await;
    assert_eq!(live["state"], "in_progress");
}

#[tokio::test]
async fn a_dry_run_returns_the_plan_and_changes_nothing() {
    let node = GatewayNode::start(Behaviour::Ack).await;
    let fleet = fleet(&[&node]).await;
    let app = TestApp::spawn(config(&fleet.eureka)).await;

    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?dry_run=true")
        .await;
    assert_eq!(response.status(), 200);
    let plan: Value = response.json().await.unwrap();
    assert_eq!(plan["state"], "planned");
    assert_eq!(plan["instances"].as_array().unwrap().len(), 2);
    assert_eq!(plan["gateways"][0]["node"], node.address());
    assert_eq!(plan["gateways"][0]["state"], "pending");

    assert!(fleet.eureka.status_writes().is_empty());
    assert_eq!(
        fleet.eureka.status("ORDER-SERVICE", ORDER_8080).as_deref(),
        Some("UP")
    );
    assert_eq!(node.attempts(), 0);
    let list: Value = app.get_json("/api/v1/operations").await;
    assert!(
        list["operations"].as_array().unwrap().is_empty(),
        "a dry run is not recorded"
    );
}

#[tokio::test]
async fn notifications_are_signed_with_the_shared_secret() {
    use hmac::{Hmac, Mac};
    let node = GatewayNode::start(Behaviour::Ack).await;
    let fleet = fleet(&[&node]).await;
    let app =
        TestApp::spawn(config(&fleet.eureka).gateway("secret = \"gateway-shared-secret\"")).await;

    assert_eq!(
        app.post("/api/v1/instances/10.0.0.5/offline?wait=true")
            .await
            .status(),
        200
    );
    let received = node.received();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"gateway-shared-secret").unwrap();
    mac.update(&received[0].raw);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(received[0].signature.as_deref(), Some(expected.as_str()));
}

#[tokio::test]
async fn node_ports_come_from_metadata_and_static_groups_from_config() {
    let registered = GatewayNode::start(Behaviour::Ack).await;
    let listed = GatewayNode::start(Behaviour::Ack).await;
    let eureka = EurekaDouble::start().await;
    eureka.register("ORDER-SERVICE", ORDER_8080, "10.0.0.5", 8080, "UP");
    // Registered with its traffic port; notifications go to management.port.
    let metadata = BTreeMap::from([("management.port".to_owned(), registered.port().to_string())]);
    eureka.register_with("GATEWAY-PUBLIC", "gw", "127.0.0.1", 1, "UP", metadata);
    let app = TestApp::spawn(
        TestConfig::eureka(&[eureka.url()])
            .route("ORDER-SERVICE", &["GATEWAY-PUBLIC", "HAPROXY-EDGE"])
            .nodes("HAPROXY-EDGE", vec![listed.address()])
            .gateway("port_metadata_key = \"management.port\""),
    )
    .await;

    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    let groups: Vec<&str> = operation["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["group"].as_str().unwrap())
        .collect();
    assert_eq!(groups.len(), 2);
    assert!(groups.contains(&"GATEWAY-PUBLIC") && groups.contains(&"HAPROXY-EDGE"));
    assert_eq!(registered.received().len(), 1);
    assert_eq!(listed.received().len(), 1);
}

#[tokio::test]
async fn a_batch_is_one_operation_and_one_notification_per_node() {
    let node = GatewayNode::start(Behaviour::Ack).await;
    let fleet = fleet(&[&node]).await;
    let app = TestApp::spawn(config(&fleet.eureka)).await;

    let response = app
        .post_json(
            "/api/v1/operations",
            &json!({"action": "offline", "targets": [{"ip": "10.0.0.5", "port": 8080}, {"ip": "10.0.0.6"}],
                    "reason": "rolling restart", "wait": true}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    assert_eq!(operation["targets"].as_array().unwrap().len(), 2);
    assert_eq!(operation["instances"].as_array().unwrap().len(), 2);
    assert_eq!(
        fleet.eureka.status("ORDER-SERVICE", ORDER_8081).as_deref(),
        Some("UP")
    );
    let received = node.received();
    assert_eq!(
        received.len(),
        1,
        "instances of one app reach a node in one notification"
    );
    assert_eq!(received[0].body["instances"].as_array().unwrap().len(), 2);

    // A batch naming an IP that matches nothing changes nothing.
    let writes = fleet.eureka.status_writes().len();
    let response = app
        .post_json(
            "/api/v1/operations",
            &json!({"action": "online", "targets": [{"ip": "10.0.0.5"}, {"ip": "10.9.9.9"}]}),
        )
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(fleet.eureka.status_writes().len(), writes);
}

#[tokio::test]
async fn an_instance_the_registry_refuses_puts_the_others_back() {
    let node = GatewayNode::start(Behaviour::Ack).await;
    let fleet = fleet(&[&node]).await;
    let app = TestApp::spawn(config(&fleet.eureka)).await;
    // One instance's write is refused (Eureka's 500 on a race with a cancel) while the
    // other instance's write succeeds.
    fleet.eureka.refuse_writes_for(ORDER_8081);

    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    let steps: Vec<&str> = body["operation"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["registry"].as_str().unwrap())
        .collect();
    assert!(
        steps.contains(&"reverted") && steps.contains(&"failed"),
        "{steps:?}"
    );
    assert_eq!(
        fleet.eureka.status("ORDER-SERVICE", ORDER_8080).as_deref(),
        Some("UP")
    );
    assert_eq!(fleet.eureka.override_of(ORDER_8080), None);
    assert_eq!(node.attempts(), 0);
}

#[tokio::test]
async fn online_of_an_instance_that_took_itself_out_reports_what_eureka_shows() {
    // The instance set itself OUT_OF_SERVICE: there is no override, so Eureka's DELETE is a
    // no-op answering 200 (§1.4). The operation must say what the peer shows, not claim UP.
    let eureka = EurekaDouble::start().await;
    eureka.register(
        "ORDER-SERVICE",
        ORDER_8080,
        "10.0.0.5",
        8080,
        "OUT_OF_SERVICE",
    );
    let app = TestApp::spawn(TestConfig::eureka(&[eureka.url()])).await;

    let operation: Value = app
        .post("/api/v1/instances/10.0.0.5/online?wait=true")
        .await
        .json()
        .await
        .unwrap();
    let peer = &operation["instances"][0]["peers"][0];
    assert_eq!(peer["outcome"], "accepted");
    assert_eq!(peer["verifiedStatus"], "OUT_OF_SERVICE");
    assert!(peer["error"].as_str().unwrap().contains("OUT_OF_SERVICE"));
    assert_eq!(
        eureka.status("ORDER-SERVICE", ORDER_8080).as_deref(),
        Some("OUT_OF_SERVICE")
    );
}
