//! The Eureka backend against the double: cache refresh by delta and by hash mismatch, base
//! paths, headers, failover, and registry data that does not parse.

use serde_json::Value;

use crate::helpers::{TestApp, TestConfig, eventually};
use crate::support::eureka::{EurekaDouble, Mode};

#[tokio::test]
async fn new_registrations_arrive_through_deltas() {
    let eureka = EurekaDouble::start().await;
    eureka.register("ORDER-SERVICE", "a", "10.0.0.5", 8080, "UP");
    let app = TestApp::spawn(TestConfig::eureka(&[eureka.url()])).await;
    assert_eq!(app.get("/api/v1/instances/10.0.0.9").await.status(), 404);

    eureka.register("ORDER-SERVICE", "b", "10.0.0.9", 8080, "UP");
    // A read never forces a refresh: only the background delta can make this appear.
    eventually("the delta brings the new instance", || async {
        app.get("/api/v1/instances/10.0.0.9").await.status() == 200
    })
    .await;
    assert!(
        eureka
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/apps/delta"))
    );
}

#[tokio::test]
async fn a_hash_mismatch_after_a_delta_triggers_a_full_fetch() {
    let eureka = EurekaDouble::start().await;
    eureka.register("ORDER-SERVICE", "a", "10.0.0.5", 8080, "UP");
    let app = TestApp::spawn(TestConfig::eureka(&[eureka.url()])).await;

    // Not in any delta: the copy drifts, and only the apps__hashcode check can notice.
    eureka.register_silently("ORDER-SERVICE", "hidden", "10.0.0.10", 8080);
    eventually("the full fetch finds the hidden instance", || async {
        app.get("/api/v1/instances/10.0.0.10").await.status() == 200
    })
    .await;
    let full_fetches = eureka
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/apps"))
        .count();
    assert!(
        full_fetches >= 2,
        "the first load and the reconciling fetch"
    );
}

#[tokio::test]
async fn netflix_style_v2_base_paths_work() {
    let eureka = EurekaDouble::start_at("/eureka/v2").await;
    eureka.register("ORDER-SERVICE", "a", "10.0.0.5", 8080, "UP");
    let app = TestApp::spawn(TestConfig::eureka(&[eureka.url()])).await;
    assert_eq!(
        app.post("/api/v1/instances/10.0.0.5/offline?wait=true")
            .await
            .status(),
        200
    );
    assert_eq!(
        eureka.status("ORDER-SERVICE", "a").as_deref(),
        Some("OUT_OF_SERVICE")
    );
}

#[tokio::test]
async fn every_call_asks_for_json_and_registry_reads_accept_gzip() {
    let eureka = EurekaDouble::start().await;
    eureka.register("ORDER-SERVICE", "a", "10.0.0.5", 8080, "UP");
    // Without Accept: json the server answers XML, which synchspeed must never need.
    let xml = reqwest::Client::new()
        .get(format!("{}/apps", eureka.url()))
        .header("accept", "*/*")
        .send()
        .await
        .unwrap();
    assert!(xml.text().await.unwrap().starts_with("<applications>"));

    let app = TestApp::spawn(TestConfig::eureka(&[eureka.url()])).await;
    assert_eq!(
        app.post("/api/v1/instances/10.0.0.5/offline?wait=true")
            .await
            .status(),
        200
    );
    let requests = eureka.requests();
    let ours: Vec<_> = requests.iter().filter(|r| r.accept != "*/*").collect();
    assert!(ours.iter().all(|r| r.accept.contains("json")), "{ours:?}");
    assert!(
        ours.iter()
            .filter(|r| r.path.ends_with("/apps") || r.path.ends_with("/apps/delta"))
            .all(|r| r.accept_encoding.contains("gzip"))
    );
}

