//! The configuration file (`--config.file`, YAML): named probe modules in the blackbox_exporter
//! style, and the daemon settings that also have a flag (interfaces, datapath, flows, Jool
//! instances, the probe allowlist).
//!
//! This module owns the file format and its validation, both pure ([`parse`] is what the
//! `config_parse` fuzz target drives): every error names the field by its path
//! (`modules.tftp_big.tftp.blksize`) and the bad value, and unknown fields are errors. It reuses
//! the parsers that already exist instead of having its own:
//! - a module's per-prober options are that prober's query parameters, checked by the prober's
//!   own query validation ([`crate::probe::Probers::validate`]); at request time they are the defaults of the
//!   query ([`crate::probe::Query::with_defaults`]), so a request's parameters override them;
//! - a daemon setting is checked by parsing it as its flag with clap (the flag's own value
//!   parser), so a file value and a flag value are always read alike.
//!
//! Each module also has a request policy ([`crate::probe::policy::Policy`], built here from the
//! module's `policy:` section and `disabled:`, and `probe.disable`; the request handler enforces
//! it): which parameters a request may set, which module options it may not override, numeric
//! bounds (checked against the module's own options at load time), and whether it runs at
//! all. An iperf3 `public_key_file` is read and parsed here, once ([`crate::probe::Loaded`]);
//! secrets (`password`, `public_key_file`) are shown as `<secret>` in `/config` and in
//! `?debug=true`.
//!
//! The parts: [`raw`] (the file as serde reads it), [`value`] (the error naming a field's path,
//! reading YAML leaves), [`modules`] (probe modules and their policy), [`settings`] (the settings
//! shared with the flags), [`reload`] (the configuration in force) and [`web`] (the separate
//! `--web.config.file`). This file ties them: [`parse`], [`load`] and [`Config`].
//!
//! Precedence: a flag given on the command line wins over the file, the file wins over the
//! flag's default ([`Config::apply`]). Reloading ([`reload`]) swaps the modules and the probe
//! allowlist; the other settings need a restart and are reported as such.
//!
//! YAML is read and written with `yaml_serde`, the YAML organization's maintained fork of the
//! archived `serde_yaml`: the same `Value` and the same errors that start with the field's path,
//! YAML 1.2 scalars (`yes`/`on` stay strings, `017` is not octal). The pure-Rust `serde-saphyr`
//! has no `Value` or field paths and reads an untyped `yes` as a boolean; docs/configuration.md
//! ("The YAML parser") compares the candidates.

mod modules;
mod raw;
pub(crate) mod reload;
mod settings;
mod value;
pub mod web;

use std::{collections::BTreeMap, path::Path, sync::Arc};

use clap::Parser as _;
use yaml_serde::{Mapping, Value};

use crate::{cli::Cli, probe::BadRequest};

pub use self::{modules::Module, value::ConfigError};
use self::{
    modules::{builtin_modules, check_module},
    raw::RawFile,
    settings::{FileSetting, SETTINGS, clap_reason, flag_arguments, insert_path, texts_as_value},
    value::{kind, list, shown_value},
};

/// Largest configuration file read (a bound on untrusted input; real files are a few KiB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A checked configuration: the file's modules plus the built-in ones, and the file's daemon
/// settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub modules: BTreeMap<String, Arc<Module>>,
    settings: Vec<FileSetting>,
    /// `probe.disable`: probers turned off.
    disabled_probers: Vec<&'static str>,
}

impl Default for Config {
    /// Without a file: the built-in modules only.
    fn default() -> Self {
        Config {
            modules: builtin_modules(),
            settings: Vec::new(),
            disabled_probers: Vec::new(),
        }
    }
}

/// Reads and checks the file at `path` (at most [`MAX_FILE_BYTES`]).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    use std::io::Read as _;
    let cannot_read = |err: std::io::Error| {
        ConfigError::new("", format!("cannot read {:?}: {err}", path.display()))
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(cannot_read)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(cannot_read)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::new(
            "",
            format!("{:?} is larger than {MAX_FILE_BYTES} bytes", path.display()),
        ));
    }
    parse(&text)
}

