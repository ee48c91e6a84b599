//! The only place that names concrete backends: builds them from settings, binds, serves, and
//! shuts down in a bounded, ordered way; a replica over PostgreSQL is wired in `replicas`. Tests
//! start the very same [`Application`] on port 0.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use axum::Router;

use crate::cluster::Election;
use crate::cluster::fenced::{FencedNotifier, FencedRegistry};
use crate::cluster::lease::{Leadership, LeaseRow};
use crate::cluster::relay::{self, RelayState};
use crate::config::{
    GatewaySettings, GroupsSettings, NotifierKind, RegistrySettings, Settings, StoreKind,
    StoreSettings,
};
use crate::drain::{Orchestrator, Parts};
use crate::drain::{reassert, reconcile};
use crate::gateway::Notifier;
use crate::gateway::by_group::NotifierByGroup;
use crate::gateway::fanout::FanOut;
use crate::gateway::haproxy::HaproxyNotifier;
use crate::gateway::nodes::NodeDirectory;
use crate::gateway::webhook::WebhookNotifier;
use crate::groups::{Combined, GroupSource, SqlGroups, StaticGroups};
use crate::http::server::Listener;
use crate::http::{AppState, BodyLimits, ClusterRole, router};
use crate::registry::Registry;
use crate::registry::eureka::EurekaRegistry;
use crate::registry::file::FileRegistry;
use crate::registry::zookeeper::ZookeeperRegistry;
use crate::store::Store;
use crate::store::postgres::{PgPoolSettings, PgStore};
use crate::store::sqlite::SqliteStore;
use crate::telemetry::Metrics;
use replicas::{Campaign, RouterSwitch, campaign, identity};

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

/// What a leader is built from, whenever it starts leading.
struct LeaderParts {
    settings: Settings,
    registry: Arc<dyn Registry>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    background: TaskTracker,
    /// With several replicas: the lease (fencing the registry and the gateways), the relay
    /// secret, and this replica's name.
    cluster: Option<(Arc<Leadership>, Arc<str>, String)>,
}

