//! The `file` registry kind: apps and instances listed in a TOML file, statuses kept in the
//! store. For static fleets without a registry, and so that the default config runs anywhere.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::cache::InstanceCache;
use super::{Registry, RegistryError, StatusChange};
use crate::config::FileRegistrySettings;
use crate::domain::ip::parse_ip;
use crate::domain::{AppName, Instance, InstanceKey, PeerOutcome, PeerResult, Status};
use crate::store::Store;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDocument {
    #[serde(default, rename = "instance")]
    instances: Vec<FileInstance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInstance {
    app: String,
    /// Defaults to `{ip}:{app in lower case}:{port}`, Spring Cloud's instance id style.
    id: Option<String>,
    ip: String,
    port: u16,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// Why the instances file cannot be used.
#[derive(Debug, thiserror::Error)]
enum DocumentError {
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("instance[{index}]: {what}")]
    Entry { index: usize, what: String },
}

/// Parses the file's text into instances (status UP until the store says otherwise).
fn parse_document(text: &str) -> Result<Vec<Instance>, DocumentError> {
    let document: FileDocument = toml::from_str(text)?;
    let mut seen = HashSet::new();
    document
        .instances
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let at = |what: String| DocumentError::Entry { index: i, what };
            let app =
                AppName::parse(&entry.app).map_err(|e| at(format!("app '{}': {e}", entry.app)))?;
            let ip = parse_ip(&entry.ip).map_err(|e| at(e.to_string()))?;
            let instance_id = entry.id.unwrap_or_else(|| {
                format!(
                    "{}:{}:{}",
                    entry.ip.trim(),
                    app.as_str().to_ascii_lowercase(),
                    entry.port
                )
            });
            let instance = Instance {
                app,
                instance_id: instance_id.into(),
                ip,
                port: entry.port,
                status: Status::Up,
                registered_at: None,
                metadata: entry.metadata,
            };
            if !seen.insert(instance.key()) {
                return Err(at(format!(
                    "{} {} is listed twice",
                    instance.app, instance.instance_id
                )));
            }
            Ok(instance)
        })
        .collect()
}

#[derive(Debug, Default)]
struct FileState {
    modified: Option<SystemTime>,
    last_error: Option<String>,
}

pub struct FileRegistry {
    path: PathBuf,
    refresh_every: Duration,
    cache: InstanceCache,
    store: Arc<dyn Store>,
    state: Mutex<FileState>,
}

impl FileRegistry {
    /// Loads the file once; a file that cannot be read or parsed stops the start.
    pub async fn open(
        settings: &FileRegistrySettings,
        store: Arc<dyn Store>,
    ) -> Result<Self, RegistryError> {
        let registry = Self {
            path: settings.path.clone(),
            refresh_every: settings.refresh,
            cache: InstanceCache::default(),
            store,
            state: Mutex::default(),
        };
        registry.reload(true).await?;
        Ok(registry)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FileState> {
        crate::sync::lock(&self.state)
    }

    /// Re-reads the file if it changed (or always, when `force`). On error the last good copy
    /// stays in service.
    async fn reload(&self, force: bool) -> Result<(), RegistryError> {
        let modified = tokio::fs::metadata(&self.path)
            .await
            .and_then(|m| m.modified())
            .ok();
        if !force && modified.is_some() && modified == self.state().modified {
            return Ok(());
        }
        let result = self.read_file().await;
        let mut state = self.state();
        match &result {
            Ok(count) => {
                state.modified = modified;
                state.last_error = None;
                info!(path = %self.path.display(), instances = count, "file registry loaded");
            }
            Err(error) => {
                warn!(path = %self.path.display(), "file registry not reloaded: {error}");
                state.last_error = Some(error.to_string());
            }
        }
        result.map(|_| ())
    }

    async fn read_file(&self) -> Result<usize, RegistryError> {
        let text = tokio::fs::read_to_string(&self.path).await.map_err(|e| {
            RegistryError::unreachable_by(format_args!("cannot read {}", self.path.display()), e)
        })?;
        let mut instances = parse_document(&text)
            .map_err(|e| RegistryError::malformed_by(self.path.display(), e))?;
        // An empty file where there were instances is a file being rewritten (an editor
        // truncates, then writes), not every instance leaving at once: taken as such, every
        // hold would end as departed. The last good copy stays until the file lists some.
        let before = self.cache.len();
        if instances.is_empty() && before > 0 {
            return Err(RegistryError::malformed(format!(
                "{} lists no instance where the last good read had {before}; taken for a file \
                 being rewritten, the last good copy stays (restart synchspeed to start from \
                 an empty registry)",
                self.path.display()
            )));
        }
        let statuses = self
            .store
            .file_statuses()
            .await
            .map_err(|e| RegistryError::unreachable_by("statuses", e))?;
        for instance in &mut instances {
            if let Some(status) = statuses.get(&instance.key()) {
                instance.status = *status;
            }
        }
        let count = instances.len();
        self.cache.replace_all(instances);
        Ok(count)
    }
}

#[async_trait]
impl Registry for FileRegistry {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<super::Observed>> {
        Some(self.cache.subscribe())
    }

