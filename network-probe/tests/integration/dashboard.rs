//! The Grafana dashboard (deploy/grafana/network-probe.json) proven against data: a Prometheus
//! server (Debian's package, as in [`crate::prometheus`]) scrapes a daemon carrying real
//! traffic (TCP transfers through a lossy receiver, refused connections, a receiver that stops
//! reading, ping, TFTP and iperf3 probes of real peers), then every panel query of the
//! dashboard, with its variables substituted as Grafana would (`$instance` = all,
//! `$__rate_interval` = 15 s, four scrape intervals; `$__range` = 2 m), runs through
//! Prometheus' HTTP API and must return at least one series.
//!
//! Grafana itself is not in the package registries this project installs from (Debian 12 has
//! no grafana package), so each panel's result over the last minute is drawn here as an SVG
//! plot (`target/test-artefacts/dashboard/NN.svg`), gathered in `index.html` and screenshot by
//! headless chromium as `dashboard.png`, for a person to look at.
//!
//! The Jool panels need the Jool kernel module, which only the qemu guest of
//! `network_probe_testkit::jool_vm` has: on this host their counter queries must return no
//! series (the daemon finds no Jool instance), and `jool_up` says so with 0.

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use network_probe_testkit::{
    VethPair,
    browser::{Chromium, artefacts},
    dotted, in_netns,
};
use serde_json::Value;

use crate::prometheus::{
    IPERF3_LISTEN, Prometheus, TFTP_PORT, TempDir, iperf3_server, percent_encode,
    prometheus_config, start_daemon, tftpd_hpa,
};

/// One query's range result: the query and, per series, its labels and (time, value) points.
type QueryResult = (String, Vec<(Value, Vec<(f64, f64)>)>);

/// A panel: its title and its queries.
struct Panel {
    title: String,
    exprs: Vec<String>,
}

fn panels(dashboard: &Value) -> Vec<Panel> {
    let mut found = Vec::new();
    fn walk(panels: &Value, found: &mut Vec<Panel>) {
        for panel in panels.as_array().into_iter().flatten() {
            walk(&panel["panels"], found);
            let exprs: Vec<String> = panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|target| target["expr"].as_str().map(str::to_string))
                .collect();
            if !exprs.is_empty() {
                found.push(Panel {
                    title: panel["title"].as_str().unwrap_or_default().to_string(),
                    exprs,
                });
            }
        }
    }
    walk(&dashboard["panels"], &mut found);
    found
}

/// The query as Grafana sends it with the dashboard's variables set.
fn substitute(expr: &str) -> String {
    let query = expr
        .replace("$__rate_interval", "15s")
        .replace("$__range", "2m")
        .replace("$instance", ".*");
    assert!(!query.contains('$'), "a variable left in {query}");
    query
}

/// Ports of b's listeners: the lossy bulk receiver, a closed port, the stalled receiver.
const BULK_PORT: u16 = 4000;
const CLOSED_PORT: u16 = 4001;
const STALL_PORT: u16 = 4002;

/// Drops one in 25 data segments to BULK_PORT in b, so a retransmits.
fn lossy_receiver(pair: &VethPair) {
    let rule = format!(
        "add rule inet np in tcp dport {BULK_PORT} meta length > 200 numgen random mod 25 == 0 \
         drop"
    );
    for args in [
        "add table inet np",
        "add chain inet np in { type filter hook input priority 0 ; }",
        rule.as_str(),
    ] {
        let args: Vec<&str> = args.split(' ').collect();
        pair.exec(&pair.b, "nft", &args);
    }
}

/// Until `stop`: each round a 300 kB transfer through the lossy receiver, a connection refused
/// (RST), and 2 MB to a receiver that reads only after a second (zero windows).
fn traffic(pair: &VethPair, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let b = pair.b_addr;
    let bulk: SocketAddr = (b, BULK_PORT).into();
    let stall: SocketAddr = (b, STALL_PORT).into();
    let closed: SocketAddr = (b, CLOSED_PORT).into();
    let bulk_listener = in_netns(&pair.b, move || TcpListener::bind(bulk).unwrap());
    let stall_listener = in_netns(&pair.b, move || TcpListener::bind(stall).unwrap());
    let (a_ns, stop_servers) = (pair.a.clone(), stop.clone());
    thread::spawn(move || {
        while let Ok((mut stream, _)) = bulk_listener.accept() {
            let _ = stream.read_to_end(&mut Vec::new());
        }
    });
    thread::spawn(move || {
        while let Ok((mut stream, _)) = stall_listener.accept() {
            thread::sleep(Duration::from_secs(1));
            let _ = stream.read_to_end(&mut Vec::new());
        }
    });
    thread::spawn(move || {
        while !stop_servers.load(Ordering::Relaxed) {
            in_netns(&a_ns, move || {
                if let Ok(mut stream) = TcpStream::connect_timeout(&bulk, Duration::from_secs(2)) {
                    let _ = stream.write_all(&vec![0x42; 300_000]);
                }
                assert!(TcpStream::connect_timeout(&closed, Duration::from_secs(2)).is_err());
                if let Ok(mut stream) = TcpStream::connect_timeout(&stall, Duration::from_secs(2)) {
                    let _ = stream.write_all(&vec![0x17; 2_000_000]);
                }
            });
            thread::sleep(Duration::from_millis(200));
        }
    })
}

