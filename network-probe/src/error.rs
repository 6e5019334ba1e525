//! Start-up and run-time errors of the daemon: each renders as one line an operator can act on,
//! and maps to a documented exit code.

use std::io;

use thiserror::Error;

/// Exit codes (documented in README.md).
pub(crate) mod exit_code {
    /// Any failure not listed below.
    pub(crate) const FAILURE: u8 = 1;
    /// Bad command line (clap's own code).
    pub(crate) const USAGE: u8 = 2;
    /// Missing root / capabilities.
    pub(crate) const PRIVILEGES: u8 = 3;
    /// Interface missing, or no default route to pick one from.
    pub(crate) const INTERFACE: u8 = 4;
    /// `--web.listen-address` cannot be bound.
    pub(crate) const LISTEN: u8 = 5;
    /// The kernel lacks a feature the datapath needs (BTF, TCX).
    pub(crate) const KERNEL: u8 = 6;
}

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "missing capability {capability} (effective set of uid {uid}): run as root, or grant it \
         with `setcap cap_bpf,cap_perfmon,cap_net_admin=ep <binary>` or \
         AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_NET_ADMIN in the systemd unit"
    )]
    MissingCapability { capability: &'static str, uid: u32 },

    #[error("interface {name:?} does not exist (list interfaces with `ip link`)")]
    NoSuchInterface { name: String },

    #[error(
        "no default route to pick interfaces from: name them with --interface (see `ip route`)"
    )]
    NoDefaultRoute,

    #[error("cannot listen on {address}: {source}{hint}")]
    Listen {
        address: String,
        #[source]
        source: io::Error,
        hint: &'static str,
    },

    #[error("invalid --web.listen-address {address:?}: {reason}")]
    ListenAddress { address: String, reason: String },

    #[error("invalid --web.config.file {path:?}: {reason}")]
    WebConfig { path: String, reason: String },

    #[error("invalid --config.file {path:?}: {reason}")]
    Config { path: String, reason: String },

    #[error("kernel {release} lacks {feature}: {hint}")]
    KernelFeature {
        release: String,
        feature: &'static str,
        hint: &'static str,
    },

    #[error("{context}: {message}")]
    Datapath { context: String, message: String },

    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::MissingCapability { .. } => exit_code::PRIVILEGES,
            Error::NoSuchInterface { .. } | Error::NoDefaultRoute => exit_code::INTERFACE,
            Error::Listen { .. } => exit_code::LISTEN,
            Error::ListenAddress { .. } | Error::WebConfig { .. } | Error::Config { .. } => {
                exit_code::USAGE
            }
            Error::KernelFeature { .. } => exit_code::KERNEL,
            Error::Datapath { .. } | Error::Other(_) => exit_code::FAILURE,
        }
    }

    /// A bind failure on `--web.listen-address`, with a hint for the common causes.
    pub fn listen(address: impl Into<String>, source: io::Error) -> Self {
        let hint = match source.kind() {
            io::ErrorKind::AddrInUse => {
                " (another process holds this port; stop it or choose another with \
                 --web.listen-address)"
            }
            io::ErrorKind::AddrNotAvailable => " (no local interface has this address)",
            io::ErrorKind::PermissionDenied => " (ports below 1024 need CAP_NET_BIND_SERVICE)",
            _ => "",
        };
        Error::Listen {
            address: address.into(),
            source,
            hint,
        }
    }

    /// Wraps an error from aya (or anything with a source chain) into one line.
    pub fn datapath(context: impl Into<String>, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(inner) = source {
            let text = inner.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = inner.source();
        }
        let context = context.into();
        // The verifier's log runs to thousands of lines: one line here, the log at debug level.
        if let Some((first, _)) = message.split_once('\n') {
            log::debug!("{context}: {message}");
            message = format!("{first} (the verifier log is printed with --log.level=debug)");
        }
        Error::Datapath { context, message }
    }
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
