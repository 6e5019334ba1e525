//! The TC datapath on real traffic: a veth pair between two namespaces this test creates, the
//! daemon attached to one end, a known number of UDP datagrams each way. The exported counters
//! must equal both the arithmetic and the kernel's own interface statistics, and SIGTERM/SIGINT
//! must leave no program attached.

use std::net::SocketAddr;

use aya::programs::TcAttachType;
use network_probe_testkit::{Daemon, VethPair, attached_programs, dotted, sample, send_datagrams};

const INGRESS_DATAGRAMS: usize = 50;
const INGRESS_PAYLOAD: usize = 100;
const EGRESS_DATAGRAMS: usize = 30;
const EGRESS_PAYLOAD: usize = 200;
/// Ethernet + IPv4 + UDP headers around each payload.
const FRAME_OVERHEAD: usize = 14 + 20 + 8;

#[test]
fn counts_exact_packets_and_bytes_per_direction_and_detaches_on_sigterm() {
    let pair = VethPair::new();
    let mut daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if]);

    assert_eq!(
        attached_programs(&pair.a, &pair.a_if, TcAttachType::Ingress),
        ["tc_ingress"]
    );
    assert_eq!(
        attached_programs(&pair.a, &pair.a_if, TcAttachType::Egress),
        ["tc_egress"]
    );

    let ingress = format!("interface=\"{}\",direction=\"ingress\"", pair.a_if);
    let egress = format!("interface=\"{}\",direction=\"egress\"", pair.a_if);
    let before = daemon.scrape();
    let counter =
        |scrape: &str, name: &str, labels: &str| sample(scrape, name, labels).unwrap_or(0.0) as u64;
    let kernel_before = [
        pair.stat(&pair.a, &pair.a_if, "rx_packets"),
        pair.stat(&pair.a, &pair.a_if, "rx_bytes"),
        pair.stat(&pair.a, &pair.a_if, "tx_packets"),
        pair.stat(&pair.a, &pair.a_if, "tx_bytes"),
    ];

    let a: SocketAddr = format!("{}:5000", dotted(pair.a_addr)).parse().unwrap();
    let b: SocketAddr = format!("{}:5000", dotted(pair.b_addr)).parse().unwrap();
    send_datagrams(&pair.b, b, &pair.a, a, INGRESS_DATAGRAMS, INGRESS_PAYLOAD);
    send_datagrams(&pair.a, a, &pair.b, b, EGRESS_DATAGRAMS, EGRESS_PAYLOAD);

    let after = daemon.scrape();
    let kernel_after = [
        pair.stat(&pair.a, &pair.a_if, "rx_packets"),
        pair.stat(&pair.a, &pair.a_if, "rx_bytes"),
        pair.stat(&pair.a, &pair.a_if, "tx_packets"),
        pair.stat(&pair.a, &pair.a_if, "tx_bytes"),
    ];
    let kernel: Vec<u64> = kernel_after
        .iter()
        .zip(kernel_before)
        .map(|(a, b)| a - b)
        .collect();
    let ours = [
        counter(&after, "network_probe_interface_packets_total", &ingress)
            - counter(&before, "network_probe_interface_packets_total", &ingress),
        counter(&after, "network_probe_interface_bytes_total", &ingress)
            - counter(&before, "network_probe_interface_bytes_total", &ingress),
        counter(&after, "network_probe_interface_packets_total", &egress)
            - counter(&before, "network_probe_interface_packets_total", &egress),
        counter(&after, "network_probe_interface_bytes_total", &egress)
            - counter(&before, "network_probe_interface_bytes_total", &egress),
    ];
    let expected = [
        INGRESS_DATAGRAMS as u64,
        (INGRESS_DATAGRAMS * (INGRESS_PAYLOAD + FRAME_OVERHEAD)) as u64,
        EGRESS_DATAGRAMS as u64,
        (EGRESS_DATAGRAMS * (EGRESS_PAYLOAD + FRAME_OVERHEAD)) as u64,
    ];
    assert_eq!(
        ours, expected,
        "ours (rx pkts, rx bytes, tx pkts, tx bytes) vs arithmetic"
    );
    assert_eq!(
        ours.to_vec(),
        kernel,
        "ours vs the kernel's interface statistics"
    );

    let programs = |program: &str| {
        sample(
            &after,
            "network_probe_datapath_programs_attached",
            &format!("interface=\"{}\",program=\"{program}\"", pair.a_if),
        )
    };
    assert_eq!(programs("tc_ingress"), Some(1.0));
    assert_eq!(programs("tc_egress"), Some(1.0));
    // UDP only: no flow entries, every datagram classified as not TCP.
    assert_eq!(
        sample(
            &after,
            "network_probe_datapath_map_entries",
            "map=\"FLOWS4\""
        ),
        Some(0.0)
    );
    let not_tcp = |direction: &str| {
        sample(
            &after,
            "network_probe_interface_unclassified_packets_total",
            &format!(
                "interface=\"{}\",direction=\"{direction}\",reason=\"not_tcp\"",
                pair.a_if
            ),
        )
    };
    assert_eq!(not_tcp("ingress"), Some(INGRESS_DATAGRAMS as f64));
    assert_eq!(not_tcp("egress"), Some(EGRESS_DATAGRAMS as f64));
    assert!(after.contains("network_probe_build_info{version=\"0.1.0\",revision="));

    let status = daemon.stop(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(attached_programs(&pair.a, &pair.a_if, TcAttachType::Ingress).is_empty());
    assert!(attached_programs(&pair.a, &pair.a_if, TcAttachType::Egress).is_empty());
}

