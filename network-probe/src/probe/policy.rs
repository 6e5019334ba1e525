//! Per-module request policy for `/probe` (untrusted callers): which query parameters a request
//! may set, which module options it may not override (pinned), numeric bounds no request or
//! module option may exceed, and whether the module may run at all. The configuration builds a
//! [`Policy`] per module (config/); the request handler ([`super::handler`]) enforces it before
//! anything is resolved or sent. Pure.
//!
//! The defaults, for the built-in modules and for modules that say nothing, are each prober's
//! [`super::Spec::request_parameters`] (the parameters its seed exporter took from a request,
//! plus tftp's transfer options) and [`default_bounds`]. Parameters no request may ever set,
//! whatever the module says, are in [`NEVER_FROM_REQUEST`] (a file the daemon would read); the
//! values of [`SECRET_PARAMETERS`] are shown as [`SECRET`] wherever a module is shown.

use std::time::Duration;

use super::{BadRequest, COMMON_PARAMETERS, Query, Spec};

/// What `/config` and `?debug=true` show instead of a secret.
pub(crate) const SECRET: &str = "<secret>";

/// Module options whose values are secrets (passwords, key paths a request must not learn).
pub(crate) const SECRET_PARAMETERS: &[&str] = &["password", "public_key_file"];

/// Parameters a request may never set, whatever the module's policy: a path the daemon would
/// read (its existence and size would leak, and a hung mount would block the runtime).
pub(crate) const NEVER_FROM_REQUEST: &[&str] = &["public_key_file"];

/// The longest a probe of a module without a `timeout` of its own runs, whatever the scrape
/// timeout header asks (the prober's own limit may be lower). A module's `timeout` may raise it
/// up to the prober's limit.
pub(crate) const DEFAULT_MAX_PROBE_TIME: Duration = Duration::from_secs(120);

/// A bound on a numeric parameter: the value a probe would use (a request's, else the module's
/// option, else the prober's default) must lie within `min..=max`.
#[derive(Clone, Debug, PartialEq)]
pub struct Bound {
    /// The parameter (`period`, `parallel`, `bitrate`) or `targets` (target= values).
    pub parameter: &'static str,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// How a bounded parameter is measured, and in what unit bounds are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Measure {
    /// A duration (`period`): seconds, or with a unit (`1500ms`, `10s`, `1m`).
    Seconds,
    /// A count (`parallel`).
    Count,
    /// Bits per second with optional k/M/G/T (`bitrate`); 0 is unlimited.
    BitsPerSecond,
    /// The number of `target=` values of the request.
    Targets,
}

/// The parameters a policy may bound, per prober, and how they are measured.
pub(crate) const BOUNDABLE: &[(&str, &str, Measure)] = &[
    ("iperf3", "period", Measure::Seconds),
    ("iperf3", "parallel", Measure::Count),
    ("iperf3", "bitrate", Measure::BitsPerSecond),
    ("ping", "targets", Measure::Targets),
];

/// How `parameter` of `prober` is measured, if a policy may bound it.
pub(crate) fn measure(prober: &str, parameter: &str) -> Option<(&'static str, Measure)> {
    BOUNDABLE
        .iter()
        .find(|(p, name, _)| *p == prober && *name == parameter)
        .map(|(_, name, measure)| (*name, *measure))
}

/// Parses a bound as written in the configuration (`60s`, `4`, `100M`).
pub(crate) fn parse_bound(measure: Measure, text: &str) -> Option<f64> {
    let value = match measure {
        Measure::Seconds => super::iperf3::params::parse_period(text)
            .ok()?
            .as_secs_f64(),
        Measure::Count | Measure::Targets => text.trim().parse::<u32>().ok()? as f64,
        Measure::BitsPerSecond => match super::iperf3::protocol::parse_bitrate(text)? {
            0 => f64::INFINITY,
            bits => bits as f64,
        },
    };
    Some(value)
}

/// A bound value as the messages show it.
fn shown(measure: Measure, value: f64) -> String {
    match measure {
        Measure::Seconds => format!("{value}s"),
        Measure::BitsPerSecond if value.is_infinite() => "unlimited (0)".to_string(),
        Measure::BitsPerSecond => format!("{value} bit/s"),
        Measure::Count | Measure::Targets => format!("{value}"),
    }
}

