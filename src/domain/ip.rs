//! Instance and caller addresses in one canonical form.

use std::net::IpAddr;

/// Why a path segment is not an instance address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not an IPv4 or IPv6 address")]
pub struct InvalidIp {
    pub input: String,
}

/// The canonical form of an address: IPv4-mapped IPv6 (`::ffff:10.0.0.5`) is the IPv4 address.
///
/// A dual-stack listener (`[::]:8080`) sees IPv4 callers as mapped addresses, and the contract
/// says `::ffff:10.0.0.5` in a path means `10.0.0.5`; comparing canonical forms makes both true.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Parses an instance address as it appears in a path or a body. Brackets (`[fd00::5]`) are
/// accepted because operators copy them from URLs.
pub fn parse_ip(input: &str) -> Result<IpAddr, InvalidIp> {
    let trimmed = input.trim();
    let unbracketed = trimmed
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(trimmed);
    unbracketed
        .parse::<IpAddr>()
        .map(canonical)
        .map_err(|_| InvalidIp {
            input: input.chars().take(64).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv6_is_the_ipv4_address() {
        assert_eq!(
            parse_ip("::ffff:10.0.0.5").unwrap(),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn plain_and_bracketed_ipv6_parse() {
        let expected: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(parse_ip("fd00::5").unwrap(), expected);
        assert_eq!(parse_ip("[fd00::5]").unwrap(), expected);
    }

    #[test]
    fn rejects_names_ports_and_garbage_with_a_bounded_echo() {
        assert!(parse_ip("order-service").is_err());
        assert!(parse_ip("10.0.0.5:8080").is_err());
        assert!(parse_ip("10.0.0.256").is_err());
        let long = "9".repeat(500);
        assert_eq!(parse_ip(&long).unwrap_err().input.len(), 64);
    }
}
