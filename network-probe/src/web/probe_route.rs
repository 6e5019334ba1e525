//! `/probe`: the module and target of the query, the `--probe.allow` screening of every target
//! (resolving names that match no host pattern, before the probe's deadline), the
//! `--web.max-concurrent-probes` limit, one probe run, and its metrics or debug output.

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{HeaderValue, RETRY_AFTER},
};
use log::debug;

use super::{
    AppState,
    routes::{exposition, text, with_type},
};
use crate::{
    metrics,
    probe::{
        self, ProbeContext, Query,
        allowlist::{Allowlist, Refusal, Screening},
    },
};

/// `/probe?module=NAME&target=...`: runs one probe and answers with its metrics, or with the
/// probe log, the metrics and the module when `debug=true`. `NAME` is a module of the
/// configuration (the built-in ones are named after their prober); its options are the
/// defaults of the query's parameters. Bad parameters and unknown modules get a 400 naming them, a target
/// outside `--probe.allow` a 403 naming it. `module=` may be left out on a listener with a
/// `default_module`.
pub(super) async fn handle_probe(
    state: &AppState,
    default_module: Option<&'static str>,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Ok(_slot) = state.web.probe_slots.try_acquire() else {
        let mut response = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many probes running (--web.max-concurrent-probes); retry shortly\n",
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let bad = |err: probe::BadRequest| {
        with_type(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            format!("{err}\n"),
        )
    };
    let query = match Query::parse(request.uri().query().unwrap_or("")) {
        Ok(query) => query,
        Err(err) => return bad(err),
    };
    let module = match (query.get("module"), default_module) {
        (Ok(Some(module)), _) if !module.is_empty() => Ok(module),
        (Ok(_), Some(default)) => Ok(default),
        (Ok(_), None) => query.required("module"),
        (Err(err), _) => Err(err),
    };
    let (module_name, debug) = match (module, query.flag("debug", false)) {
        (Ok(module), Ok(debug)) => (module.to_string(), debug),
        (Err(err), _) | (_, Err(err)) => return bad(err),
    };
    let live = state.config.current();
    let module = match live.config.module(&module_name) {
        Ok(module) => module,
        Err(err) => return bad(err),
    };
    let query = query.with_defaults(&module.options);
    let module_timeout = module
        .timeout
        .map_or(state.probers.timeout(module.prober), |timeout| {
            timeout.min(state.probers.timeout(module.prober))
        });
    let header = request
        .headers()
        .get(probe::SCRAPE_TIMEOUT_HEADER)
        .map(|value| value.to_str().unwrap_or("<not text>"));
    let deadline = match probe::deadline(std::time::Instant::now(), header, module_timeout) {
        Ok(deadline) => deadline,
        Err(err) => return bad(err),
    };
    if let Err(refusal) = check_targets(&live.allowlist, &query, deadline).await {
        debug!("/probe refused: {refusal}");
        return with_type(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            format!("{refusal}\n"),
        );
    }
    let ctx = ProbeContext::new(deadline);
    let report = match state.probers.run(module.prober, &ctx, &query).await {
        Ok(report) => report,
        Err(err) => return bad(err),
    };
    let body = match metrics::render(&report.registry) {
        Ok(body) => body,
        Err(_) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            );
        }
    };
    if debug {
        let mut text = String::from("Logs for the probe:\n");
        for line in ctx.log_lines() {
            text.push_str(&line);
            text.push('\n');
        }
        text.push_str(&format!(
            "\nProbe succeeded: {}\n\nMetrics that would have been returned:\n{body}\n\
             Module configuration ({module_name}):\n{}",
            report.success,
            module.to_yaml()
        ));
        return with_type(StatusCode::OK, "text/plain; charset=utf-8", text);
    }
    exposition(request, &body)
}

/// Checks every `target=` of `query` against `allowlist`, resolving (before `deadline`) the
/// names that matched no host pattern. Missing targets pass: the prober answers 400 for them.
async fn check_targets(
    allowlist: &Allowlist,
    query: &Query,
    deadline: std::time::Instant,
) -> Result<(), Refusal> {
    for target in query.all("target") {
        let host = match allowlist.screen(target) {
            Screening::Allowed => continue,
            Screening::Refused(refusal) => return Err(refusal),
            Screening::Resolve { host } => host,
        };
        let lookup = tokio::net::lookup_host((host.as_str(), 0));
        let addresses: Vec<std::net::IpAddr> =
            match tokio::time::timeout_at(deadline.into(), lookup).await {
                Ok(Ok(found)) => found.map(|address| address.ip()).collect(),
                Ok(Err(err)) => {
                    return Err(Refusal(format!(
                        "target {target:?} matches no --probe.allow host pattern and resolving \
                         it to check its addresses failed: {err}"
                    )));
                }
                Err(_) => {
                    return Err(Refusal(format!(
                        "target {target:?} matches no --probe.allow host pattern and resolving \
                         it to check its addresses did not finish before the deadline"
                    )));
                }
            };
        allowlist.check_addresses(target, &addresses)?;
    }
    Ok(())
}
