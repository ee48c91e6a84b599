//! One deployment, several gateway kinds: each group is told through its own notifier.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{Delivery, GatewayNode, Notification, Notifier, Progress};
use crate::domain::AppName;

pub struct NotifierByGroup {
    default: Arc<dyn Notifier>,
    groups: BTreeMap<AppName, Arc<dyn Notifier>>,
}

impl NotifierByGroup {
    /// `groups` names the groups whose kind differs from `default`'s.
    pub fn new(default: Arc<dyn Notifier>, groups: BTreeMap<AppName, Arc<dyn Notifier>>) -> Self {
        Self { default, groups }
    }
}

#[async_trait]
impl Notifier for NotifierByGroup {
    async fn notify(
        &self,
        node: &GatewayNode,
        notification: &Notification,
        progress: &Progress,
    ) -> Delivery {
        let notifier = self.groups.get(&node.group).unwrap_or(&self.default);
        notifier.notify(node, notification, progress).await
    }
}
