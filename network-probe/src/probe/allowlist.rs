//! The `--probe.allow` target allowlist: which targets `/probe` may make this host ping, connect
//! to or download from. Pure: parsing the flag values and judging a target; resolving a name
//! (the only I/O the check needs) is left to the caller ([`super::handler`], which resolves
//! each target once and probes the addresses judged), which hands the outcome back to
//! [`Allowlist::check_resolved`].
//!
//! Rules (documented in docs/probe-routing.md):
//! - No entry: every target is allowed.
//! - An IP address target (`10.0.0.1`, `[2001:db8::1]:5201`) is allowed when a network entry
//!   contains it (IPv4-mapped IPv6 addresses are judged as IPv4).
//! - A host name target is allowed when it matches a host entry (`tftp1.example.com` exactly,
//!   `*.example.com` any name below example.com, not example.com itself), case-insensitively and
//!   ignoring a trailing dot, before any resolution (only plain host names can match: letters,
//!   digits, `-`, `_` and dots). Otherwise it is resolved, and allowed only when it has
//!   addresses and a network entry contains every one of them.

use std::{fmt, net::IpAddr};

use super::target::ResolveError;

/// One `--probe.allow` value: a network or a host-name pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Network(Network),
    Host(HostPattern),
}

/// An IP network, `address/prefix`, with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

/// A host-name pattern, lower case without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// `tftp1.example.com`: this name only.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any name ending with it.
    Below(String),
}

/// Why a target is refused (HTTP 403); the message names the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The first verdict on a target, before any name resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Screening {
    Allowed,
    Refused(Refusal),
    /// A host name that matched no host pattern: resolve `host` and pass its addresses to
    /// [`Allowlist::check_addresses`].
    Resolve {
        host: String,
    },
}

/// Parses one `--probe.allow` value (clap `value_parser`); the error names the value.
pub fn parse_entry(value: &str) -> Result<Entry, String> {
    if let Some((address, prefix)) = value.split_once('/') {
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{value:?}: {address:?} is not an IP address"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix.parse().ok().filter(|&p| p <= max).ok_or_else(|| {
            format!("{value:?}: prefix {prefix:?} is not a number from 0 to {max}")
        })?;
        let network = Network { address, prefix };
        let masked = mask(address, prefix);
        if masked != address {
            return Err(format!(
                "{value:?} has host bits set (did you mean {masked}/{prefix}?)"
            ));
        }
        return Ok(Entry::Network(network));
    }
    if let Ok(address) = value.parse::<IpAddr>() {
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        return Ok(Entry::Network(Network { address, prefix }));
    }
    let name = normalise(value);
    let (below, rest) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name.as_str()),
    };
    if !is_host_name(rest) {
        return Err(format!(
            "{value:?} is neither a network (10.0.0.0/8, 2001:db8::/32, 192.0.2.7) nor a host \
             name pattern (tftp1.example.com, *.example.com)"
        ));
    }
    Ok(Entry::Host(if below {
        HostPattern::Below(format!(".{rest}"))
    } else {
        HostPattern::Exact(rest.to_string())
    }))
}

/// The host part of a `target=` value: `host`, `host:port`, `[v6]:port`, `[v6]` or a bare IPv6
/// address. Lenient: the prober checks the syntax itself afterwards.
pub fn target_host(target: &str) -> &str {
    if target.parse::<IpAddr>().is_ok() {
        return target;
    }
    if let Some(rest) = target.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    match target.rsplit_once(':') {
        Some((host, _)) if !host.contains(':') => host,
        _ => target,
    }
}

/// Whether `name` (normalised) is a plain DNS host name: dot-separated labels of letters,
/// digits, `-` and `_`, 1 to 63 bytes each, at most 253 in all.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Lower case without a trailing dot, as names are compared.
fn normalise(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// `address` with the bits after `prefix` cleared.
fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & kept).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & kept).into())
        }
    }
}

