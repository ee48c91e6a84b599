//! Eureka's JSON, with every quirk its codecs produce (`EurekaJacksonCodec` and
//! `InstanceInfoSerializer` in Netflix/eureka; Spring Cloud's `CloudJacksonJson` has the same
//! shape):
//!
//! * `application` and `instance` are arrays from the Jackson codecs but a bare object from the
//!   legacy XStream/Jettison ones (one-element lists), and may be missing (empty registry);
//! * `port.$` is a number (Jackson) or a string (legacy); `@enabled` a string or a bool;
//! * `@Auto` fields (`lastUpdatedTimestamp`, `lastDirtyTimestamp`) are strings;
//! * `overriddenStatus` also arrives under the legacy key `overriddenstatus` (not read: `status`
//!   is already the status the override made);
//! * empty metadata is `{"@class": "java.util.Collections$EmptyMap"}`;
//! * `versions__delta` and `apps__hashcode` are strings, keys with `_` doubled.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::domain::ip::canonical;
use crate::domain::{AppName, Instance, InstanceKey, Status};

#[derive(Debug, Deserialize)]
pub struct ApplicationsEnvelope {
    pub applications: Applications,
}

#[derive(Debug, Deserialize)]
pub struct Applications {
    #[serde(
        rename = "apps__hashcode",
        default,
        deserialize_with = "lenient_string"
    )]
    pub apps_hashcode: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub application: Vec<Application>,
}

#[derive(Debug, Deserialize)]
pub struct Application {
    #[serde(default)]
    pub name: String,
    #[serde(default, deserialize_with = "one_or_many")]
    pub instance: Vec<InstanceInfo>,
}

#[derive(Debug, Deserialize)]
pub struct InstanceEnvelope {
    pub instance: InstanceInfo,
}

/// One instance as synchspeed keeps it from Eureka's document: only what it uses, derived
/// while the document is parsed. A full registry holds tens of thousands of instances, each
/// with a dozen URLs and timestamps synchspeed never reads; keeping the wire form of all of
/// them until the last one is parsed would double the memory a refresh needs, and what a
/// refresh frees the allocator rarely returns. So each one is reduced as soon as it is read.
#[derive(Debug, Deserialize)]
#[serde(from = "WireInstance")]
pub struct InstanceInfo {
    /// `InstanceInfo.getId()`.
    id: Option<Arc<str>>,
    /// `app` as sent; old payloads leave it out and the enclosing application names it.
    app: Option<String>,
    address: Option<IpAddr>,
    port: Option<u16>,
    status: Status,
    registered_at: Option<i64>,
    metadata: BTreeMap<String, String>,
    /// `actionType: DELETED` in a delta.
    pub deleted: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireInstance {
    #[serde(default, deserialize_with = "lenient_string")]
    instance_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    host_name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    app: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    ip_addr: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    status: Option<String>,
    #[serde(default)]
    port: Option<PortInfo>,
    #[serde(default)]
    data_center_info: Option<DataCenterInfo>,
    #[serde(default)]
    lease_info: Option<LeaseInfo>,
    #[serde(default, deserialize_with = "string_map")]
    metadata: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "lenient_string")]
    action_type: Option<String>,
}

#[derive(Deserialize)]
struct PortInfo {
    #[serde(rename = "$", default, deserialize_with = "lenient_string")]
    number: Option<String>,
}

