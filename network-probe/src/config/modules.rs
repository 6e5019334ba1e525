//! Named probe modules: a module's options checked by its prober's own query validation, its
//! request policy (allowed and pinned parameters, numeric bounds, disabled) built from `policy:`,
//! the iperf3 key read once at load, and the module as `/config` and `?debug=true` show it
//! (secrets redacted). The built-in module of each prober is here too.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use yaml_serde::{Mapping, Value};

use super::{
    raw::{RawModule, RawPolicy},
    value::{ConfigError, list, scalar, shown_value},
};
use crate::{
    probe::{
        Loaded, Probers, Query,
        policy::{self, Bound, Policy},
    },
    support::units::parse_duration,
};

/// Target used to validate module options, which never carry one (a reserved name, RFC 2606).
pub(super) const PLACEHOLDER_TARGET: &str = "module-check.invalid";

/// Query parameters a module may not set: the request's own.
pub(super) const REQUEST_ONLY: &[&str] = &["target", "module", "debug"];

/// One named probe module.
#[derive(Clone, Debug, PartialEq)]
pub struct Module {
    /// The name of one of [`crate::probe::SPECS`].
    pub prober: &'static str,
    /// Longest a probe of this module runs (the scrape timeout and the prober's own limit
    /// still apply).
    pub timeout: Option<Duration>,
    /// Query parameters the module sets, in the prober's names; a request's own override them
    /// where the policy lets it. Never `public_key_file` (read into `loaded`).
    pub options: Vec<(String, String)>,
    /// What a request may do.
    pub policy: Policy,
    /// What the module read when the file was loaded (the iperf3 public key).
    pub loaded: Loaded,
    /// The name in `module=`.
    name: String,
    /// The module as `/config` and `?debug=true` show it (secrets redacted).
    pub(super) shown: Value,
}

impl Module {
    /// The built-in module of `prober`: no options, no timeout of its own, the prober's
    /// default policy.
    fn builtin(spec: &'static crate::probe::Spec) -> Module {
        let mut shown = Mapping::new();
        shown.insert("prober".into(), spec.name.into());
        Module {
            prober: spec.name,
            timeout: None,
            options: Vec::new(),
            policy: Policy::default_for(spec),
            loaded: Loaded::default(),
            name: spec.name.to_string(),
            shown: Value::Mapping(shown),
        }
    }

    /// The module as the probe framework takes it ([`crate::probe::handler::handle`]).
    pub fn probe(&self) -> crate::probe::Module<'_> {
        crate::probe::Module {
            name: &self.name,
            prober: self.prober,
            options: &self.options,
            timeout: self.timeout,
            policy: Some(&self.policy),
            loaded: Some(&self.loaded),
        }
    }

    /// Turns the module off (`probe.disable`, `disabled: true`), saying why.
    pub(super) fn disable(&mut self, why: String) {
        self.policy.disabled = Some(why);
        if let Value::Mapping(shown) = &mut self.shown {
            shown.insert("disabled".into(), true.into());
        }
    }

    /// The module in the file's format.
    pub fn to_yaml(&self) -> String {
        yaml_serde::to_string(&self.shown).unwrap_or_default()
    }
}

pub(super) fn builtin_modules() -> BTreeMap<String, Arc<Module>> {
    crate::probe::SPECS
        .iter()
        .map(|spec| (spec.name.to_string(), Arc::new(Module::builtin(spec))))
        .collect()
}

