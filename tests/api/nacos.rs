//! One room past 500 lines: the Nacos registry's black-box tests, one per behaviour the issue
//! names, sharing one config helper.
//!
//! The `nacos` registry: against a real Nacos-compatible server (rnacos) with applications
//! registered over gRPC by the Nacos SDK as Spring Cloud Alibaba registers them, and against a
//! double of the official server for what rnacos lacks (3.x, the operator layer's memory,
//! token expiry, faults).

use serde_json::Value;

use crate::helpers::{TestApp, TestConfig, eventually, merge_lines};
use crate::support::gateway::{Behaviour, GatewayNode};
use crate::support::nacos_double::{Fault, Generation, NacosDouble};
use crate::support::rnacos::{App, Rnacos, consumer_sees, register_many, spring_instance};

fn config(servers: &[String], extra: &str) -> TestConfig {
    let mut config = TestConfig::eureka(&[]);
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    config.registry = Some(format!(
        "[registry]\nkind = \"nacos\"\n[registry.nacos]\nservers = [{}]\n{}\n",
        servers.join(", "),
        merge_lines("refresh = \"200ms\"\ntimeout = \"1s\"", extra)
    ));
    config
}

async fn enabled_on_rnacos(nacos: &Rnacos, service: &str, ip: &str, port: u16) -> bool {
    nacos.instance(service, ip, port).await["enabled"]
        .as_bool()
        .unwrap()
}

