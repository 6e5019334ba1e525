//! The configuration file as written: the shape serde reads, with every leaf still a YAML value
//! so that a later check can name the field's path and its value in one error. Unknown fields
//! are errors here already.

use std::collections::BTreeMap;

use serde::Deserialize;
use yaml_serde::Value;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) modules: Option<BTreeMap<String, RawModule>>,
    pub(super) interfaces: Option<Value>,
    pub(super) datapath: Option<RawDatapath>,
    pub(super) flows: Option<RawFlows>,
    pub(super) jool: Option<RawJool>,
    pub(super) probe: Option<RawProbe>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatapath {
    pub(super) ingress: Option<Value>,
    pub(super) tc_attach: Option<Value>,
    pub(super) drops: Option<Value>,
    pub(super) pin_path: Option<Value>,
    pub(super) state_file: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlows {
    pub(super) max_entries: Option<Value>,
    pub(super) slots: Option<Value>,
    pub(super) labels: Option<Value>,
    pub(super) max_series: Option<Value>,
    pub(super) idle_timeout: Option<Value>,
    pub(super) families: Option<Value>,
    pub(super) rank_by: Option<Value>,
    pub(super) rank_window: Option<Value>,
    pub(super) connect_timeout: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJool {
    pub(super) instances: Option<Value>,
    pub(super) all_instances: Option<Value>,
    pub(super) disable: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    pub(super) allow: Option<Value>,
    /// Probers turned off: their built-in module and every module of theirs.
    pub(super) disable: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModule {
    pub(super) prober: String,
    pub(super) timeout: Option<Value>,
    pub(super) disabled: Option<Value>,
    pub(super) policy: Option<RawPolicy>,
    pub(super) ping: Option<BTreeMap<String, Value>>,
    pub(super) tftp: Option<BTreeMap<String, Value>>,
    pub(super) iperf3: Option<BTreeMap<String, Value>>,
}

/// A module's `policy:` section (docs/configuration.md, "Request policy").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    /// The parameters a request may set (instead of the prober's default set).
    pub(super) allow_params: Option<Value>,
    /// Parameters taken out of the allowed set: the module's value (or the prober's default)
    /// stands.
    pub(super) pin: Option<Value>,
    /// `PARAMETER: {min: X, max: Y}`.
    pub(super) limits: Option<BTreeMap<String, RawLimit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    pub(super) min: Option<Value>,
    pub(super) max: Option<Value>,
}
