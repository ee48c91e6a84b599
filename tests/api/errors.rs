//! Every status code of the contract's table that is about the request itself, the error
//! body's shape, the request id, and the service endpoints.

use serde_json::Value;

use crate::helpers::{TestApp, TestConfig, error_code};
use crate::support::eureka::EurekaDouble;
use crate::support::gateway::{Behaviour, GatewayNode};

async fn app_with_one_instance() -> (EurekaDouble, TestApp) {
    let eureka = EurekaDouble::with_order_service().await;
    let app = TestApp::spawn(TestConfig::eureka(&[eureka.url()]).server("body_limit = 1024")).await;
    (eureka, app)
}

#[tokio::test]
async fn bad_requests_are_400_with_a_precise_code_and_change_nothing() {
    let (eureka, app) = app_with_one_instance().await;
    let cases = [
        ("/api/v1/instances/10.0.0.999/offline", "invalid_ip"),
        ("/api/v1/instances/order-service/offline", "invalid_ip"),
        (
            "/api/v1/instances/10.0.0.5/offline?port=http",
            "invalid_option",
        ),
        (
            "/api/v1/instances/10.0.0.5/offline?port=70000",
            "invalid_option",
        ),
        (
            "/api/v1/instances/10.0.0.5/offline?wait=true&timeout=soon",
            "invalid_duration",
        ),
        (
            "/api/v1/instances/10.0.0.5/offline?forcefully=true",
            "invalid_option",
        ),
        (
            "/api/v1/instances/10.0.0.5/offline?wait=maybe",
            "invalid_option",
        ),
        (
            "/api/v1/instances/10.0.0.5/offline?app=a%20b",
            "invalid_option",
        ),
    ];
    for (path, code) in cases {
        let response = app.post(path).await;
        assert_eq!(response.status(), 400, "{path}");
        assert!(response.headers().contains_key("x-request-id"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    let malformed = app
        .client
        .post(app.url("/api/v1/instances/10.0.0.5/offline"))
        .header("content-type", "application/json")
        .body("{\"wait\": tru")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(error_code(malformed).await, "invalid_json");
    let unknown_field = app
        .client
        .post(app.url("/api/v1/instances/10.0.0.5/offline"))
        .header("content-type", "application/json")
        .body("{\"prot\": 8080}")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_field.status(), 400);
    assert!(
        eureka.status_writes().is_empty(),
        "a bad request writes nothing"
    );
}

#[tokio::test]
async fn unknown_instances_operations_and_routes_are_404() {
    let (_eureka, app) = app_with_one_instance().await;
    let response = app.post("/api/v1/instances/10.9.9.9/offline").await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "instance_not_found");
    let response = app.get("/api/v1/instances/10.9.9.9").await;
    assert_eq!(response.status(), 404);
    let response = app
        .get("/api/v1/operations/op_01JD3T0Q9K6N5ZV7X4B2C8M1EA")
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "operation_not_found");
    let response = app.get("/api/v1/operations/not-an-id").await;
    assert_eq!(response.status(), 400);
    let response = app.get("/api/v1/nothing-here").await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "route_not_found");
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let (eureka, app) = app_with_one_instance().await;
    let reason = "x".repeat(4096);
    let response = app
        .client
        .post(app.url("/api/v1/instances/10.0.0.5/offline"))
        .body(format!("{{\"reason\": \"{reason}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(error_code(response).await, "payload_too_large");
    assert!(eureka.status_writes().is_empty());
}

#[tokio::test]
async fn past_the_in_flight_cap_callers_get_429_with_retry_after() {
    let hanging = GatewayNode::start(Behaviour::Hang).await;
    let eureka = EurekaDouble::with_order_service().await;
    eureka.register(
        "ORDER-SERVICE",
        "10.0.0.6:order-service:8080",
        "10.0.0.6",
        8080,
        "UP",
    );
    let app = TestApp::spawn(
        TestConfig::eureka(&[eureka.url()])
            .nodes("EDGE", vec![hanging.address()])
            .route("ORDER-SERVICE", &["EDGE"])
            .gateway("timeout = \"20s\"\nattempts = 1")
            .drain("max_in_flight = 1"),
    )
    .await;

    assert_eq!(
        app.post("/api/v1/instances/10.0.0.5/offline")
            .await
            .status(),
        202
    );
    let response = app.post("/api/v1/instances/10.0.0.6/offline").await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(error_code(response).await, "too_many_operations");
    // Nothing half-done: the refused request wrote nothing.
    assert_eq!(
        eureka
            .status("ORDER-SERVICE", "10.0.0.6:order-service:8080")
            .as_deref(),
        Some("UP")
    );
}

#[tokio::test]
async fn request_ids_are_echoed_when_sane_and_replaced_when_not() {
    let (_eureka, app) = app_with_one_instance().await;
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "deploy-4711")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "deploy-4711");
    let hostile = "a".repeat(300);
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", hostile.as_str())
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(id, hostile);
    assert_eq!(id.len(), 26, "a fresh ULID");
}

