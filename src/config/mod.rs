//! Typed settings, in layers: the embedded `config/default.toml` (every default, the only
//! place one is written), then the operator's file (or the embedded `config/demo.toml` when
//! none is named), then `SYNCHSPEED__SECTION__KEY` environment variables. The merged result is
//! validated into types that cannot be wrong; an invalid setting stops the start with a message
//! naming the key (exit code 64, see `main.rs`).
//!
//! Each section's raw shape (as written in TOML), its typed settings and its validation live
//! together in a module of their own; this one loads, merges and reports.

mod cluster;
mod drain;
mod gateway;
mod groups;
mod nacos;
mod registry;
mod security;
mod server;
mod store;

use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::domain::AppName;

pub use cluster::ClusterSettings;
pub use drain::{DrainSettings, PlanBounds};
pub use gateway::{GatewaySettings, HaproxyOfflineState, HaproxySettings, NotifierKind};
pub use groups::{GroupsSettings, SqlDialect, SqlGroupsSettings};
pub use nacos::{NacosApi, NacosSettings};
pub use registry::{
    EurekaSettings, FileRegistrySettings, PASSWORD_REDACTED, RedactedUrl, RegistrySettings,
    ZookeeperSettings,
};
pub use security::{BrowserPolicy, SecuritySettings};
pub use server::{LogFormat, LogSettings, ServerSettings};
pub use store::{StoreKind, StoreSettings};

/// Every default, documented key by key: always the bottom layer.
pub const DEFAULTS_TOML: &str = include_str!("../../config/default.toml");

/// The quick start (a demo route for the file registry's instances): the middle layer when no
/// `--config` names a file.
pub const DEMO_TOML: &str = include_str!("../../config/demo.toml");

mod environment;

/// A setting that cannot be used, with the key it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration: {0}")]
    Load(#[from] ::config::ConfigError),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("cannot show the effective configuration: {0}")]
    Show(#[from] toml::ser::Error),
    #[error("environment variable {0}: its value is not UTF-8")]
    NotUnicode(String),
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
    pub cluster: ClusterSettings,
}

/// The merged layers, as written in TOML: every key present (the defaults see to it).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    server: server::RawServer,
    log: server::RawLog,
    security: security::RawSecurity,
    registry: registry::RawRegistry,
    groups: groups::RawGroups,
    gateway: gateway::RawGateway,
    drain: drain::RawDrain,
    store: store::RawStore,
    cluster: cluster::RawCluster,
}

/// The file the operator named, or the demo.
enum Layer<'a> {
    File(&'a Path),
    Text(&'a str),
}

/// The layers merged: the defaults, the file (or text), then `variables` (the environment's
/// `SYNCHSPEED__*`, see [`environment`]).
fn merged(layer: Layer<'_>, variables: &[(String, String)]) -> Result<Raw, ConfigError> {
    use ::config::{Config, File, FileFormat};
    let builder = Config::builder().add_source(File::from_str(DEFAULTS_TOML, FileFormat::Toml));
    let builder = match layer {
        Layer::File(path) => {
            builder.add_source(File::from(path).format(FileFormat::Toml).required(true))
        }
        Layer::Text(text) => builder.add_source(File::from_str(text, FileFormat::Toml)),
    };
    let builder = environment::layer(builder, variables)?;
    Ok(builder.build()?.try_deserialize()?)
}

fn layer(path: Option<&Path>) -> Layer<'_> {
    match path {
        Some(path) => Layer::File(path),
        None => Layer::Text(DEMO_TOML),
    }
}

impl Settings {
    /// The defaults, the file at `path` (or the demo), then the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        merged(layer(path), &environment::variables()?)?.validate()
    }

    /// The defaults with TOML text over them (no environment): for tests and tools.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        merged(Layer::Text(text), &[])?.validate()
    }

    /// The defaults, TOML text, then these `SYNCHSPEED__*` variables in place of the
    /// process's environment: for tests, which must not change the process's.
    pub fn from_toml_and_variables(
        text: &str,
        variables: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        merged(Layer::Text(text), variables)?.validate()
    }

    /// What the layers produce for `path`, as TOML, with every secret redacted: what
    /// `check-config` prints. Errors as [`Settings::load`] would.
    pub fn effective_toml(path: Option<&Path>) -> Result<String, ConfigError> {
        effective(layer(path), &environment::variables()?)
    }
}

/// The merged layers as TOML, secrets redacted, once they are known to be valid.
fn effective(layer: Layer<'_>, variables: &[(String, String)]) -> Result<String, ConfigError> {
    let raw = merged(layer, variables)?;
    let shown = toml::to_string(&raw)?;
    raw.validate()?;
    Ok(shown)
}

impl Raw {
    fn validate(self) -> Result<Settings, ConfigError> {
        let mut security = self.security.validate()?;
        let cluster = self.cluster.validate()?;
        // The replicas relay to each other under the advertised name: it is one of ours.
        if let Some(host) = cluster.advertise.as_ref().and_then(url::Url::host_str) {
            let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
            if !security.browser.hostnames.contains(&host) {
                security.browser.hostnames.push(host);
            }
        }
        Ok(Settings {
            server: self.server.validate()?,
            log: self.log.validate()?,
            security,
            registry: self.registry.validate()?,
            groups: self.groups.validate()?,
            gateway: self.gateway.validate()?,
            drain: self.drain.validate()?,
            store: self.store.validate()?,
            cluster,
        })
    }
}

/// Written in place of a secret wherever settings are shown.
pub const REDACTED: &str = "<redacted>";

/// Serializes a secret as [`REDACTED`], or as the empty string it is when unset (so that an
/// operator can tell "no secret" from "a secret").
fn redact<S: serde::Serializer>(
    secret: &secrecy::SecretString,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret;
    if secret.expose_secret().is_empty() {
        serializer.serialize_str("")
    } else {
        serializer.serialize_str(REDACTED)
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

#[cfg(test)]
mod tests;
