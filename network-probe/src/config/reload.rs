//! The configuration in force and its reloading (SIGHUP, `POST /-/reload`).
//!
//! [`ConfigState`] holds what requests read ([`Live`]: the modules, the probe allowlist and the
//! settings in force), swapped whole on a successful reload. A reload reads `--config.file`
//! again and checks it; a bad file leaves the old configuration in force. Settings a reload
//! cannot apply (interfaces, datapath, flows, Jool, and a changed `--web.config.file`) are
//! reported as needing a restart, in the log and in the `/-/reload` answer. The outcome is
//! exported blackbox_exporter style (`network_probe_config_last_reload_successful`, ...).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{SystemTime, UNIX_EPOCH},
};

use log::{error, info, warn};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use sha2::{Digest, Sha256};

use super::{Config, ConfigError};
use crate::{cli::Cli, probe::allowlist::Allowlist};

/// What requests read; replaced whole by a reload.
#[derive(Debug)]
pub struct Live {
    pub config: Config,
    /// `probe.allow` of `config`, or `--probe.allow`.
    pub allowlist: Allowlist,
}

impl Live {
    fn new(config: Config, flags: &Cli) -> Live {
        let allowlist = Allowlist::new(&config.apply(flags).probe_allow);
        Live { config, allowlist }
    }
}

/// A successful reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// Changes the reload did not apply, one line each.
    pub needs_restart: Vec<String>,
}

/// Why a reload did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadError {
    /// The daemon was started without `--config.file`.
    NoFile,
    /// The file is unreadable or invalid; the old configuration stays.
    Invalid(ConfigError),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::NoFile => {
                f.write_str("no --config.file was given at start: there is nothing to reload")
            }
            ReloadError::Invalid(err) => write!(
                f,
                "reload failed, the previous configuration stays in force: {err}"
            ),
        }
    }
}

/// Reload outcomes, for the metrics.
#[derive(Debug, Default)]
struct Stats {
    last_successful: bool,
    last_success_seconds: f64,
    successes: u64,
    failures: u64,
}

/// The configuration in force, its file, and the reload statistics.
#[derive(Debug)]
pub struct ConfigState {
    file: Option<PathBuf>,
    /// The command line as given (its explicit flags win over the file).
    flags: Cli,
    live: RwLock<Arc<Live>>,
    /// The configuration loaded at start: what is in force for the settings a reload cannot
    /// apply.
    started: Config,
    /// SHA-256 of `--web.config.file` at start, to report a change as needing a restart.
    web_config: Option<(PathBuf, [u8; 32])>,
    /// One reload at a time, and its statistics.
    stats: Mutex<Stats>,
}

impl ConfigState {
    /// The state after the start-up load of `config` (from `flags.config_file`, if given).
    pub fn new(flags: &Cli, config: Config) -> ConfigState {
        let web_config = flags
            .web_config_file
            .as_ref()
            .and_then(|path| Some((path.clone(), file_hash(path)?)));
        ConfigState {
            file: flags.config_file.clone(),
            flags: flags.clone(),
            live: RwLock::new(Arc::new(Live::new(config.clone(), flags))),
            started: config,
            web_config,
            stats: Mutex::new(Stats {
                last_successful: true,
                last_success_seconds: now_seconds(),
                ..Stats::default()
            }),
        }
    }

    /// The settings the daemon starts with: the command line over the start-up file.
    pub fn start_settings(&self) -> Cli {
        self.started.apply(&self.flags)
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<Live> {
        Arc::clone(&crate::support::sync::read(&self.live))
    }

    /// `/config`.
    pub fn render(&self) -> String {
        self.current().config.render(&self.flags, &self.started)
    }

    /// Reads the file again and, if it is valid, puts it in force. Logs the outcome.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let Some(path) = &self.file else {
            warn!("reload requested, but no --config.file was given at start");
            return Err(ReloadError::NoFile);
        };
        let mut stats = crate::support::sync::lock(&self.stats);
        match super::load(path) {
            Err(err) => {
                stats.last_successful = false;
                stats.failures += 1;
                let err = ReloadError::Invalid(err);
                error!("{:?}: {err}", path.display());
                Err(err)
            }
            Ok(config) => {
                let mut needs_restart = self.started.needs_restart(&config, &self.flags);
                if let Some((web_path, hash)) = &self.web_config
                    && file_hash(web_path).as_ref() != Some(hash)
                {
                    needs_restart.push(format!(
                        "--web.config.file {:?} changed: it is read at start only and needs a \
                         restart (the running TLS and auth settings stay in force)",
                        web_path.display()
                    ));
                }
                *crate::support::sync::write(&self.live) = Arc::new(Live::new(config, &self.flags));
                stats.last_successful = true;
                stats.last_success_seconds = now_seconds();
                stats.successes += 1;
                info!(
                    "configuration reloaded from {:?}: {} modules",
                    path.display(),
                    self.current().config.modules.len()
                );
                for line in &needs_restart {
                    warn!("{line}");
                }
                Ok(Reloaded { needs_restart })
            }
        }
    }

    /// The reload metrics, for the daemon's registry.
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(ReloadCollector(Arc::clone(self)))
    }
}

fn file_hash(path: &Path) -> Option<[u8; 32]> {
    Some(Sha256::digest(std::fs::read(path).ok()?).into())
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

#[derive(Debug)]
struct ReloadCollector(Arc<ConfigState>);

impl Collector for ReloadCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (successful, timestamp, successes, failures) = {
            let stats = crate::support::sync::lock(&self.0.stats);
            (
                stats.last_successful,
                stats.last_success_seconds,
                stats.successes,
                stats.failures,
            )
        };
        let gauge = ConstGauge::new(i64::from(successful));
        gauge.encode(encoder.encode_descriptor(
            "network_probe_config_last_reload_successful",
            "Whether the last configuration load (at start or by reload) succeeded (1) or \
             failed and left the previous configuration in force (0)",
            None,
            gauge.metric_type(),
        )?)?;
        let gauge = ConstGauge::new(timestamp);
        gauge.encode(encoder.encode_descriptor(
            "network_probe_config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded, in seconds since the Unix epoch",
            None,
            gauge.metric_type(),
        )?)?;
        let mut family = encoder.encode_descriptor(
            "network_probe_config_reloads",
            "Configuration reloads requested by SIGHUP or POST /-/reload, by result",
            None,
            MetricType::Counter,
        )?;
        for (result, count) in [("success", successes), ("failure", failures)] {
            ConstCounter::new(count).encode(family.encode_family(&[("result", result)])?)?;
        }
        Ok(())
    }
}
