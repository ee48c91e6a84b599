//! `[drain]`: how operations are waited for, bounded, and kept to afterwards.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, positive_duration};

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
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrain {
    wait_timeout: String,
    wait_timeout_max: String,
    max_in_flight: usize,
    hold_max: String,
    reconcile_every: String,
    retry_max: String,
    idempotency_ttl: String,
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
        Ok(DrainSettings {
            wait_timeout,
            wait_timeout_max,
            max_in_flight: self.max_in_flight,
            hold_max: positive_duration("drain.hold_max", &self.hold_max)?,
            reconcile_every: positive_duration("drain.reconcile_every", &self.reconcile_every)?,
            retry_max: positive_duration("drain.retry_max", &self.retry_max)?,
            idempotency_ttl: positive_duration("drain.idempotency_ttl", &self.idempotency_ttl)?,
        })
    }
}
