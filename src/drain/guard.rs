//! `drain.min_up`: a guard against draining a whole service. A deploy platform with a bug,
//! or a batch with one target too many, could take every instance of an app out at once,
//! and synchspeed would faithfully tell every gateway; like Kubernetes' PodDisruptionBudget,
//! an offline that would leave an app with fewer UP instances than its `min_up` is refused
//! (409), nothing changed, unless the caller forces it, and then the operation says so.

use std::collections::BTreeSet;

use super::{DrainError, Orchestrator, Plan};
use crate::domain::{AppName, Status};

impl Orchestrator {
    /// What the guard says of taking `plan`'s instances out: one line per app it would leave
    /// with too few UP instances (empty when it lets the offline through).
    pub(super) async fn min_up_violations(&self, plan: &Plan) -> Result<Vec<String>, DrainError> {
        let apps: BTreeSet<&AppName> = plan.instances.iter().map(|i| &i.app).collect();
        let mut violations = Vec::new();
        for app in apps {
            let min = self.settings.min_up_of(app);
            if min == 0 {
                continue;
            }
            let up_now = self
                .registry
                .instances_of(app)
                .await
                .map_err(DrainError::registry_unavailable)?
                .iter()
                .filter(|instance| instance.status == Status::Up)
                .count();
            let taking = plan
                .instances
                .iter()
                .filter(|instance| &instance.app == app && instance.status == Status::Up)
                .count();
            let left = up_now.saturating_sub(taking);
            if taking > 0 && left < min {
                violations.push(format!(
                    "taking {taking} UP instance(s) of {app} out would leave {left} of {up_now} UP; drain.min_up for it is {min}"
                ));
            }
        }
        Ok(violations)
    }
}
