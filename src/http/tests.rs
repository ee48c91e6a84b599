//! One room past 500 lines: every test calls the same router over the same doubles.
//!
//! The routes in process, with `tower::ServiceExt::oneshot` and a faked peer address: every
//! failure becomes the one JSON envelope with its status and code, whatever layer refused it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use super::{AppState, router};
use crate::config::Settings;
use crate::domain::Status;
use crate::telemetry::Metrics;
use crate::testing::{Answer, Harness, MemoryRegistry, RecordingNotifier, harness};

/// The router over the in-memory doubles, and the doubles.
struct Served {
    router: axum::Router,
    registry: Arc<MemoryRegistry>,
    notifier: Arc<RecordingNotifier>,
    failing: Arc<crate::testing::FailingStore>,
    _dir: tempfile::TempDir,
}

/// The routes of the orchestrator `h`, with `security` as the `[security]` table, called
/// from `peer`.
fn serve(h: Harness, security: &str, peer: &str) -> Served {
    let settings = Settings::from_toml(&format!("[security]\n{security}")).unwrap();
    let state = AppState {
        orchestrator: Arc::new(h.orchestrator),
        security: Arc::new(settings.security),
        metrics: Arc::new(Metrics::new()),
        body_limits: super::BodyLimits {
            bytes: settings.server.body_limit,
            time: settings.server.body_read_timeout,
        },
        cluster: None,
    };
    let peer: SocketAddr = peer.parse().unwrap();
    Served {
        router: router(state).layer(MockConnectInfo(peer)),
        registry: h.registry,
        notifier: h.notifier,
        failing: h.failing,
        _dir: h._dir,
    }
}

const LOOPBACK: &str = "allow = [\"127.0.0.0/8\"]";

async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    send(router, method, uri, token, None).await
}

async fn send(
    router: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    json: Option<Value>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = match json {
        Some(json) => {
            request = request.header("content-type", "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let response = router
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, json, headers)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}

#[tokio::test]
async fn a_caller_outside_the_allowed_ranges_gets_403_in_the_envelope() {
    let h = serve(harness().await, LOOPBACK, "10.9.9.9:40000");
    let (status, body, headers) = call(
        &h.router,
        "POST",
        "/api/v1/instances/10.0.0.5/offline",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&body), "forbidden");
    assert!(headers.contains_key("x-request-id"));
    assert!(h.registry.writes().is_empty(), "nothing changed");
}

#[tokio::test]
async fn tokens_are_required_when_configured() {
    let security =
        format!("{LOOPBACK}\ntokens = [{{ principal = \"ci\", token = \"0123456789abcdef\" }}]");
    let h = serve(harness().await, &security, "127.0.0.1:40000");
    let (status, body, headers) = call(&h.router, "GET", "/api/v1/offline", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "unauthorized");
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, ..) = call(
        &h.router,
        "GET",
        "/api/v1/offline",
        Some("wrong-token-0123456"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, ..) = call(
        &h.router,
        "GET",
        "/api/v1/offline",
        Some("0123456789abcdef"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn each_failure_has_its_status_and_code() {
    let h = serve(harness().await, LOOPBACK, "127.0.0.1:40000");
    let (status, body, _) = call(
        &h.router,
        "POST",
        "/api/v1/instances/10.0.0.300/offline",
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_ip")
    );
    let (status, body, _) = call(
        &h.router,
        "POST",
        "/api/v1/instances/10.0.0.99/offline",
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "instance_not_found")
    );
    let (status, body, _) = call(&h.router, "GET", "/api/v1/nowhere", None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "route_not_found")
    );
    let (status, body, _) = call(&h.router, "DELETE", "/api/v1/offline", None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );

    h.registry.answer("b", Answer::Refuse);
    let (status, body, _) = call(
        &h.router,
        "POST",
        "/api/v1/instances/10.0.0.5/offline",
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_GATEWAY, "registry_refused")
    );
    assert_eq!(body["operation"]["state"], "failed", "{body}");
    assert_eq!(body["operation"]["error"]["code"], "registry_refused");
    assert_eq!(h.registry.status_of("a"), Status::Up, "put back");

    h.registry.answer("b", Answer::TimedOut);
    h.registry.answer("a", Answer::TimedOut);
    let (status, body, _) = call(
        &h.router,
        "POST",
        "/api/v1/instances/10.0.0.5/offline",
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "registry_unavailable")
    );
    assert_eq!(body["operation"]["error"]["code"], "registry_unavailable");
    assert!(
        h.notifier.heard().is_empty(),
        "no gateway was told anything"
    );
}

