//! What Nacos answers, parsed: instances (v1 catalog, v3 admin list), service lists, the
//! login, and what an error body says. Nothing here trusts a body's shape: every field that
//! a write depends on is checked, and an instance that cannot be read is skipped, logged.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::domain::{AppName, Instance, Status};

/// Where a registration sits in Nacos, in Nacos's own spelling: a write names all four.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Placement {
    pub service: String,
    pub group: String,
    pub cluster: String,
}

impl Placement {
    /// synchspeed's id of a registration: what Nacos's default ("simple") id generator
    /// gives, `ip#port#cluster#group@@service`, built from the fields so that it names one
    /// registration whatever generator the server uses.
    pub fn instance_id(&self, ip: IpAddr, port: u16) -> String {
        format!(
            "{ip}#{port}#{}#{}@@{}",
            self.cluster, self.group, self.service
        )
    }

    /// The placement an id of [`Placement::instance_id`]'s shape names, with its port.
    pub fn of_id(instance_id: &str) -> Option<(Placement, u16)> {
        let mut parts = instance_id.splitn(4, '#');
        let (_ip, port, cluster, grouped) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let (group, service) = grouped.split_once("@@")?;
        let port = port.parse().ok()?;
        if cluster.is_empty() || group.is_empty() || service.is_empty() {
            return None;
        }
        Some((
            Placement {
                service: service.to_owned(),
                group: group.to_owned(),
                cluster: cluster.to_owned(),
            },
            port,
        ))
    }
}

/// One instance as the catalog (v1) and the admin list (v3) show it. Unknown fields are
/// ignored; missing optional ones take Nacos's own defaults.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawInstance {
    ip: String,
    port: i64,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "yes")]
    healthy: bool,
    #[serde(default)]
    cluster_name: Option<String>,
    #[serde(default)]
    metadata: Option<HashMap<String, Value>>,
}

fn yes() -> bool {
    true
}

/// An instance of `service` in `group`, as synchspeed keeps it. Disabled is OUT_OF_SERVICE
/// whatever its health; enabled and healthy is UP; enabled and unhealthy is DOWN (no gateway
/// node, and nothing to re-assert until it is healthy again).
fn instance_of(raw: RawInstance, group: &str, service: &str) -> Result<Instance, String> {
    let ip =
        crate::domain::ip::parse_ip(raw.ip.trim()).map_err(|e| format!("ip '{}': {e}", raw.ip))?;
    let port = u16::try_from(raw.port)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("port {} is not a TCP port", raw.port))?;
    let app = AppName::parse(service).map_err(|e| format!("service name '{service}': {e}"))?;
    let cluster = raw
        .cluster_name
        .filter(|c| !c.trim().is_empty())
        .unwrap_or_else(|| "DEFAULT".to_owned());
    let placement = Placement {
        service: service.to_owned(),
        group: group.to_owned(),
        cluster,
    };
    let metadata: BTreeMap<String, String> = raw
        .metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| match value {
            Value::String(text) => (key, text),
            other => (key, other.to_string()),
        })
        .collect();
    Ok(Instance {
        app,
        instance_id: placement.instance_id(ip, port).into(),
        ip,
        port,
        status: match (raw.enabled, raw.healthy) {
            (false, _) => Status::OutOfService,
            (true, true) => Status::Up,
            (true, false) => Status::Down,
        },
        registered_at: None,
        metadata,
    })
}

/// One page of a service's instances.
#[derive(Debug)]
pub struct InstancePage {
    pub instances: Vec<Instance>,
    /// How many the server says there are in all (v1 pages; v3 answers everything at once).
    pub count: usize,
    /// Instances that could not be read, with why: logged by the caller, never written.
    pub skipped: Vec<String>,
}

/// `{"list": [...], "count": N}` (v1 `catalog/instances`) or `{"code": 0, "data": [...]}`
/// (v3 `admin/ns/instance/list`).
pub fn instances(body: &[u8], group: &str, service: &str) -> Result<InstancePage, String> {
    let document: Value = serde_json::from_slice(body).map_err(|e| not_json(body, &e))?;
    let (list, count) = match &document {
        Value::Object(fields) if fields.contains_key("list") => {
            let list = fields["list"].as_array().ok_or("'list' is not an array")?;
            let count = fields
                .get("count")
                .and_then(Value::as_u64)
                .map_or(list.len(), |n| usize::try_from(n).unwrap_or(usize::MAX));
            (list, count)
        }
        Value::Object(_) => {
            let data = v3_data(&document)?;
            let list = data.as_array().ok_or("'data' is not an array")?;
            (list, list.len())
        }
        _ => return Err("not a JSON object".into()),
    };
    let mut page = InstancePage {
        instances: Vec::with_capacity(list.len()),
        count,
        skipped: Vec::new(),
    };
    for item in list {
        match serde_json::from_value::<RawInstance>(item.clone())
            .map_err(|e| e.to_string())
            .and_then(|raw| instance_of(raw, group, service))
        {
            Ok(instance) => page.instances.push(instance),
            Err(why) => page.skipped.push(why),
        }
    }
    Ok(page)
}