#[test]
fn serves_landing_health_and_readiness_pages() {
    let pair = VethPair::new();
    let mut daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if]);
    let (status, body) = daemon.get("/").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("href=\"/metrics\"") && body.contains("href=\"/-/healthy\""),
        "{body}"
    );
    assert_eq!(daemon.get("/-/healthy").unwrap(), (200, "Healthy\n".into()));
    assert_eq!(daemon.get("/-/ready").unwrap(), (200, "Ready\n".into()));
    assert_eq!(daemon.get("/nope").unwrap().0, 404);
    // /probe rejects bad requests with a 400 that names the problem.
    let (status, body) = daemon.get("/probe?target=x").unwrap();
    assert_eq!(
        (status, body.as_str()),
        (400, "missing parameter \"module\"\n")
    );
    let (status, body) = daemon.get("/probe?module=nope&target=x").unwrap();
    assert_eq!(status, 400);
    assert!(body.starts_with("unknown module \"nope\""), "{body}");
    let (status, body) = daemon.get("/probe?module=%zz").unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("bad percent escape"), "{body}");
    assert_eq!(
        network_probe_testkit::http(&daemon.ns, daemon.listen, "POST", "/metrics")
            .unwrap()
            .0,
        405
    );
    assert_eq!(daemon.stop(libc::SIGINT).code(), Some(0));
}

#[test]
fn custom_telemetry_path() {
    let pair = VethPair::new();
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--web.telemetry-path",
            "/probe-metrics",
        ],
    );
    let (status, body) = daemon.get("/probe-metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("network_probe_interface_packets"), "{body}");
    assert_eq!(daemon.get("/metrics").unwrap().0, 404);
}

#[test]
fn defaults_to_the_default_route_interface_and_detaches_on_sigint() {
    let pair = VethPair::new();
    // A default route inside namespace a, pointing at the peer in namespace b.
    pair.exec(
        &pair.a,
        "ip",
        &["route", "add", "default", "via", &dotted(pair.b_addr)],
    );
    let mut daemon = Daemon::start(&pair.a, &[]);
    let scrape = daemon.scrape();
    assert_eq!(
        sample(
            &scrape,
            "network_probe_datapath_programs_attached",
            &format!("interface=\"{}\",program=\"tc_ingress\"", pair.a_if)
        ),
        Some(1.0),
        "{scrape}"
    );
    // Only the default-route interface, not lo.
    assert!(!scrape.contains("interface=\"lo\""), "{scrape}");
    assert_eq!(
        attached_programs(&pair.a, &pair.a_if, TcAttachType::Egress),
        ["tc_egress"]
    );
    assert_eq!(daemon.stop(libc::SIGINT).code(), Some(0));
    assert!(attached_programs(&pair.a, &pair.a_if, TcAttachType::Ingress).is_empty());
    assert!(attached_programs(&pair.a, &pair.a_if, TcAttachType::Egress).is_empty());
}

