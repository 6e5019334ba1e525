//! A `target=` value from parsing to addresses, the same way for every prober: one syntax
//! ([`split_host_port`]), one resolver ([`Resolver`], the system's through tokio in production),
//! one resolution per target and request ([`resolve`]) and one failure vocabulary
//! ([`ResolveError`], the `resolve_failed` reason for every prober that reports reasons).
//!
//! Resolving once matters for the allowlist: the `/probe` handler judges a name by the
//! addresses it resolved to and hands those same addresses to the prober, which never resolves
//! again, so a DNS answer that changes between the check and the probe cannot matter (before,
//! the handler and the prober each resolved; see docs/probe-routing.md).

use std::{
    fmt,
    future::Future,
    io,
    net::{IpAddr, Ipv6Addr},
    pin::Pin,
    time::Instant,
};

use super::BadRequest;

/// A future a trait object can return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One `target=` of a request, parsed and resolved once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The value as the request gave it.
    pub raw: String,
    /// The host part: a name, or an address without brackets.
    pub host: String,
    /// The port the target names, if any.
    pub port: Option<u16>,
    /// What the host resolved to (an address resolves to itself without a lookup).
    pub addresses: Result<Vec<IpAddr>, ResolveError>,
}

impl Target {
    /// Parses and resolves `raw` with `resolver`, with no allowlist: for callers that run a
    /// prober directly (integration tests, benchmarks). `/probe` goes through
    /// [`super::handler`], which judges the allowlist on the same resolution.
    pub async fn resolve(
        raw: &str,
        resolver: &dyn Resolver,
        deadline: Instant,
    ) -> Result<Target, BadRequest> {
        let (host, port) = split_host_port(raw)?;
        let addresses = resolve(resolver, &host, deadline).await;
        Ok(Target {
            raw: raw.to_string(),
            host,
            port,
            addresses,
        })
    }
}

/// Why a target has no address to probe. Every prober reports it alike: the `reason` label
/// `resolve_failed` (blackbox_exporter counts a failed or timed-out lookup as the probe's
/// failure to resolve, not as a probe timeout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolveError {
    /// The resolver answered with an error.
    Failed { host: String, error: String },
    /// The resolver did not answer before the probe deadline.
    Timeout { host: String },
    /// The resolver answered with no address.
    NoAddress { host: String },
}

impl ResolveError {
    /// The failure reason label probers export for it.
    pub const LABEL: &'static str = "resolve_failed";
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Failed { host, error } => write!(f, "cannot resolve {host:?}: {error}"),
            ResolveError::Timeout { host } => {
                write!(f, "resolving {host:?} did not finish before the deadline")
            }
            ResolveError::NoAddress { host } => write!(f, "{host:?} has no address"),
        }
    }
}

impl std::error::Error for ResolveError {}

/// Looks names up. The production one is [`SystemResolver`]; tests give their own to control
/// the answers.
pub trait Resolver: Send + Sync + fmt::Debug {
    /// The addresses of `host` (a name, never an address).
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>>;
}

/// The system resolver (getaddrinfo, through tokio's blocking pool).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let found = tokio::net::lookup_host((host, 0)).await?;
            let mut addresses: Vec<IpAddr> = Vec::new();
            for address in found {
                if !addresses.contains(&address.ip()) {
                    addresses.push(address.ip());
                }
            }
            Ok(addresses)
        })
    }
}

/// The addresses of `host` before `deadline`: an address is itself, a name is looked up once.
pub(crate) async fn resolve(
    resolver: &dyn Resolver,
    host: &str,
    deadline: Instant,
) -> Result<Vec<IpAddr>, ResolveError> {
    if let Ok(address) = host.parse::<IpAddr>() {
        return Ok(vec![address]);
    }
    match tokio::time::timeout_at(deadline.into(), resolver.lookup(host)).await {
        Err(_) => Err(ResolveError::Timeout {
            host: host.to_string(),
        }),
        Ok(Err(err)) => Err(ResolveError::Failed {
            host: host.to_string(),
            error: err.to_string(),
        }),
        Ok(Ok(addresses)) if addresses.is_empty() => Err(ResolveError::NoAddress {
            host: host.to_string(),
        }),
        Ok(Ok(addresses)) => Ok(addresses),
    }
}

