//! The only place that names concrete backends: builds them from settings, binds, serves, and
//! shuts down in a bounded, ordered way. What a leader builds is in `leader`; how a replica
//! over PostgreSQL comes to lead, in `replicas`. Tests start the very same [`Application`] on
//! port 0.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::cluster::Election;
use crate::cluster::lease::LeaseRow;
use crate::cluster::relay::{self, RelayState};
use crate::cluster::secret::RelaySecret;
use crate::config::{RegistrySettings, Settings, StoreKind, StoreSettings};
use crate::drain::Orchestrator;
use crate::http::server::Listener;
use crate::registry::Registry;
use crate::registry::eureka::EurekaRegistry;
use crate::registry::file::FileRegistry;
use crate::registry::zookeeper::ZookeeperRegistry;
use crate::store::Store;
use crate::store::postgres::{PgPoolSettings, PgStore};
use crate::store::sqlite::SqliteStore;
use crate::telemetry::Metrics;
use leader::{LeaderParts, lead};
use replicas::{Campaign, RouterSwitch, campaign, identity};

mod leader;
mod replicas;

/// How long after `server.shutdown_grace` the last answers have to reach their callers.
const ANSWERS_FLUSH: Duration = Duration::from_secs(2);

pub struct Application {
    local_addr: SocketAddr,
    server: JoinHandle<std::io::Result<()>>,
    /// Cancelled to stop: the listener stops accepting and background loops return.
    shutdown: CancellationToken,
    background: TaskTracker,
    /// Set once this replica leads: at once on SQLite, when it takes the lease on PostgreSQL.
    leading: Arc<OnceLock<Arc<Orchestrator>>>,
    /// Cancelled when the lease was lost: the process must stop at once.
    lost: CancellationToken,
    /// Cancelled at the end of a stop, when a leader may give its lease up.
    lease_stop: CancellationToken,
    store: Stores,
    grace: Duration,
}

/// The store, by kind, for what only one kind has (checkpoints, closing).
#[derive(Clone)]
enum Stores {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Stores {
    async fn open(settings: &StoreSettings) -> anyhow::Result<Self> {
        let url = settings.url.expose();
        let opened = match settings.kind {
            StoreKind::Sqlite => SqliteStore::connect(url).await.map(Stores::Sqlite),
            StoreKind::Postgres => PgStore::connect(
                url,
                PgPoolSettings {
                    max_connections: settings.pool_size,
                    connect_timeout: settings.connect_timeout,
                    statement_timeout: settings.statement_timeout,
                },
            )
            .await
            .map(Stores::Postgres),
        };
        opened.with_context(|| format!("opening the store {}", settings.url))
    }

    /// The store of a replica that does not lead (it only reads and probes).
    fn shared(&self) -> Arc<dyn Store> {
        match self {
            Stores::Sqlite(store) => Arc::new(store.clone()),
            Stores::Postgres(store) => Arc::new(store.clone()),
        }
    }

