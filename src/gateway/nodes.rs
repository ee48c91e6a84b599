//! Gateway group → its nodes: listed in config, or the group's UP instances in the registry.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::GatewayNode;
use crate::domain::{AppName, Instance, Status};
use crate::registry::{Registry, RegistryError};

pub struct NodeDirectory {
    static_nodes: BTreeMap<AppName, Vec<String>>,
    registry: Arc<dyn Registry>,
    /// Metadata key holding the notification port (Spring Cloud publishes `management.port`).
    port_metadata_key: Option<String>,
}

impl NodeDirectory {
    pub fn new(
        static_nodes: BTreeMap<AppName, Vec<String>>,
        registry: Arc<dyn Registry>,
        port_metadata_key: Option<String>,
    ) -> Self {
        Self {
            static_nodes,
            registry,
            port_metadata_key,
        }
    }

    /// The nodes of `group`. From the registry only UP instances count: the raw list holds
    /// every status, and a node that is DOWN or itself out of service routes nothing.
    pub async fn nodes_of(&self, group: &AppName) -> Result<Vec<GatewayNode>, RegistryError> {
        if let Some(listed) = self.static_nodes.get(group) {
            return Ok(listed
                .iter()
                .map(|address| GatewayNode {
                    group: group.clone(),
                    address: address.clone(),
                })
                .collect());
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
        Ok(nodes)
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
