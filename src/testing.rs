//! Doubles for testing in process, without TCP: a registry in memory, a notifier that
//! acknowledges and remembers, a group source whose database is down, and an orchestrator
//! over them with a SQLite journal in a temporary folder.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::domain::{Action, AppName, Instance, OperationId, PeerOutcome, PeerResult, Status};
use crate::domain::{Hold, InstanceKey, Operation};
use crate::drain::{Orchestrator, Parts};
use crate::gateway::fanout::FanOut;
use crate::gateway::nodes::NodeDirectory;
use crate::gateway::{Delivery, GatewayNode, Notification, Notifier, Progress};
use crate::groups::{GroupRoute, GroupSource, GroupsError, StaticGroups};
use crate::registry::{Registry, RegistryError, StatusChange};
use crate::store::sqlite::SqliteStore;
use crate::store::{
    DesiredState, IdempotencyKey, OperationFilter, OperationPage, Store, StoreError,
};
use crate::sync::lock;
use crate::telemetry::Metrics;
use std::collections::HashMap;

pub(crate) const APP: &str = "ORDER-SERVICE";
pub(crate) const GROUP: &str = "GATEWAY-PUBLIC";
pub(crate) const NODES: [&str; 2] = ["10.2.0.11:9000", "10.2.0.12:9000"];

pub(crate) fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

pub(crate) fn app(name: &str) -> AppName {
    AppName::parse(name).unwrap()
}

/// How the in-memory registry answers a write of one instance.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Accept,
    Refuse,
    TimedOut,
}

/// A registry in memory: its instances, how it answers each one's writes, and every write.
#[derive(Default)]
pub(crate) struct MemoryRegistry {
    instances: Mutex<Vec<Instance>>,
    answers: Mutex<BTreeMap<String, Answer>>,
    writes: Mutex<Vec<(String, Status)>>,
}

impl MemoryRegistry {
    pub(crate) fn with(instances: Vec<Instance>) -> Arc<Self> {
        Arc::new(Self {
            instances: Mutex::new(instances),
            ..Self::default()
        })
    }

    pub(crate) fn answer(&self, instance_id: &str, answer: Answer) {
        lock(&self.answers).insert(instance_id.into(), answer);
    }

    pub(crate) fn writes(&self) -> Vec<(String, Status)> {
        lock(&self.writes).clone()
    }

    /// The registry changes a status by itself (a re-registration overwriting synchspeed's).
    pub(crate) fn overwrite(&self, instance_id: &str, status: Status) {
        for instance in lock(&self.instances).iter_mut() {
            if &*instance.instance_id == instance_id {
                instance.status = status;
            }
        }
    }

