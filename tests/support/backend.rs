//! Small HTTP servers behind a real HAProxy: they count every request that reaches them, and
//! `/slow` stays in flight until the test releases it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::Notify;

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    in_flight: AtomicU64,
    release: Notify,
}

#[derive(Clone)]
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    counters: Arc<Counters>,
}

impl Backend {
    /// Listens on `ip` (a loopback address of its own, so synchspeed tells it apart by IP).
    pub async fn start(name: &'static str, ip: &str) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let backend = Self {
            name,
            addr: listener.local_addr().unwrap(),
            counters: Arc::default(),
        };
        let app = Router::new()
            .route("/", get(answer))
            .route("/slow", get(slow))
            .with_state(backend.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        backend
    }

    /// Requests that reached this server, slow ones included.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> u64 {
        self.counters.in_flight.load(Ordering::SeqCst)
    }

    /// Lets every `/slow` request in flight finish.
    pub fn release_slow(&self) {
        self.counters.release.notify_waiters();
    }
}

async fn answer(State(backend): State<Backend>) -> &'static str {
    backend.counters.requests.fetch_add(1, Ordering::SeqCst);
    backend.name
}

async fn slow(State(backend): State<Backend>) -> &'static str {
    let counters = &backend.counters;
    let released = counters.release.notified();
    counters.requests.fetch_add(1, Ordering::SeqCst);
    counters.in_flight.fetch_add(1, Ordering::SeqCst);
    released.await;
    counters.in_flight.fetch_sub(1, Ordering::SeqCst);
    backend.name
}
