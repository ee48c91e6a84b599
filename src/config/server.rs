//! `[server]` and `[log]`: where the API listens and how the service logs.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration, invalid, positive_duration};

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Largest request body accepted (413 beyond).
    pub body_limit: usize,
    /// How long shutdown waits for in-flight operations before it exits anyway.
    pub shutdown_grace: Duration,
    /// A request's head must arrive within this, and a keep-alive connection may wait this
    /// long for its next request (hyper times both with one timer).
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this once its head has (408 past it).
    pub body_read_timeout: Duration,
    /// Connections open at once; past it a new one gets 503 and is closed at once.
    pub max_connections: usize,
    /// Connections open at once from one address (a load balancer counts as one).
    pub max_connections_per_ip: usize,
    /// Connections open at once from peers admitted as probers only (`security.probes`
    /// outside the callers): a budget apart, so they cannot use up the callers'.
    pub max_probe_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (for a terminal; coloured only there).
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `synchspeed=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: String,
    body_limit: usize,
    shutdown_grace: String,
    header_read_timeout: String,
    body_read_timeout: String,
    max_connections: usize,
    max_connections_per_ip: usize,
    max_probe_connections: usize,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    format: LogFormat,
    level: String,
}

impl RawServer {
    pub(super) fn validate(self) -> Result<ServerSettings, ConfigError> {
        let listen = self.listen.trim().parse().map_err(|_| {
            invalid(
                "server.listen",
                format!(
                    "'{}' is not an address:port such as 0.0.0.0:8080",
                    self.listen
                ),
            )
        })?;
        if self.body_limit == 0 {
            return Err(invalid("server.body_limit", "must be at least 1 byte"));
        }
        if self.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if self.max_probe_connections == 0 {
            return Err(invalid(
                "server.max_probe_connections",
                "must be at least 1 (probes and metrics need a connection)",
            ));
        }
        if self.max_connections_per_ip == 0 {
            return Err(invalid(
                "server.max_connections_per_ip",
                "must be at least 1",
            ));
        }
        Ok(ServerSettings {
            listen,
            body_limit: self.body_limit,
            shutdown_grace: duration("server.shutdown_grace", &self.shutdown_grace)?,
            header_read_timeout: positive_duration(
                "server.header_read_timeout",
                &self.header_read_timeout,
            )?,
            body_read_timeout: positive_duration(
                "server.body_read_timeout",
                &self.body_read_timeout,
            )?,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_probe_connections: self.max_probe_connections,
        })
    }
}

impl RawLog {
    pub(super) fn validate(self) -> Result<LogSettings, ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.level).map_err(|e| {
            invalid(
                "log.level",
                format!("'{}' is not a log filter ({e})", self.level),
            )
        })?;
        Ok(LogSettings {
            format: self.format,
            level: self.level,
        })
    }
}