/// Checks one module.
pub(super) fn check_module(name: &str, raw: &RawModule) -> Result<Module, ConfigError> {
    let path = format!("modules.{name}");
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(ConfigError::new(
            &path,
            format!(
                "module name {name:?} must be 1 to 64 letters, digits, '_', '-' or '.' (it \
                 goes into module= of a URL)"
            ),
        ));
    }
    let prober = crate::probe::spec(&raw.prober)
        .map(|spec| spec.name)
        .ok_or_else(|| {
            ConfigError::new(
                format!("{path}.prober"),
                format!(
                    "{:?} is not a prober (known: {})",
                    raw.prober,
                    crate::probe::names().join(", ")
                ),
            )
        })?;
    let timeout = match &raw.timeout {
        None | Some(Value::Null) => None,
        Some(value) => {
            let text = scalar(&format!("{path}.timeout"), value)?;
            Some(
                parse_duration(&text)
                    .map_err(|reason| ConfigError::new(format!("{path}.timeout"), reason))?,
            )
        }
    };
    let spec = crate::probe::spec(prober).expect("a prober of SPECS");
    let sections = [
        ("ping", &raw.ping),
        ("tftp", &raw.tftp),
        ("iperf3", &raw.iperf3),
    ];
    let mut options = Vec::new();
    let mut shown_options = Mapping::new();
    for (section, given) in sections {
        let Some(given) = given else { continue };
        let section_path = format!("{path}.{section}");
        if section != prober {
            return Err(ConfigError::new(
                section_path,
                format!("the module's prober is {prober}: only a {prober} section applies"),
            ));
        }
        for (option, value) in given {
            let option_path = format!("{section_path}.{option}");
            if REQUEST_ONLY.contains(&option.as_str()) {
                return Err(ConfigError::new(
                    option_path,
                    format!("{option} comes from each request, not from the module"),
                ));
            }
            for item in list(&option_path, value)? {
                options.push((option.clone(), item));
            }
            let shown_value = if policy::is_secret(option) {
                Value::from(policy::SECRET)
            } else {
                value.clone()
            };
            shown_options.insert(option.as_str().into(), shown_value);
        }
    }
    check_options(&path, prober, &options)?;
    // The key file is read and parsed once, here; probes use the parsed key.
    let mut loaded = Loaded::default();
    if let Some((_, file)) = options.iter().find(|(name, _)| name == "public_key_file") {
        let key = crate::probe::iperf3::load_public_key(file)
            .map_err(|err| ConfigError::new(format!("{path}.{prober}.public_key_file"), err.0))?;
        loaded.public_key = Some(Arc::new(key));
        options.retain(|(name, _)| name != "public_key_file");
    }
    let mut module_policy = Policy::default_for(spec);
    if let Some(raw_policy) = &raw.policy {
        check_policy(&path, spec, raw_policy, &mut module_policy)?;
    }
    check_bounds(&path, name, prober, &module_policy, &options)?;
    let mut shown = Mapping::new();
    shown.insert("prober".into(), prober.into());
    if let Some(timeout) = &raw.timeout {
        shown.insert("timeout".into(), timeout.clone());
    }
    if !shown_options.is_empty() {
        shown.insert(prober.into(), Value::Mapping(shown_options));
    }
    if let Some(raw_policy) = &raw.policy {
        shown.insert("policy".into(), shown_policy(raw_policy));
    }
    let mut module = Module {
        prober,
        timeout,
        options,
        policy: module_policy,
        loaded,
        name: name.to_string(),
        shown: Value::Mapping(shown),
    };
    match &raw.disabled {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            module.disable(format!("its configuration disables it ({path}.disabled)"))
        }
        Some(other) => {
            return Err(ConfigError::new(
                format!("{path}.disabled"),
                format!("{} is not true or false", shown_value(other)),
            ));
        }
    }
    Ok(module)
}

