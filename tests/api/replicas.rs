//! Several replicas as real processes of the binary over one PostgreSQL store (a database of
//! the test's own) and the Eureka double: to every caller and every gateway they behave like
//! one service, through a leader's death and a leader's pause.

use serde_json::Value;

use crate::helpers::{TestApp, TestConfig, eventually, eventually_within};
use crate::support::eureka::EurekaDouble;
use crate::support::gateway::{Behaviour, GatewayNode};
use crate::support::store_db::StoreDb;
use crate::support::tcp_proxy::TcpProxy;

const IP: &str = "10.0.0.5";
const INSTANCE: &str = "10.0.0.5:order-service:8080";

/// Replicas with a short lease (takeover within about 4 s), named so the test can tell them
/// apart.
fn replica(config: &TestConfig, db: &StoreDb, name: &str) -> TestConfig {
    config
        .clone()
        .postgres(&db.url())
        .cluster(&format!("replica = \"{name}\"\nlease = \"3s\""))
}

/// ORDER-SERVICE routed to one group, EDGE, of these nodes.
fn edge(eureka: &EurekaDouble, nodes: Vec<String>) -> TestConfig {
    TestConfig::eureka(&[eureka.url()])
        .route("ORDER-SERVICE", &["EDGE"])
        .nodes("EDGE", nodes)
}

/// ORDER-SERVICE and PAYMENT-SERVICE both routed to EDGE, of this node.
fn both_apps(eureka: &EurekaDouble, node: &GatewayNode) -> TestConfig {
    TestConfig::eureka(&[eureka.url()])
        .route("ORDER-SERVICE", &["EDGE"])
        .route("PAYMENT-SERVICE", &["EDGE"])
        .nodes("EDGE", vec![node.address()])
}

/// Replica A, once it leads, and replica B following it.
async fn leader_and_follower(config: &TestConfig, db: &StoreDb) -> (TestApp, TestApp) {
    let a = TestApp::spawn_process(replica(config, db, "replica-a")).await;
    leads(&a).await;
    let b = TestApp::spawn_process(replica(config, db, "replica-b")).await;
    (a, b)
}

async fn readiness(app: &TestApp) -> Value {
    app.get_json("/readyz").await
}

/// Waits until `app` says it leads.
async fn leads(app: &TestApp) {
    eventually_within(
        "the replica leads",
        std::time::Duration::from_secs(20),
        || async { readiness(app).await["role"] == "leader" },
    )
    .await;
}