/// The bounds a module has unless its configuration says otherwise: iperf3 tests of at most
/// 60 s ([`DEFAULT_MAX_PERIOD`]) with at most 8 streams ([`DEFAULT_MAX_PARALLEL`]).
pub(crate) fn default_bounds(prober: &str) -> Vec<Bound> {
    match prober {
        "iperf3" => vec![
            Bound {
                parameter: "period",
                min: None,
                max: Some(DEFAULT_MAX_PERIOD.as_secs_f64()),
            },
            Bound {
                parameter: "parallel",
                min: None,
                max: Some(f64::from(DEFAULT_MAX_PARALLEL)),
            },
        ],
        _ => Vec::new(),
    }
}

/// Longest iperf3 test (`period`) of a module that sets no bound of its own.
pub(crate) const DEFAULT_MAX_PERIOD: Duration = Duration::from_secs(60);
/// Most iperf3 streams (`parallel`) of a module that sets no bound of its own.
pub(crate) const DEFAULT_MAX_PARALLEL: u32 = 8;

/// What a module lets a request do.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Why the module may not run at all (`probe.disable`, the module's `disabled`).
    pub disabled: Option<String>,
    /// The parameters a request may set (`target` always; `module` and `debug` are the
    /// route's).
    pub allowed: Vec<String>,
    pub bounds: Vec<Bound>,
}

impl Policy {
    /// The policy of a module that says nothing: the prober's request parameters and default
    /// bounds.
    pub fn default_for(spec: &Spec) -> Policy {
        Policy {
            disabled: None,
            allowed: spec
                .request_parameters
                .iter()
                .map(|name| name.to_string())
                .collect(),
            bounds: default_bounds(spec.name),
        }
    }

    /// Whether a request may set `name`.
    pub fn allows(&self, name: &str) -> bool {
        !NEVER_FROM_REQUEST.contains(&name)
            && (name == "target"
                || COMMON_PARAMETERS.contains(&name)
                || self.allowed.iter().any(|allowed| allowed == name))
    }

    /// Checks the parameters a request sets (before the module's options are added): a
    /// parameter the prober knows but the policy does not let a request set is a 400 naming
    /// the parameter and the module (pinned when the module sets it). Names the prober does
    /// not know are left to the prober's own check (its "unknown parameter" 400).
    pub fn check_request(
        &self,
        module: &str,
        spec: &Spec,
        options: &[(String, String)],
        request: &Query,
    ) -> Result<(), BadRequest> {
        for name in request.names() {
            if NEVER_FROM_REQUEST.contains(&name) {
                return Err(BadRequest(format!(
                    "parameter {name:?} cannot be set by a request (module {module:?}): it names \
                     a file, which only the configuration file may"
                )));
            }
            if self.allows(name) || !spec.parameters.contains(&name) {
                continue;
            }
            let mut allowed: Vec<&str> = std::iter::once("target")
                .chain(self.allowed.iter().map(String::as_str))
                .filter(|allowed| !NEVER_FROM_REQUEST.contains(allowed))
                .collect();
            allowed.dedup();
            let allowed = allowed.join(", ");
            return Err(BadRequest(
                if options.iter().any(|(option, _)| option == name) {
                    format!(
                        "parameter {name:?} is pinned by module {module:?}: its configuration sets \
                     it and a request may not override it (a request may set: {allowed})"
                    )
                } else {
                    format!(
                        "parameter {name:?} may not be set by a request to module {module:?} (a \
                     request may set: {allowed})"
                    )
                },
            ));
        }
        Ok(())
    }

    /// Checks the bounds on the query a probe would run with (the request's parameters and
    /// the module's options): a value outside is a 400 naming the parameter, the value, the
    /// bound and the module. Values that do not parse are left to the prober's own check.
    pub fn check_bounds(
        &self,
        module: &str,
        prober: &str,
        query: &Query,
    ) -> Result<(), BadRequest> {
        // In the order of BOUNDABLE, whatever the order the configuration gave.
        let bounds = BOUNDABLE
            .iter()
            .filter(|(of, _, _)| *of == prober)
            .filter_map(|(_, name, measure)| {
                let bound = self.bounds.iter().find(|bound| bound.parameter == *name)?;
                Some((bound, *measure))
            });
        for (bound, measure) in bounds {
            let Some(value) = effective(prober, bound.parameter, measure, query) else {
                continue;
            };
            let shown_value = match measure {
                Measure::Targets => format!("{value} targets"),
                _ => query
                    .all(bound.parameter)
                    .last()
                    .filter(|text| !text.is_empty())
                    .map_or_else(
                        || format!("the default {}", shown(measure, value)),
                        |text| format!("{text:?}"),
                    ),
            };
            if let Some(max) = bound.max
                && value > max
            {
                return Err(BadRequest(format!(
                    "parameter {:?}: {shown_value} is above the maximum {} of module {module:?}",
                    bound.parameter,
                    shown(measure, max)
                )));
            }
            if let Some(min) = bound.min
                && value < min
            {
                return Err(BadRequest(format!(
                    "parameter {:?}: {shown_value} is below the minimum {} of module {module:?}",
                    bound.parameter,
                    shown(measure, min)
                )));
            }
        }
        Ok(())
    }
}