#[tokio::test]
async fn an_accepted_offline_names_its_operation_and_its_origin() {
    let h = serve(harness().await, LOOPBACK, "127.0.0.1:40000");
    let (status, body, headers) = call(
        &h.router,
        "POST",
        "/api/v1/instances/10.0.0.6/offline",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = body["id"].as_str().unwrap();
    assert_eq!(headers["location"], format!("/api/v1/operations/{id}"));
    assert_eq!(body["origin"], "api");
    assert_eq!(body["caller"]["addr"], "127.0.0.1");
}

/// Options mean the same on every route, in the query or the body: a batch's `dry_run` in
/// the query plans and changes nothing, and an option nobody knows is refused, not ignored.
#[tokio::test]
async fn a_batch_takes_its_options_from_the_query_too() {
    let h = serve(harness().await, LOOPBACK, "127.0.0.1:40000");
    let batch = serde_json::json!({"action": "offline", "targets": [{"ip": "10.0.0.5"}]});

    let (status, body, _) = send(
        &h.router,
        "POST",
        "/api/v1/operations?dry_run=true",
        None,
        Some(batch.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "planned");
    assert!(h.registry.writes().is_empty(), "a dry run changes nothing");
    assert!(h.notifier.heard().is_empty());

    let (status, body, _) = send(
        &h.router,
        "POST",
        "/api/v1/operations?bogus=1",
        None,
        Some(batch.clone()),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_option"),
        "{body}"
    );
    assert!(h.registry.writes().is_empty());

    // The body wins over the query, as on the instance calls.
    let mut real = batch;
    real["dry_run"] = false.into();
    let (status, body, _) = send(
        &h.router,
        "POST",
        "/api/v1/operations?dry_run=true",
        None,
        Some(real),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(h.registry.status_of("a"), Status::OutOfService);
}

async fn send_with(
    router: &axum::Router,
    request: Request<Body>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        headers,
    )
}

/// A page on another site, opened in a browser on an allowed host, cannot change anything:
/// not with a form, not with `fetch`, not under a rebound name.
#[tokio::test]
async fn browser_requests_from_elsewhere_change_nothing() {
    let h = serve(harness().await, LOOPBACK, "127.0.0.1:40000");
    let offline = "/api/v1/instances/10.0.0.5/offline";
    let form = Request::builder()
        .method("POST")
        .uri(offline)
        .header("host", "127.0.0.1:8080")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("reason=x"))
        .unwrap();
    let (status, body, _) = send_with(&h.router, form).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let text_plain = Request::builder()
        .method("POST")
        .uri(offline)
        .header("content-type", "text/plain")
        .body(Body::from("{\"reason\":\"x\"}"))
        .unwrap();
    let (status, ..) = send_with(&h.router, text_plain).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let cross_origin = Request::builder()
        .method("POST")
        .uri(offline)
        .header("host", "127.0.0.1:8080")
        .header("origin", "https://evil.example")
        .body(Body::empty())
        .unwrap();
    let (status, body, _) = send_with(&h.router, cross_origin).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "forbidden"));
    let rebound = Request::builder()
        .method("POST")
        .uri(offline)
        .header("host", "evil.example:8080")
        .header("origin", "http://evil.example:8080")
        .body(Body::empty())
        .unwrap();
    let (status, ..) = send_with(&h.router, rebound).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(h.registry.writes().is_empty(), "nothing was changed");

    // The service's own origin, and a program with no Origin at all, are served.
    let own = Request::builder()
        .method("POST")
        .uri("/api/v1/instances/10.0.0.5/offline?dry_run=true")
        .header("host", "127.0.0.1:8080")
        .header("origin", "http://127.0.0.1:8080")
        .body(Body::empty())
        .unwrap();
    let (status, _, headers) = send_with(&h.router, own).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-store");
}

