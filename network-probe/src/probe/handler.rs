//! One probe request from query to outcome, for `/probe` (web/) and `network-probe probe`
//! (commands/oneshot.rs) alike, in the blackbox_exporter manner.
//!
//! [`parse`] reads the common parameters once (`module`, with a listener's default, and
//! `debug`); [`handle`] then, for the module the caller looked up:
//! 0. enforces the module's [`Policy`] before anything is resolved or sent: a disabled module
//!    is refused (403), a parameter the request may not set (or that the module pins) is a 400
//!    naming it and the module, a value outside the module's bounds a 400 naming the bound;
//! 1. computes the deadline once (scrape-timeout header or a fixed limit, capped by the module's
//!    `timeout`, else [`DEFAULT_MAX_PROBE_TIME`], and by the prober's longest run);
//! 2. parses every `target=` once ([`split_host_port`]) and judges it against the allowlist,
//!    with the ports the probe would use (the prober's [`super::Spec::ports`]): addresses and
//!    names matching a host pattern without resolving, other names by the addresses they
//!    resolve to;
//! 3. runs the prober's own parameter checks;
//! 4. resolves each target not yet resolved, so that every target is resolved **once** per
//!    request, with one resolver and one failure vocabulary ([`ResolveError`]);
//! 5. runs the prober with those addresses: the addresses the allowlist judged are the ones
//!    probed (the prober never resolves again, so a DNS answer that changes in between cannot
//!    matter).
//!
//! The order of answers is that of docs/probe-routing.md: 400 for the query, `module=` and
//! `debug=`, 403 for a disabled module, 400 for the policy (parameters, bounds), 400 for the
//! header, 400 for a malformed target, 403 for a refused target or port, then the prober's
//! 400s (or its 503 when at a capacity limit). The caller maps the [`Outcome`] to HTTP or to an
//! exit code.

use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;

use super::{
    BadRequest, Module, Overloaded, ProbeContext, ProbeError, Probers, Query,
    allowlist::{Allowlist, Refusal, Screening},
    policy::{DEFAULT_MAX_PROBE_TIME, Policy},
    target::{Resolver, Target, resolve, split_host_port},
};

/// The common parameters of a request, read once.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// The whole query (the prober reads its own parameters and `target=` from it).
    pub query: Query,
    /// The module asked for (or the listener's default).
    pub module: String,
    /// `debug=true`: answer with the probe log and the module.
    pub debug: bool,
}

/// Reads the query string and its common parameters; `default_module` is used when `module=`
/// is absent or empty (a `--web.probe-listen` listener).
pub(crate) fn parse(raw_query: &str, default_module: Option<&str>) -> Result<Request, BadRequest> {
    let query = Query::parse(raw_query)?;
    let module = match (query.get("module"), default_module) {
        (Ok(Some(module)), _) if !module.is_empty() => Ok(module),
        (Ok(_), Some(default)) => Ok(default),
        (Ok(_), None) => query.required("module"),
        (Err(err), _) => Err(err),
    };
    let (module, debug) = match (module, query.flag("debug", false)) {
        (Ok(module), Ok(debug)) => (module.to_string(), debug),
        (Err(err), _) | (_, Err(err)) => return Err(err),
    };
    Ok(Request {
        query,
        module,
        debug,
    })
}

/// How long the probe may take.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Budget<'a> {
    /// The value of Prometheus' scrape-timeout header, if sent (see [`super::deadline`]).
    ScrapeTimeout(Option<&'a str>),
    /// A fixed limit (`network-probe probe --timeout`).
    Limit(Duration),
}

/// What became of a request.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Bad parameters (HTTP 400, exit code 2); the message names them.
    BadRequest(BadRequest),
    /// A target outside `--probe.allow` (HTTP 403); the message names it.
    Refused(Refusal),
    /// The prober is at a capacity limit (HTTP 503); the message names the limit.
    Overloaded(Overloaded),
    /// The probe ran.
    Report {
        success: bool,
        registry: Registry,
        /// The probe log.
        log: Vec<String>,
    },
}

