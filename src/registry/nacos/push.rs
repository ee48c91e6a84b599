//! Nacos's own push, used as a trigger: a subscription over gRPC (the official Rust SDK) to
//! every indexed service, so that a change to an enabled instance (a new one, one gone, one
//! someone disabled, a re-registration) has the service's catalog read at once. Only the
//! trigger is taken from the push: what it carries leaves disabled instances out, so the
//! catalog stays what the copy is made of.
//!
//! The subscriptions run in a task of their own: a server without gRPC (or not answering
//! it) costs a warning and a retry now and then, never a refresh.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use nacos_sdk::api::naming::{
    NamingChangeEvent, NamingEventListener, NamingService, NamingServiceBuilder,
};
use nacos_sdk::api::props::ClientProps;
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ServiceRef;
use crate::config::NacosSettings;

/// How long to wait before connecting again after a failure.
const RETRY: Duration = Duration::from_secs(30);
/// How long to wait before subscribing again after a subscription failed (the SDK logs in
/// in the background: its first calls can be refused until it has).
const RESUBSCRIBE: Duration = Duration::from_secs(2);
/// Subscriptions made at once.
const SUBSCRIBE_CONCURRENCY: usize = 16;

struct Listener {
    changed: mpsc::UnboundedSender<ServiceRef>,
}

impl NamingEventListener for Listener {
    fn event(&self, event: Arc<NamingChangeEvent>) {
        // The SDK names the service with or without its group prefix, depending on the path.
        let service = event
            .service_name
            .split_once("@@")
            .map_or(event.service_name.as_str(), |(_, name)| name)
            .to_owned();
        let _ = self.changed.send(ServiceRef {
            group: event.group_name.clone(),
            service,
        });
    }
}

/// Starts following `services` (as they are listed) until `shutdown`; each change a push
/// announces arrives on the receiver.
pub(super) fn spawn(
    settings: &NacosSettings,
    services: watch::Receiver<Vec<ServiceRef>>,
    shutdown: CancellationToken,
) -> mpsc::UnboundedReceiver<ServiceRef> {
    let (changed, receiver) = mpsc::unbounded_channel();
    let listener = Arc::new(Listener { changed });
    tokio::spawn(follow(settings.clone(), services, listener, shutdown));
    receiver
}

async fn follow(
    settings: NacosSettings,
    mut services: watch::Receiver<Vec<ServiceRef>>,
    listener: Arc<Listener>,
    shutdown: CancellationToken,
) {
    let cache_dir = sdk_cache_dir();
    let mut naming: Option<NamingService> = None;
    let mut subscribed: BTreeSet<ServiceRef> = BTreeSet::new();
    loop {
        if naming.is_none() {
            match tokio::time::timeout(settings.timeout * 3, connect(&settings, &cache_dir)).await {
                Ok(Ok(connected)) => {
                    info!("subscribed to Nacos pushes over gRPC");
                    naming = Some(connected);
                    subscribed.clear();
                }
                Ok(Err(e)) => warn!(
                    "cannot subscribe to Nacos pushes over gRPC ({e}); the catalog is read without them, retrying in {RETRY:?}"
                ),
                Err(_) => warn!(
                    "Nacos's gRPC port did not answer in time; the catalog is read without pushes, retrying in {RETRY:?}"
                ),
            }
        }
        let mut incomplete = false;
        if let Some(naming) = &naming {
            let wanted: Vec<ServiceRef> = services
                .borrow_and_update()
                .iter()
                .filter(|service| !subscribed.contains(*service))
                .cloned()
                .collect();
            // One subscription is a round trip and more (about 40 ms against rnacos): a
            // thousand services, one after the other, would take most of a minute.
            let results = futures::stream::iter(wanted.into_iter().map(|service| {
                let listener: Arc<dyn NamingEventListener> = listener.clone();
                let subscribe = naming.subscribe(
                    service.service.clone(),
                    Some(service.group.clone()),
                    Vec::new(),
                    listener,
                );
                async move {
                    (
                        service,
                        tokio::time::timeout(settings.timeout, subscribe).await,
                    )
                }
            }))
            .buffer_unordered(SUBSCRIBE_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
            for (service, result) in results {
                match result {
                    Ok(Ok(())) => {
                        subscribed.insert(service);
                    }
                    Ok(Err(e)) => {
                        warn!(service = %service.service, group = %service.group, "cannot subscribe, retrying in {RESUBSCRIBE:?}: {e}");
                        incomplete = true;
                    }
                    Err(_) => {
                        warn!(service = %service.service, group = %service.group, "a subscription did not answer in time, retrying in {RESUBSCRIBE:?}");
                        incomplete = true;
                    }
                }
            }
        }
        let wait = if naming.is_none() {
            Some(RETRY)
        } else if incomplete {
            Some(RESUBSCRIBE)
        } else {
            None
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = services.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
        }
    }
    drop(naming);
    let _ = std::fs::remove_dir_all(&cache_dir);
}

/// Where the SDK keeps its copy of the services: the temporary folder keeps it off a
/// read-only root, and it is removed at the stop.
fn sdk_cache_dir() -> PathBuf {
    // One per registry: a process that runs several (the tests) must not share one, since
    // each removes its own at the stop.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("synchspeed-nacos-{}-{n}", std::process::id()))
}

async fn connect(
    settings: &NacosSettings,
    cache_dir: &Path,
) -> Result<NamingService, nacos_sdk::api::error::Error> {
    let servers: Vec<String> = settings
        .servers
        .iter()
        .filter_map(|url| {
            Some(format!(
                "{}:{}",
                url.host_str()?,
                url.port_or_known_default()?
            ))
        })
        .collect();
    let mut props = ClientProps::new()
        .server_addr(servers.join(","))
        .namespace(settings.namespace.clone())
        .app_name("synchspeed")
        // An empty push is a change too: the last enabled instance disabled or gone.
        .naming_push_empty_protection(false)
        .cache_dir(cache_dir.to_path_buf())
        // Read from this configuration only, not from NACOS_* variables.
        .env_first(false);
    if let Some(port) = settings.grpc_port {
        props = props.remote_grpc_port(port);
    }
    let mut builder = NamingServiceBuilder::new(match (&settings.username, &settings.password) {
        (Some(username), Some(password)) => props
            .auth_username(username.clone())
            .auth_password(password.expose_secret().to_owned()),
        _ => props,
    });
    if settings.username.is_some() {
        builder = builder.enable_auth_plugin_http();
    }
    builder.build().await
}
