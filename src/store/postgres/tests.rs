//! The store's fencing against the machine's real PostgreSQL, a database per test.

use super::*;
use crate::testing::operation_on;
use sqlx::Connection;

/// A database of the test's own on the machine's PostgreSQL, dropped with the guard;
/// `None` (skip) only outside CI when none is configured and none answers.
struct Database {
    admin: String,
    name: String,
}

impl Database {
    async fn create() -> Option<Self> {
        let configured = std::env::var("SYNCHSPEED_PG_URL").ok();
        let admin = configured
            .clone()
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".into());
        let mut conn = match sqlx::PgConnection::connect(&format!("{admin}/postgres")).await {
            Ok(conn) => conn,
            Err(e) if configured.is_none() && std::env::var_os("CI").is_none() => {
                eprintln!("skipped: no PostgreSQL at {admin} ({e})");
                return None;
            }
            Err(e) => panic!("PostgreSQL at {admin} does not answer: {e}"),
        };
        let name = format!(
            "synchspeed_u_{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        Some(Self { admin, name })
    }

    fn url(&self) -> String {
        format!("{}/{}", self.admin, self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok(mut conn) =
                    sqlx::PgConnection::connect(&format!("{admin}/postgres")).await
                {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

const POOL: PgPoolSettings = PgPoolSettings {
    max_connections: 2,
    connect_timeout: Duration::from_secs(5),
    statement_timeout: Duration::from_secs(5),
};

fn hold_of(operation: &Operation) -> Hold {
    Hold {
        app: AppName::parse("ORDER-SERVICE").unwrap(),
        instance_id: "10.0.0.5:order-service:8080".into(),
        ip: operation.target.ip,
        port: 8080,
        registered_at: Some(1_700_000_000_000),
        operation_id: operation.id.clone(),
        since: Utc::now(),
    }
}

#[tokio::test]
async fn a_leader_whose_lease_was_taken_over_writes_nothing_more() {
    let Some(db) = Database::create().await else {
        return;
    };
    let store = PgStore::connect(&db.url(), POOL).await.unwrap();
    sqlx::query("UPDATE leadership SET epoch = 1")
        .execute(store.pool())
        .await
        .unwrap();
    let leader = store.fenced(1);

    // While its epoch is the lease's: the operation, its key and its holds are written.
    let mut operation = operation_on("10.0.0.5");
    let key = IdempotencyKey {
        principal: "deployer".into(),
        key: "k-1".into(),
        fingerprint: "offline 10.0.0.5".into(),
    };
    leader
        .insert_operation(&operation, Some(&key))
        .await
        .unwrap();
    let since = Utc::now() - chrono::Duration::hours(1);
    let (fingerprint, id) = leader
        .idempotent_operation("deployer", "k-1", since)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (fingerprint.as_str(), &id),
        ("offline 10.0.0.5", &operation.id)
    );
    operation.registry_updated_at = Some(Utc::now());
    let hold = hold_of(&operation);
    leader
        .record_registry_step(&operation, &DesiredState::Hold(vec![hold.clone()]))
        .await
        .unwrap();
    let holds = leader.holds().await.unwrap();
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0].registered_at, hold.registered_at);

    // Another replica takes the lease over: every kind of write is refused, and none of
    // them changed anything.
    sqlx::query("UPDATE leadership SET epoch = 2")
        .execute(store.pool())
        .await
        .unwrap();
    let fenced = |result: Result<(), StoreError>| {
        assert!(
            matches!(
                result,
                Err(StoreError::Fenced {
                    held: 1,
                    current: 2
                })
            ),
            "{result:?}"
        );
    };
    let other = operation_on("10.0.0.6");
    fenced(leader.insert_operation(&other, None).await);
    assert!(leader.operation(&other.id).await.unwrap().is_none());
    let mut settled = operation.clone();
    settled.state = crate::domain::OperationState::Succeeded;
    fenced(leader.update_operation(&settled).await);
    fenced(
        leader
            .record_registry_step(&settled, &DesiredState::Release(vec![hold.key()]))
            .await,
    );
    fenced(leader.release_holds(&[hold.key()]).await);
    assert_eq!(leader.holds().await.unwrap().len(), 1, "the hold stands");
    let stored = leader.operation(&operation.id).await.unwrap().unwrap();
    assert_eq!(stored.state, crate::domain::OperationState::InProgress);

    // The replica holding epoch 2 writes.
    let successor = store.fenced(2);
    successor
        .record_registry_step(&settled, &DesiredState::Release(vec![hold.key()]))
        .await
        .unwrap();
    assert!(successor.holds().await.unwrap().is_empty());
    let stored = successor.operation(&operation.id).await.unwrap().unwrap();
    assert_eq!(stored.state, crate::domain::OperationState::Succeeded);
    store.close().await;
}

#[tokio::test]
async fn an_update_of_an_operation_never_journaled_is_an_error_not_a_silent_success() {
    let Some(db) = Database::create().await else {
        return;
    };
    let store = PgStore::connect(&db.url(), POOL).await.unwrap();
    let error = store
        .update_operation(&operation_on("10.0.0.5"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    store.close().await;
}
