//! Gateway groups from the gateway team's own route table, on the machine's real MariaDB and
//! PostgreSQL: each test makes its own database (`support::route_db`) and drops it.

use serde_json::Value;

use crate::helpers::{TestApp, TestConfig, error_code, eventually, node_addresses};
use crate::support::eureka::EurekaDouble;
use crate::support::gateway::{Behaviour, GatewayNode};
use crate::support::route_db::{Kind, RouteDb};

const ORDER: &str = "10.0.0.5:order-service:8080";

/// ORDER-SERVICE on 10.0.0.5, PAYMENT-SERVICE on 10.0.0.7, in Eureka.
async fn registry() -> EurekaDouble {
    let eureka = EurekaDouble::with_order_service().await;
    eureka.register(
        "PAYMENT-SERVICE",
        "10.0.0.7:payment:8080",
        "10.0.0.7",
        8080,
        "UP",
    );
    eureka
}

/// synchspeed reading `db`'s route table (every 200 ms), the groups' nodes listed in config.
fn config(eureka: &EurekaDouble, db: &RouteDb, source: &str, extra: &str) -> TestConfig {
    table(
        eureka,
        db,
        source,
        db.query(),
        &format!("refresh = \"200ms\"\nstale_max = \"1h\"\n{extra}"),
    )
}

/// synchspeed reading `db` with a query of the test's own, and these `[groups.sql]` lines.
fn with_query(eureka: &EurekaDouble, db: &RouteDb, query: &str, extra: &str) -> TestConfig {
    table(eureka, db, "\"sql\"", query, extra)
}

fn table(
    eureka: &EurekaDouble,
    db: &RouteDb,
    source: &str,
    query: &str,
    extra: &str,
) -> TestConfig {
    TestConfig::eureka(&[eureka.url()]).groups_sql(
        source,
        &format!("url = \"{}\"\nquery = \"{query}\"\n{extra}", db.url()),
    )
}

async fn the_groups_the_table_names_are_told(kind: Kind) {
    let db = RouteDb::create(kind).await;
    // Routes as the gateway console wrote them: lower case, one disabled.
    db.route("order-service", "GATEWAY-PUBLIC").await;
    db.route("order-service", "GATEWAY-INTERNAL").await;
    db.disabled_route("order-service", "GATEWAY-OLD").await;
    let (public, internal, old) = (
        GatewayNode::start(Behaviour::Ack).await,
        GatewayNode::start(Behaviour::Ack).await,
        GatewayNode::start(Behaviour::Ack).await,
    );
    let eureka = registry().await;
    let app = TestApp::spawn(
        config(&eureka, &db, "\"sql\"", "")
            .nodes("GATEWAY-PUBLIC", vec![public.address()])
            .nodes("GATEWAY-INTERNAL", vec![internal.address()])
            .nodes("GATEWAY-OLD", vec![old.address()]),
    )
    .await;

    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    assert_eq!(
        node_addresses(&operation),
        {
            let mut both = vec![public.address(), internal.address()];
            both.sort();
            both
        },
        "the enabled routes' groups, no other: {operation}"
    );
    assert_eq!(public.received().len(), 1);
    assert_eq!(internal.received().len(), 1);
    assert!(old.received().is_empty(), "a disabled route is no route");
    for route in operation["routes"].as_array().unwrap() {
        assert_eq!(route["source"], "sql", "{route}");
        assert!(route["mappingAgeMs"].is_u64(), "{route}");
    }
}

#[tokio::test]
async fn an_offline_tells_the_groups_the_mariadb_table_names() {
    the_groups_the_table_names_are_told(Kind::MariaDb).await;
}

#[tokio::test]
async fn an_offline_tells_the_groups_the_postgresql_table_names() {
    the_groups_the_table_names_are_told(Kind::Postgres).await;
}

