//! Gateway group → its nodes: listed in config, or the group's UP instances in the registry.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::GatewayNode;
use crate::domain::{AppName, Instance, Status};
use crate::registry::{Registry, RegistryError};

/// A group's nodes, shared by every operation that tells them.
pub type Nodes = Arc<[GatewayNode]>;

pub struct NodeDirectory {
    static_nodes: BTreeMap<AppName, Nodes>,
    registry: Arc<dyn Registry>,
    /// Metadata key holding the notification port (Spring Cloud publishes `management.port`).
    port_metadata_key: Option<String>,
    /// Each group's nodes as derived from the registry, with the group's version then: every
    /// operation on a hundred-node group would otherwise copy, filter and sort its instances
    /// again while the caller waits.
    derived: Mutex<HashMap<AppName, (u64, Nodes)>>,
}

impl NodeDirectory {
    pub fn new(
        static_nodes: BTreeMap<AppName, Vec<String>>,
        registry: Arc<dyn Registry>,
        port_metadata_key: Option<String>,
    ) -> Self {
        let static_nodes = static_nodes
            .into_iter()
            .map(|(group, addresses)| {
                let nodes = addresses
                    .into_iter()
                    .map(|address| GatewayNode {
                        group: group.clone(),
                        address,
                    })
                    .collect();
                (group, nodes)
            })
            .collect();
        Self {
            static_nodes,
            registry,
            port_metadata_key,
            derived: Mutex::default(),
        }
    }

    /// The nodes of `group`. From the registry only UP instances count: the raw list holds
    /// every status, and a node that is DOWN or itself out of service routes nothing.
    pub async fn nodes_of(&self, group: &AppName) -> Result<Nodes, RegistryError> {
        if let Some(listed) = self.static_nodes.get(group) {
            return Ok(Arc::clone(listed));
        }
        // Read before the instances (see `Registry::app_version`).
        let version = self.registry.app_version(group);
        if let Some(version) = version
            && let Some((derived_at, nodes)) = self.derived().get(group)
            && *derived_at == version
        {
            return Ok(Arc::clone(nodes));
        }
        let mut nodes: Vec<GatewayNode> = self
            .registry
            .instances_of(group)
            .await?
            .iter()
            .filter(|instance| instance.status == Status::Up)
            .map(|instance| GatewayNode {
                group: group.clone(),
                address: self.address_of(instance),
            })
            .collect();
        nodes.sort();
        nodes.dedup();
        let nodes: Nodes = nodes.into();
        if let Some(version) = version {
            self.derived()
                .insert(group.clone(), (version, Arc::clone(&nodes)));
        }
        Ok(nodes)
    }

    fn derived(&self) -> std::sync::MutexGuard<'_, HashMap<AppName, (u64, Nodes)>> {
        crate::sync::lock(&self.derived)
    }

    fn address_of(&self, instance: &Instance) -> String {
        let port = self
            .port_metadata_key
            .as_ref()
            .and_then(|key| instance.metadata.get(key))
            .and_then(|value| value.trim().parse::<u16>().ok())
            .unwrap_or(instance.port);
        SocketAddr::new(instance.ip, port).to_string()
    }
}