/// Reads a module's `policy:` section into `policy` (which holds the prober's defaults).
pub(super) fn check_policy(
    path: &str,
    spec: &'static crate::probe::Spec,
    raw: &RawPolicy,
    policy: &mut Policy,
) -> Result<(), ConfigError> {
    let known = |field: &str, index: usize, name: &str| -> Result<(), ConfigError> {
        let at = format!("{path}.policy.{field}[{index}]");
        if policy::NEVER_FROM_REQUEST.contains(&name) {
            return Err(ConfigError::new(
                at,
                format!(
                    "{name:?} can never come from a request (it names a file the daemon reads)"
                ),
            ));
        }
        let target_allowed = field == "allow_params" && name == "target";
        if !(spec.parameters.contains(&name) || target_allowed) {
            return Err(ConfigError::new(
                at,
                format!(
                    "{name:?} is not a parameter of the {} prober (known: {})",
                    spec.name,
                    spec.parameters.join(", ")
                ),
            ));
        }
        Ok(())
    };
    if let Some(value) = raw.allow_params.as_ref().filter(|v| !v.is_null()) {
        let names = list(&format!("{path}.policy.allow_params"), value)?;
        for (index, name) in names.iter().enumerate() {
            known("allow_params", index, name)?;
        }
        policy.allowed = names.into_iter().filter(|name| name != "target").collect();
    }
    if let Some(value) = raw.pin.as_ref().filter(|v| !v.is_null()) {
        let names = list(&format!("{path}.policy.pin"), value)?;
        for (index, name) in names.iter().enumerate() {
            known("pin", index, name)?;
            if raw.allow_params.is_some() && policy.allowed.contains(name) {
                return Err(ConfigError::new(
                    format!("{path}.policy.pin[{index}]"),
                    format!("{name:?} is also in allow_params: a parameter is either or"),
                ));
            }
            policy.allowed.retain(|allowed| allowed != name);
        }
    }
    for (parameter, limit) in raw.limits.iter().flatten() {
        let at = format!("{path}.policy.limits.{parameter}");
        let (parameter, measure) = policy::measure(spec.name, parameter).ok_or_else(|| {
            ConfigError::new(
                &at,
                format!(
                    "the {} prober has no bound {parameter:?} (bounds: {})",
                    spec.name,
                    policy::BOUNDABLE
                        .iter()
                        .filter(|(prober, _, _)| *prober == spec.name)
                        .map(|(_, name, _)| *name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let value = |field: &str, raw: &Option<Value>| -> Result<Option<f64>, ConfigError> {
            let Some(raw) = raw.as_ref().filter(|v| !v.is_null()) else {
                return Ok(None);
            };
            let text = scalar(&format!("{at}.{field}"), raw)?;
            policy::parse_bound(measure, &text)
                .map(Some)
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{at}.{field}"),
                        format!("{text:?} is not a valid bound for {parameter}"),
                    )
                })
        };
        let (min, max) = (value("min", &limit.min)?, value("max", &limit.max)?);
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            return Err(ConfigError::new(at, "min is above max"));
        }
        policy.bounds.retain(|bound| bound.parameter != parameter);
        policy.bounds.push(Bound {
            parameter,
            min,
            max,
        });
    }
    Ok(())
}

/// Checks the module's own options against its bounds: a module cannot set what no request
/// may ask.
pub(super) fn check_bounds(
    path: &str,
    name: &str,
    prober: &'static str,
    policy: &Policy,
    options: &[(String, String)],
) -> Result<(), ConfigError> {
    let query = Query::from_pairs(
        std::iter::once(("target".to_string(), PLACEHOLDER_TARGET.to_string()))
            .chain(options.iter().cloned()),
    );
    policy.check_bounds(name, prober, &query).map_err(|err| {
        let parameter = err
            .0
            .strip_prefix("parameter \"")
            .and_then(|rest| rest.split_once('"'))
            .map(|(parameter, _)| parameter.to_string())
            .unwrap_or_default();
        let at = if options.iter().any(|(option, _)| *option == parameter) {
            format!("{path}.{prober}.{parameter}")
        } else {
            format!("{path}.policy.limits.{parameter}")
        };
        ConfigError::new(
            at,
            format!("{} (raise {path}.policy.limits.{parameter})", err.0),
        )
    })
}

/// The `policy:` section as `/config` shows it.
pub(super) fn shown_policy(raw: &RawPolicy) -> Value {
    let mut shown = Mapping::new();
    if let Some(value) = &raw.allow_params {
        shown.insert("allow_params".into(), value.clone());
    }
    if let Some(value) = &raw.pin {
        shown.insert("pin".into(), value.clone());
    }
    if let Some(limits) = &raw.limits {
        let limits: Mapping = limits
            .iter()
            .map(|(name, limit)| {
                let mut bound = Mapping::new();
                if let Some(min) = &limit.min {
                    bound.insert("min".into(), min.clone());
                }
                if let Some(max) = &limit.max {
                    bound.insert("max".into(), max.clone());
                }
                (Value::from(name.as_str()), Value::Mapping(bound))
            })
            .collect();
        shown.insert("limits".into(), Value::Mapping(limits));
    }
    Value::Mapping(shown)
}

/// Checks a module's options with the prober's own query validation. An error is pinned on the
/// option that causes it alone, else on the prober's section (options that only fail together,
/// such as an incomplete iperf3 login).
pub(super) fn check_options(
    module_path: &str,
    prober: &'static str,
    options: &[(String, String)],
) -> Result<(), ConfigError> {
    let query = |options: &[(String, String)]| {
        Query::from_pairs(
            std::iter::once(("target".to_string(), PLACEHOLDER_TARGET.to_string()))
                .chain(options.iter().cloned()),
        )
    };
    let Err(whole) = Probers::validate(prober, &query(options)) else {
        return Ok(());
    };
    let names: BTreeSet<&str> = options.iter().map(|(name, _)| name.as_str()).collect();
    for name in names {
        let alone: Vec<(String, String)> =
            options.iter().filter(|(n, _)| n == name).cloned().collect();
        if Probers::validate(prober, &query(&alone)).as_ref() == Err(&whole) {
            return Err(ConfigError::new(
                format!("{module_path}.{prober}.{name}"),
                whole.0,
            ));
        }
    }
    Err(ConfigError::new(format!("{module_path}.{prober}"), whole.0))
}
