//! The listener: connections accepted, judged and served here rather than by `axum::serve`,
//! which has no header timeout and no connection cap, and reads a request before anyone can
//! judge its peer. A host that opens thousands of connections and writes a header line one
//! byte at a time (slowloris) would otherwise hold a file descriptor and a task for each,
//! until the service stops answering anyone.
//!
//! * The peer is judged when its connection is accepted, before a byte is read: a peer that
//!   is no allowed caller, trusted proxy or prober gets a canned 403 and the connection is
//!   closed.
//! * At most `server.max_connections` are open from callers, and at most
//!   `server.max_connections_per_ip` from one address, so one hostile host cannot take every
//!   slot from the deploy platform; past either, a new connection gets a canned 503 at once.
//! * Peers admitted only as probers (`security.probes`: kubelets, scrapers, and by default
//!   anyone) draw on a budget of their own, `server.max_probe_connections`: however many
//!   connections they leave unfinished, an allowed caller still gets in.
//! * hyper's header timer bounds both a request's head and the idle wait for the next request
//!   on a keep-alive connection (`server.header_read_timeout`); the body has its own bound
//!   (`body.rs`).
//! * A connection that opens with HTTP/2's preface (h2c with prior knowledge) is served as
//!   HTTP/2: at most [`H2_STREAMS`] requests at once, pinged while idle, and closed (GOAWAY,
//!   the streams under way finish) once no request has started for
//!   `server.header_read_timeout`, as an idle HTTP/1 connection is.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use super::unparsed::Enveloped;
use crate::domain::ip::canonical;
use crate::domain::policy::{Admission, CallerPolicy};
use crate::sync::lock;
use crate::telemetry::{Metrics, RefusedLabels};

/// hyper's read buffer and header count: far above what synchspeed takes (`observe.rs`
/// answers past `MAX_URI` and `MAX_HEADERS`), so that hyper's own answers (put in the envelope
/// by `unparsed.rs`, with less detail) are left for heads no client sends.
const HYPER_BUFFER: usize = 1024 * 1024;
const HYPER_HEADERS: usize = 1000;

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Enough of it to tell it from every HTTP/1 method (`PROPFIND` shares `PR`).
const H2_PREFACE_DECIDES: usize = 4;
/// Requests at once on one HTTP/2 connection.
const H2_STREAMS: u32 = 64;
/// How often the first bytes are looked at again while too few have come to decide.
const PEEK_AGAIN: Duration = Duration::from_millis(10);

/// How long the accept loop pauses after an accept error (out of file descriptors): retrying
/// at once would spin a core while nothing can be accepted anyway.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The listener and what it needs to judge and serve each connection.
pub struct Listener {
    pub listener: TcpListener,
    pub router: Router,
    pub policy: CallerPolicy,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Connections at once from peers admitted as probers only.
    pub max_probe_connections: usize,
    pub metrics: Arc<Metrics>,
    /// Cancelled to stop: no new connection is accepted, open ones finish their request.
    pub shutdown: CancellationToken,
}

/// A whole answer written to a connection that is refused, without reading from it.
fn canned(status: &str, code: &str, message: &str, extra_headers: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\ncache-control: no-store\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Says no more than that the address may not call: which ranges are denied is the
/// operators' business, and the log has the peer.
static FORBIDDEN: LazyLock<Vec<u8>> = LazyLock::new(|| {
    canned(
        "403 Forbidden",
        "forbidden",
        "this address may not call synchspeed; ask its operators to allow it",
        "",
    )
});

static BUSY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    canned(
        "503 Service Unavailable",
        "too_many_connections",
        "synchspeed has as many connections open as it takes from this address or from all \
         (server.max_connections_per_ip, server.max_connections, or for probers \
         server.max_probe_connections); retry shortly",
        "retry-after: 1\r\n",
    )
});

