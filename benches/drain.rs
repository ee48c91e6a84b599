//! One room past 500 lines: one benchmark run, its doubles and its report belong together.
//!
//! `cargo bench --bench drain`: how long an offline takes, side by side with the physical
//! floor (one registry round trip, then every node concurrently on a warm pool) and with the
//! sequential script it replaces; where the service spends an operation's time (its own
//! step histograms); a mass drain; read throughput; memory.
//!
//! The release binary runs as its own process on loopback, against the Eureka double and
//! in-process gateway nodes that acknowledge at once (the same doubles the tests use). Prints
//! a table and writes `target/bench/drain.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/eureka.rs"]
#[allow(dead_code)]
mod eureka;
#[path = "../tests/support/gateway.rs"]
#[allow(dead_code)]
mod gateway;
#[path = "../tests/support/nacos_double.rs"]
#[allow(dead_code)]
mod nacos_double;
#[path = "../tests/support/rnacos.rs"]
#[allow(dead_code)]
mod rnacos;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eureka::EurekaDouble;
use futures::future::join_all;
use gateway::{Behaviour, GatewayNode};
use serde_json::{Value, json};
use synchspeed::telemetry::Step;

const NODE_COUNTS: [usize; 3] = [1, 10, 100];
const WARMUP: usize = 30;
const SAMPLES: usize = 300;
const READ_INSTANCES: usize = 10_000;
const MASS_INSTANCES: usize = 1_000;
const MASS_NODES: usize = 20;
const READ_SECONDS: u64 = 3;
const READ_CLIENTS: usize = 32;
const SEQUENTIAL_RUNS: usize = 10;
/// Samples in a row before the service and the floor swap (`SAMPLES` is a multiple of it).
const BLOCK: usize = 30;
/// The run measured beside the floor, and the instance the floor drains.
const FLOOR_NODES: usize = 100;
const FLOOR_ID: &str = "10.50.0.201:floor:8080";
const FLOOR_IP: &str = "10.50.0.201";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

