//! The iperf3 prober's query parameters: reading and checking them into a [`Config`] (target
//! and port, test length, direction, transport, bitrate, bind address, parallel streams and the
//! optional RSA login, whose key file [`super::auth`] reads). Every error names the parameter
//! and the value. Through `/probe` the key comes parsed from the module's configuration
//! ([`crate::probe::Loaded`]); a request never names a key file (the handler's policy).

use std::{net::IpAddr, time::Duration};

use super::{
    auth::{Auth, Padding},
    protocol::{self, Transport},
};
use crate::probe::{BadRequest, Query, target::split_host_port};

/// Parameters this prober accepts (besides `module`, `target` and `debug`, which the framework
/// reads).
pub const PARAMETERS: &[&str] = &[
    "port",
    "period",
    "reverse_mode",
    "udp_mode",
    "bitrate",
    "bind",
    "parallel",
    "username",
    "password",
    "public_key_file",
    "padding",
];
/// The parameters a request may set unless the module's policy says otherwise: the seed
/// exporters' (edgard/iperf3_exporter and its drop-ins). Streams, the bind address and the
/// login are the module's.
pub const REQUEST_PARAMETERS: &[&str] = &["port", "period", "reverse_mode", "udp_mode", "bitrate"];
/// iperf3's default server port.
pub const DEFAULT_PORT: u16 = 5201;
/// Test length when `period` is not given (the seed's default).
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(5);
/// Most parallel streams accepted.
pub const MAX_PARALLEL: u32 = 128;
/// UDP bitrate when none is given (iperf3's default).
pub const DEFAULT_UDP_BITRATE: u64 = 1_000_000;

/// One probe's settings, from the query string.
#[derive(Clone, Debug)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub period: Duration,
    pub reverse: bool,
    pub transport: Transport,
    /// Bits per second per stream; 0 is unlimited (TCP).
    pub bitrate: u64,
    pub bind: Option<IpAddr>,
    pub parallel: u32,
    pub auth: Option<Auth>,
}

impl Config {
    /// Reads and checks the query; errors name the parameter and the value. A
    /// `public_key_file` is read here (for callers outside `/probe`: the configuration at load
    /// time, tests).
    pub fn from_query(query: &Query) -> Result<Config, BadRequest> {
        Config::from_query_loaded(query, &crate::probe::Loaded::default())
    }

