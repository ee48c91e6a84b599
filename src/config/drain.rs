//! `[drain]`: how operations are waited for, bounded, and kept to afterwards.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, app_name, invalid, positive_duration};
use crate::domain::AppName;

#[derive(Debug, Clone)]
pub struct DrainSettings {
    /// `timeout` when a caller asks to `wait` without one.
    pub wait_timeout: Duration,
    /// The largest `timeout` a caller may ask for.
    pub wait_timeout_max: Duration,
    /// Operations in flight at once; past it callers get 429.
    pub max_in_flight: usize,
    /// How long a hold lasts at most; past it synchspeed stops re-asserting (logged).
    pub hold_max: Duration,
    /// How often every hold is compared with what each registry peer says.
    pub reconcile_every: Duration,
    /// The longest wait between two re-notifications of a node that stays down.
    pub retry_max: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// The fewest UP instances an offline may leave an app with (0: no guard), per app.
    pub min_up: BTreeMap<AppName, usize>,
    /// The same for every app not listed (`"*"`).
    pub min_up_default: usize,
    /// The most one operation may carry; past any of them it is refused before anything
    /// changes (a bad route table must not write megabytes into the journal per call).
    pub bounds: PlanBounds,
}

/// What one operation may carry at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanBounds {
    pub instances: usize,
    /// Gateway groups across the operation's apps.
    pub groups: usize,
    /// Deliveries: a node once per (group, app) it hears about.
    pub nodes: usize,
}

impl DrainSettings {
    /// The fewest UP instances an offline may leave `app` with.
    pub fn min_up_of(&self, app: &AppName) -> usize {
        self.min_up.get(app).copied().unwrap_or(self.min_up_default)
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrain {
    wait_timeout: String,
    wait_timeout_max: String,
    max_in_flight: usize,
    max_instances: usize,
    max_groups: usize,
    max_nodes: usize,
    hold_max: String,
    reconcile_every: String,
    retry_max: String,
    idempotency_ttl: String,
    /// An empty table by default (no guard), which the merged layers may leave out.
    #[serde(default)]
    min_up: BTreeMap<String, usize>,
}

impl RawDrain {
    pub(super) fn validate(self) -> Result<DrainSettings, ConfigError> {
        let wait_timeout = positive_duration("drain.wait_timeout", &self.wait_timeout)?;
        let wait_timeout_max = positive_duration("drain.wait_timeout_max", &self.wait_timeout_max)?;
        if wait_timeout > wait_timeout_max {
            return Err(invalid(
                "drain.wait_timeout",
                "must not exceed drain.wait_timeout_max",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(invalid("drain.max_in_flight", "must be at least 1"));
        }
        for (key, value) in [
            ("drain.max_instances", self.max_instances),
            ("drain.max_groups", self.max_groups),
            ("drain.max_nodes", self.max_nodes),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        Ok(DrainSettings {
            wait_timeout,
            wait_timeout_max,
            max_in_flight: self.max_in_flight,
            bounds: PlanBounds {
                instances: self.max_instances,
                groups: self.max_groups,
                nodes: self.max_nodes,
            },
            hold_max: positive_duration("drain.hold_max", &self.hold_max)?,
            reconcile_every: positive_duration("drain.reconcile_every", &self.reconcile_every)?,
            retry_max: positive_duration("drain.retry_max", &self.retry_max)?,
            idempotency_ttl: positive_duration("drain.idempotency_ttl", &self.idempotency_ttl)?,
            min_up_default: self.min_up.get("*").copied().unwrap_or(0),
            min_up: self
                .min_up
                .iter()
                .filter(|(app, _)| app.as_str() != "*")
                .map(|(app, count)| Ok((app_name(&format!("drain.min_up.{app}"), app)?, *count)))
                .collect::<Result<_, ConfigError>>()?,
        })
    }
}
