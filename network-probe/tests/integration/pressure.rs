//! Flow-map pressure: the daemon runs with a 256-entry flow map (and 16 flow slots) while the
//! peer namespace opens far more TCP flows than that (connection attempts to a closed port, each a SYN in and a RST
//! out, from a new source port every time). The map must never report more entries than its
//! capacity, evictions must be counted, every packet must still be counted per interface
//! (exactly the kernel's own interface statistics) and the daemon's memory must stay bounded.
//!
//! Everything happens in namespaces the test creates (see `network_probe_testkit::VethPair`).

use std::{io::ErrorKind, net::SocketAddr, net::TcpStream, thread, time::Duration};

use network_probe_testkit::{Daemon, VethPair, dotted, in_netns, sample};

const MAP_ENTRIES: u32 = 256;
/// Connection attempts in all; each makes two flow entries (one per direction).
const ATTEMPTS: usize = 3000;
/// Attempts between two scrapes.
const BATCH: usize = 250;
/// Port nothing listens on in namespace `a`.
const CLOSED_PORT: u16 = 7;
/// Generous bound on the daemon's resident memory.
const RSS_LIMIT_KIB: u64 = 200 * 1024;

/// `count` TCP connection attempts from namespace `ns` to `to`; each must be refused.
fn refused_connects(ns: &str, to: SocketAddr, count: usize) {
    in_netns(ns, move || {
        for attempt in 0..count {
            match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                Err(err) if err.kind() == ErrorKind::ConnectionRefused => {}
                other => panic!("attempt {attempt} to {to}: expected a refusal, got {other:?}"),
            }
        }
    });
}

/// VmRSS of process `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

fn value(scrape: &str, name: &str, labels: &str) -> u64 {
    sample(scrape, name, labels).unwrap_or(0.0) as u64
}

#[test]
fn a_full_flow_map_evicts_flows_but_loses_no_interface_count() {
    let pair = VethPair::new();
    let entries = MAP_ENTRIES.to_string();
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--flows.max-entries",
            &entries,
            // A slot table far smaller than the flows, so the LRU map fills and evicts while
            // slots are taken, retired and taken again.
            "--flows.slots",
            "16",
            // Sweeps every 250 ms: evictions are noticed between scrapes too.
            "--flows.idle-timeout",
            "1s",
        ],
    );
    let pid = daemon.child.id();
    let rss_at_start = rss_kib(pid);
    let ingress = format!("interface=\"{}\",direction=\"ingress\"", pair.a_if);
    let egress = format!("interface=\"{}\",direction=\"egress\"", pair.a_if);
    let packets = |scrape: &str| {
        [
            value(scrape, "network_probe_interface_packets_total", &ingress),
            value(scrape, "network_probe_interface_packets_total", &egress),
        ]
    };
    let kernel = || {
        [
            pair.stat(&pair.a, &pair.a_if, "rx_packets"),
            pair.stat(&pair.a, &pair.a_if, "tx_packets"),
        ]
    };

    let before = daemon.scrape();
    assert_eq!(
        sample(
            &before,
            "network_probe_datapath_map_capacity",
            "map=\"FLOWS4\""
        ),
        Some(f64::from(MAP_ENTRIES))
    );
    assert_eq!(
        sample(
            &before,
            "network_probe_datapath_map_capacity",
            "map=\"FLOW_SLOTS\""
        ),
        Some(16.0)
    );
    let ours_before = packets(&before);
    let kernel_before = kernel();

    let to: SocketAddr = format!("{}:{CLOSED_PORT}", dotted(pair.a_addr))
        .parse()
        .unwrap();
    let mut most_entries = 0;
    let mut most_rss = rss_at_start;
    for _ in 0..ATTEMPTS / BATCH {
        refused_connects(&pair.b, to, BATCH);
        let scrape = daemon.scrape();
        let entries = value(
            &scrape,
            "network_probe_datapath_map_entries",
            "map=\"FLOWS4\"",
        );
        assert!(
            entries <= u64::from(MAP_ENTRIES),
            "{entries} flow entries in a map of {MAP_ENTRIES}"
        );
        most_entries = most_entries.max(entries);
        most_rss = most_rss.max(rss_kib(pid));
    }
    // Let a sweep run on its own, then read everything once more.
    thread::sleep(Duration::from_millis(600));
    let after = daemon.scrape();
    most_rss = most_rss.max(rss_kib(pid));

    let created = value(
        &after,
        "network_probe_interface_flows_created_total",
        &ingress,
    ) + value(
        &after,
        "network_probe_interface_flows_created_total",
        &egress,
    );
    let evicted = value(&after, "network_probe_flows_evicted_total", "");
    let idle_removed = value(&after, "network_probe_flows_idle_removed_total", "");
    let ours = packets(&after);
    let kernel_after = kernel();
    let ours_delta = [ours[0] - ours_before[0], ours[1] - ours_before[1]];
    let kernel_delta = [
        kernel_after[0] - kernel_before[0],
        kernel_after[1] - kernel_before[1],
    ];
    eprintln!(
        "{ATTEMPTS} attempts: {created} flow entries created, at most {most_entries} in the \
         map, {evicted} evictions seen, {idle_removed} idle flows removed; packets \
         (ingress, egress) ours {ours_delta:?}, kernel {kernel_delta:?}; VmRSS {rss_at_start} \
         KiB at start, at most {most_rss} KiB"
    );

    assert!(
        created > 10 * u64::from(MAP_ENTRIES),
        "only {created} flow entries created: not enough pressure on the map"
    );
    assert!(evicted > 0, "no eviction counted\n{after}");
    assert_eq!(
        ours_delta, kernel_delta,
        "per-interface packets (ingress, egress) vs the kernel's interface statistics"
    );
    assert_eq!(
        kernel_delta, [ATTEMPTS as u64; 2],
        "one SYN in and one RST out per attempt"
    );
    assert!(
        most_rss < RSS_LIMIT_KIB,
        "VmRSS reached {most_rss} KiB (limit {RSS_LIMIT_KIB} KiB)"
    );
}