#[tokio::test]
async fn an_offline_on_one_replica_is_held_listed_and_keyed_on_the_other() {
    let Some(db) = StoreDb::create().await else {
        return;
    };
    let eureka = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let config = edge(&eureka, vec![node.address()]);
    let (a, b) = leader_and_follower(&config, &db).await;
    let ready = readiness(&b).await;
    assert_eq!(ready["role"], "follower", "{ready}");
    assert_eq!(ready["leader"], "replica-a", "{ready}");

    // Accepted by B (relayed to the leader), answered as the leader answers.
    let offline = b
        .client
        .post(b.url(&format!(
            "/api/v1/instances/{IP}/offline?wait=true&reason=deploy"
        )))
        .header("Idempotency-Key", "deploy-42")
        .send()
        .await
        .unwrap();
    assert_eq!(offline.status(), 200);
    let offline: Value = offline.json().await.unwrap();
    assert_eq!(offline["state"], "succeeded", "{offline}");
    assert_eq!(
        offline["replica"], "replica-a",
        "the leader ran it: {offline}"
    );
    assert_eq!(node.received().len(), 1);
    assert_eq!(
        eureka.status("ORDER-SERVICE", INSTANCE).as_deref(),
        Some("OUT_OF_SERVICE")
    );

    // Seen on either replica at once.
    for app in [&a, &b] {
        let held = app.get_json("/api/v1/offline").await;
        assert_eq!(held["instances"][0]["operationId"], offline["id"], "{held}");
        // The registry copy's next refresh may still bring the stale UP of a peer's read
        // cache first (Eureka's 30 s read-only map): the view is waited for.
        eventually("the view shows it out of service", || async {
            let view = app.get_json(&format!("/api/v1/instances/{IP}")).await;
            view["instances"][0]["status"] == "OUT_OF_SERVICE"
        })
        .await;
    }
    // The same key on the other replica is the same operation, and nothing happens twice.
    let again: Value = a
        .client
        .post(a.url(&format!(
            "/api/v1/instances/{IP}/offline?wait=true&reason=deploy"
        )))
        .header("Idempotency-Key", "deploy-42")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["id"], offline["id"]);
    assert_eq!(node.received().len(), 1);
    assert_eq!(eureka.status_writes().len(), 1);

    // The relayed caller is the caller, not the follower: the audit trail has its address.
    assert_eq!(offline["caller"]["addr"], "127.0.0.1", "{offline}");
    let metrics = b.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("synchspeed_cluster_leader{replica=\"replica-b\"} 0"),
        "{metrics}"
    );
    let metrics = a.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("synchspeed_cluster_leader{replica=\"replica-a\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_online_on_the_follower_during_an_offline_fan_out_on_the_leader_runs_after_it() {
    let Some(db) = StoreDb::create().await else {
        return;
    };
    let eureka = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Slow(400)).await;
    let config = edge(&eureka, vec![node.address()]).gateway("timeout = \"5s\"\nattempts = 1");
    let (a, b) = leader_and_follower(&config, &db).await;

    let offline = a.post(&format!("/api/v1/instances/{IP}/offline")).await;
    assert_eq!(offline.status(), 202);
    let offline: Value = offline.json().await.unwrap();
    let online = b
        .post(&format!("/api/v1/instances/{IP}/online?wait=true"))
        .await;
    assert_eq!(online.status(), 200);
    let online: Value = online.json().await.unwrap();

    let offline = a.settled(offline["id"].as_str().unwrap()).await;
    assert!(
        online["registryUpdatedAt"].as_str().unwrap() >= offline["completedAt"].as_str().unwrap(),
        "the online reached the registry only after the offline's last answer: {offline} {online}"
    );
    let events: Vec<String> = node.received().into_iter().map(|n| n.event).collect();
    assert_eq!(events, ["offline", "online"]);
    assert_eq!(
        eureka.status("ORDER-SERVICE", INSTANCE).as_deref(),
        Some("UP")
    );
    let held = b.get_json("/api/v1/offline").await;
    assert_eq!(held["instances"].as_array().unwrap().len(), 0, "{held}");
}

#[tokio::test]
async fn after_kill_9_of_the_leader_mid_fan_out_the_other_replica_finishes_it() {
    let Some(db) = StoreDb::create().await else {
        return;
    };
    let eureka = EurekaDouble::with_order_service().await;
    let hanging = GatewayNode::start(Behaviour::Hang).await;
    let answering = GatewayNode::start(Behaviour::Ack).await;
    let config = edge(&eureka, vec![hanging.address(), answering.address()])
        .gateway("timeout = \"60s\"\nattempts = 1");
    let (mut a, b) = leader_and_follower(&config, &db).await;

    let response = b.post(&format!("/api/v1/instances/{IP}/offline")).await;
    assert_eq!(response.status(), 202);
    let operation: Value = response.json().await.unwrap();
    let id = operation["id"].as_str().unwrap().to_owned();
    // The leader journals a running fan-out's answers as they come (every second).
    let journal = sqlx::PgPool::connect(&db.url()).await.unwrap();
    let answered = format!("127.0.0.1:{}", answering.port());
    eventually(
        "the journal has the answering node's acknowledgement",
        || {
            let (journal, id, answered) = (&journal, id.clone(), answered.clone());
            async move {
                let nodes: Option<Value> = sqlx::query_scalar(
                    "SELECT body::jsonb->'gateways' FROM operations WHERE id = $1",
                )
                .bind(&id)
                .fetch_optional(journal)
                .await
                .unwrap();
                nodes.is_some_and(|nodes| {
                    nodes
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|node| node["node"] == answered.as_str() && node["state"] == "acked")
                })
            }
        },
    )
    .await;

    a.kill();
    hanging.set_behaviour(Behaviour::Ack);
    leads(&b).await;
    let finished = b.settled(&id).await;
    assert_eq!(finished["state"], "succeeded", "{finished}");
    assert_eq!(finished["replica"], "replica-b", "{finished}");
    assert!(
        finished["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("after replica-a stopped")),
        "{finished}"
    );
    let told = hanging.received();
    assert!(!told.is_empty());
    assert!(told.iter().all(|r| r.body["operationId"] == id.as_str()));
    assert_eq!(
        answering.received().len(),
        1,
        "a node whose answer the journal had is not told again"
    );
    let held = b.get_json("/api/v1/offline").await;
    assert_eq!(held["instances"][0]["operationId"], id.as_str(), "{held}");
    assert_eq!(
        eureka.status("ORDER-SERVICE", INSTANCE).as_deref(),
        Some("OUT_OF_SERVICE")
    );
}

