//! Logs (tracing: human lines or one JSON object per line) and the Prometheus metrics registry.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// The most the Nacos SDK may log: its info lines are two per subscribed service, its
/// warnings include routine ones ("don't need to refresh"); synchspeed says itself when
/// the subscriptions fail.
const NACOS_SDK_CAP: &str = "nacos_sdk=error";

/// Installs the global tracing subscriber. `RUST_LOG`, when set, wins over `log.level`.
/// Calling it twice is harmless (the second call keeps the first subscriber).
pub fn init_tracing(settings: &LogSettings) {
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The Nacos SDK logs its login, password included, at debug: never past its cap,
    // whatever `RUST_LOG` says (a directive for the same target replaces the user's).
    if let Ok(cap) = NACOS_SDK_CAP.parse() {
        filter = filter.add_directive(cap);
    }
    let colour = colour_wanted(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour);
    let _already_set = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// Colour codes only where a person reads them: a terminal, unless `NO_COLOR` says otherwise
/// (no-color.org: present and not empty). A container log, `journalctl` or a CI artefact gets
/// plain text.
fn colour_wanted(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route template (`/api/v1/instances/{ip}/offline`), never the raw path: raw paths
    /// would make one series per IP.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub action: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryErrorLabels {
    pub registry: String,
    pub call: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HoldEndLabels {
    pub why: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayLabels {
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub why: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
}

/// The steps of an operation, in order, each timed: where a slow drain spends its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Waiting for an earlier operation on the same IPs to settle.
    Queued,
    /// Resolving instances, gateway groups and nodes.
    Plan,
    /// Journaling the operation before its first change.
    Journal,
    /// Writing the status to the registry (and putting it back when that fails).
    Registry,
    /// From the first notification to the last node's answer, retries included.
    Gateways,
}

impl Step {
    pub const ALL: [Step; 5] = [
        Step::Queued,
        Step::Plan,
        Step::Journal,
        Step::Registry,
        Step::Gateways,
    ];

    /// The `step` label of `synchspeed_operation_step_duration_seconds`.
    pub fn label(self) -> &'static str {
        match self {
            Step::Queued => "queued",
            Step::Plan => "plan",
            Step::Journal => "journal",
            Step::Registry => "registry",
            Step::Gateways => "gateways",
        }
    }
}

/// Times a step until it is dropped.
#[must_use = "the step is timed until this is dropped"]
pub struct StepTimer<'a> {
    histogram: &'a Histogram,
    started: Instant,
}

impl Drop for StepTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

