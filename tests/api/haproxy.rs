//! HAProxy as a gateway, for real: synchspeed changes servers through HAProxy's runtime API
//! while traffic flows through HAProxy to two small backends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::helpers::{TestApp, TestConfig, eventually};
use crate::support::backend::Backend;
use crate::support::eureka::EurekaDouble;
use crate::support::gateway::{Behaviour, GatewayNode};
use crate::support::haproxy::{FORCED_DRAIN, FORCED_MAINT, Haproxy, Server};

/// Two instances of ORDER-SERVICE on their own loopback IPs, behind backend `app` of a real
/// HAProxy; instance `a` is also the only server of backend `pinned`, so a request can be
/// sent to it on purpose.
struct Stage {
    a: Backend,
    b: Backend,
    haproxy: Haproxy,
    eureka: EurekaDouble,
}

async fn stage() -> Stage {
    let a = Backend::start("a", "127.0.0.2").await;
    let b = Backend::start("b", "127.0.0.3").await;
    let haproxy = Haproxy::start(&[
        (
            "app",
            vec![
                Server {
                    name: "a",
                    addr: a.addr,
                    weight: 100,
                },
                Server {
                    name: "b",
                    addr: b.addr,
                    weight: 100,
                },
            ],
        ),
        (
            "pinned",
            vec![Server {
                name: "a",
                addr: a.addr,
                weight: 1,
            }],
        ),
    ])
    .await;
    let eureka = EurekaDouble::start().await;
    for backend in [&a, &b] {
        let ip = backend.addr.ip().to_string();
        let port = backend.addr.port();
        let id = format!("{ip}:order-service:{port}");
        eureka.register("ORDER-SERVICE", &id, &ip, port, "UP");
    }
    Stage {
        a,
        b,
        haproxy,
        eureka,
    }
}

/// synchspeed with every group told through HAProxy, plus `haproxy` lines for
/// `[gateway.haproxy]`.
fn config(stage: &Stage, haproxy: &str) -> TestConfig {
    TestConfig::eureka(&[stage.eureka.url()])
        .route("ORDER-SERVICE", &["HAPROXY-EDGE"])
        .nodes("HAPROXY-EDGE", vec![stage.haproxy.admin.clone()])
        .gateway("notifier = \"haproxy\"")
        .tables(&format!("[gateway.haproxy]\n{haproxy}"))
}

