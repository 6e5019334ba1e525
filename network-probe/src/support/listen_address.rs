//! `--web.listen-address` and `--web.probe-listen` addresses (`HOST:PORT`, `[V6]:PORT`,
//! `:PORT`) turned into socket addresses. Used by the flag parser and by the listeners alike.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::error::{Error, Result};

/// Resolves a `--web.listen-address` value (`HOST:PORT`, `[V6]:PORT` or `:PORT`) to socket
/// addresses. `:PORT` means every local address, IPv6 and IPv4.
pub(crate) fn resolve(address: &str) -> Result<Vec<SocketAddr>> {
    let invalid = |reason: String| Error::ListenAddress {
        address: address.to_string(),
        reason,
    };
    if let Some(port) = address.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| invalid(format!("port {port:?} is not a number from 0 to 65535")))?;
        return Ok(vec![
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)),
        ]);
    }
    let Some((_, port)) = address.rsplit_once(':') else {
        return Err(invalid("expected HOST:PORT or :PORT".into()));
    };
    if port.parse::<u16>().is_err() {
        return Err(invalid(format!(
            "port {port:?} is not a number from 0 to 65535"
        )));
    }
    let addresses: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|err| invalid(err.to_string()))?
        .collect();
    if addresses.is_empty() {
        return Err(invalid("the host name resolves to no address".into()));
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        let all = resolve(":9435").unwrap();
        assert_eq!(all[0].to_string(), "[::]:9435");
        assert_eq!(all[1].to_string(), "0.0.0.0:9435");
        assert_eq!(
            resolve("127.0.0.1:1234").unwrap()[0].to_string(),
            "127.0.0.1:1234"
        );
        assert_eq!(resolve("[::1]:80").unwrap()[0].to_string(), "[::1]:80");
        for bad in ["9435", ":http", ":70000", "127.0.0.1:", "host:port"] {
            let err = resolve(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
