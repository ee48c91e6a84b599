//! The `zookeeper` registry kind: Spring Cloud Zookeeper instances, registered by Curator's
//! ServiceDiscovery under `{root}/{service}/{id}` (Curator's `ServiceDiscoveryImpl`).
//!
//! The cache is filled by one scan of the root and then kept current by a persistent recursive
//! watch on it: every created, changed or deleted znode is re-read, and nothing polls the tree.
//! Events lost while disconnected (ZOOKEEPER-4698) are made up for by a rescan on every
//! reconnection; an expired session is replaced by a new one. A status is written as a
//! compare-and-set of the znode that changes `payload.metadata.instance_status` and nothing
//! else.

pub mod model;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zookeeper_client::{AddWatchMode, Client, EventType, PersistentWatcher, SessionState};

use self::model::Registration;
use super::cache::{Change, InstanceCache};
use super::{Observed, Registry, RegistryError, StatusChange};
use crate::config::ZookeeperSettings;
use crate::domain::{AppName, Instance, InstanceKey, PeerOutcome, PeerResult, Status};
use crate::sync::lock;

/// Znodes read at once during a scan.
const SCAN_CONCURRENCY: usize = 32;
/// Compare-and-set attempts before a write gives up on a znode that keeps changing.
const CAS_ATTEMPTS: usize = 5;

pub struct ZookeeperRegistry {
    settings: ZookeeperSettings,
    /// The current session; replaced when one expires.
    client: Mutex<Option<Client>>,
    cache: InstanceCache,
    znodes: Mutex<Znodes>,
    /// `Some(reason)` while the registry cannot be trusted (not connected, never scanned).
    trouble: Mutex<Option<String>>,
}

/// Which znode holds which instance, both ways (a deletion event names only the path).
#[derive(Default)]
struct Znodes {
    path_of: HashMap<InstanceKey, String>,
    key_at: HashMap<String, InstanceKey>,
}

impl Znodes {
    fn insert(&mut self, key: InstanceKey, path: String) {
        if let Some(old) = self.path_of.insert(key.clone(), path.clone()) {
            self.key_at.remove(&old);
        }
        self.key_at.insert(path, key);
    }

    fn remove_path(&mut self, path: &str) -> Option<InstanceKey> {
        let key = self.key_at.remove(path)?;
        self.path_of.remove(&key);
        Some(key)
    }
}

/// Why a session with the ensemble ended (then it is started again).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect to {connect}: {source}")]
    Connect {
        connect: String,
        #[source]
        source: zookeeper_client::Error,
    },
    #[error("cannot watch {root}: {source}")]
    Watch {
        root: String,
        #[source]
        source: zookeeper_client::Error,
    },
    #[error("cannot scan {root}: {source}")]
    Scan {
        root: String,
        #[source]
        source: zookeeper_client::Error,
    },
    #[error("ZooKeeper session ended ({0})")]
    Ended(String),
}

/// Why an instance's address names no IP.
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("{0}")]
    Lookup(#[from] std::io::Error),
    #[error("no address")]
    NoAddress,
}

fn unreachable(e: zookeeper_client::Error) -> RegistryError {
    RegistryError::unreachable_by("ZooKeeper", e)
}

impl ZookeeperRegistry {
    pub fn new(settings: &ZookeeperSettings) -> Self {
        Self {
            settings: settings.clone(),
            client: Mutex::new(None),
            cache: InstanceCache::default(),
            znodes: Mutex::default(),
            trouble: Mutex::new(Some("not connected to ZooKeeper yet".into())),
        }
    }

    fn client(&self) -> Result<Client, RegistryError> {
        lock(&self.client)
            .clone()
            .ok_or_else(|| RegistryError::unreachable("not connected to ZooKeeper"))
    }

    fn set_trouble(&self, trouble: Option<String>) {
        *lock(&self.trouble) = trouble;
    }

