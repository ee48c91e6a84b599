//! synchspeed: take an instance out of every gateway's rotation before it dies, and bring it
//! back, in milliseconds instead of the minutes registry and load-balancer caches take.
//!
//! # Layout
//!
//! The code reads in the order a request flows:
//!
//! * [`config`]: typed settings; the embedded default, a file, `SYNCHSPEED__*` variables.
//! * [`startup`]: builds the concrete backends from settings, serves, shuts down.
//! * [`telemetry`]: the tracing subscriber and the Prometheus metrics.
//! * [`http`]: routes, the caller check, the one error type, the OpenAPI document.
//! * [`drain`]: the orchestrator: plan, journal, registry step, gateway fan-out.
//! * [`registry`]: the `Registry` trait and its backends (Eureka, file), with the IP cache.
//! * [`groups`]: which gateway groups route to an app.
//! * [`gateway`]: a group's nodes, the `Notifier` trait (webhook), the bounded fan-out.
//! * [`store`]: the operations journal and the desired state (SQLite).
//! * [`domain`]: plain types with no I/O: instances, operations, the caller policy.

pub mod config;
pub mod domain;
pub mod drain;
pub mod gateway;
pub mod groups;
pub mod http;
pub mod registry;
pub mod startup;
pub mod store;
pub mod telemetry;
