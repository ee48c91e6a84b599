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
