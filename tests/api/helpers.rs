//! Starting the real application on 127.0.0.1:0 against doubles, and talking to it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use synchspeed::config::Settings;
use synchspeed::startup::Application;
use tempfile::TempDir;

/// What a test configures; everything else is a test-friendly default (fast refresh, short
/// gateway timeouts and backoff so retries do not slow the suite).
#[derive(Clone)]
pub struct TestConfig {
    pub listen: String,
    pub eureka_urls: Vec<String>,
    /// app → groups
    pub routes: Vec<(&'static str, Vec<&'static str>)>,
    /// group → static nodes
    pub static_nodes: Vec<(&'static str, Vec<String>)>,
    /// The whole `[security]` table body.
    pub security: String,
    /// Extra lines for `[gateway]`.
    pub gateway: String,
    /// Extra lines for `[drain]`.
    pub drain: String,
    /// Extra lines for `[server]`.
    pub server: String,
    /// Replaces the `[registry]` section (the file registry).
    pub registry: Option<String>,
    /// Whole tables appended at the end (`[gateway.haproxy]`, `[gateway.group_notifiers]`).
    pub tables: String,
    /// `groups.source`, as TOML.
    pub groups_source: String,
    /// Extra lines for `[store]`.
    pub store: String,
    /// `store.url` when not the test's own SQLite file (a PostgreSQL database).
    pub store_url: Option<String>,
    /// Whole `[cluster]` table body.
    pub cluster: String,
}

impl TestConfig {
    pub fn eureka(urls: &[String]) -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            eureka_urls: urls.to_vec(),
            routes: vec![],
            static_nodes: vec![],
            security: "allow = [\"127.0.0.0/8\", \"::1/128\"]".into(),
            gateway: String::new(),
            drain: String::new(),
            server: String::new(),
            registry: None,
            tables: String::new(),
            groups_source: "\"static\"".into(),
            store: String::new(),
            store_url: None,
            cluster: String::new(),
        }
    }

    /// The `file` registry kind, reading `path`.
    pub fn file(path: &std::path::Path) -> Self {
        let mut config = Self::eureka(&[]);
        config.registry = Some(format!(
            "[registry]\nkind = \"file\"\n[registry.file]\npath = \"{}\"\nrefresh = \"100ms\"\n",
            path.display()
        ));
        config
    }

    pub fn route(mut self, app: &'static str, groups: &[&'static str]) -> Self {
        self.routes.push((app, groups.to_vec()));
        self
    }

    pub fn nodes(mut self, group: &'static str, nodes: Vec<String>) -> Self {
        self.static_nodes.push((group, nodes));
        self
    }

    pub fn security(mut self, body: &str) -> Self {
        self.security = body.into();
        self
    }

    pub fn gateway(mut self, lines: &str) -> Self {
        self.gateway = lines.into();
        self
    }

    /// The Eureka peers' settings, replacing the test defaults (100 ms refresh, 1 s timeout).
    pub fn eureka_settings(mut self, refresh: &str, timeout: &str) -> Self {
        let urls: Vec<String> = self
            .eureka_urls
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect();
        self.registry = Some(format!(
            "[registry]\nkind = \"eureka\"\n[registry.eureka]\nurls = [{}]\nrefresh = \"{refresh}\"\ntimeout = \"{timeout}\"\n",
            urls.join(", ")
        ));
        self
    }

    pub fn store(mut self, lines: &str) -> Self {
        self.store = lines.into();
        self
    }

    /// The store on a PostgreSQL database (`StoreDb::url`) instead of a SQLite file.
    pub fn postgres(mut self, url: &str) -> Self {
        self.store_url = Some(url.into());
        self
    }

    /// The `[cluster]` table's lines (a short lease, a replica's name).
    pub fn cluster(mut self, lines: &str) -> Self {
        self.cluster = lines.into();
        self
    }

    pub fn drain(mut self, lines: &str) -> Self {
        self.drain = lines.into();
        self
    }

    /// Appends whole TOML tables.
    pub fn tables(mut self, text: &str) -> Self {
        self.tables.push_str(text);
        self.tables.push('\n');
        self
    }

    /// Gateway groups from a route table: `source` (`"sql"` or `["static", "sql"]`) and the
    /// `[groups.sql]` table's lines.
    pub fn groups_sql(mut self, source: &str, lines: &str) -> Self {
        self.groups_source = source.into();
        self.tables(&format!("[groups.sql]\n{lines}"))
    }

    pub fn server(mut self, lines: &str) -> Self {
        self.server = lines.into();
        self
    }

    fn to_toml(&self, store: &std::path::Path) -> String {
        let list = |items: &[String]| {
            items
                .iter()
                .map(|i| format!("\"{i}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let registry = self.registry.clone().unwrap_or_else(|| {
            format!(
                "[registry]\nkind = \"eureka\"\n[registry.eureka]\nurls = [{}]\nrefresh = \"100ms\"\ntimeout = \"1s\"\n",
                list(&self.eureka_urls)
            )
        });
        // The per-attempt timeout is the production default: shorter, a node starved of CPU
        // on a busy machine answers after it and is told again (the protocol allows it, the
        // tests that count notifications do not).
        let gateway = merge_lines(
            "timeout = \"2s\"\nattempts = 3\nbackoff = \"10ms\"\nbackoff_max = \"40ms\"",
            &self.gateway,
        );
        let server = merge_lines(
            &format!("listen = \"{}\"\nshutdown_grace = \"2s\"", self.listen),
            &self.server,
        );
        let mut toml = format!(
            "[server]\n{}\n\n[security]\n{}\n\n{}\n\
             [gateway]\n{}\n\n\
             [drain]\n{}\n\n[store]\nurl = \"{}\"\n{}\n\n[cluster]\n{}\n\n[groups]\nsource = {}\n[groups.static]\n",
            server,
            self.security,
            registry,
            gateway,
            self.drain,
            self.store_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", store.display())),
            self.store,
            self.cluster,
            self.groups_source,
        );
        for (app, groups) in &self.routes {
            let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            toml.push_str(&format!("\"{app}\" = [{}]\n", list(&groups)));
        }
        toml.push_str("\n[gateway.nodes]\n");
        for (group, nodes) in &self.static_nodes {
            toml.push_str(&format!("\"{group}\" = [{}]\n", list(nodes)));
        }
        toml.push('\n');
        toml.push_str(&self.tables);
        toml
    }
}