struct Service {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Service {
    fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (percentile(&samples, 0.50), percentile(&samples, 0.99))
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `[groups]` routing each app to its group in config.
fn static_groups(groups: &[(String, String)]) -> String {
    let mut routes = String::from("[groups]\nsource = \"static\"\n[groups.static]\n");
    for (app, group) in groups {
        routes.push_str(&format!("\"{app}\" = [\"{group}\"]\n"));
    }
    routes
}

async fn start_service(eureka: &EurekaDouble, routes: &str) -> Service {
    start_service_on(eureka, routes, None, "").await
}

/// A service whose store is `store_url` (its own SQLite file when `None`), with `extra`
/// tables appended.
async fn start_service_on(
    eureka: &EurekaDouble,
    routes: &str,
    store_url: Option<&str>,
    extra: &str,
) -> Service {
    let registry = format!(
        "[registry]\nkind = \"eureka\"\n[registry.eureka]\nurls = [\"{}\"]\nrefresh = \"1s\"\n",
        eureka.url()
    );
    start_service_with(&registry, routes, store_url, extra).await
}

/// A service on the registry `registry` (its whole `[registry]` table).
async fn start_service_with(
    registry: &str,
    routes: &str,
    store_url: Option<&str>,
    extra: &str,
) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let store = store_url.map_or_else(
        || format!("sqlite://{}/bench.db", dir.path().display()),
        str::to_owned,
    );
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nbody_limit = 1048576\n[log]\nlevel = \"warn\"\n\
         [security]\nallow = [\"127.0.0.0/8\"]\n{registry}\
         [gateway]\ntimeout = \"2s\"\n[drain]\nmax_in_flight = 4096\n\
         wait_timeout_max = \"5m\"\n[store]\nurl = \"{store}\"\n{routes}\n{extra}",
    );
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_synchspeed"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the release binary starts");
    let service = Service {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{}/readyz", service.base)).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Each step's total seconds and count so far, from the service's own histograms.
async fn step_totals(service: &Service) -> Vec<(f64, f64)> {
    let text = client()
        .get(format!("{}/metrics", service.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str, step: &str| -> f64 {
        let prefix =
            format!("synchspeed_operation_step_duration_seconds_{series}{{step=\"{step}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{prefix} in /metrics"))
            .parse()
            .unwrap()
    };
    Step::ALL
        .iter()
        .map(|step| (value("sum", step.label()), value("count", step.label())))
        .collect()
}

/// The mean milliseconds per operation of each step between two readings.
fn step_means(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|((sum0, n0), (sum1, n1))| (sum1 - sum0) / (n1 - n0).max(1.0) * 1000.0)
        .collect()
}

/// One offline through the service with wait=true, timed to its 200; an untimed online puts
/// the instance back for the next one.
struct ServiceDrain {
    client: reqwest::Client,
    offline: String,
    online: String,
}

impl ServiceDrain {
    fn new(service: &Service, ip: &str) -> Self {
        Self {
            client: client(),
            offline: format!("{}/api/v1/instances/{ip}/offline?wait=true", service.base),
            online: format!("{}/api/v1/instances/{ip}/online?wait=true", service.base),
        }
    }

    async fn once(&self) -> f64 {
        let started = Instant::now();
        let response = self.client.post(&self.offline).send().await.unwrap();
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(
            response.status(),
            200,
            "{}",
            response.text().await.unwrap_or_default()
        );
        let online = self.client.post(&self.online).send().await.unwrap();
        assert_eq!(online.status(), 200);
        elapsed
    }
}

/// The same work done directly: the registry PUT, then every node concurrently on a warm
/// keep-alive pool. Nothing can be faster without skipping a step. An untimed DELETE puts
/// the status back.
struct FloorDrain {
    client: reqwest::Client,
    put: String,
    delete: String,
    body: Vec<u8>,
    urls: Vec<String>,
}

impl FloorDrain {
    fn new(eureka: &EurekaDouble, app: &str, id: &str, ip: &str, nodes: &[GatewayNode]) -> Self {
        let body = json!({"operationId": "op_floor", "event": "offline", "app": app,
            "instances": [{"instanceId": id, "ip": ip, "port": 8080}],
            "issuedAt": "2026-11-22T10:00:00.000Z"});
        Self {
            client: client(),
            put: format!(
                "{}/apps/{app}/{id}/status?value=OUT_OF_SERVICE",
                eureka.url()
            ),
            delete: format!("{}/apps/{app}/{id}/status?value=UP", eureka.url()),
            body: serde_json::to_vec(&body).unwrap(),
            urls: nodes
                .iter()
                .map(|n| format!("http://{}/synchspeed/v1/notify", n.address()))
                .collect(),
        }
    }

    async fn once(&self) -> f64 {
        let started = Instant::now();
        let put = self.client.put(&self.put).send().await.unwrap();
        assert_eq!(put.status(), 200);
        let answers = join_all(self.urls.iter().map(|url| {
            self.client
                .post(url)
                .header("content-type", "application/json")
                .header("x-synchspeed-event", "offline")
                .body(self.body.clone())
                .send()
        }))
        .await;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        assert!(
            answers
                .into_iter()
                .all(|a| a.unwrap().status().is_success())
        );
        self.client.delete(&self.delete).send().await.unwrap();
        elapsed
    }
}

/// The service's offline latency alone: p50 and p99 after the warm-up.
async fn latency(drain: &ServiceDrain) -> (f64, f64) {
    for _ in 0..WARMUP {
        drain.once().await;
    }
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        samples.push(drain.once().await);
    }
    summary(samples)
}

/// The service and the floor take turns in blocks of `BLOCK` samples, so that both are
/// measured while the machine is in the same state: on a shared machine its speed drifts
/// over minutes, and a floor measured after the service was often measured on another
/// machine, in effect. Each block starts with one untimed operation, so neither side pays
/// for what the other left running (the service journals a settle after answering).
async fn latency_beside_floor(
    drain: &ServiceDrain,
    floor: &FloorDrain,
) -> ((f64, f64), (f64, f64)) {
    for _ in 0..WARMUP {
        drain.once().await;
        floor.once().await;
    }
    let (mut service, mut direct) = (Vec::with_capacity(SAMPLES), Vec::with_capacity(SAMPLES));
    while service.len() < SAMPLES {
        drain.once().await;
        for _ in 0..BLOCK {
            service.push(drain.once().await);
        }
        floor.once().await;
        for _ in 0..BLOCK {
            direct.push(floor.once().await);
        }
    }
    (summary(service), summary(direct))
}