/// Splits a `target=` value: `host`, `host:port`, `v4:port`, a bare IPv6 address, `[v6]` or
/// `[v6]:port`. A port is 1 to 65535 (0 is refused for every prober); a host name is letters,
/// digits, `-`, `_` and dots, at most 253 bytes. Errors name the parameter and the value.
pub(crate) fn split_host_port(target: &str) -> Result<(String, Option<u16>), BadRequest> {
    let bad = |why: String| BadRequest(format!("parameter \"target\": {target:?} {why}"));
    let port = |text: &str| {
        text.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| {
            BadRequest(format!(
                "parameter \"target\": port {text:?} in {target:?} is not a port number from 1 \
                 to 65535"
            ))
        })
    };
    if let Ok(address) = target.parse::<IpAddr>() {
        return Ok((address.to_string(), None));
    }
    if let Some(rest) = target.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("lacks the closing ']'".into()))?;
        let address = inner
            .parse::<Ipv6Addr>()
            .map_err(|_| bad("is not a bracketed IPv6 address".into()))?;
        let port = match after.strip_prefix(':') {
            Some(text) => Some(port(text)?),
            None if after.is_empty() => None,
            None => return Err(bad("has text after the ']' that is not :PORT".into())),
        };
        return Ok((address.to_string(), port));
    }
    let (host, port) = match target.rsplit_once(':') {
        Some((host, text)) if !host.contains(':') => (host, Some(port(text)?)),
        Some(_) => return Err(bad("is not a host name, an address or HOST:PORT".into())),
        None => (target, None),
    };
    if let Ok(address) = host.parse::<std::net::Ipv4Addr>() {
        return Ok((address.to_string(), port));
    }
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !valid_name {
        return Err(bad("is not a host name, an address or HOST:PORT".into()));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_alike_for_every_prober() {
        for (target, host, port) in [
            ("h", "h", None),
            ("host.example:69", "host.example", Some(69)),
            ("10.0.0.1", "10.0.0.1", None),
            ("10.0.0.1:5201", "10.0.0.1", Some(5201)),
            ("::1", "::1", None),
            ("[::1]", "::1", None),
            ("[fe80::1]:70", "fe80::1", Some(70)),
        ] {
            assert_eq!(
                split_host_port(target).unwrap(),
                (host.to_string(), port),
                "{target}"
            );
        }
        for (target, said) in [
            ("h:0", "port \"0\" in \"h:0\""),
            ("[::1]:0", "port \"0\""),
            ("a:http", "\"http\""),
            ("h:x", "\"h:x\""),
            ("a b", "\"a b\""),
            ("[zz]", "\"[zz]\""),
            ("[::1", "']'"),
            ("[::1]x", "\"[::1]x\""),
            ("", "is not a host name"),
            ("a/b", "\"a/b\""),
        ] {
            let err = split_host_port(target).unwrap_err().0;
            assert!(err.contains(said), "{target}: {err}");
            assert!(err.starts_with("parameter \"target\""), "{err}");
        }
    }

    #[tokio::test]
    async fn addresses_are_not_looked_up_and_failures_are_named() {
        #[derive(Debug)]
        struct Never;
        impl Resolver for Never {
            fn lookup<'a>(&'a self, _: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
                Box::pin(std::future::pending())
            }
        }
        let soon = Instant::now() + std::time::Duration::from_millis(50);
        assert_eq!(
            resolve(&Never, "192.0.2.1", soon).await.unwrap(),
            ["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        let err = resolve(&Never, "slow.example", soon).await.unwrap_err();
        assert_eq!(
            err,
            ResolveError::Timeout {
                host: "slow.example".into()
            }
        );
        assert!(err.to_string().contains("before the deadline"), "{err}");
        let err = resolve(
            &SystemResolver,
            "name.invalid",
            soon + std::time::Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(
            err,
            ResolveError::Failed { .. } | ResolveError::Timeout { .. }
        ));
    }
}