#[tokio::test]
async fn a_route_added_in_the_table_is_used_after_the_refresh_without_a_restart() {
    let db = RouteDb::create(Kind::Postgres).await;
    db.route("ORDER-SERVICE", "GATEWAY-PUBLIC").await;
    let (public, edge) = (
        GatewayNode::start(Behaviour::Ack).await,
        GatewayNode::start(Behaviour::Ack).await,
    );
    let eureka = registry().await;
    let app = TestApp::spawn(
        config(
            &eureka,
            &db,
            "\"sql\"",
            &format!("all_query = \"{}\"", db.all_query()),
        )
        .nodes("GATEWAY-PUBLIC", vec![public.address()])
        .nodes("GATEWAY-EDGE", vec![edge.address()]),
    )
    .await;
    let dry_run = "/api/v1/instances/10.0.0.5/offline?dry_run=true";
    let planned: Value = app.post(dry_run).await.json().await.unwrap();
    assert_eq!(node_addresses(&planned), vec![public.address()]);

    db.route("order-service", "GATEWAY-EDGE").await;
    eventually("the new route is read", || async {
        let planned: Value = app.post(dry_run).await.json().await.unwrap();
        node_addresses(&planned).contains(&edge.address())
    })
    .await;
}

#[tokio::test]
async fn with_the_table_gone_the_last_mapping_serves_and_an_unknown_app_changes_nothing() {
    let db = RouteDb::create(Kind::MariaDb).await;
    db.route("ORDER-SERVICE", "GATEWAY-PUBLIC").await;
    db.route("PAYMENT-SERVICE", "GATEWAY-PUBLIC").await;
    let public = GatewayNode::start(Behaviour::Ack).await;
    let eureka = registry().await;
    let app = TestApp::spawn(
        config(&eureka, &db, "\"sql\"", "").nodes("GATEWAY-PUBLIC", vec![public.address()]),
    )
    .await;
    // ORDER-SERVICE is read once; PAYMENT-SERVICE never is.
    let planned: Value = app
        .post("/api/v1/instances/10.0.0.5/offline?dry_run=true")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(node_addresses(&planned), vec![public.address()]);

    // The gateway team's migration renames the table away mid-run.
    db.run("RENAME TABLE gw_route TO gw_route_old").await;
    eventually("/readyz says the mapping is stale", || async {
        let ready: Value = app.get("/readyz").await.json().await.unwrap();
        ready["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("groups database"))
    })
    .await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        !metrics.contains("synchspeed_groups_refresh_errors_total 0\n"),
        "{metrics}"
    );

    // The app read before is served from the last mapping.
    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(public.received().len(), 1);

    // The app never read cannot be planned: 503 before the registry, nobody told.
    let writes = eureka.status_writes().len();
    let response = app.post("/api/v1/instances/10.0.0.7/offline").await;
    assert_eq!(response.status(), 503);
    assert_eq!(error_code(response).await, "groups_unavailable");
    assert_eq!(
        eureka.status_writes().len(),
        writes,
        "the registry was not touched"
    );
    assert_eq!(
        eureka
            .status("PAYMENT-SERVICE", "10.0.0.7:payment:8080")
            .as_deref(),
        Some("UP")
    );
    assert_eq!(public.received().len(), 1, "no gateway was told");

    // Back: the table answers again, and so does the app never read before.
    db.run("RENAME TABLE gw_route_old TO gw_route").await;
    eventually(
        "the unknown app is planned once the table is back",
        || async {
            app.post("/api/v1/instances/10.0.0.7/offline?dry_run=true")
                .await
                .status()
                == 200
        },
    )
    .await;
    eventually("/readyz has no warning once the table answers", || async {
        let ready: Value = app.get("/readyz").await.json().await.unwrap();
        ready.get("warnings").is_none()
    })
    .await;
}

