//! Command-line flags, named as Prometheus exporters name them (`--web.*`, `--log.*`).

use clap::{Parser, ValueEnum};

/// Default `--web.listen-address`: every address, port 9435.
pub const DEFAULT_LISTEN_ADDRESS: &str = ":9435";

/// Network telemetry daemon: eBPF traffic accounting for Prometheus.
#[derive(Debug, Clone, Parser)]
#[command(name = "network-probe", version, about, long_about = None)]
pub struct Cli {
    /// Address to listen on for the web interface and telemetry, as HOST:PORT, [V6]:PORT or :PORT
    /// (all addresses).
    #[arg(long = "web.listen-address", value_name = "ADDRESS", default_value = DEFAULT_LISTEN_ADDRESS)]
    pub listen_address: String,

    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics",
          value_parser = parse_telemetry_path)]
    pub telemetry_path: String,

    /// Interface to attach the datapath to (repeatable). Default: the interfaces of the IPv4 and
    /// IPv6 default routes.
    #[arg(long = "interface", value_name = "NAME")]
    pub interfaces: Vec<String>,

    /// Only log messages with the given severity or above.
    #[arg(long = "log.level", value_name = "LEVEL", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
}

/// Severity threshold for `--log.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

fn parse_telemetry_path(value: &str) -> Result<String, String> {
    if !value.starts_with('/') {
        return Err(format!("{value:?} must start with '/'"));
    }
    if value.starts_with("/-/") || value == "/" {
        return Err(format!("{value:?} collides with a built-in endpoint"));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_exporter_conventions() {
        let cli = Cli::try_parse_from(["network-probe"]).unwrap();
        assert_eq!(cli.listen_address, ":9435");
        assert_eq!(cli.telemetry_path, "/metrics");
        assert!(cli.interfaces.is_empty());
        assert_eq!(cli.log_level, LogLevel::Info);
    }

    #[test]
    fn interface_is_repeatable() {
        let cli = Cli::try_parse_from(["network-probe", "--interface", "a0", "--interface", "b0"])
            .unwrap();
        assert_eq!(cli.interfaces, ["a0", "b0"]);
    }

    #[test]
    fn bad_values_name_the_value() {
        let err = Cli::try_parse_from(["network-probe", "--web.telemetry-path", "metrics"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"metrics\" must start with '/'"), "{err}");
        let err = Cli::try_parse_from(["network-probe", "--log.level", "loud"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("loud"), "{err}");
    }
}