#[test]
fn runs_as_an_unprivileged_user_with_only_cap_bpf_cap_perfmon_and_cap_net_admin() {
    let pair = VethPair::new();
    let mut daemon = Daemon::start_wrapped(
        &pair.a,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--bounding-set=-all,+bpf,+perfmon,+net_admin",
            "--inh-caps=-all,+bpf,+perfmon,+net_admin",
            "--ambient-caps=-all,+bpf,+perfmon,+net_admin",
        ],
        &["--interface", &pair.a_if],
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
    assert!(
        status.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    // Started with CAP_NET_ADMIN (12), CAP_PERFMON (38) and CAP_BPF (39), nothing else (the
    // bounding set setpriv left); after start-up only CAP_NET_ADMIN stays (privileges.rs).
    assert!(status.contains("CapBnd:\t000000c000001000"), "{status}");
    assert!(status.contains("CapEff:\t0000000000001000"), "{status}");
    let a: SocketAddr = format!("{}:5000", dotted(pair.a_addr)).parse().unwrap();
    let b: SocketAddr = format!("{}:5000", dotted(pair.b_addr)).parse().unwrap();
    let ingress = format!("interface=\"{}\",direction=\"ingress\"", pair.a_if);
    let before = sample(
        &daemon.scrape(),
        "network_probe_interface_packets_total",
        &ingress,
    );
    send_datagrams(&pair.b, b, &pair.a, a, 7, 10);
    let after = sample(
        &daemon.scrape(),
        "network_probe_interface_packets_total",
        &ingress,
    );
    assert_eq!(after.unwrap() - before.unwrap_or(0.0), 7.0);
    assert_eq!(daemon.stop(libc::SIGTERM).code(), Some(0));
    assert!(attached_programs(&pair.a, &pair.a_if, TcAttachType::Ingress).is_empty());
}

/// The `event` label values of `network_probe_datapath_kernel_events_total`.
const KERNEL_EVENTS: [&str; 7] = [
    "ifindex_beyond_slot_table",
    "interface_without_slot",
    "flow_insert_failed",
    "flow_slot_claim_lost",
    "pending_syn_untracked",
    "drops_map_full",
    "flow_signals_insert_failed",
];

/// Capacity of each pending-SYN map (`PENDING_SYNS_MAX_ENTRIES` in network-probe-common).
const PENDING_SYN_CAPACITY: u16 = 16_384;

/// Every kernel event's count in `scrape`, panicking on a missing row.
fn kernel_events(scrape: &str) -> Vec<(&'static str, u64)> {
    KERNEL_EVENTS
        .iter()
        .map(|event| {
            let labels = format!("event=\"{event}\"");
            let value = sample(
                scrape,
                "network_probe_datapath_kernel_events_total",
                &labels,
            )
            .unwrap_or_else(|| panic!("no kernel events row for {event}:\n{scrape}"));
            (*event, value as u64)
        })
        .collect()
}

/// A file for a daemon's standard error, removed on drop.
struct StderrFile(std::path::PathBuf);

impl StderrFile {
    fn new(name: &str) -> (StderrFile, std::fs::File) {
        let path =
            std::env::temp_dir().join(format!("network-probe-{name}-{}.log", std::process::id()));
        let file = std::fs::File::create(&path).expect("creating the daemon's stderr file");
        (StderrFile(path), file)
    }

    fn read(&self) -> String {
        std::fs::read_to_string(&self.0).expect("reading the daemon's stderr")
    }
}

impl Drop for StderrFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Ordinary traffic (TCP connections with data both ways, UDP both ways) takes no rare error
/// branch: every kernel event stays at 0 and the daemon logs no kernel event.
#[test]
fn ordinary_traffic_reports_no_kernel_event() {
    let pair = VethPair::new();
    let (log, stderr) = StderrFile::new("ordinary-kernel-events");
    let mut daemon = Daemon::start_with_stderr(&pair.a, &[], &["--interface", &pair.a_if], stderr);

    let server: SocketAddr = format!("{}:5100", dotted(pair.b_addr)).parse().unwrap();
    let listener = network_probe_testkit::in_netns(&pair.b, move || {
        std::net::TcpListener::bind(server).expect("listening in b")
    });
    const CONNECTIONS: usize = 20;
    let accepting = std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        for _ in 0..CONNECTIONS {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = [0u8; 1000];
            stream.read_exact(&mut request).expect("request");
            stream.write_all(&[7u8; 3000]).expect("reply");
        }
    });
    network_probe_testkit::in_netns(&pair.a, move || {
        use std::io::{Read as _, Write as _};
        for _ in 0..CONNECTIONS {
            let mut stream = std::net::TcpStream::connect(server).expect("connect from a");
            stream.write_all(&[1u8; 1000]).expect("request");
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).expect("reply");
            assert_eq!(reply.len(), 3000);
        }
    });
    accepting.join().unwrap();
    let a: SocketAddr = format!("{}:5000", dotted(pair.a_addr)).parse().unwrap();
    let b: SocketAddr = format!("{}:5000", dotted(pair.b_addr)).parse().unwrap();
    send_datagrams(&pair.b, b, &pair.a, a, INGRESS_DATAGRAMS, INGRESS_PAYLOAD);
    send_datagrams(&pair.a, a, &pair.b, b, EGRESS_DATAGRAMS, EGRESS_PAYLOAD);

    let scrape = daemon.scrape();
    let ingress = format!("interface=\"{}\",direction=\"ingress\"", pair.a_if);
    let segments = sample(
        &scrape,
        "network_probe_interface_tcp_packets_total",
        &ingress,
    );
    assert!(
        segments.unwrap_or(0.0) >= (CONNECTIONS * 4) as f64,
        "the TCP traffic was not seen: {segments:?}"
    );
    for (event, count) in kernel_events(&scrape) {
        assert_eq!(count, 0, "kernel event {event} after ordinary traffic");
    }
    let (clean, report) = network_probe_testkit::promtool_check_metrics(&scrape);
    assert!(clean, "promtool check metrics: {report}");
    daemon.stop(libc::SIGTERM);
    let stderr = log.read();
    assert!(
        !stderr.contains("kernel event"),
        "a kernel event was logged after ordinary traffic:\n{stderr}"
    );
}