#[tokio::test]
async fn offline_and_online_keep_weight_and_metadata_tell_gateways_found_in_nacos_and_consumers_follow()
 {
    let nacos = Rnacos::start().await;
    let gateway = GatewayNode::start(Behaviour::Ack).await;
    let _order_a = App::register(
        &nacos,
        "order-service",
        spring_instance("10.0.0.5", 8080, 3.0),
    )
    .await;
    let _order_b = App::register(
        &nacos,
        "order-service",
        spring_instance("10.0.0.6", 8080, 1.0),
    )
    .await;
    let _gateway_app = App::register(
        &nacos,
        "gateway",
        spring_instance("127.0.0.1", gateway.port(), 1.0),
    )
    .await;
    let consumer = nacos.sdk().await;
    eventually("the consumer sees both instances", || async {
        consumer_sees(&consumer, "order-service").await == ["10.0.0.5:8080", "10.0.0.6:8080"]
    })
    .await;
    let app =
        TestApp::spawn(config(&[nacos.base()], "push = true").route("ORDER-SERVICE", &["GATEWAY"]))
            .await;

    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    let instance = &operation["instances"][0];
    assert_eq!(instance["app"], "ORDER-SERVICE");
    assert_eq!(instance["group"], "DEFAULT_GROUP");
    assert_eq!(instance["cluster"], "DEFAULT");
    assert_eq!(instance["registry"], "updated");
    assert_eq!(instance["peers"][0]["verifiedStatus"], "OUT_OF_SERVICE");
    assert_eq!(operation["gateways"][0]["node"], gateway.address());
    assert_eq!(operation["gateways"][0]["state"], "acked");
    assert_eq!(gateway.received().len(), 1);

    let shown = nacos.instance("order-service", "10.0.0.5", 8080).await;
    assert_eq!(shown["enabled"], false);
    assert_eq!(shown["weight"], 3.0, "the custom weight is kept: {shown}");
    assert_eq!(
        shown["metadata"]["preserved.register.source"],
        "SPRING_CLOUD"
    );
    assert_eq!(shown["metadata"]["version"], "1.4.2");
    eventually("the consumer stops seeing 10.0.0.5", || async {
        consumer_sees(&consumer, "order-service").await == ["10.0.0.6:8080"]
    })
    .await;
    let holds = app.get_json("/api/v1/offline").await;
    assert_eq!(
        holds["instances"].as_array().map(Vec::len),
        Some(1),
        "{holds}"
    );

    let response = app
        .post("/api/v1/instances/10.0.0.5/online?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let shown = nacos.instance("order-service", "10.0.0.5", 8080).await;
    assert_eq!(shown["enabled"], true);
    assert_eq!(shown["weight"], 3.0);
    assert_eq!(shown["metadata"]["version"], "1.4.2");
    eventually("the consumer sees 10.0.0.5 again", || async {
        consumer_sees(&consumer, "order-service").await == ["10.0.0.5:8080", "10.0.0.6:8080"]
    })
    .await;
    assert_eq!(gateway.received().len(), 2);
}

#[tokio::test]
async fn the_port_and_app_filters_pick_one_registration_of_an_ip() {
    let nacos = Rnacos::start().await;
    let _order = App::register(
        &nacos,
        "order-service",
        spring_instance("10.0.0.7", 8080, 1.0),
    )
    .await;
    let _order_admin = App::register(
        &nacos,
        "order-service",
        spring_instance("10.0.0.7", 8081, 1.0),
    )
    .await;
    let _payment = App::register(
        &nacos,
        "payment-service",
        spring_instance("10.0.0.7", 9090, 1.0),
    )
    .await;
    let app = TestApp::spawn(config(&[nacos.base()], "push = true")).await;

    let response = app
        .post("/api/v1/instances/10.0.0.7/offline?port=8081&wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    assert_eq!(operation["instances"].as_array().unwrap().len(), 1);
    assert!(!enabled_on_rnacos(&nacos, "order-service", "10.0.0.7", 8081).await);
    assert!(enabled_on_rnacos(&nacos, "order-service", "10.0.0.7", 8080).await);
    assert!(enabled_on_rnacos(&nacos, "payment-service", "10.0.0.7", 9090).await);

    let response = app
        .post("/api/v1/instances/10.0.0.7/offline?app=payment-service&wait=true")
        .await;
    assert_eq!(response.status(), 200);
    assert!(!enabled_on_rnacos(&nacos, "payment-service", "10.0.0.7", 9090).await);
    assert!(enabled_on_rnacos(&nacos, "order-service", "10.0.0.7", 8080).await);

    // Every registration on the IP, the one already held included.
    let response = app
        .post("/api/v1/instances/10.0.0.7/offline?wait=true&force=true")
        .await;
    assert_eq!(response.status(), 200);
    assert!(!enabled_on_rnacos(&nacos, "order-service", "10.0.0.7", 8080).await);
}

#[tokio::test]
async fn a_re_registration_while_held_is_re_asserted_and_the_gateways_told_again() {
    let nacos = Rnacos::start().await;
    let gateway = GatewayNode::start(Behaviour::Ack).await;
    let _order = App::register(
        &nacos,
        "order-service",
        spring_instance("10.0.0.8", 8080, 2.0),
    )
    .await;
    let _other = App::register(
        &nacos,
        "order-service",
        spring_instance("10.0.0.9", 8080, 1.0),
    )
    .await;
    let app = TestApp::spawn(
        config(&[nacos.base()], "push = true")
            .route("ORDER-SERVICE", &["EDGE"])
            .nodes("EDGE", vec![gateway.address()]),
    )
    .await;
    let response = app
        .post("/api/v1/instances/10.0.0.8/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    assert!(!enabled_on_rnacos(&nacos, "order-service", "10.0.0.8", 8080).await);

    // A 1.x client whose heartbeat found it expired registers again, enabled.
    nacos
        .register_over_http("order-service", "10.0.0.8", 8080)
        .await;
    eventually("the re-registration is disabled again", || async {
        !enabled_on_rnacos(&nacos, "order-service", "10.0.0.8", 8080).await
    })
    .await;
    eventually("the gateway is told again", || async {
        gateway.received().len() >= 2
    })
    .await;
    let operations = app.get_json("/api/v1/operations?ip=10.0.0.8").await;
    let reasserted = operations["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|op| op["origin"] == "reconciler")
        .cloned()
        .expect("a re-assertion is on record");
    assert!(
        reasserted["reason"]
            .as_str()
            .unwrap()
            .starts_with("re-asserted")
    );
    assert_eq!(
        nacos.instance("order-service", "10.0.0.8", 8080).await["weight"],
        2.0
    );
}

#[tokio::test]
async fn taking_the_last_enabled_instance_of_a_service_offline_is_warned_of() {
    let nacos = Rnacos::start().await;
    let _only = App::register(
        &nacos,
        "billing-service",
        spring_instance("10.0.1.5", 8080, 1.0),
    )
    .await;
    let _two_a = App::register(
        &nacos,
        "order-service",
        spring_instance("10.0.1.6", 8080, 1.0),
    )
    .await;
    let _two_b = App::register(
        &nacos,
        "order-service",
        spring_instance("10.0.1.7", 8080, 1.0),
    )
    .await;
    let app = TestApp::spawn(config(&[nacos.base()], "push = false")).await;

    let dry: Value = app
        .post("/api/v1/instances/10.0.1.5/offline?dry_run=true")
        .await
        .json()
        .await
        .unwrap();
    let warnings = dry["warnings"].to_string();
    assert!(
        warnings.contains("last enabled instance of Nacos service BILLING-SERVICE"),
        "{warnings}"
    );
    assert!(
        enabled_on_rnacos(&nacos, "billing-service", "10.0.1.5", 8080).await,
        "a dry run writes nothing"
    );

    let one_of_two: Value = app
        .post("/api/v1/instances/10.0.1.6/offline?dry_run=true")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        !one_of_two["warnings"]
            .to_string()
            .contains("last enabled instance")
    );
    let both: Value = app
        .post_json(
            "/api/v1/operations?dry_run=true",
            &serde_json::json!({"action": "offline", "targets": [{"ip": "10.0.1.6"}, {"ip": "10.0.1.7"}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(
        both["warnings"].to_string().contains("ORDER-SERVICE"),
        "{both}"
    );
}

#[tokio::test]
async fn auth_logs_in_and_a_wrong_password_is_a_clear_503_at_readiness() {
    let nacos = Rnacos::start_with_auth("nacos", "s3cret-password").await;
    let _order = App::register(
        &nacos,
        "order-service",
        spring_instance("10.0.2.5", 8080, 1.0),
    )
    .await;

    let wrong = TestApp::spawn_unready(config(
        &[nacos.base()],
        "push = false\nusername = \"nacos\"\npassword = \"wrong-password\"",
    ))
    .await;
    eventually("readiness names the refused login", || async {
        let response = wrong.get("/readyz").await;
        let status = response.status();
        let text = response.text().await.unwrap();
        status == 503 && text.contains("refused the login as 'nacos'")
    })
    .await;

    let right = TestApp::spawn(config(
        &[nacos.base()],
        "push = true\nusername = \"nacos\"\npassword = \"s3cret-password\"",
    ))
    .await;
    let response = right
        .post("/api/v1/instances/10.0.2.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    assert!(!enabled_on_rnacos(&nacos, "order-service", "10.0.2.5", 8080).await);
}

#[tokio::test]
async fn a_3x_server_is_detected_by_its_410_and_written_through_the_v3_admin_api() {
    let nacos = NacosDouble::start(Generation::V3).await;
    nacos.register(
        "order-service",
        "10.0.3.5",
        8080,
        5.0,
        &[("version", "2.0")],
    );
    let app = TestApp::spawn(config(&[nacos.base()], "push = false")).await;

    let response = app
        .post("/api/v1/instances/10.0.3.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let view = nacos.view("order-service", "10.0.3.5", 8080).unwrap();
    assert_eq!(view["enabled"], false);
    assert_eq!(view["weight"], 5.0);
    assert_eq!(view["metadata"]["version"], "2.0");
    let requests = nacos.requests();
    assert!(
        requests
            .iter()
            .any(|r| r == "GET /nacos/v1/ns/service/list"),
        "v1 first: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r == "PUT /nacos/v3/admin/ns/instance/partial"),
        "{requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r == "PUT /nacos/v1/ns/instance"),
        "never the full-replace PUT"
    );

    let response = app
        .post("/api/v1/instances/10.0.3.5/online?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let view = nacos.view("order-service", "10.0.3.5", 8080).unwrap();
    assert_eq!(view["enabled"], true);
    assert_eq!(view["weight"], 5.0, "online keeps the weight too");

    // Told to speak v1 only, a 3.x server's 410 is a clear refusal.
    let v1_only =
        TestApp::spawn_unready(config(&[nacos.base()], "push = false\napi = \"v1\"")).await;
    eventually("readiness says the server answered 410", || async {
        let text = v1_only.get("/readyz").await.text().await.unwrap();
        text.contains("410")
    })
    .await;
}

#[tokio::test]
async fn a_new_pod_on_the_ip_port_of_a_departed_hold_comes_up_disabled_and_is_enabled_again() {
    let nacos = NacosDouble::start(Generation::V2).await;
    let gateway = GatewayNode::start(Behaviour::Ack).await;
    nacos.register("order-service", "10.0.4.5", 8080, 1.0, &[]);
    nacos.register("order-service", "10.0.4.6", 8080, 1.0, &[]);
    let app = TestApp::spawn(
        config(&[nacos.base()], "push = false")
            .route("ORDER-SERVICE", &["EDGE"])
            .nodes("EDGE", vec![gateway.address()]),
    )
    .await;
    let response = app
        .post("/api/v1/instances/10.0.4.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);

    // The scale-down finishes: the pod leaves, and its hold ends as soon as that is seen.
    nacos.deregister("order-service", "10.0.4.5", 8080);
    eventually("the hold ends when the instance departs", || async {
        app.get_json("/api/v1/offline").await["instances"]
            .as_array()
            .is_some_and(Vec::is_empty)
    })
    .await;

    // A new pod gets the same IP and port: Nacos's remembered layer brings it up disabled.
    nacos.register("order-service", "10.0.4.5", 8080, 1.0, &[]);
    assert_eq!(
        nacos.view("order-service", "10.0.4.5", 8080).unwrap()["enabled"],
        false
    );
    eventually("synchspeed enables the new registration", || async {
        nacos.view("order-service", "10.0.4.5", 8080).unwrap()["enabled"] == true
    })
    .await;
    let operations = app.get_json("/api/v1/operations?ip=10.0.4.5").await;
    let reenabled = operations["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|op| op["action"] == "online")
        .cloned()
        .expect("the re-enable is an audited operation");
    assert_eq!(reenabled["origin"], "reconciler");
    assert!(
        reenabled["reason"]
            .as_str()
            .unwrap()
            .starts_with("re-enabled"),
        "{reenabled}"
    );
    eventually("the gateway hears of the online", || async {
        gateway.received().len() >= 2
    })
    .await;

    // Another new registration that is disabled, with no departed hold behind it, is left alone.
    nacos.register("order-service", "10.0.4.7", 8080, 1.0, &[]);
    let response = app
        .post("/api/v1/instances/10.0.4.6/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        nacos.view("order-service", "10.0.4.6", 8080).unwrap()["enabled"],
        false
    );
}

#[tokio::test]
async fn a_node_down_or_gone_is_failed_over_to_the_next() {
    let down = NacosDouble::start(Generation::V2).await;
    down.set_fault(Fault::Down);
    let up = NacosDouble::start(Generation::V2).await;
    up.register("order-service", "10.0.5.5", 8080, 1.0, &[]);
    let gone = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/nacos", listener.local_addr().unwrap())
    };
    let app = TestApp::spawn(config(&[gone, down.base(), up.base()], "push = false")).await;

    let response = app
        .post("/api/v1/instances/10.0.5.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    assert!(
        operation["instances"][0]["peers"][0]["peer"]
            .as_str()
            .unwrap()
            .contains(&up.addr.to_string())
    );
    assert_eq!(
        up.view("order-service", "10.0.5.5", 8080).unwrap()["enabled"],
        false
    );
    assert!(
        down.requests().iter().any(|r| r.starts_with("GET")),
        "the node down was asked, and passed over"
    );
}

#[tokio::test]
async fn garbage_from_nacos_is_a_clear_error_and_never_a_write() {
    let nacos = NacosDouble::start(Generation::V2).await;
    nacos.register("order-service", "10.0.6.5", 8080, 1.0, &[]);
    nacos.set_fault(Fault::Html);
    let app = TestApp::spawn_unready(config(&[nacos.base()], "push = false")).await;
    eventually("readiness says what came back", || async {
        let response = app.get("/readyz").await;
        let status = response.status();
        let text = response.text().await.unwrap();
        status == 503 && text.contains("Whitelabel")
    })
    .await;
    let response = app
        .post("/api/v1/instances/10.0.6.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 503);
    assert!(!nacos.requests().iter().any(|r| r.starts_with("PATCH")));

    // Once the server answers properly, the same call works; a later truncated or `caused
    // by` answer keeps the copy as it was.
    nacos.set_fault(Fault::None);
    app.wait_ready().await;
    for fault in [Fault::Truncated, Fault::CausedBy] {
        nacos.set_fault(fault);
        let response = app
            .post("/api/v1/instances/10.0.6.5/offline?wait=true&force=true")
            .await;
        assert_eq!(response.status(), 200, "{fault:?}");
        assert_eq!(
            nacos.view("order-service", "10.0.6.5", 8080).unwrap()["enabled"],
            false
        );
    }
}

#[tokio::test]
async fn one_service_that_cannot_be_read_keeps_no_other_out_of_the_copy() {
    let nacos = NacosDouble::start(Generation::V2).await;
    nacos.register("order-service", "10.0.8.5", 8080, 1.0, &[]);
    nacos.register("legacy-service", "10.0.8.6", 8080, 1.0, &[]);
    nacos.break_service("legacy-service");
    let app = TestApp::spawn(config(&[nacos.base()], "push = false")).await;

    let response = app
        .post("/api/v1/instances/10.0.8.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        nacos.view("order-service", "10.0.8.5", 8080).unwrap()["enabled"],
        false
    );
    let response = app
        .post("/api/v1/instances/10.0.8.6/offline?wait=true")
        .await;
    assert_eq!(
        response.status(),
        404,
        "the unreadable service's instance is not guessed at"
    );
    assert!(
        !nacos
            .requests()
            .iter()
            .any(|r| r.starts_with("PATCH") && r.contains("legacy")),
    );
    assert_eq!(
        nacos.view("legacy-service", "10.0.8.6", 8080).unwrap()["enabled"],
        true
    );
}

#[tokio::test]
async fn an_expired_token_is_replaced_by_logging_in_again() {
    let nacos = NacosDouble::start_with(
        Generation::V2,
        Some(("nacos", "pw")),
        std::time::Duration::from_secs(1),
    )
    .await;
    nacos.register("order-service", "10.0.7.5", 8080, 1.0, &[]);
    let app = TestApp::spawn(config(
        &[nacos.base()],
        "push = false\nusername = \"nacos\"\npassword = \"pw\"",
    ))
    .await;
    // The token lives a second; the refresh keeps reading past it.
    eventually("a second login after the first token expired", || async {
        nacos.logins() >= 2
    })
    .await;
    let response = app
        .post("/api/v1/instances/10.0.7.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        nacos.view("order-service", "10.0.7.5", 8080).unwrap()["enabled"],
        false
    );
    app.wait_ready().await;
}

#[tokio::test]
async fn a_new_instance_of_one_of_many_services_is_in_the_copy_by_its_push_not_the_sweep() {
    const SERVICES: usize = 500;
    let nacos = Rnacos::start().await;
    let fleet: Vec<(String, _)> = (0..SERVICES)
        .map(|i| {
            let ip = format!("10.0.{}.{}", 10 + i / 250, i % 250 + 1);
            (format!("svc-{i}"), spring_instance(&ip, 8080, 1.0))
        })
        .collect();
    let _fleet = register_many(&nacos, &fleet).await;
    // The sweep reads one service a second: on its own it would take 500 s to come round.
    let app = TestApp::spawn(config(
        &[nacos.base()],
        "push = true\nrefresh = \"1s\"\nsweep_per_second = 1",
    ))
    .await;
    let listed = app.get_json("/api/v1/instances/10.0.10.1").await;
    assert_eq!(
        listed["instances"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );

    // Pushes are subscribed once the services are read. Whether this registration comes
    // before its service's subscription (the subscription's first answer names it) or after
    // (a push), the service is read at once.
    let probe = App::register(&nacos, "svc-7", spring_instance("10.0.20.7", 8080, 1.0)).await;
    eventually("the first new instance is in the copy", || async {
        app.get_json("/api/v1/instances/10.0.20.7").await["instances"]
            .as_array()
            .is_some_and(|r| r.len() == 1)
    })
    .await;
    drop(probe);
    let _late = App::register(&nacos, "svc-321", spring_instance("10.0.20.21", 8080, 1.0)).await;
    eventually(
        "a new instance of an existing service is in the copy",
        || async {
            app.get_json("/api/v1/instances/10.0.20.21").await["instances"]
                .as_array()
                .is_some_and(|r| r.len() == 1)
        },
    )
    .await;
}