#[tokio::test]
async fn a_leader_paused_past_its_lease_is_replaced_and_continued_writes_nothing() {
    let Some(db) = StoreDb::create().await else {
        return;
    };
    let eureka = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Gated).await;
    let config = edge(&eureka, vec![node.address()]).gateway("timeout = \"60s\"\nattempts = 1");
    let (mut a, b) = leader_and_follower(&config, &db).await;

    // A's fan-out waits on the node when A is paused.
    let operation: Value = a
        .post(&format!("/api/v1/instances/{IP}/offline"))
        .await
        .json()
        .await
        .unwrap();
    let id = operation["id"].as_str().unwrap().to_owned();
    eventually("the node is told by A", || async {
        node.received().len() == 1
    })
    .await;
    a.signal("STOP");
    leads(&b).await;
    // B carried the operation on: it told the node again, with the same operation id.
    eventually("the node is told by B", || async {
        node.received().len() == 2
    })
    .await;
    node.open_gate();
    let finished = b.settled(&id).await;
    assert_eq!(finished["state"], "succeeded", "{finished}");
    let writes = eureka.status_writes().len();

    // A runs again: its node answered meanwhile, but it leads no more and writes nothing.
    a.signal("CONT");
    let status = a.exited().await;
    assert_eq!(status.code(), Some(75), "{:?}", a.logs());
    assert!(
        a.logs().iter().any(|line| line.contains("leadership lost")),
        "{:?}",
        a.logs()
    );
    let after = b.operation(&id).await;
    assert_eq!(
        after, finished,
        "A's view of the operation never reached the journal"
    );
    assert_eq!(after["replica"], "replica-b");
    assert_eq!(eureka.status_writes().len(), writes);
    assert_eq!(node.received().len(), 2);
    let ready = readiness(&b).await;
    assert_eq!(ready["role"], "leader", "{ready}");
    assert!(ready["epoch"].as_i64().unwrap() >= 2, "{ready}");
}

#[tokio::test]
async fn one_reconciler_re_asserts_an_overwrite_once_whichever_replica_took_the_call() {
    let Some(db) = StoreDb::create().await else {
        return;
    };
    let eureka = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let config = edge(&eureka, vec![node.address()]).drain("reconcile_every = \"200ms\"");
    let (a, b) = leader_and_follower(&config, &db).await;
    let offline = b
        .post(&format!("/api/v1/instances/{IP}/offline?wait=true"))
        .await;
    assert_eq!(offline.status(), 200);
    assert_eq!(eureka.status_writes().len(), 1);

    // The instance restarts fast with the same id: UP again, its override gone.
    eureka.cancel("ORDER-SERVICE", INSTANCE);
    eureka.register("ORDER-SERVICE", INSTANCE, IP, 8080, "UP");
    eventually("the hold is re-asserted", || async {
        eureka.status("ORDER-SERVICE", INSTANCE).as_deref() == Some("OUT_OF_SERVICE")
    })
    .await;
    // Several passes of the leader's reconciler later, still one re-assertion, one new word
    // to the gateway, and none of it from the follower, which runs no reconciler.
    let passes = reconcile_runs(&a).await;
    eventually("three more passes of the reconciler", || async {
        reconcile_runs(&a).await >= passes + 3
    })
    .await;
    assert_eq!(
        eureka.status_writes().len(),
        2,
        "{:?}",
        eureka.status_writes()
    );
    assert_eq!(node.received().len(), 2);
    assert_eq!(reconcile_runs(&b).await, 0);
}

