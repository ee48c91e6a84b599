//! `[registry.nacos]`: a Nacos cluster (Spring Cloud Alibaba), 2.x or 3.x.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::registry::{RedactedUrl, http_urls, redact_url_passwords};
use super::{ConfigError, invalid, positive_duration, redact};

/// Which HTTP API the writes and the catalog reads speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NacosApi {
    /// v1 until a server answers 410 to it (3.x with its compatibility switch off), then v3.
    Auto,
    /// `/nacos/v1/ns/...` (1.x, 2.x, rnacos).
    V1,
    /// `/nacos/v3/admin/ns/...` (3.x).
    V3,
}

#[derive(Clone)]
pub struct NacosSettings {
    /// Every node of the cluster, `http://host:8848/nacos`; tried in order, the one that
    /// answered last first.
    pub servers: Vec<Url>,
    /// The namespace id (`public` is the default namespace).
    pub namespace: String,
    /// The groups whose services are indexed.
    pub groups: Vec<String>,
    /// The clusters read through the v1 catalog, which reads one cluster at a time.
    pub clusters: Vec<String>,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub api: NacosApi,
    /// Per request.
    pub timeout: Duration,
    /// How often the service list and the services synchspeed watches closely are read.
    pub refresh: Duration,
    /// Catalog reads per second spent re-reading every other service in turn: the safety
    /// net for what pushes do not carry.
    pub sweep_per_second: u32,
    /// Whether to subscribe to every service over gRPC (Nacos 2.x/3.x) to hear of changes
    /// at once.
    pub push: bool,
    /// The gRPC port when it is not the HTTP port + 1000.
    pub grpc_port: Option<u16>,
}

impl std::fmt::Debug for NacosSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let servers: Vec<String> = self
            .servers
            .iter()
            .map(|url| RedactedUrl::new(url.as_str()).to_string())
            .collect();
        f.debug_struct("NacosSettings")
            .field("servers", &servers)
            .field("namespace", &self.namespace)
            .field("groups", &self.groups)
            .field("clusters", &self.clusters)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| super::REDACTED))
            .field("api", &self.api)
            .field("timeout", &self.timeout)
            .field("refresh", &self.refresh)
            .field("sweep_per_second", &self.sweep_per_second)
            .field("push", &self.push)
            .field("grpc_port", &self.grpc_port)
            .finish()
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNacos {
    /// No default: an empty list is refused when the kind is nacos.
    #[serde(default, serialize_with = "redact_url_passwords")]
    servers: Vec<String>,
    namespace: String,
    groups: Vec<String>,
    clusters: Vec<String>,
    username: String,
    #[serde(serialize_with = "redact")]
    password: SecretString,
    api: String,
    timeout: String,
    refresh: String,
    sweep_per_second: u32,
    push: bool,
    grpc_port: u16,
}

impl RawNacos {
    pub(super) fn validate(self) -> Result<NacosSettings, ConfigError> {
        let servers = http_urls(
            "registry.nacos.servers",
            &self.servers,
            "list at least one Nacos server, http://host:8848/nacos",
        )?
        .into_iter()
        .map(|mut url| {
            // Paths are joined onto it: `/nacos` and `/nacos/` mean the same.
            let path = url.path().trim_end_matches('/').to_owned();
            url.set_path(&path);
            url
        })
        .collect();
        let namespace = self.namespace.trim().to_owned();
        if namespace.is_empty() {
            return Err(invalid(
                "registry.nacos.namespace",
                "must name a namespace id (the default namespace is 'public')",
            ));
        }
        let names = |key: &str, list: Vec<String>| -> Result<Vec<String>, ConfigError> {
            let list: Vec<String> = list.into_iter().map(|g| g.trim().to_owned()).collect();
            if list.is_empty() || list.iter().any(|g| g.is_empty() || g.contains("@@")) {
                return Err(invalid(
                    key,
                    "list at least one name, none empty or with '@@'",
                ));
            }
            Ok(list)
        };
        let groups = names("registry.nacos.groups", self.groups)?;
        let clusters = names("registry.nacos.clusters", self.clusters)?;
        let username = Some(self.username.trim().to_owned()).filter(|u| !u.is_empty());
        let password = Some(self.password).filter(|p| !p.expose_secret().is_empty());
        if username.is_some() != password.is_some() {
            return Err(invalid(
                "registry.nacos.username",
                "give both a username and a password, or neither",
            ));
        }
        let api = match self.api.trim() {
            "auto" => NacosApi::Auto,
            "v1" => NacosApi::V1,
            "v3" => NacosApi::V3,
            other => {
                return Err(invalid(
                    "registry.nacos.api",
                    format!("'{other}' is not auto, v1 or v3"),
                ));
            }
        };
        if self.sweep_per_second == 0 {
            return Err(invalid(
                "registry.nacos.sweep_per_second",
                "must be at least 1: it is the only way changes to disabled instances outside the watched services are seen",
            ));
        }
        Ok(NacosSettings {
            servers,
            namespace,
            groups,
            clusters,
            username,
            password,
            api,
            timeout: positive_duration("registry.nacos.timeout", &self.timeout)?,
            refresh: positive_duration("registry.nacos.refresh", &self.refresh)?,
            sweep_per_second: self.sweep_per_second,
            push: self.push,
            grpc_port: Some(self.grpc_port).filter(|port| *port != 0),
        })
    }
}
