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