/// Connections open per peer address.
#[derive(Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted against its address until dropped.
struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = lock(&self.open);
        let count = open.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            per_ip: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.per_ip.open);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl Listener {
    /// Accepts until `shutdown`, then waits for the open connections to finish.
    pub async fn run(self) -> std::io::Result<()> {
        let open = Arc::new(Semaphore::new(self.max_connections));
        let probing = Arc::new(Semaphore::new(self.max_probe_connections));
        let per_ip = Arc::new(PerIp::default());
        let connections = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                () = self.shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let Some(admission) = self.policy.admission(peer.ip()) else {
                debug!(peer = %peer.ip(), "connection refused: no allowed caller, trusted proxy or prober");
                self.refuse(stream, &FORBIDDEN, "forbidden");
                continue;
            };
            let Some(slot) = per_ip.take(canonical(peer.ip()), self.max_connections_per_ip) else {
                debug!(peer = %peer.ip(), "connection refused: server.max_connections_per_ip are open from it");
                self.refuse(stream, &BUSY, "busy");
                continue;
            };
            let (budget, limit, key) = match admission {
                Admission::Caller => (&open, self.max_connections, "server.max_connections"),
                Admission::Prober => (
                    &probing,
                    self.max_probe_connections,
                    "server.max_probe_connections",
                ),
            };
            let Ok(permit) = Arc::clone(budget).try_acquire_owned() else {
                warn!(peer = %peer.ip(), open = limit, "connection refused: {key} are open");
                self.refuse(stream, &BUSY, "busy");
                continue;
            };
            let connection = Connection {
                stream,
                peer,
                router: self.router.clone(),
                header_read_timeout: self.header_read_timeout,
                shutdown: self.shutdown.clone(),
                metrics: Arc::clone(&self.metrics),
            };
            connections.spawn(async move {
                let _held = (permit, slot);
                connection.serve().await;
            });
        }
        connections.close();
        connections.wait().await;
        Ok(())
    }

    /// Writes `answer` if the socket takes it at once, and closes. Never waits: a refused
    /// peer must not hold the accept loop.
    fn refuse(&self, stream: TcpStream, answer: &[u8], why: &'static str) {
        self.metrics
            .connections_refused
            .get_or_create(&RefusedLabels { why })
            .inc();
        let _ = stream.try_write(answer);
    }
}

/// One accepted connection, served until it closes or the service stops.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
}

/// Whether the peer opens with HTTP/2's preface, looked at without taking it from the
/// socket. Waits (within `within`) only while the few bytes come one by one.
async fn opens_with_h2_preface(stream: &TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut first = [0u8; H2_PREFACE_DECIDES];
    loop {
        let Ok(Ok(seen)) = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await else {
            return false;
        };
        if seen == 0 || first[..seen] != H2_PREFACE[..seen] {
            return false;
        }
        if seen == H2_PREFACE_DECIDES {
            return true;
        }
        if tokio::time::Instant::now() + PEEK_AGAIN > deadline {
            return false;
        }
        tokio::time::sleep(PEEK_AGAIN).await;
    }
}

/// When an HTTP/2 connection last started a request: idle past the header timeout, it is
/// closed as an idle HTTP/1 connection is.
async fn idle_for(last_request: &Mutex<tokio::time::Instant>, timeout: Duration) {
    loop {
        let since = lock(last_request).elapsed();
        if since >= timeout {
            return;
        }
        tokio::time::sleep(timeout - since).await;
    }
}

impl Connection {
    async fn serve(self) {
        let _ = self.stream.set_nodelay(true);
        self.metrics.connections_open.inc();
        let h2 = opens_with_h2_preface(&self.stream, self.header_read_timeout).await;
        let peer = self.peer;
        let router = self.router;
        // Only HTTP/2 needs to know when its last request started (HTTP/1's header timer
        // covers the idle wait).
        let last_request = h2.then(|| Arc::new(Mutex::new(tokio::time::Instant::now())));
        let started = last_request.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            if let Some(started) = &started {
                *lock(started) = tokio::time::Instant::now();
            }
            // What `ConnectInfo<SocketAddr>` reads: the caller check judges the TCP peer.
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        if let Some(last_request) = last_request {
            let connection = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(H2_STREAMS)
                .max_header_list_size(HYPER_BUFFER as u32)
                .keep_alive_interval(Some(self.header_read_timeout))
                .keep_alive_timeout(self.header_read_timeout)
                .serve_connection(TokioIo::new(self.stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = self.shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
                () = idle_for(&last_request, self.header_read_timeout) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            self.metrics.connections_open.dec();
            if let Err(e) = result {
                debug!(peer = %peer, "HTTP/2 connection ended: {e}");
            }
            return;
        }
        // hyper's limits sit well above synchspeed's, which the router enforces with the
        // error envelope (`observe.rs`); what hyper refuses itself (a head past its limits,
        // one that does not parse) is put in the envelope on its way out (`unparsed.rs`).
        let io = Enveloped::new(TokioIo::new(self.stream), peer, Arc::clone(&self.metrics));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(HYPER_BUFFER)
            .max_headers(HYPER_HEADERS)
            .keep_alive(true)
            .serve_connection(io, service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = self.shutdown.cancelled() => {
                // Finishes the request in flight (its answer included), then closes.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        self.metrics.connections_open.dec();
        if let Err(e) = result {
            debug!(peer = %peer, "connection ended: {e}");
        }
    }
}