/// One instance's detail (v1 `GET /v1/ns/instance`, v3 `GET /v3/admin/ns/instance`): the
/// instance, and whether the answer said `enabled` (official 2.x's v1 detail does not).
pub fn detail(body: &[u8], group: &str, service: &str) -> Result<(Instance, bool), String> {
    let document: Value = serde_json::from_slice(body).map_err(|e| not_json(body, &e))?;
    let item = if document.get("ip").is_some() {
        &document
    } else {
        v3_data(&document)?
    };
    let said_enabled = item.get("enabled").is_some_and(Value::is_boolean);
    let raw: RawInstance = serde_json::from_value(item.clone()).map_err(|e| e.to_string())?;
    Ok((instance_of(raw, group, service)?, said_enabled))
}

/// Whether an error answer to a detail read means the instance is not there: Nacos's "not
/// found" texts, and rnacos's bare `error` (its answer to an instance it does not have).
pub fn detail_says_absent(body: &[u8]) -> bool {
    says_not_found(body) || String::from_utf8_lossy(body).trim() == "error"
}

/// One page of a group's service names, with the total the server counts.
#[derive(Debug)]
pub struct ServicePage {
    pub names: Vec<String>,
    pub count: usize,
}

/// `{"count": N, "doms": [...]}` (v1 `service/list`) or the v3 `Result` of a `Page` of
/// service views, `{"code": 0, "data": {"totalCount": N, "pageItems": [{"name", "groupName"}]}}`
/// (v3's group parameter is a search: only the items of `group` itself are kept).
pub fn services(body: &[u8], group: &str) -> Result<ServicePage, String> {
    let document: Value = serde_json::from_slice(body).map_err(|e| not_json(body, &e))?;
    if let Some(doms) = document.get("doms") {
        let names = doms
            .as_array()
            .ok_or("'doms' is not an array")?
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect::<Vec<_>>();
        let count = document
            .get("count")
            .and_then(Value::as_u64)
            .map_or(names.len(), |n| usize::try_from(n).unwrap_or(usize::MAX));
        return Ok(ServicePage { names, count });
    }
    let data = v3_data(&document)?;
    let items = data
        .get("pageItems")
        .and_then(Value::as_array)
        .ok_or("'data.pageItems' is not an array")?;
    let count = data
        .get("totalCount")
        .and_then(Value::as_u64)
        .map_or(items.len(), |n| usize::try_from(n).unwrap_or(usize::MAX));
    let names = items
        .iter()
        .filter(|item| item.get("groupName").and_then(Value::as_str) == Some(group))
        .filter_map(|item| item.get("name").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    Ok(ServicePage { names, count })
}

/// The `data` of a v3 `Result`, or what its `code` and `message` say went wrong.
fn v3_data(document: &Value) -> Result<&Value, String> {
    match document.get("code").and_then(Value::as_i64) {
        Some(0) => document
            .get("data")
            .ok_or_else(|| "a v3 answer without 'data'".to_owned()),
        Some(code) => Err(format!(
            "code {code}: {}",
            document
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message")
        )),
        None => Err("neither a v1 list nor a v3 result".into()),
    }
}

/// A login's answer: the token and how long it lives.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Login {
    pub access_token: String,
    /// Seconds. Nacos's default is 18,000 (5 h).
    #[serde(default = "default_token_ttl")]
    pub token_ttl: u64,
}

fn default_token_ttl() -> u64 {
    18_000
}

pub fn login(body: &[u8]) -> Result<Login, String> {
    let login: Login = serde_json::from_slice(body).map_err(|e| not_json(body, &e))?;
    if login.access_token.trim().is_empty() {
        return Err("the login answered no accessToken".into());
    }
    Ok(login)
}

/// Whether a write's 200 answer says it was applied: `ok` (v1) or a v3 `Result` with code 0.
pub fn write_accepted(body: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(body);
    if text.trim() == "ok" {
        return Ok(());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(document) => v3_data(&document).map(|_| ()),
        Err(_) => Err(format!("the write answered '{}'", excerpt(body))),
    }
}