#[tokio::test]
async fn reads_fail_over_past_peers_that_redirect_or_are_not_ready() {
    for mode in [Mode::Redirect, Mode::NotReady] {
        let sick = EurekaDouble::start().await;
        let healthy = EurekaDouble::start().await;
        for eureka in [&sick, &healthy] {
            eureka.register("ORDER-SERVICE", "a", "10.0.0.5", 8080, "UP");
        }
        sick.set_mode(mode);
        let app = TestApp::spawn(TestConfig::eureka(&[sick.url(), healthy.url()])).await;
        let view: Value = app.get_json("/api/v1/instances/10.0.0.5").await;
        assert_eq!(view["instances"][0]["instanceId"], "a", "{mode:?}");
    }
}

#[tokio::test]
async fn a_registry_answering_garbage_is_not_trusted_and_nothing_is_written() {
    let eureka = EurekaDouble::start().await;
    eureka.register("ORDER-SERVICE", "a", "10.0.0.5", 8080, "UP");
    eureka.set_mode(Mode::Garbage);
    let app = TestApp::spawn_unready(TestConfig::eureka(&[eureka.url()])).await;
    eventually("readiness reports the broken registry", || async {
        let response = app.get("/readyz").await;
        let body: Value = response.json().await.unwrap();
        body["error"]["code"] == "registry_unavailable"
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("the answer does not parse"))
    })
    .await;
    let response = app.post("/api/v1/instances/10.0.0.5/offline").await;
    assert_eq!(response.status(), 503);
    assert!(eureka.status_writes().is_empty());

    // Once the registry answers properly again, the service recovers by itself.
    eureka.set_mode(Mode::Normal);
    app.wait_ready().await;
    assert_eq!(
        app.post("/api/v1/instances/10.0.0.5/offline?wait=true")
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_peer_that_stalls_in_the_middle_of_an_answer_is_named_and_passed_over() {
    let stalled = EurekaDouble::start().await;
    stalled.register("ORDER-SERVICE", "a", "10.0.0.5", 8080, "UP");
    stalled.set_mode(Mode::Stalled);
    let alone = TestApp::spawn_unready(TestConfig::eureka(&[stalled.url()])).await;
    eventually("readiness says the peer stopped answering", || async {
        let body: Value = alone.get("/readyz").await.json().await.unwrap();
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no answer within"))
    })
    .await;

    let good = EurekaDouble::start().await;
    good.register("ORDER-SERVICE", "a", "10.0.0.5", 8080, "UP");
    let app = TestApp::spawn(TestConfig::eureka(&[stalled.url(), good.url()])).await;
    assert_eq!(app.get("/api/v1/instances/10.0.0.5").await.status(), 200);
}

#[tokio::test]
async fn our_own_write_racing_a_delta_does_not_refetch_the_whole_registry() {
    let eureka = EurekaDouble::start().await;
    eureka.register("ORDER-SERVICE", "a", "10.0.0.5", 8080, "UP");
    // An old registration: no delta carries it any more.
    eureka.forget_delta();
    let app =
        TestApp::spawn(TestConfig::eureka(&[eureka.url()]).eureka_settings("100ms", "10s")).await;
    let full_fetches = || {
        eureka
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/apps"))
            .count()
    };
    assert_eq!(full_fetches(), 1);

    // A delta computed before the write, answered after it: its hash code counts the
    // instance UP while the copy, told of the write, has it OUT_OF_SERVICE.
    eureka.hold_deltas();
    eventually("a delta is computed and held", || async {
        eureka.deltas_waiting() == 1
    })
    .await;
    let offline = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(offline.status(), 200);
    let deltas_before = eureka
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/delta"))
        .count();
    eureka.release_deltas();
    eventually("a later delta is asked for", || async {
        eureka
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/delta"))
            .count()
            > deltas_before
    })
    .await;
    assert_eq!(
        full_fetches(),
        1,
        "the mismatch our own write caused is not a drift"
    );
    let instance = app.get_json("/api/v1/instances/10.0.0.5").await;
    assert_eq!(
        instance["instances"][0]["status"], "OUT_OF_SERVICE",
        "{instance}"
    );
}