/// The value of a bounded parameter a probe of `query` would use: the query's, else the
/// prober's default (`None` when it does not parse: the prober answers that).
fn effective(prober: &str, parameter: &str, measure: Measure, query: &Query) -> Option<f64> {
    if measure == Measure::Targets {
        return Some(query.all("target").count() as f64);
    }
    let given = query.get(parameter).ok()?.filter(|text| !text.is_empty());
    match (prober, parameter, given) {
        (_, _, Some(text)) => parse_bound(measure, text),
        ("iperf3", "period", None) => Some(super::iperf3::DEFAULT_PERIOD.as_secs_f64()),
        ("iperf3", "parallel", None) => Some(1.0),
        ("iperf3", "bitrate", None) => Some(if query.flag("udp_mode", false).ok()? {
            super::iperf3::DEFAULT_UDP_BITRATE as f64
        } else {
            f64::INFINITY
        }),
        _ => None,
    }
}

/// Whether the option `name` is a secret, shown as [`SECRET`] in `/config` and `?debug=true`.
pub(crate) fn is_secret(name: &str) -> bool {
    SECRET_PARAMETERS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{iperf3, ping, tftp};

    fn query(pairs: &[(&str, &str)]) -> Query {
        Query::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn builtin_policies_take_the_seed_parameters() {
        for (spec, parameters) in [
            (
                &tftp::SPEC,
                &[("tftp_filename", "pxelinux.0"), ("tftp_port", "69")][..],
            ),
            (&ping::SPEC, &[("ip_version", "4"), ("tcp_port", "443")][..]),
            (
                &iperf3::SPEC,
                &[
                    ("port", "5201"),
                    ("period", "5"),
                    ("reverse_mode", "true"),
                    ("udp_mode", "true"),
                    ("bitrate", "10M"),
                ][..],
            ),
        ] {
            let policy = Policy::default_for(spec);
            let mut pairs = vec![
                ("module", spec.name),
                ("target", "192.0.2.1"),
                ("debug", "true"),
            ];
            pairs.extend_from_slice(parameters);
            policy
                .check_request(spec.name, spec, &[], &query(&pairs))
                .unwrap();
            policy
                .check_bounds(spec.name, spec.name, &query(&pairs))
                .unwrap();
        }
    }

    #[test]
    fn parameters_outside_the_policy_name_the_parameter_and_module() {
        let policy = Policy::default_for(&iperf3::SPEC);
        for name in ["parallel", "bind", "username", "password", "padding"] {
            let err = policy
                .check_request(
                    "iperf3",
                    &iperf3::SPEC,
                    &[],
                    &query(&[("target", "a"), (name, "1")]),
                )
                .unwrap_err();
            assert!(
                err.0.starts_with(&format!(
                    "parameter {name:?} may not be set by a request to module \"iperf3\""
                )),
                "{err}"
            );
        }
        // A key file is refused whatever the policy says.
        let mut open = Policy::default_for(&iperf3::SPEC);
        open.allowed.push("public_key_file".into());
        assert!(!open.allows("public_key_file"));
        let err = open
            .check_request(
                "auth",
                &iperf3::SPEC,
                &[],
                &query(&[("target", "a"), ("public_key_file", "/etc/shadow")]),
            )
            .unwrap_err();
        assert!(
            err.0
                .starts_with("parameter \"public_key_file\" cannot be set by a request"),
            "{err}"
        );
        assert!(!err.0.contains("shadow"), "{err}");
        // Unknown names are the prober's to refuse (its own message).
        policy
            .check_request(
                "iperf3",
                &iperf3::SPEC,
                &[],
                &query(&[("target", "a"), ("colour", "1")]),
            )
            .unwrap();
    }

    #[test]
    fn a_module_option_left_out_of_the_policy_is_pinned() {
        let mut policy = Policy::default_for(&ping::SPEC);
        policy.allowed.retain(|name| name != "tcp_port");
        let options = [("tcp_port".to_string(), "443".to_string())];
        let err = policy
            .check_request(
                "https",
                &ping::SPEC,
                &options,
                &query(&[
                    ("target", "10.0.0.5"),
                    ("tcp_port", "22"),
                    ("tcp_port", "23"),
                ]),
            )
            .unwrap_err();
        assert_eq!(
            err.0,
            "parameter \"tcp_port\" is pinned by module \"https\": its configuration sets it and \
             a request may not override it (a request may set: target, ip_version)"
        );
        policy
            .check_request(
                "https",
                &ping::SPEC,
                &options,
                &query(&[("target", "10.0.0.5")]),
            )
            .unwrap();
    }

    #[test]
    fn bounds_apply_to_the_value_a_probe_would_use() {
        let policy = Policy::default_for(&iperf3::SPEC);
        let check = |pairs: &[(&str, &str)]| policy.check_bounds("iperf3", "iperf3", &query(pairs));
        check(&[("target", "a")]).unwrap();
        check(&[("target", "a"), ("period", "60"), ("parallel", "8")]).unwrap();
        let err = check(&[("target", "a"), ("period", "600")]).unwrap_err();
        assert_eq!(
            err.0,
            "parameter \"period\": \"600\" is above the maximum 60s of module \"iperf3\""
        );
        let err = check(&[("target", "a"), ("period", "2m")]).unwrap_err();
        assert!(err.0.contains("\"2m\" is above the maximum 60s"), "{err}");
        let err = check(&[("target", "a"), ("parallel", "128")]).unwrap_err();
        assert!(
            err.0
                .starts_with("parameter \"parallel\": \"128\" is above the maximum 8"),
            "{err}"
        );
        // A value that does not parse is the prober's to refuse.
        check(&[("target", "a"), ("period", "soon")]).unwrap();

        // Bitrate: an unlimited default counts as above any maximum.
        let bounded = Policy {
            bounds: vec![Bound {
                parameter: "bitrate",
                min: Some(1e6),
                max: Some(1e8),
            }],
            ..Policy::default_for(&iperf3::SPEC)
        };
        let check = |pairs: &[(&str, &str)]| bounded.check_bounds("m", "iperf3", &query(pairs));
        check(&[("bitrate", "10M")]).unwrap();
        check(&[("udp_mode", "true")]).unwrap();
        let err = check(&[("bitrate", "0")]).unwrap_err();
        assert!(
            err.0
                .contains("above the maximum 100000000 bit/s of module \"m\""),
            "{err}"
        );
        let err = check(&[]).unwrap_err();
        assert!(
            err.0.contains("the default unlimited (0) is above"),
            "{err}"
        );
        let err = check(&[("bitrate", "10k")]).unwrap_err();
        assert!(err.0.contains("below the minimum 1000000 bit/s"), "{err}");

        // Ping targets per request.
        let targets = Policy {
            bounds: vec![Bound {
                parameter: "targets",
                min: None,
                max: Some(2.0),
            }],
            ..Policy::default_for(&ping::SPEC)
        };
        let err = targets
            .check_bounds(
                "p",
                "ping",
                &query(&[("target", "a"), ("target", "b"), ("target", "c")]),
            )
            .unwrap_err();
        assert_eq!(
            err.0,
            "parameter \"targets\": 3 targets is above the maximum 2 of module \"p\""
        );
    }

    #[test]
    fn secrets_are_redacted() {
        assert!(is_secret("password"));
        assert!(is_secret("public_key_file"));
        assert!(!is_secret("username"));
    }

    #[test]
    fn bounds_parse_in_the_parameter_unit() {
        assert_eq!(parse_bound(Measure::Seconds, "90s"), Some(90.0));
        assert_eq!(parse_bound(Measure::Seconds, "1m"), Some(60.0));
        assert_eq!(parse_bound(Measure::BitsPerSecond, "100M"), Some(1e8));
        assert_eq!(
            parse_bound(Measure::BitsPerSecond, "0"),
            Some(f64::INFINITY)
        );
        assert_eq!(parse_bound(Measure::Count, "4"), Some(4.0));
        assert_eq!(parse_bound(Measure::Count, "-1"), None);
        assert_eq!(
            measure("iperf3", "period").map(|m| m.1),
            Some(Measure::Seconds)
        );
        assert_eq!(measure("tftp", "period"), None);
    }
}
