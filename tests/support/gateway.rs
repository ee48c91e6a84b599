//! Gateway node fakes speaking the notification protocol (README, "For gateway implementers"): they
//! record what they receive and answer as told: acknowledge, fail, fail a few times, hang.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Ack,
    /// Always answer this status.
    Fail(u16),
    /// Answer `code` this many times, then acknowledge (a flapping node).
    FailTimes(u32, u16),
    /// Never answer (until the connection is dropped).
    Hang,
    /// Record the notification on arrival, acknowledge this many milliseconds later.
    Slow(u64),
    /// Record the notification on arrival, acknowledge once the test opens the gate.
    Gated,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub event: String,
    pub signature: Option<String>,
    pub raw: Bytes,
    pub body: Value,
}

struct Inner {
    behaviour: Behaviour,
    /// Opened by `open_gate`, for `Behaviour::Gated`.
    gate: tokio::sync::watch::Sender<bool>,
    received: Vec<Received>,
    attempts: u32,
}

#[derive(Clone)]
pub struct GatewayNode {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

impl GatewayNode {
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_on("127.0.0.1:0", behaviour).await
    }

    pub async fn start_on(bind: &str, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind(bind).await.unwrap();
        let node = Self {
            inner: Arc::new(Mutex::new(Inner {
                behaviour,
                gate: tokio::sync::watch::Sender::new(false),
                received: Vec::new(),
                attempts: 0,
            })),
            addr: listener.local_addr().unwrap(),
        };
        let app = Router::new()
            .route("/synchspeed/v1/notify", post(notify))
            .with_state(node.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        node
    }

    /// `127.0.0.1:port`, as synchspeed lists it.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Notifications answered with a 2xx or not: every request that arrived.
    pub fn attempts(&self) -> u32 {
        self.inner.lock().unwrap().attempts
    }

    /// Notifications this node acknowledged.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// How many operations it heard of: a notification sent again (its answer was slower
    /// than the attempt's timeout on a busy machine, which the protocol allows) counts once.
    pub fn operations_heard(&self) -> usize {
        let received = self.received();
        let mut ids: Vec<&Value> = received.iter().map(|r| &r.body["operationId"]).collect();
        ids.sort_by_key(|id| id.to_string());
        ids.dedup();
        ids.len()
    }

    /// Forgets what it received so far (attempts are still counted).
    pub fn forget_received(&self) {
        self.inner.lock().unwrap().received = Vec::new();
    }

    /// Lets every notification held by `Behaviour::Gated` be acknowledged, now and later.
    pub fn open_gate(&self) {
        self.inner.lock().unwrap().gate.send_replace(true);
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.inner.lock().unwrap().behaviour = behaviour;
    }
}

async fn notify(State(node): State<GatewayNode>, headers: HeaderMap, raw: Bytes) -> StatusCode {
    let behaviour = {
        let mut inner = node.inner.lock().unwrap();
        inner.attempts += 1;
        let behaviour = inner.behaviour;
        if let Behaviour::FailTimes(left, code) = behaviour
            && left > 0
        {
            inner.behaviour = Behaviour::FailTimes(left - 1, code);
            return StatusCode::from_u16(code).unwrap();
        }
        behaviour
    };
    match behaviour {
        Behaviour::Fail(code) => return StatusCode::from_u16(code).unwrap(),
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return StatusCode::OK;
        }
        Behaviour::Ack | Behaviour::FailTimes(..) | Behaviour::Slow(_) | Behaviour::Gated => {}
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body: Value = match serde_json::from_slice(&raw) {
        Ok(body) => body,
        Err(_) => return StatusCode::BAD_REQUEST,
    };
    node.inner.lock().unwrap().received.push(Received {
        event: header("x-synchspeed-event").unwrap_or_default(),
        signature: header("x-synchspeed-signature"),
        raw,
        body,
    });
    match behaviour {
        Behaviour::Slow(millis) => tokio::time::sleep(Duration::from_millis(millis)).await,
        Behaviour::Gated => {
            let mut gate = node.inner.lock().unwrap().gate.subscribe();
            // The sender lives in the node, which this handler holds.
            let _ = gate.wait_for(|open| *open).await;
        }
        _ => {}
    }
    StatusCode::NO_CONTENT
}
