//! A real Nacos-compatible server per test: `rnacos` (crates.io, installed by the test command
//! into `~/.cache/synchspeed/rnacos`), on free loopback ports with its own data directory;
//! and applications registered the way Spring Cloud Alibaba registers them, over gRPC with
//! the Nacos SDK.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use nacos_sdk::api::naming::{NamingService, NamingServiceBuilder, ServiceInstance};
use nacos_sdk::api::props::ClientProps;
use serde_json::Value;
use tempfile::TempDir;

/// Where the test command installs rnacos; `RNACOS_BIN` names another.
fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("RNACOS_BIN") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/synchspeed/rnacos/bin/rnacos")
}

/// A port free now, and the one 1,000 above it (the SDKs' gRPC port) free too.
fn port_pair() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 64_000 && TcpListener::bind(("127.0.0.1", port + 1000)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` until it holds, for at most `limit` (the tests' `eventually`, here too so
/// that the benchmark can start rnacos with this module alone).
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether rnacos is installed where the test command puts it.
pub fn installed() -> bool {
    binary().is_file()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Rnacos {
    child: Option<Child>,
    _dir: TempDir,
    pub port: u16,
    http: reqwest::Client,
    auth: Option<(String, String)>,
}

impl Rnacos {
    pub async fn start() -> Self {
        Self::launch(None).await
    }

    /// With its open API behind a login as `username`/`password`.
    pub async fn start_with_auth(username: &str, password: &str) -> Self {
        Self::launch(Some((username.into(), password.into()))).await
    }

    /// Starts a server, and starts it again (at most ten times) when it came up broken:
    /// rnacos 0.8.8 has a start-up race in its Raft store (a panic in `raftapply.rs`, an
    /// `unwrap` on a manager not set yet), after which every write through Raft answers
    /// `Mailbox has closed` (the admin account is never created, a login never works).
    async fn launch(auth: Option<(String, String)>) -> Self {
        // Seen here: two starts in six came up broken on a busy machine.
        for _ in 0..10 {
            if let Some(server) = Self::try_launch(auth.clone()).await {
                return server;
            }
        }
        panic!("rnacos came up broken ten times in a row (its log says why)");
    }

    async fn try_launch(auth: Option<(String, String)>) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let port = port_pair();
        let grpc = port + 1000;
        let log = std::fs::File::create(dir.path().join("rnacos.log")).unwrap();
        let mut command = Command::new(binary());
        command
            .env("RNACOS_HTTP_PORT", port.to_string())
            .env("RNACOS_GRPC_PORT", grpc.to_string())
            .env("RNACOS_HTTP_CONSOLE_PORT", free_port().to_string())
            .env("RNACOS_SDK_HOST", "127.0.0.1")
            .env("RNACOS_CONSOLE_HOST", "127.0.0.1")
            .env("RNACOS_DATA_DIR", dir.path().join("data"))
            .env("RNACOS_RAFT_NODE_ADDR", format!("127.0.0.1:{grpc}"))
            .current_dir(dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some((username, password)) = &auth {
            command
                .env("RNACOS_ENABLE_OPEN_API_AUTH", "true")
                .env("RNACOS_INIT_ADMIN_USERNAME", username)
                .env("RNACOS_INIT_ADMIN_PASSWORD", password);
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "rnacos runs from {} ({e}); scripts/test installs it with cargo install rnacos --locked --root ~/.cache/synchspeed/rnacos",
                binary().display()
            )
        });
        let server = Self {
            child: Some(child),
            _dir: dir,
            port,
            http: reqwest::Client::new(),
            auth,
        };
        let base = server.base();
        wait_until("rnacos answers", Duration::from_secs(60), || {
            let url = format!("{base}/v1/ns/service/list?pageNo=1&pageSize=1");
            let http = server.http.clone();
            async move {
                http.get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() < 500)
            }
        })
        .await;
        if server.auth.is_some() {
            // The admin account is created a moment after the server answers; an SDK that
            // logs in before would wait 30 s for its next try.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while server.token().await.is_none() {
                if tokio::time::Instant::now() > deadline || server.came_up_broken() {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The race shows within the first moments: a server that answered has passed it
        // unless its log already says otherwise.
        tokio::time::sleep(Duration::from_millis(200)).await;
        (!server.came_up_broken()).then_some(server)
    }

    fn came_up_broken(&self) -> bool {
        std::fs::read_to_string(self._dir.path().join("rnacos.log"))
            .is_ok_and(|log| log.contains("panicked"))
    }

    /// `http://127.0.0.1:PORT/nacos`, as `registry.nacos.servers` takes it.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}/nacos", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn token(&self) -> Option<String> {
        let (username, password) = self.auth.as_ref()?;
        let login: Value = self
            .http
            .post(format!("{}/v1/auth/login", self.base()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("username={username}&password={password}"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        login["accessToken"].as_str().map(str::to_owned)
    }

    /// One instance as rnacos shows it by itself (with `enabled`, weight and metadata).
    pub async fn instance(&self, service: &str, ip: &str, port: u16) -> Value {
        let mut request = self
            .http
            .get(format!("{}/v1/ns/instance", self.base()))
            .query(&[
                ("serviceName", service),
                ("groupName", "DEFAULT_GROUP"),
                ("clusterName", "DEFAULT"),
                ("ip", ip),
                ("port", &port.to_string()),
            ]);
        if let Some(token) = self.token().await {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "rnacos has {service} {ip}:{port}");
        response.json().await.unwrap()
    }

    /// Registers an instance the way a 1.x client does after its heartbeat found it expired
    /// (an HTTP POST with `enabled=true`).
    pub async fn register_over_http(&self, service: &str, ip: &str, port: u16) {
        let response = self
            .http
            .post(format!("{}/v1/ns/instance", self.base()))
            .query(&[
                ("serviceName", service),
                ("groupName", "DEFAULT_GROUP"),
                ("ip", ip),
                ("port", &port.to_string()),
                ("ephemeral", "true"),
                ("enabled", "true"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    /// An SDK client connected to this server: an application process, or a consumer.
    pub async fn sdk(&self) -> NamingService {
        let mut props = ClientProps::new()
            .server_addr(format!("127.0.0.1:{}", self.port))
            .remote_grpc_port(self.port + 1000)
            .namespace("")
            .app_name("synchspeed-test")
            .env_first(false)
            .cache_dir(self._dir.path().join("sdk-cache"));
        let mut auth = false;
        if let Some((username, password)) = &self.auth {
            props = props
                .auth_username(username.clone())
                .auth_password(password.clone());
            auth = true;
        }
        let mut builder = NamingServiceBuilder::new(props);
        if auth {
            builder = builder.enable_auth_plugin_http();
        }
        builder
            .build()
            .await
            .expect("the Nacos SDK connects to rnacos")
    }
}

impl Drop for Rnacos {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An instance as Spring Cloud Alibaba registers it.
pub fn spring_instance(ip: &str, port: u16, weight: f64) -> ServiceInstance {
    ServiceInstance {
        instance_id: None,
        ip: ip.into(),
        port: i32::from(port),
        weight,
        healthy: true,
        enabled: true,
        ephemeral: true,
        cluster_name: Some("DEFAULT".into()),
        service_name: None,
        metadata: HashMap::from([
            ("preserved.register.source".into(), "SPRING_CLOUD".into()),
            ("version".into(), "1.4.2".into()),
        ]),
    }
}

/// An application registered over gRPC, as a Spring Cloud Alibaba process does at start.
pub struct App {
    pub naming: Arc<NamingService>,
    pub service: String,
    pub instance: ServiceInstance,
}

impl App {
    pub async fn register(server: &Rnacos, service: &str, instance: ServiceInstance) -> Self {
        let naming = Arc::new(server.sdk().await);
        register_one(&naming, service, &instance).await;
        Self {
            naming,
            service: service.into(),
            instance,
        }
    }

    /// The process stops (Spring Cloud Alibaba deregisters on a graceful shutdown).
    pub async fn deregister(&self) {
        self.naming
            .deregister_instance(
                self.service.clone(),
                Some("DEFAULT_GROUP".into()),
                self.instance.clone(),
            )
            .await
            .expect("the SDK deregisters the instance");
    }
}

/// Registers `instance` in `service`. The SDK logs in in the background: until it has, a
/// server with auth refuses it, so it is tried until it is taken.
async fn register_one(naming: &Arc<NamingService>, service: &str, instance: &ServiceInstance) {
    wait_until(
        "the SDK registers the instance",
        Duration::from_secs(30),
        || {
            let naming = Arc::clone(naming);
            let instance = instance.clone();
            async move {
                naming
                    .register_instance(service.into(), Some("DEFAULT_GROUP".into()), instance)
                    .await
                    .is_ok()
            }
        },
    )
    .await;
}

/// One SDK client registering an instance in each of many services (one process serving
/// several, or a fleet's worth for a benchmark).
pub async fn register_many(
    server: &Rnacos,
    services: &[(String, ServiceInstance)],
) -> Arc<NamingService> {
    use futures::StreamExt;
    let naming = Arc::new(server.sdk().await);
    // A registration is a round trip of some 40 ms: sixteen at a time.
    futures::stream::iter(services.iter().map(|(service, instance)| {
        let naming = Arc::clone(&naming);
        async move { register_one(&naming, service, instance).await }
    }))
    .buffer_unordered(16)
    .collect::<Vec<()>>()
    .await;
    naming
}

/// What a subscribed consumer would route to: the SDK's `selectInstances(healthy=true)`.
pub async fn consumer_sees(consumer: &NamingService, service: &str) -> Vec<String> {
    let mut seen: Vec<String> = consumer
        .select_instances(
            service.into(),
            Some("DEFAULT_GROUP".into()),
            Vec::new(),
            true,
            true,
        )
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.enabled && i.healthy && i.weight > 0.0)
        .map(|i| format!("{}:{}", i.ip, i.port))
        .collect();
    seen.sort();
    seen
}
