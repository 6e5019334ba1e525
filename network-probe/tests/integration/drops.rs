//! Kernel drop reasons (`network_probe_drops_total`, the tp_btf program on `kfree_skb`) on real
//! drops in namespaces this test creates: a veth pair, the daemon in namespace a watching a's
//! end, traffic from b. References are the kernel's own counters for the same drops: the nft
//! rule's counter, `UdpNoPorts` (nstat in a), and the reason names of the tracepoint's format
//! file.
//!
//! The program counts drops host-wide, and other tests run at the same time: only the rows of
//! this test's own interface are compared (a drop in another namespace is never labelled with
//! it: the program checks the device's namespace), as deltas around the traffic. The shared
//! isolation guard of the veth pair keeps the exclusive tests out meanwhile.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use network_probe_testkit::{Daemon, VethPair, daemon_path, dotted, in_netns, nstat, sample, sh};

const DATAGRAMS: usize = 40;
const DROPPED_PORT: u16 = 7000;
const CLOSED_PORT: u16 = 7001;

/// `network_probe_drops_total` of one row (0 when absent).
fn drops(scrape: &str, interface: &str, reason: &str, protocol: &str) -> u64 {
    let labels = format!("interface=\"{interface}\",reason=\"{reason}\",protocol=\"{protocol}\"");
    sample(scrape, "network_probe_drops_total", &labels).unwrap_or(0.0) as u64
}

/// Sends `count` UDP datagrams from b to a's `port` (nothing receives them).
fn send_to_a(pair: &VethPair, port: u16, count: usize) {
    let from: SocketAddr = format!("{}:0", dotted(pair.b_addr)).parse().unwrap();
    let to: SocketAddr = format!("{}:{port}", dotted(pair.a_addr)).parse().unwrap();
    in_netns(&pair.b, move || {
        let socket = UdpSocket::bind(from).unwrap();
        for _ in 0..count {
            socket.send_to(&[0x5a; 64], to).unwrap();
        }
    });
}

/// Waits (at most 5 s) until `read` returns at least `target`, and returns what it read.
fn wait_for(target: u64, read: impl Fn() -> u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let value = read();
        if value >= target || Instant::now() > deadline {
            return value;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Packets the counter of the nft rule in a's table `np` has counted.
fn nft_rule_packets(pair: &VethPair) -> u64 {
    network_probe_testkit::nft::only_counter_packets(&pair.exec(
        &pair.a,
        "nft",
        &["list", "table", "inet", "np"],
    ))
}

#[test]
fn netfilter_drops_equal_the_rule_counter_and_closed_ports_equal_udp_no_ports() {
    let pair = VethPair::new();
    let rule = format!("add rule inet np in udp dport {DROPPED_PORT} counter drop");
    for args in [
        "add table inet np",
        "add chain inet np in { type filter hook input priority 0 ; }",
        rule.as_str(),
    ] {
        let args: Vec<&str> = args.split(' ').collect();
        pair.exec(&pair.a, "nft", &args);
    }
    let daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if]);
    let a_if = pair.a_if.as_str();

    // An nft rule dropping DATAGRAMS datagrams.
    let before = daemon.scrape();
    let rule_before = nft_rule_packets(&pair);
    send_to_a(&pair, DROPPED_PORT, DATAGRAMS);
    let rule_after = wait_for(rule_before + DATAGRAMS as u64, || nft_rule_packets(&pair));
    let after = daemon.scrape();
    let rule_dropped = rule_after - rule_before;
    assert_eq!(rule_dropped, DATAGRAMS as u64, "the rule's own counter");
    assert_eq!(
        drops(&after, a_if, "netfilter_drop", "ipv4_udp")
            - drops(&before, a_if, "netfilter_drop", "ipv4_udp"),
        rule_dropped,
        "netfilter_drop on {a_if} vs the nft rule's counter\n{after}"
    );
    // Nothing of it counted under another protocol of this interface.
    for protocol in ["ipv4", "ipv4_tcp", "ipv4_icmp", "other"] {
        assert_eq!(
            drops(&after, a_if, "netfilter_drop", protocol),
            0,
            "{after}"
        );
    }

    // UDP to a closed port: the kernel's UdpNoPorts in a.
    let before = daemon.scrape();
    let no_ports_before = nstat(&pair.a, "UdpNoPorts");
    send_to_a(&pair, CLOSED_PORT, DATAGRAMS);
    let no_ports_after = wait_for(no_ports_before + DATAGRAMS as u64, || {
        nstat(&pair.a, "UdpNoPorts")
    });
    let after = daemon.scrape();
    let no_ports = no_ports_after - no_ports_before;
    assert_eq!(no_ports, DATAGRAMS as u64, "UdpNoPorts in {}", pair.a);
    assert_eq!(
        drops(&after, a_if, "no_socket", "ipv4_udp")
            - drops(&before, a_if, "no_socket", "ipv4_udp"),
        no_ports,
        "no_socket on {a_if} vs UdpNoPorts\n{after}"
    );
    // The rule's drops did not move meanwhile.
    assert_eq!(
        drops(&after, a_if, "netfilter_drop", "ipv4_udp"),
        drops(&before, a_if, "netfilter_drop", "ipv4_udp")
    );
    // Only reasons that occurred are series, and the interface label is ours or other.
    for line in after
        .lines()
        .filter(|l| l.starts_with("network_probe_drops_total{"))
    {
        assert!(
            line.contains(&format!("interface=\"{a_if}\"")) || line.contains("interface=\"other\""),
            "{line}"
        );
        assert!(!line.ends_with(" 0"), "{line}");
    }
}