async fn reconcile_runs(app: &TestApp) -> u64 {
    let metrics = app.get("/metrics").await.text().await.unwrap();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("synchspeed_reconcile_runs_total "))
        .expect("every replica exposes the reconciler's counter")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn postgresql_gone_for_less_than_the_lease_costs_only_the_calls_made_meanwhile() {
    let Some(db) = StoreDb::create().await else {
        return;
    };
    let proxy = TcpProxy::start(db.server_addr()).await;
    let eureka = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let config = edge(&eureka, vec![node.address()])
        .postgres(&db.url_through(proxy.addr))
        .store("connect_timeout = \"1s\"\nstatement_timeout = \"1s\"")
        .cluster("replica = \"replica-a\"\nlease = \"8s\"");
    let a = TestApp::spawn_process(config).await;
    leads(&a).await;
    let epoch = readiness(&a).await["epoch"].clone();

    // PostgreSQL restarts: every connection reset, new ones refused for a while.
    proxy.cut();
    let refused = a
        .post(&format!("/api/v1/instances/{IP}/offline?wait=true"))
        .await;
    assert_eq!(refused.status(), 503);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "store_unavailable", "{refused}");
    assert_eq!(a.get("/readyz").await.status(), 503);
    assert_eq!(
        eureka.status("ORDER-SERVICE", INSTANCE).as_deref(),
        Some("UP"),
        "nothing changed"
    );
    assert!(node.received().is_empty(), "no gateway told");

    proxy.restore();
    a.wait_ready().await;
    let ready = readiness(&a).await;
    assert_eq!(ready["role"], "leader", "{ready}");
    assert_eq!(
        ready["epoch"], epoch,
        "the lease was kept through the outage"
    );
    let offline = a
        .post(&format!("/api/v1/instances/{IP}/offline?wait=true"))
        .await;
    assert_eq!(offline.status(), 200);
    assert_eq!(node.received().len(), 1);
    assert_eq!(
        eureka.status("ORDER-SERVICE", INSTANCE).as_deref(),
        Some("OUT_OF_SERVICE")
    );
}

const TOKEN: &str = "replica-token-0123456789";

#[tokio::test]
async fn a_follower_relays_tokens_streams_and_caller_addresses_as_one_service() {
    let Some(db) = StoreDb::create().await else {
        return;
    };
    let eureka = EurekaDouble::with_order_and_payment().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let config = both_apps(&eureka, &node).security(&format!(
        "allow = [\"127.0.0.0/8\", \"192.0.2.0/24\"]\ndeny = [\"192.0.2.66\"]\n\
             trusted_proxies = [\"127.0.0.1\"]\n\
             tokens = [{{ principal = \"deployer\", token = \"{TOKEN}\" }}]"
    ));
    let (a, b) = leader_and_follower(&config, &db).await;
    let offline_url = b.url(&format!("/api/v1/instances/{IP}/offline?wait=true"));

    // The token is the leader's to check: none is a 401, relayed as it is.
    let unauthorized = b.client.post(&offline_url).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert!(node.received().is_empty());

    // A caller behind a trusted proxy is judged by the replica it reached: denied there...
    let denied = b
        .client
        .post(&offline_url)
        .bearer_auth(TOKEN)
        .header("X-Forwarded-For", "192.0.2.66")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert!(node.received().is_empty());
    // ...and an allowed one is recorded by the leader as itself, not as the follower.
    let offline: Value = b
        .client
        .post(&offline_url)
        .bearer_auth(TOKEN)
        .header("X-Forwarded-For", "192.0.2.10")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(offline["state"], "succeeded", "{offline}");
    assert_eq!(offline["caller"]["addr"], "192.0.2.10", "{offline}");
    assert_eq!(offline["caller"]["principal"], "deployer", "{offline}");

    // A caller naming an address itself, without the deployment's relay secret, is not
    // believed: refused, with nothing done.
    let forged = a
        .client
        .post(a.url("/api/v1/instances/10.0.0.7/offline?wait=true"))
        .bearer_auth(TOKEN)
        .header("x-synchspeed-relayed-for", "192.0.2.99")
        .header("x-synchspeed-relay-secret", "guessed")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let forged: Value = forged.json().await.unwrap();
    assert_eq!(forged["error"]["code"], "relay_refused", "{forged}");
    assert_eq!(
        eureka
            .status("PAYMENT-SERVICE", "10.0.0.7:payment-service:8080")
            .as_deref(),
        Some("UP"),
        "nothing was done"
    );

    // An operation's event stream, through the follower, to its end.
    let stream = b
        .client
        .get(b.url(&format!(
            "/api/v1/operations/{}/events",
            offline["id"].as_str().unwrap()
        )))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = stream.text().await.unwrap();
    assert!(events.contains("event: snapshot"), "{events}");
    assert!(events.contains(offline["id"].as_str().unwrap()), "{events}");
}

