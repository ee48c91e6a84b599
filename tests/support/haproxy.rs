//! A real HAProxy (Debian's `haproxy` package) started per test: every backend given gets a
//! frontend of its own on a free port, and the runtime API listens three ways: TCP at admin
//! level, TCP at operator level (which refuses changes), and a Unix socket at admin level.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

pub struct Server {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub weight: u32,
}

pub struct Haproxy {
    child: Child,
    dir: TempDir,
    /// `127.0.0.1:port` of the admin-level runtime API.
    pub admin: String,
    /// `127.0.0.1:port` of a runtime API at operator level: it may read, not change.
    pub operator: String,
    frontends: Vec<(&'static str, SocketAddr)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn binary() -> &'static str {
    if Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

impl Haproxy {
    /// Starts HAProxy in the foreground with `backends` (round robin, no health checks, so
    /// a server's state is only what the runtime API sets) and waits until it answers.
    pub async fn start(backends: &[(&'static str, Vec<Server>)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (admin, operator) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let mut config = format!(
            "global\n  stats socket ipv4@{admin} level admin\n  stats socket ipv4@{operator} level operator\n  stats socket {} level admin\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n",
            dir.path().join("admin.sock").display()
        );
        let mut frontends = Vec::new();
        for (backend, servers) in backends {
            let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            config.push_str(&format!(
                "frontend fe_{backend}\n  bind {frontend}\n  default_backend {backend}\nbackend {backend}\n  balance roundrobin\n"
            ));
            for server in servers {
                config.push_str(&format!(
                    "  server {} {} weight {}\n",
                    server.name, server.addr, server.weight
                ));
            }
            frontends.push((*backend, frontend));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(binary())
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy runs (Debian package `haproxy`; scripts/test installs it)");
        let haproxy = Self {
            child,
            dir,
            admin,
            operator,
            frontends,
        };
        crate::helpers::eventually("HAProxy answers on its runtime API", || async {
            haproxy.try_command("show info").is_some()
        })
        .await;
        haproxy
    }

    /// `unix:/path` of the admin-level Unix socket, as synchspeed lists it.
    pub fn unix_socket(&self) -> String {
        format!("unix:{}", self.socket_path().display())
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// The frontend whose default backend is `backend`.
    pub fn frontend(&self, backend: &str) -> SocketAddr {
        self.frontends
            .iter()
            .find(|(name, _)| *name == backend)
            .map(|(_, addr)| *addr)
            .unwrap()
    }

    fn try_command(&self, command: &str) -> Option<String> {
        let mut stream = TcpStream::connect(&self.admin).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(format!("{command}\n").as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    }

    /// A runtime API command on the admin socket, written here independently of synchspeed's
    /// own client so that tests check HAProxy's state, not the client's idea of it.
    pub fn command(&self, command: &str) -> String {
        self.try_command(command).expect("HAProxy answers")
    }

    /// `srv_admin_state` and `srv_uweight` of `backend/server`, from `show servers state`.
    pub fn server(&self, backend: &str, server: &str) -> (u32, u32) {
        let answer = self.command(&format!("show servers state {backend}"));
        let mut lines = answer.lines().skip(1);
        let header: Vec<&str> = lines
            .next()
            .and_then(|line| line.strip_prefix("# "))
            .unwrap_or_else(|| panic!("no header in {answer:?}"))
            .split(' ')
            .collect();
        let at = |name: &str| {
            header
                .iter()
                .position(|c| *c == name)
                .unwrap_or_else(|| panic!("no column {name} in {answer:?}"))
        };
        let row: Vec<&str> = lines
            .map(|line| line.split(' ').collect::<Vec<_>>())
            .find(|fields| fields.len() == header.len() && fields[at("srv_name")] == server)
            .unwrap_or_else(|| panic!("no server {backend}/{server} in {answer}"));
        (
            row[at("srv_admin_state")].parse().unwrap(),
            row[at("srv_uweight")].parse().unwrap(),
        )
    }
}

/// `srv_admin_state` bits (HAProxy's `enum srv_admin`).
pub const FORCED_MAINT: u32 = 0x01;
pub const FORCED_DRAIN: u32 = 0x08;

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