#[test]
fn with_drops_off_the_family_is_empty() {
    let pair = VethPair::new();
    let daemon = Daemon::start(
        &pair.a,
        &["--interface", &pair.a_if, "--datapath.drops", "off"],
    );
    send_to_a(&pair, CLOSED_PORT, 5);
    wait_for(5, || nstat(&pair.a, "UdpNoPorts"));
    let scrape = daemon.scrape();
    assert!(!scrape.contains("network_probe_drops_total{"), "{scrape}");
    assert!(
        scrape.contains("# TYPE network_probe_drops_total counter"),
        "{scrape}"
    );
}

#[test]
fn check_says_drop_reasons_are_available() {
    let pair = VethPair::new();
    let report = sh(
        "ip",
        &[
            "netns",
            "exec",
            &pair.a,
            daemon_path(),
            "check",
            "--interface",
            &pair.a_if,
            "--datapath.pin-path=",
            "--web.listen-address",
            "127.0.0.1:9435",
        ],
    );
    let line = report
        .lines()
        .find(|line| line.contains(" drop reasons: "))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        line.starts_with("OK   drop reasons: tp_btf/kfree_skb verified; "),
        "{line}"
    );
    let off = sh(
        "ip",
        &[
            "netns",
            "exec",
            &pair.a,
            daemon_path(),
            "check",
            "--interface",
            &pair.a_if,
            "--datapath.pin-path=",
            "--datapath.drops",
            "off",
            "--web.listen-address",
            "127.0.0.1:9435",
        ],
    );
    assert!(
        off.contains("OK   drop reasons: off (--datapath.drops off)"),
        "{off}"
    );
}

/// The `{ value, "NAME" }` pairs of the `__print_symbolic` list of a tracepoint format file.
fn print_symbols(format: &str) -> BTreeMap<u32, String> {
    let print = format
        .lines()
        .find(|line| line.starts_with("print fmt:"))
        .unwrap_or_else(|| panic!("no print fmt in {format}"));
    let mut symbols = BTreeMap::new();
    let mut rest = print;
    while let Some(open) = rest.find("{ ") {
        rest = &rest[open + 2..];
        let Some(close) = rest.find(" }") else { break };
        let (value, name) = rest[..close].split_once(", ").unwrap();
        symbols.insert(
            value.trim().parse().unwrap(),
            name.trim_matches('"').to_ascii_lowercase(),
        );
        rest = &rest[close..];
    }
    symbols
}

/// The kfree_skb tracepoint's format file: read where tracefs is mounted, else from a tracefs
/// mounted in a private mount namespace (nothing changes on the host).
fn kfree_skb_format() -> String {
    const FORMAT: &str = "/sys/kernel/tracing/events/skb/kfree_skb/format";
    match std::fs::read_to_string(FORMAT) {
        Ok(format) => format,
        Err(_) => sh(
            "unshare",
            &[
                "--mount",
                "sh",
                "-c",
                &format!("mount -t tracefs nodev /sys/kernel/tracing && cat {FORMAT}"),
            ],
        ),
    }
}

#[test]
fn reason_names_equal_the_tracepoint_format() {
    let from_format = print_symbols(&kfree_skb_format());
    assert!(from_format.len() > 10, "{from_format:?}");
    let from_btf = network_probe::kernel::drops::kernel_reason_labels().unwrap();
    assert_eq!(from_btf, from_format);
}

/// Segments of the bad-checksum test.
const BAD_SEGMENTS: u64 = 40;

