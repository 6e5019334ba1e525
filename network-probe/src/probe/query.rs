//! Query-string parsing for `/probe` (untrusted input): a pure percent-decoder and typed
//! accessors whose errors name the parameter and the bad value.

use std::{fmt, str::FromStr};

/// An invalid request: the message names the parameter and value; answered with HTTP 400.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadRequest {}

/// Most parameters accepted in one query string.
pub(crate) const MAX_PARAMETERS: usize = 256;

/// The decoded parameters of a query string, in order; names may repeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses `a=1&b=x%20y&a=2` (the part after `?`). `+` decodes to a space. Bad percent
    /// escapes, invalid UTF-8 and too many parameters are errors.
    pub fn parse(raw: &str) -> Result<Query, BadRequest> {
        let mut pairs = Vec::new();
        for part in raw.split('&').filter(|part| !part.is_empty()) {
            if pairs.len() == MAX_PARAMETERS {
                return Err(BadRequest(format!(
                    "more than {MAX_PARAMETERS} query parameters"
                )));
            }
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((decode(name)?, decode(value)?));
        }
        Ok(Query { pairs })
    }

    /// Builds a query from pairs (tests, one-shot probes).
    pub fn from_pairs<N: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Query {
        Query {
            pairs: pairs
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        }
    }

    /// This query with `defaults` (a probe module's options) added for every name the query
    /// does not give: a request's parameter, even empty, overrides the module's.
    pub fn with_defaults(&self, defaults: &[(String, String)]) -> Query {
        let mut pairs: Vec<(String, String)> = defaults
            .iter()
            .filter(|(name, _)| self.all(name).next().is_none())
            .cloned()
            .collect();
        pairs.extend(self.pairs.iter().cloned());
        Query { pairs }
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`; an error if it is given more than once.
    pub fn get<'a>(&'a self, name: &'a str) -> Result<Option<&'a str>, BadRequest> {
        let mut values = self.all(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(BadRequest(format!(
                "parameter {name:?} given more than once"
            )));
        }
        Ok(first)
    }

    /// The value of a required parameter.
    pub fn required<'a>(&'a self, name: &'a str) -> Result<&'a str, BadRequest> {
        match self.get(name)? {
            Some(value) if !value.is_empty() => Ok(value),
            _ => Err(BadRequest(format!("missing parameter {name:?}"))),
        }
    }

    /// The value of `name` parsed as `T`, or `default` when absent; the error names the
    /// parameter, the value and what was expected.
    pub fn parse_or<T: FromStr>(
        &self,
        name: &str,
        default: T,
        expected: &str,
    ) -> Result<T, BadRequest> {
        match self.get(name)? {
            None | Some("") => Ok(default),
            Some(value) => value.parse().map_err(|_| {
                BadRequest(format!("parameter {name:?}: {value:?} is not {expected}"))
            }),
        }
    }

    /// A boolean flag: `true`/`false`/`1`/`0`/`yes`/`no`, or `default` when absent.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, BadRequest> {
        match self.get(name)? {
            None | Some("") => Ok(default),
            Some(value) => match value.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(BadRequest(format!(
                    "parameter {name:?}: {value:?} is not a boolean (true or false)"
                ))),
            },
        }
    }

    /// Names of parameters not in `known` (to reject typos instead of ignoring them).
    pub fn unknown<'a>(&'a self, known: &[&str]) -> Vec<&'a str> {
        let mut names: Vec<&str> = self
            .pairs
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !known.contains(n))
            .collect();
        names.dedup();
        names
    }

    /// The distinct parameter names, in the order they first appear.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for (name, _) in &self.pairs {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        names
    }
}

/// Percent-decodes one query component (`+` is a space).
fn decode(component: &str) -> Result<String, BadRequest> {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        BadRequest(format!(
                            "bad percent escape in query component {component:?}"
                        ))
                    })?;
                out.push(hex);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| BadRequest(format!("query component {component:?} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_keeps_repeats() {
        let query = Query::parse("target=a.example&target=b%2Eexample&x=1+2&flag").unwrap();
        assert_eq!(
            query.all("target").collect::<Vec<_>>(),
            ["a.example", "b.example"]
        );
        assert_eq!(query.get("x").unwrap(), Some("1 2"));
        assert_eq!(query.get("flag").unwrap(), Some(""));
        assert!(
            query
                .get("target")
                .unwrap_err()
                .0
                .contains("more than once")
        );
        assert_eq!(query.get("absent").unwrap(), None);
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(Query::parse("a=%zz").unwrap_err().0.contains("\"%zz\""));
        assert!(
            Query::parse("a=%f")
                .unwrap_err()
                .0
                .contains("bad percent escape")
        );
        assert!(
            Query::parse("a=%ff%fe")
                .unwrap_err()
                .0
                .contains("not UTF-8")
        );
        let many = vec!["a=1"; MAX_PARAMETERS + 1].join("&");
        assert!(Query::parse(&many).is_err());
        let query = Query::parse("port=http&debug=maybe").unwrap();
        let err = query.parse_or("port", 69u16, "a port number").unwrap_err();
        assert_eq!(err.0, "parameter \"port\": \"http\" is not a port number");
        assert!(
            query
                .flag("debug", false)
                .unwrap_err()
                .0
                .contains("\"maybe\"")
        );
        assert_eq!(
            query.required("target").unwrap_err().0,
            "missing parameter \"target\""
        );
        assert_eq!(query.unknown(&["port"]), ["debug"]);
    }

    #[test]
    fn request_parameters_override_defaults() {
        let defaults = [
            ("blksize".to_string(), "1468".to_string()),
            ("tcp_port".into(), "22".into()),
            ("tcp_port".into(), "443".into()),
            ("tsize".into(), "true".into()),
        ];
        let query = Query::parse("target=x&blksize=512&tsize=").unwrap();
        let merged = query.with_defaults(&defaults);
        assert_eq!(merged.get("blksize").unwrap(), Some("512"));
        assert_eq!(merged.all("tcp_port").collect::<Vec<_>>(), ["22", "443"]);
        assert_eq!(merged.get("tsize").unwrap(), Some(""));
        assert_eq!(merged.get("target").unwrap(), Some("x"));
        let query = Query::parse("tcp_port=80").unwrap();
        assert_eq!(
            query
                .with_defaults(&defaults)
                .all("tcp_port")
                .collect::<Vec<_>>(),
            ["80"]
        );
    }

    #[test]
    fn typed_values() {
        let query = Query::parse("n=5&on=true&off=0").unwrap();
        assert_eq!(query.parse_or("n", 1u32, "a number").unwrap(), 5);
        assert_eq!(query.parse_or("m", 1u32, "a number").unwrap(), 1);
        assert!(query.flag("on", false).unwrap());
        assert!(!query.flag("off", true).unwrap());
        assert!(query.flag("none", true).unwrap());
    }

    #[test]
    fn never_panics_on_odd_input() {
        for raw in [
            "",
            "&&&",
            "=",
            "%",
            "%%",
            "a=%",
            "=%41",
            "\u{0}=\u{ff}",
            "a=b=c",
        ] {
            let _ = Query::parse(raw);
        }
    }
}
