//! Following one operation to its settle: its event stream, shown as it comes; if the stream
//! breaks off (a restart, a proxy's timeout, a server gone silent), the operation is read
//! again every half second until it settles or the deadline passes. Nothing here waits past
//! the deadline by more than one call's `--request-timeout`.

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;
use tokio::time::Instant;

use super::client::{Client, Failure};
use super::display::Display;

/// How often a stream that broke off is replaced by reading the operation.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// The operation as it stands when it settled, or when `deadline` passed (still
/// `in_progress`). `known` is the operation as last seen, shown when the deadline passes
/// with nothing newer read.
pub async fn follow(
    client: &Client,
    id: &str,
    known: Option<Value>,
    deadline: Instant,
    display: &mut Display,
) -> Result<Value, Failure> {
    let path = format!("/api/v1/operations/{id}/events");
    let mut last = known;
    let streamed =
        tokio::time::timeout_at(deadline, stream(client, &path, display, &mut last)).await;
    if let Ok(Ok(Some(settled))) = streamed {
        return Ok(settled);
    }
    if let Ok(Err(failure)) = streamed {
        return Err(failure);
    }
    // Timed out or broken off: the operation as the journal has it, until it settles.
    let path = format!("/api/v1/operations/{id}");
    loop {
        let read = client.expect_ok(Method::GET, &path, &[]);
        let operation = match (tokio::time::timeout_at(deadline, read).await, last.take()) {
            (Ok(read), _) => read?,
            // The deadline passed during the read: what was seen last is the answer.
            (Err(_), Some(seen)) => return Ok(seen),
            // Nothing seen yet: the read goes on, bounded by its own --request-timeout.
            (Err(_), None) => client.expect_ok(Method::GET, &path, &[]).await?,
        };
        if operation["state"] != "in_progress" || Instant::now() >= deadline {
            return Ok(operation);
        }
        last = Some(operation);
        tokio::time::sleep(POLL_EVERY.min(deadline - Instant::now())).await;
    }
}

/// Reads the stream; the settled operation, or `None` when it ended before the settle.
/// `last` is kept current with what the stream said, for the reads after it.
async fn stream(
    client: &Client,
    path: &str,
    display: &mut Display,
    last: &mut Option<Value>,
) -> Result<Option<Value>, Failure> {
    let response = client.stream(path).await?;
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    // A stream that stays silent past its keep-alive is broken off, like a cut one.
    while let Ok(Some(chunk)) = tokio::time::timeout(client.silence(), body.next()).await {
        let Ok(chunk) = chunk else {
            return Ok(None);
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let Some((event, data)) = parse_event(&block) else {
                continue;
            };
            match event.as_str() {
                "snapshot" | "started" | "settled" => {
                    let operation = data["operation"].clone();
                    display.operation_or_end(&event, &operation);
                    if event == "settled" || operation["state"] != "in_progress" {
                        return Ok(Some(operation));
                    }
                    *last = Some(operation);
                }
                "node" | "progress" => {
                    let slot = data["slot"].as_u64().unwrap_or(0) as usize;
                    display.node(slot, &data["node"]);
                    if let Some(node) = last.as_mut().and_then(|op| op["gateways"].get_mut(slot)) {
                        *node = data["node"].clone();
                    }
                }
                _ => {}
            }
        }
    }
    Ok(None)
}

/// An event's name and its JSON data; `None` for a comment (a keep-alive) or an event
/// whose data is no JSON.
pub fn parse_event(block: &str) -> Option<(String, Value)> {
    let mut event = None;
    let mut data = String::new();
    for line in block.lines() {
        if let Some(name) = line.strip_prefix("event:") {
            event = Some(name.trim().to_owned());
        } else if let Some(text) = line.strip_prefix("data:") {
            data.push_str(text.strip_prefix(' ').unwrap_or(text));
        }
    }
    Some((event?, serde_json::from_str(&data).ok()?))
}

impl Display {
    /// The first view of the operation is drawn whole; a later one only moves the nodes.
    fn operation_or_end(&mut self, event: &str, operation: &Value) {
        if event == "snapshot" {
            self.operation(operation);
        } else {
            for (slot, node) in super::display::nodes_of(operation) {
                self.node(slot, node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_its_name_and_its_data_and_comments_are_skipped() {
        let (event, data) = parse_event("id: 7\nevent: node\ndata: {\"slot\":1}\n\n").unwrap();
        assert_eq!(event, "node");
        assert_eq!(data["slot"], 1);
        assert!(parse_event(":\n\n").is_none());
    }
}