/// Parses and checks a configuration file's text. Pure except that iperf3 modules naming a
/// `public_key_file` read that file (as the prober's query validation does).
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let document: Value = yaml_serde::from_str(text)
        .map_err(|err| ConfigError::new("", format!("not valid YAML: {err}")))?;
    let raw: RawFile = match document {
        Value::Null => RawFile::default(),
        Value::Mapping(_) => yaml_serde::from_str(text).map_err(|err| {
            // yaml_serde puts the path first ("modules.x: unknown field ..."): keep it as is.
            ConfigError::new("", err.to_string())
        })?,
        other => {
            return Err(ConfigError::new(
                "",
                format!(
                    "expected a mapping at the top level, found {}",
                    kind(&other)
                ),
            ));
        }
    };
    let disabled_probers = match raw.probe.as_ref().and_then(|probe| probe.disable.as_ref()) {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => {
            let mut probers = Vec::new();
            for (index, name) in list("probe.disable", value)?.into_iter().enumerate() {
                let spec = crate::probe::spec(&name).ok_or_else(|| {
                    ConfigError::new(
                        format!("probe.disable[{index}]"),
                        format!(
                            "{name:?} is not a prober (known: {})",
                            crate::probe::names().join(", ")
                        ),
                    )
                })?;
                probers.push(spec.name);
            }
            probers
        }
    };
    let mut modules = builtin_modules();
    for (name, module) in raw.modules.iter().flatten() {
        modules.insert(name.clone(), Arc::new(check_module(name, module)?));
    }
    for module in modules.values_mut() {
        if disabled_probers.contains(&module.prober) {
            let why = format!("probe.disable turns the {} prober off", module.prober);
            Arc::make_mut(module).disable(why);
        }
    }
    let mut settings = Vec::new();
    for (index, setting) in SETTINGS.iter().enumerate() {
        let Some(value) = (setting.get)(&raw) else {
            continue;
        };
        if value.is_null() {
            continue;
        }
        let args = flag_arguments(setting, value)?;
        let parsed = Cli::try_parse_from(std::iter::once("network-probe".to_string()).chain(args))
            .map_err(|err| ConfigError::new(setting.path, clap_reason(&err, value)))?;
        settings.push(FileSetting {
            index,
            shown: value.clone(),
            parsed: Box::new(parsed),
        });
    }
    Ok(Config {
        modules,
        settings,
        disabled_probers,
    })
}

