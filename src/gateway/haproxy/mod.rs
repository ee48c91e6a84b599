//! The `haproxy` notifier: a gateway node is an HAProxy runtime API, and "telling" it means
//! changing the instance's servers directly.
//!
//! Offline finds every server whose address and port are the instance's, in every backend,
//! and sets it to `drain` (or `maint`); with `wait_idle` the node acknowledges only once those
//! servers have no session left, so `wait=true` means nothing is in flight there any more.
//! Online sets `ready`; with a warm-up the weight starts at a share of the configured weight
//! and ramps to it in steps, so a cold instance does not take full traffic at once.

pub mod runtime;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use tracing::{debug, info, warn};

use self::runtime::{RuntimeApi, RuntimeError, ServerState};
use super::{
    Delivery, GatewayNode, Notification, NotifiedInstance, Notifier, Progress, retry_schedule,
};
use crate::config::{GatewaySettings, HaproxySettings};
use crate::domain::Action;
use crate::domain::operation::{HaproxyDetail, HaproxyServer, IdleWait, Warmup};

pub struct HaproxyNotifier {
    settings: HaproxySettings,
    /// Per runtime-API command.
    timeout: Duration,
    backoff: ExponentialBuilder,
}

/// Why a node did not acknowledge.
#[derive(Debug, thiserror::Error)]
enum NodeError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("no server for {0} in any backend")]
    Unknown(String),
}

impl NodeError {
    fn is_retryable(&self) -> bool {
        matches!(self, Self::Runtime(e) if e.is_retryable())
    }
}

impl HaproxyNotifier {
    pub fn new(settings: &GatewaySettings) -> Self {
        Self {
            settings: settings.haproxy.clone(),
            timeout: settings.timeout,
            backoff: retry_schedule(settings),
        }
    }

    /// One whole attempt: read the servers, change them, wait or ramp. Every step is
    /// idempotent, so a retry after a dropped connection simply starts over.
    async fn apply(
        &self,
        api: &RuntimeApi,
        notification: &Notification,
        detail: &mut HaproxyDetail,
        progress: &Progress,
    ) -> Result<(), NodeError> {
        let servers = api.servers_state().await?;
        let (matched, unknown) = match_servers(&servers, &notification.instances);
        *detail = HaproxyDetail {
            servers: matched
                .iter()
                .map(|server| HaproxyServer {
                    backend: server.backend.clone(),
                    server: server.server.clone(),
                    sessions: None,
                    weight: None,
                    configured_weight: Some(server.configured_weight),
                })
                .collect(),
            state: String::new(),
            idle: None,
            warmup: None,
        };
        if matched.is_empty() {
            return Err(NodeError::Unknown(unknown.join(", ")));
        }
        match notification.event {
            Action::Offline => self.take_out(api, &matched, detail, progress).await?,
            Action::Online => self.bring_back(api, &matched, detail, progress).await?,
        }
        if unknown.is_empty() {
            Ok(())
        } else {
            // The servers found were changed; the node still says what it could not find.
            Err(NodeError::Unknown(unknown.join(", ")))
        }
    }

    async fn take_out(
        &self,
        api: &RuntimeApi,
        servers: &[&ServerState],
        detail: &mut HaproxyDetail,
        progress: &Progress,
    ) -> Result<(), NodeError> {
        let state = self.settings.offline_state.as_str();
        for server in servers {
            api.set_state(&server.backend, &server.server, state)
                .await?;
        }
        detail.state = state.to_owned();
        progress.report(detail);
        if self.settings.wait_idle {
            self.wait_idle(api, detail, progress).await?;
        }
        Ok(())
    }

    /// Polls the servers' current sessions until none is left or `idle_timeout` passes. A
    /// timeout still acknowledges: the servers take no new traffic, and an operator would
    /// rather proceed than wait forever on a long-lived connection; the detail says so.
    async fn wait_idle(
        &self,
        api: &RuntimeApi,
        detail: &mut HaproxyDetail,
        progress: &Progress,
    ) -> Result<(), NodeError> {
        let started = Instant::now();
        loop {
            let sessions = api.sessions().await?;
            let mut total = 0;
            for server in &mut detail.servers {
                let count = sessions
                    .iter()
                    .find(|s| s.backend == server.backend && s.server == server.server)
                    .map_or(0, |s| s.sessions);
                server.sessions = Some(count);
                total += count;
            }
            let waited = started.elapsed();
            let reached = total == 0;
            detail.idle = Some(IdleWait {
                reached,
                waited_ms: waited.as_secs_f64() * 1000.0,
                sessions: total,
            });
            progress.report(detail);
            if reached {
                return Ok(());
            }
            if waited >= self.settings.idle_timeout {
                warn!(
                    sessions = total,
                    "servers still have sessions after {:?}; acknowledging anyway",
                    self.settings.idle_timeout
                );
                return Ok(());
            }
            tokio::time::sleep(self.settings.idle_poll).await;
        }
    }

