//! synchspeed's own store on the machine's real PostgreSQL (127.0.0.1:5432, trust, or
//! `SYNCHSPEED_PG_URL`): a database per test, dropped when the test is done, so tests run in
//! parallel. Without `SYNCHSPEED_PG_URL` and with nothing listening there, the PostgreSQL
//! tests skip, saying so; under CI (`CI` set) they fail instead.

use sqlx::{AssertSqlSafe, Connection};

use super::route_db::{Kind, drop_database};

pub struct StoreDb {
    pub name: String,
    admin: String,
}

impl StoreDb {
    /// A new, empty database; `None` (the test skips) only outside CI, when no server is set
    /// and none listens on the default address.
    pub async fn create() -> Option<Self> {
        let configured = std::env::var("SYNCHSPEED_PG_URL").ok();
        let admin = configured
            .clone()
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".into());
        let mut conn = match sqlx::PgConnection::connect(&format!("{admin}/postgres")).await {
            Ok(conn) => conn,
            Err(e) if configured.is_none() && std::env::var_os("CI").is_none() => {
                eprintln!(
                    "skipped: no PostgreSQL at 127.0.0.1:5432 ({e}); set SYNCHSPEED_PG_URL to run it"
                );
                return None;
            }
            Err(e) => panic!("PostgreSQL at {admin} does not answer: {e}"),
        };
        let name = format!(
            "synchspeed_s_{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        Some(Self { name, admin })
    }

    /// What `store.url` is set to.
    pub fn url(&self) -> String {
        format!("{}/{}", self.admin, self.name)
    }

    /// Runs a statement of the test's on the store's database (as another process would).
    pub async fn execute(&self, sql: &str) {
        let mut conn = sqlx::PgConnection::connect(&self.url()).await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    /// The server's address (to put a proxy in front of it).
    pub fn server_addr(&self) -> std::net::SocketAddr {
        let url = url::Url::parse(&self.admin).unwrap();
        let host = url.host_str().unwrap();
        let port = url.port().unwrap_or(5432);
        std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .unwrap()
            .next()
            .unwrap()
    }

    /// `store.url` through `proxy` instead of straight to the server.
    pub fn url_through(&self, proxy: std::net::SocketAddr) -> String {
        let mut url = url::Url::parse(&self.admin).unwrap();
        url.set_host(Some(&proxy.ip().to_string())).unwrap();
        url.set_port(Some(proxy.port())).unwrap();
        format!("{}/{}", url.as_str().trim_end_matches('/'), self.name)
    }
}

impl Drop for StoreDb {
    fn drop(&mut self) {
        drop_database(Kind::Postgres, self.name.clone());
    }
}
