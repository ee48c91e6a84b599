//! synchspeed: take an instance out of every gateway's rotation before it dies, and bring it
//! back, in milliseconds instead of the minutes registry and load-balancer caches take.
//!
//! # Layout
//!
//! The code reads in the order a request flows:
//!
//! * [`config`]: typed settings in layers: the embedded defaults, a file, `SYNCHSPEED__*`
//!   variables; one module per section.
//! * [`startup`]: the only place that names concrete backends: builds them, serves, shuts down.
//! * `telemetry`: the tracing subscriber and the Prometheus metrics.
//! * `http`: routes, the caller check, the one error type, the OpenAPI document.
//! * `drain`: the orchestrator: plan, journal, registry step, gateway fan-out, and keeping
//!   the word afterwards (re-assertion, the reconciler, resuming after a crash).
//! * `registry`: the `Registry` trait and its backends (Eureka, ZooKeeper, Nacos, file), with the
//!   IP-indexed cache.
//! * `groups`: which gateway groups route to an app.
//! * `gateway`: a group's nodes, the `Notifier` trait (webhook, HAProxy), the bounded fan-out.
//! * `store`: the operations journal and the desired state (SQLite, PostgreSQL).
//! * `cluster`: several replicas over PostgreSQL: the leader's lease, fencing, the relay.
//! * `domain`: plain types with no I/O: instances, operations, the caller policy.
//! * [`cli`]: the client commands of the same binary (offline, online, batch, status, holds,
//!   ops, watch), over the public API only.
//! * `sync`, `diagnostics`: poison-tolerant locks; error chains and answer snippets for logs.
//!
//! The crate exports what the binary, the black-box tests and the benchmark need: settings,
//! the application, and the names of the timed steps. Everything else is private, so the
//! compiler sees the whole crate.

pub mod cli;
mod cluster;
pub mod config;
mod diagnostics;
mod domain;
mod drain;
mod gateway;
mod groups;
mod http;
mod registry;
pub mod startup;
mod store;
mod sync;
pub mod telemetry;

#[cfg(test)]
mod testing;
