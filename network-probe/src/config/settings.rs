//! The daemon settings the file shares with the flags: where each sits in the file, its flag,
//! whether a reload applies it; a file value is checked by parsing it as its flag with clap (the
//! flag's own value parser), so a file value and a flag value are always read alike. Also the
//! way back, from settings to the file's format for `/config`.

use yaml_serde::{Mapping, Value};

use super::{
    raw::RawFile,
    value::{ConfigError, list, scalar, shown_value},
};
use crate::cli::Cli;

/// How a setting's YAML value becomes flag occurrences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    /// One value: `--flag=VALUE`.
    One,
    /// A list (or one value): `--flag=A --flag=B`; for `flows.labels` see `joined`.
    List { joined: bool },
    /// `true` or `false`: the bare `--flag` or nothing.
    Switch,
}

/// A daemon setting that has both a file field and a flag.
pub(super) struct Setting {
    /// Where it sits in the file.
    pub(super) path: &'static str,
    /// Its flag.
    pub(super) flag: &'static str,
    /// The clap id of the flag (the `Cli` field name).
    pub(super) id: &'static str,
    pub(super) shape: Shape,
    /// Whether a reload applies it; if not, a change is reported as needing a restart.
    pub(super) reloadable: bool,
    /// The field in the file.
    pub(super) get: fn(&RawFile) -> Option<&Value>,
    /// Copies the setting from a `Cli` parsed from the file's value.
    pub(super) copy: fn(&mut Cli, &Cli),
}

/// Every daemon setting of the file, in the order of the file's documentation.
pub(super) const SETTINGS: &[Setting] = &[
    Setting {
        path: "interfaces",
        flag: "--interface",
        id: "interfaces",
        shape: Shape::List { joined: false },
        reloadable: false,
        get: |f| f.interfaces.as_ref(),
        copy: |to, from| to.interfaces = from.interfaces.clone(),
    },
    Setting {
        path: "datapath.ingress",
        flag: "--datapath.ingress",
        id: "ingress",
        shape: Shape::One,
        reloadable: false,
        get: |f| f.datapath.as_ref()?.ingress.as_ref(),
        copy: |to, from| to.ingress = from.ingress,
    },
    Setting {
        path: "datapath.tc_attach",
        flag: "--datapath.tc-attach",
        id: "tc_attach",
        shape: Shape::One,
        reloadable: false,
        get: |f| f.datapath.as_ref()?.tc_attach.as_ref(),
        copy: |to, from| to.tc_attach = from.tc_attach,
    },
    Setting {
        path: "datapath.drops",
        flag: "--datapath.drops",
        id: "drops",
        shape: Shape::One,
        reloadable: false,
        get: |f| f.datapath.as_ref()?.drops.as_ref(),
        copy: |to, from| to.drops = from.drops,
    },
    Setting {
        path: "datapath.pin_path",
        flag: "--datapath.pin-path",
        id: "pin_path",
        shape: Shape::One,
        reloadable: false,
        get: |f| f.datapath.as_ref()?.pin_path.as_ref(),
        copy: |to, from| to.pin_path = from.pin_path.clone(),
    },
    Setting {
        path: "datapath.state_file",
        flag: "--datapath.state-file",
        id: "state_file",
        shape: Shape::One,
        reloadable: false,
        get: |f| f.datapath.as_ref()?.state_file.as_ref(),
        copy: |to, from| to.state_file = from.state_file.clone(),
    },
    Setting {
        path: "flows.max_entries",
        flag: "--flows.max-entries",
        id: "flow_map_entries",
        shape: Shape::One,
        reloadable: false,
        get: |f| f.flows.as_ref()?.max_entries.as_ref(),
        copy: |to, from| to.flow_map_entries = from.flow_map_entries,
    },
    Setting {
        path: "flows.slots",
        flag: "--flows.slots",
        id: "flow_slots",
        shape: Shape::One,
        reloadable: false,
        get: |f| f.flows.as_ref()?.slots.as_ref(),
        copy: |to, from| to.flow_slots = from.flow_slots,
    },
    Setting {
        path: "flows.labels",
        flag: "--flows.labels",
        id: "flow_labels",
        shape: Shape::List { joined: true },
        reloadable: false,
        get: |f| f.flows.as_ref()?.labels.as_ref(),
        copy: |to, from| to.flow_labels = from.flow_labels,
    },
    Setting {
        path: "flows.max_series",
        flag: "--flows.max-series",
        id: "flow_max_series",
        shape: Shape::One,
        reloadable: false,
        get: |f| f.flows.as_ref()?.max_series.as_ref(),
        copy: |to, from| to.flow_max_series = from.flow_max_series,
    },
    Setting {
        path: "flows.idle_timeout",
        flag: "--flows.idle-timeout",
        id: "flow_idle_timeout",
        shape: Shape::One,
        reloadable: false,
        get: |f| f.flows.as_ref()?.idle_timeout.as_ref(),
        copy: |to, from| to.flow_idle_timeout = from.flow_idle_timeout,
    },
    Setting {
        path: "flows.families",
        flag: "--flows.families",
        id: "flow_families",
        shape: Shape::List { joined: true },
        reloadable: false,
        get: |f| f.flows.as_ref()?.families.as_ref(),
        copy: |to, from| to.flow_families = from.flow_families,
    },
    Setting {
        path: "flows.rank_by",
        flag: "--flows.rank-by",
        id: "flow_rank_by",
        shape: Shape::One,
        reloadable: false,
        get: |f| f.flows.as_ref()?.rank_by.as_ref(),
        copy: |to, from| to.flow_rank_by = from.flow_rank_by,
    },
    Setting {
        path: "flows.rank_window",
        flag: "--flows.rank-window",
        id: "flow_rank_window",
        shape: Shape::One,
        reloadable: false,
        get: |f| f.flows.as_ref()?.rank_window.as_ref(),
        copy: |to, from| to.flow_rank_window = from.flow_rank_window,
    },
    Setting {
        path: "flows.connect_timeout",
        flag: "--flows.connect-timeout",
        id: "flow_connect_timeout",
        shape: Shape::One,
        reloadable: false,
        get: |f| f.flows.as_ref()?.connect_timeout.as_ref(),
        copy: |to, from| to.flow_connect_timeout = from.flow_connect_timeout,
    },
    Setting {
        path: "jool.instances",
        flag: "--jool.instance",
        id: "instances",
        shape: Shape::List { joined: false },
        reloadable: false,
        get: |f| f.jool.as_ref()?.instances.as_ref(),
        copy: |to, from| to.jool.instances = from.jool.instances.clone(),
    },
    Setting {
        path: "jool.all_instances",
        flag: "--jool.all-instances",
        id: "all_instances",
        shape: Shape::Switch,
        reloadable: false,
        get: |f| f.jool.as_ref()?.all_instances.as_ref(),
        copy: |to, from| to.jool.all_instances = from.jool.all_instances,
    },
    Setting {
        path: "jool.disable",
        flag: "--jool.disable",
        id: "disable",
        shape: Shape::Switch,
        reloadable: false,
        get: |f| f.jool.as_ref()?.disable.as_ref(),
        copy: |to, from| to.jool.disable = from.jool.disable,
    },
    Setting {
        path: "probe.allow",
        flag: "--probe.allow",
        id: "probe_allow",
        shape: Shape::List { joined: false },
        reloadable: true,
        get: |f| f.probe.as_ref()?.allow.as_ref(),
        copy: |to, from| to.probe_allow = from.probe_allow.clone(),
    },
];