/// A real rare event: more new connection attempts than the pending-SYN map holds (SYN frames
/// on distinct 4-tuples, which a's kernel drops for their bad checksum after the TC program
/// saw them, so none is answered or retired during the test). Every one past the capacity is
/// counted exactly once in `network_probe_datapath_kernel_events_total{event=
/// "pending_syn_untracked"}` (and in the interface's untracked attempts), no other event
/// rises, and the daemon's log shows the event at warn level, carried by aya-log.
#[test]
fn a_full_pending_syn_map_is_counted_exactly_and_logged() {
    const EXTRA: u16 = 100;
    let pair = VethPair::new();
    let (log, stderr) = StderrFile::new("pending-syn-kernel-events");
    let mut daemon = Daemon::start_with_stderr(
        &pair.a,
        &[],
        &[
            "--interface",
            &pair.a_if,
            // Nothing is retired as a timeout while the test runs.
            "--flows.connect-timeout",
            "600s",
        ],
        stderr,
    );
    let before = kernel_events(&daemon.scrape());
    assert!(
        before.iter().all(|(_, count)| *count == 0),
        "kernel events before any traffic: {before:?}"
    );

    let injector = network_probe_testkit::injector::FlowInjector::new(&pair);
    let attempts = u32::from(PENDING_SYN_CAPACITY) + u32::from(EXTRA);
    for attempt in 0..attempts {
        let src_port = 1024 + (attempt % 60_000) as u16;
        let dst_port = 7000 + (attempt / 60_000) as u16;
        injector
            .syn(injector.b_addr, src_port, dst_port)
            .expect("sending a SYN");
    }

    let ingress = format!("interface=\"{}\",direction=\"ingress\"", pair.a_if);
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_secs(10) * network_probe_testkit::daemon::slowdown();
    let scrape = loop {
        let scrape = daemon.scrape();
        let seen = sample(&scrape, "network_probe_interface_tcp_syn_total", &ingress);
        if seen.unwrap_or(0.0) as u32 >= attempts || std::time::Instant::now() > deadline {
            break scrape;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let syns = sample(&scrape, "network_probe_interface_tcp_syn_total", &ingress);
    assert_eq!(
        syns,
        Some(f64::from(attempts)),
        "SYNs seen on {}",
        pair.a_if
    );
    for (event, count) in kernel_events(&scrape) {
        let expected = if event == "pending_syn_untracked" {
            u64::from(EXTRA)
        } else {
            0
        };
        assert_eq!(count, expected, "kernel event {event}");
    }
    assert_eq!(
        sample(
            &scrape,
            "network_probe_tcp_connection_attempts_untracked_total",
            &ingress
        ),
        Some(f64::from(EXTRA)),
        "untracked attempts"
    );
    let (clean, report) = network_probe_testkit::promtool_check_metrics(&scrape);
    assert!(clean, "promtool check metrics: {report}");

    // The records travel through the ring buffer and the daemon's forwarding task.
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_secs(5) * network_probe_testkit::daemon::slowdown();
    let line = loop {
        let stderr = log.read();
        let found = stderr
            .lines()
            .find(|line| line.contains("kernel event pending_syn_untracked"))
            .map(str::to_string);
        if let Some(line) = found {
            break line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no pending_syn_untracked line in the daemon's log:\n{stderr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(line.contains("WARN"), "not at warn level: {line}");
    let ifindex = pair.exec(
        &pair.a,
        "cat",
        &[&format!("/sys/class/net/{}/ifindex", pair.a_if)],
    );
    assert!(
        line.contains(&format!("on ifindex {} ", ifindex.trim())),
        "the line does not name {}'s ifindex {}: {line}",
        pair.a_if,
        ifindex.trim()
    );
    daemon.stop(libc::SIGTERM);
}
