//! Wiring of a replica over PostgreSQL: its name and the URL it is reached at, the router
//! that turns from relaying to leading, and its campaign (follow, take the lease, lead until
//! the lease is lost or the service stops).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};

use axum::Router;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::error;

use super::leader::{LeaderParts, lead};
use crate::cluster::Election;
use crate::config::ClusterSettings;
use crate::drain::Orchestrator;
use crate::store::postgres::PgStore;
use crate::sync::{read, write};

/// This replica's name and the URL the others relay to, from `[cluster]` or the listener.
pub(super) fn identity(
    settings: &ClusterSettings,
    bound: SocketAddr,
) -> anyhow::Result<(String, String)> {
    let advertise = match &settings.advertise {
        Some(url) => url.as_str().trim_end_matches('/').to_owned(),
        None if bound.ip().is_unspecified() => anyhow::bail!(
            "cluster.advertise must be set when listening on {bound}: the other replicas \
             need an address to relay calls to (for example http://$POD_IP:{})",
            bound.port()
        ),
        None => format!("http://{bound}"),
    };
    let replica = match &settings.replica {
        Some(name) => name.clone(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_owned())
                .ok()
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "synchspeed".to_owned());
            format!("{host}:{}", bound.port())
        }
    };
    Ok((replica, advertise))
}

/// The router the listener serves, replaced when this replica starts leading.
#[derive(Clone, Default)]
pub(super) struct RouterSwitch(Arc<RwLock<Router>>);

impl RouterSwitch {
    pub(super) fn set(&self, router: Router) {
        *write(&self.0) = router;
    }

    /// Serves each request with the router set at the time.
    pub(super) fn router(&self) -> Router {
        let current = Arc::clone(&self.0);
        Router::new().fallback_service(tower::service_fn(move |request: axum::extract::Request| {
            let router = read(&current).clone();
            async move { router.oneshot(request).await }
        }))
    }
}

/// A replica's life on PostgreSQL: follow, take the lease, lead until it is lost or the
/// service stops.
pub(super) struct Campaign {
    pub(super) election: Arc<Election>,
    pub(super) pg: PgStore,
    pub(super) secret: Arc<crate::cluster::secret::RelaySecret>,
    pub(super) replica: String,
    pub(super) parts: LeaderParts,
    pub(super) switch: RouterSwitch,
    pub(super) leading: Arc<OnceLock<Arc<Orchestrator>>>,
    pub(super) lost: CancellationToken,
    /// Cancelled once a stop has let the fan-outs and the waiting callers finish: only then
    /// is the lease given up, so that no other replica carries on what this one still does.
    pub(super) lease_stop: CancellationToken,
}

pub(super) async fn campaign(campaign: Campaign) {
    let Campaign {
        election,
        pg,
        secret,
        replica,
        mut parts,
        switch,
        leading,
        lost,
        lease_stop,
    } = campaign;
    let shutdown = parts.shutdown.clone();
    let Some(leadership) = election.until_leading(&shutdown).await else {
        return;
    };
    parts.store = Arc::new(pg.fenced(leadership.epoch));
    parts.cluster = Some((Arc::clone(&leadership), secret, replica));
    // The lease is renewed from now on, also while the state is rebuilt.
    let keeper = {
        let (election, leadership) = (Arc::clone(&election), Arc::clone(&leadership));
        tokio::spawn(async move { election.keep(&leadership, &lease_stop).await })
    };
    match lead(parts).await {
        Ok((orchestrator, app)) => {
            let _ = leading.set(orchestrator);
            switch.set(app);
        }
        Err(e) => {
            error!("cannot lead: {e:#}");
            lost.cancel();
            return;
        }
    }
    match keeper.await {
        // Logged by the election already.
        Ok(Some(_)) => lost.cancel(),
        Ok(None) => {}
        Err(e) => {
            error!("the lease keeper failed: {e}");
            lost.cancel();
        }
    }
}
