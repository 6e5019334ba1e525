//! `network-probe probe MODULE TARGET [KEY=VALUE...]`: one probe from the command line, through
//! the same code path as `/probe` ([`handler::handle`] with a [`Query`] built from the target
//! and the pairs, an empty allowlist and `--timeout` as the budget), for operators trying a
//! target before writing a scrape config.
//!
//! MODULE is a module of `--config.file` (its options default the pairs, its timeout caps
//! `--timeout`) or a built-in prober, exactly as `/probe?module=` resolves it. The metrics go to
//! stdout in the Prometheus text format 0.0.4, the probe log to stderr.
//! Exit codes: 0 the probe succeeded, 1 it failed, 2 bad parameters (the message names them).
//!
//! The `ping` prober probes in the background and answers with what it has seen so far, so a
//! one-shot ping asks once (which starts probing), waits one `--ping.timeout` (by then the first
//! echo is answered or counted lost) and asks again for the figures.

use std::time::Duration;

use crate::{
    cli::{Cli, ProbeArgs},
    config::{self, Config},
    metrics,
    probe::{
        self, BadRequest, Probers, Query, SystemResolver,
        allowlist::Allowlist,
        handler::{self, Budget, Outcome},
    },
};

/// Exit code when the probe succeeded.
pub const EXIT_SUCCESS: u8 = 0;
/// Exit code when the probe ran and failed.
pub const EXIT_PROBE_FAILED: u8 = 1;
/// Exit code for bad parameters (as for a bad command line).
pub const EXIT_BAD_PARAMETERS: u8 = crate::error::exit_code::USAGE;

/// Builds the query `/probe` would get: `module`, `target`, then the `KEY=VALUE` pairs. A pair
/// without `=`, with an empty key, or repeating `module` is a [`BadRequest`] naming it.
pub fn build_query(args: &ProbeArgs) -> Result<Query, BadRequest> {
    let mut pairs = vec![
        ("module".to_string(), args.module.clone()),
        ("target".to_string(), args.target.clone()),
    ];
    for parameter in &args.parameters {
        match parameter.split_once('=') {
            Some(("", _)) => {
                return Err(BadRequest(format!(
                    "parameter {parameter:?} has an empty name (expected KEY=VALUE)"
                )));
            }
            Some(("module", _)) => {
                return Err(BadRequest(format!(
                    "parameter {parameter:?}: the module is the first argument"
                )));
            }
            Some((key, value)) => pairs.push((key.to_string(), value.to_string())),
            None => {
                return Err(BadRequest(format!(
                    "parameter {parameter:?} is not KEY=VALUE"
                )));
            }
        }
    }
    Ok(Query::from_pairs(pairs))
}

