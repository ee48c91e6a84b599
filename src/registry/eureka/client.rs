//! Eureka's REST calls, one peer at a time (the endpoints of Netflix/eureka's
//! `InstanceResource`, `ApplicationResource` and `ApplicationsResource`).

use std::time::Duration;

use futures::TryStreamExt;
use reqwest::Method;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;
use tokio_util::io::{StreamReader, SyncIoBridge};
use url::Url;

use crate::diagnostics::{error_chain, snippet};

use super::model::{ApplicationsEnvelope, InstanceEnvelope, InstanceInfo};
use crate::domain::{PeerOutcome, Status};

/// One Eureka server: its base URL with credentials moved out (they go in a Basic header and
/// never into a log line or an operation record).
#[derive(Clone)]
pub struct Peer {
    base: Url,
    user: Option<(String, Option<String>)>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.base.as_str())
    }
}

impl Peer {
    pub fn new(mut url: Url) -> Self {
        let user = (!url.username().is_empty()).then(|| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(url.username()), url.password().map(decode))
        });
        // Removing credentials from an http(s) URL cannot fail.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        // `.../eureka` and `.../eureka/v2` both occur; only `apps/...` is ever appended.
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Self { base: url, user }
    }

    /// The base URL without credentials, for logs and operation records.
    pub fn display(&self) -> &str {
        self.base.as_str()
    }

    /// `{base}apps/{segments...}`, each segment percent-encoded (instance ids hold colons, and
    /// may hold anything else an operator chose).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("apps");
            for segment in segments {
                path.push(segment);
            }
        }
        url
    }
}

/// What went wrong talking to one peer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("{peer}: cannot connect: {detail}")]
    Connect { peer: String, detail: String },
    #[error("{peer}: no answer within {timeout:?}")]
    Timeout { peer: String, timeout: Duration },
    #[error("{peer}: HTTP {status}: {body}")]
    Status {
        peer: String,
        status: u16,
        body: String,
    },
    #[error("{peer}: the answer does not parse: {detail}")]
    Malformed { peer: String, detail: String },
}

impl PeerError {
    /// Whether a read should move on to the next peer: a peer that is down, not ready (403
    /// while it syncs, 307 from `StatusFilter`) or broken (5xx).
    pub fn try_next_peer(&self) -> bool {
        match self {
            PeerError::Connect { .. } | PeerError::Timeout { .. } | PeerError::Malformed { .. } => {
                true
            }
            PeerError::Status { status, .. } => {
                *status >= 500
                    || *status == 403
                    || *status == 307
                    || *status == 429
                    || *status == 408
            }
        }
    }

    /// How a write's failure is recorded: 404 is "not on that peer" (maybe not replicated
    /// yet), a 500 or another 4xx is a refusal (`InstanceResource` answers 500 for a bad value
    /// or a race with a cancel), the rest means the peer could not take it.
    pub fn write_outcome(&self) -> PeerOutcome {
        match self {
            PeerError::Status { status: 404, .. } => PeerOutcome::NotFound,
            PeerError::Status { status, .. }
                if *status == 500
                    || (*status >= 400 && *status < 500 && ![403, 408, 429].contains(status)) =>
            {
                PeerOutcome::Refused
            }
            PeerError::Malformed { .. } => PeerOutcome::Refused,
            _ => PeerOutcome::Unreachable,
        }
    }
}

/// Calls to Eureka peers over the service's one shared HTTP client.
#[derive(Clone, Debug)]
pub struct EurekaClient {
    http: reqwest::Client,
    pub peers: Vec<Peer>,
    timeout: Duration,
}

/// Requests from synchspeed are not replication: no `x-netflix-discovery-replication` header,
/// so a peer that takes a status write also replicates it to the peers we could not reach
/// (with its own 30 s retry), which is redundant when all are up and a rescue when one is not.
fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    // `GET apps` answers XML unless Accept *contains* "json" (ApplicationsResource).
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers
}

impl EurekaClient {
    pub fn new(http: reqwest::Client, urls: &[Url], timeout: Duration) -> Self {
        Self {
            http,
            peers: urls.iter().cloned().map(Peer::new).collect(),
            timeout,
        }
    }

    fn classify(&self, peer: &Peer, error: &reqwest::Error) -> PeerError {
        if error.is_timeout() {
            PeerError::Timeout {
                peer: peer.display().to_owned(),
                timeout: self.timeout,
            }
        } else {
            PeerError::Connect {
                peer: peer.display().to_owned(),
                detail: error_chain(error),
            }
        }
    }

