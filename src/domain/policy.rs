//! Who may call: CIDR allow and deny lists, trusted proxies, bearer tokens.
//!
//! Fails closed: an empty allow list allows nobody, a malformed `X-Forwarded-For` from a
//! trusted proxy is an error rather than a guess, and tokens are compared in constant time.

use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ip::canonical;

#[derive(Debug, Clone, Default)]
pub struct CallerPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
    /// Who may reach the probes and metrics (load balancers, kubelets, scrapers).
    probes: Vec<IpNet>,
}

/// Why a caller was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("caller {addr} is in the denied range {range}")]
    InDenyList { addr: IpAddr, range: IpNet },
    #[error("caller {addr} is outside every allowed range")]
    NotAllowed { addr: IpAddr },
}

/// Which connection budget an admitted peer draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Caller,
    Prober,
}

/// A trusted proxy sent an `X-Forwarded-For` that is not a list of addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "X-Forwarded-For from trusted proxy {proxy} has an entry that is not an address: '{entry}'"
)]
pub struct BadForwardedFor {
    pub proxy: IpAddr,
    pub entry: String,
}

fn contains(nets: &[IpNet], addr: IpAddr) -> Option<IpNet> {
    nets.iter().find(|net| net.contains(&addr)).copied()
}

impl CallerPolicy {
    pub fn new(
        allow: Vec<IpNet>,
        deny: Vec<IpNet>,
        trusted_proxies: Vec<IpNet>,
        probes: Vec<IpNet>,
    ) -> Self {
        Self {
            allow,
            deny,
            trusted_proxies,
            probes,
        }
    }

    /// Whether a TCP peer may talk to the service at all, judged when its connection is
    /// accepted, before a byte is read: an allowed caller, a trusted proxy (its clients are
    /// judged per request), or a peer the probes are open to. Everyone else is turned away
    /// at once, so a hostile host cannot hold connections open however slowly it writes.
    pub fn admits(&self, peer: IpAddr) -> bool {
        self.admission(peer).is_some()
    }

    /// How a TCP peer is admitted: as a caller (an allowed address, or a trusted proxy whose
    /// clients are judged per request), as a prober only, or not at all (`None`). Callers and
    /// probers draw on separate connection budgets, so probes, scrapers and strangers inside
    /// `security.probes` can never use up the connections the deploy platform needs.
    pub fn admission(&self, peer: IpAddr) -> Option<Admission> {
        let peer = canonical(peer);
        if self.check(peer).is_ok() || contains(&self.trusted_proxies, peer).is_some() {
            Some(Admission::Caller)
        } else if contains(&self.probes, peer).is_some() {
            Some(Admission::Prober)
        } else {
            None
        }
    }

    /// The address to judge: the TCP peer, unless the peer is a trusted proxy, in which case
    /// the right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Entries left
    /// of that one were written by the client and prove nothing.
    ///
    /// `forwarded_for` holds every `X-Forwarded-For` header value in order of appearance.
    pub fn client_addr(
        &self,
        peer: IpAddr,
        forwarded_for: &[&str],
    ) -> Result<IpAddr, BadForwardedFor> {
        let peer = canonical(peer);
        if contains(&self.trusted_proxies, peer).is_none() {
            return Ok(peer);
        }
        let entries: Vec<&str> = forwarded_for
            .iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .collect();
        let mut client = peer;
        for entry in entries.iter().rev() {
            let addr = parse_forwarded_entry(entry).ok_or_else(|| BadForwardedFor {
                proxy: peer,
                entry: entry.chars().take(64).collect(),
            })?;
            client = addr;
            if contains(&self.trusted_proxies, addr).is_none() {
                break;
            }
        }
        Ok(client)
    }

