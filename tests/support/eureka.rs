//! A Eureka server double, written from Netflix/eureka's `InstanceResource`,
//! `ApplicationResource`, `ApplicationsResource`, `AbstractInstanceRegistry` and the JSON
//! codecs. One room past 500 lines: it is one server, and its quirks share its state.
//! Quirks it reproduces:
//!
//! * `{APP}` is upper-cased (case-insensitive); `{id}` is case-sensitive;
//! * PUT status: 404 for an unknown instance, 500 for a `value` that is not an exact enum
//!   name; a PUT equal to the current status stores no override and still answers 200;
//! * DELETE status: 404 unknown; without an override a no-op answering 200; with one, the
//!   override goes and the status becomes `value` (UNKNOWN without one);
//! * heartbeats run the rule chain (DownOrStarting, OverrideExists, LeaseExists);
//! * cancel removes the override (so a re-registration comes back UP);
//! * `GET apps`, `apps/delta`, `apps/{APP}` answer XML unless `Accept` contains "json", are
//!   gzipped when asked, and `GET apps` and `apps/delta` can be served from a read-only cache
//!   that only `refresh_read_cache` updates (the 30 s `responseCacheUpdateIntervalMs`, made
//!   explicit): `ResponseCacheImpl` keeps both payloads in its read-only map;
//! * JSON as the Jackson codec writes it: `port.$` number with `@enabled` string, string
//!   `@Auto` timestamps, `{"@class": ...EmptyMap}` for empty metadata, string
//!   `versions__delta`/`apps__hashcode`;
//! * `GET apps/{APP}/{id}` reads the registry directly (never cached).

use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower_http::compression::CompressionLayer;

const STATUSES: [&str; 5] = ["UP", "DOWN", "STARTING", "OUT_OF_SERVICE", "UNKNOWN"];

#[derive(Debug, Clone)]
pub struct Instance {
    pub app: String,
    pub id: String,
    pub ip: String,
    pub port: u16,
    pub status: String,
    pub overridden_status: String,
    pub registered_at: i64,
    pub last_dirty: i64,
    pub metadata: BTreeMap<String, String>,
    pub action_type: &'static str,
}

impl Instance {
    fn to_json(&self) -> Value {
        let metadata = if self.metadata.is_empty() {
            json!({"@class": "java.util.Collections$EmptyMap"})
        } else {
            json!(self.metadata)
        };
        json!({
            "instanceId": self.id,
            "hostName": self.ip,
            "app": self.app,
            "ipAddr": self.ip,
            "status": self.status,
            "overriddenStatus": self.overridden_status,
            "port": {"$": self.port, "@enabled": "true"},
            "securePort": {"$": 443, "@enabled": "false"},
            "countryId": 1,
            "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
            "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90,
                "registrationTimestamp": self.registered_at, "lastRenewalTimestamp": self.registered_at,
                "evictionTimestamp": 0, "serviceUpTimestamp": self.registered_at},
            "metadata": metadata,
            "vipAddress": self.app.to_lowercase(),
            "secureVipAddress": self.app.to_lowercase(),
            "isCoordinatingDiscoveryServer": "false",
            "lastUpdatedTimestamp": self.last_dirty.to_string(),
            "lastDirtyTimestamp": self.last_dirty.to_string(),
            "actionType": self.action_type,
        })
    }
}

/// How the double misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Every request answers 503 (a peer behind a load balancer that lost its backend).
    Unavailable,
    /// Reads answer 403 (`shouldAllowAccess` while syncing), writes work.
    NotReady,
    /// Every request answers 307 (`StatusFilter`: this node is not UP).
    Redirect,
    /// Status writes answer 500 (a race with a cancel).
    RefuseWrites,
    /// Registry reads answer 200 with a truncated body.
    Garbage,
    /// Every request is answered, this many milliseconds late.
    Slow(u64),
    /// Registry reads answer 200 and the start of a document, then nothing more (a peer that
    /// hangs in the middle of an answer).
    Stalled,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub accept: String,
    pub accept_encoding: String,
}

