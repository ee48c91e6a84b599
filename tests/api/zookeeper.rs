//! The `zookeeper` registry against a real ZooKeeper, with real Curator clients on the other
//! side: the instance that registers itself and the consumer that reads the service.

use serde_json::Value;

use crate::helpers::{TestApp, TestConfig, eventually};
use crate::support::gateway::{Behaviour, GatewayNode};
use crate::support::zookeeper::{CuratorInstance, ZooKeeper, curator_query};

/// Exactly what Curator 5.4 wrote for a Spring Cloud instance (10.0.0.5:8080).
const CAPTURED: &str = include_str!("../fixtures/zookeeper/spring-cloud-instance.json");
const ORDER_ID: &str = "3f6c2a1e-9d7b-4c1e-8d0a-5b2f1e7c9a10";
const ORDER_ZNODE: &str = "/services/order-service/3f6c2a1e-9d7b-4c1e-8d0a-5b2f1e7c9a10";

fn captured() -> String {
    CAPTURED.trim_end().to_owned()
}

/// A Curator-shaped registration like the captured one, for other services and instances.
fn registration(name: &str, id: &str, address: &str, port: u16, status: &str) -> String {
    captured()
        .replace(
            "\"name\":\"order-service\"",
            &format!("\"name\":\"{name}\""),
        )
        .replace(ORDER_ID, id)
        .replace(
            "\"address\":\"10.0.0.5\"",
            &format!("\"address\":\"{address}\""),
        )
        .replace("\"port\":8080", &format!("\"port\":{port}"))
        .replace(
            "\"instance_status\":\"UP\"",
            &format!("\"instance_status\":\"{status}\""),
        )
}

fn config(zookeeper: &ZooKeeper) -> TestConfig {
    let mut config = TestConfig::eureka(&[]);
    config.registry = Some(format!(
        "[registry]\nkind = \"zookeeper\"\n[registry.zookeeper]\nconnect = \"{}\"\nroot = \"/services\"\nsession_timeout = \"10s\"\ntimeout = \"2s\"\n",
        zookeeper.connect()
    ));
    config
}