/// A daemon setting the file gives, checked.
#[derive(Clone, Debug)]
pub(super) struct FileSetting {
    /// Index into [`SETTINGS`].
    pub(super) index: usize,
    /// The value as written (for `/config` and change detection).
    pub(super) shown: Value,
    /// A command line holding just this setting, parsed.
    pub(super) parsed: Box<Cli>,
}

/// The flag occurrences that say what `value` says for `setting`.
pub(super) fn flag_arguments(setting: &Setting, value: &Value) -> Result<Vec<String>, ConfigError> {
    let path = setting.path;
    Ok(match setting.shape {
        Shape::One => vec![format!("{}={}", setting.flag, scalar(path, value)?)],
        Shape::List { joined: true } => {
            vec![format!("{}={}", setting.flag, list(path, value)?.join(","))]
        }
        Shape::List { joined: false } => list(path, value)?
            .into_iter()
            .map(|item| format!("{}={item}", setting.flag))
            .collect(),
        Shape::Switch => match value {
            Value::Bool(true) => vec![setting.flag.to_string()],
            Value::Bool(false) => Vec::new(),
            other => {
                return Err(ConfigError::new(
                    path,
                    format!("{} is not true or false", shown_value(other)),
                ));
            }
        },
    })
}

/// clap's one-line complaint about a flag value, with the YAML value for context.
pub(super) fn clap_reason(err: &clap::Error, value: &Value) -> String {
    let text = err.to_string();
    let first = text.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // For a choice, clap lists the accepted values on a later line.
    let choices = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("[possible values: "))
        .and_then(|values| values.strip_suffix(']'))
        .map_or(String::new(), |values| format!(" (use {values})"));
    format!("{} is not accepted: {first}{choices}", shown_value(value))
}

/// Flag texts as the YAML value the file would hold.
pub(super) fn texts_as_value(shape: Shape, texts: &[String]) -> Value {
    match shape {
        Shape::Switch => Value::Bool(texts.iter().any(|t| t == "true")),
        Shape::One => texts.first().map_or(Value::Null, |t| t.as_str().into()),
        Shape::List { joined: true } => Value::Sequence(
            texts
                .iter()
                .flat_map(|t| t.split(','))
                .map(|t| t.trim().into())
                .collect(),
        ),
        Shape::List { joined: false } => {
            Value::Sequence(texts.iter().map(|t| t.as_str().into()).collect())
        }
    }
}

/// Sets `a.b` in `root` to `value`, creating `a`.
pub(super) fn insert_path(root: &mut Mapping, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            root.insert(path.into(), value);
        }
        Some((head, rest)) => {
            let child = root
                .entry(head.into())
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            if let Value::Mapping(child) = child {
                insert_path(child, rest, value);
            }
        }
    }
}
