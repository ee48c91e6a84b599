//! Nacos over HTTP: every call fails over between the cluster's nodes, carries the access
//! token (logged in for, renewed before its `tokenTtl`, and logged in for again when a 403
//! says it expired), and speaks v1 or the 3.x admin API (v3), detected by the 410 a 3.x
//! server answers to the v1 admin endpoints.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tracing::{info, warn};
use url::Url;

use super::model::{self, Placement};
use crate::config::{NacosApi, NacosSettings, RedactedUrl};
use crate::registry::RegistryError;
use crate::sync::lock;

/// Instances asked for per catalog page (v1 pages; v3 answers a service at once).
pub const CATALOG_PAGE: usize = 500;
/// Service names asked for per page of a group's service list.
pub const SERVICE_PAGE: usize = 1000;

/// A call's two spellings: v1, and the 3.x admin API (paths after the context, `/nacos`).
#[derive(Debug, Clone)]
pub struct Route {
    pub v1: (Method, &'static str),
    pub v3: (Method, &'static str),
}

pub const SERVICE_LIST: Route = Route {
    v1: (Method::GET, "/v1/ns/service/list"),
    v3: (Method::GET, "/v3/admin/ns/service/list"),
};
pub const INSTANCE_LIST: Route = Route {
    v1: (Method::GET, "/v1/ns/catalog/instances"),
    v3: (Method::GET, "/v3/admin/ns/instance/list"),
};
pub const INSTANCE_DETAIL: Route = Route {
    v1: (Method::GET, "/v1/ns/instance"),
    v3: (Method::GET, "/v3/admin/ns/instance"),
};
/// A partial update: v1 `PATCH`, v3 `PUT .../partial`. Never the v1 PUT, which replaces the
/// operator layer and resets a custom weight to 1.0 (protocol notes 3.3).
pub const INSTANCE_PATCH: Route = Route {
    v1: (Method::PATCH, "/v1/ns/instance"),
    v3: (Method::PUT, "/v3/admin/ns/instance/partial"),
};
const LOGIN: (&str, &str) = ("/v1/auth/login", "/v3/auth/user/login");

/// A server's answer that reached synchspeed (any status): the caller judges it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    /// The server that answered, without credentials.
    pub server: String,
}

struct Token {
    value: SecretString,
    renew_at: Instant,
}

pub struct NacosClient {
    settings: NacosSettings,
    http: reqwest::Client,
    /// The server that answered last: tried first.
    current: AtomicUsize,
    /// Whether the 3.x admin paths are in use (configured, or detected by a 410).
    v3: AtomicBool,
    token: tokio::sync::Mutex<Option<Token>>,
    /// Why the last login failed, for readiness.
    login_trouble: Mutex<Option<String>>,
}

impl NacosClient {
    pub fn new(settings: &NacosSettings) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("synchspeed/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::unreachable_by("cannot build the Nacos HTTP client", e))?;
        Ok(Self {
            settings: settings.clone(),
            http,
            current: AtomicUsize::new(0),
            v3: AtomicBool::new(settings.api == NacosApi::V3),
            token: tokio::sync::Mutex::new(None),
            login_trouble: Mutex::new(None),
        })
    }

    pub fn settings(&self) -> &NacosSettings {
        &self.settings
    }

    pub fn uses_v3(&self) -> bool {
        self.v3.load(Ordering::Relaxed)
    }

    pub fn login_trouble(&self) -> Option<String> {
        lock(&self.login_trouble).clone()
    }

    fn url(&self, server: usize, path: &str) -> Url {
        let mut url = self.settings.servers[server].clone();
        let joined = format!("{}{path}", url.path());
        url.set_path(&joined);
        url
    }

    fn shown(&self, server: usize) -> String {
        RedactedUrl::new(self.settings.servers[server].as_str()).to_string()
    }

