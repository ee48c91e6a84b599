//! The event streams: an operation's changes in order while its fan-out runs, ending at the
//! settle; every operation's changes, filtered; a reader that reads nothing holds no drain
//! back; the caller check.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::helpers::{TestApp, TestConfig, error_code};
use crate::support::eureka::EurekaDouble;
use crate::support::gateway::{Behaviour, GatewayNode};

/// One Server-Sent Event.
#[derive(Debug)]
pub struct Sse {
    pub event: String,
    pub data: Value,
}

/// Reads a stream's events as they come.
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl SseReader {
    fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{response:?}"
        );
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped), or `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event = Some(name.trim().to_owned());
                    } else if let Some(text) = line.strip_prefix("data:") {
                        data.push_str(text.trim_start());
                    }
                }
                if let Some(event) = event {
                    return Some(Sse {
                        event,
                        data: serde_json::from_str(&data).unwrap(),
                    });
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.body.next())
                .await
                .expect("no event for 20 s")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
    }

    /// Every event until the stream ends.
    async fn read_to_end(&mut self) -> Vec<Sse> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

pub async fn stream(app: &TestApp, path: &str) -> SseReader {
    SseReader::new(app.get(path).await)
}

fn config(eureka: &EurekaDouble, nodes: Vec<String>) -> TestConfig {
    TestConfig::eureka(&[eureka.url()])
        .route("ORDER-SERVICE", &["GATEWAY-PUBLIC"])
        .nodes("GATEWAY-PUBLIC", nodes)
}

#[tokio::test]
async fn an_operation_s_stream_shows_each_node_as_it_answers_and_ends_at_the_settle() {
    let eureka = EurekaDouble::with_order_service().await;
    let quick = GatewayNode::start(Behaviour::Ack).await;
    let gated = GatewayNode::start(Behaviour::Gated).await;
    let app = TestApp::spawn(config(&eureka, vec![quick.address(), gated.address()])).await;

    let accepted: Value = app
        .post("/api/v1/instances/10.0.0.5/offline")
        .await
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let mut events = stream(&app, &format!("/api/v1/operations/{id}/events")).await;

    let first = events.next().await.unwrap();
    assert_eq!(first.event, "snapshot");
    assert_eq!(first.data["type"], "snapshot");
    assert_eq!(first.data["operationId"], id.as_str());
    assert_eq!(first.data["operation"]["state"], "in_progress");
    assert_eq!(
        first.data["operation"]["instances"][0]["registry"],
        "updated"
    );
    let gated_slot = first.data["operation"]["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .position(|node| node["node"] == gated.address().as_str())
        .unwrap();

    // The gated node answers only now: its answer is an event of the running stream.
    gated.open_gate();
    let rest = events.read_to_end().await;
    let kinds: Vec<&str> = rest.iter().map(|e| e.event.as_str()).collect();
    let settled = rest.last().expect("events after the snapshot");
    assert_eq!(settled.event, "settled", "{kinds:?}");
    assert_eq!(settled.data["operation"]["state"], "succeeded");
    let answered = rest
        .iter()
        .position(|e| e.event == "node" && e.data["slot"] == gated_slot)
        .unwrap_or_else(|| panic!("no node event of the gated node: {kinds:?}"));
    assert_eq!(rest[answered].data["node"]["state"], "acked");
    assert!(rest.iter().all(|e| e.data["operationId"] == id.as_str()));
    let seqs: Vec<u64> = rest
        .iter()
        .map(|e| e.data["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");

    // A settled operation's stream is its state, and ends.
    let mut again = stream(&app, &format!("/api/v1/operations/{id}/events")).await;
    let only = again.read_to_end().await;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].data["operation"]["state"], "succeeded");
}

#[tokio::test]
async fn the_stream_of_everything_follows_every_operation_and_filters_by_ip_and_app() {
    let eureka = EurekaDouble::with_order_and_payment().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(
        config(&eureka, vec![node.address()]).route("PAYMENT-SERVICE", &["GATEWAY-PUBLIC"]),
    )
    .await;
    let mut everything = stream(&app, "/api/v1/events").await;
    let mut orders = stream(&app, "/api/v1/events?app=order-service").await;
    let mut payments_ip = stream(&app, "/api/v1/events?ip=10.0.0.7&app=").await;

    for path in [
        "/api/v1/instances/10.0.0.5/offline?wait=true",
        "/api/v1/instances/10.0.0.7/offline?wait=true",
    ] {
        assert_eq!(app.post(path).await.status(), 200);
    }

    // Everything: started, the node, settled of the first, then of the second.
    let mut settled_ips = Vec::new();
    while settled_ips.len() < 2 {
        let event = everything.next().await.unwrap();
        if event.event == "settled" {
            settled_ips.push(event.data["operation"]["target"]["ip"].clone());
        }
    }
    assert_eq!(settled_ips, ["10.0.0.5", "10.0.0.7"]);

    // Filtered: each sees its own operation only, from its start to its settle.
    for (reader, ip) in [(&mut orders, "10.0.0.5"), (&mut payments_ip, "10.0.0.7")] {
        let mut kinds = Vec::new();
        loop {
            let event = reader.next().await.unwrap();
            let target = event.data["operation"]["target"]["ip"].clone();
            if event.event != "node" {
                assert_eq!(target, ip, "{event:?}");
            }
            kinds.push(event.event.clone());
            if event.event == "settled" {
                break;
            }
        }
        assert_eq!(kinds, ["started", "node", "settled"]);
    }
    // The payment operation was skipped: the next event of the orders' stream is the online.
    assert_eq!(
        app.post("/api/v1/instances/10.0.0.5/online?wait=true")
            .await
            .status(),
        200
    );
    let next = orders.next().await.unwrap();
    assert_eq!(next.event, "started");
    assert_eq!(next.data["operation"]["action"], "online");
}

#[tokio::test]
async fn a_reader_that_reads_nothing_holds_no_drain_back() {
    let eureka = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let app = TestApp::spawn(config(&eureka, vec![node.address()])).await;
    // Opened, never read: its events pile up in the bus's ring, not in front of a drain.
    let _unread: Vec<reqwest::Response> =
        futures::future::join_all((0..4).map(|_| app.get("/api/v1/events"))).await;
    for round in 0..20 {
        let action = if round % 2 == 0 { "offline" } else { "online" };
        let response = app
            .post(&format!("/api/v1/instances/10.0.0.5/{action}?wait=true"))
            .await;
        assert_eq!(response.status(), 200, "round {round}");
    }
    // Every operation reached the node (counted by operation: on a busy machine an answer
    // slower than the attempt's timeout is sent again, which the protocol allows).
    let operations: std::collections::HashSet<String> = node
        .received()
        .iter()
        .map(|received| received.body["operationId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(operations.len(), 20);
}

#[tokio::test]
async fn the_streams_are_behind_the_caller_check_and_refuse_bad_input() {
    let eureka = EurekaDouble::with_order_service().await;
    let app = TestApp::spawn(
        TestConfig::eureka(&[eureka.url()]).security(
            "allow = [\"127.0.0.0/8\"]\ntokens = [{ principal = \"ops\", token = \"events-token-0123456789\" }]",
        ),
    )
    .await;
    for path in [
        "/api/v1/events",
        "/api/v1/operations/op_01JD3T0Q9K6N5ZV7X4B2C8M1EA/events",
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 401, "{path}");
    }
    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(app.url(path))
            .bearer_auth("events-token-0123456789")
            .send()
    };
    let response = get("/api/v1/operations/op_01JD3T0Q9K6N5ZV7X4B2C8M1EA/events")
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "operation_not_found");
    let response = get("/api/v1/operations/op_nope/events").await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "invalid_id");
    let response = get("/api/v1/events?ip=not-an-ip").await.unwrap();
    assert_eq!(error_code(response).await, "invalid_ip");
    let response = get("/api/v1/events?since=1").await.unwrap();
    assert_eq!(response.status(), 400);
    let response = get("/api/v1/events").await.unwrap();
    assert_eq!(response.status(), 200);
}

/// A console left open on the stream of everything does not hold a restart: the stream ends
/// when the service stops, and the stop is clean.
#[tokio::test]
async fn an_open_stream_ends_when_the_service_stops_and_holds_no_stop_back() {
    let eureka = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let mut app = TestApp::spawn_process(config(&eureka, vec![node.address()])).await;
    let mut everything = stream(&app, "/api/v1/events").await;
    app.terminate();
    assert!(everything.next().await.is_none(), "the stream ended");
    assert!(app.exited().await.success());
    let logs = app.logs().join("\n");
    assert!(!logs.contains("requests still open"), "{logs}");
    assert!(logs.contains("synchspeed stopped"), "{logs}");
}
