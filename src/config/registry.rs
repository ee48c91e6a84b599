//! `[registry]`: which registry holds the instances, and how to reach it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::{ConfigError, invalid, positive_duration};

#[derive(Debug, Clone)]
pub enum RegistrySettings {
    Eureka(EurekaSettings),
    Zookeeper(ZookeeperSettings),
    File(FileRegistrySettings),
    Nacos(super::nacos::NacosSettings),
}

impl RegistrySettings {
    pub fn kind(&self) -> &'static str {
        match self {
            RegistrySettings::Eureka(_) => "eureka",
            RegistrySettings::Zookeeper(_) => "zookeeper",
            RegistrySettings::File(_) => "file",
            RegistrySettings::Nacos(_) => "nacos",
        }
    }
}

#[derive(Clone)]
pub struct EurekaSettings {
    /// Every peer's base URL (`.../eureka` or `.../eureka/v2`), credentials allowed.
    pub urls: Vec<Url>,
    /// How often the local cache is refreshed with `GET apps/delta`.
    pub refresh: Duration,
    /// Per-request timeout for registry calls.
    pub timeout: Duration,
}

/// Peer URLs carry passwords (`user:pass@`): shown without them.
impl std::fmt::Debug for EurekaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(without_password).collect();
        f.debug_struct("EurekaSettings")
            .field("urls", &urls)
            .field("refresh", &self.refresh)
            .field("timeout", &self.timeout)
            .finish()
    }
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

/// A connection URL that may hold a password: `Debug` and `Display` show it without one;
/// [`RedactedUrl::expose`] is for the one place that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl(String);

impl RedactedUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match Url::parse(&self.0) {
            Ok(url) => f.write_str(&without_password(&url)),
            // Not a URL that could hold a password (`sqlite:data.db` parses; garbage does not,
            // and is refused at validation).
            Err(_) => f.write_str(&self.0),
        }
    }
}

impl std::fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Written in place of a URL's password (characters a URL keeps as they are).
pub const PASSWORD_REDACTED: &str = "***";

/// Whether a query parameter's name says it holds a secret (`password`, `pwd`, `api_token`,
/// `sslpassword`, `secret_key`...); `keyspace` or `sslmode` do not.
fn is_secret_parameter(name: &str) -> bool {
    const SECRET_WORDS: [&str; 9] = [
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "apikey",
        "credentials",
    ];
    let name = name.to_ascii_lowercase();
    name.split(['_', '-', '.']).any(|part| {
        SECRET_WORDS.contains(&part)
            || ["password", "secret", "token"]
                .iter()
                .any(|word| part.ends_with(word))
    })
}

/// The URL with its password, and every secret-looking query parameter, replaced by
/// [`PASSWORD_REDACTED`] (`postgres://db/app?password=...` is as common as `user:pass@`).
fn without_password(url: &Url) -> String {
    let secret_query = url
        .query_pairs()
        .any(|(name, _)| is_secret_parameter(&name));
    if url.password().is_none() && !secret_query {
        return url.to_string();
    }
    let mut shown = url.clone();
    if url.password().is_some() {
        // Only URLs with a host carry a password, and those accept a new one.
        let _ = shown.set_password(Some(PASSWORD_REDACTED));
    }
    if secret_query {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_secret_parameter(&name) {
                    PASSWORD_REDACTED.to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// Serializes a URL string with its password redacted (the effective configuration).
pub(super) fn redact_url_password<S: serde::Serializer>(
    url: &str,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&RedactedUrl::new(url).to_string())
}

pub(super) fn redact_url_passwords<S: serde::Serializer>(
    urls: &[String],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = serializer.serialize_seq(Some(urls.len()))?;
    for url in urls {
        seq.serialize_element(&RedactedUrl::new(url.as_str()).to_string())?;
    }
    seq.end()
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    kind: String,
    eureka: RawEureka,
    zookeeper: RawZookeeper,
    file: RawFile,
    nacos: super::nacos::RawNacos,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawEureka {
    /// No default: an empty list is refused when the kind is eureka.
    #[serde(default, serialize_with = "redact_url_passwords")]
    urls: Vec<String>,
    refresh: String,
    timeout: String,
}

impl std::fmt::Debug for RawEureka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self
            .urls
            .iter()
            .map(|url| RedactedUrl::new(url.as_str()).to_string())
            .collect();
        f.debug_struct("RawEureka")
            .field("urls", &urls)
            .field("refresh", &self.refresh)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawZookeeper {
    connect: String,
    root: String,
    session_timeout: String,
    timeout: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: String,
    refresh: String,
}

impl RawRegistry {
    pub(super) fn validate(self) -> Result<RegistrySettings, ConfigError> {
        match self.kind.trim() {
            "eureka" => self.eureka.validate().map(RegistrySettings::Eureka),
            "file" => Ok(RegistrySettings::File(FileRegistrySettings {
                path: PathBuf::from(self.file.path),
                refresh: positive_duration("registry.file.refresh", &self.file.refresh)?,
            })),
            "zookeeper" => self.zookeeper.validate().map(RegistrySettings::Zookeeper),
            "nacos" => self.nacos.validate().map(RegistrySettings::Nacos),
            other => Err(invalid(
                "registry.kind",
                format!("'{other}' is not a registry kind (eureka, zookeeper, nacos, file)"),
            )),
        }
    }
}

/// A list of http(s) URLs under `key`, at least one, each error naming its index; a password
/// in one never shows in the message.
pub(super) fn http_urls(
    key: &str,
    urls: &[String],
    when_empty: &str,
) -> Result<Vec<Url>, ConfigError> {
    if urls.is_empty() {
        return Err(invalid(key, when_empty));
    }
    urls.iter()
        .enumerate()
        .map(|(i, url)| {
            let key = format!("{key}[{i}]");
            let shown = RedactedUrl::new(url.trim());
            let parsed = Url::parse(url.trim())
                .map_err(|e| invalid(&key, format!("'{shown}' is not a URL ({e})")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid(&key, "must be an http or https URL"));
            }
            Ok(parsed)
        })
        .collect()
}

impl RawEureka {
    fn validate(self) -> Result<EurekaSettings, ConfigError> {
        let urls = http_urls(
            "registry.eureka.urls",
            &self.urls,
            "list at least one Eureka peer",
        )?;
        Ok(EurekaSettings {
            urls,
            refresh: positive_duration("registry.eureka.refresh", &self.refresh)?,
            timeout: positive_duration("registry.eureka.timeout", &self.timeout)?,
        })
    }
}

impl RawZookeeper {
    fn validate(self) -> Result<ZookeeperSettings, ConfigError> {
        let connect = self.connect.trim().to_owned();
        if connect.is_empty() || connect.split(',').any(|host| !host.contains(':')) {
            return Err(invalid(
                "registry.zookeeper.connect",
                format!("'{connect}' is not host:port[,host:port...]"),
            ));
        }
        let root = self.root.trim().trim_end_matches('/').to_owned();
        if !root.starts_with('/') {
            return Err(invalid(
                "registry.zookeeper.root",
                format!("'{}' is not an absolute path such as /services", self.root),
            ));
        }
        Ok(ZookeeperSettings {
            connect,
            root,
            session_timeout: positive_duration(
                "registry.zookeeper.session_timeout",
                &self.session_timeout,
            )?,
            timeout: positive_duration("registry.zookeeper.timeout", &self.timeout)?,
        })
    }
}