/// Clients sending requests through HAProxy one after another until stopped, keeping every
/// failure: the point of draining is that there are none.
struct Traffic {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(url: String, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..workers)
            .map(|_| {
                let (url, stop, failures) = (url.clone(), Arc::clone(&stop), Arc::clone(&failures));
                tokio::spawn(async move {
                    let client = reqwest::Client::builder().no_proxy().build().unwrap();
                    while !stop.load(Ordering::SeqCst) {
                        match client.get(&url).send().await {
                            Ok(response) if response.status() == 200 => {}
                            Ok(response) => failures
                                .lock()
                                .unwrap()
                                .push(format!("HTTP {}", response.status())),
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            failures,
            workers,
        }
    }

    /// Stops the clients and returns every failure they saw.
    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        for worker in self.workers {
            worker.await.unwrap();
        }
        self.failures.lock().unwrap().clone()
    }
}

fn node(operation: &Value) -> &Value {
    let nodes = operation["gateways"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{operation}");
    &nodes[0]
}

fn servers(node: &Value) -> Vec<String> {
    let mut servers: Vec<String> = node["haproxy"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}/{}",
                s["backend"].as_str().unwrap(),
                s["server"].as_str().unwrap()
            )
        })
        .collect();
    servers.sort();
    servers
}

#[tokio::test]
async fn after_offline_returns_the_drained_backend_gets_no_new_request_and_online_brings_it_back() {
    let stage = stage().await;
    let app = TestApp::spawn(config(&stage, "wait_idle = true")).await;
    let traffic = Traffic::start(format!("http://{}/", stage.haproxy.frontend("app")), 4);
    eventually("both backends take traffic", || async {
        stage.a.requests() >= 20 && stage.b.requests() >= 20
    })
    .await;

    let response = app
        .post("/api/v1/instances/127.0.0.2/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let a_at_return = stage.a.requests();
    let b_at_return = stage.b.requests();
    let operation: Value = response.json().await.unwrap();
    let edge = node(&operation);
    assert_eq!(edge["state"], "acked", "{operation}");
    assert_eq!(edge["haproxy"]["state"], "drain");
    assert_eq!(
        servers(edge),
        ["app/a", "pinned/a"],
        "every backend's server"
    );
    assert_eq!(edge["haproxy"]["idle"]["reached"], true);
    let (admin_state, _) = stage.haproxy.server("app", "a");
    assert_ne!(
        admin_state & FORCED_DRAIN,
        0,
        "HAProxy shows app/a draining"
    );

    eventually("the other backend takes 200 more requests", || async {
        stage.b.requests() >= b_at_return + 200
    })
    .await;
    assert_eq!(
        stage.a.requests(),
        a_at_return,
        "no new request reached the drained backend after the call returned"
    );

    let response = app
        .post("/api/v1/instances/127.0.0.2/online?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    assert_eq!(node(&operation)["haproxy"]["state"], "ready");
    assert_eq!(stage.haproxy.server("app", "a").0 & FORCED_DRAIN, 0);
    eventually("the backend is back in rotation", || async {
        stage.a.requests() >= a_at_return + 20
    })
    .await;

    let failures = traffic.stop().await;
    assert!(failures.is_empty(), "requests failed: {failures:?}");
}

#[tokio::test]
async fn drain_until_idle_waits_for_a_long_request_to_finish_before_acknowledging() {
    let stage = stage().await;
    let app = TestApp::spawn(config(&stage, "wait_idle = true\nidle_poll = \"20ms\"")).await;
    let mut events = crate::events::stream(&app, "/api/v1/events").await;
    let slow_url = format!("http://{}/slow", stage.haproxy.frontend("pinned"));
    let slow = tokio::spawn(async move {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(slow_url)
            .send()
            .await
            .map(|response| response.status().as_u16())
    });
    eventually("the long request is in flight on a", || async {
        stage.a.in_flight() == 1
    })
    .await;

    let response = app.post("/api/v1/instances/127.0.0.2/offline").await;
    assert_eq!(response.status(), 202);
    let operation: Value = response.json().await.unwrap();
    let id = operation["id"].as_str().unwrap().to_owned();
    let waiting = |operation: &Value| {
        let node = &operation["gateways"][0];
        node["haproxy"]["state"] == "drain"
            && node["haproxy"]["idle"]["reached"] == false
            && node["haproxy"]["idle"]["sessions"].as_u64() >= Some(1)
    };
    eventually("the operation shows the node waiting for idle", || async {
        waiting(&app.operation(&id).await)
    })
    .await;
    let operation = app.operation(&id).await;
    assert_eq!(operation["state"], "in_progress", "{operation}");
    assert_eq!(operation["gateways"][0]["state"], "pending");

    stage.a.release_slow();
    let operation = app.settled(&id).await;
    assert_eq!(operation["state"], "succeeded", "{operation}");
    let node = node(&operation);
    assert_eq!(node["haproxy"]["idle"]["reached"], true);
    assert_eq!(node["haproxy"]["idle"]["sessions"], 0);
    assert!(node["haproxy"]["idle"]["waitedMs"].as_f64().unwrap() > 0.0);
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "draining let the request in flight finish"
    );

    // The stream showed the wait for idle while it ran, then the answer, then the settle.
    let mut kinds = Vec::new();
    let mut waited_in_stream = false;
    while let Some(event) = events.next().await {
        if event.event == "progress" && event.data["node"]["haproxy"]["idle"]["reached"] == false {
            waited_in_stream = true;
        }
        kinds.push(event.event.clone());
        if event.event == "settled" {
            break;
        }
    }
    assert!(waited_in_stream, "{kinds:?}");
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("started"),
        "{kinds:?}"
    );
    let answered = kinds
        .iter()
        .position(|k| k == "node")
        .expect("a node event");
    assert!(
        kinds[..answered].iter().all(|k| k != "settled"),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn online_with_warm_up_ramps_the_weight_to_the_configured_one() {
    let stage = stage().await;
    let app = TestApp::spawn(config(
        &stage,
        "warmup = \"2s\"\nwarmup_start_percent = 20\nwarmup_steps = 4",
    ))
    .await;
    let response = app
        .post("/api/v1/instances/127.0.0.2/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);

    let response = app.post("/api/v1/instances/127.0.0.2/online").await;
    assert_eq!(response.status(), 202);
    let operation: Value = response.json().await.unwrap();
    let id = operation["id"].as_str().unwrap().to_owned();
    // Polled, not timed: HAProxy's weight and the operation are read until the ramp ends.
    let mut weights_seen = Vec::new();
    let mut ramping_seen = false;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        weights_seen.push(stage.haproxy.server("app", "a").1);
        let operation = app.operation(&id).await;
        let warmup = &operation["gateways"][0]["haproxy"]["warmup"];
        if warmup["done"] == false && warmup["percent"].as_u64() < Some(100) {
            ramping_seen |= operation["state"] == "in_progress";
        }
        if operation["state"] != "in_progress" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the warm-up never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        ramping_seen,
        "the operation showed the ramp in progress before it ended"
    );
    assert!(
        weights_seen.iter().any(|w| (1..100).contains(w)),
        "HAProxy served a lowered weight during the ramp: {weights_seen:?}"
    );

    let operation = app.operation(&id).await;
    assert_eq!(operation["state"], "succeeded", "{operation}");
    let node = node(&operation);
    assert_eq!(node["haproxy"]["warmup"]["percent"], 100);
    assert_eq!(node["haproxy"]["warmup"]["done"], true);
    let (admin_state, weight) = stage.haproxy.server("app", "a");
    assert_eq!(admin_state & FORCED_DRAIN, 0);
    assert_eq!(weight, 100, "back to the configured weight");
    // `pinned/a` is configured with weight 1: a ramp cannot go below it.
    assert_eq!(stage.haproxy.server("pinned", "a").1, 1);
}

#[tokio::test]
async fn one_app_behind_a_webhook_group_and_an_haproxy_group_is_told_through_both() {
    let stage = stage().await;
    let webhook = GatewayNode::start(Behaviour::Ack).await;
    let config = TestConfig::eureka(&[stage.eureka.url()])
        .route("ORDER-SERVICE", &["GATEWAY-PUBLIC", "HAPROXY-EDGE"])
        .nodes("GATEWAY-PUBLIC", vec![webhook.address()])
        .nodes("HAPROXY-EDGE", vec![stage.haproxy.unix_socket()])
        .tables("[gateway.group_notifiers]\n\"HAPROXY-EDGE\" = \"haproxy\"\n[gateway.haproxy]\nstate = \"maint\"");
    let app = TestApp::spawn(config).await;

    let response = app
        .post("/api/v1/instances/127.0.0.3/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    let nodes = operation["gateways"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{operation}");
    assert!(
        nodes.iter().all(|node| node["state"] == "acked"),
        "{operation}"
    );

    let received = webhook.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body["instances"][0]["ip"], "127.0.0.3");
    let (admin_state, _) = stage.haproxy.server("app", "b");
    assert_ne!(admin_state & FORCED_MAINT, 0, "app/b is in maintenance");
    assert_eq!(stage.haproxy.server("app", "a").0, 0, "a is untouched");
}

#[tokio::test]
async fn an_unknown_instance_and_a_refusing_runtime_api_are_that_nodes_error() {
    let stage = stage().await;
    stage.eureka.register(
        "ORDER-SERVICE",
        "127.0.0.4:order-service:9000",
        "127.0.0.4",
        9000,
        "UP",
    );
    let config = TestConfig::eureka(&[stage.eureka.url()])
        .route("ORDER-SERVICE", &["HAPROXY-EDGE", "HAPROXY-READONLY"])
        .nodes("HAPROXY-EDGE", vec![stage.haproxy.admin.clone()])
        .nodes("HAPROXY-READONLY", vec![stage.haproxy.operator.clone()])
        .gateway("notifier = \"haproxy\"");
    let app = TestApp::spawn(config).await;

    let response = app
        .post("/api/v1/instances/127.0.0.4/offline?wait=true")
        .await;
    assert_eq!(response.status(), 502, "registry done, nodes failed");
    let operation: Value = response.json().await.unwrap();
    assert_eq!(operation["state"], "partial");
    for node in operation["gateways"].as_array().unwrap() {
        assert_eq!(node["state"], "failed");
        assert_eq!(
            node["error"], "no server for 127.0.0.4:9000 in any backend",
            "{node}"
        );
        assert_eq!(node["attempts"], 1, "an unknown server is not retried");
    }

    let response = app
        .post("/api/v1/instances/127.0.0.2/offline?wait=true")
        .await;
    assert_eq!(response.status(), 502);
    let operation: Value = response.json().await.unwrap();
    let by_group = |group: &str| {
        operation["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .find(|node| node["group"] == group)
            .unwrap()
            .clone()
    };
    assert_eq!(by_group("HAPROXY-EDGE")["state"], "acked");
    let refused = by_group("HAPROXY-READONLY");
    assert_eq!(refused["state"], "failed");
    assert_eq!(
        refused["error"],
        "HAProxy refused `set server app/a state drain`: Permission denied"
    );
    assert_eq!(refused["attempts"], 1, "a refusal is not retried");
}
