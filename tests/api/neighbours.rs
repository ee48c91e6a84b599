//! What other peers and other data cannot do to an allowed caller: probers holding
//! connections, a page under a rebound name reading the API, an operation or a list too
//! large to carry, and an HTTP/2 client with prior knowledge getting a closed connection.

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{TestApp, TestConfig, error_code, eventually};
use crate::support::eureka::EurekaDouble;
use crate::support::gateway::{Behaviour, GatewayNode};

async fn service(config: impl FnOnce(TestConfig) -> TestConfig) -> (EurekaDouble, TestApp) {
    let eureka = EurekaDouble::with_order_service().await;
    let app = TestApp::spawn(config(TestConfig::eureka(&[eureka.url()]))).await;
    (eureka, app)
}

/// A connection from `from` (a loopback address of its own) that sends half a request head
/// and nothing more.
async fn unfinished_head(from: &str, port: u16) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .ok()?;
    Some(stream)
}

#[tokio::test]
async fn probers_holding_connections_never_use_up_what_allowed_callers_need() {
    let node = GatewayNode::start(Behaviour::Ack).await;
    let (eureka, app) = service(|config| {
        config
            .security("allow = [\"127.0.0.1/32\"]")
            .server("max_connections = 8\nmax_probe_connections = 4\nheader_read_timeout = \"30s\"")
            .route("ORDER-SERVICE", &["GATEWAY-PUBLIC"])
            .nodes("GATEWAY-PUBLIC", vec![node.address()])
    })
    .await;
    // Strangers inside `security.probes` (everyone, by default) leave heads unfinished, far
    // more of them than either budget.
    let mut held = Vec::new();
    for i in 0..40 {
        let from = format!("127.0.0.{}", 2 + i % 5);
        held.extend(unfinished_head(&from, app.port()).await);
    }
    eventually("the probers' budget is full", || async {
        let metrics = app.get("/metrics").await.text().await.unwrap();
        metrics.contains("synchspeed_connections_refused_total{why=\"busy\"}")
    })
    .await;
    let offline = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(offline.status(), 200, "{}", offline.text().await.unwrap());
    assert_eq!(
        eureka
            .status("ORDER-SERVICE", "10.0.0.5:order-service:8080")
            .as_deref(),
        Some("OUT_OF_SERVICE")
    );
    drop(held);
}

#[tokio::test]
async fn a_read_under_a_name_the_service_does_not_have_is_refused() {
    let (_eureka, app) = service(|config| {
        config.security(
            "allow = [\"127.0.0.0/8\"]\nhostnames = [\"synchspeed.internal\", \"*.svc.cluster.local\"]",
        )
    })
    .await;
    let read = |host: &'static str| {
        app.client
            .get(app.url("/api/v1/offline"))
            .header("host", host)
            .send()
    };
    // A page at http://evil.example:PORT/ui, its name rebound to the service: a same-origin
    // GET carries no Origin and no Sec-Fetch-*.
    let rebound = read("evil.example").await.unwrap();
    assert_eq!(rebound.status(), 403);
    let body: Value = rebound.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("security.hostnames"),
        "{body}"
    );
    for own in [
        "127.0.0.1",
        "localhost",
        "synchspeed.internal",
        "synchspeed.default.svc.cluster.local",
    ] {
        assert_eq!(read(own).await.unwrap().status(), 200, "{own}");
    }
    // The probes are for load balancers, whatever name they use.
    let probe = app
        .client
        .get(app.url("/healthz"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
}

#[tokio::test]
async fn an_operation_past_its_bounds_is_refused_before_anything_changes() {
    let node = GatewayNode::start(Behaviour::Ack).await;
    let (eureka, app) = service(|config| {
        config
            .drain("max_groups = 2")
            .route("ORDER-SERVICE", &["GW-A", "GW-B", "GW-C"])
            .nodes("GW-A", vec![node.address()])
    })
    .await;
    for path in [
        "/api/v1/instances/10.0.0.5/offline",
        "/api/v1/instances/10.0.0.5/offline?dry_run=true",
    ] {
        let response = app.post(path).await;
        assert_eq!(response.status(), 422, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "plan_too_large", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("drain.max_groups (2)"),
            "{body}"
        );
    }
    assert_eq!(
        eureka
            .status("ORDER-SERVICE", "10.0.0.5:order-service:8080")
            .as_deref(),
        Some("UP")
    );
    assert!(node.received().is_empty());
    let list = app.get_json("/api/v1/operations").await;
    assert_eq!(list["operations"].as_array().unwrap().len(), 0, "{list}");
}

#[tokio::test]
async fn the_audit_trail_is_read_page_by_page() {
    let node = GatewayNode::start(Behaviour::Ack).await;
    let (_eureka, app) = service(|config| {
        config
            .route("ORDER-SERVICE", &["GATEWAY-PUBLIC"])
            .nodes("GATEWAY-PUBLIC", vec![node.address()])
    })
    .await;
    for action in ["offline", "online", "offline"] {
        let response = app
            .post(&format!("/api/v1/instances/10.0.0.5/{action}?wait=true"))
            .await;
        assert_eq!(response.status(), 200);
    }
    let first = app.get_json("/api/v1/operations?limit=2").await;
    assert_eq!(first["operations"].as_array().unwrap().len(), 2, "{first}");
    let next = first["next"].as_str().unwrap_or_else(|| panic!("{first}"));
    assert_eq!(next, first["operations"][1]["id"]);
    let second = app
        .get_json(&format!("/api/v1/operations?limit=2&before={next}"))
        .await;
    assert_eq!(
        second["operations"].as_array().unwrap().len(),
        1,
        "{second}"
    );
    assert_eq!(second["operations"][0]["action"], "offline");
    assert!(second.get("next").is_none(), "the last page: {second}");
    let bad = app.get("/api/v1/operations?before=nonsense").await;
    assert_eq!(error_code(bad).await, "invalid_id");
}

#[tokio::test]
async fn an_http2_client_with_prior_knowledge_is_served() {
    let (_eureka, app) = service(|config| config).await;
    let url = app.url("/api/v1/offline");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--http2-prior-knowledge",
                "--max-time",
                "20",
                "--write-out",
                "\n%{http_version} %{http_code}",
                &url,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.ends_with("\n2 200"), "{stdout}");
    let body: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert!(body["instances"].is_array(), "{body}");
    // HTTP/1.1 on the same port is as before.
    assert_eq!(app.get("/api/v1/offline").await.status(), 200);
}