/// Whether an error body names a missing instance or service (Nacos answers these as 400
/// or 500 with a `caused by` text, or a v3 `Result`).
pub fn says_not_found(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    [
        "not found",
        "no ips found",
        "no matched ip",
        "instance not exist",
        "does not exist",
        "not exist",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// Whether a 403 says the token ran out (log in again), rather than "not allowed".
pub fn says_token_expired(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("token expired")
        || text.contains("token invalid")
        || text.contains("token is expired")
        || text.contains("invalid token")
}

/// The start of a body, on one line, for an error message (an HTML page is long).
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 160 {
        format!("{}…", line.chars().take(160).collect::<String>())
    } else {
        line
    }
}

fn not_json(body: &[u8], error: &serde_json::Error) -> String {
    if body.is_empty() {
        "an empty answer".into()
    } else {
        format!("not the JSON expected ({error}): '{}'", excerpt(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_CATALOG: &str = r#"{"list":[
        {"instanceId":"10.0.0.5#8080#DEFAULT#DEFAULT_GROUP@@order-service","ip":"10.0.0.5","port":8080,
         "weight":3.0,"healthy":true,"enabled":false,"ephemeral":true,"clusterName":"DEFAULT",
         "serviceName":"DEFAULT_GROUP@@order-service","metadata":{"preserved.register.source":"SPRING_CLOUD","management.port":"9090"}},
        {"ip":"10.0.0.6","port":8080,"healthy":false,"enabled":true,"clusterName":"DEFAULT","metadata":{}},
        {"ip":"not-an-ip","port":8080},
        {"ip":"10.0.0.7","port":70000}
    ],"count":4}"#;

    #[test]
    fn a_catalog_page_reads_status_from_enabled_and_health_and_skips_what_cannot_be_read() {
        let page = instances(V1_CATALOG.as_bytes(), "DEFAULT_GROUP", "order-service").unwrap();
        assert_eq!(page.count, 4);
        assert_eq!(page.skipped.len(), 2, "{:?}", page.skipped);
        let disabled = &page.instances[0];
        assert_eq!(disabled.app.as_str(), "ORDER-SERVICE");
        assert_eq!(disabled.status, Status::OutOfService);
        assert_eq!(
            &*disabled.instance_id,
            "10.0.0.5#8080#DEFAULT#DEFAULT_GROUP@@order-service"
        );
        assert_eq!(disabled.metadata["management.port"], "9090");
        assert_eq!(page.instances[1].status, Status::Down);
    }

    #[test]
    fn the_id_names_the_placement_in_nacos_spelling() {
        let (placement, port) =
            Placement::of_id("10.0.0.5#8080#DEFAULT#DEFAULT_GROUP@@order-service").unwrap();
        assert_eq!(port, 8080);
        assert_eq!(placement.service, "order-service");
        assert_eq!(placement.group, "DEFAULT_GROUP");
        assert_eq!(placement.cluster, "DEFAULT");
        assert!(Placement::of_id("3f6c2a1e-9d7b").is_none());
        assert!(Placement::of_id("10.0.0.5#x#DEFAULT#G@@s").is_none());
    }

    #[test]
    fn v3_results_are_unwrapped_and_their_errors_said() {
        let body = br#"{"code":0,"message":"success","data":{"totalCount":2,"pageNumber":1,"pagesAvailable":1,
            "pageItems":[{"name":"order-service","groupName":"DEFAULT_GROUP"},{"name":"x","groupName":"DEFAULT_GROUP_2"}]}}"#;
        let page = services(body, "DEFAULT_GROUP").unwrap();
        assert_eq!(page.names, vec!["order-service"]);
        let refused = br#"{"code":20004,"message":"service not found","data":null}"#;
        assert_eq!(
            instances(refused, "G", "s").unwrap_err(),
            "code 20004: service not found"
        );
        assert!(write_accepted(br#"{"code":0,"message":"success","data":"ok"}"#).is_ok());
        assert!(write_accepted(b"ok").is_ok());
    }

    #[test]
    fn html_truncated_and_text_answers_are_errors_that_say_what_came() {
        let html = b"<html><body><h1>Whitelabel Error Page</h1></body></html>";
        assert!(
            instances(html, "G", "s")
                .unwrap_err()
                .contains("Whitelabel")
        );
        assert!(
            instances(br#"{"list":[{"ip":"10.0.0.5","po"#, "G", "s")
                .unwrap_err()
                .contains("not the JSON expected")
        );
        assert!(services(b"", "G").unwrap_err().contains("empty"));
        assert!(write_accepted(html).unwrap_err().contains("Whitelabel"));
        assert!(says_not_found(
            b"caused by: no ips found for cluster DEFAULT in service order-service"
        ));
        assert!(says_not_found(b"caused by: no matched ip found!"));
        assert!(says_token_expired(b"token expired!"));
        assert!(!says_token_expired(b"authorization failed!"));
    }
}
