//! The environment layer: `SYNCHSPEED__SECTION__KEY=value` over the file, a list written
//! comma-separated (`SYNCHSPEED__SECURITY__ALLOW=10.0.0.0/8,fd00::/8`).
//!
//! Which keys take a list is asked of the settings' own types, not of a list kept by hand (a
//! list key added later would otherwise be forgotten, as `registry.nacos.servers` and
//! `groups.static.*` once were): a value is read as a list when the settings deserialize with
//! it as one and not as a single value, or when both work (`groups.source`, a name or a list)
//! and it has a comma. A string setting that holds commas (`groups.sql.query`) deserializes
//! only as a string, so it stays one.

use ::config::builder::DefaultState;
use ::config::{ConfigBuilder, Value};

use super::{ConfigError, Raw};

const PREFIX: &str = "SYNCHSPEED__";
const SEPARATOR: &str = "__";
const LIST_SEPARATOR: char = ',';

/// The process's `SYNCHSPEED__*` variables; one that is not UTF-8 is an error naming it.
pub(super) fn variables() -> Result<Vec<(String, String)>, ConfigError> {
    let mut found = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().map(str::to_owned) else {
            continue;
        };
        if !is_ours(&name) {
            continue;
        }
        let value = value
            .into_string()
            .map_err(|_| ConfigError::NotUnicode(name.clone()))?;
        found.push((name, value));
    }
    Ok(found)
}

fn is_ours(name: &str) -> bool {
    name.len() > PREFIX.len() && name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
}

/// `SYNCHSPEED__REGISTRY__EUREKA__URLS` → `registry.eureka.urls`; `None` for a name with an
/// empty part (`SYNCHSPEED__REGISTRY____KIND`).
fn key_of(name: &str) -> Option<String> {
    let parts: Vec<String> = name[PREFIX.len()..]
        .split(SEPARATOR)
        .map(str::to_ascii_lowercase)
        .collect();
    (!parts.iter().any(String::is_empty)).then(|| parts.join("."))
}

