//! `[security]`: who may call the API.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, networks, redact};
use crate::domain::policy::{ApiToken, CallerPolicy, TokenSet};

/// A token of the reconciler's name would make a caller's operations look like its own.
use crate::domain::operation::RECONCILER_PRINCIPAL as RESERVED_PRINCIPAL;

#[derive(Debug, Clone)]
pub struct SecuritySettings {
    pub policy: CallerPolicy,
    pub tokens: TokenSet,
    pub browser: BrowserPolicy,
}

/// What a web browser may reach (requests with `Origin` or `Sec-Fetch-*`).
#[derive(Debug, Clone, Default)]
pub struct BrowserPolicy {
    /// Host names the service is reached by, besides addresses and localhost; `*.example`
    /// stands for every name under `example`.
    pub hostnames: Vec<String>,
    /// Origins (`https://console.example`) whose pages may call the API.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecurity {
    allow: Vec<String>,
    deny: Vec<String>,
    trusted_proxies: Vec<String>,
    probes: Vec<String>,
    tokens: Vec<RawToken>,
    hostnames: Vec<String>,
    allowed_origins: Vec<String>,
}

/// A token is a bare secret (its principal is then `token-N`) or a named one.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum RawToken {
    Secret(#[serde(serialize_with = "redact")] SecretString),
    Named {
        principal: String,
        #[serde(serialize_with = "redact")]
        token: SecretString,
    },
}

impl RawSecurity {
    pub(super) fn validate(self) -> Result<SecuritySettings, ConfigError> {
        let policy = CallerPolicy::new(
            networks("security.allow", &self.allow)?,
            networks("security.deny", &self.deny)?,
            networks("security.trusted_proxies", &self.trusted_proxies)?,
            networks("security.probes", &self.probes)?,
        );
        let mut tokens = Vec::with_capacity(self.tokens.len());
        // Each secret once: under two principals the audit trail could not tell them apart.
        let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (i, token) in self.tokens.into_iter().enumerate() {
            let key = format!("security.tokens[{i}]");
            let (principal, secret) = match token {
                RawToken::Secret(secret) => (format!("token-{}", i + 1), secret),
                RawToken::Named { principal, token } => (principal, token),
            };
            let secret = secret.expose_secret().trim();
            // Short secrets are guessable; 16 characters is the floor for anything on a network.
            if secret.len() < 16 {
                return Err(invalid(key, "a token must be at least 16 characters"));
            }
            let principal = principal.trim();
            if principal.is_empty() {
                return Err(invalid(key, "a named token needs a non-empty principal"));
            }
            if principal.eq_ignore_ascii_case(RESERVED_PRINCIPAL) {
                return Err(invalid(
                    key,
                    format!(
                        "the principal '{RESERVED_PRINCIPAL}' is synchspeed's own; name the caller"
                    ),
                ));
            }
            if let Some(first) = seen.insert(secret.to_owned(), i) {
                return Err(invalid(
                    key,
                    format!(
                        "the same token as security.tokens[{first}]: each caller needs a token \
                         of its own, or the audit trail cannot tell them apart"
                    ),
                ));
            }
            tokens.push(ApiToken::new(principal, secret));
        }
        let mut allowed_origins = Vec::with_capacity(self.allowed_origins.len());
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
            let parsed = url::Url::parse(&origin).ok().filter(|url| {
                matches!(url.scheme(), "http" | "https")
                    && url.host_str().is_some()
                    && url.path() == "/"
            });
            if parsed.is_none() {
                return Err(invalid(
                    format!("security.allowed_origins[{i}]"),
                    format!("'{origin}' is not an origin such as https://console.example"),
                ));
            }
            allowed_origins.push(origin);
        }
        Ok(SecuritySettings {
            policy,
            tokens: TokenSet::new(tokens),
            browser: BrowserPolicy {
                hostnames: self
                    .hostnames
                    .iter()
                    .map(|name| name.trim().trim_end_matches('.').to_ascii_lowercase())
                    .collect(),
                allowed_origins,
            },
        })
    }
}
