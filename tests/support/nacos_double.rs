//! One room past 500 lines: one server's state and every endpoint that reads or writes it.
//!
//! A double of the official Nacos server (2.x, or 3.x with its default compatibility
//! switches), for what rnacos does differently or lacks, written from the protocol notes
//! (`../shared/protocols/registries.md`, section 3), quirks included:
//!
//! * the operator layer (`enabled`, weight, metadata) is kept apart from the registration,
//!   keyed by `ip:port:cluster`, and outlives the instance for `memory` (60 s in Nacos): a
//!   registration on the same IP:port within it comes up with the old layer, disabled;
//! * v1 `PUT /instance` replaces the layer with the builder's defaults (weight 1.0, enabled
//!   true); `PATCH` merges only what is sent, and the instance must exist;
//! * `instance/list` hides disabled instances; the catalog and the v3 admin list do not;
//!   the v1 catalog wants a `clusterName`; the v1 detail has no `enabled`;
//! * 3.x: every v1 admin and console endpoint answers 410 (Spring's error JSON), login and
//!   `instance/list` still work, and `/nacos/v3/admin/ns/...` wraps answers in `Result`;
//! * auth: a login gives a token that lives `token_ttl`; an expired one is a 403 `token
//!   expired!`, a wrong password a 403 `unknown user!`;
//! * faults on demand: the catalog answers an HTML page, a `caused by` 500, or a truncated
//!   body, and every request can be refused with 503 (a node down).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    V2,
    V3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// The catalog answers Spring's Whitelabel HTML page with 200.
    Html,
    /// The catalog answers `500 caused by: ...` text.
    CausedBy,
    /// The catalog's JSON stops half way.
    Truncated,
    /// Every request is a 503 (this node is down behind its load balancer).
    Down,
}

#[derive(Debug, Clone)]
struct Registration {
    weight: f64,
    healthy: bool,
    enabled: bool,
    metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
struct Layer {
    enabled: Option<bool>,
    weight: Option<f64>,
    metadata: BTreeMap<String, String>,
    /// Set when the instance left: the layer is forgotten after `memory`.
    orphaned_at: Option<Instant>,
}

/// (group, service) → (ip, port, cluster) → registration.
type Services = BTreeMap<(String, String), BTreeMap<(String, u16, String), Registration>>;

struct World {
    generation: Generation,
    services: Services,
    layers: HashMap<(String, String, String, u16, String), Layer>,
    memory: Duration,
    auth: Option<(String, String)>,
    token_ttl: Duration,
    tokens: HashMap<String, Instant>,
    fault: Fault,
    /// A service whose catalog alone answers the Whitelabel page.
    broken: Option<String>,
    requests: Vec<String>,
    logins: usize,
}

#[derive(Clone)]
pub struct NacosDouble {
    world: Arc<Mutex<World>>,
    pub addr: SocketAddr,
}

impl NacosDouble {
    pub async fn start(generation: Generation) -> Self {
        Self::start_with(generation, None, Duration::from_secs(18_000)).await
    }