fn as_list(value: &str) -> Vec<String> {
    value
        .split(LIST_SEPARATOR)
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

/// Whether the layers so far, with `key` set to `value`, make settings of the right shape.
fn takes(builder: &ConfigBuilder<DefaultState>, key: &str, value: impl Into<Value>) -> bool {
    builder
        .clone()
        .set_override(key, value)
        .and_then(|builder| builder.build())
        .and_then(|config| config.try_deserialize::<Raw>())
        .is_ok()
}

/// The layers so far with the variables over them, each as a list or a single value.
pub(super) fn layer(
    mut builder: ConfigBuilder<DefaultState>,
    variables: &[(String, String)],
) -> Result<ConfigBuilder<DefaultState>, ConfigError> {
    for (name, value) in variables {
        if !is_ours(name) {
            continue;
        }
        let Some(key) = key_of(name) else {
            continue;
        };
        let list = takes(&builder, &key, as_list(value))
            && (value.contains(LIST_SEPARATOR) || !takes(&builder, &key, value.as_str()));
        builder = if list {
            builder.set_override(key, as_list(value))?
        } else {
            builder.set_override(key, value.as_str())?
        };
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::super::{DEFAULTS_TOML, Layer, Settings, merged};
    use super::*;

    /// Every key whose default is a list, with its dotted name.
    fn list_keys_of(table: &toml::Table, prefix: &str, found: &mut Vec<String>) {
        for (name, value) in table {
            let key = format!("{prefix}{name}");
            match value {
                toml::Value::Array(_) => found.push(key),
                toml::Value::Table(inner) => list_keys_of(inner, &format!("{key}."), found),
                _ => {}
            }
        }
    }

    fn raw_value(raw: &Raw, key: &str) -> toml::Value {
        let mut value = toml::Value::try_from(raw).unwrap();
        for part in key.split('.') {
            value = value
                .get(part)
                .unwrap_or_else(|| panic!("{key}: no {part}"))
                .clone();
        }
        value
    }

    /// A list from the environment is comma-separated for every key that takes one. The keys are
    /// found from the defaults, so a list key added later without a sample here fails this test.
    #[test]
    fn every_list_key_takes_a_comma_separated_list_from_the_environment() {
        let samples: &[(&str, &str)] = &[
            ("security.allow", "10.0.0.0/8, fd00::/8"),
            ("security.deny", "10.9.0.0/16,10.8.0.1"),
            ("security.trusted_proxies", "192.168.0.0/16,10.7.0.1"),
            ("security.probes", "172.16.0.0/12,::1"),
            (
                "security.hostnames",
                "synchspeed.internal,*.svc.cluster.local",
            ),
            (
                "security.allowed_origins",
                "https://console.example,https://ops.example",
            ),
            ("security.tokens", "aaaaaaaaaaaaaaaa-1,bbbbbbbbbbbbbbbb-2"),
            (
                "registry.eureka.urls",
                "http://e1:8761/eureka,http://e2:8761/eureka",
            ),
            (
                "registry.nacos.servers",
                "http://n1:8848/nacos,http://n2:8848/nacos",
            ),
            ("registry.nacos.groups", "DEFAULT_GROUP,PAYMENTS"),
            ("registry.nacos.clusters", "DEFAULT,HANGZHOU"),
            // Keys that are not lists by default: a name or a list, and tables of lists.
            ("groups.source", "static,sql"),
            (
                "groups.static.order-service",
                "GATEWAY-PUBLIC,GATEWAY-INTERNAL",
            ),
            ("gateway.nodes.haproxy-edge", "10.3.0.1:9999,10.3.0.2:9999"),
        ];
        let defaults: toml::Table = DEFAULTS_TOML.parse().unwrap();
        let mut list_keys = Vec::new();
        list_keys_of(&defaults, "", &mut list_keys);
        for key in &list_keys {
            assert!(
                samples.iter().any(|(sample, _)| sample == key),
                "{key} takes a list: give it a sample here"
            );
        }
        for (key, value) in samples {
            let name = format!(
                "SYNCHSPEED__{}",
                key.replace('.', "__").to_ascii_uppercase()
            );
            let raw = merged(Layer::Text(""), &[(name.clone(), (*value).to_owned())])
                .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
            let shown = raw_value(&raw, key);
            let items = shown
                .as_array()
                .unwrap_or_else(|| panic!("{name}={value} is no list: {shown}"));
            assert_eq!(items.len(), 2, "{name}={value}: {shown}");
        }
        // One item without a comma is a list of one where only a list fits.
        let raw = merged(
            Layer::Text(""),
            &[(
                "SYNCHSPEED__REGISTRY__NACOS__SERVERS".into(),
                "http://n1:8848/nacos".into(),
            )],
        )
        .unwrap();
        assert_eq!(
            raw_value(&raw, "registry.nacos.servers")
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // A string setting with commas in it stays one string.
        let query = "SELECT app, gateway_group FROM gw_route";
        let raw = merged(
            Layer::Text(""),
            &[("SYNCHSPEED__GROUPS__SQL__ALL_QUERY".into(), query.into())],
        )
        .unwrap();
        assert_eq!(
            raw_value(&raw, "groups.sql.all_query").as_str(),
            Some(query)
        );
        // And the list is what the settings use.
        let settings = Settings::from_toml_and_variables(
            "",
            &[(
                "SYNCHSPEED__SECURITY__ALLOW".into(),
                "10.0.0.0/8,fd00::/8".into(),
            )],
        )
        .unwrap();
        let allowed = |addr: &str| {
            settings
                .security
                .policy
                .check(addr.parse().unwrap())
                .is_ok()
        };
        assert!(allowed("10.1.2.3") && allowed("fd00::5"));
        assert!(!allowed("127.0.0.1"));
    }
}
