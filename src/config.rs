//! Typed settings: loaded from one TOML file (the embedded `config/default.toml` unless
//! `--config` names another), then `SYNCHSPEED__SECTION__KEY` environment variables; validated
//! into types that cannot be wrong. An invalid setting stops the start with a message naming
//! the key (exit code 64, see `main.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use url::Url;

use crate::domain::AppName;
use crate::domain::policy::{ApiToken, CallerPolicy, TokenSet};

/// The configuration that runs on a fresh machine: the file registry, no external services.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: [&str; 5] = [
    "security.allow",
    "security.deny",
    "security.trusted_proxies",
    "security.tokens",
    "registry.eureka.urls",
];

/// A setting that cannot be used, with the key it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration: {0}")]
    Load(#[from] ::config::ConfigError),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub log: LogSettings,
    pub security: SecuritySettings,
    pub registry: RegistrySettings,
    pub groups: GroupsSettings,
    pub gateway: GatewaySettings,
    pub drain: DrainSettings,
    pub store: StoreSettings,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Largest request body accepted (413 beyond).
    pub body_limit: usize,
    /// How long shutdown waits for in-flight operations before it exits anyway.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default, for a terminal).
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

#[derive(Debug, Clone)]
pub struct SecuritySettings {
    pub policy: CallerPolicy,
    pub tokens: TokenSet,
}

#[derive(Debug, Clone)]
pub enum RegistrySettings {
    Eureka(EurekaSettings),
    Zookeeper(ZookeeperSettings),
    File(FileRegistrySettings),
}

impl RegistrySettings {
    pub fn kind(&self) -> &'static str {
        match self {
            RegistrySettings::Eureka(_) => "eureka",
            RegistrySettings::Zookeeper(_) => "zookeeper",
            RegistrySettings::File(_) => "file",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EurekaSettings {
    /// Every peer's base URL (`.../eureka` or `.../eureka/v2`), credentials allowed.
    pub urls: Vec<Url>,
    /// How often the local cache is refreshed with `GET apps/delta`.
    pub refresh: Duration,
    /// Per-request timeout for registry calls.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ZookeeperSettings {
    /// The ensemble, `host:port[,host:port...]`.
    pub connect: String,
    /// Where Spring Cloud Zookeeper registers (`spring.cloud.zookeeper.discovery.root`).
    pub root: String,
    pub session_timeout: Duration,
    /// Per call, and for connecting.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct FileRegistrySettings {
    pub path: PathBuf,
    /// How often the file is checked for changes.
    pub refresh: Duration,
}

#[derive(Debug, Clone)]
pub struct GroupsSettings {
    /// App → the gateway groups that route to it.
    pub routes: BTreeMap<AppName, Vec<AppName>>,
}

/// How a gateway group hears about instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifierKind {
    /// The contract's notification protocol over HTTP.
    Webhook,
    /// HAProxy's runtime API: server state and weight changed directly.
    Haproxy,
}

impl NotifierKind {
    fn parse(key: &str, raw: &str) -> Result<Self, ConfigError> {
        match raw.trim() {
            "webhook" => Ok(Self::Webhook),
            "haproxy" => Ok(Self::Haproxy),
            other => Err(invalid(key, format!("'{other}' is not webhook or haproxy"))),
        }
    }
}

/// The admin state an HAProxy server is put in when its instance goes offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaproxyOfflineState {
    /// No new connections; established ones (and persistent sessions) finish.
    Drain,
    /// No traffic at all, health checks stopped.
    Maint,
}

impl HaproxyOfflineState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drain => "drain",
            Self::Maint => "maint",
        }
    }
}

#[derive(Debug, Clone)]
pub struct HaproxySettings {
    pub offline_state: HaproxyOfflineState,
    /// Offline: acknowledge only once the servers have no session left (or `idle_timeout`).
    pub wait_idle: bool,
    pub idle_timeout: Duration,
    /// How often current sessions are read while waiting for idle.
    pub idle_poll: Duration,
    /// Online: ramp the weight up over this long; `None` gives full weight at once.
    pub warmup: Option<Duration>,
    /// The share of the configured weight a warm-up starts from, in percent (1–100).
    pub warmup_start_percent: u8,
    /// Weight changes in a warm-up, the last one reaching the configured weight.
    pub warmup_steps: u32,
}

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// The kind of every group not listed in `group_notifiers`.
    pub notifier: NotifierKind,
    /// Groups told through another kind than `notifier`.
    pub group_notifiers: BTreeMap<AppName, NotifierKind>,
    pub haproxy: HaproxySettings,
    pub path: String,
    /// Per attempt.
    pub timeout: Duration,
    pub attempts: u32,
    /// Delay before the first retry; doubled each retry, with jitter, up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Notifications in flight at once, across all operations.
    pub concurrency: usize,
    /// HMAC key for `X-Synchspeed-Signature`; `None` sends no signature.
    pub secret: Option<String>,
    /// Instance metadata key holding a gateway node's notification port (`management.port`).
    pub port_metadata_key: Option<String>,
    /// Groups whose nodes are listed here rather than found in the registry.
    pub nodes: BTreeMap<AppName, Vec<String>>,
}

