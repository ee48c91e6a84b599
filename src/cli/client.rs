//! The client's HTTP: the server and token it was given, calls retried when they never
//! reached synchspeed (always with the same `Idempotency-Key`, so that a retry never drains
//! twice), answers read as JSON.
//!
//! Every exchange has a deadline, because the client runs in every pod's `preStop`: a hook
//! that never returns holds the pod until the kubelet kills it, and the fallback after it
//! never runs. A call gives up after `--request-timeout` (its head and its whole body), an
//! event stream that stays silent longer than its keep-alive is broken off. Redirects are
//! followed only within the configured origin, so the token goes nowhere else.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use url::Url;

use super::exit::Exit;
use crate::config::RedactedUrl;
use crate::diagnostics::{error_chain, printable};

/// Calls that never reached synchspeed (connection refused or cut) are tried this often.
const ATTEMPTS: usize = 4;
/// Redirects followed within the configured origin before the call gives up.
const MAX_REDIRECTS: usize = 5;
/// The TCP handshake's bound (a firewall that drops SYNs would otherwise take minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The server sends a comment on an idle event stream every 15 s (axum's keep-alive): a
/// stream silent for twice that is broken off, whatever `--request-timeout` says.
const STREAM_SILENCE: Duration = Duration::from_secs(30);

/// How a call failed, with what the caller is told.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    /// The API's `error.code`, or the client's own (`timeout`, `unreachable`, ...): what
    /// `--output json` prints for scripts to branch on.
    pub code: String,
    pub message: String,
    /// The HTTP status of an error answer of the API.
    pub status: Option<u16>,
    /// An operation that came with an error answer (a 502 or 503 with the operation).
    pub operation: Option<Box<Value>>,
}

impl Failure {
    pub fn new(exit: Exit, code: &str, message: impl Into<String>) -> Self {
        Self {
            exit,
            code: code.to_owned(),
            message: message.into(),
            status: None,
            operation: None,
        }
    }

    /// The failure as a person reads it on standard error.
    pub fn to_text(&self) -> String {
        let message = printable(&self.message);
        match self.status {
            Some(status) => format!("{message} ({status}, {})", printable(&self.code)),
            None => message.into_owned(),
        }
    }

    /// The failure as `--output json` prints it: the API's error envelope.
    pub fn to_json(&self) -> Value {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(operation) = &self.operation {
            body["operation"] = (**operation).clone();
        }
        body
    }
}

/// A call's answer: its status and its JSON body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

pub struct Client {
    http: reqwest::Client,
    /// The base URL, as the requests use it (credentials and all).
    server: String,
    /// The base URL as messages show it: no password, no secret-looking query parameter.
    shown: String,
    token: Option<SecretString>,
    request_timeout: Duration,
}

/// Scheme, host and port: what a redirect may not leave.
fn origin(url: &Url) -> (String, Option<String>, Option<u16>) {
    (
        url.scheme().to_owned(),
        url.host_str().map(str::to_ascii_lowercase),
        url.port_or_known_default(),
    )
}

impl Client {
    /// `server`: the base URL; the token comes from `SYNCHSPEED_TOKEN`, never from the
    /// command line (where `ps` and shell histories would show it).
    pub fn new(
        server: &str,
        token: Option<SecretString>,
        request_timeout: Duration,
    ) -> Result<Self, Failure> {
        let server = server.trim_end_matches('/').to_owned();
        let shown = RedactedUrl::new(server.as_str()).to_string();
        let base = Url::parse(&server).map_err(|e| {
            Failure::new(Exit::Usage, "bad_usage", format!("--server {shown}: {e}"))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Failure::new(
                Exit::Usage,
                "bad_usage",
                format!("--server {shown}: not an http:// or https:// URL"),
            ));
        }
        let home = origin(&base);
        // Within the origin a redirect is followed (a proxy's trailing-slash rewrite); to any
        // other origin it is not, and the call fails saying where it pointed (`answer`).
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS || origin(attempt.url()) != home {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(redirects)
            .user_agent(concat!("synchspeed-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Failure::new(
                    Exit::Error,
                    "client",
                    format!("cannot build an HTTP client: {e}"),
                )
            })?;
        Ok(Self {
            http,
            server,
            shown,
            token,
            request_timeout,
        })
    }