    /// One call, bounded by `timeout`: a request made while disconnected waits for the
    /// reconnection, which may never come.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, zookeeper_client::Error>>,
    ) -> Result<T, zookeeper_client::Error> {
        tokio::time::timeout(self.settings.timeout, call)
            .await
            .unwrap_or(Err(zookeeper_client::Error::Timeout))
    }

    async fn connect(&self) -> Result<Client, zookeeper_client::Error> {
        Client::connector()
            .with_session_timeout(self.settings.session_timeout)
            .with_connection_timeout(self.settings.timeout)
            .connect(&self.settings.connect)
            .await
    }

    /// The instance a znode holds, its host name resolved. `Ok(None)`: not an instance (no
    /// data, or data that is not one, which is logged and skipped, never written).
    async fn read_instance(&self, path: &str, data: &[u8]) -> Option<Instance> {
        let registration = match model::parse(data) {
            Ok(Some(registration)) => registration,
            Ok(None) => return None,
            Err(reason) => {
                warn!(
                    znode = path,
                    "skipping a znode that is not a service instance: {reason}"
                );
                return None;
            }
        };
        let ip = match resolve(&registration).await {
            Ok(ip) => ip,
            Err(reason) => {
                warn!(znode = path, address = %registration.address, "skipping an instance whose address does not resolve: {reason}");
                return None;
            }
        };
        let app = match AppName::parse(&registration.name) {
            Ok(app) => app,
            Err(e) => {
                warn!(
                    znode = path,
                    "skipping an instance with service name '{}': {e}", registration.name
                );
                return None;
            }
        };
        Some(Instance {
            app,
            instance_id: registration.id.into(),
            ip,
            port: registration.port,
            status: registration.status,
            registered_at: registration.registered_at,
            metadata: registration.metadata,
        })
    }

    /// Walks the tree under the root and replaces the cache with what it holds.
    async fn scan(&self, client: &Client) -> Result<usize, zookeeper_client::Error> {
        let mut found: Vec<(String, Instance)> = Vec::new();
        let mut level = VecDeque::from([self.settings.root.clone()]);
        while !level.is_empty() {
            let reads = futures::stream::iter(level.drain(..).map(|path| async move {
                let children = match self.call(client.list_children(&path)).await {
                    Ok(children) => children,
                    Err(zookeeper_client::Error::NoNode) => Vec::new(),
                    Err(e) => return Err(e),
                };
                let data = match self.call(client.get_data(&path)).await {
                    Ok((data, _)) => data,
                    Err(zookeeper_client::Error::NoNode) => Vec::new(),
                    Err(e) => return Err(e),
                };
                let instance = if path == self.settings.root {
                    None
                } else {
                    self.read_instance(&path, &data).await
                };
                Ok((path, children, instance))
            }))
            .buffer_unordered(SCAN_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
            for read in reads {
                let (path, children, instance) = read?;
                match instance {
                    Some(instance) => found.push((path, instance)),
                    None => level.extend(
                        children
                            .into_iter()
                            .map(|child| format!("{}/{child}", path.trim_end_matches('/'))),
                    ),
                }
            }
        }
        let count = found.len();
        let mut znodes = Znodes::default();
        for (path, instance) in &found {
            znodes.insert(instance.key(), path.clone());
        }
        *lock(&self.znodes) = znodes;
        // The cache reports what the scan changed (an instance that wrote itself back UP
        // while the watch was away).
        self.cache
            .replace_all(found.into_iter().map(|(_, instance)| instance));
        Ok(count)
    }

    /// Re-reads one znode after a watch event.
    async fn reload(&self, client: &Client, path: &str) {
        let data = match self.call(client.get_data(path)).await {
            Ok((data, _)) => data,
            Err(zookeeper_client::Error::NoNode) => return self.forget(path),
            Err(e) => {
                warn!(znode = path, "cannot read a changed znode: {e}");
                return;
            }
        };
        let Some(instance) = self.read_instance(path, &data).await else {
            return self.forget(path);
        };
        debug!(znode = path, status = %instance.status, "instance changed");
        lock(&self.znodes).insert(instance.key(), path.to_owned());
        self.cache.apply(vec![Change::Upsert(instance)]);
    }

    fn forget(&self, path: &str) {
        if let Some(key) = lock(&self.znodes).remove_path(path) {
            debug!(znode = path, "instance left");
            self.cache.apply(vec![Change::Remove(key)]);
        }
    }

    /// One session: watch, scan, then follow events until the session ends or `shutdown`.
    async fn follow(
        &self,
        client: &Client,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let mut states = client.state_watcher();
        let mut watcher = self.watch_and_scan(client).await?;
        let mut disconnected = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                state = states.changed() => match state {
                    SessionState::Disconnected => {
                        warn!("disconnected from ZooKeeper; reconnecting");
                        disconnected = true;
                        self.set_trouble(Some("disconnected from ZooKeeper".into()));
                    }
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        if disconnected {
                            disconnected = false;
                            // Events during the disconnection may be lost (ZOOKEEPER-4698):
                            // watch anew and read everything again.
                            match self.watch_and_scan(client).await {
                                Ok(renewed) => watcher = renewed,
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    // A terminal state: the session is gone, and this watcher with it.
                    state => return Err(SessionError::Ended(format!("{state:?}"))),
                },
                event = watcher.changed() => match event.event_type {
                    EventType::NodeCreated | EventType::NodeDataChanged => {
                        self.reload(client, &event.path).await;
                    }
                    EventType::NodeDeleted => self.forget(&event.path),
                    // Session states arrive through `states` above.
                    EventType::Session | EventType::NodeChildrenChanged => {
                        if event.session_state.is_terminated() {
                            return Err(SessionError::Ended(format!("{:?}", event.session_state)));
                        }
                    }
                },
            }
        }
    }

    /// Sets the persistent recursive watch on the root, then scans it: in that order, so no
    /// change between the two is missed.
    async fn watch_and_scan(&self, client: &Client) -> Result<PersistentWatcher, SessionError> {
        let root = &self.settings.root;
        let watcher = self
            .call(client.watch(root, AddWatchMode::PersistentRecursive))
            .await
            .map_err(|source| SessionError::Watch {
                root: root.clone(),
                source,
            })?;
        let count = self
            .scan(client)
            .await
            .map_err(|source| SessionError::Scan {
                root: root.clone(),
                source,
            })?;
        info!(instances = count, root = %self.settings.root, "ZooKeeper registry loaded");
        self.set_trouble(None);
        Ok(watcher)
    }
}

