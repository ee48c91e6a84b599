//! The client's exit codes: part of the contract, so that a deploy script can branch on
//! what happened without reading JSON.

use std::process::ExitCode;

use serde_json::Value;

/// What a client command ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every node acknowledged; or a dry run, a read, an accepted operation not waited for.
    Ok = 0,
    /// synchspeed could not be reached, or answered what no contract says.
    Error = 1,
    /// The registry took it, some gateway nodes failed after all retries.
    Partial = 2,
    /// `--timeout` elapsed with nodes still pending.
    TimedOut = 3,
    /// The registry refused the change or could not be reached: nothing was changed.
    Registry = 4,
    /// No registered instance (or operation) matches.
    NotFound = 5,
    /// The caller's address or token is not allowed.
    NotAllowed = 6,
    /// Refused as it stands: `drain.min_up`, an `Idempotency-Key` in use or reused.
    Conflict = 7,
    /// synchspeed is busy, not ready or stopping: retry later.
    Unavailable = 8,
    /// Bad usage: an argument the CLI or the API refused.
    Usage = 64,
}

impl Exit {
    pub fn code(self) -> ExitCode {
        ExitCode::from(self as u8)
    }

    /// What a settled (or still running) operation means for the caller.
    pub fn of_state(operation: &Value) -> Self {
        match operation["state"].as_str() {
            Some("succeeded" | "planned") => Self::Ok,
            Some("partial") => Self::Partial,
            Some("in_progress") => Self::TimedOut,
            Some("failed") => Self::Registry,
            _ => Self::Error,
        }
    }

    /// What an error answer of the API means, from its status and `error.code`.
    pub fn of_error(status: u16, code: &str) -> Self {
        match (status, code) {
            (400 | 405 | 413 | 414 | 415 | 431, _) => Self::Usage,
            (401 | 403, _) => Self::NotAllowed,
            (404, _) => Self::NotFound,
            (409 | 422, _) => Self::Conflict,
            (502, _) | (503, "registry_unavailable") => Self::Registry,
            (504, _) => Self::TimedOut,
            (408 | 429 | 503, _) => Self::Unavailable,
            _ => Self::Error,
        }
    }
}

/// The table `--help` and the README show.
pub const HELP: &str = "\
Exit codes:
  0   every node acknowledged; a dry run; a read; accepted (without --wait)
  1   synchspeed could not be reached, or answered unexpectedly
  2   partial: the registry took it, some gateway nodes failed after all retries
  3   timed out: --timeout elapsed with gateway nodes still pending
  4   the registry refused the change or could not be reached: nothing was changed
  5   not found: no registered instance (or no operation) matches
  6   not allowed: this address or token may not call synchspeed
  7   refused as it stands: drain.min_up, or an Idempotency-Key in use or reused
  8   busy, not ready or stopping: retry later
  64  bad usage: an argument the CLI or the API refused";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_outcome_has_its_own_code() {
        assert_eq!(Exit::of_state(&json!({"state": "succeeded"})), Exit::Ok);
        assert_eq!(Exit::of_state(&json!({"state": "partial"})), Exit::Partial);
        assert_eq!(
            Exit::of_state(&json!({"state": "in_progress"})),
            Exit::TimedOut
        );
        assert_eq!(Exit::of_state(&json!({"state": "failed"})), Exit::Registry);
        assert_eq!(Exit::of_error(503, "registry_unavailable"), Exit::Registry);
        assert_eq!(Exit::of_error(503, "not_ready"), Exit::Unavailable);
        assert_eq!(Exit::of_error(409, "min_up"), Exit::Conflict);
        assert_eq!(Exit::of_error(400, "invalid_port"), Exit::Usage);
        let codes = [
            Exit::Ok,
            Exit::Error,
            Exit::Partial,
            Exit::TimedOut,
            Exit::Registry,
            Exit::NotFound,
            Exit::NotAllowed,
            Exit::Conflict,
            Exit::Unavailable,
            Exit::Usage,
        ];
        for code in codes {
            let line = format!("\n  {:<3} ", code as u8);
            assert!(HELP.contains(&line), "{code:?} is not in the help");
        }
    }
}