    /// A call that never got its answer (refused, cut, timed out). reqwest's message names
    /// the URL, credentials and all: it is left out, the redacted server is said instead.
    fn unreachable(&self, error: reqwest::Error) -> Failure {
        if error.is_timeout() {
            return self.timed_out();
        }
        Failure::new(
            Exit::Error,
            "unreachable",
            format!(
                "cannot reach synchspeed at {}: {}",
                self.shown,
                error_chain(&error.without_url())
            ),
        )
    }

    fn timed_out(&self) -> Failure {
        Failure::new(
            Exit::Error,
            "timeout",
            format!(
                "synchspeed at {} did not answer within {} (--request-timeout)",
                self.shown,
                humantime::format_duration(self.request_timeout)
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

    /// A redirect the client did not follow (to another origin, or too many), as a failure
    /// that says where it pointed; `None` for every other answer.
    fn redirected(&self, response: &reqwest::Response) -> Option<Failure> {
        if !response.status().is_redirection() {
            return None;
        }
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .map_or_else(
                || "nowhere".to_owned(),
                |target| RedactedUrl::new(target).to_string(),
            );
        Some(Failure::new(
            Exit::Error,
            "redirected",
            format!(
                "{} answered {} pointing to {}, another origin: not followed (the token is \
                 sent to the configured server only; point --server at the right one)",
                self.shown,
                response.status().as_u16(),
                location
            ),
        ))
    }

    /// Sends a call, retried while it does not reach synchspeed, and reads its answer, all
    /// within `--request-timeout`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        key: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer, Failure> {
        let send = || async {
            let mut request = self
                .request(method.clone(), path)
                .query(query)
                .timeout(self.request_timeout);
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            request.send().await
        };
        let exchange = async {
            let response = send
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(200))
                        .with_max_times(ATTEMPTS - 1),
                )
                .when(|e: &reqwest::Error| e.is_connect())
                .await
                .map_err(|e| self.unreachable(e))?;
            if let Some(failure) = self.redirected(&response) {
                return Err(failure);
            }
            let status = response.status();
            let text = response.text().await.map_err(|e| {
                if e.is_timeout() {
                    self.timed_out()
                } else {
                    Failure::new(
                        Exit::Error,
                        "cut",
                        format!("the answer was cut: {}", error_chain(&e.without_url())),
                    )
                }
            })?;
            let body: Value = serde_json::from_str(&text).map_err(|_| {
                Failure::new(
                    Exit::Error,
                    "not_json",
                    format!(
                        "{} answered {status} with no JSON: {}",
                        self.shown,
                        text.chars().take(200).collect::<String>()
                    ),
                )
            })?;
            Ok(Answer { status, body })
        };
        // The retries' pauses count too: the whole call is bounded, not each attempt only.
        let bound = self.request_timeout + CONNECT_TIMEOUT;
        tokio::time::timeout(bound, exchange)
            .await
            .map_err(|_| self.timed_out())?
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
    /// Its head comes within `--request-timeout`; each later chunk within [`Self::silence`].
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response, Failure> {
        let sent = self
            .request(Method::GET, path)
            .header("Accept", "text/event-stream")
            .send();
        let response = tokio::time::timeout(self.request_timeout, sent)
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|e| self.unreachable(e))?;
        if let Some(failure) = self.redirected(&response) {
            return Err(failure);
        }
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = tokio::time::timeout(self.request_timeout, response.json())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(Value::Null);
        Err(error_of(&Answer { status, body }))
    }

    /// How long an event stream may stay silent before it counts as broken.
    pub fn silence(&self) -> Duration {
        STREAM_SILENCE.max(self.request_timeout)
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
        code: code.to_owned(),
        message: message.to_owned(),
        status: Some(answer.status.as_u16()),
        operation: answer.body.get("operation").cloned().map(Box::new),
    }
}