    async fn bring_back(
        &self,
        api: &RuntimeApi,
        servers: &[&ServerState],
        detail: &mut HaproxyDetail,
        progress: &Progress,
    ) -> Result<(), NodeError> {
        let Some(warmup) = self.settings.warmup else {
            for server in servers {
                api.set_state(&server.backend, &server.server, "ready")
                    .await?;
            }
            detail.state = "ready".into();
            return Ok(());
        };
        let start = self.settings.warmup_start_percent;
        let steps = self.settings.warmup_steps;
        // The low weight is set before `ready`, so the first request already sees it.
        self.set_weights(api, servers, detail, start).await?;
        for server in servers {
            api.set_state(&server.backend, &server.server, "ready")
                .await?;
        }
        detail.state = "ready".into();
        detail.warmup = Some(Warmup {
            percent: start,
            done: start == 100,
        });
        progress.report(detail);
        let pause = warmup / steps;
        for step in 1..=steps {
            if start == 100 {
                break;
            }
            tokio::time::sleep(pause).await;
            let percent = ramp_percent(start, step, steps);
            self.set_weights(api, servers, detail, percent).await?;
            detail.warmup = Some(Warmup {
                percent,
                done: step == steps,
            });
            progress.report(detail);
        }
        Ok(())
    }

    async fn set_weights(
        &self,
        api: &RuntimeApi,
        servers: &[&ServerState],
        detail: &mut HaproxyDetail,
        percent: u8,
    ) -> Result<(), NodeError> {
        for (server, shown) in servers.iter().zip(detail.servers.iter_mut()) {
            let weight = share_of(server.configured_weight, percent);
            api.set_weight(&server.backend, &server.server, weight)
                .await?;
            shown.weight = Some(weight);
        }
        Ok(())
    }
}

/// The servers of the notified instances, and the instances no server matches.
fn match_servers<'a>(
    servers: &'a [ServerState],
    instances: &[NotifiedInstance],
) -> (Vec<&'a ServerState>, Vec<String>) {
    let mut matched = Vec::new();
    let mut unknown = Vec::new();
    for instance in instances {
        let before = matched.len();
        matched.extend(servers.iter().filter(|server| {
            server.address == Some(instance.ip) && server.port == Some(instance.port)
        }));
        if matched.len() == before {
            unknown.push(std::net::SocketAddr::new(instance.ip, instance.port).to_string());
        }
    }
    (matched, unknown)
}

/// The percentage after `step` of `steps`, from `start` to 100.
fn ramp_percent(start: u8, step: u32, steps: u32) -> u8 {
    let span = u32::from(100 - start.min(100));
    let percent = u32::from(start) + span * step.min(steps) / steps;
    u8::try_from(percent).unwrap_or(100)
}

/// `percent` of a configured weight, at least 1 so a ramping server is never idle; a weight
/// of 0 (a server configured to take nothing) stays 0.
fn share_of(configured: u32, percent: u8) -> u32 {
    if configured == 0 {
        return 0;
    }
    (configured * u32::from(percent))
        .div_ceil(100)
        .clamp(1, configured)
}

#[async_trait]
impl Notifier for HaproxyNotifier {
    async fn notify(
        &self,
        node: &GatewayNode,
        notification: &Notification,
        progress: &Progress,
    ) -> Delivery {
        let started = Instant::now();
        let api = RuntimeApi::new(&node.address, self.timeout);
        let attempts = AtomicU32::new(0);
        let detail = tokio::sync::Mutex::new(HaproxyDetail::default());
        let (api, shared_detail, counter) = (&api, &detail, &attempts);
        let result = (move || async move {
            counter.fetch_add(1, Ordering::Relaxed);
            let mut detail = shared_detail.lock().await;
            self.apply(api, notification, &mut detail, progress).await
        })
        .retry(self.backoff)
        .sleep(tokio::time::sleep)
        .when(NodeError::is_retryable)
        .notify(|e: &NodeError, after: Duration| {
            debug!(node = %node.address, group = %node.group, "HAProxy change not made ({e}), retrying in {after:?}");
        })
        .await;
        let detail = detail.into_inner();
        if result.is_ok() {
            info!(node = %node.address, group = %node.group, state = %detail.state,
                servers = detail.servers.len(), "HAProxy servers changed");
        }
        Delivery {
            acked: result.is_ok(),
            attempts: attempts.into_inner(),
            elapsed: started.elapsed(),
            error: result.err().map(|e| e.to_string()),
            haproxy: Some(detail).filter(|d| !d.servers.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(backend: &str, address: &str, port: u16) -> ServerState {
        ServerState {
            backend: backend.into(),
            server: "s".into(),
            address: address.parse().ok(),
            port: Some(port),
            weight: 100,
            configured_weight: 100,
        }
    }

    fn instance(ip: &str, port: u16) -> NotifiedInstance {
        NotifiedInstance {
            instance_id: format!("{ip}:{port}"),
            ip: ip.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn an_instance_matches_its_servers_in_every_backend_by_address_and_port() {
        let servers = [
            server("app", "10.0.0.5", 8080),
            server("pinned", "10.0.0.5", 8080),
            server("app", "10.0.0.5", 9090),
            server("app", "10.0.0.6", 8080),
        ];
        let (matched, unknown) = match_servers(
            &servers,
            &[instance("10.0.0.5", 8080), instance("10.0.0.7", 8080)],
        );
        let backends: Vec<&str> = matched.iter().map(|s| s.backend.as_str()).collect();
        assert_eq!(backends, ["app", "pinned"]);
        assert_eq!(unknown, ["10.0.0.7:8080"]);
    }

    #[test]
    fn a_ramp_goes_from_its_start_to_the_configured_weight() {
        let percents: Vec<u8> = (1..=4).map(|step| ramp_percent(20, step, 4)).collect();
        assert_eq!(percents, [40, 60, 80, 100]);
        assert_eq!(share_of(100, 10), 10);
        assert_eq!(share_of(3, 10), 1, "never below 1 while ramping");
        assert_eq!(share_of(256, 100), 256);
        assert_eq!(share_of(0, 50), 0);
    }
}
