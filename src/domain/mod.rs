//! Plain types with no I/O: what an instance is, what an operation records, who may call.
//!
//! Everything here is parsed at the edge (HTTP, config, registry payloads) and cannot be wrong
//! once built: an [`AppName`] is non-empty and canonical, an IP is canonical (IPv4-mapped IPv6
//! becomes IPv4), a [`policy::CallerPolicy`] fails closed.

pub mod app;
pub mod haproxy_detail;
pub mod hold;
pub mod instance;
pub mod ip;
pub mod operation;
pub mod policy;
pub mod route;

pub use app::AppName;
pub use hold::{Hold, HoldEnd};
pub use instance::{Instance, InstanceKey, Status};
pub use operation::{
    Action, Caller, FailureCode, InstanceResult, NodeResult, NodeState, Operation, OperationError,
    OperationId, OperationState, Origin, PeerOutcome, PeerResult, RegistryStep, Target,
};
pub use route::{Route, RouteSource};