    /// Sends a request and answers with the response when it is a success; otherwise the
    /// status and the start of the body become the error.
    async fn respond(
        &self,
        peer: &Peer,
        method: Method,
        url: Url,
    ) -> Result<reqwest::Response, PeerError> {
        let mut request = self
            .http
            .request(method, url)
            .headers(json_headers())
            .timeout(self.timeout);
        if let Some((user, password)) = &peer.user {
            request = request.basic_auth(user, password.as_ref());
        }
        let response = request.send().await.map_err(|e| self.classify(peer, &e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(PeerError::Status {
            peer: peer.display().to_owned(),
            status: status.as_u16(),
            body: snippet(&body),
        })
    }

    async fn send(&self, peer: &Peer, method: Method, url: Url) -> Result<bytes::Bytes, PeerError> {
        let response = self.respond(peer, method, url).await?;
        response.bytes().await.map_err(|e| self.classify(peer, &e))
    }

    /// Parses a JSON body as it arrives, on a blocking thread, rather than collecting it
    /// first: a full registry is megabytes of JSON (about 1.5 kB per instance), and holding
    /// the whole document next to what is parsed from it doubles the memory a refresh
    /// needs, memory the allocator then keeps. Streamed, the document costs a buffer.
    async fn parse_streamed<T: DeserializeOwned + Send + 'static>(
        &self,
        peer: &Peer,
        response: reqwest::Response,
    ) -> Result<T, PeerError> {
        let body = response.bytes_stream().map_err(std::io::Error::other);
        let reader = SyncIoBridge::new(StreamReader::new(Box::pin(body)));
        let parsed = tokio::task::spawn_blocking(move || {
            serde_json::from_reader::<_, T>(std::io::BufReader::new(reader))
        })
        .await
        .map_err(|e| PeerError::Connect {
            peer: peer.display().to_owned(),
            detail: format!("the parse stopped: {e}"),
        })?;
        parsed.map_err(|e| {
            if !e.is_io() {
                return PeerError::Malformed {
                    peer: peer.display().to_owned(),
                    detail: e.to_string(),
                };
            }
            // The body broke off: say why as a request error would (timeout, reset).
            let io = std::io::Error::from(e);
            match io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
            {
                Some(error) => self.classify(peer, error),
                None => PeerError::Connect {
                    peer: peer.display().to_owned(),
                    detail: io.to_string(),
                },
            }
        })
    }

    /// `GET apps` (or `apps/delta`) from the first peer that answers; peers are tried in order.
    pub async fn get_applications(
        &self,
        delta: bool,
    ) -> Result<ApplicationsEnvelope, Vec<PeerError>> {
        let mut errors = Vec::new();
        for peer in &self.peers {
            let url = if delta {
                peer.url(&["delta"])
            } else {
                peer.url(&[])
            };
            let result = match self.respond(peer, Method::GET, url).await {
                Ok(response) => self.parse_streamed(peer, response).await,
                Err(error) => Err(error),
            };
            match result {
                Ok(apps) => return Ok(apps),
                Err(error) if error.try_next_peer() => errors.push(error),
                Err(error) => {
                    errors.push(error);
                    return Err(errors);
                }
            }
        }
        Err(errors)
    }

    /// `PUT apps/{APP}/{id}/status?value=OUT_OF_SERVICE` or `DELETE .../status?value=UP`.
    ///
    /// Online is a DELETE of the override, never a PUT of UP: a PUT would pin an UP override
    /// that outlives the instance's own later OUT_OF_SERVICE (§1.4). `value=UP` makes the
    /// instance UP at once instead of UNKNOWN until its next heartbeat.
    pub async fn write_status(
        &self,
        peer: &Peer,
        app: &str,
        id: &str,
        status: Status,
    ) -> Result<(), PeerError> {
        let mut url = peer.url(&[app, id, "status"]);
        url.query_pairs_mut().append_pair("value", status.as_str());
        let method = match status {
            Status::Up => Method::DELETE,
            _ => Method::PUT,
        };
        self.send(peer, method, url).await.map(|_| ())
    }

    /// `GET apps/{APP}/{id}`: read straight from the registry, not from the response cache,
    /// so it shows a write at once (§1.6).
    pub async fn get_instance(
        &self,
        peer: &Peer,
        app: &str,
        id: &str,
    ) -> Result<InstanceInfo, PeerError> {
        let body = self.send(peer, Method::GET, peer.url(&[app, id])).await?;
        serde_json::from_slice::<InstanceEnvelope>(&body)
            .map(|envelope| envelope.instance)
            .map_err(|e| PeerError::Malformed {
                peer: peer.display().to_owned(),
                detail: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_base_path_styles_append_apps_and_encode_segments() {
        for base in [
            "http://h:8761/eureka",
            "http://h:8761/eureka/",
            "http://h:8761/eureka/v2",
        ] {
            let peer = Peer::new(base.parse().unwrap());
            let url = peer.url(&["ORDER-SERVICE", "10.0.0.5:order/service:8080", "status"]);
            assert!(
                url.path()
                    .ends_with("/apps/ORDER-SERVICE/10.0.0.5:order%2Fservice:8080/status"),
                "{url}"
            );
            assert!(url.path().starts_with("/eureka/"), "{url}");
        }
    }

    #[test]
    fn credentials_leave_the_url() {
        let peer = Peer::new("http://user:p%40ss@h:8761/eureka".parse().unwrap());
        assert_eq!(peer.display(), "http://h:8761/eureka/");
        let (user, password) = peer.user.clone().unwrap();
        assert_eq!(user, "user");
        assert_eq!(password.as_deref(), Some("p@ss"));
    }

    #[test]
    fn failover_and_write_outcomes_follow_the_protocol_notes() {
        let status = |status| PeerError::Status {
            peer: "p".into(),
            status,
            body: String::new(),
        };
        for code in [403, 307, 500, 503] {
            assert!(status(code).try_next_peer(), "{code}");
        }
        assert!(!status(404).try_next_peer());
        assert_eq!(status(404).write_outcome(), PeerOutcome::NotFound);
        assert_eq!(status(500).write_outcome(), PeerOutcome::Refused);
        assert_eq!(status(400).write_outcome(), PeerOutcome::Refused);
        assert_eq!(status(503).write_outcome(), PeerOutcome::Unreachable);
        assert_eq!(status(403).write_outcome(), PeerOutcome::Unreachable);
    }
}