    /// [`Config::from_query`] with what the module loaded: its parsed public key stands for
    /// `public_key_file`, which is then not read.
    pub fn from_query_loaded(
        query: &Query,
        loaded: &crate::probe::Loaded,
    ) -> Result<Config, BadRequest> {
        let unknown = super::super::unknown_parameters(query, PARAMETERS);
        if !unknown.is_empty() {
            return Err(BadRequest(format!(
                "unknown parameter(s) {} for module iperf3 (known: {})",
                unknown
                    .iter()
                    .map(|name| format!("{name:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                std::iter::once("target")
                    .chain(PARAMETERS.iter().copied())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let target = query.required("target")?;
        let (host, target_port) = split_host_port(target)?;
        let port = match query.get("port")? {
            None | Some("") => target_port.unwrap_or(DEFAULT_PORT),
            Some(_) => query.parse_or("port", DEFAULT_PORT, "a port number (1-65535)")?,
        };
        if port == 0 {
            return Err(BadRequest(
                "parameter \"port\": \"0\" is not a port number (1-65535)".into(),
            ));
        }
        let period = match query.get("period")? {
            None | Some("") => DEFAULT_PERIOD,
            Some(text) => parse_period(text)?,
        };
        let transport = if query.flag("udp_mode", false)? {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        let bitrate = match query.get("bitrate")? {
            None | Some("") if transport == Transport::Udp => DEFAULT_UDP_BITRATE,
            None | Some("") => 0,
            Some(text) => protocol::parse_bitrate(text).ok_or_else(|| {
                BadRequest(format!(
                    "parameter \"bitrate\": {text:?} is not a bitrate in bits per second (e.g. 10M, 500k)"
                ))
            })?,
        };
        let bind = match query.get("bind")? {
            None | Some("") => None,
            Some(text) => Some(text.parse().map_err(|_| {
                BadRequest(format!("parameter \"bind\": {text:?} is not an IP address"))
            })?),
        };
        let parallel = query.parse_or("parallel", 1u32, "a number of streams")?;
        if !(1..=MAX_PARALLEL).contains(&parallel) {
            return Err(BadRequest(format!(
                "parameter \"parallel\": {parallel} is not from 1 to {MAX_PARALLEL}"
            )));
        }
        Ok(Config {
            host,
            port,
            period,
            reverse: query.flag("reverse_mode", false)?,
            transport,
            bitrate,
            bind,
            parallel,
            auth: auth_from_query(query, loaded)?,
        })
    }

    /// The server as `host:port`, for the log.
    pub(super) fn server_key(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Seconds (`5`, `2.5`) or a duration with unit (`5s`, `1500ms`, `1m`).
pub(crate) fn parse_period(text: &str) -> Result<Duration, BadRequest> {
    let bad = || {
        BadRequest(format!(
            "parameter \"period\": {text:?} is not a positive duration (e.g. 5, 2.5 or 5s)"
        ))
    };
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else {
        (text, 1.0)
    };
    let seconds = number.parse::<f64>().map_err(|_| bad())? * scale;
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn auth_from_query(
    query: &Query,
    loaded: &crate::probe::Loaded,
) -> Result<Option<Auth>, BadRequest> {
    let username = query.get("username")?.filter(|v| !v.is_empty());
    let password = query.get("password")?;
    let key_file = query.get("public_key_file")?.filter(|v| !v.is_empty());
    if let (Some(public_key), None) = (&loaded.public_key, key_file) {
        let padding = padding(query)?;
        let Some(username) = username else {
            return Err(BadRequest(
                "authentication needs \"username\", \"password\" and \"public_key_file\" together"
                    .into(),
            ));
        };
        return Ok(Some(Auth {
            username: username.to_string(),
            password: password.unwrap_or("").to_string(),
            public_key: rsa::RsaPublicKey::clone(public_key),
            padding,
        }));
    }
    let padding = padding(query)?;
    let (username, key_file) = match (username, key_file) {
        (None, None) if password.is_none() => return Ok(None),
        (Some(username), Some(key_file)) => (username, key_file),
        _ => {
            return Err(BadRequest(
                "authentication needs \"username\", \"password\" and \"public_key_file\" together"
                    .into(),
            ));
        }
    };
    Ok(Some(Auth {
        username: username.to_string(),
        password: password.unwrap_or("").to_string(),
        public_key: super::auth::load_public_key(key_file)?,
        padding,
    }))
}

fn padding(query: &Query) -> Result<Padding, BadRequest> {
    match query.get("padding")? {
        None | Some("") | Some("pkcs1") => Ok(Padding::Pkcs1),
        Some("oaep") => Ok(Padding::Oaep),
        Some(other) => Err(BadRequest(format!(
            "parameter \"padding\": {other:?} is not pkcs1 or oaep"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, BadRequest> {
        Config::from_query(&Query::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn key_files_are_read_with_a_cap() {
        // The name comes from the request: endless devices and FIFOs are refused unread, and
        // a regular file is read up to the cap only.
        let with_key = |file: &str| {
            config(&[
                ("target", "server.example"),
                ("username", "alice"),
                ("password", "secret"),
                ("public_key_file", file),
            ])
            .unwrap_err()
            .to_string()
        };
        let err = with_key("/dev/zero");
        assert!(err.contains("\"/dev/zero\" is not a regular file"), "{err}");
        let large = std::env::temp_dir().join(format!("np-key-{}.pem", std::process::id()));
        std::fs::write(&large, vec![b'A'; 100_000]).unwrap();
        let err = with_key(large.to_str().unwrap());
        std::fs::remove_file(&large).unwrap();
        assert!(err.contains("is larger than 65536 bytes"), "{err}");
    }

    #[test]
    fn parameters_and_defaults() {
        let c = config(&[("module", "iperf3"), ("target", "server.example")]).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("server.example", 5201));
        assert_eq!(c.period, DEFAULT_PERIOD);
        assert_eq!(
            (c.reverse, c.transport, c.bitrate, c.parallel),
            (false, Transport::Tcp, 0, 1)
        );
        let c = config(&[
            ("target", "10.0.0.1:5301"),
            ("period", "2.5"),
            ("reverse_mode", "true"),
            ("parallel", "2"),
        ])
        .unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.reverse, c.parallel),
            ("10.0.0.1", 5301, true, 2)
        );
        assert_eq!(c.period, Duration::from_millis(2500));
        let c = config(&[
            ("target", "[::1]:7000"),
            ("port", "7001"),
            ("udp_mode", "1"),
        ])
        .unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.transport),
            ("::1", 7001, Transport::Udp)
        );
        assert_eq!(c.bitrate, DEFAULT_UDP_BITRATE);
        let c = config(&[
            ("target", "::1"),
            ("bitrate", "10M"),
            ("period", "1500ms"),
            ("bind", "127.0.0.1"),
        ])
        .unwrap();
        assert_eq!(
            (c.host.as_str(), c.bitrate, c.period),
            ("::1", 10_000_000, Duration::from_millis(1500))
        );
        assert_eq!(c.bind, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("target", "a"), ("duration", "5")], "\"duration\""),
            (&[], "missing parameter \"target\""),
            (&[("target", "a:http")], "\"http\""),
            (&[("target", "a"), ("port", "99999")], "\"99999\""),
            (&[("target", "a"), ("period", "-1")], "\"-1\""),
            (&[("target", "a"), ("period", "soon")], "\"soon\""),
            (&[("target", "a"), ("bitrate", "fast")], "\"fast\""),
            (&[("target", "a"), ("bind", "eth0")], "\"eth0\""),
            (&[("target", "a"), ("parallel", "0")], "\"parallel\""),
            (&[("target", "a"), ("reverse_mode", "maybe")], "\"maybe\""),
            (&[("target", "a"), ("padding", "none")], "\"none\""),
            (&[("target", "a"), ("username", "u")], "together"),
            (
                &[
                    ("target", "a"),
                    ("username", "u"),
                    ("public_key_file", "/nonexistent/key.pem"),
                ],
                "/nonexistent/key.pem",
            ),
            (&[("target", "[::1")], "']'"),
        ];
        for (pairs, needle) in cases {
            let err = config(pairs).unwrap_err();
            assert!(err.0.contains(needle), "{pairs:?}: {}", err.0);
        }
    }
}