/// What a deploy script with curl does today: one request after another, a new connection
/// each time.
async fn sequential(
    eureka: &EurekaDouble,
    app: &str,
    id: &str,
    ip: &str,
    nodes: &[GatewayNode],
) -> f64 {
    let body = serde_json::to_vec(&json!({"operationId": "op_seq", "event": "offline", "app": app,
        "instances": [{"instanceId": id, "ip": ip, "port": 8080}], "issuedAt": "2026-11-22T10:00:00.000Z"}))
    .unwrap();
    let mut total = 0.0;
    for _ in 0..SEQUENTIAL_RUNS {
        let started = Instant::now();
        let fresh = || {
            reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap()
        };
        fresh()
            .put(format!(
                "{}/apps/{app}/{id}/status?value=OUT_OF_SERVICE",
                eureka.url()
            ))
            .send()
            .await
            .unwrap();
        for node in nodes {
            let response = fresh()
                .post(format!("http://{}/synchspeed/v1/notify", node.address()))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
        }
        total += started.elapsed().as_secs_f64() * 1000.0;
        reqwest::Client::new()
            .delete(format!("{}/apps/{app}/{id}/status?value=UP", eureka.url()))
            .send()
            .await
            .unwrap();
    }
    total / SEQUENTIAL_RUNS as f64
}

/// 1,000 instances in one batch through 20 nodes, until every node acknowledged every one.
async fn mass(service: &Service, nodes: &[GatewayNode]) -> f64 {
    let targets: Vec<Value> = (0..MASS_INSTANCES)
        .map(|i| json!({"ip": mass_ip(i)}))
        .collect();
    let started = Instant::now();
    let response = client()
        .post(format!("{}/api/v1/operations", service.base))
        .json(&json!({"action": "offline", "targets": targets, "wait": true, "timeout": "120s"}))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());
    for node in nodes {
        let acked: usize = node
            .received()
            .iter()
            .map(|r| r.body["instances"].as_array().map_or(0, Vec::len))
            .sum();
        assert_eq!(
            acked,
            MASS_INSTANCES,
            "node {} acknowledged every instance",
            node.address()
        );
    }
    elapsed
}

fn mass_ip(i: usize) -> String {
    format!("10.200.{}.{}", i / 250, i % 250 + 1)
}

fn read_ip(i: usize) -> String {
    format!("10.100.{}.{}", i / 250, i % 250 + 1)
}