    /// Sends one call to the first server that answers it, starting with the one that
    /// answered last. A server that cannot be reached, or answers 502/503/504, is passed
    /// over; any other answer is the caller's to judge.
    pub async fn send(
        &self,
        route: &Route,
        params: &[(&str, String)],
    ) -> Result<Answer, RegistryError> {
        let servers = self.settings.servers.len();
        let first = self.current.load(Ordering::Relaxed) % servers;
        let mut failures = Vec::new();
        for step in 0..servers {
            let server = (first + step) % servers;
            match self.send_to(server, route, params).await {
                Ok(answer) => {
                    self.current.store(server, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(Failover(why)) => {
                    warn!(server = %self.shown(server), "Nacos server passed over: {why}");
                    failures.push(format!("{}: {why}", self.shown(server)));
                }
            }
        }
        Err(RegistryError::unreachable(format!(
            "no Nacos server answered ({})",
            failures.join("; ")
        )))
    }

    /// One server: the call, a second time after a 410 (switching to v3 where `api` is
    /// auto) or a 403 that says the token expired (after logging in again).
    async fn send_to(
        &self,
        server: usize,
        route: &Route,
        params: &[(&str, String)],
    ) -> Result<Answer, Failover> {
        let mut retried = false;
        loop {
            let v3 = self.uses_v3();
            let token = match self.token(server).await {
                Ok(token) => token,
                Err(LoginError::Unreachable(why)) => return Err(Failover(why)),
                Err(LoginError::Refused(why)) => {
                    // An answer, and a final one: the credentials are wrong everywhere.
                    return Ok(Answer {
                        status: StatusCode::FORBIDDEN,
                        body: Bytes::from(why),
                        server: self.shown(server),
                    });
                }
            };
            let (method, path) = if v3 { &route.v3 } else { &route.v1 };
            let mut request = self
                .http
                .request(method.clone(), self.url(server, path))
                .query(params);
            if let Some(token) = &token {
                request = request.bearer_auth(token.expose_secret());
            }
            let response = request.send().await.map_err(|e| Failover(e.to_string()))?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .map_err(|e| Failover(format!("the answer broke off: {e}")))?;
            if matches!(
                status,
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ) {
                return Err(Failover(format!("{status}: {}", model::excerpt(&body))));
            }
            if retried {
                return Ok(self.answer(server, status, body));
            }
            if status == StatusCode::GONE && !v3 && self.settings.api == NacosApi::Auto {
                info!(server = %self.shown(server),
                    "Nacos answers 410 to its v1 admin API (a 3.x server): using /v3/admin from now on");
                self.v3.store(true, Ordering::Relaxed);
                retried = true;
                continue;
            }
            if status == StatusCode::FORBIDDEN
                && token.is_some()
                && model::says_token_expired(&body)
            {
                info!(server = %self.shown(server), "the Nacos access token expired; logging in again");
                *self.token.lock().await = None;
                retried = true;
                continue;
            }
            return Ok(self.answer(server, status, body));
        }
    }

    fn answer(&self, server: usize, status: StatusCode, body: Bytes) -> Answer {
        Answer {
            status,
            body,
            server: self.shown(server),
        }
    }

    /// The access token, logged in for when there is none or it is due for renewal. `None`
    /// without credentials.
    async fn token(&self, server: usize) -> Result<Option<SecretString>, LoginError> {
        let (Some(username), Some(password)) = (&self.settings.username, &self.settings.password)
        else {
            return Ok(None);
        };
        let mut token = self.token.lock().await;
        if let Some(current) = token.as_ref()
            && Instant::now() < current.renew_at
        {
            return Ok(Some(current.value.clone()));
        }
        let url = self.url(server, if self.uses_v3() { LOGIN.1 } else { LOGIN.0 });
        let form = serde_urlencoded::to_string([
            ("username", username.as_str()),
            ("password", password.expose_secret()),
        ])
        .map_err(|e| LoginError::Refused(format!("cannot encode the credentials: {e}")))?;
        let response = self
            .http
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .map_err(|e| LoginError::Unreachable(format!("cannot log in: {e}")))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| LoginError::Unreachable(format!("the login broke off: {e}")))?;
        if status.is_server_error() {
            return Err(LoginError::Unreachable(format!(
                "the login answered {status}: {}",
                model::excerpt(&body)
            )));
        }
        if !status.is_success() {
            let why = format!(
                "Nacos refused the login as '{username}' ({status}): {}",
                model::excerpt(&body)
            );
            *lock(&self.login_trouble) = Some(why.clone());
            return Err(LoginError::Refused(why));
        }
        let login = model::login(&body).map_err(|why| {
            LoginError::Unreachable(format!("the login answered something else: {why}"))
        })?;
        *lock(&self.login_trouble) = None;
        // Renewed at three quarters of its life: well before a call could carry it expired.
        let renew_in = Duration::from_secs(login.token_ttl.max(4)) * 3 / 4;
        let value = SecretString::from(login.access_token);
        *token = Some(Token {
            value: value.clone(),
            renew_at: Instant::now() + renew_in,
        });
        Ok(Some(value))
    }

    /// The common parameters naming one service.
    pub fn service_params(&self, group: &str, service: &str) -> Vec<(&'static str, String)> {
        vec![
            ("namespaceId", self.settings.namespace.clone()),
            ("groupName", group.to_owned()),
            ("serviceName", service.to_owned()),
        ]
    }

    /// The parameters naming one registration, for a write.
    pub fn instance_params(
        &self,
        placement: &Placement,
        ip: std::net::IpAddr,
        port: u16,
    ) -> Vec<(&'static str, String)> {
        let mut params = self.service_params(&placement.group, &placement.service);
        params.extend([
            ("clusterName", placement.cluster.clone()),
            ("ip", ip.to_string()),
            ("port", port.to_string()),
            // PATCH applies to ephemeral instances only (2.x `patchInstance`), which is what
            // Spring Cloud Alibaba registers.
            ("ephemeral", "true".to_owned()),
        ]);
        params
    }
}

/// Why a server was passed over.
struct Failover(String);

enum LoginError {
    Unreachable(String),
    Refused(String),
}