    pub(crate) fn status_of(&self, instance_id: &str) -> Status {
        lock(&self.instances)
            .iter()
            .find(|i| &*i.instance_id == instance_id)
            .map(|i| i.status)
            .unwrap()
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn instances_on(&self, ip: IpAddr) -> Result<Vec<Instance>, RegistryError> {
        Ok(lock(&self.instances)
            .iter()
            .filter(|i| i.ip == ip)
            .cloned()
            .collect())
    }

    async fn instances_of(&self, app: &AppName) -> Result<Vec<Instance>, RegistryError> {
        Ok(lock(&self.instances)
            .iter()
            .filter(|i| &i.app == app)
            .cloned()
            .collect())
    }

    async fn set_status(
        &self,
        instance: &Instance,
        status: Status,
    ) -> Result<StatusChange, RegistryError> {
        let id = instance.instance_id.to_string();
        lock(&self.writes).push((id.clone(), status));
        let answer = lock(&self.answers)
            .get(&id)
            .copied()
            .unwrap_or(Answer::Accept);
        match answer {
            Answer::Refuse => return Err(RegistryError::Refused("409 from the test".into())),
            Answer::TimedOut => return Err(RegistryError::unreachable("timed out")),
            Answer::Accept => {}
        }
        for stored in lock(&self.instances).iter_mut() {
            if stored.key() == instance.key() {
                stored.status = status;
            }
        }
        Ok(StatusChange {
            peers: vec![PeerResult {
                peer: "memory".into(),
                outcome: PeerOutcome::Accepted,
                verified_status: None,
                error: None,
            }],
        })
    }

    async fn refresh(&self) -> Result<(), RegistryError> {
        Ok(())
    }

    async fn readiness(&self) -> Result<(), RegistryError> {
        Ok(())
    }

    async fn run(&self, shutdown: CancellationToken) {
        shutdown.cancelled().await;
    }
}

/// Acknowledges every notification and remembers who heard what.
#[derive(Default)]
pub(crate) struct RecordingNotifier {
    heard: Mutex<Vec<(String, OperationId, Action)>>,
}

impl RecordingNotifier {
    pub(crate) fn heard(&self) -> Vec<(String, OperationId, Action)> {
        lock(&self.heard).clone()
    }
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn notify(
        &self,
        node: &GatewayNode,
        notification: &Notification,
        _progress: &Progress,
    ) -> Delivery {
        lock(&self.heard).push((
            node.address.clone(),
            notification.operation_id.clone(),
            notification.event,
        ));
        Delivery {
            acked: true,
            attempts: 1,
            elapsed: Duration::from_millis(1),
            error: None,
            haproxy: None,
        }
    }
}

/// A group source whose database is down.
pub(crate) struct UnreachableGroups;

#[async_trait]
impl GroupSource for UnreachableGroups {
    async fn groups_for(&self, app: &AppName) -> Result<Vec<GroupRoute>, GroupsError> {
        Err(GroupsError::Unavailable {
            app: app.clone(),
            reason: "connection refused".into(),
        })
    }
}

pub(crate) fn instance(id: &str, at: &str, port: u16) -> Instance {
    Instance {
        app: app(APP),
        instance_id: id.into(),
        ip: ip(at),
        port,
        status: Status::Up,
        registered_at: Some(1),
        metadata: BTreeMap::new(),
    }
}

/// Two instances of ORDER-SERVICE on 10.0.0.5, one on 10.0.0.6.
pub(crate) fn fleet() -> Arc<MemoryRegistry> {
    MemoryRegistry::with(vec![
        instance("a", "10.0.0.5", 8080),
        instance("b", "10.0.0.5", 8081),
        instance("c", "10.0.0.6", 8080),
    ])
}

/// A real SQLite store whose writes fail on demand, as a full disk or a read-only mount
/// makes them fail.
pub(crate) struct FailingStore {
    store: Arc<SqliteStore>,
    pub(crate) writes_fail: std::sync::atomic::AtomicBool,
}

impl FailingStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.writes_fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Database(sqlx::Error::Io(
                std::io::Error::other("database or disk is full"),
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FailingStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.check()?;
        self.store.ping().await
    }
    async fn insert_operation(
        &self,
        operation: &Operation,
        key: Option<&IdempotencyKey>,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.store.insert_operation(operation, key).await
    }
    async fn idempotent_operation(
        &self,
        principal: &str,
        key: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(String, OperationId)>, StoreError> {
        self.store.idempotent_operation(principal, key, since).await
    }
    async fn prune_operations(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, StoreError> {
        self.check()?;
        self.store.prune_operations(before).await
    }
    async fn prune_idempotency_keys(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, StoreError> {
        self.check()?;
        self.store.prune_idempotency_keys(before).await
    }
    async fn update_operation(&self, operation: &Operation) -> Result<(), StoreError> {
        self.check()?;
        self.store.update_operation(operation).await
    }
    async fn operation(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        self.store.operation(id).await
    }
    async fn operations(&self, filter: &OperationFilter) -> Result<OperationPage, StoreError> {
        self.store.operations(filter).await
    }
    async fn last_operation_ids(&self) -> Result<Vec<(IpAddr, OperationId)>, StoreError> {
        self.store.last_operation_ids().await
    }
    async fn unfinished_operations(&self) -> Result<Vec<Operation>, StoreError> {
        self.store.unfinished_operations().await
    }
    async fn record_registry_step(
        &self,
        operation: &Operation,
        desired: &DesiredState,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.store.record_registry_step(operation, desired).await
    }
    async fn release_holds(&self, keys: &[InstanceKey]) -> Result<(), StoreError> {
        self.check()?;
        self.store.release_holds(keys).await
    }
    async fn holds(&self) -> Result<Vec<Hold>, StoreError> {
        self.store.holds().await
    }
    async fn file_statuses(&self) -> Result<HashMap<InstanceKey, Status>, StoreError> {
        self.store.file_statuses().await
    }
    async fn set_file_status(&self, key: &InstanceKey, status: Status) -> Result<(), StoreError> {
        self.check()?;
        self.store.set_file_status(key, status).await
    }
}

pub(crate) struct Harness {
    pub(crate) orchestrator: Orchestrator,
    pub(crate) registry: Arc<MemoryRegistry>,
    pub(crate) notifier: Arc<RecordingNotifier>,
    pub(crate) store: Arc<SqliteStore>,
    /// The store the orchestrator writes to: `store`, failing on demand.
    pub(crate) failing: Arc<FailingStore>,
    pub(crate) _dir: tempfile::TempDir,
}

pub(crate) async fn orchestrator_on(
    registry: &Arc<MemoryRegistry>,
    groups: Arc<dyn GroupSource>,
    store: &Arc<dyn Store>,
    notifier: &Arc<RecordingNotifier>,
) -> Orchestrator {
    let settings = Settings::from_toml("").unwrap();
    let as_registry: Arc<dyn Registry> = Arc::clone(registry) as Arc<dyn Registry>;
    let nodes = BTreeMap::from([(app(GROUP), NODES.map(String::from).to_vec())]);
    Orchestrator::open(Parts {
        registry: Arc::clone(&as_registry),
        groups,
        nodes: NodeDirectory::new(nodes, as_registry, None),
        fanout: FanOut::new(Arc::clone(notifier) as Arc<dyn Notifier>, 16),
        store: Arc::clone(store),
        metrics: Arc::new(Metrics::new()),
        settings: settings.drain,
        replica: None,
    })
    .await
    .unwrap()
}

pub(crate) async fn harness_with(groups: Arc<dyn GroupSource>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("journal.db").display());
    let store = Arc::new(SqliteStore::connect(&url).await.unwrap());
    let failing = Arc::new(FailingStore {
        store: Arc::clone(&store),
        writes_fail: std::sync::atomic::AtomicBool::new(false),
    });
    let registry = fleet();
    let notifier = Arc::new(RecordingNotifier::default());
    let writes_to: Arc<dyn Store> = Arc::clone(&failing) as Arc<dyn Store>;
    let orchestrator = orchestrator_on(&registry, groups, &writes_to, &notifier).await;
    Harness {
        orchestrator,
        registry,
        notifier,
        store,
        failing,
        _dir: dir,
    }
}

pub(crate) async fn harness() -> Harness {
    let routes = BTreeMap::from([(app(APP), vec![app(GROUP)])]);
    harness_with(Arc::new(StaticGroups::new(routes))).await
}

/// An operation on `ip` with no instance or node yet, as a test starts one.
pub(crate) fn operation_on(at: &str) -> crate::domain::Operation {
    use crate::domain::operation::{Caller, Origin, Target};
    use crate::domain::{Action, Operation, OperationId, OperationState};
    Operation {
        id: OperationId::generate(),
        action: Action::Offline,
        state: OperationState::InProgress,
        target: Target {
            ip: ip(at),
            port: None,
            app: None,
        },
        targets: vec![],
        reason: None,
        caller: Caller {
            addr: ip("127.0.0.1"),
            principal: None,
        },
        origin: Origin::Api,
        instances: vec![],
        routes: vec![],
        gateways: vec![],
        warnings: vec![],
        error: None,
        created_at: chrono::Utc::now(),
        registry_updated_at: None,
        completed_at: None,
        replica: None,
    }
}