fn status_of(data: &[u8]) -> String {
    let document: Value = serde_json::from_slice(data).unwrap();
    document["payload"]["metadata"]["instance_status"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn offline_and_online_change_the_status_and_not_one_other_byte_and_curator_reads_it() {
    let zookeeper = ZooKeeper::start().await;
    zookeeper.create(ORDER_ZNODE, captured().as_bytes()).await;
    let gateway = GatewayNode::start(Behaviour::Ack).await;
    let gateway_znode = "/services/gateway/gw-1";
    let gateway_registration = registration("gateway", "gw-1", "127.0.0.1", gateway.port(), "UP");
    zookeeper
        .create(gateway_znode, gateway_registration.as_bytes())
        .await;
    // Broken znodes elsewhere in the tree: skipped, never written.
    zookeeper
        .create("/services/legacy/not-json", b"{\"name\":")
        .await;
    zookeeper
        .create("/services/legacy/not-an-instance", b"[1,2,3]")
        .await;
    let app = TestApp::spawn(config(&zookeeper).route("ORDER-SERVICE", &["GATEWAY"])).await;

    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    assert_eq!(operation["instances"][0]["instanceId"], ORDER_ID);
    assert_eq!(
        operation["gateways"][0]["node"],
        gateway.address(),
        "the node found in ZooKeeper"
    );
    assert_eq!(gateway.received().len(), 1, "the gateway was told");
    let expected = captured().replace(
        "\"instance_status\":\"UP\"",
        "\"instance_status\":\"OUT_OF_SERVICE\"",
    );
    assert_eq!(
        String::from_utf8(zookeeper.data(ORDER_ZNODE).await).unwrap(),
        expected,
        "only the status changed, byte for byte"
    );
    assert_eq!(
        zookeeper.data("/services/legacy/not-json").await,
        b"{\"name\":"
    );
    assert_eq!(
        zookeeper.data("/services/legacy/not-an-instance").await,
        b"[1,2,3]"
    );
    let connect = zookeeper.connect();
    let seen =
        tokio::task::spawn_blocking(move || curator_query(&connect, "/services", "order-service"))
            .await
            .unwrap();
    assert_eq!(
        seen,
        [(
            ORDER_ID.to_owned(),
            "OUT_OF_SERVICE".to_owned(),
            "10.0.0.5:8080".to_owned()
        )],
        "a real Curator consumer still reads the service and sees the new status"
    );

    let response = app
        .post("/api/v1/instances/10.0.0.5/online?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        String::from_utf8(zookeeper.data(ORDER_ZNODE).await).unwrap(),
        captured(),
        "online gives back the very bytes Curator wrote"
    );
}

#[tokio::test]
async fn an_instance_writing_its_own_copy_back_is_taken_out_again_but_a_new_registration_is_not() {
    let zookeeper = ZooKeeper::start().await;
    zookeeper.create(ORDER_ZNODE, captured().as_bytes()).await;
    let gateway = GatewayNode::start(Behaviour::Ack).await;
    let config = config(&zookeeper)
        .route("ORDER-SERVICE", &["GATEWAY-PUBLIC"])
        .nodes("GATEWAY-PUBLIC", vec![gateway.address()]);
    let app = TestApp::spawn(config).await;
    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);

    // A new process on the same IP (another id), then the held one writing UP back, as
    // Curator does after a reconnection. Changes are checked in order, so once the second is
    // re-asserted the first has been judged too.
    let newcomer = "/services/order-service/another-process";
    zookeeper
        .create(
            newcomer,
            registration("order-service", "another-process", "10.0.0.5", 8081, "UP").as_bytes(),
        )
        .await;
    zookeeper.set(ORDER_ZNODE, captured().as_bytes()).await;

    eventually("the held instance is out of service again", || async {
        status_of(&zookeeper.data(ORDER_ZNODE).await) == "OUT_OF_SERVICE"
    })
    .await;
    eventually("the gateway is told again", || async {
        gateway.operations_heard() == 2
    })
    .await;
    let operations: Value = app.get_json("/api/v1/operations?ip=10.0.0.5").await;
    let reasserted = operations["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|op| op["caller"]["principal"] == "synchspeed-reconciler")
        .unwrap_or_else(|| panic!("no re-assertion in {operations}"));
    assert!(
        reasserted["reason"]
            .as_str()
            .unwrap()
            .starts_with("re-asserted"),
        "{reasserted}"
    );
    assert_eq!(
        status_of(&zookeeper.data(newcomer).await),
        "UP",
        "a new registration on the held IP is not held"
    );
}

#[tokio::test]
async fn through_a_zookeeper_restart_a_curator_instance_found_by_host_name_stays_held() {
    let mut zookeeper = ZooKeeper::start().await;
    let connect = zookeeper.connect();
    // Spring's default without prefer-ip-address: the host name is the address.
    let instance = {
        let connect = connect.clone();
        tokio::task::spawn_blocking(move || {
            CuratorInstance::register(
                &connect,
                "/services",
                "billing",
                "billing-1",
                "localhost",
                18080,
            )
        })
        .await
        .unwrap()
    };
    let gateway = GatewayNode::start(Behaviour::Ack).await;
    let config = config(&zookeeper)
        .route("BILLING", &["GATEWAY-PUBLIC"])
        .nodes("GATEWAY-PUBLIC", vec![gateway.address()]);
    let app = TestApp::spawn(config).await;
    let found: Value = app.get_json("/api/v1/instances/127.0.0.1").await;
    assert_eq!(found["instances"][0]["app"], "BILLING", "{found}");

    let response = app
        .post("/api/v1/instances/127.0.0.1/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let read = |connect: String| async move {
        tokio::task::spawn_blocking(move || curator_query(&connect, "/services", "billing"))
            .await
            .unwrap()
    };
    assert_eq!(read(connect.clone()).await[0].1, "OUT_OF_SERVICE");

    // The instance's Curator re-registers its own copy (UP) when its session reconnects.
    zookeeper.restart().await;
    eventually("the gateway is told again after the overwrite", || async {
        gateway.received().len() >= 2
    })
    .await;
    eventually("the instance is out of service again", || {
        let connect = connect.clone();
        async move { read(connect).await.first().map(|i| i.1.clone()) == Some("OUT_OF_SERVICE".into()) }
    })
    .await;

    let response = app
        .post("/api/v1/instances/127.0.0.1/online?wait=true")
        .await;
    assert_eq!(
        response.status(),
        200,
        "synchspeed works through the restart"
    );
    assert_eq!(read(connect.clone()).await[0].1, "UP");
    drop(instance);
}