/// Every metric synchspeed exports. One value per running app (not a process global), so
/// tests that start several apps see their own counts.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub http_requests: Family<RequestLabels, Counter>,
    pub operations: Family<OperationLabels, Counter>,
    pub operations_in_flight: Gauge,
    pub notification_seconds: Family<NotificationLabels, Histogram>,
    pub registry_errors: Family<RegistryErrorLabels, Counter>,
    /// Passes of the reconciler over every hold: tests and dashboards see it is alive.
    pub reconcile_runs: Counter,
    pub holds_ended: Family<HoldEndLabels, Counter>,
    /// Re-assertions of lost holds, by what found the loss.
    pub reassertions: Family<TriggerLabels, Counter>,
    /// Connections open now.
    pub connections_open: Gauge,
    /// The store's write-ahead log, in bytes.
    pub store_wal_bytes: Gauge,
    /// Settled operations past `store.retention`, forgotten.
    pub operations_pruned: Counter,
    /// How old the oldest part of the SQL route mapping in use is.
    pub groups_mapping_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Reads of the SQL route table that failed.
    pub groups_refresh_errors: Counter,
    /// Rows of the SQL route table skipped because they name no usable group or app (a NULL,
    /// a name that is no app name): the app's other rows and every other app still route.
    pub groups_rows_skipped: Counter,
    /// Connections turned away when accepted, by why (`forbidden`, `busy`).
    pub connections_refused: Family<RefusedLabels, Counter>,
    /// Whether this replica leads (1) or relays to the one that does (0); always 1 on SQLite.
    pub cluster_leader: Family<ReplicaLabels, Gauge>,
    /// The leader's lease epoch as this replica last read it (grows at every takeover).
    pub cluster_epoch: Gauge,
    /// Calls a follower relayed to the leader, by status (0: the leader was not reached).
    pub cluster_relayed: Family<RelayLabels, Counter>,
    /// One histogram per [`Step`], in `Step::ALL` order, taken out of their family once.
    step_seconds: [Histogram; Step::ALL.len()],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("synchspeed");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests served, by route template and status",
            http_requests.clone(),
        );
        let operations = Family::<OperationLabels, Counter>::default();
        registry.register(
            "operations",
            "Operations by action and the state they ended in",
            operations.clone(),
        );
        let operations_in_flight = Gauge::default();
        registry.register(
            "operations_in_flight",
            "Operations started and not yet settled",
            operations_in_flight.clone(),
        );
        // 0.5 ms to ~16 s: a loopback ack is sub-millisecond, a retried one takes seconds.
        let notification_seconds =
            Family::<NotificationLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            });
        registry.register(
            "notification_duration_seconds",
            "Time from the first attempt to a gateway node's final answer, retries included",
            notification_seconds.clone(),
        );
        let registry_errors = Family::<RegistryErrorLabels, Counter>::default();
        registry.register(
            "registry_errors",
            "Registry calls that failed, by registry and call",
            registry_errors.clone(),
        );
        let reconcile_runs = Counter::default();
        registry.register(
            "reconcile_runs",
            "Passes of the reconciler comparing every hold with each registry peer",
            reconcile_runs.clone(),
        );
        let holds_ended = Family::<HoldEndLabels, Counter>::default();
        registry.register(
            "holds_ended",
            "Holds that ended without an online call, by why (departed, replaced, expired)",
            holds_ended.clone(),
        );
        let reassertions = Family::<TriggerLabels, Counter>::default();
        registry.register(
            "reassertions",
            "Holds a registry lost, re-asserted, by what found the loss: change (a watch event or a refresh), peer_back (a peer that had failed answers again), periodic (the reconciler's pass)",
            reassertions.clone(),
        );
        let store_wal_bytes = Gauge::default();
        registry.register(
            "store_wal_bytes",
            "Size of the SQLite store's write-ahead log (truncated past store.wal_max_bytes)",
            store_wal_bytes.clone(),
        );
        let operations_pruned = Counter::default();
        registry.register(
            "operations_pruned",
            "Settled operations forgotten past store.retention (never one in progress or holding)",
            operations_pruned.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections open to the API now",
            connections_open.clone(),
        );
        let groups_mapping_age_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "groups_mapping_age_seconds",
            "Age of the oldest part of the SQL route mapping in use (groups.source = sql)",
            groups_mapping_age_seconds.clone(),
        );
        let groups_refresh_errors = Counter::default();
        registry.register(
            "groups_refresh_errors",
            "Reads of the SQL route table that failed",
            groups_refresh_errors.clone(),
        );
        let groups_rows_skipped = Counter::default();
        registry.register(
            "groups_rows_skipped",
            "Rows of the SQL route table skipped: a NULL, or a name that is no app name",
            groups_rows_skipped.clone(),
        );
        let connections_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections turned away when accepted, before a byte was read, by why (forbidden: no caller, proxy or prober; busy: server.max_connections open)",
            connections_refused.clone(),
        );
        let cluster_leader = Family::<ReplicaLabels, Gauge>::default();
        registry.register(
            "cluster_leader",
            "1 when this replica leads (journal, registry, gateways, reconciler), 0 when it relays to the leader",
            cluster_leader.clone(),
        );
        let cluster_epoch = Gauge::default();
        registry.register(
            "cluster_epoch",
            "The leader's lease epoch as this replica last read it; it grows at every takeover",
            cluster_epoch.clone(),
        );
        let cluster_relayed = Family::<RelayLabels, Counter>::default();
        registry.register(
            "cluster_relayed",
            "Calls this replica relayed to the leader, by the leader's status (0: not reached)",
            cluster_relayed.clone(),
        );
        // 50 us to ~100 s: planning is microseconds, a gateway node that needs every retry
        // takes seconds.
        let steps = Family::<StepLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 22))
        });
        registry.register(
            "operation_step_duration_seconds",
            "Time operations spent in each step: queued, plan, journal, registry, gateways",
            steps.clone(),
        );
        let step_seconds = Step::ALL.map(|step| {
            steps
                .get_or_create(&StepLabels { step: step.label() })
                .clone()
        });
        Self {
            registry: Mutex::new(registry),
            step_seconds,
            reconcile_runs,
            holds_ended,
            reassertions,
            store_wal_bytes,
            operations_pruned,
            connections_open,
            connections_refused,
            cluster_leader,
            cluster_epoch,
            cluster_relayed,
            groups_mapping_age_seconds,
            groups_refresh_errors,
            groups_rows_skipped,
            http_requests,
            operations,
            operations_in_flight,
            notification_seconds,
            registry_errors,
        }
    }

    pub fn registry_error(&self, registry: &str, call: &str) {
        self.registry_errors
            .get_or_create(&RegistryErrorLabels {
                registry: registry.to_owned(),
                call: call.to_owned(),
            })
            .inc();
    }

    /// Times `step` from now until the returned timer is dropped.
    pub fn time(&self, step: Step) -> StepTimer<'_> {
        StepTimer {
            histogram: &self.step_seconds[step as usize],
            started: Instant::now(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = crate::sync::lock(&self.registry);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_never_against_no_color() {
        use std::ffi::OsStr;
        assert!(colour_wanted(true, None));
        assert!(
            !colour_wanted(false, None),
            "a pipe or a file gets plain text"
        );
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(
            colour_wanted(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
    }

    #[test]
    fn each_step_is_counted_under_its_own_label() {
        let metrics = Metrics::new();
        for (times, step) in Step::ALL.into_iter().enumerate() {
            for _ in 0..=times {
                drop(metrics.time(step));
            }
        }
        let text = metrics.encode();
        for (times, step) in Step::ALL.into_iter().enumerate() {
            let count = format!(
                "synchspeed_operation_step_duration_seconds_count{{step=\"{}\"}} {}",
                step.label(),
                times + 1
            );
            assert!(text.contains(&count), "{count} in {text}");
        }
    }
}
