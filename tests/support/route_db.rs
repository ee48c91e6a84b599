//! A gateway team's route table in a database of its own, on the machine's real MariaDB
//! (127.0.0.1:3306, root without a password) or PostgreSQL (127.0.0.1:5432, trust): each test
//! creates its database, fills it, and drops it when done, so tests run in parallel.

use sqlx::mysql::MySqlPool;
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Connection};

/// Where the servers are; `SYNCHSPEED_MYSQL_URL` and `SYNCHSPEED_PG_URL` point elsewhere.
fn server(kind: Kind) -> String {
    match kind {
        Kind::MariaDb => std::env::var("SYNCHSPEED_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into()),
        Kind::Postgres => std::env::var("SYNCHSPEED_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    MariaDb,
    Postgres,
}

/// One test's database with a `gw_route` table, as a gateway console keeps it.
pub struct RouteDb {
    pub kind: Kind,
    pub name: String,
    pool: Pool,
}

enum Pool {
    My(MySqlPool),
    Pg(PgPool),
}

impl RouteDb {
    pub async fn create(kind: Kind) -> Self {
        let name = format!(
            "synchspeed_t_{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let admin = server(kind);
        let pool = match kind {
            Kind::MariaDb => {
                let mut conn = sqlx::MySqlConnection::connect(&format!("{admin}/mysql"))
                    .await
                    .expect("MariaDB answers on 127.0.0.1:3306");
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let pool = MySqlPool::connect(&format!("{admin}/{name}"))
                    .await
                    .unwrap();
                sqlx::raw_sql(
                    "CREATE TABLE gw_route (service_id VARCHAR(255) NOT NULL, \
                     gateway_group VARCHAR(255) NOT NULL, enabled TINYINT NOT NULL DEFAULT 1, \
                     weight INT NOT NULL DEFAULT 1)",
                )
                .execute(&pool)
                .await
                .unwrap();
                Pool::My(pool)
            }
            Kind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&format!("{admin}/postgres"))
                    .await
                    .expect("PostgreSQL answers on 127.0.0.1:5432");
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let pool = PgPool::connect(&format!("{admin}/{name}")).await.unwrap();
                sqlx::raw_sql(
                    "CREATE TABLE gw_route (service_id TEXT NOT NULL, gateway_group TEXT NOT NULL, \
                     enabled BOOLEAN NOT NULL DEFAULT TRUE, weight INT NOT NULL DEFAULT 1)",
                )
                .execute(&pool)
                .await
                .unwrap();
                Pool::Pg(pool)
            }
        };
        Self { kind, name, pool }
    }

    /// The URL synchspeed is configured with.
    pub fn url(&self) -> String {
        format!("{}/{}", server(self.kind), self.name)
    }

    /// The typical per-app query in this database's dialect: enabled routes, the app matched
    /// case-insensitively against the upper-case name synchspeed binds.
    pub fn query(&self) -> &'static str {
        match self.kind {
            Kind::MariaDb => {
                "SELECT gateway_group FROM gw_route WHERE upper(service_id) = ? AND enabled = 1"
            }
            Kind::Postgres => {
                "SELECT gateway_group FROM gw_route WHERE upper(service_id) = $1 AND enabled"
            }
        }
    }

    pub fn all_query(&self) -> &'static str {
        match self.kind {
            Kind::MariaDb => "SELECT service_id, gateway_group FROM gw_route WHERE enabled = 1",
            Kind::Postgres => "SELECT service_id, gateway_group FROM gw_route WHERE enabled",
        }
    }

    /// Runs statements written by the test (inserts, renames).
    pub async fn run(&self, sql: &str) {
        let sql = AssertSqlSafe(sql.to_owned());
        match &self.pool {
            Pool::My(pool) => sqlx::raw_sql(sql).execute(pool).await.map(|_| ()),
            Pool::Pg(pool) => sqlx::raw_sql(sql).execute(pool).await.map(|_| ()),
        }
        .unwrap();
    }

    /// A route the console keeps but has switched off.
    pub async fn disabled_route(&self, app: &str, group: &str) {
        let off = match self.kind {
            Kind::MariaDb => "0",
            Kind::Postgres => "FALSE",
        };
        self.run(&format!(
            "INSERT INTO gw_route (service_id, gateway_group, enabled) VALUES ('{app}', '{group}', {off})"
        ))
        .await;
    }

    pub async fn route(&self, app: &str, group: &str) {
        self.run(&format!(
            "INSERT INTO gw_route (service_id, gateway_group) VALUES ('{app}', '{group}')"
        ))
        .await;
    }

    /// A count the test asks the server for (`SELECT COUNT(*) ...`).
    pub async fn count(&self, sql: &str) -> i64 {
        let sql = AssertSqlSafe(sql.to_owned());
        match &self.pool {
            Pool::My(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
            Pool::Pg(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many rows the route table has (it exists, and nothing dropped or emptied it).
    pub async fn rows(&self) -> i64 {
        match &self.pool {
            Pool::My(pool) => sqlx::query_scalar("SELECT COUNT(*) FROM gw_route")
                .fetch_one(pool)
                .await
                .unwrap(),
            Pool::Pg(pool) => sqlx::query_scalar("SELECT COUNT(*) FROM gw_route")
                .fetch_one(pool)
                .await
                .unwrap(),
        }
    }
}

impl Drop for RouteDb {
    fn drop(&mut self) {
        drop_database(self.kind, self.name.clone());
    }
}

/// Drops a test's database, from a thread of its own (a test's runtime is dropping it).
pub fn drop_database(kind: Kind, name: String) {
    let dropped = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let admin = server(kind);
            let statement = AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"));
            match kind {
                Kind::MariaDb => {
                    if let Ok(mut conn) =
                        sqlx::MySqlConnection::connect(&format!("{admin}/mysql")).await
                    {
                        let _ = sqlx::raw_sql(statement).execute(&mut conn).await;
                    }
                }
                Kind::Postgres => {
                    if let Ok(mut conn) =
                        sqlx::PgConnection::connect(&format!("{admin}/postgres")).await
                    {
                        // Connections synchspeed left open would block the DROP.
                        let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                        )))
                        .execute(&mut conn)
                        .await;
                        let _ = sqlx::raw_sql(statement).execute(&mut conn).await;
                    }
                }
            }
        });
    });
    let _ = dropped.join();
}