/// Thousands of flow series make a telemetry body of many chunks (it is written out as it is
/// sent): both formats arrive whole and valid, with one packets sample per series, and the flow
/// rows add up to the interface's TCP packets.
#[test]
fn a_scrape_of_thousands_of_series_arrives_whole_in_both_formats() {
    const CONNECTS: usize = 1500;
    let pair = VethPair::new();
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--flows.labels",
            "interface,direction,src,dst,src_port",
            "--flows.max-series",
            "5000",
            "--flows.families",
            "all",
            "--flows.idle-timeout",
            "10m",
        ],
    );
    let to: SocketAddr = format!("{}:{CLOSED_PORT}", dotted(pair.a_addr))
        .parse()
        .unwrap();
    // Each refused connection: a SYN in (its own source port: its own series) and a RST out.
    refused_connects(&pair.b, to, CONNECTS);

    let text = daemon.scrape();
    let rows = |body: &str| -> Vec<u64> {
        body.lines()
            .filter(|line| line.starts_with("network_probe_flow_packets_total{"))
            .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    let packets = rows(&text);
    let series = sample(&text, "network_probe_flow_series", "").expect("series count");
    assert_eq!(packets.len() as f64, series);
    assert!(packets.len() > CONNECTS, "{} series", packets.len());
    assert!(
        text.len() > 16 * 64 * 1024,
        "{} bytes: fewer chunks than the test wants",
        text.len()
    );
    let tcp: u64 = ["ingress", "egress"]
        .iter()
        .map(|direction| {
            let labels = format!("interface=\"{}\",direction=\"{direction}\"", pair.a_if);
            value(&text, "network_probe_interface_tcp_packets_total", &labels)
        })
        .sum();
    assert_eq!(tcp, 2 * CONNECTS as u64);
    assert_eq!(packets.iter().sum::<u64>(), tcp);
    let (clean, complaints) = network_probe_testkit::promtool_check_metrics(&text);
    assert!(clean, "{complaints}");

    // OpenMetrics, as Prometheus asks for it: the same samples, one # EOF, at the very end.
    let (status, content_type, openmetrics) = network_probe_testkit::get(
        &daemon.ns,
        daemon.listen,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0"),
    );
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"));
    assert!(openmetrics.ends_with("\n# EOF\n"));
    assert_eq!(openmetrics.matches("# EOF").count(), 1);
    assert!(openmetrics.contains("# TYPE network_probe_flow_packets counter\n"));
    assert_eq!(rows(&openmetrics), packets, "no packets in between");
}