#[test]
fn bad_tcp_checksums_equal_tcp_in_csum_errors() {
    let pair = VethPair::new();
    let daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if]);
    let a_if = pair.a_if.as_str();
    // TCP SYNs from b through an AF_PACKET socket, each with a wrong TCP checksum.
    let injector = network_probe_testkit::injector::FlowInjector::new(&pair);
    let before = daemon.scrape();
    let errors_before = nstat(&pair.a, "TcpInCsumErrors");
    for port in 0..BAD_SEGMENTS as u16 {
        injector.syn(pair.b_addr, 40_000 + port, 7002).unwrap();
    }
    let errors_after = wait_for(errors_before + BAD_SEGMENTS, || {
        nstat(&pair.a, "TcpInCsumErrors")
    });
    let after = daemon.scrape();
    let errors = errors_after - errors_before;
    assert_eq!(errors, BAD_SEGMENTS, "TcpInCsumErrors in {}", pair.a);
    // The kernel's name for the reason, from its tracepoint.
    let names = print_symbols(&kfree_skb_format());
    assert!(names.values().any(|name| name == "tcp_csum"), "{names:?}");
    assert_eq!(
        drops(&after, a_if, "tcp_csum", "ipv4_tcp") - drops(&before, a_if, "tcp_csum", "ipv4_tcp"),
        errors,
        "tcp_csum on {a_if} vs TcpInCsumErrors\n{after}"
    );
    for protocol in ["ipv4", "ipv4_udp", "ipv6_tcp", "other"] {
        assert_eq!(drops(&after, a_if, "tcp_csum", protocol), 0, "{after}");
    }
}

#[test]
fn udp_to_a_closed_ipv6_port_equals_udp6_no_ports() {
    let pair = VethPair::new();
    pair.enable_ipv6();
    let daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if]);
    let a_if = pair.a_if.as_str();
    let before = daemon.scrape();
    let no_ports_before = nstat(&pair.a, "Udp6NoPorts");
    let from: SocketAddr = format!("[{}]:0", pair.b6()).parse().unwrap();
    let to: SocketAddr = format!("[{}]:{CLOSED_PORT}", pair.a6()).parse().unwrap();
    in_netns(&pair.b, move || {
        let socket = UdpSocket::bind(from).unwrap();
        for _ in 0..DATAGRAMS {
            socket.send_to(&[0x5a; 64], to).unwrap();
        }
    });
    let no_ports_after = wait_for(no_ports_before + DATAGRAMS as u64, || {
        nstat(&pair.a, "Udp6NoPorts")
    });
    let after = daemon.scrape();
    let no_ports = no_ports_after - no_ports_before;
    assert_eq!(no_ports, DATAGRAMS as u64, "Udp6NoPorts in {}", pair.a);
    let names = print_symbols(&kfree_skb_format());
    assert!(names.values().any(|name| name == "no_socket"), "{names:?}");
    assert_eq!(
        drops(&after, a_if, "no_socket", "ipv6_udp")
            - drops(&before, a_if, "no_socket", "ipv6_udp"),
        no_ports,
        "no_socket on {a_if} vs Udp6NoPorts\n{after}"
    );
    for protocol in ["ipv4_udp", "ipv6", "other"] {
        assert_eq!(
            drops(&after, a_if, "no_socket", protocol)
                - drops(&before, a_if, "no_socket", protocol),
            0,
            "{after}"
        );
    }
}

/// Drops of the cost measurement.
const COST_DROPS: u64 = 2000;

/// (runs, run time) summed over every loaded `kfree_skb` program (this daemon's and those of
/// tests running meanwhile: each runs once per drop of the host).
fn kfree_skb_run_stats() -> (u64, Duration) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|program| program.name_as_str() == Some("kfree_skb"))
        .fold((0, Duration::ZERO), |(runs, time), program| {
            (runs + program.run_count(), time + program.run_time())
        })
}

/// The drop program's own cost per drop, from the kernel's BPF run-time statistics (turned on
/// for the measurement through BPF_ENABLE_STATS, which lasts while its descriptor is open: no
/// sysctl is changed). Printed; run with `--nocapture` to read it.
#[test]
fn the_drop_programs_cost_per_drop_is_measured() {
    let pair = VethPair::new();
    let daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if]);
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let (runs_before, time_before) = kfree_skb_run_stats();
    let no_ports_before = nstat(&pair.a, "UdpNoPorts");
    send_to_a(&pair, CLOSED_PORT, COST_DROPS as usize);
    let no_ports = wait_for(no_ports_before + COST_DROPS, || {
        nstat(&pair.a, "UdpNoPorts")
    }) - no_ports_before;
    let (runs_after, time_after) = kfree_skb_run_stats();
    drop(stats);
    assert_eq!(no_ports, COST_DROPS, "UdpNoPorts in {}", pair.a);
    let runs = runs_after - runs_before;
    // Every drop ran the program (and drops elsewhere on the host ran it too).
    assert!(runs >= COST_DROPS, "{runs} runs for {COST_DROPS} drops");
    let per_drop_ns = (time_after - time_before).as_nanos() as f64 / runs as f64;
    assert!(
        per_drop_ns > 0.0 && per_drop_ns < 100_000.0,
        "{per_drop_ns} ns per drop"
    );
    eprintln!(
        "kfree_skb program: {runs} runs, {per_drop_ns:.0} ns per run (BPF run-time statistics)"
    );
    drop(daemon);
}