#[tokio::test]
async fn loose_values_and_aliased_ids_are_refused() {
    let h = serve(harness().await, LOOPBACK, "127.0.0.1:40000");
    let (status, body, _) = call(
        &h.router,
        "POST",
        "/api/v1/instances/10.0.0.5/offline?port=0",
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_option"),
        "{body}"
    );
    let (status, body, _) = call(
        &h.router,
        "POST",
        "/api/v1/instances/10.0.0.5/offline?wait=true&timeout=1ns",
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_duration"),
        "{body}"
    );
    assert!(h.registry.writes().is_empty());
    let (status, _, _) = call(&h.router, "GET", "/api/v1/operations?ip=&state=&app=", None).await;
    assert_eq!(status, StatusCode::OK, "an empty filter is no filter");

    let (_, planned, _) = call(
        &h.router,
        "POST",
        "/api/v1/instances/10.0.0.5/offline?dry_run=true",
        None,
    )
    .await;
    let id = planned["id"].as_str().unwrap().to_owned();
    let (status, fetched, _) =
        call(&h.router, "GET", &format!("/api/v1/operations/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "a dry run's id can be fetched");
    assert_eq!(fetched["state"], "planned");
    let lower = format!("op_{}", id[3..].to_lowercase());
    let (status, body, _) = call(
        &h.router,
        "GET",
        &format!("/api/v1/operations/{lower}"),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_id")
    );
    let overflow = format!("op_8{}", &id[4..]);
    let (status, ..) = call(
        &h.router,
        "GET",
        &format!("/api/v1/operations/{overflow}"),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{overflow} is no spelling of an id"
    );
}

#[tokio::test]
async fn made_up_methods_add_no_series_and_403_names_no_range() {
    let h = serve(
        harness().await,
        "allow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.1/32\"]",
        "127.0.0.1:40000",
    );
    for n in 0..20 {
        let method = format!("BREW{n}");
        call(&h.router, &method, "/healthz", None).await;
    }
    let (status, body, _) = call(&h.router, "GET", "/api/v1/offline", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("127.0.0.1"), "{message}");
    assert!(
        !message.contains("/32"),
        "the denied range is not told: {message}"
    );
    let response = h
        .router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(!text.contains("BREW"), "{text}");
    assert!(text.contains("method=\"other\""), "{text}");
}

/// A store that cannot be written (a full disk): a precise 503 naming the store, nothing
/// changed, nobody told, and `/readyz` not ready until it takes writes again.
#[tokio::test]
async fn a_store_that_cannot_be_written_is_a_503_and_readyz_says_so() {
    let h = serve(harness().await, LOOPBACK, "127.0.0.1:40000");
    h.failing
        .writes_fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, body, _) = call(
        &h.router,
        "POST",
        "/api/v1/instances/10.0.0.5/offline",
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("store"),
        "{body}"
    );
    assert!(
        h.registry.writes().is_empty(),
        "the registry was not touched"
    );
    assert!(h.notifier.heard().is_empty());
    let (status, body, _) = call(&h.router, "GET", "/readyz", None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
    );

    h.failing
        .writes_fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, ..) = call(&h.router, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, ..) = call(
        &h.router,
        "POST",
        "/api/v1/instances/10.0.0.5/offline",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn every_error_is_the_envelope_and_names_the_field() {
    let h = serve(harness().await, LOOPBACK, "127.0.0.1:40000");
    // %FF is no UTF-8 once decoded.
    let (status, body, headers) = call(&h.router, "GET", "/api/v1/instances/%FF", None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_path"),
        "{body}"
    );
    assert!(headers.contains_key("x-request-id"));
    let (status, body, _) = call(
        &h.router,
        "POST",
        "/api/v1/instances/10.0.0.5/offline?port=-1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("`port`"), "names the field: {message}");
    assert!(!message.contains("invalid digit"), "{message}");
    let unknown = serde_json::json!({"prot": 8080});
    let (status, body, _) = send(
        &h.router,
        "POST",
        "/api/v1/instances/10.0.0.5/offline",
        None,
        Some(unknown),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_option"),
        "as in the query: {body}"
    );
    let (status, body, _) = call(&h.router, "GET", "/api/v1/operations?limit=lots", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`limit`"),
        "{body}"
    );
    assert!(h.registry.writes().is_empty());
}