/// Builds the orchestrator over the store's state and starts the leader's background work:
/// resuming what is unfinished, the reconciler, re-assertion, the journal's retention.
async fn lead(parts: LeaderParts) -> anyhow::Result<(Arc<Orchestrator>, Router)> {
    let LeaderParts {
        settings,
        registry,
        store,
        metrics,
        shutdown,
        background,
        cluster,
    } = parts;
    let mut notifier = notifier(&settings.gateway);
    let mut writes_to: Arc<dyn Registry> = Arc::clone(&registry);
    if let Some((leadership, ..)) = &cluster {
        notifier = Arc::new(FencedNotifier {
            inner: notifier,
            leadership: Arc::clone(leadership),
        });
        writes_to = Arc::new(FencedRegistry {
            inner: Arc::clone(&registry),
            leadership: Arc::clone(leadership),
        });
    }
    let orchestrator = Arc::new(
        Orchestrator::open(Parts {
            registry: Arc::clone(&writes_to),
            groups: group_source(&settings.groups, &metrics).await?,
            nodes: NodeDirectory::new(
                settings.gateway.nodes.clone(),
                Arc::clone(&registry),
                settings.gateway.port_metadata_key.clone(),
            ),
            fanout: FanOut::new(notifier, settings.gateway.concurrency),
            store: Arc::clone(&store),
            metrics: Arc::clone(&metrics),
            settings: settings.drain.clone(),
            replica: cluster.as_ref().map(|(.., replica)| replica.clone()),
        })
        .await
        .context("loading the desired state")?,
    );
    // Operations a previous run (or a leader that died) left unfinished are carried to the
    // end in the background: those past the registry step notify at once, the others wait
    // for the registry.
    background.spawn({
        let orchestrator = Arc::clone(&orchestrator);
        let token = shutdown.clone();
        async move {
            match orchestrator.resume_unfinished(&token).await {
                Ok(0) => {}
                Ok(resumed) => info!(resumed, "operations left unfinished resumed"),
                Err(e) => error!("cannot read the operations left unfinished: {e}"),
            }
        }
    });
    background.spawn({
        let orchestrator = Arc::clone(&orchestrator);
        let token = shutdown.clone();
        async move { orchestrator.refresh_groups(token).await }
    });
    background.spawn(reconcile::reconcile_forever(
        Arc::clone(&orchestrator),
        shutdown.clone(),
    ));
    background.spawn(prune_journal(
        Arc::clone(&store),
        settings.drain.idempotency_ttl,
        settings.store.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    if let Some(changes) = registry.changes() {
        background.spawn(reassert::keep_held_offline(
            Arc::clone(&orchestrator),
            changes,
            shutdown.clone(),
        ));
    }
    let app = router(AppState {
        orchestrator: Arc::clone(&orchestrator),
        security: Arc::new(settings.security.clone()),
        metrics,
        body_limits: BodyLimits {
            bytes: settings.server.body_limit,
            time: settings.server.body_read_timeout,
        },
        cluster: cluster.map(|(leadership, secret, replica)| ClusterRole {
            leadership,
            relay_secret: secret,
            replica: replica.into(),
        }),
    });
    Ok((orchestrator, app))
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
        let switch = RouterSwitch::default();
        let role = match &stores {
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
                switch.set(app);
                "single"
            }
            Stores::Postgres(pg) => {
                let (replica, advertise) = identity(&settings.cluster, local_addr)?;
                let row = LeaseRow::new(
                    pg.pool().clone(),
                    replica.clone(),
                    advertise,
                    settings.cluster.lease,
                );
                let secret: Arc<str> = row
                    .relay_secret()
                    .await
                    .context("reading the relay secret from the store")?
                    .into();
                let election = Arc::new(Election::new(row, replica.clone(), Arc::clone(&metrics)));
                switch.set(relay::router(RelayState {
                    client: relay::relay_client().context("building the relay client")?,
                    leader: election.leader(),
                    secret: Arc::clone(&secret),
                    policy: settings.security.policy.clone(),
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
                "follower until it takes the lease"
            }
        };
        let server = tokio::spawn(
            Listener {
                listener,
                router: switch.router(),
                policy: settings.security.policy.clone(),
                header_read_timeout: settings.server.header_read_timeout,
                max_connections: settings.server.max_connections,
                max_connections_per_ip: settings.server.max_connections_per_ip,
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

/// Every `store.prune_every` (and once at start): forgets settled operations past
/// `store.retention` and `Idempotency-Key`s past `drain.idempotency_ttl`.
async fn prune_journal(
    store: Arc<dyn Store>,
    ttl: Duration,
    settings: crate::config::StoreSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(settings.prune_every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match store
            .prune_operations(crate::drain::ago(settings.retention))
            .await
        {
            Ok(0) => {}
            Ok(pruned) => {
                metrics.operations_pruned.inc_by(pruned);
                info!(pruned, "settled operations past store.retention forgotten");
            }
            Err(e) => warn!("cannot apply store.retention: {e}"),
        }
        let before = crate::drain::ago(ttl);
        match store.prune_idempotency_keys(before).await {
            Ok(0) => {}
            Ok(forgotten) => info!(
                forgotten,
                "idempotency keys past drain.idempotency_ttl forgotten"
            ),
            Err(e) => warn!("cannot forget old idempotency keys: {e}"),
        }
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

/// The gateway groups' source: config, the route table, or both (the union).
async fn group_source(
    settings: &GroupsSettings,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<dyn GroupSource>> {
    let mut sources: Vec<Arc<dyn GroupSource>> = Vec::new();
    if let Some(routes) = &settings.routes {
        sources.push(Arc::new(StaticGroups::new(routes.clone())));
    }
    if let Some(sql) = &settings.sql {
        let table = SqlGroups::open(sql, Arc::clone(metrics))
            .await
            .context("opening the gateway route table")?;
        sources.push(Arc::new(table));
    }
    Ok(match sources.len() {
        1 => sources.remove(0),
        _ => Arc::new(Combined::new(sources)),
    })
}

/// The notifier of every group: `gateway.notifier`, except the groups listed in
/// `gateway.group_notifiers`. Both kinds are cheap to build and hold no connection.
fn notifier(settings: &GatewaySettings) -> Arc<dyn Notifier> {
    let webhook: Arc<dyn Notifier> = Arc::new(WebhookNotifier::new(settings));
    let haproxy: Arc<dyn Notifier> = Arc::new(HaproxyNotifier::new(settings));
    let of_kind = |kind: NotifierKind| match kind {
        NotifierKind::Webhook => Arc::clone(&webhook),
        NotifierKind::Haproxy => Arc::clone(&haproxy),
    };
    if settings.group_notifiers.is_empty() {
        return of_kind(settings.notifier);
    }
    let groups = settings
        .group_notifiers
        .iter()
        .map(|(group, kind)| (group.clone(), of_kind(*kind)))
        .collect();
    Arc::new(NotifierByGroup::new(of_kind(settings.notifier), groups))
}
