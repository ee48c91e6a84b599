//! The client's HTTP: the server and token it was given, calls retried when they never
//! reached synchspeed (always with the same `Idempotency-Key`, so that a retry never drains
//! twice), answers read as JSON.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::exit::Exit;
use crate::diagnostics::error_chain;

/// Calls that never reached synchspeed (connection refused or cut) are tried this often.
const ATTEMPTS: usize = 4;

/// How a call failed, with what the caller is told.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
    /// An operation that came with an error answer (a 502 or 503 with the operation).
    pub operation: Option<Value>,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            operation: None,
        }
    }
}

/// A call's answer: its status and its JSON body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

pub struct Client {
    http: reqwest::Client,
    server: String,
    token: Option<SecretString>,
}

impl Client {
    /// `server`: the base URL; the token comes from `SYNCHSPEED_TOKEN`, never from the
    /// command line (where `ps` and shell histories would show it).
    pub fn new(server: &str, token: Option<SecretString>) -> Result<Self, Failure> {
        let server = server.trim_end_matches('/').to_owned();
        url::Url::parse(&server)
            .map_err(|e| Failure::new(Exit::Usage, format!("--server {server}: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("synchspeed-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::new(Exit::Error, format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            http,
            server,
            token,
        })
    }

    /// A call that never reached synchspeed (refused, cut, timed out).
    fn unreachable(&self, error: &reqwest::Error) -> Failure {
        Failure::new(
            Exit::Error,
            format!(
                "cannot reach synchspeed at {}: {}",
                self.server,
                error_chain(error)
            ),
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token.expose_secret()),
            None => request,
        }
    }

    /// Sends a call, retried while it does not reach synchspeed, and reads its answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        key: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer, Failure> {
        let send = || async {
            let mut request = self.request(method.clone(), path).query(query);
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            request.send().await
        };
        let response = send
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_times(ATTEMPTS - 1),
            )
            .when(|e: &reqwest::Error| e.is_connect())
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            Failure::new(
                Exit::Error,
                format!("the answer was cut: {}", error_chain(&e)),
            )
        })?;
        let body: Value = serde_json::from_str(&text).map_err(|_| {
            Failure::new(
                Exit::Error,
                format!(
                    "{} answered {status} with no JSON: {}",
                    self.server,
                    text.chars().take(200).collect::<String>()
                ),
            )
        })?;
        Ok(Answer { status, body })
    }

    /// A call whose error answers are failures.
    pub async fn expect_ok(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Value, Failure> {
        let answer = self.call(method, path, query, None, None).await?;
        if answer.status.is_success() {
            Ok(answer.body)
        } else {
            Err(error_of(&answer))
        }
    }

    /// An event stream's response (`text/event-stream`), or the failure it answered with.
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response, Failure> {
        let response = self
            .request(Method::GET, path)
            .header("Accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        Err(error_of(&Answer { status, body }))
    }
}

/// The failure an error answer means: its exit code, its message and code, and the
/// operation it carried.
pub fn error_of(answer: &Answer) -> Failure {
    let code = answer.body["error"]["code"].as_str().unwrap_or("unknown");
    let message = answer.body["error"]["message"]
        .as_str()
        .unwrap_or("no message");
    Failure {
        exit: Exit::of_error(answer.status.as_u16(), code),
        message: format!("{message} ({}, {code})", answer.status.as_u16()),
        operation: answer.body.get("operation").cloned(),
    }
}
