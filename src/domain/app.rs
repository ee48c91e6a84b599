//! Application names, compared the way Eureka compares them.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The name of an application (a service, or a gateway group, which is an app too).
///
/// Canonical form is upper case: Eureka upper-cases `{APP}` path segments and keys its registry
/// by upper-case names (`ApplicationResource`, `InstanceInfo.Builder.setAppName`), and Spring Cloud
/// reports the same service in lower case through other APIs. Comparing canonical names makes
/// `order-service` and `ORDER-SERVICE` the same app everywhere in synchspeed. Backends that
/// need the registry's own spelling (ZooKeeper paths) keep it on the instance.
///
/// Shared, not copied: the registry cache holds one name per instance in several indexes, and
/// with tens of thousands of instances of a handful of apps a clone must not allocate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "ORDER-SERVICE")]
pub struct AppName(Arc<str>);

/// Why a string is not an app name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAppName {
    #[error("an app name must not be empty")]
    Empty,
    #[error("an app name must be at most {max} characters")]
    TooLong { max: usize },
    #[error("an app name must not contain whitespace or control characters")]
    BadCharacter,
}

impl AppName {
    pub const MAX_LEN: usize = 255;

    pub fn parse(raw: &str) -> Result<Self, InvalidAppName> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(InvalidAppName::Empty);
        }
        if trimmed.chars().count() > Self::MAX_LEN {
            return Err(InvalidAppName::TooLong { max: Self::MAX_LEN });
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidAppName::BadCharacter);
        }
        Ok(Self(trimmed.to_ascii_uppercase().into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AppName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_case_insensitively_through_the_canonical_form() {
        let lower = AppName::parse("order-service").unwrap();
        let upper = AppName::parse("ORDER-SERVICE").unwrap();
        assert_eq!(lower, upper);
        assert_eq!(lower.as_str(), "ORDER-SERVICE");
    }

    #[test]
    fn rejects_empty_and_hostile_names() {
        assert_eq!(AppName::parse("  "), Err(InvalidAppName::Empty));
        assert_eq!(AppName::parse("a b"), Err(InvalidAppName::BadCharacter));
        assert_eq!(AppName::parse("a\u{0}b"), Err(InvalidAppName::BadCharacter));
        assert!(matches!(
            AppName::parse(&"x".repeat(300)),
            Err(InvalidAppName::TooLong { .. })
        ));
    }
}
