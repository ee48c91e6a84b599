//! Who may call: CIDR allow/deny against the real TCP peer, trusted proxies, IPv4-mapped
//! peers on a dual-stack listener, bearer tokens.

use serde_json::Value;

use crate::helpers::{TestApp, TestConfig, error_code};
use crate::support::eureka::EurekaDouble;

const DRY_RUN: &str = "/api/v1/instances/10.0.0.5/offline?dry_run=true";

async fn dry_run_with(app: &TestApp, base: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.client.post(format!("{base}{DRY_RUN}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn denied_and_unlisted_callers_get_403_and_probes_stay_open() {
    let eureka = EurekaDouble::with_order_service().await;
    let app = TestApp::spawn(
        TestConfig::eureka(&[eureka.url()])
            .security("allow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.1/32\"]"),
    )
    .await;
    let response = app.post(DRY_RUN).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1")
    );
    // Reads of the API are guarded too; probes and metrics are not.
    assert_eq!(app.get("/api/v1/operations").await.status(), 403);
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/metrics").await.status(), 200);

    let empty = TestApp::spawn(TestConfig::eureka(&[eureka.url()]).security("allow = []")).await;
    assert_eq!(
        empty.post(DRY_RUN).await.status(),
        403,
        "an empty allow list allows nobody"
    );
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let eureka = EurekaDouble::with_order_service().await;
    let trusting = TestApp::spawn(
        TestConfig::eureka(&[eureka.url()])
            .security("allow = [\"10.0.0.0/8\"]\ntrusted_proxies = [\"127.0.0.1/32\"]"),
    )
    .await;
    let base = trusting.address.clone();
    let response = dry_run_with(&trusting, &base, &[("x-forwarded-for", "10.1.2.3")]).await;
    assert_eq!(response.status(), 200);
    let plan: Value = response.json().await.unwrap();
    assert_eq!(
        plan["caller"]["addr"], "10.1.2.3",
        "the audit trail names the real caller"
    );
    // A client forging an allowed address to the left of its real one gains nothing.
    let forged = dry_run_with(
        &trusting,
        &base,
        &[("x-forwarded-for", "10.1.2.3, 192.0.2.1")],
    )
    .await;
    assert_eq!(forged.status(), 403);
    // The proxy itself is not in the allow list.
    assert_eq!(trusting.post(DRY_RUN).await.status(), 403);
    let garbage = dry_run_with(
        &trusting,
        &base,
        &[("x-forwarded-for", "10.1.2.3, <script>")],
    )
    .await;
    assert_eq!(garbage.status(), 400);
    assert_eq!(error_code(garbage).await, "bad_forwarded_for");

    let untrusting =
        TestApp::spawn(TestConfig::eureka(&[eureka.url()]).security("allow = [\"10.0.0.0/8\"]"))
            .await;
    let base = untrusting.address.clone();
    let response = dry_run_with(&untrusting, &base, &[("x-forwarded-for", "10.1.2.3")]).await;
    assert_eq!(
        response.status(),
        403,
        "X-Forwarded-For from an untrusted peer is ignored"
    );
}

#[tokio::test]
async fn ipv4_callers_of_a_dual_stack_listener_are_judged_as_ipv4() {
    let eureka = EurekaDouble::with_order_service().await;
    let mut config = TestConfig::eureka(&[eureka.url()]).security("allow = [\"127.0.0.0/8\"]");
    config.listen = "[::]:0".into();
    let app = TestApp::spawn(config).await;
    let port = app.port();

    let response = dry_run_with(&app, &format!("http://127.0.0.1:{port}"), &[]).await;
    assert_eq!(response.status(), 200, "::ffff:127.0.0.1 is 127.0.0.1");
    let plan: Value = response.json().await.unwrap();
    assert_eq!(plan["caller"]["addr"], "127.0.0.1");
    let response = dry_run_with(&app, &format!("http://[::1]:{port}"), &[]).await;
    assert_eq!(response.status(), 403, "::1 is not in 127.0.0.0/8");
}

#[tokio::test]
async fn tokens_are_required_when_configured_and_name_the_principal() {
    let eureka = EurekaDouble::with_order_service().await;
    let app = TestApp::spawn(TestConfig::eureka(&[eureka.url()]).security(
        "allow = [\"127.0.0.0/8\"]\ntokens = [{ principal = \"deploy-platform\", token = \"0123456789abcdef0123\" }]",
    ))
    .await;
    let base = app.address.clone();

    let missing = dry_run_with(&app, &base, &[]).await;
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    let wrong = dry_run_with(
        &app,
        &base,
        &[("authorization", "Bearer 0123456789abcdef0124")],
    )
    .await;
    assert_eq!(wrong.status(), 401);
    let basic = dry_run_with(
        &app,
        &base,
        &[("authorization", "Basic MDEyMzQ1Njc4OWFiY2RlZjAxMjM=")],
    )
    .await;
    assert_eq!(basic.status(), 401);

    let right = dry_run_with(
        &app,
        &base,
        &[("authorization", "Bearer 0123456789abcdef0123")],
    )
    .await;
    assert_eq!(right.status(), 200);
    let plan: Value = right.json().await.unwrap();
    assert_eq!(plan["caller"]["principal"], "deploy-platform");
}