#[tokio::test]
async fn health_metrics_and_openapi_are_served() {
    let (_eureka, app) = app_with_one_instance().await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
    app.post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;

    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("synchspeed_operations_total{action=\"offline\",state=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("route=\"/api/v1/instances/{ip}/offline\""),
        "{metrics}"
    );
    // The offline went through every step once.
    for step in ["queued", "plan", "journal", "registry", "gateways"] {
        let count =
            format!("synchspeed_operation_step_duration_seconds_count{{step=\"{step}\"}} 1");
        assert!(metrics.contains(&count), "{count} in {metrics}");
    }

    let openapi: Value = app.get_json("/api/v1/openapi.json").await;
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/instances/{ip}/offline",
        "/api/v1/instances/{ip}/online",
        "/api/v1/instances/{ip}",
        "/api/v1/operations",
        "/api/v1/operations/{id}",
        "/api/v1/offline",
        "/readyz",
    ] {
        assert!(
            openapi["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    let responses = &openapi["paths"]["/api/v1/instances/{ip}/offline"]["post"]["responses"];
    for code in [
        "200", "202", "400", "401", "403", "404", "413", "429", "502", "503", "504",
    ] {
        assert!(
            responses.get(code).is_some(),
            "offline does not document {code}"
        );
    }
}

#[tokio::test]
async fn the_operation_list_filters_and_rejects_bad_filters() {
    let (eureka, app) = app_with_one_instance().await;
    eureka.register("BILLING", "10.0.0.7:billing:9090", "10.0.0.7", 9090, "UP");
    app.post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    app.post("/api/v1/instances/10.0.0.7/offline?wait=true")
        .await;
    app.post("/api/v1/instances/10.0.0.5/online?wait=true")
        .await;

    let list = |query: &'static str| {
        let app = &app;
        async move {
            let body: Value = app.get_json(&format!("/api/v1/operations{query}")).await;
            body["operations"].as_array().unwrap().clone()
        }
    };
    let all = list("").await;
    assert_eq!(all.len(), 3);
    assert_eq!(all[0]["action"], "online", "newest first");
    assert_eq!(list("?ip=10.0.0.5").await.len(), 2);
    assert_eq!(list("?app=billing").await.len(), 1);
    assert_eq!(list("?state=succeeded&limit=1").await.len(), 1);
    // A batch is found by each instance it touched, not only by its first target.
    let batch = app
        .post_json(
            "/api/v1/operations",
            &serde_json::json!({"action": "online", "wait": true,
                "targets": [{"ip": "10.0.0.5"}, {"ip": "10.0.0.7"}]}),
        )
        .await;
    assert_eq!(batch.status(), 200);
    assert_eq!(list("?ip=10.0.0.7").await.len(), 2);
    assert_eq!(list("?app=billing").await.len(), 2);
    for bad in [
        "?limit=0",
        "?limit=100000",
        "?state=done",
        "?ip=x",
        "?colour=red",
    ] {
        assert_eq!(
            app.get(&format!("/api/v1/operations{bad}")).await.status(),
            400,
            "{bad}"
        );
    }
}