#[derive(Default)]
struct Inner {
    apps: BTreeMap<String, BTreeMap<String, Instance>>,
    overrides: HashMap<String, String>,
    /// The recently-changed queue, with when each change was made.
    delta: VecDeque<(std::time::Instant, Instance)>,
    version: u64,
    clock: i64,
    read_cache: Option<Value>,
    read_cache_delta: Option<Value>,
    use_read_cache: bool,
    mode: Option<Mode>,
    refused_ids: Vec<String>,
    requests: Vec<Request>,
}

impl Inner {
    fn tick(&mut self) -> i64 {
        self.clock += 1;
        1_800_000_000_000 + self.clock
    }

    fn hashcode(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for instance in self.apps.values().flat_map(|a| a.values()) {
            *counts.entry(instance.status.as_str()).or_default() += 1;
        }
        counts.iter().map(|(s, n)| format!("{s}_{n}_")).collect()
    }

    fn applications(&self, delta: bool) -> Value {
        let application: Vec<Value> = if delta {
            // `getApplicationDeltas` adds each queued change to its app with `addInstance`,
            // which keys instances by id: an instance changed twice appears once, as it is
            // now.
            // Each instance is encoded once, however often it changed in the queue: the
            // benchmarks flip a few instances thousands of times within the retention, and
            // encoding every entry under the lock made status writes wait for milliseconds.
            let mut by_app: BTreeMap<&str, BTreeMap<&str, &Instance>> = BTreeMap::new();
            for (_, instance) in &self.delta {
                let current = self
                    .apps
                    .get(&instance.app)
                    .and_then(|a| a.get(&instance.id))
                    .filter(|_| instance.action_type != "DELETED")
                    .unwrap_or(instance);
                by_app
                    .entry(&instance.app)
                    .or_default()
                    .insert(&instance.id, current);
            }
            by_app
                .into_iter()
                .map(|(name, instances)| {
                    let instances: Vec<Value> =
                        instances.into_values().map(Instance::to_json).collect();
                    json!({"name": name, "instance": instances})
                })
                .collect()
        } else {
            self.apps
                .iter()
                .filter(|(_, instances)| !instances.is_empty())
                .map(|(name, instances)| {
                    json!({"name": name, "instance": instances.values().map(Instance::to_json).collect::<Vec<_>>()})
                })
                .collect()
        };
        json!({"applications": {
            "versions__delta": if delta { self.version.to_string() } else { "1".to_string() },
            "apps__hashcode": self.hashcode(),
            "application": application,
        }})
    }

    /// A status change the server records: MODIFIED, dirty, into the delta queue.
    fn modify(&mut self, app: &str, id: &str, status: &str, overridden: &str) {
        let now = self.tick();
        let instance = self.apps.get_mut(app).and_then(|a| a.get_mut(id)).unwrap();
        instance.status = status.to_owned();
        instance.overridden_status = overridden.to_owned();
        instance.action_type = "MODIFIED";
        instance.last_dirty = now;
        let snapshot = instance.clone();
        self.changed(snapshot);
    }

    fn changed(&mut self, instance: Instance) {
        self.version += 1;
        // `retentionTimeInMSInDeltaQueue`: changes stay in the delta for 3 minutes.
        // Queued in time order, so the expired changes are at the front.
        let now = std::time::Instant::now();
        while self
            .delta
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= std::time::Duration::from_secs(180))
        {
            self.delta.pop_front();
        }
        self.delta.push_back((now, instance));
    }
}