impl GatewaySettings {
    pub fn kind_of(&self, group: &AppName) -> NotifierKind {
        self.group_notifiers
            .get(group)
            .copied()
            .unwrap_or(self.notifier)
    }
}

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

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub url: String,
}

// ---- raw shape, as written in TOML ----------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Raw {
    server: RawServer,
    log: RawLog,
    security: RawSecurity,
    registry: RawRegistry,
    groups: RawGroups,
    gateway: RawGateway,
    drain: RawDrain,
    store: RawStore,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawServer {
    listen: String,
    body_limit: usize,
    shutdown_grace: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            body_limit: 64 * 1024,
            shutdown_grace: "30s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLog {
    format: LogFormat,
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawSecurity {
    allow: Vec<String>,
    deny: Vec<String>,
    trusted_proxies: Vec<String>,
    tokens: Vec<RawToken>,
}

/// A token is a bare secret (its principal is then `token-N`) or a named one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawToken {
    Secret(String),
    Named { principal: String, token: String },
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRegistry {
    kind: String,
    eureka: RawEureka,
    zookeeper: RawZookeeper,
    file: RawFile,
}

impl Default for RawRegistry {
    fn default() -> Self {
        Self {
            kind: "eureka".into(),
            eureka: RawEureka::default(),
            zookeeper: RawZookeeper::default(),
            file: RawFile::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawEureka {
    urls: Vec<String>,
    refresh: String,
    timeout: String,
}

impl Default for RawEureka {
    fn default() -> Self {
        Self {
            urls: vec!["http://127.0.0.1:8761/eureka".into()],
            refresh: "5s".into(),
            timeout: "3s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawZookeeper {
    connect: String,
    root: String,
    session_timeout: String,
    timeout: String,
}

impl Default for RawZookeeper {
    fn default() -> Self {
        Self {
            connect: "127.0.0.1:2181".into(),
            root: "/services".into(),
            session_timeout: "10s".into(),
            timeout: "3s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawFile {
    path: String,
    refresh: String,
}

impl Default for RawFile {
    fn default() -> Self {
        Self {
            path: "config/instances.toml".into(),
            refresh: "5s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawGroups {
    source: String,
    #[serde(rename = "static")]
    static_routes: BTreeMap<String, Vec<String>>,
}

impl Default for RawGroups {
    fn default() -> Self {
        Self {
            source: "static".into(),
            static_routes: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawGateway {
    notifier: String,
    group_notifiers: BTreeMap<String, String>,
    haproxy: RawHaproxy,
    path: String,
    timeout: String,
    attempts: u32,
    backoff: String,
    backoff_max: String,
    concurrency: usize,
    secret: String,
    port_metadata_key: String,
    nodes: BTreeMap<String, Vec<String>>,
}

impl Default for RawGateway {
    fn default() -> Self {
        Self {
            notifier: "webhook".into(),
            group_notifiers: BTreeMap::new(),
            haproxy: RawHaproxy::default(),
            path: "/synchspeed/v1/notify".into(),
            timeout: "2s".into(),
            attempts: 3,
            backoff: "100ms".into(),
            backoff_max: "2s".into(),
            concurrency: 256,
            secret: String::new(),
            port_metadata_key: String::new(),
            nodes: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawHaproxy {
    state: String,
    wait_idle: bool,
    idle_timeout: String,
    idle_poll: String,
    warmup: String,
    warmup_start_percent: u8,
    warmup_steps: u32,
}

impl Default for RawHaproxy {
    fn default() -> Self {
        Self {
            state: "drain".into(),
            wait_idle: false,
            idle_timeout: "30s".into(),
            idle_poll: "100ms".into(),
            warmup: "0s".into(),
            warmup_start_percent: 10,
            warmup_steps: 10,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawDrain {
    wait_timeout: String,
    wait_timeout_max: String,
    max_in_flight: usize,
    hold_max: String,
    reconcile_every: String,
    retry_max: String,
    idempotency_ttl: String,
}

impl Default for RawDrain {
    fn default() -> Self {
        Self {
            wait_timeout: "30s".into(),
            wait_timeout_max: "5m".into(),
            max_in_flight: 1024,
            hold_max: "24h".into(),
            reconcile_every: "30s".into(),
            retry_max: "5m".into(),
            idempotency_ttl: "24h".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawStore {
    url: String,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            url: "sqlite://data/synchspeed.db".into(),
        }
    }
}

// ---- loading --------------------------------------------------------------------------------

impl Settings {
    /// The file at `path` (or the embedded default), then the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        use ::config::{Config, Environment, File, FileFormat};
        let builder = Config::builder();
        let builder = match path {
            Some(path) => {
                builder.add_source(File::from(path).format(FileFormat::Toml).required(true))
            }
            None => builder.add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml)),
        };
        let mut env = Environment::with_prefix("SYNCHSPEED")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for key in LIST_KEYS {
            env = env.with_list_parse_key(key);
        }
        let raw: Raw = builder.add_source(env).build()?.try_deserialize()?;
        raw.validate()
    }

    /// Settings from TOML text alone (no environment): for tests and tools.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        use ::config::{Config, File, FileFormat};
        let raw: Raw = Config::builder()
            .add_source(File::from_str(text, FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        raw.validate()
    }
}

fn duration(key: &str, raw: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(raw.trim()).map_err(|e| {
        invalid(
            key,
            format!("'{raw}' is not a duration such as 500ms or 5s ({e})"),
        )
    })
}

fn positive_duration(key: &str, raw: &str) -> Result<Duration, ConfigError> {
    let value = duration(key, raw)?;
    if value.is_zero() {
        return Err(invalid(key, "must be longer than zero"));
    }
    Ok(value)
}

/// A CIDR list; a bare address means that one address.
fn networks(key: &str, raw: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, entry)| {
            let entry = entry.trim();
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    invalid(
                        format!("{key}[{i}]"),
                        format!("'{entry}' is not a CIDR range or an address"),
                    )
                })
        })
        .collect()
}

fn app_name(key: &str, raw: &str) -> Result<AppName, ConfigError> {
    AppName::parse(raw).map_err(|e| invalid(key, format!("'{raw}': {e}")))
}

impl Raw {
    fn validate(self) -> Result<Settings, ConfigError> {
        Ok(Settings {
            server: self.server.validate()?,
            log: self.log.validate()?,
            security: self.security.validate()?,
            registry: self.registry.validate()?,
            groups: self.groups.validate()?,
            gateway: self.gateway.validate()?,
            drain: self.drain.validate()?,
            store: self.store.validate()?,
        })
    }
}

impl RawServer {
    fn validate(self) -> Result<ServerSettings, ConfigError> {
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
        Ok(ServerSettings {
            listen,
            body_limit: self.body_limit,
            shutdown_grace: duration("server.shutdown_grace", &self.shutdown_grace)?,
        })
    }
}

impl RawLog {
    fn validate(self) -> Result<LogSettings, ConfigError> {
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

impl RawSecurity {
    fn validate(self) -> Result<SecuritySettings, ConfigError> {
        let policy = CallerPolicy::new(
            networks("security.allow", &self.allow)?,
            networks("security.deny", &self.deny)?,
            networks("security.trusted_proxies", &self.trusted_proxies)?,
        );
        let mut tokens = Vec::with_capacity(self.tokens.len());
        for (i, token) in self.tokens.into_iter().enumerate() {
            let key = format!("security.tokens[{i}]");
            let (principal, secret) = match token {
                RawToken::Secret(secret) => (format!("token-{}", i + 1), secret),
                RawToken::Named { principal, token } => (principal, token),
            };
            // Short secrets are guessable; 16 characters is the floor for anything on a network.
            if secret.trim().len() < 16 {
                return Err(invalid(key, "a token must be at least 16 characters"));
            }
            if principal.trim().is_empty() {
                return Err(invalid(key, "a named token needs a non-empty principal"));
            }
            tokens.push(ApiToken::new(principal, secret.trim()));
        }
        Ok(SecuritySettings {
            policy,
            tokens: TokenSet::new(tokens),
        })
    }
}

impl RawRegistry {
    fn validate(self) -> Result<RegistrySettings, ConfigError> {
        match self.kind.trim() {
            "eureka" => {
                let raw = self.eureka;
                if raw.urls.is_empty() {
                    return Err(invalid(
                        "registry.eureka.urls",
                        "list at least one Eureka peer",
                    ));
                }
                let urls = raw
                    .urls
                    .iter()
                    .enumerate()
                    .map(|(i, url)| {
                        let key = format!("registry.eureka.urls[{i}]");
                        let parsed = Url::parse(url.trim())
                            .map_err(|e| invalid(&key, format!("'{url}' is not a URL ({e})")))?;
                        if !matches!(parsed.scheme(), "http" | "https") {
                            return Err(invalid(&key, "must be an http or https URL"));
                        }
                        Ok(parsed)
                    })
                    .collect::<Result<_, _>>()?;
                Ok(RegistrySettings::Eureka(EurekaSettings {
                    urls,
                    refresh: positive_duration("registry.eureka.refresh", &raw.refresh)?,
                    timeout: positive_duration("registry.eureka.timeout", &raw.timeout)?,
                }))
            }
            "file" => Ok(RegistrySettings::File(FileRegistrySettings {
                path: PathBuf::from(self.file.path),
                refresh: positive_duration("registry.file.refresh", &self.file.refresh)?,
            })),
            "zookeeper" => {
                let raw = self.zookeeper;
                let connect = raw.connect.trim().to_owned();
                if connect.is_empty() || connect.split(',').any(|host| !host.contains(':')) {
                    return Err(invalid(
                        "registry.zookeeper.connect",
                        format!("'{connect}' is not host:port[,host:port...]"),
                    ));
                }
                let root = raw.root.trim().trim_end_matches('/').to_owned();
                if !root.starts_with('/') {
                    return Err(invalid(
                        "registry.zookeeper.root",
                        format!("'{}' is not an absolute path such as /services", raw.root),
                    ));
                }
                Ok(RegistrySettings::Zookeeper(ZookeeperSettings {
                    connect,
                    root,
                    session_timeout: positive_duration(
                        "registry.zookeeper.session_timeout",
                        &raw.session_timeout,
                    )?,
                    timeout: positive_duration("registry.zookeeper.timeout", &raw.timeout)?,
                }))
            }
            "nacos" => Err(invalid(
                "registry.kind",
                "'nacos' is not supported by this version yet (eureka, zookeeper, file)",
            )),
            other => Err(invalid(
                "registry.kind",
                format!("'{other}' is not a registry kind (eureka, zookeeper, file)"),
            )),
        }
    }
}

impl RawGroups {
    fn validate(self) -> Result<GroupsSettings, ConfigError> {
        if self.source.trim() != "static" {
            return Err(invalid(
                "groups.source",
                format!(
                    "'{}' is not supported by this version (static)",
                    self.source
                ),
            ));
        }
        let mut routes = BTreeMap::new();
        for (app, groups) in self.static_routes {
            let key = format!("groups.static.{app}");
            let app = app_name(&key, &app)?;
            let groups = groups
                .iter()
                .map(|group| app_name(&key, group))
                .collect::<Result<Vec<_>, _>>()?;
            routes.insert(app, groups);
        }
        Ok(GroupsSettings { routes })
    }
}

impl RawGateway {
    fn validate(self) -> Result<GatewaySettings, ConfigError> {
        let notifier = NotifierKind::parse("gateway.notifier", &self.notifier)?;
        let mut group_notifiers = BTreeMap::new();
        for (group, kind) in &self.group_notifiers {
            let key = format!("gateway.group_notifiers.{group}");
            let kind = NotifierKind::parse(&key, kind)?;
            group_notifiers.insert(app_name(&key, group)?, kind);
        }
        if !self.path.starts_with('/') {
            return Err(invalid("gateway.path", "must start with /"));
        }
        if self.attempts == 0 {
            return Err(invalid("gateway.attempts", "must be at least 1"));
        }
        if self.concurrency == 0 {
            return Err(invalid("gateway.concurrency", "must be at least 1"));
        }
        let mut nodes = BTreeMap::new();
        for (group, list) in self.nodes {
            let key = format!("gateway.nodes.{group}");
            let group = app_name(&key, &group)?;
            let kind = group_notifiers.get(&group).copied().unwrap_or(notifier);
            for node in &list {
                match (kind, node.strip_prefix("unix:")) {
                    (NotifierKind::Haproxy, Some(path)) if path.starts_with('/') => {}
                    (NotifierKind::Haproxy, Some(_)) => {
                        return Err(invalid(&key, format!("'{node}': unix:/absolute/path")));
                    }
                    _ => node_address(&key, node)?,
                }
            }
            nodes.insert(group, list);
        }
        Ok(GatewaySettings {
            notifier,
            group_notifiers,
            haproxy: self.haproxy.validate()?,
            path: self.path,
            timeout: positive_duration("gateway.timeout", &self.timeout)?,
            attempts: self.attempts,
            backoff: duration("gateway.backoff", &self.backoff)?,
            backoff_max: duration("gateway.backoff_max", &self.backoff_max)?,
            concurrency: self.concurrency,
            secret: Some(self.secret).filter(|s| !s.is_empty()),
            port_metadata_key: Some(self.port_metadata_key.trim().to_owned())
                .filter(|s| !s.is_empty()),
            nodes,
        })
    }
}

/// A static node is `host:port`; the host may be a name or an address (`[v6]` bracketed).
fn node_address(key: &str, node: &str) -> Result<(), ConfigError> {
    let parsed = Url::parse(&format!("http://{node}"))
        .map_err(|e| invalid(key, format!("'{node}' is not host:port ({e})")))?;
    if parsed.port().is_none() || parsed.path() != "/" || parsed.host_str().is_none() {
        return Err(invalid(key, format!("'{node}' is not host:port")));
    }
    Ok(())
}

impl RawHaproxy {
    fn validate(self) -> Result<HaproxySettings, ConfigError> {
        let offline_state = match self.state.trim() {
            "drain" => HaproxyOfflineState::Drain,
            "maint" => HaproxyOfflineState::Maint,
            other => {
                return Err(invalid(
                    "gateway.haproxy.state",
                    format!("'{other}' is not drain or maint"),
                ));
            }
        };
        if !(1..=100).contains(&self.warmup_start_percent) {
            return Err(invalid(
                "gateway.haproxy.warmup_start_percent",
                "must be between 1 and 100",
            ));
        }
        if self.warmup_steps == 0 {
            return Err(invalid(
                "gateway.haproxy.warmup_steps",
                "must be at least 1",
            ));
        }
        let warmup = duration("gateway.haproxy.warmup", &self.warmup)?;
        Ok(HaproxySettings {
            offline_state,
            wait_idle: self.wait_idle,
            idle_timeout: positive_duration("gateway.haproxy.idle_timeout", &self.idle_timeout)?,
            idle_poll: positive_duration("gateway.haproxy.idle_poll", &self.idle_poll)?,
            warmup: Some(warmup).filter(|w| !w.is_zero()),
            warmup_start_percent: self.warmup_start_percent,
            warmup_steps: self.warmup_steps,
        })
    }
}

impl RawDrain {
    fn validate(self) -> Result<DrainSettings, ConfigError> {
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

impl RawStore {
    fn validate(self) -> Result<StoreSettings, ConfigError> {
        if !self.url.starts_with("sqlite:") {
            return Err(invalid(
                "store.url",
                "only sqlite: URLs are supported by this version (postgres is planned)",
            ));
        }
        Ok(StoreSettings { url: self.url })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid_and_runs_without_a_registry() {
        let settings = Settings::from_toml(DEFAULT_TOML).unwrap();
        assert_eq!(settings.registry.kind(), "file");
        assert!(settings.store.url.starts_with("sqlite:"));
    }

    fn error_key(text: &str) -> String {
        match Settings::from_toml(text).unwrap_err() {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected a key error, got {other}"),
        }
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            error_key("[security]\nallow = [\"10.0.0.0/33\"]"),
            "security.allow[0]"
        );
        assert_eq!(
            error_key("[gateway]\ntimeout = \"soon\""),
            "gateway.timeout"
        );
        assert_eq!(error_key("[registry]\nkind = \"consul\""), "registry.kind");
        assert_eq!(
            error_key("[security]\ntokens = [\"short\"]"),
            "security.tokens[0]"
        );
        assert_eq!(
            error_key("[gateway.nodes]\nEDGE = [\"no-port\"]"),
            "gateway.nodes.EDGE"
        );
    }

    #[test]
    fn haproxy_groups_are_chosen_per_group_and_may_use_unix_sockets() {
        let settings = Settings::from_toml(
            "[gateway.group_notifiers]\n\"haproxy-edge\" = \"haproxy\"\n\
             [gateway.nodes]\n\"HAPROXY-EDGE\" = [\"unix:/run/haproxy/admin.sock\", \"10.3.0.1:9999\"]\n\
             [gateway.haproxy]\nstate = \"maint\"\nwarmup = \"30s\"",
        )
        .unwrap();
        let gateway = &settings.gateway;
        let edge = AppName::parse("HAPROXY-EDGE").unwrap();
        assert_eq!(gateway.kind_of(&edge), NotifierKind::Haproxy);
        assert_eq!(
            gateway.kind_of(&AppName::parse("GATEWAY-PUBLIC").unwrap()),
            NotifierKind::Webhook
        );
        assert_eq!(gateway.haproxy.offline_state, HaproxyOfflineState::Maint);
        assert_eq!(gateway.haproxy.warmup, Some(Duration::from_secs(30)));
        assert!(!gateway.haproxy.wait_idle, "off unless asked for");
    }

    #[test]
    fn zookeeper_settings_are_read_and_checked() {
        let settings = Settings::from_toml(
            "[registry]\nkind = \"zookeeper\"\n[registry.zookeeper]\nconnect = \"zk1:2181,zk2:2181\"\nroot = \"/services/\"",
        )
        .unwrap();
        match &settings.registry {
            RegistrySettings::Zookeeper(zookeeper) => {
                assert_eq!(zookeeper.connect, "zk1:2181,zk2:2181");
                assert_eq!(zookeeper.root, "/services", "a trailing slash is dropped");
            }
            other => panic!("expected zookeeper, got {other:?}"),
        }
        assert_eq!(
            error_key(
                "[registry]\nkind = \"zookeeper\"\n[registry.zookeeper]\nroot = \"services\""
            ),
            "registry.zookeeper.root"
        );
        assert_eq!(
            error_key("[registry]\nkind = \"zookeeper\"\n[registry.zookeeper]\nconnect = \"zk1\""),
            "registry.zookeeper.connect"
        );
    }

    #[test]
    fn haproxy_settings_are_checked() {
        // A Unix socket is a runtime-API address, not a webhook node.
        assert_eq!(
            error_key("[gateway.nodes]\nEDGE = [\"unix:/run/haproxy.sock\"]"),
            "gateway.nodes.EDGE"
        );
        assert_eq!(
            error_key("[gateway.group_notifiers]\nEDGE = \"nginx\""),
            "gateway.group_notifiers.EDGE"
        );
        assert_eq!(
            error_key("[gateway.haproxy]\nstate = \"off\""),
            "gateway.haproxy.state"
        );
        assert_eq!(
            error_key("[gateway.haproxy]\nwarmup_start_percent = 0"),
            "gateway.haproxy.warmup_start_percent"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Settings::from_toml("[server]\nlisten_on = \"0.0.0.0:1\"").unwrap_err();
        assert!(err.to_string().contains("listen_on"), "{err}");
    }

    #[test]
    fn bare_addresses_are_single_host_ranges_and_tokens_name_principals() {
        let settings = Settings::from_toml(
            "[security]\nallow = [\"10.1.2.3\"]\ntokens = [\"0123456789abcdef\", {principal = \"ci\", token = \"fedcba9876543210\"}]",
        )
        .unwrap();
        assert!(
            settings
                .security
                .policy
                .check("10.1.2.3".parse().unwrap())
                .is_ok()
        );
        assert!(
            settings
                .security
                .policy
                .check("10.1.2.4".parse().unwrap())
                .is_err()
        );
        assert_eq!(
            settings.security.tokens.authenticate("0123456789abcdef"),
            Some("token-1")
        );
        assert_eq!(
            settings.security.tokens.authenticate("fedcba9876543210"),
            Some("ci")
        );
    }

    #[test]
    fn group_routes_are_canonical_app_names() {
        let settings =
            Settings::from_toml("[groups.static]\n\"order-service\" = [\"gateway-public\"]")
                .unwrap();
        let app = AppName::parse("ORDER-SERVICE").unwrap();
        assert_eq!(
            settings.groups.routes[&app],
            vec![AppName::parse("GATEWAY-PUBLIC").unwrap()]
        );
    }
}
