//! A real ZooKeeper (Debian's `zookeeper` package) per test, on a free port with its own data
//! directory, and a real Curator client (Debian's `libcurator-discovery-java`) compiled once
//! from `tests/support/java/`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

const JAVA: &str = "/usr/share/java";

fn jars(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("{JAVA}/{name}.jar"))
        .collect::<Vec<_>>()
        .join(":")
}

fn server_classpath() -> String {
    jars(&[
        "zookeeper",
        "zookeeper-jute",
        "slf4j-api",
        "slf4j-nop",
        "metrics-core",
        "snappy-java",
        "commons-io",
        "netty-all",
    ])
}

fn curator_classpath() -> String {
    jars(&[
        "curator-x-discovery",
        "curator-framework",
        "curator-client",
        "zookeeper",
        "zookeeper-jute",
        "guava",
        "jackson-core",
        "jackson-databind",
        "jackson-annotations",
        "slf4j-api",
        "slf4j-nop",
    ])
}

pub struct ZooKeeper {
    child: Option<Child>,
    dir: TempDir,
    pub port: u16,
}

impl ZooKeeper {
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut zookeeper = Self {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            port,
        };
        zookeeper.launch().await;
        zookeeper
    }

    pub fn connect(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let child = Command::new("java")
            .arg("-cp")
            .arg(server_classpath())
            // The admin server would take port 8080.
            .arg("-Dzookeeper.admin.enableServer=false")
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(self.port.to_string())
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("java runs ZooKeeper (Debian package `zookeeper`; scripts/test installs it)");
        self.child = Some(child);
        let connect = self.connect();
        // A JVM starting while the rest of the suite keeps both cores busy: a minute at most.
        crate::helpers::eventually_within("ZooKeeper answers", Duration::from_secs(60), || {
            let connect = connect.clone();
            async move {
                let connecting = zookeeper_client::Client::connector()
                    .with_connection_timeout(Duration::from_millis(500))
                    .connect(&connect);
                tokio::time::timeout(Duration::from_secs(2), connecting)
                    .await
                    .is_ok_and(|client| client.is_ok())
            }
        })
        .await;
    }

    /// Kills the server (as a crash would) and starts it again on the same port and data:
    /// sessions survive, clients reconnect.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn client(&self) -> zookeeper_client::Client {
        zookeeper_client::Client::connect(&self.connect())
            .await
            .unwrap()
    }

    /// Creates `path` with `data` (parents as plain nodes), as a registration test fixture.
    pub async fn create(&self, path: &str, data: &[u8]) {
        let client = self.client().await;
        let options = zookeeper_client::CreateMode::Persistent
            .with_acls(zookeeper_client::Acls::anyone_all());
        let mut parent = String::new();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for part in &parts[..parts.len() - 1] {
            parent.push('/');
            parent.push_str(part);
            match client.create(&parent, b"", &options).await {
                Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
                Err(e) => panic!("creating {parent}: {e}"),
            }
        }
        client.create(path, data, &options).await.unwrap();
    }

    pub async fn data(&self, path: &str) -> Vec<u8> {
        self.client().await.get_data(path).await.unwrap().0
    }

    pub async fn set(&self, path: &str, data: &[u8]) {
        self.client()
            .await
            .set_data(path, data, None)
            .await
            .unwrap();
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The compiled Curator check, once per test run.
fn curator_classes() -> &'static Path {
    static CLASSES: OnceLock<PathBuf> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("synchspeed-curator-{}", std::process::id()));
        let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/java");
        let status = Command::new("javac")
            .arg("-nowarn")
            .arg("-cp")
            .arg(curator_classpath())
            .arg("-d")
            .arg(&out)
            .arg(sources.join("CuratorCheck.java"))
            .arg(
                sources
                    .join("org/springframework/cloud/zookeeper/discovery/ZookeeperInstance.java"),
            )
            .status()
            .expect("javac runs (Java 17)");
        assert!(status.success(), "the Curator check compiles");
        out
    })
}

fn curator(args: &[&str]) -> Command {
    let mut command = Command::new("java");
    command
        .arg("-cp")
        .arg(format!(
            "{}:{}",
            curator_classes().display(),
            curator_classpath()
        ))
        .arg("CuratorCheck")
        .args(args);
    command
}

/// What a real Curator consumer reads for `service`: `(id, status, address:port)` each.
pub fn curator_query(connect: &str, root: &str, service: &str) -> Vec<(String, String, String)> {
    let output = curator(&["query", connect, root, service])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "Curator could not read {service}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let mut fields = line.split(' ').map(str::to_owned);
            (
                fields.next().unwrap(),
                fields.next().unwrap(),
                fields.next().unwrap(),
            )
        })
        .collect()
}

/// A Spring Boot instance as Curator registers it: alive (its session open) until dropped.
pub struct CuratorInstance {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl CuratorInstance {
    pub fn register(
        connect: &str,
        root: &str,
        service: &str,
        id: &str,
        address: &str,
        port: u16,
    ) -> Self {
        let mut child = curator(&[
            "register",
            connect,
            root,
            service,
            id,
            address,
            &port.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "registered");
        let stdin = child.stdin.take();
        Self { child, stdin }
    }
}

impl Drop for CuratorInstance {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