#[tokio::test]
async fn an_app_named_with_quotes_and_semicolons_is_a_parameter_not_sql() {
    let db = RouteDb::create(Kind::Postgres).await;
    db.route("ORDER-SERVICE", "GATEWAY-PUBLIC").await;
    let hostile = "X');DROP/**/TABLE/**/gw_route;--";
    let eureka = registry().await;
    eureka.register(hostile, "10.0.0.9:x:8080", "10.0.0.9", 8080, "UP");
    let app = TestApp::spawn(config(&eureka, &db, "\"sql\"", "")).await;
    let response = app
        .post("/api/v1/instances/10.0.0.9/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200, "an app with no route is no error");
    let operation: Value = response.json().await.unwrap();
    assert!(operation["gateways"].as_array().unwrap().is_empty());
    assert!(
        operation["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("no gateway group routes to")),
        "{operation}"
    );
    assert_eq!(operation["instances"][0]["registry"], "updated");
    assert_eq!(db.rows().await, 1, "the table is intact");
}

#[tokio::test]
async fn a_query_returning_the_wrong_column_type_stops_the_start() {
    let db = RouteDb::create(Kind::MariaDb).await;
    let eureka = registry().await;
    let mut wrong = config(&eureka, &db, "\"sql\"", "");
    wrong.tables = format!(
        "[groups.sql]\nurl = \"{}\"\nquery = \"SELECT weight FROM gw_route WHERE service_id = ?\"\n",
        db.url()
    );
    let error = TestApp::start_error(wrong).await;
    assert!(error.contains("groups.sql.query"), "{error}");
    assert!(error.contains("weight"), "names the column: {error}");
    assert!(error.contains("not text"), "{error}");

    let mut missing = config(&eureka, &db, "\"sql\"", "");
    missing.tables = format!(
        "[groups.sql]\nurl = \"{}\"\nquery = \"SELECT gateway_group FROM no_such_table WHERE service_id = ?\"\n",
        db.url()
    );
    let error = TestApp::start_error(missing).await;
    assert!(error.contains("groups.sql.query"), "{error}");
}

#[tokio::test]
async fn static_and_sql_together_are_the_union_each_group_once_with_its_source() {
    let db = RouteDb::create(Kind::Postgres).await;
    db.route("order-service", "GATEWAY-PUBLIC").await;
    db.route("order-service", "GATEWAY-EDGE").await;
    let (public, edge) = (
        GatewayNode::start(Behaviour::Ack).await,
        GatewayNode::start(Behaviour::Ack).await,
    );
    let eureka = registry().await;
    let app = TestApp::spawn(
        config(&eureka, &db, "[\"static\", \"sql\"]", "")
            .route("ORDER-SERVICE", &["GATEWAY-PUBLIC"])
            .nodes("GATEWAY-PUBLIC", vec![public.address()])
            .nodes("GATEWAY-EDGE", vec![edge.address()]),
    )
    .await;
    let planned: Value = app
        .post("/api/v1/instances/10.0.0.5/offline?dry_run=true")
        .await
        .json()
        .await
        .unwrap();
    let routes: Vec<(String, String)> = planned["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["group"].as_str().unwrap().to_owned(),
                r["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        vec![
            ("GATEWAY-PUBLIC".to_owned(), "static".to_owned()),
            ("GATEWAY-EDGE".to_owned(), "sql".to_owned())
        ]
    );
    assert_eq!(
        planned["gateways"].as_array().unwrap().len(),
        2,
        "each node once"
    );
    assert_eq!(eureka.status("ORDER-SERVICE", ORDER).as_deref(), Some("UP"));
}

/// A NULL group and a duplicated row in the gateway team's table: the bad row is skipped and
/// counted, the app's other groups are told once each, and readiness is not touched (one bad
/// row must not take every replica out of rotation).
async fn a_bad_row_is_skipped_and_the_service_stays_ready(kind: Kind) {
    let db = RouteDb::create(kind).await;
    db.run(match kind {
        Kind::MariaDb => "ALTER TABLE gw_route MODIFY gateway_group VARCHAR(255) NULL",
        Kind::Postgres => "ALTER TABLE gw_route ALTER COLUMN gateway_group DROP NOT NULL",
    })
    .await;
    db.route("order-service", "GATEWAY-PUBLIC").await;
    db.route("order-service", "GATEWAY-PUBLIC").await;
    db.run("INSERT INTO gw_route (service_id, gateway_group) VALUES ('order-service', NULL)")
        .await;
    let public = GatewayNode::start(Behaviour::Ack).await;
    let eureka = registry().await;
    let app = TestApp::spawn(
        config(&eureka, &db, "\"sql\"", "").nodes("GATEWAY-PUBLIC", vec![public.address()]),
    )
    .await;
    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert_eq!(response.status(), 200);
    let operation: Value = response.json().await.unwrap();
    let groups: Vec<&str> = operation["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|route| route["group"].as_str().unwrap())
        .collect();
    assert_eq!(
        groups,
        vec!["GATEWAY-PUBLIC"],
        "each group once: {operation}"
    );
    assert_eq!(public.received().len(), 1);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    assert!(app.counter("synchspeed_groups_rows_skipped_total").await >= 1);
}

#[tokio::test]
async fn a_null_group_in_mariadb_is_a_skipped_row_not_an_outage() {
    a_bad_row_is_skipped_and_the_service_stays_ready(Kind::MariaDb).await;
}

#[tokio::test]
async fn a_null_group_in_postgresql_is_a_skipped_row_not_an_outage() {
    a_bad_row_is_skipped_and_the_service_stays_ready(Kind::Postgres).await;
}

/// The operator's query is run read-only: a mistaken `DELETE ... RETURNING` deletes nothing,
/// even on a dry run. MariaDB refuses to prepare it on a read-only session, so the start stops
/// naming the key; PostgreSQL prepares it and refuses to run it, so each operation stops
/// before the registry, saying why.
async fn a_writing_query_deletes_nothing(kind: Kind) {
    let db = RouteDb::create(kind).await;
    db.route("order-service", "GATEWAY-PUBLIC").await;
    let query = match kind {
        Kind::MariaDb => "DELETE FROM gw_route WHERE upper(service_id) = ? RETURNING gateway_group",
        Kind::Postgres => {
            "DELETE FROM gw_route WHERE upper(service_id) = $1 RETURNING gateway_group"
        }
    };
    let eureka = registry().await;
    let config = with_query(&eureka, &db, query, "");
    if kind == Kind::MariaDb {
        let error = TestApp::start_error(config).await;
        assert!(error.contains("groups.sql.query"), "{error}");
        assert!(error.contains("READ ONLY"), "{error}");
        assert_eq!(db.rows().await, 1, "the route table lost a row");
        return;
    }
    let app = TestApp::spawn(config).await;
    for path in [
        "/api/v1/instances/10.0.0.5/offline?dry_run=true",
        "/api/v1/instances/10.0.0.5/offline",
    ] {
        let response = app.post(path).await;
        assert_eq!(response.status(), 503, "{path}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap().to_lowercase();
        assert!(
            message.contains("read-only") || message.contains("read only"),
            "the database's refusal is said: {body}"
        );
    }
    assert_eq!(db.rows().await, 1, "the route table lost a row");
    assert_eq!(eureka.status("ORDER-SERVICE", ORDER).as_deref(), Some("UP"));
}

#[tokio::test]
async fn a_delete_returning_query_deletes_nothing_in_mariadb() {
    a_writing_query_deletes_nothing(Kind::MariaDb).await;
}

#[tokio::test]
async fn a_delete_returning_query_deletes_nothing_in_postgresql() {
    a_writing_query_deletes_nothing(Kind::Postgres).await;
}

/// A query slower than `statement_timeout` is stopped by the database too, not only given up
/// on by synchspeed: no server session keeps running it.
async fn a_slow_query_is_stopped_by_the_server(kind: Kind) {
    let db = RouteDb::create(kind).await;
    db.route("order-service", "GATEWAY-PUBLIC").await;
    let (query, running) = match kind {
        Kind::MariaDb => (
            "SELECT gateway_group FROM gw_route WHERE upper(service_id) = ? AND SLEEP(30) = 0",
            format!(
                "SELECT COUNT(*) FROM information_schema.processlist \
                 WHERE db = '{}' AND info LIKE '%SLEEP(30)%' AND id <> CONNECTION_ID()",
                db.name()
            ),
        ),
        Kind::Postgres => (
            "SELECT gateway_group FROM gw_route WHERE upper(service_id) = $1 \
             AND pg_sleep(30) IS NOT NULL",
            format!(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = '{}' \
                 AND state = 'active' AND query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()",
                db.name()
            ),
        ),
    };
    let eureka = registry().await;
    let app = TestApp::spawn(with_query(
        &eureka,
        &db,
        query,
        "statement_timeout = \"1s\"",
    ))
    .await;
    for _ in 0..3 {
        let response = app
            .post("/api/v1/instances/10.0.0.5/offline?dry_run=true")
            .await;
        assert_eq!(response.status(), 503);
    }
    eventually("no server session runs the slow query", || async {
        db.count(&running).await == 0
    })
    .await;
}

#[tokio::test]
async fn a_slow_query_is_stopped_by_mariadb() {
    a_slow_query_is_stopped_by_the_server(Kind::MariaDb).await;
}

#[tokio::test]
async fn a_slow_query_is_stopped_by_postgresql() {
    a_slow_query_is_stopped_by_the_server(Kind::Postgres).await;
}
