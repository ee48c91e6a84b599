//! Step 1: resolve a request into instances, gateway groups and nodes, without changing
//! anything. A dry run stops here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::config::PlanBounds;
use crate::domain::{AppName, Instance, InstanceKey, Route, Target};
use crate::gateway::GatewayNode;
use crate::gateway::nodes::NodeDirectory;
use crate::groups::GroupSource;
use crate::registry::Registry;

use super::DrainError;

/// What an operation will touch.
#[derive(Debug, Clone)]
pub struct Plan {
    pub instances: Vec<Instance>,
    /// Each node with the app it hears about; a node in two groups, or routing two apps of
    /// the same IP, appears once per (group, app).
    pub deliveries: Vec<(GatewayNode, AppName)>,
    /// The groups found for each app, and where each came from.
    pub routes: Vec<Route>,
}

impl Plan {
    /// What the caller should know of this plan that is no failure: apps no gateway group
    /// routes to (their registry status changes, and no gateway hears of it).
    pub fn warnings(&self) -> Vec<String> {
        let apps: BTreeSet<&AppName> = self.instances.iter().map(|i| &i.app).collect();
        apps.into_iter()
            .filter(|app| !self.routes.iter().any(|route| &route.app == *app))
            .map(|app| {
                format!("no gateway group routes to {app}: its registry status changes, no gateway is told")
            })
            .collect()
    }
}

/// The instances each target matches. A target that matches nothing in the cache triggers one
/// refresh (the instance may have registered since the last one) before it counts as missing.
pub async fn resolve_instances(
    registry: &dyn Registry,
    targets: &[Target],
    bounds: PlanBounds,
) -> Result<Vec<Instance>, DrainError> {
    let mut refreshed = false;
    let mut found: BTreeMap<InstanceKey, Instance> = BTreeMap::new();
    let mut missing = Vec::new();
    for target in targets {
        let mut matches = matching(registry, target.ip, target).await?;
        if matches.is_empty() && !refreshed {
            refreshed = true;
            // A failed refresh leaves the cache as it was; the answer is then "not found"
            // from the last good copy, which is what a caller can act on.
            let _ = registry.refresh().await;
            matches = matching(registry, target.ip, target).await?;
        }
        if matches.is_empty() {
            missing.push(describe(target));
        }
        for instance in matches {
            found.insert(instance.key(), instance);
        }
    }
    if !missing.is_empty() {
        return Err(DrainError::NoMatch(missing.join(", ")));
    }
    if found.len() > bounds.instances {
        return Err(too_large(format!(
            "it matches {} instances, more than drain.max_instances ({})",
            found.len(),
            bounds.instances
        )));
    }
    Ok(found.into_values().collect())
}

async fn matching(
    registry: &dyn Registry,
    ip: IpAddr,
    target: &Target,
) -> Result<Vec<Instance>, DrainError> {
    Ok(registry
        .instances_on(ip)
        .await
        .map_err(DrainError::registry_unavailable)?
        .into_iter()
        .filter(|instance| target.matches(instance))
        .collect())
}

/// `10.0.0.5`, `10.0.0.5 port 8080`, `10.0.0.5 app ORDER-SERVICE`.
pub fn describe(target: &Target) -> String {
    let mut text = target.ip.to_string();
    if let Some(port) = target.port {
        text.push_str(&format!(" port {port}"));
    }
    if let Some(app) = &target.app {
        text.push_str(&format!(" app {app}"));
    }
    text
}

fn too_large(what: String) -> DrainError {
    DrainError::PlanTooLarge(format!(
        "the operation is too large: {what}; nothing was changed (split it, or fix the route \
         table or registry that lists so many)"
    ))
}

/// The gateway nodes that must hear about these instances, and the routes that name them.
/// The bounds are checked as the plan grows, so an absurd route table costs no node lookups.
pub async fn resolve_deliveries(
    groups: &dyn GroupSource,
    nodes: &NodeDirectory,
    instances: &[Instance],
    bounds: PlanBounds,
) -> Result<(Vec<(GatewayNode, AppName)>, Vec<Route>), DrainError> {
    let apps: BTreeSet<&AppName> = instances.iter().map(|i| &i.app).collect();
    let mut deliveries = BTreeSet::new();
    let mut routes = Vec::new();
    for app in apps {
        let found_groups = groups.groups_for(app).await.map_err(DrainError::Groups)?;
        if routes.len() + found_groups.len() > bounds.groups {
            return Err(too_large(format!(
                "{} gateway groups route to its apps, more than drain.max_groups ({})",
                routes.len() + found_groups.len(),
                bounds.groups
            )));
        }
        for found in found_groups {
            let nodes = nodes
                .nodes_of(&found.group)
                .await
                .map_err(DrainError::registry_unavailable)?;
            for node in nodes.iter() {
                deliveries.insert((node.clone(), app.clone()));
            }
            if deliveries.len() > bounds.nodes {
                return Err(too_large(format!(
                    "it would notify more than drain.max_nodes ({}) gateway nodes",
                    bounds.nodes
                )));
            }
            routes.push(Route {
                app: app.clone(),
                group: found.group,
                source: found.source,
                mapping_age_ms: found
                    .age
                    .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            });
        }
    }
    Ok((deliveries.into_iter().collect(), routes))
}