impl Config {
    /// The module named `name` (`/probe?module=`, `network-probe probe NAME`); the error names it
    /// and lists the configured ones.
    pub fn module(&self, name: &str) -> Result<Arc<Module>, BadRequest> {
        self.modules.get(name).cloned().ok_or_else(|| {
            BadRequest(format!(
                "unknown module {name:?} (configured: {})",
                self.modules
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// The settings in force: `flags` (the command line) with every file setting whose flag was
    /// not given on the command line. Flags win over the file; the file wins over defaults.
    pub fn apply(&self, flags: &Cli) -> Cli {
        let mut effective = flags.clone();
        for setting in &self.settings {
            let definition = &SETTINGS[setting.index];
            if !flags.explicit.contains_key(definition.id) {
                (definition.copy)(&mut effective, &setting.parsed);
            }
        }
        effective
    }

    /// File settings that the command line overrides, as `path (flag)`, for the log.
    pub fn overridden(&self, flags: &Cli) -> Vec<String> {
        self.settings
            .iter()
            .map(|setting| &SETTINGS[setting.index])
            .filter(|definition| flags.explicit.contains_key(definition.id))
            .map(|definition| format!("{} ({})", definition.path, definition.flag))
            .collect()
    }

    /// What changes from `self` to `next` that a reload cannot apply, given the command line
    /// `flags` (a setting its flag fixes does not change), one line each.
    pub fn needs_restart(&self, next: &Config, flags: &Cli) -> Vec<String> {
        SETTINGS
            .iter()
            .enumerate()
            .filter(|(_, definition)| {
                !definition.reloadable && !flags.explicit.contains_key(definition.id)
            })
            .filter_map(|(index, definition)| {
                let (before, after) = (self.file_value(index), next.file_value(index));
                (before != after).then(|| {
                    format!(
                        "{}: {} -> {} needs a restart (the running value stays in force)",
                        definition.path,
                        before.map_or("(default)".to_string(), shown_value),
                        after.map_or("(default)".to_string(), shown_value),
                    )
                })
            })
            .collect()
    }

    fn file_value(&self, index: usize) -> Option<&Value> {
        self.settings
            .iter()
            .find(|setting| setting.index == index)
            .map(|setting| &setting.shown)
    }

    /// The configuration in force, in the file's format with comments saying where each
    /// setting comes from: the modules, then every daemon setting (`flags` is the command
    /// line, for the flags that override the file and the defaults). Settings a reload cannot
    /// apply are shown as `running` (the configuration loaded at start) has them.
    pub fn render(&self, flags: &Cli, running: &Config) -> String {
        let mut root = Mapping::new();
        let modules: Mapping = self
            .modules
            .iter()
            .map(|(name, module)| (Value::from(name.as_str()), module.shown.clone()))
            .collect();
        root.insert("modules".into(), Value::Mapping(modules));
        if !self.disabled_probers.is_empty() {
            insert_path(
                &mut root,
                "probe.disable",
                Value::Sequence(self.disabled_probers.iter().map(|&p| p.into()).collect()),
            );
        }
        let mut from_flags = Vec::new();
        let mut from_defaults = Vec::new();
        let command = <Cli as clap::CommandFactory>::command();
        for (index, definition) in SETTINGS.iter().enumerate() {
            let value = if let Some(raw) = flags.explicit.get(definition.id) {
                from_flags.push(format!("{} ({})", definition.path, definition.flag));
                texts_as_value(definition.shape, raw)
            } else if let Some(value) = if definition.reloadable {
                self.file_value(index)
            } else {
                running.file_value(index)
            } {
                value.clone()
            } else {
                from_defaults.push(definition.path);
                let defaults: Vec<String> = command
                    .get_arguments()
                    .find(|arg| arg.get_id() == definition.id)
                    .map(|arg| {
                        arg.get_default_values()
                            .iter()
                            .map(|v| v.to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                texts_as_value(definition.shape, &defaults)
            };
            insert_path(&mut root, definition.path, value);
        }
        let mut text = String::from(
            "# The configuration in force. Flags given on the command line override the file.\n",
        );
        if !from_flags.is_empty() {
            text.push_str(&format!("# From flags: {}\n", from_flags.join(", ")));
        }
        if !from_defaults.is_empty() {
            text.push_str(&format!("# Defaults: {}\n", from_defaults.join(", ")));
        }
        for pending in running.needs_restart(self, flags) {
            text.push_str(&format!("# Not in force: {pending}\n"));
        }
        text.push_str(&yaml_serde::to_string(&Value::Mapping(root)).unwrap_or_default());
        text
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::probe::{Query, policy::Bound};

    fn flags(args: &[&str]) -> Cli {
        Cli::try_parse_args_from(std::iter::once("network-probe").chain(args.iter().copied()))
            .unwrap()
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_is_the_builtin_modules() {
        for text in ["", "# nothing\n", "modules:\n", "{}"] {
            let config = parse(text).unwrap();
            assert_eq!(
                config.modules.keys().collect::<Vec<_>>(),
                ["iperf3", "ping", "tftp"]
            );
            assert_eq!(config.modules["tftp"].prober, "tftp");
        }
    }

    #[test]
    fn modules_keep_their_options() {
        let config = parse(
            "modules:\n  tftp_big:\n    prober: tftp\n    timeout: 30s\n    tftp:\n      \
             tftp_filename: big.bin\n      blksize: 1468\n      tsize: true\n  \
             ping_ssh:\n    prober: ping\n    ping:\n      tcp_port: [22, 443]\n      \
             ip_version: 4\n",
        )
        .unwrap();
        let tftp = &config.modules["tftp_big"];
        assert_eq!(tftp.prober, "tftp");
        assert_eq!(tftp.timeout, Some(Duration::from_secs(30)));
        assert_eq!(
            tftp.options,
            [
                ("blksize".to_string(), "1468".to_string()),
                ("tftp_filename".into(), "big.bin".into()),
                ("tsize".into(), "true".into())
            ]
        );
        let ping = &config.modules["ping_ssh"];
        assert_eq!(
            ping.options,
            [
                ("ip_version".to_string(), "4".to_string()),
                ("tcp_port".into(), "22".into()),
                ("tcp_port".into(), "443".into())
            ]
        );
        assert!(
            tftp.to_yaml().contains("blksize: 1468"),
            "{}",
            tftp.to_yaml()
        );
        // The built-in ones stay.
        assert_eq!(config.modules.len(), 5);
    }

    #[test]
    fn bad_module_options_name_the_field_and_value() {
        let err =
            error("modules:\n  tftp_big:\n    prober: tftp\n    tftp:\n      blksize: 99999\n");
        assert!(
            err.starts_with("modules.tftp_big.tftp.blksize: ") && err.contains("\"99999\""),
            "{err}"
        );
        let err = error("modules:\n  p:\n    prober: ping\n    ping:\n      tcp_port: [22, 0]\n");
        assert!(
            err.starts_with("modules.p.ping.tcp_port: ") && err.contains("\"0\""),
            "{err}"
        );
        let err = error("modules:\n  p:\n    prober: ping\n    ping:\n      ip_version: 5\n");
        assert!(
            err.starts_with("modules.p.ping.ip_version: ") && err.contains("\"5\""),
            "{err}"
        );
        let err = error("modules:\n  i:\n    prober: iperf3\n    iperf3:\n      parallel: 1000\n");
        assert!(
            err.starts_with("modules.i.iperf3.parallel: ") && err.contains("1000"),
            "{err}"
        );
        // Unknown options are refused by the prober's own check, named by path.
        let err = error("modules:\n  t:\n    prober: tftp\n    tftp:\n      blksze: 512\n");
        assert!(
            err.starts_with("modules.t.tftp.blksze: ") && err.contains("blksze"),
            "{err}"
        );
        // Options that fail only together are pinned on the section.
        let err = error("modules:\n  i:\n    prober: iperf3\n    iperf3:\n      username: u\n");
        assert!(
            err.starts_with("modules.i.iperf3") && err.contains("authentication needs"),
            "{err}"
        );
        let err = error("modules:\n  t:\n    prober: tftp\n    tftp:\n      target: x\n");
        assert!(err.starts_with("modules.t.tftp.target: "), "{err}");
        let err = error("modules:\n  t:\n    prober: tftp\n    tftp:\n      blksize: {a: 1}\n");
        assert!(
            err.starts_with("modules.t.tftp.blksize: expected a single value"),
            "{err}"
        );
    }

    #[test]
    fn bad_module_shapes_are_named() {
        let err = error("modules:\n  t:\n    prober: icmp\n");
        assert_eq!(
            err,
            "modules.t.prober: \"icmp\" is not a prober (known: tftp, iperf3, ping)"
        );
        let err = error("modules:\n  t:\n    prober: tftp\n    ping:\n      ip_version: 4\n");
        assert!(
            err.starts_with("modules.t.ping: the module's prober is tftp"),
            "{err}"
        );
        let err = error("modules:\n  t:\n    prober: tftp\n    timeout: 5\n");
        assert!(
            err.starts_with("modules.t.timeout: \"5\" needs a unit"),
            "{err}"
        );
        let err = error("modules:\n  \"a b\":\n    prober: tftp\n");
        assert!(err.starts_with("modules.a b: module name \"a b\""), "{err}");
        // Unknown fields: serde names the path and the field.
        let err = error("modules:\n  t:\n    prober: tftp\n    timeuot: 5s\n");
        assert!(
            err.contains("modules.t") && err.contains("unknown field `timeuot`"),
            "{err}"
        );
        let err = error("flows:\n  labelz: [src]\n");
        assert!(
            err.contains("flows") && err.contains("unknown field `labelz`"),
            "{err}"
        );
        let err = error("modulez: {}\n");
        assert!(err.contains("unknown field `modulez`"), "{err}");
        let err = error("modules:\n  t:\n    timeout: 5s\n");
        assert!(err.contains("missing field `prober`"), "{err}");
    }

    #[test]
    fn syntax_errors_say_where() {
        let err = error("modules:\n  t: [\n");
        assert!(err.starts_with("not valid YAML: "), "{err}");
        assert!(err.contains("line"), "{err}");
        assert_eq!(
            error("- a\n- b\n"),
            "expected a mapping at the top level, found a list"
        );
    }

    #[test]
    fn daemon_settings_use_the_flag_parsers() {
        let config = parse(
            "interfaces: [eth0, eth1]\ndatapath:\n  ingress: xdp-generic\nflows:\n  \
             max_entries: 4096\n  labels: [interface, dst_port]\n  max_series: 10\n  \
             idle_timeout: 90s\njool:\n  instances: [siit:a]\n  all_instances: true\n\
             probe:\n  allow: [10.0.0.0/8, '*.example.com']\n",
        )
        .unwrap();
        let effective = config.apply(&flags(&[]));
        assert_eq!(effective.interfaces, ["eth0", "eth1"]);
        assert_eq!(
            effective.ingress,
            crate::kernel::datapath::IngressHook::XdpGeneric
        );
        assert_eq!(effective.flow_map_entries, 4096);
        assert_eq!(effective.flow_labels, "interface,dst_port".parse().unwrap());
        assert_eq!(effective.flow_max_series, 10);
        assert_eq!(effective.flow_idle_timeout, Duration::from_secs(90));
        let ranked =
            parse("flows:\n  families: [bytes, rst]\n  rank_by: retransmits\n  rank_window: 30s\n")
                .unwrap()
                .apply(&flags(&[]));
        assert_eq!(ranked.flow_families.to_string(), "bytes,rst");
        assert_eq!(
            ranked.flow_rank_by,
            crate::flows::admission::RankBy::Retransmits
        );
        assert_eq!(ranked.flow_rank_window, Duration::from_secs(30));
        assert_eq!(effective.jool.instances.len(), 1);
        assert!(effective.jool.all_instances);
        assert_eq!(effective.probe_allow.len(), 2);
        let datapath =
            parse("datapath:\n  tc_attach: netlink\n  pin_path: ''\n  state_file: /run/np.json\n")
                .unwrap()
                .apply(&flags(&[]));
        assert_eq!(
            datapath.tc_attach,
            crate::kernel::datapath::TcAttach::Netlink
        );
        assert_eq!(datapath.pin_path, "");
        assert_eq!(datapath.state_file, "/run/np.json");
        assert_eq!(datapath.state_file(), None, "no state file without pinning");

        for (text, path, said) in [
            (
                "flows:\n  max_entries: 1\n",
                "flows.max_entries: 1 is not accepted",
                "'1'",
            ),
            (
                "flows:\n  labels: [src, port]\n",
                "flows.labels: ",
                "\"port\"",
            ),
            (
                "flows:\n  families: [bytes, byte]\n",
                "flows.families: ",
                "unknown flow family \"byte\" (known: packets, bytes,",
            ),
            (
                "flows:\n  rank_by: weight\n",
                "flows.rank_by: \"weight\"",
                "(use bytes, packets, retransmits)",
            ),
            (
                "flows:\n  slots: 1000\n",
                "flows.slots: 1000 is not accepted",
                "power of two",
            ),
            (
                "flows:\n  idle_timeout: 5\n",
                "flows.idle_timeout: 5 is not",
                "needs a unit",
            ),
            (
                "flows:\n  connect_timeout: 0s\n",
                "flows.connect_timeout: \"0s\" is not accepted",
                "must be positive",
            ),
            (
                "flows:\n  connect_timeout: 20m\n",
                "flows.connect_timeout: \"20m\" is not accepted",
                "longer than the longest connect timeout",
            ),
            (
                "datapath:\n  ingress: xdp\n",
                "datapath.ingress: \"xdp\"",
                "(use tc, xdp-generic, xdp-native)",
            ),
            (
                "probe:\n  allow: [10.1.0.0/8]\n",
                "probe.allow: ",
                "did you mean 10.0.0.0/8?",
            ),
            (
                "jool:\n  instances: [siit:0123456789abcdef]\n",
                "jool.instances: ",
                "0123456789abcdef",
            ),
            (
                "jool:\n  disable: yes please\n",
                "jool.disable: \"yes please\" is not true or false",
                "",
            ),
            (
                "interfaces: [[a]]\n",
                "interfaces[0]: expected a single value",
                "",
            ),
        ] {
            let err = error(text);
            assert!(err.starts_with(path) && err.contains(said), "{text}: {err}");
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let config = parse("interfaces: [eth0]\nflows:\n  max_series: 10\n").unwrap();
        let command_line = flags(&["--interface", "lo", "--flows.max-entries", "1024"]);
        let effective = config.apply(&command_line);
        assert_eq!(effective.interfaces, ["lo"]);
        assert_eq!(effective.flow_max_series, 10);
        assert_eq!(effective.flow_map_entries, 1024);
        assert_eq!(
            config.overridden(&command_line),
            ["interfaces (--interface)"]
        );
        let shown = config.render(&command_line, &config);
        assert!(
            shown.contains(
                "# From flags: interfaces (--interface), flows.max_entries (--flows.max-entries)"
            ),
            "{shown}"
        );
        assert!(shown.contains("interfaces:\n- lo\n"), "{shown}");
        assert!(shown.contains("max_series: 10\n"), "{shown}");
        assert!(shown.contains("idle_timeout: 5m\n"), "{shown}");
        // What /config shows is itself a valid file.
        parse(&shown).unwrap();
    }

    #[test]
    fn changes_that_need_a_restart_are_listed() {
        let before = parse("interfaces: [eth0]\nprobe:\n  allow: [10.0.0.0/8]\n").unwrap();
        let after = parse("interfaces: [eth1]\nprobe:\n  allow: [192.0.2.0/24]\n").unwrap();
        let changes = before.needs_restart(&after, &flags(&[]));
        assert_eq!(
            changes,
            [
                "interfaces: [\"eth0\"] -> [\"eth1\"] needs a restart (the running value stays in force)"
            ]
        );
        // A flag fixes the interfaces: nothing to restart for.
        assert!(
            before
                .needs_restart(&after, &flags(&["--interface", "x"]))
                .is_empty()
        );
        assert!(before.needs_restart(&before, &flags(&[])).is_empty());
        // /config shows the running interfaces, the reloaded allowlist, and what waits.
        let shown = after.render(&flags(&[]), &before);
        assert!(shown.contains("interfaces:\n- eth0\n"), "{shown}");
        assert!(shown.contains("allow:\n  - 192.0.2.0/24\n"), "{shown}");
        assert!(
            shown.contains("# Not in force: interfaces: [\"eth0\"] -> [\"eth1\"] needs a restart"),
            "{shown}"
        );
    }

    #[test]
    fn policies_parse_and_bad_ones_are_named() {
        let config = parse(
            "modules:\n  https:\n    prober: ping\n    ping:\n      tcp_port: 443\n    policy:\n      \
             pin: [tcp_port]\n      limits:\n        targets: {max: 4}\n  \
             open_iperf3:\n    prober: iperf3\n    policy:\n      allow_params: [target, period, \
             parallel]\n      limits:\n        period: {min: 1s, max: 2m}\n        parallel: \
             {max: 16}\n  off:\n    prober: tftp\n    disabled: true\n",
        )
        .unwrap();
        let https = &config.modules["https"].policy;
        assert_eq!(https.allowed, ["ip_version"]);
        assert_eq!(
            https.bounds,
            [Bound {
                parameter: "targets",
                min: None,
                max: Some(4.0)
            }]
        );
        let iperf3 = &config.modules["open_iperf3"].policy;
        assert_eq!(iperf3.allowed, ["period", "parallel"]);
        assert!(iperf3.bounds.contains(&Bound {
            parameter: "period",
            min: Some(1.0),
            max: Some(120.0)
        }));
        assert!(iperf3.bounds.contains(&Bound {
            parameter: "parallel",
            min: None,
            max: Some(16.0)
        }));
        assert!(config.modules["off"].policy.disabled.is_some());
        assert!(config.modules["tftp"].policy.disabled.is_none());
        assert!(
            config.modules["https"]
                .to_yaml()
                .contains("pin:\n  - tcp_port"),
            "{}",
            config.modules["https"].to_yaml()
        );
        // The built-in modules: the seed parameters.
        assert_eq!(
            config.modules["iperf3"].policy.allowed,
            ["port", "period", "reverse_mode", "udp_mode", "bitrate"]
        );
        assert_eq!(
            config.modules["ping"].policy.allowed,
            ["ip_version", "tcp_port"]
        );

        for (text, said) in [
            (
                "modules:\n  m:\n    prober: ping\n    policy:\n      pin: [port]\n",
                "modules.m.policy.pin[0]: \"port\" is not a parameter of the ping prober",
            ),
            (
                "modules:\n  m:\n    prober: iperf3\n    policy:\n      allow_params: [public_key_file]\n",
                "modules.m.policy.allow_params[0]: \"public_key_file\" can never come from a request",
            ),
            (
                "modules:\n  m:\n    prober: iperf3\n    policy:\n      limits:\n        blksize: {max: 1}\n",
                "modules.m.policy.limits.blksize: the iperf3 prober has no bound \"blksize\"",
            ),
            (
                "modules:\n  m:\n    prober: iperf3\n    policy:\n      limits:\n        period: {max: soon}\n",
                "modules.m.policy.limits.period.max: \"soon\" is not a valid bound",
            ),
            (
                "modules:\n  m:\n    prober: iperf3\n    policy:\n      limits:\n        period: {min: 10s, max: 5s}\n",
                "modules.m.policy.limits.period: min is above max",
            ),
            (
                "modules:\n  m:\n    prober: iperf3\n    policy:\n      allowed: [x]\n",
                "unknown field `allowed`",
            ),
            (
                "modules:\n  m:\n    prober: tftp\n    disabled: maybe\n",
                "modules.m.disabled: \"maybe\" is not true or false",
            ),
            // A module's own options must keep to its bounds.
            (
                "modules:\n  m:\n    prober: iperf3\n    iperf3:\n      period: 5m\n",
                "modules.m.iperf3.period: parameter \"period\": \"5m\" is above the maximum 60s \
                 of module \"m\" (raise modules.m.policy.limits.period)",
            ),
            (
                "modules:\n  m:\n    prober: iperf3\n    policy:\n      limits:\n        bitrate: {max: 1G}\n",
                "modules.m.policy.limits.bitrate: parameter \"bitrate\": the default unlimited",
            ),
            (
                "probe:\n  disable: [icmp]\n",
                "probe.disable[0]: \"icmp\" is not a prober",
            ),
        ] {
            let err = error(text);
            assert!(err.contains(said), "{text}: {err}");
        }
        // Within raised bounds, the module's options load.
        parse(
            "modules:\n  m:\n    prober: iperf3\n    iperf3:\n      period: 5m\n      bitrate: 100M\n    \
             policy:\n      limits:\n        period: {max: 5m}\n        bitrate: {max: 1G}\n",
        )
        .unwrap();
    }

    #[test]
    fn probe_disable_turns_every_module_of_a_prober_off() {
        let config =
            parse("modules:\n  big:\n    prober: iperf3\nprobe:\n  disable: [iperf3]\n").unwrap();
        for name in ["iperf3", "big"] {
            let why = config.modules[name].policy.disabled.clone().unwrap();
            assert!(why.contains("probe.disable"), "{why}");
            assert!(config.modules[name].to_yaml().contains("disabled: true"));
        }
        assert!(config.modules["ping"].policy.disabled.is_none());
        let shown = config.render(&flags(&[]), &config);
        assert!(shown.contains("disable:\n  - iperf3\n"), "{shown}");
        parse(&shown).unwrap();
    }

    #[test]
    fn secrets_are_redacted_and_the_key_is_read_once() {
        use rsa::pkcs8::EncodePublicKey as _;
        let key = rsa::RsaPrivateKey::new(&mut crate::support::random::OsRng, 1024).unwrap();
        let pem = key
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        let path = std::env::temp_dir().join(format!("np-config-key-{}.pem", std::process::id()));
        std::fs::write(&path, pem).unwrap();
        let text = format!(
            "modules:\n  auth:\n    prober: iperf3\n    iperf3:\n      username: mary\n      \
             password: hunter2\n      public_key_file: {}\n",
            path.display()
        );
        let config = parse(&text).unwrap();
        // The key is parsed; the file is no longer read (removing it changes nothing).
        std::fs::remove_file(&path).unwrap();
        let module = &config.modules["auth"];
        assert_eq!(
            module.loaded.public_key.as_deref(),
            Some(&key.to_public_key())
        );
        assert!(
            module
                .options
                .iter()
                .all(|(name, _)| name != "public_key_file")
        );
        let query = Query::from_pairs([("target", "192.0.2.1")]).with_defaults(&module.options);
        let probe_config =
            crate::probe::iperf3::Config::from_query_loaded(&query, &module.loaded).unwrap();
        assert_eq!(probe_config.auth.unwrap().password, "hunter2");
        // Neither /config nor ?debug=true's module shows the password or the key path.
        let shown = config.render(&flags(&[]), &config);
        for text in [shown.as_str(), &module.to_yaml()] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains("np-config-key"), "{text}");
            assert!(text.contains("password: <secret>"), "{text}");
            assert!(text.contains("public_key_file: <secret>"), "{text}");
            assert!(text.contains("username: mary"), "{text}");
        }
        // A bad key is a configuration error naming the option.
        std::fs::write(&path, "not a key").unwrap();
        let err = error(&text);
        std::fs::remove_file(&path).unwrap();
        assert!(err.starts_with("modules.auth.iperf3"), "{err}");
        assert!(err.contains("holds no RSA public key"), "{err}");
    }
}