impl Network {
    /// Whether `address` (IPv4-mapped IPv6 taken as IPv4) lies in this network.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        address.is_ipv4() == self.address.is_ipv4() && mask(address, self.prefix) == self.address
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl HostPattern {
    /// Whether the normalised name `name` matches.
    fn matches(&self, name: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => name == exact,
            HostPattern::Below(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Below(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// The parsed `--probe.allow` entries.
#[derive(Clone, Debug, Default)]
pub struct Allowlist {
    networks: Vec<Network>,
    hosts: Vec<HostPattern>,
}

impl Allowlist {
    pub fn new(entries: &[Entry]) -> Self {
        let mut allowlist = Allowlist::default();
        for entry in entries {
            match entry {
                Entry::Network(network) => allowlist.networks.push(*network),
                Entry::Host(pattern) => allowlist.hosts.push(pattern.clone()),
            }
        }
        allowlist
    }

    /// True when no entry is configured: everything is allowed.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty() && self.hosts.is_empty()
    }

    /// The entries, comma-separated, for the start-up log.
    pub fn describe(&self) -> String {
        let networks = self.networks.iter().map(ToString::to_string);
        let hosts = self.hosts.iter().map(ToString::to_string);
        networks.chain(hosts).collect::<Vec<_>>().join(", ")
    }

    /// Judges `target` (a `target=` value) as far as possible without resolving it.
    pub fn screen(&self, target: &str) -> Screening {
        self.screen_host(target, target_host(target))
    }

    /// Judges `target` by its host part `host` (as [`super::target::split_host_port`] or
    /// [`target_host`] took it) as far as possible without resolving it.
    pub fn screen_host(&self, target: &str, host: &str) -> Screening {
        if self.is_empty() {
            return Screening::Allowed;
        }
        if let Ok(address) = host.parse::<IpAddr>() {
            if self.networks.iter().any(|n| n.contains(address)) {
                return Screening::Allowed;
            }
            return Screening::Refused(Refusal(format!(
                "target {target:?} is not in any --probe.allow network"
            )));
        }
        // Only a plain host name can match a pattern; anything odd (`%`, spaces, NUL) is judged
        // by what it resolves to.
        let name = normalise(host);
        if is_host_name(&name) && self.hosts.iter().any(|pattern| pattern.matches(&name)) {
            return Screening::Allowed;
        }
        if self.networks.is_empty() {
            return Screening::Refused(Refusal(format!(
                "target {target:?} matches no --probe.allow host pattern"
            )));
        }
        Screening::Resolve {
            host: host.to_string(),
        }
    }

    /// The verdict on a target that matched no host pattern, given what resolving it gave
    /// (a failed resolution refuses it).
    pub fn check_resolved(
        &self,
        target: &str,
        addresses: &Result<Vec<IpAddr>, ResolveError>,
    ) -> Result<(), Refusal> {
        let failed = |why: String| {
            Err(Refusal(format!(
                "target {target:?} matches no --probe.allow host pattern and resolving it to \
                 check its addresses {why}"
            )))
        };
        match addresses {
            Ok(addresses) => self.check_addresses(target, addresses),
            Err(ResolveError::Failed { error, .. }) => failed(format!("failed: {error}")),
            Err(ResolveError::Timeout { .. }) => {
                failed("did not finish before the deadline".into())
            }
            Err(ResolveError::NoAddress { .. }) => self.check_addresses(target, &[]),
        }
    }

    /// The verdict on a target whose host name matched no pattern, given the addresses it
    /// resolved to: allowed when there is at least one and every one lies in a network.
    pub fn check_addresses(&self, target: &str, addresses: &[IpAddr]) -> Result<(), Refusal> {
        if addresses.is_empty() {
            return Err(Refusal(format!(
                "target {target:?} matches no --probe.allow host pattern and has no address"
            )));
        }
        match addresses
            .iter()
            .find(|&&address| !self.networks.iter().any(|n| n.contains(address)))
        {
            None => Ok(()),
            Some(outside) => Err(Refusal(format!(
                "target {target:?} resolves to {outside}, which is not in any --probe.allow \
                 network, and matches no --probe.allow host pattern"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowlist(values: &[&str]) -> Allowlist {
        let entries: Vec<Entry> = values.iter().map(|v| parse_entry(v).unwrap()).collect();
        Allowlist::new(&entries)
    }

    fn refused(screening: Screening) -> String {
        match screening {
            Screening::Refused(refusal) => refusal.0,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn entries_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_entry("10.0.0.0/8").unwrap().to_string_for_test(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_entry("2001:db8::/32").unwrap().to_string_for_test(),
            "2001:db8::/32"
        );
        assert_eq!(
            parse_entry("192.0.2.7").unwrap().to_string_for_test(),
            "192.0.2.7/32"
        );
        assert_eq!(
            parse_entry("TFTP1.Example.com.").unwrap(),
            Entry::Host(HostPattern::Exact("tftp1.example.com".into()))
        );
        assert_eq!(
            parse_entry("*.example.com").unwrap(),
            Entry::Host(HostPattern::Below(".example.com".into()))
        );
        for (bad, said) in [
            ("10.0.0.0/33", "prefix \"33\""),
            ("2001:db8::/129", "prefix \"129\""),
            ("10.0.0.0/x", "prefix \"x\""),
            ("10.0.0.300/8", "\"10.0.0.300\" is not an IP address"),
            ("10.1.0.0/8", "did you mean 10.0.0.0/8?"),
            ("2001:db8::1/32", "did you mean 2001:db8::/32?"),
            ("*", "neither a network"),
            ("a.*.example.com", "neither a network"),
            ("bad name", "neither a network"),
            ("a..b", "neither a network"),
            ("", "neither a network"),
        ] {
            let err = parse_entry(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains(said), "{bad}: {err}");
        }
    }

    impl Entry {
        fn to_string_for_test(&self) -> String {
            match self {
                Entry::Network(network) => network.to_string(),
                Entry::Host(pattern) => pattern.to_string(),
            }
        }
    }

    #[test]
    fn target_hosts_drop_ports_and_brackets() {
        for (target, host) in [
            ("10.0.0.1", "10.0.0.1"),
            ("10.0.0.1:69", "10.0.0.1"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:5201", "2001:db8::1"),
            ("server.example:5201", "server.example"),
            ("server.example", "server.example"),
            ("[unclosed", "unclosed"),
        ] {
            assert_eq!(target_host(target), host, "{target}");
        }
    }

    #[test]
    fn empty_allows_everything() {
        let empty = allowlist(&[]);
        assert!(empty.is_empty());
        for target in ["192.0.2.1", "anything.example", "[::1]:7"] {
            assert_eq!(empty.screen(target), Screening::Allowed);
        }
    }

    #[test]
    fn addresses_must_lie_in_a_network() {
        let list = allowlist(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]);
        for allowed in [
            "10.0.0.0",
            "10.255.255.255:69",
            "2001:db8:ffff::1",
            "[2001:db8::5]:5201",
            "192.0.2.7",
            "::ffff:10.1.2.3",
        ] {
            assert_eq!(list.screen(allowed), Screening::Allowed, "{allowed}");
        }
        for refused_target in ["11.0.0.1", "192.0.2.8", "2001:db9::1", "[::1]:5201", "::"] {
            let message = refused(list.screen(refused_target));
            assert!(
                message.contains(&format!("target {refused_target:?}")),
                "{message}"
            );
        }
        // Prefix 0 allows a whole family, and only that family.
        let v4 = allowlist(&["0.0.0.0/0"]);
        assert_eq!(v4.screen("203.0.113.9"), Screening::Allowed);
        assert!(matches!(v4.screen("2001:db8::1"), Screening::Refused(_)));
    }

    #[test]
    fn names_match_patterns_before_resolution() {
        let list = allowlist(&["*.example.com", "tftp1.example.net"]);
        for allowed in [
            "a.example.com",
            "A.B.Example.COM.",
            "a.example.com:5201",
            "tftp1.example.net",
            "TFTP1.example.net:69",
        ] {
            assert_eq!(list.screen(allowed), Screening::Allowed, "{allowed}");
        }
        for refused_target in [
            "example.com",
            "badexample.com",
            "a.example.com.evil.org",
            "tftp2.example.net",
            "x.tftp1.example.net",
        ] {
            // No networks: nothing to resolve against, refused at once.
            let message = refused(list.screen(refused_target));
            assert!(
                message.contains(&format!("{refused_target:?}")),
                "{message}"
            );
            assert!(message.contains("host pattern"), "{message}");
        }
        // An address is never matched against name patterns.
        assert!(matches!(list.screen("10.0.0.1"), Screening::Refused(_)));
        // Only plain host names match: odd bytes before the allowed suffix do not.
        for odd in [
            "evil.org%00.example.com",
            "a b.example.com",
            "x\0.example.com",
        ] {
            assert!(matches!(list.screen(odd), Screening::Refused(_)), "{odd:?}");
        }
        let with_networks = allowlist(&["10.0.0.0/8", "*.example.com"]);
        assert_eq!(
            with_networks.screen("evil.org#.example.com"),
            Screening::Resolve {
                host: "evil.org#.example.com".into()
            }
        );
    }

    #[test]
    fn other_names_are_judged_by_every_address() {
        let list = allowlist(&["10.0.0.0/8", "*.example.com"]);
        assert_eq!(
            list.screen("peer.lab:69"),
            Screening::Resolve {
                host: "peer.lab".into()
            }
        );
        let ten: IpAddr = "10.1.1.1".parse().unwrap();
        let outside: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(list.check_addresses("peer.lab", &[ten]), Ok(()));
        let err = list
            .check_addresses("peer.lab", &[ten, outside])
            .unwrap_err();
        assert!(
            err.0.contains("\"peer.lab\" resolves to 198.51.100.1"),
            "{err}"
        );
        let err = list.check_addresses("peer.lab", &[]).unwrap_err();
        assert!(err.0.contains("has no address"), "{err}");
    }
}
