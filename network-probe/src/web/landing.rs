//! The landing page (`/`) in the blackbox_exporter manner, and `/logs?id=N`: the recent
//! `/probe` requests ([`super::history`]: time, module, targets, result, duration, a link to
//! each one's log and metrics), the configured modules, the datapath's interfaces and how each
//! program is attached, and links to the telemetry path, `/config`, the health endpoints and the
//! documentation built into the binary (`/docs/`, see [`super::docs`]) besides the installed one.
//!
//! Plain HTML with no external resource (no script, style sheet, font or image) and everything
//! shown escaped ([`escape`]): targets and module names come from callers.

use std::{fmt::Write as _, time::SystemTime};

use super::{AppState, html::escape};

/// Where the Debian package installs the documentation.
const DOCS_DIR: &str = "/usr/share/doc/network-probe";

/// `time` as `YYYY-MM-DD hh:mm:ss UTC`.
fn utc(time: SystemTime) -> String {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian, eras of 400 years).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The landing page.
pub(super) fn page(state: &AppState) -> String {
    let telemetry = escape(&state.telemetry_path);
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>network-probe</title></head><body>\n\
         <h1>network-probe</h1>\n<p>eBPF network telemetry for Prometheus, version {}.</p>\n<ul>\n\
         <li><a href=\"{telemetry}\">Metrics</a></li>\n\
         <li><a href=\"/-/healthy\">Health</a></li>\n\
         <li><a href=\"/-/ready\">Readiness</a></li>\n\
         <li><a href=\"/config\">Configuration</a></li>\n\
         <li><a href=\"{docs}\">Documentation</a>, built into this binary; also in \
         <code>{DOCS_DIR}/</code> (README.md, docs/*.md) and <code>man network-probe</code> \
         where installed</li>\n\
         </ul>\n",
        env!("CARGO_PKG_VERSION"),
        docs = super::docs::DOCS_PATH
    );
    html.push_str("<h2>Recent probes</h2>\n");
    let recent = state.history.recent();
    if recent.is_empty() {
        html.push_str("<p>No <code>/probe</code> request yet.</p>\n");
    } else {
        let _ = writeln!(
            html,
            "<p>The last {} <code>/probe</code> requests, newest first.</p>\n<table border=\"1\">\n\
             <tr><th>Time</th><th>Module</th><th>Target</th><th>Result</th><th>Duration</th>\
             <th>Log</th></tr>",
            super::history::CAPACITY
        );
        for record in recent {
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3} s</td>\
                 <td><a href=\"/logs?id={}\">log and metrics</a></td></tr>",
                utc(record.time),
                escape(&record.module),
                escape(&record.target),
                escape(record.result),
                record.duration.as_secs_f64(),
                record.id
            );
        }
        html.push_str("</table>\n");
    }

    html.push_str(
        "<h2>Modules</h2>\n<table border=\"1\">\n<tr><th>Module</th><th>Prober</th>\
         <th>Status</th></tr>\n",
    );
    let live = state.config.current();
    for (name, module) in &live.config.modules {
        let status = match &module.policy.disabled {
            Some(why) => format!("disabled: {why}"),
            None => "enabled".to_string(),
        };
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(module.prober),
            escape(&status)
        );
    }
    html.push_str(
        "</table>\n<p>Each module's options: <a href=\"/config\">/config</a>.</p>\n\
         <h2>Datapath</h2>\n",
    );
    let datapath = state.flows.datapath();
    let attached = datapath.attached();
    if attached.is_empty() {
        html.push_str("<p>No program attached.</p>\n");
    } else {
        html.push_str(
            "<table border=\"1\">\n<tr><th>Interface</th><th>Program</th><th>Attach mode</th>\
             </tr>\n",
        );
        for (interface, hook) in attached {
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&interface),
                escape(hook.as_str()),
                escape(datapath.attach_mode(hook))
            );
        }
        html.push_str("</table>\n");
    }
    // Each document, so one click reaches it.
    html.push_str("<h2>Documentation</h2>\n<ul>\n");
    for (name, _) in super::docs::DOCUMENTS {
        let name = escape(name);
        let _ = writeln!(
            html,
            "<li><a href=\"{}{name}\">{name}</a></li>",
            super::docs::DOCS_PATH
        );
    }
    html.push_str("</ul>\n");
    html.push_str("</body></html>\n");
    html
}

/// `/logs?id=N`: the log and metrics of a recent probe, or why there are none.
pub(super) fn log(state: &AppState, query: &str) -> Result<String, String> {
    let id = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("id="))
        .and_then(|id| id.parse::<u64>().ok())
        .ok_or_else(|| "give the probe's number: /logs?id=N\n".to_string())?;
    let record = state.history.get(id).ok_or_else(|| {
        format!(
            "probe {id} is not among the last {} (see /)\n",
            super::history::CAPACITY
        )
    })?;
    Ok(format!(
        "Probe {id}: module {}, target {}, {} after {:.3} s, at {}\n\n{}",
        record.module,
        record.target,
        record.result,
        record.duration.as_secs_f64(),
        utc(record.time),
        record.text
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn utc_dates() {
        let at = |seconds| utc(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(1_796_650_245), "2026-12-07 13:30:45 UTC");
    }
}