/// `defaults` with the lines of `overrides` in place of those with the same key (TOML refuses
/// a key twice), then the rest of `overrides`.
pub fn merge_lines(defaults: &str, overrides: &str) -> String {
    let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_owned();
    let overridden: Vec<String> = overrides.lines().map(key).collect();
    defaults
        .lines()
        .filter(|line| !overridden.contains(&key(line)))
        .chain(overrides.lines())
        .collect::<Vec<_>>()
        .join("\n")
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    app: Option<Application>,
    /// The binary as a process of its own, for kills and signals.
    process: Option<Process>,
    config: TestConfig,
    /// Kept across restarts: the store lives here.
    dir: Arc<TempDir>,
}

impl TestApp {
    /// Starts the app and waits until its registry cache is loaded.
    pub async fn spawn(config: TestConfig) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::spawn_in(config, dir, true).await
    }

    /// Starts the app without waiting for readiness (registry down on purpose).
    pub async fn spawn_unready(config: TestConfig) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::spawn_in(config, dir, false).await
    }

    /// The settings `config` makes with its store at `store`.
    pub fn settings_with_store(config: &TestConfig, store: &std::path::Path) -> Settings {
        Settings::from_toml(&config.to_toml(store)).expect("test config is valid")
    }

    /// What the start says when it refuses `config` (the app must not start).
    pub async fn start_error(config: TestConfig) -> String {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("synchspeed.db");
        let settings = Settings::from_toml(&config.to_toml(&store)).expect("test config is valid");
        match Application::build(settings).await {
            Ok(_) => panic!("the app started"),
            Err(error) => format!("{error:#}"),
        }
    }

    async fn spawn_in(config: TestConfig, dir: Arc<TempDir>, wait_ready: bool) -> Self {
        let store = dir.path().join("synchspeed.db");
        let settings = Settings::from_toml(&config.to_toml(&store)).expect("test config is valid");
        let app = Application::build(settings).await.expect("the app starts");
        let mut local = app.local_addr();
        if local.ip().is_unspecified() {
            local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let address = format!("http://{local}");
        let test_app = Self {
            address,
            client: client(),
            app: Some(app),
            process: None,
            config,
            dir,
        };
        if wait_ready {
            test_app.wait_ready().await;
        }
        test_app
    }

    /// Starts the release binary as a process of its own and waits until it is ready.
    pub async fn spawn_process(config: TestConfig) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::spawn_process_in(config, dir).await
    }

    async fn spawn_process_in(config: TestConfig, dir: Arc<TempDir>) -> Self {
        let store = dir.path().join("synchspeed.db");
        let path = dir.path().join("synchspeed.toml");
        std::fs::write(&path, config.to_toml(&store)).unwrap();
        // Reading its log until it serves blocks: off the test's runtime, where the doubles
        // it talks to run.
        let process = tokio::task::spawn_blocking(move || Process::start(&path))
            .await
            .unwrap();
        let test_app = Self {
            address: format!("http://{}", process.listen),
            client: client(),
            app: None,
            process: Some(process),
            config,
            dir,
        };
        test_app.wait_ready().await;
        test_app
    }

    /// `kill -9`, then a new process on the same store.
    pub async fn kill_and_restart(mut self) -> Self {
        let mut process = self.process.take().expect("a process app");
        process.child.kill().unwrap();
        process.child.wait().unwrap();
        Self::spawn_process_in(self.config.clone(), Arc::clone(&self.dir)).await
    }

    /// `kill -9`, and waits for the process to be gone.
    pub fn kill(&mut self) {
        let process = self.process.as_mut().expect("a process app");
        process.child.kill().unwrap();
        process.child.wait().unwrap();
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let process = self.process.as_ref().expect("a process app");
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &process.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM; returns at once (the process may take its grace period).
    pub fn terminate(&self) {
        let process = self.process.as_ref().expect("a process app");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &process.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (polling, 15 s at most) for the process to exit and returns its status.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        let process = self.process.as_mut().expect("a process app");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = process.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the process did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A new process on the same store, after the previous one exited.
    pub async fn start_again(mut self) -> Self {
        self.process.take();
        Self::spawn_process_in(self.config.clone(), Arc::clone(&self.dir)).await
    }

    /// What the process logged so far (JSON lines).
    pub fn logs(&self) -> Vec<String> {
        let process = self.process.as_ref().expect("a process app");
        process.logs.lock().unwrap().clone()
    }

    pub fn port(&self) -> u16 {
        self.address.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub async fn wait_ready(&self) {
        eventually("the app becomes ready", || async {
            self.get("/readyz").await.status() == 200
        })
        .await;
    }

    /// Stops gracefully and starts again on the same store.
    pub async fn restart(mut self) -> Self {
        self.app.take().unwrap().stop().await.unwrap();
        Self::spawn_in(self.config.clone(), Arc::clone(&self.dir), true).await
    }

    /// A connection of the test's own to the app's SQLite store.
    pub async fn store_connection(&self) -> sqlx::SqliteConnection {
        use sqlx::Connection;
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(self.dir.path().join("synchspeed.db"));
        sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// A GET whose body is JSON, parsed.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.unwrap()
    }

    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.client.post(self.url(path)).send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A counter of `/metrics` by its whole series (`synchspeed_x_total{why="y"}`); 0 when
    /// it was never counted.
    pub async fn counter(&self, series: &str) -> u64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }

    pub async fn operation(&self, id: &str) -> Value {
        let response = self.get(&format!("/api/v1/operations/{id}")).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Polls an operation until it leaves `in_progress`.
    pub async fn settled(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let operation = self.operation(id).await;
            if operation["state"] != "in_progress" {
                return operation;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "operation {id} never settled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The binary running as a child process, its JSON log collected by a thread.
struct Process {
    child: std::process::Child,
    listen: String,
    logs: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Process {
    fn start(config: &std::path::Path) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_synchspeed"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("SYNCHSPEED__LOG__FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut listen = None;
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        for line in lines.by_ref() {
            let line = line.unwrap();
            logs.lock().unwrap().push(line.clone());
            let event: Value = serde_json::from_str(&line).unwrap_or_default();
            if event["message"] == "synchspeed serving" {
                listen = event["listen"].as_str().map(str::to_owned);
                break;
            }
        }
        let listen = listen.unwrap_or_else(|| {
            panic!(
                "the process never logged that it serves: {:?}",
                logs.lock().unwrap()
            )
        });
        // Keeps reading, so a full pipe never blocks the process.
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            listen,
            logs,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it holds, for at most 15 s: a generous deadline, never a fixed sleep.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, Duration::from_secs(15), check).await;
}

/// `eventually` with a deadline of its own (a JVM starting on a busy machine).
pub async fn eventually_within<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node addresses of an operation, sorted.
pub fn node_addresses(operation: &Value) -> Vec<String> {
    let mut nodes: Vec<String> = operation["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap().to_owned())
        .collect();
    nodes.sort();
    nodes
}

/// The error code of an error body.
pub async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