#[tokio::test]
async fn a_leader_stopped_cleanly_hands_over_at_once_not_at_the_end_of_its_lease() {
    let Some(db) = StoreDb::create().await else {
        return;
    };
    let eureka = EurekaDouble::with_order_service().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    // A lease longer than `eventually` waits: only a lease given up is taken over in time.
    let config = edge(&eureka, vec![node.address()]);
    let long_lease = |name: &str| {
        config
            .clone()
            .postgres(&db.url())
            .cluster(&format!("replica = \"{name}\"\nlease = \"60s\""))
    };
    let mut a = TestApp::spawn_process(long_lease("replica-a")).await;
    leads(&a).await;
    let b = TestApp::spawn_process(long_lease("replica-b")).await;
    a.terminate();
    assert_eq!(a.exited().await.code(), Some(0));
    eventually("the other replica leads", || async {
        readiness(&b).await["role"] == "leader"
    })
    .await;
    let offline = b
        .post(&format!("/api/v1/instances/{IP}/offline?wait=true"))
        .await;
    assert_eq!(offline.status(), 200);
    assert_eq!(node.received().len(), 1);
}

/// The store created anew under a running deployment holds a new relay secret: the leader
/// reads it again when a call names another, and a follower the leader refuses reads its own
/// again and retries, so the caller is still recorded as itself, never as the follower.
#[tokio::test]
async fn a_relay_secret_changed_in_the_store_is_read_again_by_both_ends() {
    let Some(db) = StoreDb::create().await else {
        return;
    };
    let eureka = EurekaDouble::with_order_and_payment().await;
    let node = GatewayNode::start(Behaviour::Ack).await;
    let config = both_apps(&eureka, &node)
        .security("allow = [\"127.0.0.0/8\", \"192.0.2.0/24\"]\ntrusted_proxies = [\"127.0.0.1\"]");
    let (a, b) = leader_and_follower(&config, &db).await;
    db.execute(
        "UPDATE relay_secret SET secret = 'the-secret-of-a-new-store-0123456789' WHERE id = 1",
    )
    .await;
    // A call naming the store's new secret: the leader reads its own again and believes it.
    let direct: Value = a
        .client
        .post(a.url(&format!("/api/v1/instances/{IP}/offline?wait=true")))
        .header("x-synchspeed-relayed-for", "192.0.2.20")
        .header(
            "x-synchspeed-relay-secret",
            "the-secret-of-a-new-store-0123456789",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(direct["caller"]["addr"], "192.0.2.20", "{direct}");
    // The follower still has the old one: refused by the leader, it reads it again and retries.
    let relayed = b
        .client
        .post(b.url("/api/v1/instances/10.0.0.7/offline?wait=true"))
        .header("X-Forwarded-For", "192.0.2.10")
        .send()
        .await
        .unwrap();
    assert_eq!(relayed.status(), 200);
    let relayed: Value = relayed.json().await.unwrap();
    assert_eq!(relayed["caller"]["addr"], "192.0.2.10", "{relayed}");
    assert_eq!(
        eureka
            .status("PAYMENT-SERVICE", "10.0.0.7:payment-service:8080")
            .as_deref(),
        Some("OUT_OF_SERVICE")
    );
}
