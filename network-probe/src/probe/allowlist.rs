//! The `--probe.allow` target allowlist: which targets `/probe` may make this host ping, connect
//! to or download from, and on which ports. Pure: parsing the flag values and judging a target;
//! resolving a name (the only I/O the check needs) is left to the caller ([`super::handler`],
//! which resolves each target once and probes the addresses judged), which hands the outcome
//! back to [`Allowlist::check_resolved`].
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
//! - Ports: an entry may name one port (`10.0.0.0/8:443`, `[2001:db8::/32]:443`,
//!   `192.0.2.7:69`, `[2001:db8::1]:5201`, `tftp.example.com:69`, `*.example.com:5201`); it then
//!   allows only probes to that port. An entry without a port allows every port and probes
//!   without one (ICMP ping). The ports of a probe are the prober's (the target's port, the
//!   prober's default, `tftp_port`, `port`, every `tcp_port`): each must be allowed by an entry
//!   that contains the address or matches the name; a port refused is a 403 naming it.

use std::{fmt, net::IpAddr};

use super::target::ResolveError;

/// One `--probe.allow` value: a network or a host-name pattern, and the one port it allows
/// (every port when `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub scope: Scope,
    pub port: Option<u16>,
}

/// What an [`Entry`] matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
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

/// Why a target is refused (HTTP 403); the message names the target (and the port, when the
/// port is what is refused).
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
    /// A host name that matched no host pattern (for its ports): resolve `host` and pass its
    /// addresses to [`Allowlist::check_addresses`].
    Resolve {
        host: String,
    },
}

/// Parses one `--probe.allow` value (clap `value_parser`); the error names the value.
pub fn parse_entry(value: &str) -> Result<Entry, String> {
    let bad_port =
        |text: &str| format!("{value:?}: port {text:?} is not a port number from 1 to 65535");
    let port_of = |text: &str| {
        text.parse::<u16>()
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| bad_port(text))
    };
    // `[2001:db8::/32]:443`, `[2001:db8::1]:443`: a bracketed IPv6 network or address.
    if let Some(rest) = value.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{value:?} lacks the closing ']'"))?;
        let port = match after.strip_prefix(':') {
            Some(text) => Some(port_of(text)?),
            None if after.is_empty() => None,
            None => {
                return Err(format!(
                    "{value:?} has text after the ']' that is not :PORT"
                ));
            }
        };
        if !inner.contains(':') {
            return Err(format!(
                "{value:?}: brackets hold an IPv6 network or address, not {inner:?}"
            ));
        }
        let scope = parse_scope(value, inner)?;
        return Ok(Entry { scope, port });
    }
    // `10.0.0.0/8:443`: the port follows the prefix.
    if let Some((network, prefix_port)) = value.split_once('/')
        && !network.contains(':')
        && let Some((prefix, port)) = prefix_port.split_once(':')
    {
        let scope = parse_scope(value, &format!("{network}/{prefix}"))?;
        return Ok(Entry {
            scope,
            port: Some(port_of(port)?),
        });
    }
    // `192.0.2.7:69`, `tftp.example.com:69` (one colon: not an IPv6 address).
    if let Some((host, port)) = value.rsplit_once(':')
        && !host.contains(':')
        && !host.contains('/')
    {
        let scope = parse_scope(value, host)?;
        return Ok(Entry {
            scope,
            port: Some(port_of(port)?),
        });
    }
    Ok(Entry {
        scope: parse_scope(value, value)?,
        port: None,
    })
}

/// The network or host pattern `text` of the entry `value`.
fn parse_scope(value: &str, text: &str) -> Result<Scope, String> {
    if let Some((address, prefix)) = text.split_once('/') {
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
        return Ok(Scope::Network(network));
    }
    if let Ok(address) = text.parse::<IpAddr>() {
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        return Ok(Scope::Network(Network { address, prefix }));
    }
    let name = normalise(text);
    let (below, rest) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name.as_str()),
    };
    if !is_host_name(rest) {
        return Err(format!(
            "{value:?} is neither a network (10.0.0.0/8, 2001:db8::/32, 192.0.2.7) nor a host \
             name pattern (tftp1.example.com, *.example.com), optionally with a port \
             (10.0.0.0/8:443, [2001:db8::/32]:443, tftp1.example.com:69)"
        ));
    }
    Ok(Scope::Host(if below {
        HostPattern::Below(format!(".{rest}"))
    } else {
        HostPattern::Exact(rest.to_string())
    }))
}