/// An instance's IP: its `address` when that is one, else the host name resolved (IPv4
/// preferred, as Spring registers and gateways connect).
async fn resolve(registration: &Registration) -> Result<IpAddr, ResolveError> {
    if let Ok(ip) = crate::domain::ip::parse_ip(&registration.address) {
        return Ok(ip);
    }
    let addresses: Vec<IpAddr> =
        tokio::net::lookup_host((registration.address.as_str(), registration.port))
            .await?
            .map(|socket| crate::domain::ip::canonical(socket.ip()))
            .collect();
    addresses
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| addresses.first())
        .copied()
        .ok_or(ResolveError::NoAddress)
}

#[async_trait]
impl Registry for ZookeeperRegistry {
    fn kind(&self) -> &'static str {
        "zookeeper"
    }

    async fn instances_on(&self, ip: IpAddr) -> Result<Vec<Instance>, RegistryError> {
        self.cache.loaded_on_ip(ip, "ZooKeeper not scanned yet")
    }

    async fn instances_of(&self, app: &AppName) -> Result<Vec<Instance>, RegistryError> {
        self.cache.loaded_of_app(app, "ZooKeeper not scanned yet")
    }

    fn app_version(&self, app: &AppName) -> Option<u64> {
        Some(self.cache.app_version(app))
    }

    async fn set_status(
        &self,
        instance: &Instance,
        status: Status,
    ) -> Result<StatusChange, RegistryError> {
        let key = instance.key();
        let path = lock(&self.znodes)
            .path_of
            .get(&key)
            .cloned()
            .ok_or(RegistryError::NotFound)?;
        let client = self.client()?;
        for _ in 0..CAS_ATTEMPTS {
            let (data, stat) = match self.call(client.get_data(&path)).await {
                Ok(read) => read,
                Err(zookeeper_client::Error::NoNode) => return Err(RegistryError::NotFound),
                Err(e) => return Err(unreachable(e)),
            };
            let current = model::parse(&data)
                .map_err(|reason| RegistryError::malformed_by(&path, reason))?
                .ok_or_else(|| RegistryError::malformed(format!("{path} has no data")))?;
            if *current.id != *instance.instance_id
                || (instance.registered_at.is_some()
                    && current.registered_at != instance.registered_at)
            {
                return Err(RegistryError::Refused(format!(
                    "{path} now holds another registration"
                )));
            }
            let rewritten = model::with_status(&data, status)
                .map_err(|reason| RegistryError::malformed_by(&path, reason))?;
            match self
                .call(client.set_data(&path, &rewritten, Some(stat.version)))
                .await
            {
                Ok(_) => {
                    self.cache.set_status(&key, status);
                    return Ok(StatusChange {
                        peers: vec![PeerResult {
                            peer: format!("zookeeper:{}{path}", self.settings.connect),
                            outcome: PeerOutcome::Accepted,
                            verified_status: Some(status),
                            error: None,
                        }],
                    });
                }
                // Someone wrote in between (the instance itself, often): read again.
                Err(zookeeper_client::Error::BadVersion) => continue,
                Err(zookeeper_client::Error::NoNode) => return Err(RegistryError::NotFound),
                Err(zookeeper_client::Error::NoAuth) => {
                    return Err(RegistryError::Refused(format!(
                        "not authorized to write {path}"
                    )));
                }
                Err(e) => return Err(unreachable(e)),
            }
        }
        Err(RegistryError::Refused(format!(
            "{path} kept changing during {CAS_ATTEMPTS} compare-and-set attempts"
        )))
    }

    async fn refresh(&self) -> Result<(), RegistryError> {
        let client = self.client()?;
        self.scan(&client).await.map(|_| ()).map_err(unreachable)
    }

    async fn readiness(&self) -> Result<(), RegistryError> {
        match lock(&self.trouble).clone() {
            None => Ok(()),
            Some(reason) => Err(RegistryError::unreachable(reason)),
        }
    }

    fn changes(&self) -> Option<broadcast::Receiver<Observed>> {
        Some(self.cache.subscribe())
    }

    fn registration_time_identifies_process(&self) -> bool {
        true
    }

    async fn run(&self, shutdown: CancellationToken) {
        let mut pause = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return,
                connected = self.connect() => connected,
            };
            let outcome = match connected {
                Ok(client) => {
                    *lock(&self.client) = Some(client.clone());
                    pause = Duration::from_millis(200);
                    self.follow(&client, &shutdown).await
                }
                Err(source) => Err(SessionError::Connect {
                    connect: self.settings.connect.clone(),
                    source,
                }),
            };
            if let Err(reason) = outcome {
                warn!("{reason}; retrying in {pause:?}");
                self.set_trouble(Some(reason.to_string()));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}