    async fn close(&self) {
        match self {
            Stores::Sqlite(store) => store.close().await,
            Stores::Postgres(store) => store.close().await,
        }
    }
}

/// The leader stopped leading: the process stops at once, without the grace (the replica
/// that took over owns every unfinished operation now). `main` exits with 75.
#[derive(Debug, thiserror::Error)]
#[error("leadership lost (the log says why); the replica that takes over carries on")]
pub struct LeadershipLost;

/// The registries' HTTP client: keep-alive pools shared by every registry call (notifications
/// have their own, `gateway::webhook`). Redirects are not followed: Eureka's 307 means "try
/// another peer".
fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(60))
        // Enough idle connections per peer for the bounded registry writes and a busy
        // gateway node; a burst beyond it closes its extra sockets instead of keeping them.
        .pool_max_idle_per_host(32)
        .tcp_nodelay(true)
        .user_agent(concat!("synchspeed/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let http = http_client()?;
        let stores = Stores::open(&settings.store).await?;
        let store = stores.shared();
        let registry: Arc<dyn Registry> = match &settings.registry {
            RegistrySettings::Eureka(eureka) => Arc::new(EurekaRegistry::new(
                eureka,
                http.clone(),
                Arc::clone(&metrics),
            )),
            RegistrySettings::Zookeeper(zookeeper) => Arc::new(ZookeeperRegistry::new(zookeeper)),
            RegistrySettings::Nacos(nacos) => {
                crate::registry::nacos::NacosRegistry::new(nacos, Arc::clone(&metrics))
                    .context("setting up the Nacos registry")?
            }
            RegistrySettings::File(file) => Arc::new(
                FileRegistry::open(file, Arc::clone(&store))
                    .await
                    .context("loading the file registry")?,
            ),
        };
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| format!("binding {}", settings.server.listen))?;
        let local_addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let background = TaskTracker::new();
        let lost = CancellationToken::new();
        let lease_stop = CancellationToken::new();
        let leading = Arc::new(OnceLock::new());
        // Every replica keeps the registry's copy fresh: one that takes over has it warm.
        background.spawn({
            let registry = Arc::clone(&registry);
            let token = shutdown.clone();
            async move { registry.run(token).await }
        });
        let parts = |store: Arc<dyn Store>, cluster| LeaderParts {
            settings: settings.clone(),
            registry: Arc::clone(&registry),
            store,
            metrics: Arc::clone(&metrics),
            shutdown: shutdown.clone(),
            background: background.clone(),
            cluster,
        };
        // One replica serves its router as it is; a replica on PostgreSQL serves whichever
        // of relaying and leading it does at the time.
        let (router, role) = match &stores {
            Stores::Sqlite(sqlite) => {
                background.spawn({
                    let store = sqlite.clone();
                    let token = shutdown.clone();
                    let (wal_max, metrics) = (settings.store.wal_max_bytes, Arc::clone(&metrics));
                    async move {
                        store
                            .run_checkpoints(Duration::from_secs(1), wal_max, metrics, token)
                            .await
                    }
                });
                let (orchestrator, app) = lead(parts(store, None)).await?;
                let _ = leading.set(orchestrator);
                (app, "single")
            }
            Stores::Postgres(pg) => {
                let (replica, advertise) = identity(&settings.cluster, local_addr)?;
                let row = LeaseRow::new(
                    pg.pool().clone(),
                    replica.clone(),
                    advertise,
                    settings.cluster.lease,
                );
                let secret = Arc::new(
                    RelaySecret::load(pg.pool().clone())
                        .await
                        .context("reading the relay secret from the store")?,
                );
                let election = Arc::new(Election::new(row, replica.clone(), Arc::clone(&metrics)));
                let switch = RouterSwitch::default();
                switch.set(relay::router(RelayState {
                    client: relay::relay_client().context("building the relay client")?,
                    leader: election.leader(),
                    secret: Arc::clone(&secret),
                    policy: settings.security.policy.clone(),
                    body_limit: settings.server.body_limit,
                    body_read_timeout: settings.server.body_read_timeout,
                    store: pg.clone(),
                    metrics: Arc::clone(&metrics),
                    replica: replica.as_str().into(),
                }));
                background.spawn(campaign(Campaign {
                    election,
                    pg: pg.clone(),
                    secret,
                    replica,
                    parts: parts(store, None),
                    switch: switch.clone(),
                    leading: Arc::clone(&leading),
                    lost: lost.clone(),
                    lease_stop: lease_stop.clone(),
                }));
                (switch.router(), "follower until it takes the lease")
            }
        };
        let server = tokio::spawn(
            Listener {
                listener,
                router,
                policy: settings.security.policy.clone(),
                header_read_timeout: settings.server.header_read_timeout,
                max_connections: settings.server.max_connections,
                max_connections_per_ip: settings.server.max_connections_per_ip,
                max_probe_connections: settings.server.max_probe_connections,
                metrics,
                shutdown: shutdown.clone(),
            }
            .run(),
        );
        info!(
            listen = %local_addr,
            registry = registry.kind(),
            store = %settings.store.url,
            role,
            "synchspeed serving"
        );
        Ok(Self {
            local_addr,
            server,
            shutdown,
            background,
            leading,
            lost,
            lease_stop,
            store: stores,
            grace: settings.server.shutdown_grace,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until SIGTERM or Ctrl-C, then stops; or until the lease is lost, then fails at
    /// once with [`LeadershipLost`].
    pub async fn run_until_stopped(self, mut signals: StopSignals) -> anyhow::Result<()> {
        tokio::select! {
            () = signals.received() => {
                info!("stop signal received");
                self.stop().await
            }
            () = self.lost.cancelled() => {
                self.shutdown.cancel();
                self.lease_stop.cancel();
                Err(LeadershipLost.into())
            }
        }
    }

    /// Stops accepting, lets in-flight requests and fan-outs finish within the grace period,
    /// stops the background loops (a leader then gives its lease up), closes the store.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        // Callers still waiting when the grace ends are answered then (503, the operation):
        // their answers get this long to be written before the connections are cut.
        let deadline = tokio::time::Instant::now() + self.grace + ANSWERS_FLUSH;
        let drained = async {
            match self.leading.get() {
                Some(orchestrator) => orchestrator.shutdown(self.grace).await,
                None => true,
            }
        };
        let (drained, served) =
            tokio::join!(drained, tokio::time::timeout_at(deadline, self.server));
        if !drained {
            warn!("stopping with fan-outs unfinished; journaled, they resume on the next start");
        }
        match served {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!("the server stopped with an error: {e}"),
            Ok(Err(e)) => warn!("the server task failed: {e}"),
            Err(_) => warn!("requests still open after the grace period were cut"),
        }
        // Everything this replica was doing is done or journaled: a leader hands over now.
        self.lease_stop.cancel();
        self.background.close();
        self.background.wait().await;
        self.store.close().await;
        info!("synchspeed stopped");
        Ok(())
    }
}

/// SIGTERM (what a deploy platform sends) and SIGINT (Ctrl-C), listened for from the moment
/// they are installed: before the service is built, so that a SIGTERM sent as soon as it says
/// it serves is a clean stop, not the default action that kills it mid-write.
pub struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn received(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
