//! Requests that do not parse as HTTP, answered in the envelope like every other error.
//!
//! hyper answers a request it cannot parse (a malformed request line, header or length, a TLS
//! hello on the plain port, a head past its own limits) by itself, before the router sees
//! anything: a bare `400 Bad Request` (or 414, 431, 505) with `content-length: 0`, no body and
//! no request id, then it closes the connection. It has no hook to shape that answer, so the
//! connection's writer recognises it on its way out and writes the envelope instead, with a
//! request id that the log line carries too.
//!
//! The canned answer is recognised by what no answer of the router can have: a head with no
//! `x-request-id` (`observe.rs` puts one on every answer). It is always the last thing hyper
//! writes on the connection, so it is looked for at the end of what hyper hands over.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use hyper::rt::{Read, ReadBufCursor, Write};
use tracing::info;

use crate::telemetry::{Metrics, RequestLabels};

/// The route label of requests that never reached a route.
const UNPARSED_ROUTE: &str = "unparsed";

/// A connection's IO, with hyper's own error answers replaced by the envelope.
pub struct Enveloped<T> {
    inner: T,
    /// Bytes taken from hyper (its whole buffer, so it never splits a head) and not yet
    /// written to the peer.
    pending: Vec<u8>,
    written: usize,
    peer: SocketAddr,
    metrics: Arc<Metrics>,
}

impl<T> Enveloped<T> {
    pub fn new(inner: T, peer: SocketAddr, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            written: 0,
            peer,
            metrics,
        }
    }
}

/// Where hyper's own error head starts in `buffer`, and its status, when the buffer ends with
/// one.
fn canned_head(buffer: &[u8]) -> Option<(usize, u16)> {
    const START: &[u8] = b"HTTP/1.1 ";
    let start = buffer
        .windows(START.len())
        .rposition(|window| window == START)?;
    let head = &buffer[start..];
    let end = head.windows(4).position(|window| window == b"\r\n\r\n")?;
    if end + 4 != head.len() {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?.to_ascii_lowercase();
    if text.contains("\r\nx-request-id:") || !text.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let status: u16 = text.get(START.len()..START.len() + 3)?.parse().ok()?;
    (status >= 400).then_some((start, status))
}

/// The envelope for one of hyper's own answers, with its status kept.
fn envelope(status: u16, request_id: &str) -> Vec<u8> {
    let (reason, code, message) = match status {
        414 => (
            "URI Too Long",
            "uri_too_long",
            "the request's path and query are longer than synchspeed reads",
        ),
        431 => (
            "Request Header Fields Too Large",
            "headers_too_large",
            "the request's head is larger than synchspeed reads",
        ),
        505 => (
            "HTTP Version Not Supported",
            "http_version_not_supported",
            "synchspeed speaks HTTP/1.0 and HTTP/1.1",
        ),
        _ => (
            "Bad Request",
            "bad_request",
            "the request does not parse as HTTP/1.1 (its request line, a header or its length \
             is malformed; TLS is not spoken on this port)",
        ),
    };
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-request-id: {request_id}\r\nx-content-type-options: nosniff\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl<T: Write + Unpin> Enveloped<T> {
    /// Writes what is pending; ready when nothing is.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// hyper's buffer with its own error head replaced by the envelope.
    fn replaced(&self, buffer: &[u8], start: usize, status: u16) -> Vec<u8> {
        let request_id = ulid::Ulid::new().to_string();
        info!(peer = %self.peer, request_id = %request_id, status,
            "refused a request that does not parse as HTTP");
        self.metrics
            .http_requests
            .get_or_create(&RequestLabels {
                method: "other".to_owned(),
                route: UNPARSED_ROUTE.to_owned(),
                status,
            })
            .inc();
        let mut bytes = buffer[..start].to_vec();
        bytes.extend(envelope(status, &request_id));
        bytes
    }
}

impl<T: Read + Unpin> Read for Enveloped<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Enveloped<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        match canned_head(buf) {
            Some((start, status)) => {
                self.pending = self.replaced(buf, start, status);
                // Taken whole: what the socket does not take now is written by the next
                // write, flush or shutdown.
                let _ = self.drain(cx)?;
                Poll::Ready(Ok(buf.len()))
            }
            None => Pin::new(&mut self.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    /// Not vectored: hyper then hands over one flat buffer, in which its head is whole.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYPER_400: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\
        date: Tue, 01 Dec 2026 11:23:36 GMT\r\n\r\n";

    #[test]
    fn hyper_s_own_answer_is_found_alone_and_after_an_answer_of_the_router() {
        assert_eq!(canned_head(HYPER_400), Some((0, 400)));
        let routed = b"HTTP/1.1 200 OK\r\nx-request-id: 01M8\r\ncontent-length: 15\r\n\r\n\
            {\"status\":\"ok\"}";
        let both = [&routed[..], HYPER_400].concat();
        assert_eq!(canned_head(&both), Some((routed.len(), 400)));
    }

    #[test]
    fn answers_of_the_router_are_never_taken_for_it() {
        let empty_routed =
            b"HTTP/1.1 404 Not Found\r\nX-Request-Id: 01M8\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(canned_head(empty_routed), None);
        let with_body =
            b"HTTP/1.1 400 Bad Request\r\nx-request-id: 01M8\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(canned_head(with_body), None);
        assert_eq!(
            canned_head(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(canned_head(&HYPER_400[..20]), None);
    }

    #[test]
    fn the_envelope_keeps_the_status_and_carries_the_request_id() {
        let text = String::from_utf8(envelope(431, "01ABC")).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("\r\nx-request-id: 01ABC"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "headers_too_large");
    }
}