/// The host part of a `target=` value: `host`, `host:port`, `[v6]:port`, `[v6]` or a bare IPv6
/// address. Lenient: the prober checks the syntax itself afterwards.
pub fn target_host(target: &str) -> &str {
    split_target(target).0
}

/// The host part and the port text of a `target=` value, leniently (see [`target_host`]).
fn split_target(target: &str) -> (&str, Option<&str>) {
    if target.parse::<IpAddr>().is_ok() {
        return (target, None);
    }
    if let Some(rest) = target.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => (rest, None),
        };
    }
    match target.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (target, None),
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

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.scope, self.port) {
            (Scope::Network(network), None) => write!(f, "{network}"),
            (Scope::Network(network), Some(port)) if network.address.is_ipv6() => {
                write!(f, "[{network}]:{port}")
            }
            (Scope::Network(network), Some(port)) => write!(f, "{network}:{port}"),
            (Scope::Host(pattern), None) => write!(f, "{pattern}"),
            (Scope::Host(pattern), Some(port)) => write!(f, "{pattern}:{port}"),
        }
    }
}

/// Ports allowed by the entries that match one target: every port, or these.
#[derive(Debug, Default)]
struct PortsAllowed {
    matched: bool,
    any: bool,
    ports: Vec<u16>,
}

impl PortsAllowed {
    fn add(&mut self, port: Option<u16>) {
        self.matched = true;
        match port {
            None => self.any = true,
            Some(port) if !self.ports.contains(&port) => self.ports.push(port),
            Some(_) => {}
        }
    }

    /// The first of `ports` not allowed (`Some(None)`: a probe without a port is not), or
    /// `None` when every one is.
    fn refused(&self, ports: &[u16]) -> Option<Option<u16>> {
        if self.any {
            return None;
        }
        if ports.is_empty() {
            return Some(None);
        }
        ports
            .iter()
            .find(|port| !self.ports.contains(port))
            .map(|&port| Some(port))
    }

    /// The refusal of `target` for the port `refused` (see [`Self::refused`]).
    fn refusal(&self, target: &str, what: &str, refused: Option<u16>) -> Refusal {
        let mut allowed = self.ports.clone();
        allowed.sort_unstable();
        let allowed = allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        Refusal(match refused {
            Some(port) => format!(
                "target {target:?}: port {port} is not allowed by --probe.allow (the entries for \
                 {what} allow port {allowed} only)"
            ),
            None => format!(
                "target {target:?}: a probe without a port (ICMP) is not allowed by \
                 --probe.allow (the entries for {what} allow port {allowed} only)"
            ),
        })
    }
}

/// The parsed `--probe.allow` entries.
#[derive(Clone, Debug, Default)]
pub struct Allowlist {
    networks: Vec<(Network, Option<u16>)>,
    hosts: Vec<(HostPattern, Option<u16>)>,
}

