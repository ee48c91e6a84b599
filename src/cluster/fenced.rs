//! The leader's writes outside PostgreSQL, fenced by its lease: a registry status or a gateway
//! notification goes out only while [`Leadership::check`] passes. The journal is fenced in
//! the database itself (`store::postgres`); these two cannot be, so they are fenced by the
//! lease's local deadline, which a paused process finds passed as soon as it runs again.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::lease::Leadership;
use crate::domain::{Action, AppName, Instance, InstanceKey, PeerResult, Status};
use crate::gateway::{Delivery, GatewayNode, Notification, Notifier, Progress};
use crate::registry::{Observed, Registry, RegistryError, Sighting, StatusChange};

/// The registry, with every status write fenced. Reads pass through.
pub struct FencedRegistry {
    pub inner: Arc<dyn Registry>,
    pub leadership: Arc<Leadership>,
}

#[async_trait]
impl Registry for FencedRegistry {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn instances_on(&self, ip: IpAddr) -> Result<Vec<Instance>, RegistryError> {
        self.inner.instances_on(ip).await
    }

    async fn instances_of(&self, app: &AppName) -> Result<Vec<Instance>, RegistryError> {
        self.inner.instances_of(app).await
    }

    fn app_version(&self, app: &AppName) -> Option<u64> {
        self.inner.app_version(app)
    }

    async fn set_status(
        &self,
        instance: &Instance,
        status: Status,
    ) -> Result<StatusChange, RegistryError> {
        self.leadership
            .check()
            .map_err(|lapsed| RegistryError::unreachable(lapsed.to_string()))?;
        self.inner.set_status(instance, status).await
    }

    async fn verify(&self, instance: &Instance, status: Status, peers: &mut [PeerResult]) {
        self.inner.verify(instance, status, peers).await;
    }

    async fn refresh(&self) -> Result<(), RegistryError> {
        self.inner.refresh().await
    }

    async fn readiness(&self) -> Result<(), RegistryError> {
        self.inner.readiness().await
    }

    async fn run(&self, shutdown: CancellationToken) {
        self.inner.run(shutdown).await;
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Observed>> {
        self.inner.changes()
    }

    fn registration_time_identifies_process(&self) -> bool {
        self.inner.registration_time_identifies_process()
    }

    async fn sightings(&self, key: &InstanceKey, ip: IpAddr) -> Vec<(String, Sighting)> {
        self.inner.sightings(key, ip).await
    }

    fn operator_state_outlives_instance(&self) -> Option<Duration> {
        self.inner.operator_state_outlives_instance()
    }

    fn placement(&self, instance_id: &str) -> Option<(String, String)> {
        self.inner.placement(instance_id)
    }

    fn plan_warnings(&self, action: Action, instances: &[Instance]) -> Vec<String> {
        self.inner.plan_warnings(action, instances)
    }
}

/// The notifier, with every notification fenced: a node is not told by a replica that no
/// longer leads (the leader that took over tells it, with the same operation id).
pub struct FencedNotifier {
    pub inner: Arc<dyn Notifier>,
    pub leadership: Arc<Leadership>,
}

#[async_trait]
impl Notifier for FencedNotifier {
    async fn notify(
        &self,
        node: &GatewayNode,
        notification: &Notification,
        progress: &Progress,
    ) -> Delivery {
        if let Err(lapsed) = self.leadership.check() {
            return Delivery::failed(0, Duration::ZERO, lapsed.to_string());
        }
        self.inner.notify(node, notification, progress).await
    }
}
