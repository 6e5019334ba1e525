//! The configuration's error, which names the field by its path, and the helpers that read a YAML
//! leaf as one value or a list and describe a bad one.

use std::fmt;

use yaml_serde::Value;

/// A problem with the file: the path of the field (empty for the whole file) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    pub(super) fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A scalar as text.
pub(super) fn scalar(path: &str, value: &Value) -> Result<String, ConfigError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Number(number) => Ok(number.to_string()),
        Value::Bool(flag) => Ok(flag.to_string()),
        other => Err(ConfigError::new(
            path,
            format!("expected a single value, found {}", kind(other)),
        )),
    }
}

/// A list of scalars (or one scalar) as texts.
pub(super) fn list(path: &str, value: &Value) -> Result<Vec<String>, ConfigError> {
    match value {
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| scalar(&format!("{path}[{i}]"), item))
            .collect(),
        other => Ok(vec![scalar(path, other)?]),
    }
}

pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A YAML value on one line, for messages.
pub(super) fn shown_value(value: &Value) -> String {
    match value {
        Value::String(text) => format!("{text:?}"),
        other => serde_json::to_string(other).unwrap_or_else(|_| kind(other).to_string()),
    }
}