    /// Deny is checked first, then allow. An empty allow list allows nobody.
    pub fn check(&self, addr: IpAddr) -> Result<(), Denied> {
        let addr = canonical(addr);
        if let Some(range) = contains(&self.deny, addr) {
            return Err(Denied::InDenyList { addr, range });
        }
        match contains(&self.allow, addr) {
            Some(_) => Ok(()),
            None => Err(Denied::NotAllowed { addr }),
        }
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `fd00::1`, `[fd00::1]` or
/// `[fd00::1]:443`.
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(addr) = entry.parse::<IpAddr>() {
        return Some(canonical(addr));
    }
    if let Ok(socket) = entry.parse::<std::net::SocketAddr>() {
        return Some(canonical(socket.ip()));
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
        .map(canonical)
}

/// A configured bearer token and the principal it names in the audit trail.
#[derive(Clone)]
pub struct ApiToken {
    pub principal: String,
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl ApiToken {
    pub fn new(principal: impl Into<String>, secret: &str) -> Self {
        Self {
            principal: principal.into(),
            digest: Sha256::digest(secret.as_bytes()).into(),
        }
    }
}

/// The configured tokens. Empty means no token is required.
#[derive(Debug, Clone, Default)]
pub struct TokenSet(Vec<ApiToken>);

impl TokenSet {
    pub fn new(tokens: Vec<ApiToken>) -> Self {
        Self(tokens)
    }

    pub fn is_required(&self) -> bool {
        !self.0.is_empty()
    }

    /// The principal of the token that matches. Digests of equal length are compared in
    /// constant time, and every configured token is compared, so neither the length of a
    /// secret nor its position in the list shows in the timing.
    pub fn authenticate(&self, presented: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for token in &self.0 {
            if bool::from(token.digest.ct_eq(&digest)) && found.is_none() {
                found = Some(token.principal.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_admitted_as_a_caller_a_proxy_or_a_prober_and_otherwise_not_at_all() {
        let nets =
            |list: &[&str]| -> Vec<IpNet> { list.iter().map(|n| n.parse().unwrap()).collect() };
        let policy = CallerPolicy::new(
            nets(&["10.0.0.0/8"]),
            nets(&["10.6.0.0/16"]),
            nets(&["192.168.1.1/32"]),
            nets(&["172.16.0.0/12"]),
        );
        let admits = |ip: &str| policy.admits(ip.parse().unwrap());
        assert!(admits("10.1.2.3"), "an allowed caller");
        assert!(!admits("10.6.0.1"), "a denied caller that is no prober");
        assert!(admits("192.168.1.1"), "a trusted proxy");
        assert!(admits("172.17.0.1"), "a prober");
        assert!(!admits("8.8.8.8"));
        assert!(admits("::ffff:10.1.2.3"), "IPv4-mapped is IPv4");
        let admission = |ip: &str| policy.admission(ip.parse().unwrap());
        assert_eq!(admission("10.1.2.3"), Some(Admission::Caller));
        assert_eq!(
            admission("192.168.1.1"),
            Some(Admission::Caller),
            "a trusted proxy"
        );
        assert_eq!(admission("172.17.0.1"), Some(Admission::Prober));
        assert_eq!(admission("8.8.8.8"), None);
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn empty_allow_list_allows_nobody() {
        let policy = CallerPolicy::new(vec![], vec![], vec![], vec![]);
        assert!(matches!(
            policy.check(ip("127.0.0.1")),
            Err(Denied::NotAllowed { .. })
        ));
    }

    #[test]
    fn deny_wins_over_allow() {
        let policy = CallerPolicy::new(
            nets(&["10.0.0.0/8"]),
            nets(&["10.6.0.0/16"]),
            vec![],
            vec![],
        );
        assert!(policy.check(ip("10.1.2.3")).is_ok());
        assert!(matches!(
            policy.check(ip("10.6.0.1")),
            Err(Denied::InDenyList { .. })
        ));
        assert!(policy.check(ip("11.0.0.1")).is_err());
    }

    #[test]
    fn mapped_ipv6_callers_are_judged_as_ipv4() {
        let policy = CallerPolicy::new(nets(&["127.0.0.0/8"]), vec![], vec![], vec![]);
        assert!(policy.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(policy.check(ip("::1")).is_err());
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let policy = CallerPolicy::new(vec![], vec![], nets(&["10.9.0.0/16"]), vec![]);
        let addr = policy.client_addr(ip("10.1.1.1"), &["127.0.0.1"]).unwrap();
        assert_eq!(addr, ip("10.1.1.1"));
    }

    #[test]
    fn forwarded_for_from_a_trusted_proxy_names_the_right_most_untrusted_hop() {
        let policy = CallerPolicy::new(vec![], vec![], nets(&["10.9.0.0/16"]), vec![]);
        // The client forged "127.0.0.1"; the proxies appended the real client and themselves.
        let addr = policy
            .client_addr(ip("10.9.0.1"), &["127.0.0.1, 192.0.2.7", "10.9.0.2"])
            .unwrap();
        assert_eq!(addr, ip("192.0.2.7"));
    }

    #[test]
    fn forwarded_for_accepts_ports_and_brackets() {
        let policy = CallerPolicy::new(vec![], vec![], nets(&["127.0.0.0/8"]), vec![]);
        let peer = ip("127.0.0.1");
        assert_eq!(
            policy.client_addr(peer, &["192.0.2.7:5555"]).unwrap(),
            ip("192.0.2.7")
        );
        assert_eq!(
            policy.client_addr(peer, &["[fd00::7]:443"]).unwrap(),
            ip("fd00::7")
        );
        assert_eq!(
            policy.client_addr(peer, &["::ffff:192.0.2.7"]).unwrap(),
            ip("192.0.2.7")
        );
    }

    #[test]
    fn trusted_proxy_without_forwarded_for_is_the_caller() {
        let policy = CallerPolicy::new(vec![], vec![], nets(&["127.0.0.0/8"]), vec![]);
        assert_eq!(
            policy.client_addr(ip("127.0.0.1"), &[]).unwrap(),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn garbage_forwarded_for_from_a_trusted_proxy_is_an_error() {
        let policy = CallerPolicy::new(vec![], vec![], nets(&["127.0.0.0/8"]), vec![]);
        let err = policy
            .client_addr(ip("127.0.0.1"), &["<script>"])
            .unwrap_err();
        assert_eq!(err.entry, "<script>");
    }

    #[test]
    fn tokens_authenticate_to_their_principal() {
        let tokens = TokenSet::new(vec![
            ApiToken::new("deploy-platform", "s3cret"),
            ApiToken::new("ci", "other"),
        ]);
        assert!(tokens.is_required());
        assert_eq!(tokens.authenticate("other"), Some("ci"));
        assert_eq!(tokens.authenticate("s3cret"), Some("deploy-platform"));
        assert_eq!(tokens.authenticate("s3cre"), None);
        assert!(!TokenSet::default().is_required());
    }
}
