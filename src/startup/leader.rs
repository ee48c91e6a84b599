//! What a replica builds when it starts leading (at once on SQLite, on taking the lease on
//! PostgreSQL): the orchestrator over the store's state, the gateway groups and notifiers,
//! and the leader's background work (resuming, the reconciler, re-assertion, retention).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::cluster::fenced::{FencedNotifier, FencedRegistry};
use crate::cluster::lease::Leadership;
use crate::cluster::secret::RelaySecret;
use crate::config::{GatewaySettings, GroupsSettings, NotifierKind, Settings};
use crate::drain::{Orchestrator, Parts};
use crate::drain::{reassert, reconcile};
use crate::gateway::Notifier;
use crate::gateway::by_group::NotifierByGroup;
use crate::gateway::fanout::FanOut;
use crate::gateway::haproxy::HaproxyNotifier;
use crate::gateway::nodes::NodeDirectory;
use crate::gateway::webhook::WebhookNotifier;
use crate::groups::{Combined, GroupSource, SqlGroups, StaticGroups};
use crate::http::{AppState, BodyLimits, ClusterRole, router};
use crate::registry::Registry;
use crate::store::Store;
use crate::telemetry::Metrics;

/// What a leader is built from, whenever it starts leading.
pub(super) struct LeaderParts {
    pub(super) settings: Settings,
    pub(super) registry: Arc<dyn Registry>,
    pub(super) store: Arc<dyn Store>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) shutdown: CancellationToken,
    pub(super) background: TaskTracker,
    /// With several replicas: the lease (fencing the registry and the gateways), the relay
    /// secret, and this replica's name.
    pub(super) cluster: Option<(Arc<Leadership>, Arc<RelaySecret>, String)>,
}

/// Builds the orchestrator over the store's state and starts the leader's background work:
/// resuming what is unfinished, the reconciler, re-assertion, the journal's retention.
pub(super) async fn lead(parts: LeaderParts) -> anyhow::Result<(Arc<Orchestrator>, Router)> {
    let LeaderParts {
        settings,
        registry,
        store,
        metrics,
        shutdown,
        background,
        cluster,
    } = parts;
    let mut notifier = notifier(&settings.gateway);
    let mut writes_to: Arc<dyn Registry> = Arc::clone(&registry);
    if let Some((leadership, ..)) = &cluster {
        notifier = Arc::new(FencedNotifier {
            inner: notifier,
            leadership: Arc::clone(leadership),
        });
        writes_to = Arc::new(FencedRegistry {
            inner: Arc::clone(&registry),
            leadership: Arc::clone(leadership),
        });
    }
    let orchestrator = Arc::new(
        Orchestrator::open(Parts {
            registry: Arc::clone(&writes_to),
            groups: group_source(&settings.groups, &metrics).await?,
            nodes: NodeDirectory::new(
                settings.gateway.nodes.clone(),
                Arc::clone(&registry),
                settings.gateway.port_metadata_key.clone(),
            ),
            fanout: FanOut::new(notifier, settings.gateway.concurrency),
            store: Arc::clone(&store),
            metrics: Arc::clone(&metrics),
            settings: settings.drain.clone(),
            replica: cluster.as_ref().map(|(.., replica)| replica.clone()),
        })
        .await
        .context("loading the desired state")?,
    );
    // Operations a previous run (or a leader that died) left unfinished are carried to the
    // end in the background: those past the registry step notify at once, the others wait
    // for the registry.
    background.spawn({
        let orchestrator = Arc::clone(&orchestrator);
        let token = shutdown.clone();
        async move {
            match orchestrator.resume_unfinished(&token).await {
                Ok(0) => {}
                Ok(resumed) => info!(resumed, "operations left unfinished resumed"),
                Err(e) => error!("cannot read the operations left unfinished: {e}"),
            }
        }
    });
    background.spawn({
        let orchestrator = Arc::clone(&orchestrator);
        let token = shutdown.clone();
        async move { orchestrator.refresh_groups(token).await }
    });
    background.spawn(reconcile::reconcile_forever(
        Arc::clone(&orchestrator),
        shutdown.clone(),
    ));
    background.spawn(prune_journal(
        Arc::clone(&store),
        settings.drain.idempotency_ttl,
        settings.store.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    if let Some(changes) = registry.changes() {
        background.spawn(reassert::keep_held_offline(
            Arc::clone(&orchestrator),
            changes,
            shutdown.clone(),
        ));
    }
    let app = router(AppState {
        orchestrator: Arc::clone(&orchestrator),
        security: Arc::new(settings.security.clone()),
        metrics,
        body_limits: BodyLimits {
            bytes: settings.server.body_limit,
            time: settings.server.body_read_timeout,
        },
        cluster: cluster.map(|(leadership, secret, replica)| ClusterRole {
            leadership,
            relay_secret: secret,
            replica: replica.into(),
        }),
    });
    Ok((orchestrator, app))
}

/// Every `store.prune_every` (and once at start): forgets settled operations past
/// `store.retention` and `Idempotency-Key`s past `drain.idempotency_ttl`.
async fn prune_journal(
    store: Arc<dyn Store>,
    ttl: Duration,
    settings: crate::config::StoreSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(settings.prune_every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match store
            .prune_operations(crate::drain::ago(settings.retention))
            .await
        {
            Ok(0) => {}
            Ok(pruned) => {
                metrics.operations_pruned.inc_by(pruned);
                info!(pruned, "settled operations past store.retention forgotten");
            }
            Err(e) => warn!("cannot apply store.retention: {e}"),
        }
        let before = crate::drain::ago(ttl);
        match store.prune_idempotency_keys(before).await {
            Ok(0) => {}
            Ok(forgotten) => info!(
                forgotten,
                "idempotency keys past drain.idempotency_ttl forgotten"
            ),
            Err(e) => warn!("cannot forget old idempotency keys: {e}"),
        }
    }
}

/// The gateway groups' source: config, the route table, or both (the union).
async fn group_source(
    settings: &GroupsSettings,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<dyn GroupSource>> {
    let mut sources: Vec<Arc<dyn GroupSource>> = Vec::new();
    if let Some(routes) = &settings.routes {
        sources.push(Arc::new(StaticGroups::new(routes.clone())));
    }
    if let Some(sql) = &settings.sql {
        let table = SqlGroups::open(sql, Arc::clone(metrics))
            .await
            .context("opening the gateway route table")?;
        sources.push(Arc::new(table));
    }
    Ok(match sources.len() {
        1 => sources.remove(0),
        _ => Arc::new(Combined::new(sources)),
    })
}

/// The notifier of every group: `gateway.notifier`, except the groups listed in
/// `gateway.group_notifiers`. Both kinds are cheap to build and hold no connection.
fn notifier(settings: &GatewaySettings) -> Arc<dyn Notifier> {
    let webhook: Arc<dyn Notifier> = Arc::new(WebhookNotifier::new(settings));
    let haproxy: Arc<dyn Notifier> = Arc::new(HaproxyNotifier::new(settings));
    let of_kind = |kind: NotifierKind| match kind {
        NotifierKind::Webhook => Arc::clone(&webhook),
        NotifierKind::Haproxy => Arc::clone(&haproxy),
    };
    if settings.group_notifiers.is_empty() {
        return of_kind(settings.notifier);
    }
    let groups = settings
        .group_notifiers
        .iter()
        .map(|(group, kind)| (group.clone(), of_kind(*kind)))
        .collect();
    Arc::new(NotifierByGroup::new(of_kind(settings.notifier), groups))
}