    pub async fn start_with(
        generation: Generation,
        auth: Option<(&str, &str)>,
        token_ttl: Duration,
    ) -> Self {
        let world = Arc::new(Mutex::new(World {
            generation,
            services: BTreeMap::new(),
            layers: HashMap::new(),
            memory: Duration::from_secs(60),
            auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
            token_ttl,
            tokens: HashMap::new(),
            fault: Fault::None,
            broken: None,
            requests: Vec::new(),
            logins: 0,
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&world));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { world, addr }
    }

    pub fn base(&self) -> String {
        format!("http://{}/nacos", self.addr)
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    pub fn set_fault(&self, fault: Fault) {
        self.world().fault = fault;
    }

    /// Only this service's catalog answers an HTML page.
    pub fn break_service(&self, service: &str) {
        self.world().broken = Some(service.to_owned());
    }

    /// An instance registers (the SDK's `registerInstance`): its own fields; the operator
    /// layer of the same ip:port:cluster, if one is still remembered, applies again.
    pub fn register(
        &self,
        service: &str,
        ip: &str,
        port: u16,
        weight: f64,
        metadata: &[(&str, &str)],
    ) {
        let mut world = self.world();
        let key = ("DEFAULT_GROUP".to_owned(), service.to_owned());
        world.services.entry(key.clone()).or_default().insert(
            (ip.to_owned(), port, "DEFAULT".to_owned()),
            Registration {
                weight,
                healthy: true,
                enabled: true,
                metadata: metadata
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            },
        );
        if let Some(layer) = world.layers.get_mut(&layer_key(&key, ip, port, "DEFAULT")) {
            layer.orphaned_at = None;
        }
    }

    /// The instance leaves (deregistered, or its heartbeat expired): its layer is orphaned
    /// and remembered for `memory`.
    pub fn deregister(&self, service: &str, ip: &str, port: u16) {
        let mut world = self.world();
        let key = ("DEFAULT_GROUP".to_owned(), service.to_owned());
        if let Some(instances) = world.services.get_mut(&key) {
            instances.remove(&(ip.to_owned(), port, "DEFAULT".to_owned()));
        }
        if let Some(layer) = world.layers.get_mut(&layer_key(&key, ip, port, "DEFAULT")) {
            layer.orphaned_at = Some(Instant::now());
        }
    }

    /// The instance as a consumer of the catalog sees it (layer applied), if registered.
    pub fn view(&self, service: &str, ip: &str, port: u16) -> Option<Value> {
        let mut world = self.world();
        world.expire_layers();
        let key = ("DEFAULT_GROUP".to_owned(), service.to_owned());
        let registration = world
            .services
            .get(&key)?
            .get(&(ip.to_owned(), port, "DEFAULT".to_owned()))?
            .clone();
        Some(world.render(&key, ip, port, "DEFAULT", &registration, true))
    }

    /// The requests received, `METHOD path`, in order.
    pub fn requests(&self) -> Vec<String> {
        self.world().requests.clone()
    }

    pub fn logins(&self) -> usize {
        self.world().logins
    }
}

fn layer_key(
    service: &(String, String),
    ip: &str,
    port: u16,
    cluster: &str,
) -> (String, String, String, u16, String) {
    (
        service.0.clone(),
        service.1.clone(),
        ip.to_owned(),
        port,
        cluster.to_owned(),
    )
}

impl World {
    fn expire_layers(&mut self) {
        let memory = self.memory;
        self.layers
            .retain(|_, layer| layer.orphaned_at.is_none_or(|at| at.elapsed() < memory));
    }

    /// An instance as Nacos serializes it, with the layer's `enabled` and weight overriding
    /// and its metadata merged (`InstanceUtil.updateInstanceMetadata`).
    fn render(
        &self,
        service: &(String, String),
        ip: &str,
        port: u16,
        cluster: &str,
        registration: &Registration,
        with_enabled: bool,
    ) -> Value {
        let layer = self.layers.get(&layer_key(service, ip, port, cluster));
        let enabled = layer
            .and_then(|l| l.enabled)
            .unwrap_or(registration.enabled);
        let weight = layer.and_then(|l| l.weight).unwrap_or(registration.weight);
        let mut metadata = registration.metadata.clone();
        if let Some(layer) = layer {
            metadata.extend(layer.metadata.clone());
        }
        let grouped = format!("{}@@{}", service.0, service.1);
        let mut instance = json!({
            "instanceId": format!("{ip}#{port}#{cluster}#{grouped}"),
            "ip": ip, "port": port, "weight": weight, "healthy": registration.healthy,
            "ephemeral": true, "clusterName": cluster, "serviceName": grouped,
            "metadata": metadata,
            "instanceHeartBeatInterval": 5000, "instanceHeartBeatTimeOut": 15000,
            "ipDeleteTimeout": 30000, "instanceIdGenerator": "simple",
        });
        if with_enabled {
            instance["enabled"] = json!(enabled);
        }
        instance
    }

    fn enabled_of(
        &self,
        service: &(String, String),
        ip: &str,
        port: u16,
        cluster: &str,
        registration: &Registration,
    ) -> bool {
        self.layers
            .get(&layer_key(service, ip, port, cluster))
            .and_then(|l| l.enabled)
            .unwrap_or(registration.enabled)
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, body.into()).into_response()
}

fn spring_error(status: StatusCode, message: &str, path: &str) -> Response {
    let body = json!({
        "timestamp": "2026-12-01T12:00:00.000+00:00", "status": status.as_u16(),
        "error": status.canonical_reason().unwrap_or(""), "message": message, "path": path,
    });
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn v3_ok(data: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({"code": 0, "message": "success", "data": data}).to_string(),
    )
        .into_response()
}

async fn handle(
    State(world): State<Arc<Mutex<World>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    body: String,
) -> Response {
    let mut world = world.lock().unwrap();
    let path = uri.path().to_owned();
    world.requests.push(format!("{method} {path}"));
    world.expire_layers();
    if world.fault == Fault::Down {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no server available");
    }
    let mut params = params;
    if headers.get("content-type").is_some_and(|v| {
        v.as_bytes()
            .starts_with(b"application/x-www-form-urlencoded")
    }) {
        let form: HashMap<String, String> = serde_urlencoded::from_str(&body).unwrap_or_default();
        params.extend(form);
    }
    let p = |name: &str| params.get(name).cloned().unwrap_or_default();

    if path == "/nacos/v1/auth/login" || path == "/nacos/v3/auth/user/login" {
        world.logins += 1;
        return match world.auth.clone() {
            Some((u, pw)) if u == p("username") && pw == p("password") => {
                let token = format!("token-{}-{}", world.logins, ulid_like(world.logins));
                let ttl = world.token_ttl;
                world.tokens.insert(token.clone(), Instant::now() + ttl);
                (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    json!({"accessToken": token, "tokenTtl": ttl.as_secs(), "globalAdmin": true, "username": u}).to_string(),
                )
                    .into_response()
            }
            Some(_) => text(StatusCode::FORBIDDEN, "unknown user!"),
            None => text(StatusCode::OK, "{\"accessToken\":\"\",\"tokenTtl\":18000}"),
        };
    }
    if world.auth.is_some() {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
            .or_else(|| params.get("accessToken").cloned());
        match token.and_then(|t| world.tokens.get(&t).copied()) {
            None => return text(StatusCode::FORBIDDEN, "user not found!"),
            Some(expires) if Instant::now() >= expires => {
                return text(StatusCode::FORBIDDEN, "token expired!");
            }
            Some(_) => {}
        }
    }

    let v3 = world.generation == Generation::V3;
    let v1_admin = path.starts_with("/nacos/v1/ns/") && path != "/nacos/v1/ns/instance/list";
    if v3 && v1_admin {
        let message = json!({"code": 410, "message": format!("Current API will be deprecated, please use the V3 API; or open compatibility by nacos.core.api.compatibility.admin.enabled=true ({path})"), "data": null});
        return spring_error(StatusCode::GONE, &message.to_string(), &path);
    }
    if !v3 && path.starts_with("/nacos/v3/") {
        return spring_error(StatusCode::NOT_FOUND, "No endpoint", &path);
    }

    let group = Some(p("groupName"))
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| "DEFAULT_GROUP".into());
    let service_name = p("serviceName");
    let service = (
        group.clone(),
        service_name.split("@@").last().unwrap_or("").to_owned(),
    );
    let cluster = Some(p("clusterName")).filter(|c| !c.is_empty());

    match (method.as_str(), path.as_str()) {
        ("GET", "/nacos/v1/ns/service/list") => {
            let names: Vec<&String> = world
                .services
                .keys()
                .filter(|(g, _)| *g == group)
                .map(|(_, s)| s)
                .collect();
            json_ok(json!({"count": names.len(), "doms": names}))
        }
        ("GET", "/nacos/v3/admin/ns/service/list") => {
            let wanted = p("groupNameParam");
            let items: Vec<Value> = world
                .services
                .keys()
                .filter(|(g, _)| wanted.is_empty() || g.contains(&wanted))
                .map(|(g, s)| json!({"name": s, "groupName": g, "clusterCount": 1, "ipCount": 1, "healthyInstanceCount": 1, "triggerFlag": "false"}))
                .collect();
            v3_ok(
                json!({"totalCount": items.len(), "pageNumber": 1, "pagesAvailable": 1, "pageItems": items}),
            )
        }
        ("GET", "/nacos/v1/ns/catalog/instances") | ("GET", "/nacos/v3/admin/ns/instance/list") => {
            let fault = if world.broken.as_deref() == Some(service.1.as_str()) {
                Fault::Html
            } else {
                world.fault
            };
            match fault {
                Fault::Html => {
                    return (StatusCode::OK, [("content-type", "text/html")],
                        "<html><body><h1>Whitelabel Error Page</h1><p>This application has no explicit mapping for /error</p></body></html>").into_response();
                }
                Fault::CausedBy => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "caused by: java.lang.NullPointerException: cluster map is null;",
                    );
                }
                Fault::Truncated => {
                    return text(
                        StatusCode::OK,
                        "{\"list\":[{\"instanceId\":\"10.0.0.5#8080#DEFAULT#DEFAULT_GROUP@@order",
                    );
                }
                Fault::None | Fault::Down => {}
            }
            if !v3 && cluster.is_none() {
                return text(
                    StatusCode::BAD_REQUEST,
                    "caused by: Param 'clusterName' is required.",
                );
            }
            let Some(instances) = world.services.get(&service) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("caused by: service not found: {}@@{}", service.0, service.1),
                );
            };
            let list: Vec<Value> = instances
                .iter()
                .filter(|((_, _, c), _)| cluster.as_ref().is_none_or(|wanted| wanted == c))
                .map(|((ip, port, c), r)| world.render(&service, ip, *port, c, r, true))
                .collect();
            if v3 {
                v3_ok(json!(list))
            } else {
                json_ok(json!({"count": list.len(), "list": list}))
            }
        }
        ("GET", "/nacos/v1/ns/instance/list") => {
            let hosts: Vec<Value> = world
                .services
                .get(&service)
                .map(|instances| {
                    instances
                        .iter()
                        .filter(|((ip, port, c), r)| world.enabled_of(&service, ip, *port, c, r))
                        .map(|((ip, port, c), r)| world.render(&service, ip, *port, c, r, true))
                        .collect()
                })
                .unwrap_or_default();
            json_ok(
                json!({"name": format!("{}@@{}", service.0, service.1), "groupName": service.0, "clusters": "", "cacheMillis": 10000, "hosts": hosts, "lastRefTime": 1_700_000_000_000u64, "checksum": "", "allIPs": false, "reachProtectionThreshold": false, "valid": true}),
            )
        }
        ("GET", "/nacos/v1/ns/instance") | ("GET", "/nacos/v3/admin/ns/instance") => {
            let cluster = cluster.unwrap_or_else(|| "DEFAULT".into());
            let ip = p("ip");
            let port: u16 = p("port").parse().unwrap_or(0);
            let found = world
                .services
                .get(&service)
                .and_then(|instances| instances.get(&(ip.clone(), port, cluster.clone())));
            match found {
                // 2.x's v1 detail has no `enabled`; the v3 one is a whole Instance.
                Some(r) => {
                    let rendered = world.render(&service, &ip, port, &cluster, r, v3);
                    if v3 {
                        v3_ok(rendered)
                    } else {
                        json_ok(rendered)
                    }
                }
                None => missing_instance(&world, &service, &cluster, v3),
            }
        }
        ("PATCH", "/nacos/v1/ns/instance") | ("PUT", "/nacos/v3/admin/ns/instance/partial") => {
            let cluster = cluster.unwrap_or_else(|| "DEFAULT".into());
            let ip = p("ip");
            let port: u16 = p("port").parse().unwrap_or(0);
            let exists = world.services.get(&service).is_some_and(|instances| {
                instances.contains_key(&(ip.clone(), port, cluster.clone()))
            });
            if !exists {
                return missing_instance(&world, &service, &cluster, v3);
            }
            let layer = world
                .layers
                .entry(layer_key(&service, &ip, port, &cluster))
                .or_default();
            if let Some(enabled) = params.get("enabled").and_then(|v| v.parse().ok()) {
                layer.enabled = Some(enabled);
            }
            if let Some(weight) = params.get("weight").and_then(|v| v.parse().ok()) {
                layer.weight = Some(weight);
            }
            if v3 {
                v3_ok(json!("ok"))
            } else {
                text(StatusCode::OK, "ok")
            }
        }
        ("PUT", "/nacos/v1/ns/instance") => {
            // Full replace with the builder's defaults (protocol notes 3.3, gotcha 1).
            let cluster = cluster.unwrap_or_else(|| "DEFAULT".into());
            let ip = p("ip");
            let port: u16 = p("port").parse().unwrap_or(0);
            let layer = Layer {
                enabled: Some(
                    params
                        .get("enabled")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(true),
                ),
                weight: Some(
                    params
                        .get("weight")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1.0),
                ),
                metadata: BTreeMap::new(),
                orphaned_at: None,
            };
            world
                .layers
                .insert(layer_key(&service, &ip, port, &cluster), layer);
            text(StatusCode::OK, "ok")
        }
        _ => spring_error(StatusCode::NOT_FOUND, "No endpoint", &path),
    }
}

/// What 2.x's `getInstance0` throws for an instance it does not have (a `NOT_FOUND`
/// `NacosApiException`): "no ips found" when the service has none, "no matched ip found!"
/// otherwise; the v3 API wraps it in a `Result`.
fn missing_instance(
    world: &World,
    service: &(String, String),
    cluster: &str,
    v3: bool,
) -> Response {
    let empty = world.services.get(service).is_none_or(BTreeMap::is_empty);
    let message = if empty {
        format!(
            "no ips found for cluster {cluster} in service {}@@{}",
            service.0, service.1
        )
    } else {
        "no matched ip found!".to_owned()
    };
    if v3 {
        (
            StatusCode::NOT_FOUND,
            [("content-type", "application/json")],
            json!({"code": 20004, "message": message, "data": null}).to_string(),
        )
            .into_response()
    } else {
        text(StatusCode::NOT_FOUND, format!("caused by: {message}"))
    }
}

fn json_ok(value: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn ulid_like(n: usize) -> String {
    format!("{:016x}", (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}