/// Runs the probe and prints its outcome; returns the exit code.
pub fn run(cli: &Cli, args: &ProbeArgs) -> u8 {
    let query = match build_query(args) {
        Ok(query) => query,
        Err(err) => return bad_parameters(&err),
    };
    let config = match &cli.config_file {
        Some(path) => match config::load(path) {
            Ok(config) => config,
            Err(err) => {
                eprintln!(
                    "network-probe: error: invalid --config.file {:?}: {err}",
                    path.display().to_string()
                );
                return EXIT_BAD_PARAMETERS;
            }
        },
        None => Config::default(),
    };
    let module = match config.module(&args.module) {
        Ok(module) => module,
        Err(err) => return bad_parameters(&err),
    };
    let prober = module.prober;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("network-probe: error: starting the async runtime: {err}");
            return EXIT_PROBE_FAILED;
        }
    };
    let probers = Probers::new(&config.apply(cli).ping);
    // The one-shot command never listens on the network: no allowlist (docs/probe-routing.md).
    let allowlist = Allowlist::default();
    let outcome = runtime.block_on(async {
        let probe_once = || {
            handler::handle(
                &probers,
                module.probe(),
                &query,
                Budget::Limit(args.timeout),
                &allowlist,
                &SystemResolver,
            )
        };
        let outcome = probe_once().await;
        if prober != probe::ping::MODULE || !matches!(outcome, Outcome::Report { .. }) {
            return outcome;
        }
        // Probing runs in the background now; give the first echo its timeout.
        let wait = cli.ping.timeout + Duration::from_millis(50);
        tokio::time::sleep(wait.min(args.timeout)).await;
        probe_once().await
    });
    let (success, registry, log) = match outcome {
        Outcome::Report {
            success,
            registry,
            log,
        } => (success, registry, log),
        Outcome::BadRequest(err) => return bad_parameters(&err),
        // Not reached without an allowlist; a refusal is a bad parameter all the same.
        Outcome::Refused(refusal) => return bad_parameters(&BadRequest(refusal.0)),
        // Only a request larger than the cap by itself (one run starts with no probe active).
        Outcome::Overloaded(err) => return bad_parameters(&BadRequest(err.0)),
    };
    for line in log {
        eprintln!("{line}");
    }
    match metrics::render(&registry) {
        Ok(body) => print!("{}", metrics::openmetrics_to_text_004(&body)),
        Err(_) => {
            eprintln!("network-probe: error: encoding the metrics failed");
            return EXIT_PROBE_FAILED;
        }
    }
    if success {
        eprintln!("probe succeeded");
        EXIT_SUCCESS
    } else {
        eprintln!("probe failed (the log above says why)");
        EXIT_PROBE_FAILED
    }
}

fn bad_parameters(err: &BadRequest) -> u8 {
    eprintln!("network-probe: error: bad probe parameters: {err}");
    EXIT_BAD_PARAMETERS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(module: &str, parameters: &[&str]) -> ProbeArgs {
        ProbeArgs {
            module: module.into(),
            target: "192.0.2.1".into(),
            parameters: parameters.iter().map(|p| p.to_string()).collect(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_query_is_module_target_then_pairs() {
        let query = build_query(&args("tftp", &["file=a=b", "port=69"])).unwrap();
        assert_eq!(query.get("module").unwrap(), Some("tftp"));
        assert_eq!(query.get("target").unwrap(), Some("192.0.2.1"));
        // Only the first '=' splits.
        assert_eq!(query.get("file").unwrap(), Some("a=b"));
        assert_eq!(query.get("port").unwrap(), Some("69"));
    }

    #[test]
    fn malformed_pairs_are_named() {
        let err = build_query(&args("tftp", &["file"])).unwrap_err();
        assert_eq!(err.0, "parameter \"file\" is not KEY=VALUE");
        let err = build_query(&args("tftp", &["=x"])).unwrap_err();
        assert!(err.0.contains("\"=x\" has an empty name"), "{}", err.0);
        let err = build_query(&args("tftp", &["module=ping"])).unwrap_err();
        assert!(err.0.contains("\"module=ping\""), "{}", err.0);
    }

    #[tokio::test]
    async fn unknown_modules_and_parameters_are_bad_requests() {
        let cli = <Cli as clap::Parser>::try_parse_from(["network-probe"]).unwrap();
        let probers = Probers::new(&cli.ping);
        let run = |prober: &'static str, query: Query| {
            let probers = &probers;
            async move {
                let module = probe::Module::builtin(prober);
                let budget = Budget::Limit(Duration::from_secs(1));
                let allowlist = Allowlist::default();
                match handler::handle(probers, module, &query, budget, &allowlist, &SystemResolver)
                    .await
                {
                    Outcome::BadRequest(err) => err.0,
                    other => panic!("expected a bad request, got {other:?}"),
                }
            }
        };
        let err = run("nope", build_query(&args("nope", &[])).unwrap()).await;
        assert!(err.contains("unknown module \"nope\""), "{err}");
        let err = run(
            "ping",
            build_query(&args("ping", &["colour=blue"])).unwrap(),
        )
        .await;
        assert!(err.contains("\"colour\""), "{err}");
    }
}