#[derive(Clone)]
pub struct EurekaDouble {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
    base: String,
    server: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// While true, `GET apps/{APP}/{id}` waits (a peer slow to answer reads).
    instance_reads_held: Arc<tokio::sync::watch::Sender<bool>>,
    /// While true, a delta is computed at once but answered only when released (the registry
    /// changes meanwhile: the answer is older than it looks).
    deltas_held: Arc<tokio::sync::watch::Sender<bool>>,
    /// Deltas computed and waiting to be answered.
    deltas_waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl EurekaDouble {
    /// A Spring Cloud style server: base `/eureka`.
    pub async fn start() -> Self {
        Self::start_at("/eureka").await
    }

    /// A server with another base path (`/eureka/v2` for Netflix's war).
    pub async fn start_at(base: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let double = Self {
            inner,
            addr,
            base: base.to_owned(),
            server: Arc::new(Mutex::new(None)),
            instance_reads_held: Arc::new(tokio::sync::watch::Sender::new(false)),
            deltas_held: Arc::new(tokio::sync::watch::Sender::new(false)),
            deltas_waiting: Arc::default(),
        };
        let app = Router::new()
            .route(&format!("{base}/apps"), get(get_apps))
            .route(&format!("{base}/apps/delta"), get(get_delta))
            .route(&format!("{base}/apps/{{app}}"), any(app_resource))
            .route(
                &format!("{base}/apps/{{app}}/{{id}}"),
                any(instance_resource),
            )
            .route(
                &format!("{base}/apps/{{app}}/{{id}}/status"),
                any(status_resource),
            )
            .layer(axum::middleware::from_fn_with_state(double.clone(), guard))
            .layer(CompressionLayer::new().gzip(true))
            .with_state(double.clone());
        let handle = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        *double.server.lock().unwrap() = Some(handle);
        double
    }

    /// The fixture most tests start from: ORDER-SERVICE on 10.0.0.5:8080, UP.
    pub async fn with_order_service() -> Self {
        let double = Self::start().await;
        double.register(
            "ORDER-SERVICE",
            "10.0.0.5:order-service:8080",
            "10.0.0.5",
            8080,
            "UP",
        );
        double
    }

    /// ORDER-SERVICE on 10.0.0.5:8080 and PAYMENT-SERVICE on 10.0.0.7:8080, both UP: two apps
    /// on two IPs, for filters and for operations side by side.
    pub async fn with_order_and_payment() -> Self {
        let double = Self::with_order_service().await;
        double.register(
            "PAYMENT-SERVICE",
            "10.0.0.7:payment-service:8080",
            "10.0.0.7",
            8080,
            "UP",
        );
        double
    }

    /// The base URL to configure in synchspeed.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.base)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// Registers an instance as a client's `POST apps/{APP}` would.
    pub fn register(&self, app: &str, id: &str, ip: &str, port: u16, status: &str) {
        self.register_with(app, id, ip, port, status, BTreeMap::new());
    }

    pub fn register_with(
        &self,
        app: &str,
        id: &str,
        ip: &str,
        port: u16,
        status: &str,
        metadata: BTreeMap<String, String>,
    ) {
        let mut inner = self.lock();
        let now = inner.tick();
        let app = app.to_uppercase();
        let mut instance = Instance {
            app: app.clone(),
            id: id.to_owned(),
            ip: ip.to_owned(),
            port,
            status: status.to_owned(),
            overridden_status: "UNKNOWN".into(),
            registered_at: now,
            last_dirty: now,
            metadata,
            action_type: "ADDED",
        };
        // `register()` copies an existing override onto the registrant (fast restart).
        if let Some(overridden) = inner.overrides.get(id).cloned() {
            instance.overridden_status = overridden.clone();
            if status == "UP" {
                instance.status = overridden;
            }
        }
        inner
            .apps
            .entry(app)
            .or_default()
            .insert(id.to_owned(), instance.clone());
        inner.changed(instance);
    }

    /// Registers without a delta entry: only a full fetch can see it (a client whose copy
    /// drifted must notice through the hash code).
    pub fn register_silently(&self, app: &str, id: &str, ip: &str, port: u16) {
        self.register(app, id, ip, port, "UP");
        self.lock().delta.pop_back();
    }

    /// Makes `GET apps/{APP}/{id}` wait until [`Self::release_instance_reads`].
    pub fn hold_instance_reads(&self) {
        self.instance_reads_held.send_replace(true);
    }

    pub fn release_instance_reads(&self) {
        self.instance_reads_held.send_replace(false);
    }

    /// Computes each delta when asked but answers it only after [`Self::release_deltas`].
    pub fn hold_deltas(&self) {
        self.deltas_held.send_replace(true);
    }

    pub fn release_deltas(&self) {
        self.deltas_held.send_replace(false);
    }

    /// Deltas computed and not answered yet.
    pub fn deltas_waiting(&self) -> usize {
        self.deltas_waiting
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Empties the delta queue, as if its 3-minute retention had passed (benchmarks register
    /// thousands of instances and must not carry them in every delta).
    pub fn forget_delta(&self) {
        self.lock().delta.clear();
    }

    /// A graceful shutdown's `DELETE apps/{APP}/{id}`: removes the override too.
    pub fn cancel(&self, app: &str, id: &str) {
        let mut inner = self.lock();
        let removed = inner
            .apps
            .get_mut(&app.to_uppercase())
            .and_then(|a| a.remove(id));
        inner.overrides.remove(id);
        if let Some(mut instance) = removed {
            instance.action_type = "DELETED";
            inner.changed(instance);
        }
    }

    pub fn status(&self, app: &str, id: &str) -> Option<String> {
        self.lock()
            .apps
            .get(&app.to_uppercase())?
            .get(id)
            .map(|i| i.status.clone())
    }

    pub fn override_of(&self, id: &str) -> Option<String> {
        self.lock().overrides.get(id).cloned()
    }

    /// Status writes for this instance answer 500, others work.
    pub fn refuse_writes_for(&self, id: &str) {
        self.lock().refused_ids.push(id.to_owned());
    }

    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = Some(mode);
    }

    /// Serves `GET apps` and `apps/delta` from snapshots taken now, until the next call (the
    /// read-only cache).
    pub fn refresh_read_cache(&self) {
        let mut inner = self.lock();
        let snapshot = inner.applications(false);
        inner.read_cache = Some(snapshot);
        inner.read_cache_delta = Some(inner.applications(true));
        inner.use_read_cache = true;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// Status writes received (PUT or DELETE on `.../status`).
    pub fn status_writes(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/status") && (r.method == "PUT" || r.method == "DELETE"))
            .collect()
    }

    /// Stops listening: connections are refused from now on.
    pub fn stop(&self) {
        if let Some(handle) = self.server.lock().unwrap().take() {
            handle.abort();
        }
    }
}

async fn guard(
    State(double): State<EurekaDouble>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mode = {
        let mut inner = double.lock();
        inner.requests.push(Request {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().unwrap_or("").to_owned(),
            accept: header(&headers, "accept"),
            accept_encoding: header(&headers, "accept-encoding"),
        });
        inner.mode.unwrap_or(Mode::Normal)
    };
    match mode {
        Mode::Unavailable => return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
        Mode::Redirect => {
            return (StatusCode::TEMPORARY_REDIRECT, "Current node is currently not ready to serve requests -- current status: STARTING - try another DS node: ").into_response();
        }
        Mode::NotReady if method == Method::GET => return StatusCode::FORBIDDEN.into_response(),
        Mode::Slow(millis) => tokio::time::sleep(std::time::Duration::from_millis(millis)).await,
        Mode::Stalled if method == Method::GET => {
            let start = futures::stream::once(async {
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(
                    b"{\"applications\": {\"application\": [{\"name\": \"ORD",
                ))
            });
            let body = axum::body::Body::from_stream(start.chain(futures::stream::pending()));
            return ([("content-type", "application/json")], body).into_response();
        }
        Mode::Garbage if method == Method::GET => {
            return (
                [("content-type", "application/json")],
                "{\"applications\": {\"application\": [{\"name\": \"ORD",
            )
                .into_response();
        }
        _ => {}
    }
    next.run(request).await
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
}

/// The XML the server answers without `Accept: ...json`; synchspeed must never need it.
fn xml(body: &Value) -> Response {
    let text = format!(
        "<applications><versions__delta>{}</versions__delta><apps__hashcode>{}</apps__hashcode></applications>",
        body["applications"]["versions__delta"]
            .as_str()
            .unwrap_or(""),
        body["applications"]["apps__hashcode"]
            .as_str()
            .unwrap_or("")
    );
    ([("content-type", "application/xml")], text).into_response()
}

async fn get_apps(State(double): State<EurekaDouble>, headers: HeaderMap) -> Response {
    let body = {
        let inner = double.lock();
        match (&inner.read_cache, inner.use_read_cache) {
            (Some(cached), true) => cached.clone(),
            _ => inner.applications(false),
        }
    };
    if !wants_json(&headers) {
        return xml(&body);
    }
    Json(body).into_response()
}

async fn get_delta(State(double): State<EurekaDouble>, headers: HeaderMap) -> Response {
    let body = {
        let inner = double.lock();
        match (&inner.read_cache_delta, inner.use_read_cache) {
            (Some(cached), true) => cached.clone(),
            _ => inner.applications(true),
        }
    };
    if *double.deltas_held.borrow() {
        use std::sync::atomic::Ordering;
        double.deltas_waiting.fetch_add(1, Ordering::SeqCst);
        let _ = double.deltas_held.subscribe().wait_for(|held| !held).await;
        double.deltas_waiting.fetch_sub(1, Ordering::SeqCst);
    }
    if !wants_json(&headers) {
        return xml(&body);
    }
    Json(body).into_response()
}

async fn app_resource(
    State(double): State<EurekaDouble>,
    method: Method,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let inner = double.lock();
    match inner
        .apps
        .get(&app.to_uppercase())
        .filter(|a| !a.is_empty())
    {
        None => StatusCode::NOT_FOUND.into_response(),
        Some(instances) => {
            let body = json!({"application": {"name": app.to_uppercase(),
                "instance": instances.values().map(Instance::to_json).collect::<Vec<_>>()}});
            if !wants_json(&headers) {
                return ([("content-type", "application/xml")], "<application/>").into_response();
            }
            Json(body).into_response()
        }
    }
}

async fn instance_resource(
    State(double): State<EurekaDouble>,
    method: Method,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let app = app.to_uppercase();
    if method == Method::GET {
        let mut held = double.instance_reads_held.subscribe();
        let _ = held.wait_for(|held| !held).await;
    }
    let mut inner = double.lock();
    match method {
        Method::GET => match inner.apps.get(&app).and_then(|a| a.get(&id)) {
            Some(instance) => Json(json!({"instance": instance.to_json()})).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        },
        // Heartbeat: the rule chain on the server's copy.
        Method::PUT => {
            let reported = query.get("status").cloned().unwrap_or_else(|| "UP".into());
            let overridden = inner.overrides.get(&id).cloned();
            let Some(instance) = inner.apps.get_mut(&app).and_then(|a| a.get_mut(&id)) else {
                return StatusCode::NOT_FOUND.into_response();
            };
            instance.status = if reported != "UP" && reported != "OUT_OF_SERVICE" {
                reported
            } else if let Some(overridden) = overridden {
                overridden
            } else if instance.status == "UP" || instance.status == "OUT_OF_SERVICE" {
                // LeaseExistsRule: the server has its way.
                instance.status.clone()
            } else {
                reported
            };
            StatusCode::OK.into_response()
        }
        Method::DELETE => {
            drop(inner);
            if double.status(&app, &id).is_none() {
                return StatusCode::NOT_FOUND.into_response();
            }
            double.cancel(&app, &id);
            StatusCode::OK.into_response()
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

async fn status_resource(
    State(double): State<EurekaDouble>,
    method: Method,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let app = app.to_uppercase();
    let mut inner = double.lock();
    if inner.mode == Some(Mode::RefuseWrites) || inner.refused_ids.contains(&id) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    if inner.apps.get(&app).and_then(|a| a.get(&id)).is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let value = query.get("value").cloned();
    // `InstanceStatus.valueOf`: exact upper-case names only, else an exception → 500.
    if let Some(v) = &value
        && !STATUSES.contains(&v.as_str())
    {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    match method {
        Method::PUT => {
            let Some(value) = value else {
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            };
            if inner.apps[&app][&id].status == value {
                // Same status: nothing stored, 200 all the same (§1.3 gotcha).
                return StatusCode::OK.into_response();
            }
            inner.overrides.insert(id.clone(), value.clone());
            inner.modify(&app, &id, &value, &value);
            StatusCode::OK.into_response()
        }
        Method::DELETE => {
            if inner.overrides.remove(&id).is_none() {
                // No override: a no-op, 200 (§1.4).
                return StatusCode::OK.into_response();
            }
            inner.modify(&app, &id, value.as_deref().unwrap_or("UNKNOWN"), "UNKNOWN");
            StatusCode::OK.into_response()
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}