/// GET /api/v1/instances/{ip} from concurrent clients for a fixed time.
async fn read_rps(service: &Service) -> f64 {
    let client = client();
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(READ_SECONDS);
    let started = Instant::now();
    let workers = (0..READ_CLIENTS).map(|w| {
        let client = client.clone();
        let done = Arc::clone(&done);
        let base = service.base.clone();
        tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < deadline {
                let url = format!("{base}/api/v1/instances/{}", read_ip(i % READ_INSTANCES));
                let response = client.get(url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
                i += READ_CLIENTS;
            }
        })
    });
    join_all(workers).await;
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// The 100-node run again, its gateway groups read from a PostgreSQL route table holding the
/// same mapping: the plan step must not notice (the mapping is cached off the latency path).
/// Why not, when it could not run (no PostgreSQL on 127.0.0.1:5432).
async fn sql_groups_run(
    eureka: &EurekaDouble,
    groups: &[(String, String)],
) -> Result<(f64, f64, Vec<f64>), String> {
    use sqlx::{AssertSqlSafe, Connection};
    let failed = |what: &str, e: sqlx::Error| format!("{what}: {e}");
    let (conn, url, name) = bench_database("groups").await?;
    let mut table = sqlx::PgConnection::connect(&url)
        .await
        .map_err(|e| failed("connecting to the bench's database", e))?;
    let mut fill = String::from("CREATE TABLE gw_route (service_id TEXT, gateway_group TEXT);");
    for (app, group) in groups {
        fill.push_str(&format!(
            "INSERT INTO gw_route VALUES ('{app}', '{group}');"
        ));
    }
    sqlx::raw_sql(AssertSqlSafe(fill))
        .execute(&mut table)
        .await
        .map_err(|e| failed("filling the route table", e))?;
    drop(table);
    let routes = format!(
        "[groups]\nsource = \"sql\"\n[groups.sql]\nurl = \"{url}\"\n\
         query = \"SELECT gateway_group FROM gw_route WHERE upper(service_id) = $1\"\n\
         all_query = \"SELECT service_id, gateway_group FROM gw_route\"\n"
    );
    let service = start_service(eureka, &routes).await;
    let drain = ServiceDrain::new(&service, &format!("10.50.0.{FLOOR_NODES}"));
    let before = step_totals(&service).await;
    let (p50, p99) = latency(&drain).await;
    let steps = step_means(&before, &step_totals(&service).await);
    drop(service);
    drop_database(conn, &name).await;
    Ok((p50, p99, steps))
}

/// A database of the bench's own on the machine's PostgreSQL, created afresh.
async fn bench_database(purpose: &str) -> Result<(sqlx::PgConnection, String, String), String> {
    use sqlx::{AssertSqlSafe, Connection};
    let admin = "postgres://postgres@127.0.0.1:5432";
    let mut conn = sqlx::PgConnection::connect(&format!("{admin}/postgres"))
        .await
        .map_err(|e| format!("no PostgreSQL on 127.0.0.1:5432: {e}"))?;
    let name = format!("synchspeed_bench_{purpose}_{}", std::process::id());
    // One statement each: CREATE DATABASE cannot run inside the implicit transaction of a
    // multi-statement query.
    for statement in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("creating the bench's database: {e}"))?;
    }
    Ok((conn, format!("{admin}/{name}"), name))
}

async fn drop_database(mut conn: sqlx::PgConnection, name: &str) {
    let statement = sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    let _ = sqlx::raw_sql(statement).execute(&mut conn).await;
}

/// The store on PostgreSQL: the 100-node offline beside the floor, in turns, as on SQLite.
async fn postgres_store_run(
    eureka: &EurekaDouble,
    groups: &[(String, String)],
    floor: &FloorDrain,
) -> Result<(((f64, f64), (f64, f64)), Vec<f64>), String> {
    let (conn, url, name) = bench_database("store").await?;
    let service = start_service_on(eureka, &static_groups(groups), Some(&url), "").await;
    let drain = ServiceDrain::new(&service, &format!("10.50.0.{FLOOR_NODES}"));
    let before = step_totals(&service).await;
    let measured = latency_beside_floor(&drain, floor).await;
    let steps = step_means(&before, &step_totals(&service).await);
    drop(service);
    drop_database(conn, &name).await;
    Ok((measured, steps))
}

