//! `/probe`: the HTTP face of [`crate::probe::handler`], which does the work (common
//! parameters, deadline, resolving each target once, the `--probe.allow` allowlist judged on
//! the addresses probed, the prober). This route adds what is HTTP's: the
//! `--web.max-concurrent-probes` limit (503), looking the module up in the configuration in
//! force, the status of each outcome (400, 403, 503, 200) and the body: the probe's metrics in the
//! negotiated format, or the debug output. Every request naming a module is recorded for the
//! landing page ([`super::history`]), with the text `?debug=true` shows.

use std::time::{Instant, SystemTime};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{HeaderValue, RETRY_AFTER},
};
use log::debug;

use super::{
    AppState,
    response::{exposition, text, with_type},
};
use crate::{
    metrics,
    probe::{
        self, SystemResolver,
        handler::{self, Budget, Outcome},
    },
};

/// `/probe?module=NAME&target=...`: runs one probe and answers with its metrics, or with the
/// probe log, the metrics and the module when `debug=true`. `NAME` is a module of the
/// configuration (the built-in ones are named after their prober); its options are the
/// defaults of the query's parameters. Bad parameters and unknown modules get a 400 naming
/// them, a target outside `--probe.allow` a 403 naming it, too many probes at once a 503, and
/// so is a prober at a capacity limit (`--ping.max-active-targets`), naming the limit.
/// `module=` may be left out on a listener with a `default_module`.
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
    let parsed = match handler::parse(request.uri().query().unwrap_or(""), default_module) {
        Ok(parsed) => parsed,
        Err(err) => return bad(err),
    };
    // Every request that names a module goes into the landing page's history, whatever
    // its outcome.
    let started = (SystemTime::now(), Instant::now());
    let targets: Vec<&str> = parsed.query.all("target").collect();
    let record = |result: &'static str, text: &str| {
        state.history.record(
            started.0,
            &parsed.module,
            &targets.join(", "),
            result,
            started.1.elapsed(),
            text,
        );
    };
    let live = state.config.current();
    let module = match live.config.module(&parsed.module) {
        Ok(module) => module,
        Err(err) => {
            record("bad request", &err.to_string());
            return bad(err);
        }
    };
    let header = request
        .headers()
        .get(probe::SCRAPE_TIMEOUT_HEADER)
        .map(|value| value.to_str().unwrap_or("<not text>"));
    let outcome = handler::handle(
        &state.probers,
        module.probe(),
        &parsed.query,
        Budget::ScrapeTimeout(header),
        &live.allowlist,
        &SystemResolver,
    )
    .await;
    let (success, registry, log) = match outcome {
        Outcome::Report {
            success,
            registry,
            log,
        } => (success, registry, log),
        Outcome::BadRequest(err) => {
            record("bad request", &err.to_string());
            return bad(err);
        }
        Outcome::Refused(refusal) => {
            debug!("/probe refused: {refusal}");
            record("refused", &refusal.to_string());
            return with_type(
                StatusCode::FORBIDDEN,
                "text/plain; charset=utf-8",
                format!("{refusal}\n"),
            );
        }
        Outcome::Overloaded(err) => {
            debug!("/probe overloaded: {err}");
            record("overloaded", &err.to_string());
            return with_type(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("{err}\n"),
            );
        }
    };
    let body = match metrics::render(&registry) {
        Ok(body) => body,
        Err(_) => {
            record("failure", "encoding metrics failed");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            );
        }
    };
    let mut debug_text = String::from("Logs for the probe:\n");
    for line in log {
        debug_text.push_str(&line);
        debug_text.push('\n');
    }
    debug_text.push_str(&format!(
        "\nProbe succeeded: {success}\n\nMetrics that would have been returned:\n{body}\n\
         Module configuration ({}):\n{}",
        parsed.module,
        module.to_yaml()
    ));
    record(if success { "success" } else { "failure" }, &debug_text);
    if parsed.debug {
        return with_type(StatusCode::OK, "text/plain; charset=utf-8", debug_text);
    }
    exposition(request, &body)
}
