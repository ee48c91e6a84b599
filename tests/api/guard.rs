//! `drain.min_up`: an offline that would leave an app with too few UP instances is refused,
//! nothing changed, unless forced, and then the operation says so.

use serde_json::Value;

use crate::helpers::{TestApp, TestConfig, error_code};
use crate::support::eureka::EurekaDouble;

/// Whether one of the operation's warnings starts so.
fn warns(operation: &Value, start: &str) -> bool {
    operation["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|w| w.as_str().is_some_and(|w| w.starts_with(start)))
}

#[tokio::test]
async fn the_last_instances_of_an_app_are_kept_unless_the_caller_forces_it() {
    let eureka = EurekaDouble::with_order_service().await;
    let second = "10.0.0.6:order-service:8080";
    eureka.register("ORDER-SERVICE", second, "10.0.0.6", 8080, "UP");
    let app = TestApp::spawn(
        TestConfig::eureka(&[eureka.url()]).tables("[drain.min_up]\n\"order-service\" = 1"),
    )
    .await;

    // One of two may go.
    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);

    // The last one may not: 409, nothing written.
    let writes = eureka.status_writes().len();
    let response = app.post("/api/v1/instances/10.0.0.6/offline").await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "min_up");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("ORDER-SERVICE")
            && message.contains("leave 0 of 1 UP")
            && message.contains("is 1"),
        "names the app and the numbers: {message}"
    );
    assert_eq!(eureka.status_writes().len(), writes, "nothing was changed");
    assert_eq!(
        eureka.status("ORDER-SERVICE", second).as_deref(),
        Some("UP")
    );

    // A dry run says what the guard would say, and refuses nothing.
    let planned: Value = app
        .post("/api/v1/instances/10.0.0.6/offline?dry_run=true")
        .await
        .json()
        .await
        .unwrap();
    assert!(warns(&planned, "drain.min_up would refuse"), "{planned}");

    // Forced, it goes, and the operation keeps that it was.
    let response = app
        .post("/api/v1/instances/10.0.0.6/offline?force=true&wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    assert!(warns(&operation, "forced past drain.min_up"), "{operation}");
    assert_eq!(
        eureka.status("ORDER-SERVICE", second).as_deref(),
        Some("OUT_OF_SERVICE")
    );
    let kept = app.operation(operation["id"].as_str().unwrap()).await;
    assert_eq!(kept["warnings"], operation["warnings"], "journaled with it");

    // An online is never refused.
    let response = app
        .post("/api/v1/instances/10.0.0.6/online?wait=true")
        .await;
    assert_ne!(error_code(response).await, "min_up");
}
