//! The connections the route table is read over: read-only, and bounded by the database
//! itself. A mistaken `DELETE ... RETURNING` in `groups.sql.query` fails instead of deleting on
//! every dry run, and a query slower than `groups.sql.statement_timeout` is stopped by the
//! server rather than left running after synchspeed gave up on it.

use sqlx::mysql::{MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor};

use crate::config::{SqlDialect, SqlGroupsSettings};

pub(super) enum Pool {
    MySql(MySqlPool),
    Postgres(PgPool),
}

impl Pool {
    /// Connects lazily: a database that is down at start is waited for.
    pub(super) fn open(settings: &SqlGroupsSettings) -> Result<Self, sqlx::Error> {
        let url = settings.url.expose();
        let timeout_ms = settings.statement_timeout.as_millis().max(1);
        Ok(match settings.dialect {
            SqlDialect::MySql => Pool::MySql(
                MySqlPoolOptions::new()
                    .max_connections(settings.pool_size)
                    .acquire_timeout(settings.connect_timeout)
                    .after_connect(move |connection, _| {
                        Box::pin(async move { mysql_session(connection, timeout_ms).await })
                    })
                    .connect_lazy(url)?,
            ),
            SqlDialect::Postgres => {
                // Sent with the connection's start-up packet: no round trip of their own.
                let options = url.parse::<PgConnectOptions>()?.options([
                    ("default_transaction_read_only", "on".to_owned()),
                    ("statement_timeout", timeout_ms.to_string()),
                ]);
                Pool::Postgres(
                    PgPoolOptions::new()
                        .max_connections(settings.pool_size)
                        .acquire_timeout(settings.connect_timeout)
                        .connect_lazy_with(options),
                )
            }
        })
    }
}

/// Every statement of a MySQL or MariaDB connection runs read-only and is stopped by the
/// server past the timeout. MariaDB bounds statements with `max_statement_time` (seconds),
/// MySQL 5.7+ its SELECTs with `max_execution_time` (milliseconds).
async fn mysql_session(
    connection: &mut MySqlConnection,
    timeout_ms: u128,
) -> Result<(), sqlx::Error> {
    connection
        .execute("SET SESSION TRANSACTION READ ONLY")
        .await?;
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&mut *connection)
        .await?;
    let bound = if version.to_ascii_lowercase().contains("mariadb") {
        format!(
            "SET SESSION max_statement_time = {}",
            timeout_ms as f64 / 1000.0
        )
    } else {
        format!("SET SESSION max_execution_time = {timeout_ms}")
    };
    connection.execute(AssertSqlSafe(bound)).await?;
    Ok(())
}