/// Colours of the series in a plot.
const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One panel's range results drawn as lines: x the time, y the value (own scale per panel).
fn svg(panel: &Panel, results: &[QueryResult]) -> String {
    let (width, height, left, top, bottom) = (720.0, 260.0, 70.0, 40.0, 70.0);
    let points: Vec<(f64, f64)> = results
        .iter()
        .flat_map(|(_, series)| series.iter().flat_map(|(_, values)| values.iter().copied()))
        .filter(|(_, value)| value.is_finite())
        .collect();
    let bound = |pick: fn(&(f64, f64)) -> f64, max: bool| {
        points.iter().map(pick).fold(
            if max {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            },
            if max { f64::max } else { f64::min },
        )
    };
    let (t0, t1) = (bound(|p| p.0, false), bound(|p| p.0, true));
    let (mut v0, mut v1) = (bound(|p| p.1, false).min(0.0), bound(|p| p.1, true));
    if v1 <= v0 {
        v1 = v0 + 1.0;
        v0 -= 0.0;
    }
    let plot_w = width - left - 10.0;
    let plot_h = height - top - bottom;
    let x = |t: f64| {
        left + if t1 > t0 {
            (t - t0) / (t1 - t0) * plot_w
        } else {
            0.0
        }
    };
    let y = |v: f64| top + plot_h - (v - v0) / (v1 - v0) * plot_h;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"{left}\" y=\"16\" font-size=\"14\" font-weight=\"bold\">{}\
         </text>\n<rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" \
         fill=\"none\" stroke=\"#999\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n\
         <text x=\"{left}\" y=\"{}\">{:.0} s</text>\n",
        escape(&panel.title),
        left - 4.0,
        top + 10.0,
        format_value(v1),
        left - 4.0,
        top + plot_h,
        format_value(v0),
        top + plot_h + 14.0,
        (t1 - t0).max(0.0),
    );
    if points.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\">no series</text>",
            left + 10.0,
            top + 20.0
        );
    }
    let mut colour = 0;
    let mut legend_y = top + plot_h + 28.0;
    for (query, series) in results {
        for (labels, values) in series {
            let stroke = PALETTE[colour % PALETTE.len()];
            colour += 1;
            let path: Vec<String> = values
                .iter()
                .filter(|(_, value)| value.is_finite())
                .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
                .collect();
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{stroke}\" stroke-width=\"1.5\" points=\"{}\"/>",
                path.join(" ")
            );
            if legend_y < height - 4.0 {
                let _ = writeln!(
                    svg,
                    "<text x=\"{left}\" y=\"{legend_y}\" fill=\"{stroke}\">{}</text>",
                    escape(&format!("{} {}", labels_text(labels), short(query)))
                );
                legend_y += 13.0;
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn format_value(value: f64) -> String {
    if value.abs() >= 1e4 || (value != 0.0 && value.abs() < 1e-2) {
        format!("{value:.2e}")
    } else {
        format!("{value:.3}")
    }
}

fn labels_text(labels: &Value) -> String {
    let fields: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| *name != "instance" && *name != "job")
        .map(|(name, value)| format!("{name}={}", value.as_str().unwrap_or_default()))
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn short(query: &str) -> String {
    let mut short: String = query.chars().take(60).collect();
    if short.len() < query.len() {
        short.push('…');
    }
    short
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn every_dashboard_panel_has_series_in_prometheus() {
    let dashboard_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/network-probe.json");
    let dashboard: Value =
        serde_json::from_str(&fs::read_to_string(&dashboard_path).unwrap()).unwrap();
    let panels = panels(&dashboard);
    assert!(panels.len() >= 20, "{} panels", panels.len());
    let chromium = Chromium::new();

    let pair = VethPair::new();
    let daemon = start_daemon(
        &pair,
        &[
            "--web.probe-listen",
            &format!("iperf3={IPERF3_LISTEN}"),
            // The default families, the connection outcomes of the per-destination panels and
            // the per-flow RTT of the passive RTT panel.
            "--flows.families",
            "packets,bytes,retransmits,connection_attempts,rtt_min_seconds,rtt_seconds",
        ],
    );
    lossy_receiver(&pair);
    let dir = TempDir::new("dashboard");
    fs::write(dir.path("boot.bin"), vec![9u8; 123_456]).unwrap();
    fs::set_permissions(dir.path("boot.bin"), fs::Permissions::from_mode(0o644)).unwrap();
    let _tftpd = tftpd_hpa(&pair.a, &dir);
    let _iperf3 = iperf3_server(&pair.b, None);
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(&pair, stop.clone());

    let b4 = dotted(pair.b_addr);
    let tftp_target = format!("127.0.0.1:{TFTP_PORT}");
    let prometheus = Prometheus::start(
        &pair.a,
        &prometheus_config(daemon.listen, &b4, &tftp_target),
    );

    // Every panel query (but Jool's counters) returns a series once Prometheus has a few
    // scrapes of the traffic.
    let is_jool_counter = |query: &str| query.contains("jool_") && !query.contains("jool_up");
    let deadline = Instant::now() + Duration::from_secs(90);
    let empty = loop {
        let empty: Vec<String> = panels
            .iter()
            .flat_map(|panel| panel.exprs.iter())
            .map(|expr| substitute(expr))
            .filter(|query| !is_jool_counter(query))
            .filter(|query| {
                let data =
                    prometheus.api(&format!("/api/v1/query?query={}", percent_encode(query)));
                data["result"].as_array().is_none_or(Vec::is_empty)
            })
            .collect();
        if empty.is_empty() || Instant::now() > deadline {
            break empty;
        }
        thread::sleep(Duration::from_secs(1));
    };
    // A minute of data for the plots.
    thread::sleep(Duration::from_secs(20));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(
        empty.is_empty(),
        "panel queries without a series after 90 s: {empty:#?}\ntargets: {:#}",
        prometheus.api("/api/v1/targets")
    );

    // Jool: no instance on this host, said by jool_up 0; its counters have no series.
    for panel in &panels {
        for expr in &panel.exprs {
            let query = substitute(expr);
            let data = prometheus.api(&format!("/api/v1/query?query={}", percent_encode(&query)));
            let result = data["result"].as_array().unwrap();
            if query.contains("jool_up") {
                assert!(
                    result.iter().all(|series| series["value"][1] == "0"),
                    "{query}: {data}"
                );
            } else if is_jool_counter(&query) {
                assert!(result.is_empty(), "{query}: {data}");
            }
        }
    }

    // The plots: every panel's queries over the last 80 s, one SVG each, and a page of them.
    let out = artefacts("dashboard");
    let end = unix_now();
    let start = end - 80.0;
    let mut page = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>network-probe dashboard \
         panels</title></head><body style=\"font-family:sans-serif\">\n<h1>deploy/grafana/\
         network-probe.json through Prometheus</h1>\n",
    );
    for (number, panel) in panels.iter().enumerate() {
        let results: Vec<QueryResult> = panel
            .exprs
            .iter()
            .map(|expr| {
                let query = substitute(expr);
                let data = prometheus.api(&format!(
                    "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step=1",
                    percent_encode(&query)
                ));
                let series = data["result"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|series| {
                        let values = series["values"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|point| {
                                (
                                    point[0].as_f64().unwrap(),
                                    point[1].as_str().unwrap().parse().unwrap_or(f64::NAN),
                                )
                            })
                            .collect();
                        (series["metric"].clone(), values)
                    })
                    .collect();
                (query, series)
            })
            .collect();
        let name = format!("{number:02}.svg");
        fs::write(out.join(&name), svg(panel, &results)).unwrap();
        let _ = writeln!(
            page,
            "<img src=\"{name}\" alt=\"{}\">",
            escape(&panel.title)
        );
    }
    page.push_str("</body></html>\n");
    let index = out.join("index.html");
    fs::write(&index, page).unwrap();
    let png = out.join("dashboard.png");
    chromium.screenshot(
        &pair.a,
        &format!("file://{}", index.display()),
        &png,
        (1500, 260 * panels.len().div_ceil(2) as u32 + 100),
    );
    eprintln!("dashboard plots: {} and {}", index.display(), png.display());
}
