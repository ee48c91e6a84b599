//! The znode Spring Cloud Zookeeper writes through Curator's ServiceDiscovery
//! (Curator's `JsonInstanceSerializer` writing Spring Cloud Zookeeper's `ZookeeperInstance`
//! payload), read and rewritten without losing anything.
//!
//! The document is kept as generic JSON so that a rewrite changes
//! `payload.metadata.instance_status` and nothing else: `payload."@class"` above all, without
//! which Curator's consumers fail on the whole service.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::domain::Status;

/// The metadata key Spring Cloud Zookeeper keeps the status in.
pub const STATUS_KEY: &str = "instance_status";

/// What synchspeed reads from an instance znode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The service name (`name`), as registered: the znode path uses it unchanged.
    pub name: String,
    /// The instance id (`id`): the znode's own name.
    pub id: String,
    /// An IP, or a host name (Spring's default without `prefer-ip-address`).
    pub address: String,
    pub port: u16,
    /// `registrationTimeUTC`, ms since the epoch: a re-registration keeps it, a restart not.
    pub registered_at: Option<i64>,
    pub status: Status,
    pub metadata: BTreeMap<String, String>,
}

/// Why a znode's data is not a Curator service instance this code can read or rewrite.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("not valid JSON ({0})")]
    Json(#[from] serde_json::Error),
    #[error("not a JSON object, so not a Curator service instance")]
    NotAnObject,
    #[error("no `{0}`: not a Curator service instance")]
    Missing(&'static str),
    #[error("no usable `port`")]
    Port,
    #[error("no `payload` object to keep the status in")]
    NoPayload,
    #[error("`payload.metadata` is not an object")]
    MetadataNotAnObject,
}

/// Reads a znode's data. `Ok(None)`: no data at all (a service's parent node).
pub fn parse(data: &[u8]) -> Result<Option<Registration>, ModelError> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let document: Value = serde_json::from_slice(data)?;
    let object = document.as_object().ok_or(ModelError::NotAnObject)?;
    let text = |field: &'static str| {
        object
            .get(field)
            .and_then(Value::as_str)
            .filter(|value| !value.trim().is_empty())
            .map(str::to_owned)
            .ok_or(ModelError::Missing(field))
    };
    let port = object
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|port| u16::try_from(port).ok())
        .filter(|port| *port != 0)
        .ok_or(ModelError::Port)?;
    let metadata: BTreeMap<String, String> = object
        .get("payload")
        .and_then(|payload| payload.get("metadata"))
        .and_then(Value::as_object)
        .map(|metadata| {
            metadata
                .iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    // Blank or missing means UP (older Spring Cloud left `metadata` empty).
    let status = match metadata.get(STATUS_KEY).map(|s| s.trim()) {
        None | Some("") => Status::Up,
        Some(raw) => Status::from_registry(raw),
    };
    Ok(Some(Registration {
        name: text("name")?,
        id: text("id")?,
        address: text("address")?,
        port,
        registered_at: object.get("registrationTimeUTC").and_then(Value::as_i64),
        status,
        metadata,
    }))
}

/// The same document with `payload.metadata.instance_status` set to `status`, every other
/// byte's meaning and every field's order kept. Refuses a document it cannot change safely.
pub fn with_status(data: &[u8], status: Status) -> Result<Vec<u8>, ModelError> {
    let mut document: Value = serde_json::from_slice(data)?;
    let payload = document
        .get_mut("payload")
        .and_then(Value::as_object_mut)
        .ok_or(ModelError::NoPayload)?;
    let metadata = payload
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if metadata.is_null() {
        *metadata = Value::Object(Map::new());
    }
    let metadata = metadata
        .as_object_mut()
        .ok_or(ModelError::MetadataNotAnObject)?;
    metadata.insert(STATUS_KEY.into(), Value::String(status.as_str().into()));
    Ok(serde_json::to_vec(&document)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exactly what Curator 5.4 wrote for a Spring Cloud instance.
    const CAPTURED: &[u8] =
        include_bytes!("../../../tests/fixtures/zookeeper/spring-cloud-instance.json");

    #[test]
    fn a_spring_cloud_instance_is_read() {
        let registration = parse(CAPTURED).unwrap().unwrap();
        assert_eq!(registration.name, "order-service");
        assert_eq!(registration.id, "3f6c2a1e-9d7b-4c1e-8d0a-5b2f1e7c9a10");
        assert_eq!(registration.address, "10.0.0.5");
        assert_eq!(registration.port, 8080);
        assert_eq!(registration.registered_at, Some(1_795_312_534_491));
        assert_eq!(registration.status, Status::Up);
    }

    #[test]
    fn a_rewrite_changes_the_status_and_not_one_other_byte() {
        let rewritten = with_status(CAPTURED, Status::OutOfService).unwrap();
        let original = String::from_utf8(CAPTURED.to_vec()).unwrap();
        let expected = original.trim_end().replace(
            "\"instance_status\":\"UP\"",
            "\"instance_status\":\"OUT_OF_SERVICE\"",
        );
        assert_eq!(String::from_utf8(rewritten).unwrap(), expected);
    }

    #[test]
    fn a_missing_or_blank_status_is_up_and_a_missing_metadata_is_created() {
        let bare = br#"{"name":"a","id":"1","address":"h","port":1,"payload":{"@class":"X","metadata":null}}"#;
        assert_eq!(parse(bare).unwrap().unwrap().status, Status::Up);
        let rewritten = with_status(bare, Status::OutOfService).unwrap();
        assert_eq!(
            String::from_utf8(rewritten).unwrap(),
            r#"{"name":"a","id":"1","address":"h","port":1,"payload":{"@class":"X","metadata":{"instance_status":"OUT_OF_SERVICE"}}}"#
        );
    }

    #[test]
    fn broken_znodes_are_refused_not_guessed() {
        assert_eq!(parse(b"").unwrap(), None, "a service's parent node");
        assert!(
            parse(b"{\"name\":")
                .unwrap_err()
                .to_string()
                .contains("not valid JSON")
        );
        assert!(parse(b"[1,2]").is_err());
        assert!(parse(br#"{"name":"a","id":"1","address":"h"}"#).is_err());
        assert!(with_status(br#"{"name":"a","payload":"text"}"#, Status::Up).is_err());
        assert!(with_status(b"not json", Status::Up).is_err());
    }
}