#[derive(Deserialize)]
struct DataCenterInfo {
    #[serde(default, deserialize_with = "lenient_string")]
    name: Option<String>,
    #[serde(default, deserialize_with = "string_map")]
    metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaseInfo {
    #[serde(default, deserialize_with = "lenient_string")]
    registration_timestamp: Option<String>,
}

impl From<WireInstance> for InstanceInfo {
    fn from(wire: WireInstance) -> Self {
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        // `InstanceInfo.getId()`: `instanceId` if non-empty, else the AWS `instance-id`, else
        // `hostName`.
        let id = non_empty(wire.instance_id)
            .or_else(|| {
                wire.data_center_info
                    .filter(|dc| dc.name.as_deref() == Some("Amazon"))
                    .and_then(|mut dc| dc.metadata.remove("instance-id"))
                    .filter(|s| !s.is_empty())
            })
            .or_else(|| non_empty(wire.host_name.clone()));
        let address = [wire.ip_addr.as_deref(), wire.host_name.as_deref()]
            .into_iter()
            .flatten()
            .find_map(|candidate| candidate.trim().parse::<IpAddr>().ok())
            .map(canonical);
        let port = wire
            .port
            .and_then(|p| p.number)
            .and_then(|n| n.trim().parse::<u16>().ok());
        let registered_at = wire
            .lease_info
            .and_then(|l| l.registration_timestamp)
            .and_then(|t| t.trim().parse::<i64>().ok())
            .filter(|t| *t > 0);
        // A missing status is UNKNOWN, like `toEnum`.
        let status = wire
            .status
            .as_deref()
            .map(Status::from_registry)
            .unwrap_or(Status::Unknown);
        Self {
            id: id.map(Arc::from),
            app: wire.app,
            address,
            port,
            status,
            registered_at,
            metadata: wire.metadata,
            deleted: wire.action_type.as_deref() == Some("DELETED"),
        }
    }
}

/// Why an instance in an otherwise valid document cannot be indexed: what it lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("it has no id (no instanceId, no AWS instance-id, no hostName)")]
    Id,
    #[error("it has no app name")]
    App,
    #[error("neither ipAddr nor hostName is an IP address")]
    Address,
    #[error("its port is missing or not a port number")]
    Port,
}

impl InstanceInfo {
    pub fn status(&self) -> Status {
        self.status
    }

    /// The identity, even for an instance that cannot be indexed (hash code bookkeeping).
    pub fn key(&self, app_fallback: &str) -> Option<InstanceKey> {
        let app = AppName::parse(self.app.as_deref().unwrap_or(app_fallback)).ok()?;
        Some(InstanceKey {
            app,
            instance_id: self.id.clone()?,
        })
    }

    /// The instance as synchspeed indexes it, its parts moved rather than copied (a full
    /// registry is tens of thousands of these). `app_fallback` is the enclosing application's
    /// name, for old payloads without `app`.
    pub fn into_instance(self, app_fallback: &str) -> Result<Instance, Unindexable> {
        let key = self.key(app_fallback);
        let why = match (&key, self.address, self.port) {
            (Some(key), Some(ip), Some(port)) => {
                return Ok(Instance {
                    app: key.app.clone(),
                    instance_id: key.instance_id.clone(),
                    ip,
                    port,
                    status: self.status,
                    registered_at: self.registered_at,
                    metadata: self.metadata,
                });
            }
            (None, ..) if self.id.is_none() => Unusable::Id,
            (None, ..) => Unusable::App,
            (Some(_), None, _) => Unusable::Address,
            (Some(_), Some(_), None) => Unusable::Port,
        };
        Err(Unindexable {
            key,
            status: self.status,
            why,
        })
    }
}

/// An instance the registry has but synchspeed cannot index, with what is known of it: the
/// registry's hash code still counts it.
#[derive(Debug)]
pub struct Unindexable {
    /// `None` without an id or an app name.
    pub key: Option<InstanceKey>,
    pub status: Status,
    pub why: Unusable,
}

/// `apps__hashcode`: for each status with a non-zero count, in alphabetical order of its name,
/// `STATUS_count_` (`Applications.getReconcileHashCode`). Counts every instance of every app.
pub fn reconcile_hash(counts: &HashMap<Status, usize>) -> String {
    let mut hash = String::new();
    for status in Status::ALPHABETICAL {
        if let Some(count) = counts.get(&status).filter(|c| **c > 0) {
            hash.push_str(status.as_str());
            hash.push('_');
            hash.push_str(&count.to_string());
            hash.push('_');
        }
    }
    hash
}

// ---- lenient deserializers ------------------------------------------------------------------