    async fn instances_on(&self, ip: IpAddr) -> Result<Vec<Instance>, RegistryError> {
        Ok(self.cache.on_ip(ip))
    }

    async fn instances_of(&self, app: &AppName) -> Result<Vec<Instance>, RegistryError> {
        Ok(self.cache.of_app(app))
    }

    fn app_version(&self, app: &AppName) -> Option<u64> {
        Some(self.cache.app_version(app))
    }

    async fn set_status(
        &self,
        instance: &Instance,
        status: Status,
    ) -> Result<StatusChange, RegistryError> {
        let key: InstanceKey = instance.key();
        if self.cache.get(&key).is_none() {
            return Err(RegistryError::NotFound);
        }
        self.store
            .set_file_status(&key, status)
            .await
            .map_err(|e| RegistryError::unreachable_by("the store", e))?;
        self.cache.set_status(&key, status);
        Ok(StatusChange {
            peers: vec![PeerResult {
                peer: format!("file:{}", self.path.display()),
                outcome: PeerOutcome::Accepted,
                verified_status: Some(status),
                error: None,
            }],
        })
    }

    async fn refresh(&self) -> Result<(), RegistryError> {
        self.reload(false).await
    }

    async fn readiness(&self) -> Result<(), RegistryError> {
        match self.state().last_error.clone() {
            None => Ok(()),
            Some(error) => Err(RegistryError::malformed(error)),
        }
    }

    async fn run(&self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.refresh_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            // Errors are logged by reload and shown by readiness.
            let _ = self.reload(false).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_follow_spring_cloud_style() {
        let instances = parse_document(
            "[[instance]]\napp = \"order-service\"\nip = \"10.0.0.5\"\nport = 8080\n",
        )
        .unwrap();
        assert_eq!(&*instances[0].instance_id, "10.0.0.5:order-service:8080");
        assert_eq!(instances[0].app.as_str(), "ORDER-SERVICE");
    }

    #[test]
    fn bad_entries_name_their_position() {
        let err = parse_document("[[instance]]\napp = \"A\"\nip = \"10.0.0.5\"\nport = 1\n[[instance]]\napp = \"B\"\nip = \"nope\"\nport = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("instance[1]"), "{err}");
        let err = parse_document("[[instance]]\napp = \"A\"\nip = \"10.0.0.5\"\nport = 1\n[[instance]]\napp = \"a\"\nip = \"10.0.0.5\"\nport = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn the_shipped_instances_file_parses() {
        let text = include_str!("../../config/instances.toml");
        assert!(!parse_document(text).unwrap().is_empty());
    }
}