impl From<BadRequest> for Outcome {
    fn from(err: BadRequest) -> Outcome {
        Outcome::BadRequest(err)
    }
}

impl From<ProbeError> for Outcome {
    fn from(err: ProbeError) -> Outcome {
        match err {
            ProbeError::BadRequest(err) => Outcome::BadRequest(err),
            ProbeError::Overloaded(err) => Outcome::Overloaded(err),
        }
    }
}

impl From<Refusal> for Outcome {
    fn from(refusal: Refusal) -> Outcome {
        Outcome::Refused(refusal)
    }
}

/// Runs one probe of `module` for `query` (see the module documentation for the steps).
pub(crate) async fn handle(
    probers: &Probers,
    module: Module<'_>,
    query: &Query,
    budget: Budget<'_>,
    allowlist: &Allowlist,
    resolver: &dyn Resolver,
) -> Outcome {
    match run(probers, module, query, budget, allowlist, resolver).await {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

async fn run(
    probers: &Probers,
    module: Module<'_>,
    query: &Query,
    budget: Budget<'_>,
    allowlist: &Allowlist,
    resolver: &dyn Resolver,
) -> Result<Outcome, Outcome> {
    let (spec, prober) = probers.get(module.prober)?;
    let default_policy;
    let policy = match module.policy {
        Some(policy) => policy,
        None => {
            default_policy = Policy::default_for(spec);
            &default_policy
        }
    };
    if let Some(why) = &policy.disabled {
        return Err(Refusal(format!("module {:?} is disabled: {why}", module.name)).into());
    }
    policy.check_request(module.name, spec, module.options, query)?;
    let query = query.with_defaults(module.options);
    policy.check_bounds(module.name, spec.name, &query)?;
    let longest = module
        .timeout
        .unwrap_or(DEFAULT_MAX_PROBE_TIME)
        .min(spec.max_time);
    let now = Instant::now();
    let deadline = match budget {
        Budget::ScrapeTimeout(header) => super::deadline(now, header, longest)?,
        Budget::Limit(limit) => now + limit.min(longest),
    };
    // Empty targets are left to the prober, whose checks answer "missing parameter".
    let mut targets = Vec::new();
    for raw in query.all("target").filter(|raw| !raw.is_empty()) {
        let (host, port) = split_host_port(raw)?;
        let ports = (spec.ports)(&query, port);
        let addresses = match allowlist.screen_host(raw, &host, &ports) {
            Screening::Allowed => None,
            Screening::Refused(refusal) => return Err(refusal.into()),
            Screening::Resolve { .. } => {
                let addresses = resolve(resolver, &host, deadline).await;
                allowlist
                    .check_resolved(raw, &addresses, &ports)
                    .map_err(Outcome::from)?;
                Some(addresses)
            }
        };
        targets.push((raw.to_string(), host, port, addresses));
    }
    let loaded = module.loaded.cloned().unwrap_or_default();
    (spec.validate)(&query, &loaded)?;
    let mut resolved = Vec::with_capacity(targets.len());
    for (raw, host, port, addresses) in targets {
        let addresses = match addresses {
            Some(addresses) => addresses,
            None => resolve(resolver, &host, deadline).await,
        };
        resolved.push(Target {
            raw,
            host,
            port,
            addresses,
        });
    }
    let ctx = ProbeContext::new(deadline).with_loaded(loaded);
    let report = prober.run(&ctx, &query, &resolved).await?;
    Ok(Outcome::Report {
        success: report.success,
        registry: report.registry,
        log: ctx.log_lines(),
    })
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        net::{IpAddr, UdpSocket},
        sync::{
            Arc, Mutex,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use super::*;
    use crate::probe::{BoxFuture, allowlist::parse_entry, ping, tftp};

    /// A resolver answering each lookup with the next of its answers, counting lookups.
    #[derive(Debug)]
    struct Changing {
        answers: Mutex<Vec<IpAddr>>,
        lookups: AtomicUsize,
    }

    impl Changing {
        fn new(answers: &[&str]) -> Changing {
            Changing {
                answers: Mutex::new(answers.iter().rev().map(|a| a.parse().unwrap()).collect()),
                lookups: AtomicUsize::new(0),
            }
        }
    }

    impl Resolver for Changing {
        fn lookup<'a>(&'a self, _host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            let next = self.answers.lock().unwrap().pop();
            Box::pin(async move { Ok(next.into_iter().collect()) })
        }
    }

    /// The probers with the default ping flags.
    fn probers() -> Probers {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            ping: ping::Flags,
        }
        Probers::new(&<Flags as clap::Parser>::parse_from(["x"]).ping)
    }

    fn allow(values: &[&str]) -> Allowlist {
        let entries: Vec<_> = values.iter().map(|v| parse_entry(v).unwrap()).collect();
        Allowlist::new(&entries)
    }

    /// A one-block TFTP server on `address`: answers the first read request with 3 bytes and
    /// records the address it was asked on.
    fn tftp_server(address: &str) -> (u16, Arc<Mutex<Vec<IpAddr>>>) {
        let socket = UdpSocket::bind((address, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 600];
            let Ok((_, from)) = socket.recv_from(&mut buffer) else {
                return;
            };
            record
                .lock()
                .unwrap()
                .push(socket.local_addr().unwrap().ip());
            let _ = socket.send_to(&[0, 3, 0, 1, b'a', b'b', b'c'], from);
            let _ = socket.recv_from(&mut buffer);
        });
        (port, seen)
    }

    fn module(prober: &str) -> Module<'_> {
        Module::builtin(prober)
    }

    /// The name's first answer is allowed and its second is not: the allowlist judges the
    /// first and the probe goes to the first, after one lookup (with a second lookup, the
    /// probe would have gone to 127.0.0.2).
    #[tokio::test]
    async fn the_probe_goes_to_the_address_the_allowlist_judged() {
        let (port, seen) = tftp_server("127.0.0.1");
        let resolver = Changing::new(&["127.0.0.1", "127.0.0.2"]);
        let query = Query::from_pairs([("target", format!("flaky.test:{port}"))]);
        let outcome = handle(
            &probers(),
            module(tftp::MODULE),
            &query,
            Budget::Limit(Duration::from_secs(5)),
            &allow(&["127.0.0.1/32"]),
            &resolver,
        )
        .await;
        let Outcome::Report { success, log, .. } = outcome else {
            panic!("expected a report, got {outcome:?}");
        };
        assert!(success, "{log:?}");
        assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1);
        assert_eq!(
            *seen.lock().unwrap(),
            ["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert!(
            log.iter()
                .any(|line| line.contains(&format!("server 127.0.0.1:{port}"))),
            "{log:?}"
        );
    }

    /// The other way round: the first answer is refused, so the request is, although the
    /// name's next answer would be allowed; nothing is sent.
    #[tokio::test]
    async fn a_refused_first_answer_refuses_the_request() {
        let (port, seen) = tftp_server("127.0.0.1");
        let resolver = Changing::new(&["127.0.0.2", "127.0.0.1"]);
        let query = Query::from_pairs([("target", format!("flaky.test:{port}"))]);
        let outcome = handle(
            &probers(),
            module(tftp::MODULE),
            &query,
            Budget::Limit(Duration::from_secs(5)),
            &allow(&["127.0.0.1/32"]),
            &resolver,
        )
        .await;
        let Outcome::Refused(refusal) = outcome else {
            panic!("expected a refusal, got {outcome:?}");
        };
        assert!(
            refusal.0.contains("\"flaky.test:") && refusal.0.contains("resolves to 127.0.0.2"),
            "{refusal}"
        );
        assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1);
        std::thread::sleep(Duration::from_millis(100));
        assert!(seen.lock().unwrap().is_empty());
    }

    /// Names allowed by a pattern (and every name without an allowlist) are resolved once too,
    /// and a failed resolution is the prober's `resolve_failed`.
    #[tokio::test]
    async fn every_target_is_resolved_once_and_failures_share_a_label() {
        let resolver = Changing::new(&[]);
        let query = Query::from_pairs([("target", "gone.example.com:6969")]);
        let outcome = handle(
            &probers(),
            module(tftp::MODULE),
            &query,
            Budget::Limit(Duration::from_secs(2)),
            &allow(&["*.example.com"]),
            &resolver,
        )
        .await;
        let Outcome::Report {
            success, registry, ..
        } = outcome
        else {
            panic!("expected a report, got {outcome:?}");
        };
        assert!(!success);
        assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1);
        let text = crate::metrics::render(&registry).unwrap();
        assert!(
            text.contains("tftp_probe_failure{reason=\"resolve_failed\"} 1"),
            "{text}"
        );
        // The same for iperf3 (it used to call a resolver timeout "timeout").
        let resolver = Changing::new(&[]);
        let query = Query::from_pairs([("target", "gone.example.com")]);
        let outcome = handle(
            &probers(),
            module(crate::probe::iperf3::MODULE),
            &query,
            Budget::Limit(Duration::from_secs(2)),
            &Allowlist::default(),
            &resolver,
        )
        .await;
        let Outcome::Report { registry, .. } = outcome else {
            panic!("expected a report, got {outcome:?}");
        };
        assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1);
        let text = crate::metrics::render(&registry).unwrap();
        assert!(
            text.contains("iperf3_failure{reason=\"resolve_failed\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn order_of_answers() {
        let resolver = Changing::new(&[]);
        let probers = probers();
        let run = |query: Query, allowlist: Allowlist, prober: &'static str| {
            let probers = &probers;
            let resolver = &resolver;
            async move {
                handle(
                    probers,
                    module(prober),
                    &query,
                    Budget::ScrapeTimeout(Some("5")),
                    &allowlist,
                    resolver,
                )
                .await
            }
        };
        // A refused target wins over the prober's parameter checks.
        let outcome = run(
            Query::from_pairs([("target", "10.0.0.1"), ("blksize", "1")]),
            allow(&["192.0.2.0/24"]),
            tftp::MODULE,
        )
        .await;
        assert!(matches!(outcome, Outcome::Refused(_)), "{outcome:?}");
        // A malformed target is a 400, port 0 included, for every prober.
        for prober in [tftp::MODULE, crate::probe::iperf3::MODULE, ping::MODULE] {
            let outcome = run(
                Query::from_pairs([("target", "h:0")]),
                Allowlist::default(),
                prober,
            )
            .await;
            let Outcome::BadRequest(err) = outcome else {
                panic!("{prober}: {outcome:?}");
            };
            assert!(err.0.contains("port \"0\""), "{prober}: {err}");
        }
        // No target: the prober's own 400.
        let outcome = run(Query::default(), allow(&["10.0.0.0/8"]), ping::MODULE).await;
        assert!(
            matches!(&outcome, Outcome::BadRequest(err) if err.0.contains("missing parameter \"target\"")),
            "{outcome:?}"
        );
        assert_eq!(resolver.lookups.load(Ordering::SeqCst), 0);
        // An unknown prober.
        let outcome = run(Query::default(), Allowlist::default(), "nope").await;
        assert!(
            matches!(&outcome, Outcome::BadRequest(err) if err.0.contains("unknown module \"nope\"")),
            "{outcome:?}"
        );
    }

    #[test]
    fn common_parameters_are_read_once() {
        let request = parse("target=x&debug=true", Some("ping")).unwrap();
        assert_eq!((request.module.as_str(), request.debug), ("ping", true));
        let request = parse("module=tftp&target=x", Some("ping")).unwrap();
        assert_eq!(request.module, "tftp");
        assert_eq!(
            parse("target=x", None).unwrap_err().0,
            "missing parameter \"module\""
        );
        assert!(parse("module=a&module=b", None).is_err());
        assert!(parse("module=a&debug=maybe", None).is_err());
    }
}