/// A string, number or bool as a string; null and nested values as `None`.
fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

/// Metadata: string values kept, numbers and bools as text, the `@class` marker and nested
/// values dropped.
fn string_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = Option::<BTreeMap<String, serde_json::Value>>::deserialize(deserializer)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .filter(|(key, _)| key != "@class")
        .filter_map(|(key, value)| match value {
            serde_json::Value::String(s) => Some((key, s)),
            serde_json::Value::Number(n) => Some((key, n.to_string())),
            serde_json::Value::Bool(b) => Some((key, b.to_string())),
            _ => None,
        })
        .collect())
}

/// An array, a single object (legacy one-element lists), or null/absent (nothing).
fn one_or_many<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    struct OneOrMany<T>(PhantomData<T>);

    impl<'de, T: DeserializeOwned> Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object or a list of objects")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(items)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|one| vec![one])
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }

    deserializer.deserialize_any(OneOrMany(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JACKSON: &str = r#"{"applications":{"versions__delta":"1","apps__hashcode":"OUT_OF_SERVICE_1_UP_1_",
      "application":[{"name":"ORDER-SERVICE","instance":[
        {"instanceId":"10.0.0.5:order-service:8080","hostName":"10.0.0.5","app":"ORDER-SERVICE",
         "ipAddr":"10.0.0.5","status":"OUT_OF_SERVICE","overriddenStatus":"OUT_OF_SERVICE",
         "port":{"$":8080,"@enabled":"true"},"securePort":{"$":443,"@enabled":"false"},"countryId":1,
         "dataCenterInfo":{"@class":"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo","name":"MyOwn"},
         "leaseInfo":{"renewalIntervalInSecs":30,"durationInSecs":90,"registrationTimestamp":1700000000000,
           "lastRenewalTimestamp":1700000300000,"evictionTimestamp":0,"serviceUpTimestamp":1700000000500},
         "metadata":{"management.port":"8081"},"vipAddress":"order-service",
         "isCoordinatingDiscoveryServer":"false","lastUpdatedTimestamp":"1700000310000",
         "lastDirtyTimestamp":"1700000000400","actionType":"MODIFIED"},
        {"instanceId":"10.0.0.6:order-service:8080","hostName":"10.0.0.6","app":"ORDER-SERVICE",
         "ipAddr":"10.0.0.6","status":"UP","port":{"$":8080,"@enabled":"true"},
         "metadata":{"@class":"java.util.Collections$EmptyMap"}}]}]}}"#;

    #[test]
    fn parses_the_jackson_codec_output() {
        let apps: ApplicationsEnvelope = serde_json::from_str(JACKSON).unwrap();
        let apps = apps.applications;
        let mut infos = apps
            .application
            .into_iter()
            .next()
            .unwrap()
            .instance
            .into_iter();
        let first = infos
            .next()
            .unwrap()
            .into_instance("ORDER-SERVICE")
            .unwrap();
        assert_eq!(first.status, Status::OutOfService);
        assert_eq!(first.port, 8080);
        assert_eq!(first.registered_at, Some(1_700_000_000_000));
        assert_eq!(first.metadata["management.port"], "8081");
        let second = infos
            .next()
            .unwrap()
            .into_instance("ORDER-SERVICE")
            .unwrap();
        assert!(
            second.metadata.is_empty(),
            "the @class marker is not metadata"
        );
    }

    #[test]
    fn accepts_legacy_single_objects_string_ports_and_lower_case_override_key() {
        let legacy = r#"{"applications":{"versions__delta":1,"apps__hashcode":"UP_1_",
          "application":{"name":"order-service","instance":{
            "hostName":"10.0.0.7","ipAddr":"10.0.0.7","status":"UP","overriddenstatus":"UNKNOWN",
            "port":{"$":"8080","@enabled":true},"leaseInfo":{"registrationTimestamp":"1700000000000"}}}}}"#;
        let apps: ApplicationsEnvelope = serde_json::from_str(legacy).unwrap();
        let app = apps.applications.application.into_iter().next().unwrap();
        let info = app.instance.into_iter().next().unwrap();
        let instance = info.into_instance(&app.name).unwrap();
        assert_eq!(instance.app.as_str(), "ORDER-SERVICE");
        assert_eq!(
            &*instance.instance_id, "10.0.0.7",
            "hostName is the id of last resort"
        );
        assert_eq!(instance.port, 8080);
        assert_eq!(instance.registered_at, Some(1_700_000_000_000));
    }

    #[test]
    fn empty_registries_parse() {
        for body in [
            r#"{"applications":{"versions__delta":"1","apps__hashcode":"","application":[]}}"#,
            r#"{"applications":{"versions__delta":"1","apps__hashcode":""}}"#,
            r#"{"applications":{"application":null}}"#,
        ] {
            let apps: ApplicationsEnvelope = serde_json::from_str(body).unwrap();
            assert!(apps.applications.application.is_empty(), "{body}");
        }
    }

    #[test]
    fn aws_instance_id_is_used_when_instance_id_is_blank() {
        let body = r#"{"instance":{"instanceId":"","hostName":"ip-10-0-0-8","ipAddr":"10.0.0.8",
          "app":"A","status":"UP","port":{"$":80},
          "dataCenterInfo":{"@class":"com.netflix.appinfo.AmazonInfo","name":"Amazon",
            "metadata":{"instance-id":"i-0abc"}}}}"#;
        let info: InstanceEnvelope = serde_json::from_str(body).unwrap();
        let instance = info.instance.into_instance("A").unwrap();
        assert_eq!(&*instance.instance_id, "i-0abc");
    }

    #[test]
    fn unusable_instances_say_why() {
        let body = r#"{"instance":{"instanceId":"x","app":"A","hostName":"db.internal","status":"UP","port":{"$":80}}}"#;
        let info: InstanceEnvelope = serde_json::from_str(body).unwrap();
        let unindexable = info.instance.into_instance("A").unwrap_err();
        assert_eq!(unindexable.why, Unusable::Address);
        assert_eq!(unindexable.key.map(|k| k.instance_id), Some("x".into()));
        let body = r#"{"instance":{"instanceId":"x","app":"A","ipAddr":"10.0.0.1","status":"UP","port":{"$":"http"}}}"#;
        let info: InstanceEnvelope = serde_json::from_str(body).unwrap();
        assert_eq!(
            info.instance.into_instance("A").unwrap_err().why,
            Unusable::Port
        );
        let body = r#"{"instance":{"app":"A","ipAddr":"10.0.0.1","status":"UP","port":{"$":80}}}"#;
        let info: InstanceEnvelope = serde_json::from_str(body).unwrap();
        let unindexable = info.instance.into_instance("A").unwrap_err();
        assert_eq!((unindexable.why, unindexable.key), (Unusable::Id, None));
    }

    #[test]
    fn unknown_statuses_are_unknown_and_missing_ones_too() {
        let body = r#"{"instance":{"instanceId":"x","app":"A","ipAddr":"10.0.0.1","status":"HIBERNATING","port":{"$":80}}}"#;
        let info: InstanceEnvelope = serde_json::from_str(body).unwrap();
        assert_eq!(info.instance.status(), Status::Unknown);
    }

    #[test]
    fn reconcile_hash_matches_eurekas_format() {
        let counts = HashMap::from([
            (Status::Up, 3),
            (Status::OutOfService, 1),
            (Status::Down, 1),
            (Status::Starting, 0),
        ]);
        assert_eq!(reconcile_hash(&counts), "DOWN_1_OUT_OF_SERVICE_1_UP_3_");
        assert_eq!(reconcile_hash(&HashMap::new()), "");
    }

    #[test]
    fn truncated_documents_are_errors_not_empty_registries() {
        let truncated = &JACKSON[..JACKSON.len() / 2];
        assert!(serde_json::from_str::<ApplicationsEnvelope>(truncated).is_err());
    }
}