impl Allowlist {
    pub fn new(entries: &[Entry]) -> Self {
        let mut allowlist = Allowlist::default();
        for entry in entries {
            match &entry.scope {
                Scope::Network(network) => allowlist.networks.push((*network, entry.port)),
                Scope::Host(pattern) => allowlist.hosts.push((pattern.clone(), entry.port)),
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
        let networks = self.networks.iter().map(|(network, port)| {
            Entry {
                scope: Scope::Network(*network),
                port: *port,
            }
            .to_string()
        });
        let hosts = self.hosts.iter().map(|(pattern, port)| {
            Entry {
                scope: Scope::Host(pattern.clone()),
                port: *port,
            }
            .to_string()
        });
        networks.chain(hosts).collect::<Vec<_>>().join(", ")
    }

    /// Judges `target` (a `target=` value) as far as possible without resolving it, for a
    /// probe of the port the target names (none: a probe without a port).
    pub fn screen(&self, target: &str) -> Screening {
        let (host, port) = split_target(target);
        let ports: Vec<u16> = port.and_then(|p| p.parse().ok()).into_iter().collect();
        self.screen_host(target, host, &ports)
    }

    /// Judges `target` by its host part `host` (as [`super::target::split_host_port`] or
    /// [`target_host`] took it) for a probe of `ports` (empty: a probe without a port, ICMP),
    /// as far as possible without resolving it.
    pub fn screen_host(&self, target: &str, host: &str, ports: &[u16]) -> Screening {
        if self.is_empty() {
            return Screening::Allowed;
        }
        if let Ok(address) = host.parse::<IpAddr>() {
            let allowed = self.network_ports(address);
            if !allowed.matched {
                return Screening::Refused(Refusal(format!(
                    "target {target:?} is not in any --probe.allow network"
                )));
            }
            return match allowed.refused(ports) {
                None => Screening::Allowed,
                Some(port) => {
                    Screening::Refused(allowed.refusal(target, &address.to_string(), port))
                }
            };
        }
        // Only a plain host name can match a pattern; anything odd (`%`, spaces, NUL) is judged
        // by what it resolves to.
        let name = normalise(host);
        let mut allowed = PortsAllowed::default();
        if is_host_name(&name) {
            for (pattern, port) in &self.hosts {
                if pattern.matches(&name) {
                    allowed.add(*port);
                }
            }
        }
        let refused = allowed.refused(ports);
        if allowed.matched && refused.is_none() {
            return Screening::Allowed;
        }
        if self.networks.is_empty() {
            return Screening::Refused(match refused {
                Some(port) if allowed.matched => allowed.refusal(target, &name, port),
                _ => Refusal(format!(
                    "target {target:?} matches no --probe.allow host pattern"
                )),
            });
        }
        Screening::Resolve {
            host: host.to_string(),
        }
    }

    /// Ports the network entries containing `address` allow.
    fn network_ports(&self, address: IpAddr) -> PortsAllowed {
        let mut allowed = PortsAllowed::default();
        for (network, port) in &self.networks {
            if network.contains(address) {
                allowed.add(*port);
            }
        }
        allowed
    }

    /// The verdict on a target that matched no host pattern, given what resolving it gave
    /// (a failed resolution refuses it), for a probe of `ports` (see [`Self::screen_host`]).
    pub fn check_resolved(
        &self,
        target: &str,
        addresses: &Result<Vec<IpAddr>, ResolveError>,
        ports: &[u16],
    ) -> Result<(), Refusal> {
        let failed = |why: String| {
            Err(Refusal(format!(
                "target {target:?} matches no --probe.allow host pattern and resolving it to \
                 check its addresses {why}"
            )))
        };
        match addresses {
            Ok(addresses) => self.check_addresses(target, addresses, ports),
            Err(ResolveError::Failed { error, .. }) => failed(format!("failed: {error}")),
            Err(ResolveError::Timeout { .. }) => {
                failed("did not finish before the deadline".into())
            }
            Err(ResolveError::NoAddress { .. }) => self.check_addresses(target, &[], ports),
        }
    }

    /// The verdict on a target whose host name matched no pattern, given the addresses it
    /// resolved to: allowed when there is at least one and every one lies in a network that
    /// allows every one of `ports` (empty: a probe without a port).
    pub fn check_addresses(
        &self,
        target: &str,
        addresses: &[IpAddr],
        ports: &[u16],
    ) -> Result<(), Refusal> {
        if addresses.is_empty() {
            return Err(Refusal(format!(
                "target {target:?} matches no --probe.allow host pattern and has no address"
            )));
        }
        for &address in addresses {
            let allowed = self.network_ports(address);
            if !allowed.matched {
                return Err(Refusal(format!(
                    "target {target:?} resolves to {address}, which is not in any --probe.allow \
                     network, and matches no --probe.allow host pattern"
                )));
            }
            if let Some(port) = allowed.refused(ports) {
                return Err(allowed.refusal(target, &address.to_string(), port));
            }
        }
        Ok(())
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
            Entry {
                scope: Scope::Host(HostPattern::Exact("tftp1.example.com".into())),
                port: None
            }
        );
        assert_eq!(
            parse_entry("*.example.com").unwrap(),
            Entry {
                scope: Scope::Host(HostPattern::Below(".example.com".into())),
                port: None
            }
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
            self.to_string()
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
        assert_eq!(list.check_addresses("peer.lab", &[ten], &[]), Ok(()));
        let err = list
            .check_addresses("peer.lab", &[ten, outside], &[])
            .unwrap_err();
        assert!(
            err.0.contains("\"peer.lab\" resolves to 198.51.100.1"),
            "{err}"
        );
        let err = list.check_addresses("peer.lab", &[], &[]).unwrap_err();
        assert!(err.0.contains("has no address"), "{err}");
    }

    #[test]
    fn entries_may_name_a_port() {
        for (value, shown, port) in [
            ("10.0.0.0/8:443", "10.0.0.0/8:443", Some(443)),
            ("[2001:db8::/32]:443", "[2001:db8::/32]:443", Some(443)),
            ("[2001:db8::1]:5201", "[2001:db8::1/128]:5201", Some(5201)),
            ("[2001:db8::/32]", "2001:db8::/32", None),
            ("192.0.2.7:69", "192.0.2.7/32:69", Some(69)),
            ("tftp.example.com:69", "tftp.example.com:69", Some(69)),
            ("*.example.com:5201", "*.example.com:5201", Some(5201)),
            // The entries without a port stay as they were.
            ("2001:db8::/32", "2001:db8::/32", None),
            ("2001:db8::1", "2001:db8::1/128", None),
            ("10.0.0.0/8", "10.0.0.0/8", None),
        ] {
            let entry = parse_entry(value).unwrap();
            assert_eq!(
                (entry.to_string().as_str(), entry.port),
                (shown, port),
                "{value}"
            );
        }
        for (bad, said) in [
            ("10.0.0.0/8:0", "port \"0\""),
            ("10.0.0.0/8:http", "port \"http\""),
            ("tftp.example.com:70000", "port \"70000\""),
            ("[2001:db8::/32]443", "not :PORT"),
            ("[2001:db8::/32", "']'"),
            ("[10.0.0.0/8]:443", "brackets hold an IPv6"),
            ("10.1.0.0/8:443", "did you mean 10.0.0.0/8?"),
            ("bad name:69", "neither a network"),
        ] {
            let err = parse_entry(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains(said), "{bad}: {err}");
        }
    }

    #[test]
    fn a_port_entry_allows_its_port_only() {
        let list = allowlist(&["10.0.0.0/8:443", "[2001:db8::/32]:443", "192.0.2.0/24"]);
        let judge =
            |target: &str, ports: &[u16]| list.screen_host(target, target_host(target), ports);
        assert_eq!(judge("10.0.0.5", &[443]), Screening::Allowed);
        assert_eq!(judge("2001:db8::5", &[443]), Screening::Allowed);
        let message = refused(judge("10.0.0.5", &[22]));
        assert!(
            message.contains("target \"10.0.0.5\": port 22 is not allowed")
                && message.contains("allow port 443 only"),
            "{message}"
        );
        // Every port of the probe must be allowed (ping's tcp_port=443&tcp_port=22).
        let message = refused(judge("10.0.0.5", &[443, 22]));
        assert!(message.contains("port 22"), "{message}");
        // A probe without a port (ICMP) needs an entry without one.
        let message = refused(judge("10.0.0.5", &[]));
        assert!(message.contains("without a port"), "{message}");
        assert_eq!(judge("192.0.2.9", &[]), Screening::Allowed);
        assert_eq!(judge("192.0.2.9", &[22, 23]), Screening::Allowed);
        // Two entries for one network add up.
        let both = allowlist(&["10.0.0.0/8:80", "10.0.0.0/8:443"]);
        assert_eq!(
            both.screen_host("10.1.1.1", "10.1.1.1", &[80, 443]),
            Screening::Allowed
        );
        // The target's own port, for screen().
        assert_eq!(list.screen("10.0.0.5:443"), Screening::Allowed);
        assert!(matches!(list.screen("10.0.0.5:22"), Screening::Refused(_)));
        // Resolved names: every address, every port.
        let ten: IpAddr = "10.1.1.1".parse().unwrap();
        assert_eq!(list.check_addresses("peer.lab", &[ten], &[443]), Ok(()));
        let err = list.check_addresses("peer.lab", &[ten], &[22]).unwrap_err();
        assert!(err.0.contains("port 22"), "{err}");
    }

    #[test]
    fn a_host_pattern_with_a_port() {
        let names = allowlist(&["tftp.example.com:69", "*.iperf.example:5201"]);
        assert_eq!(
            names.screen_host("tftp.example.com", "tftp.example.com", &[69]),
            Screening::Allowed
        );
        assert_eq!(
            names.screen_host("a.iperf.example:5201", "a.iperf.example", &[5201]),
            Screening::Allowed
        );
        let message = refused(names.screen_host("tftp.example.com:22", "tftp.example.com", &[22]));
        assert!(message.contains("port 22 is not allowed"), "{message}");
        // With networks, a name whose pattern refuses the port is judged by its addresses.
        let mixed = allowlist(&["tftp.example.com:69", "10.0.0.0/8"]);
        assert_eq!(
            mixed.screen_host("tftp.example.com", "tftp.example.com", &[22]),
            Screening::Resolve {
                host: "tftp.example.com".into()
            }
        );
    }
}