/// The 1-node offline with the registry on rnacos (a real Nacos-compatible server, the
/// instance registered over gRPC by the SDK), for its registry step beside Eureka's. Why
/// not, when it could not run (rnacos not installed).
async fn nacos_run(node: &GatewayNode) -> Result<NacosRun, String> {
    if !rnacos::installed() {
        return Err("rnacos is not installed (scripts/test installs it)".into());
    }
    let server = rnacos::Rnacos::start().await;
    let _app = rnacos::App::register(
        &server,
        "svc-nacos",
        rnacos::spring_instance("10.50.1.1", 8080, 2.0),
    )
    .await;
    let fleet: Vec<(String, _)> = (0..NACOS_SERVICES)
        .map(|i| {
            let ip = format!("10.61.{}.{}", i / 250, i % 250 + 1);
            (
                format!("fleet-{i}"),
                rnacos::spring_instance(&ip, 8080, 1.0),
            )
        })
        .collect();
    let _fleet = rnacos::register_many(&server, &fleet).await;
    let registry = format!(
        "[registry]\nkind = \"nacos\"\n[registry.nacos]\nservers = [\"{}\"]\n",
        server.base()
    );
    let routes = format!(
        "[groups]\nsource = \"static\"\n[groups.static]\n\"SVC-NACOS\" = [\"GW-NACOS\"]\n\
         [gateway.nodes]\n\"GW-NACOS\" = [\"{}\"]\n",
        node.address()
    );
    let service = start_service_with(&registry, &routes, None, "").await;
    let drain = ServiceDrain::new(&service, "10.50.1.1");
    let before = step_totals(&service).await;
    let (p50, p99) = latency(&drain).await;
    let steps = step_means(&before, &step_totals(&service).await);
    // Until each of the thousand services has its subscription, a registration is found by
    // the subscription's first answer rather than by a push: wait for one that is pushed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut seen_ms = Vec::new();
    let registrar = server.sdk().await;
    for i in 0..NACOS_PUSH_SAMPLES {
        let ip = format!("10.62.0.{}", i + 1);
        let started = Instant::now();
        registrar
            .register_instance(
                format!("fleet-{}", i * 97 % NACOS_SERVICES),
                Some("DEFAULT_GROUP".into()),
                rnacos::spring_instance(&ip, 8080, 1.0),
            )
            .await
            .expect("the SDK registers the instance");
        loop {
            let view: Value = client()
                .get(format!("{}/api/v1/instances/{ip}", service.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if view["instances"].as_array().is_some_and(|i| !i.is_empty()) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "a new instance never reached the copy"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (push_p50, push_max) = {
        let mut sorted = seen_ms;
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (percentile(&sorted, 0.5), sorted[sorted.len() - 1])
    };
    Ok(NacosRun {
        p50,
        p99,
        steps,
        push_p50,
        push_max,
    })
}

/// The Nacos run's figures.
struct NacosRun {
    p50: f64,
    p99: f64,
    steps: Vec<f64>,
    /// From an SDK registration (its own round trip included) to the instance in the copy.
    push_p50: f64,
    push_max: f64,
}

/// New registrations timed from the SDK's call until the copy shows them.
const NACOS_PUSH_SAMPLES: usize = 10;

/// Services in the Nacos double for the steady-state cost.
const NACOS_SERVICES: usize = 1_000;
const NACOS_STEADY_SECONDS: u64 = 10;

/// What keeping the copy current costs a Nacos of 1,000 services (the double of the official
/// server, one instance each, pushes off: the worst case), in requests a second once loaded.
async fn nacos_steady_rps() -> f64 {
    let nacos = nacos_double::NacosDouble::start(nacos_double::Generation::V2).await;
    for i in 0..NACOS_SERVICES {
        nacos.register(
            &format!("svc-{i}"),
            &format!("10.60.{}.{}", i / 250, i % 250 + 1),
            8080,
            1.0,
            &[],
        );
    }
    let registry = format!(
        "[registry]\nkind = \"nacos\"\n[registry.nacos]\nservers = [\"{}\"]\npush = false\n",
        nacos.base()
    );
    let service = start_service_with(&registry, "", None, "").await;
    let before = nacos.requests().len();
    tokio::time::sleep(Duration::from_secs(NACOS_STEADY_SECONDS)).await;
    let made = nacos.requests().len() - before;
    drop(service);
    made as f64 / NACOS_STEADY_SECONDS as f64
}

/// Two replicas on PostgreSQL with the default lease: the leader is killed (kill -9) while a
/// node is being told; seconds until the other replica has told that node again.
async fn failover_seconds(eureka: &EurekaDouble) -> Result<f64, String> {
    let (conn, url, name) = bench_database("failover").await?;
    let node = GatewayNode::start(Behaviour::Slow(1500)).await;
    eureka.register(
        "FAILOVER",
        "10.50.9.1:failover:8080",
        "10.50.9.1",
        8080,
        "UP",
    );
    let routes = format!(
        "{}\n[gateway.nodes]\n\"FAILOVER-EDGE\" = [\"{}\"]\n",
        static_groups(&[("FAILOVER".to_owned(), "FAILOVER-EDGE".to_owned())]),
        node.address()
    );
    let mut leader =
        start_service_on(eureka, &routes, Some(&url), "[cluster]\nreplica = \"a\"").await;
    let follower =
        start_service_on(eureka, &routes, Some(&url), "[cluster]\nreplica = \"b\"").await;
    let client = client();
    let offline = client
        .post(format!(
            "{}/api/v1/instances/10.50.9.1/offline",
            leader.base
        ))
        .send()
        .await
        .map_err(|e| format!("offline: {e}"))?;
    if offline.status() != 202 {
        return Err(format!("offline answered {}", offline.status()));
    }
    while node.received().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    leader.child.kill().unwrap();
    let killed = Instant::now();
    leader.child.wait().unwrap();
    let deadline = killed + Duration::from_secs(60);
    while node.received().len() < 2 {
        if Instant::now() > deadline {
            return Err("the other replica never told the node".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = killed.elapsed().as_secs_f64();
    drop(follower);
    drop_database(conn, &name).await;
    Ok(seconds)
}

async fn run() {
    let eureka = EurekaDouble::start().await;
    let mut nodes = Vec::new();
    for _ in 0..100 {
        nodes.push(GatewayNode::start(Behaviour::Ack).await);
    }
    let mut mass_nodes = Vec::new();
    for _ in 0..MASS_NODES {
        mass_nodes.push(GatewayNode::start(Behaviour::Ack).await);
    }
    let mut groups = Vec::new();
    for count in NODE_COUNTS {
        let app = format!("SVC-{count}");
        let group = format!("GW-{count}");
        eureka.register(
            &app,
            &format!("10.50.0.{count}:svc:8080"),
            &format!("10.50.0.{count}"),
            8080,
            "UP",
        );
        for (i, node) in nodes.iter().take(count).enumerate() {
            eureka.register(
                &group,
                &format!("{group}-{i}"),
                "127.0.0.1",
                node.port(),
                "UP",
            );
        }
        groups.push((app, group));
    }
    for (i, node) in mass_nodes.iter().enumerate() {
        eureka.register(
            "GW-MASS",
            &format!("mass-{i}"),
            "127.0.0.1",
            node.port(),
            "UP",
        );
    }
    groups.push(("MASS".into(), "GW-MASS".into()));
    for i in 0..MASS_INSTANCES {
        eureka.register(
            "MASS",
            &format!("{}:mass:8080", mass_ip(i)),
            &mass_ip(i),
            8080,
            "UP",
        );
    }
    for i in 0..READ_INSTANCES {
        eureka.register(
            "READ",
            &format!("{}:read:8080", read_ip(i)),
            &read_ip(i),
            8080,
            "UP",
        );
    }
    // The floor's own instance of the 100-node app: its status flips never touch the one the
    // service drains.
    eureka.register("SVC-100", FLOOR_ID, FLOOR_IP, 8080, "UP");
    eureka.forget_delta();

    let service = start_service(&eureka, &static_groups(&groups)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = service.rss_mb();

    let mut latency_ms = serde_json::Map::new();
    let mut steps_ms = serde_json::Map::new();
    let mut rows = Vec::new();
    let floor = FloorDrain::new(&eureka, "SVC-100", FLOOR_ID, FLOOR_IP, &nodes);
    let (mut floor_p50, mut floor_p99) = (f64::NAN, f64::NAN);
    for count in NODE_COUNTS {
        let drain = ServiceDrain::new(&service, &format!("10.50.0.{count}"));
        let before = step_totals(&service).await;
        let (p50, p99) = if count == FLOOR_NODES {
            let (measured, direct) = latency_beside_floor(&drain, &floor).await;
            (floor_p50, floor_p99) = direct;
            measured
        } else {
            latency(&drain).await
        };
        let steps = step_means(&before, &step_totals(&service).await);
        // The nodes keep every body they acknowledge; forgotten between runs, so no run pays
        // for the bench's own memory growing from the runs before it.
        nodes.iter().for_each(GatewayNode::forget_received);
        latency_ms.insert(
            format!("nodes_{count}"),
            json!({"p50": round(p50), "p99": round(p99)}),
        );
        steps_ms.insert(
            format!("nodes_{count}"),
            Step::ALL
                .iter()
                .zip(&steps)
                .map(|(step, ms)| (step.label().to_owned(), json!(round(*ms))))
                .collect(),
        );
        rows.push((count, p50, p99, steps));
    }
    let id_100 = "10.50.0.100:svc:8080";
    let sequential_ms = sequential(&eureka, "SVC-100", id_100, "10.50.0.100", &nodes).await;
    let mass_seconds = mass(&service, &mass_nodes).await;
    let rss_after_mass = service.rss_mb();
    let reads = read_rps(&service).await;
    drop(service);
    let sql = sql_groups_run(&eureka, &groups).await;
    let postgres = postgres_store_run(&eureka, &groups, &floor).await;
    let failover = failover_seconds(&eureka).await;
    let nacos = nacos_run(&nodes[0]).await;
    let nacos_steady = nacos_steady_rps().await;

    println!(
        "\nsynchspeed drain benchmark ({SAMPLES} samples after {WARMUP} warm-up, loopback, 2 cores)\n"
    );
    println!("{:<34} {:>10} {:>10}", "", "p50 ms", "p99 ms");
    for (count, p50, p99, _) in &rows {
        println!(
            "{:<34} {:>10.3} {:>10.3}",
            format!("offline, wait=true, {count} nodes"),
            p50,
            p99
        );
    }
    println!(
        "{:<34} {:>10.3} {:>10.3}",
        "floor, in turns with the 100 above", floor_p50, floor_p99
    );
    println!(
        "{:<34} {:>10.3}",
        "sequential, curl-style, 100 nodes", sequential_ms
    );
    println!(
        "\n{:<34} {}",
        "mean ms per operation, by step",
        Step::ALL
            .map(|step| format!("{:>9}", step.label()))
            .join(" ")
    );
    for (count, _, _, steps) in &rows {
        println!(
            "{:<34} {}",
            format!("offline and online, {count} nodes"),
            steps
                .iter()
                .map(|ms| format!("{ms:>9.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!();
    println!(
        "{:<34} {:>10.3} s",
        format!("mass: {MASS_INSTANCES} instances x {MASS_NODES} nodes"),
        mass_seconds
    );
    println!("{:<34} {:>10.0}", "GET /instances/{ip} per second", reads);
    println!(
        "{:<34} {:>10.1} MB idle, {:.1} MB after mass",
        "resident memory", rss_idle, rss_after_mass
    );
    let static_plan = rows
        .iter()
        .find(|(count, ..)| *count == FLOOR_NODES)
        .map_or(f64::NAN, |(_, _, _, steps)| steps[Step::Plan as usize]);
    match &sql {
        Ok((p50, p99, steps)) => println!(
            "{:<34} {:>10.3} {:>10.3}   plan step {:.3} ms (static: {:.3} ms)",
            "100 nodes, groups from PostgreSQL",
            p50,
            p99,
            steps[Step::Plan as usize],
            static_plan
        ),
        Err(why) => println!("{:<34} skipped: {why}", "groups from PostgreSQL"),
    }

    match &postgres {
        Ok((((p50, p99), (floor_p50, floor_p99)), steps)) => {
            println!(
                "{:<34} {:>10.3} {:>10.3}   {:.2}x the floor's p50",
                "100 nodes, store on PostgreSQL",
                p50,
                p99,
                p50 / floor_p50
            );
            println!(
                "{:<34} {:>10.3} {:>10.3}",
                "floor, in turns with it", floor_p50, floor_p99
            );
            println!(
                "{:<34} {}",
                "  its mean ms by step",
                steps
                    .iter()
                    .map(|ms| format!("{ms:>9.3}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        Err(why) => println!("{:<34} skipped: {why}", "store on PostgreSQL"),
    }
    match &failover {
        Ok(seconds) => println!(
            "{:<34} {:>10.3} s (cluster.lease = 10s)",
            "failover, kill -9 to node told", seconds
        ),
        Err(why) => println!("{:<34} skipped: {why}", "failover"),
    }
    let eureka_1 = rows
        .iter()
        .find(|(count, ..)| *count == 1)
        .map_or((f64::NAN, f64::NAN, f64::NAN), |(_, p50, p99, steps)| {
            (*p50, *p99, steps[Step::Registry as usize])
        });
    match &nacos {
        Ok(run) => {
            println!(
                "{:<34} {:>10.3} {:>10.3}   registry step {:.3} ms (Eureka double: {:.3} ms)",
                "1 node, registry on rnacos",
                run.p50,
                run.p99,
                run.steps[Step::Registry as usize],
                eureka_1.2
            );
            println!(
                "{:<34} {:>10.1} ms p50, {:.1} ms the longest of {NACOS_PUSH_SAMPLES} ({NACOS_SERVICES} services)",
                "Nacos: new instance to the copy", run.push_p50, run.push_max
            );
        }
        Err(why) => println!("{:<34} skipped: {why}", "registry on rnacos"),
    }
    println!(
        "{:<34} {:>10.1} requests/s to Nacos ({NACOS_SERVICES} services, no push)",
        "Nacos steady state", nacos_steady
    );
    let sqlite_100 = rows
        .iter()
        .find(|(count, ..)| *count == FLOOR_NODES)
        .map_or((f64::NAN, f64::NAN), |(_, p50, p99, _)| (*p50, *p99));
    let report = json!({
        "store": {
            "sqlite": {"nodes_100": {"p50": round(sqlite_100.0), "p99": round(sqlite_100.1),
                "floor_p50": round(floor_p50), "ratio": round(sqlite_100.0 / floor_p50)}},
            "postgres": postgres.as_ref().ok().map(|(((p50, p99), (fp50, _)), steps)| json!({
                "nodes_100": {"p50": round(*p50), "p99": round(*p99),
                    "floor_p50": round(*fp50), "ratio": round(p50 / fp50)},
                "steps_ms": Step::ALL
                    .iter()
                    .zip(steps)
                    .map(|(step, ms)| (step.label().to_owned(), json!(round(*ms))))
                    .collect::<serde_json::Map<_, _>>(),
                "failover_seconds": failover.as_ref().ok().map(|s| round(*s)),
            })),
        },
        "latency_ms": latency_ms,
        "steps_ms": steps_ms,
        "floor_ms": {"nodes_100": {"p50": round(floor_p50), "p99": round(floor_p99)}},
        "sequential_baseline_ms": {"nodes_100": round(sequential_ms)},
        "mass": {"instances": MASS_INSTANCES, "nodes": MASS_NODES, "seconds": round(mass_seconds)},
        "read_rps": reads.round(),
        "rss_mb": {"idle": round(rss_idle), "after_mass": round(rss_after_mass)},
        "registry_step_ms_nodes_1": {
            "eureka": round(eureka_1.2),
            "nacos": nacos.as_ref().ok().map(|run| round(run.steps[Step::Registry as usize])),
            "nacos_latency": nacos.as_ref().ok().map(|run| json!({"p50": round(run.p50), "p99": round(run.p99)})),
            "nacos_push_ms": nacos.as_ref().ok().map(|run| json!({"services": NACOS_SERVICES, "p50": round(run.push_p50), "max": round(run.push_max)})),
        },
        "nacos_steady_state_rps": {"services": NACOS_SERVICES, "rps": round(nacos_steady)},
        "groups_sql_nodes_100": sql.as_ref().ok().map(|(p50, p99, steps)| json!({
            "p50": round(*p50),
            "p99": round(*p99),
            "plan_ms": round(steps[Step::Plan as usize]),
            "static_plan_ms": round(static_plan),
        })),
    });
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").into());
    let dir = std::path::Path::new(&target).join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("drain.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("\nwritten to {}", dir.join("drain.json").display());
}
