//! TCP connection outcomes (`network_probe_tcp_connection_attempts_total`, the flow series'
//! `network_probe_flow_connection_attempts_total`, `network_probe_tcp_syn_retransmits_total`)
//! against a peer namespace, over IPv4 and IPv6: the daemon in namespace a watches a's end of
//! a veth pair, clients in a connect to b, where a port listens (answered), a port is closed
//! (reset), an nft rule rejects a port with ICMP port unreachable (unreachable) and one drops
//! a port's SYNs (timeout after the daemon's short `--flows.connect-timeout`).
//!
//! The reference is a capture of the same traffic on a's interface, read frame by frame: each
//! distinct SYN (4-tuple and sequence number) is an attempt, answered by the first SYN-ACK or
//! RST acknowledging it or ICMP error quoting it, else a timeout; every further SYN with the
//! same sequence number is a retransmit. Every count the daemon exports must equal the
//! capture's, per destination and port on the flow series and in total on the interface.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use network_probe_testkit::{
    Capture, Daemon, Frame, VethPair, daemon::slowdown, dotted, in_netns, sample,
};

const LISTENING: u16 = 7100;
const CLOSED: u16 = 7101;
const REJECTED: u16 = 7102;
const DROPPED: u16 = 7103;
/// Attempts per port of the ports that answer.
const ATTEMPTS: usize = 3;
/// Concurrent attempts to the dropped port.
const SILENT_ATTEMPTS: usize = 2;
/// How long a client waits on the dropped port: SYNs at 0, about 1 and 3 s (two retransmits).
const CLIENT_WAIT: Duration = Duration::from_millis(3500);
const OUTCOMES: [&str; 4] = ["answered", "reset", "unreachable", "timeout"];

/// What the capture says about the attempts to one destination and port.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Expected {
    /// By outcome, in [`OUTCOMES`] order.
    outcomes: [u64; 4],
    syn_retransmits: u64,
}

/// (client address, client port, server address, server port).
type Tuple = (IpAddr, u16, IpAddr, u16);

/// A TCP segment or ICMP error of a frame, as far as attempts go.
enum Event {
    /// A SYN without ACK: its tuple and sequence number.
    Syn(Tuple, u32),
    /// An answer (outcome index) to the attempt with that tuple and sequence number.
    Answer(Tuple, u32, usize),
}

fn be16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn be32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// (source, destination, protocol, offset of the transport header) of the IP header at `at`.
fn ip_header(data: &[u8], at: usize, version: u8) -> Option<(IpAddr, IpAddr, u8, usize)> {
    if version == 4 {
        let header = data.get(at..at + 20)?;
        let src: [u8; 4] = header[12..16].try_into().ok()?;
        let dst: [u8; 4] = header[16..20].try_into().ok()?;
        let l4 = at + usize::from(header[0] & 0x0f) * 4;
        Some((src.into(), dst.into(), header[9], l4))
    } else {
        let header = data.get(at..at + 40)?;
        let src: [u8; 16] = header[8..24].try_into().ok()?;
        let dst: [u8; 16] = header[24..40].try_into().ok()?;
        Some((src.into(), dst.into(), header[6], at + 40))
    }
}

fn event(frame: &Frame) -> Option<Event> {
    let data = &frame.data;
    let version = match be16(data, 12)? {
        0x0800 => 4,
        0x86dd => 6,
        _ => return None,
    };
    let (src, dst, protocol, l4) = ip_header(data, 14, version)?;
    match protocol {
        6 => {
            let (sport, dport) = (be16(data, l4)?, be16(data, l4 + 2)?);
            let (seq, ack) = (be32(data, l4 + 4)?, be32(data, l4 + 8)?);
            let flags = *data.get(l4 + 13)?;
            let (syn, rst, acked) = (flags & 0x02 != 0, flags & 0x04 != 0, flags & 0x10 != 0);
            let client = (dst, dport, src, sport);
            match (syn, rst, acked) {
                (true, false, false) => Some(Event::Syn((src, sport, dst, dport), seq)),
                (true, false, true) => Some(Event::Answer(client, ack.wrapping_sub(1), 0)),
                (false, true, true) => Some(Event::Answer(client, ack.wrapping_sub(1), 1)),
                _ => None,
            }
        }
        1 | 58 => {
            let kind = *data.get(l4)?;
            let code = *data.get(l4 + 1)?;
            let unreachable = if protocol == 1 {
                kind == 3 && code != 4
            } else {
                kind == 1
            };
            if !unreachable {
                return None;
            }
            let (inner_src, inner_dst, inner_protocol, inner_l4) =
                ip_header(data, l4 + 8, version)?;
            if inner_protocol != 6 {
                return None;
            }
            let (sport, dport) = (be16(data, inner_l4)?, be16(data, inner_l4 + 2)?);
            let seq = be32(data, inner_l4 + 4)?;
            Some(Event::Answer((inner_src, sport, inner_dst, dport), seq, 2))
        }
        _ => None,
    }
}

/// The attempts of a capture by (destination, port), judged as the module doc says.
fn expected(frames: &[Frame]) -> BTreeMap<(IpAddr, u16), Expected> {
    // (tuple, sequence number) -> (SYN frames, outcome)
    let mut attempts: BTreeMap<(Tuple, u32), (u64, Option<usize>)> = BTreeMap::new();
    for frame in frames {
        match event(frame) {
            Some(Event::Syn(tuple, seq)) => attempts.entry((tuple, seq)).or_default().0 += 1,
            Some(Event::Answer(tuple, seq, outcome)) => {
                if let Some(attempt) = attempts.get_mut(&(tuple, seq)) {
                    attempt.1.get_or_insert(outcome);
                }
            }
            None => {}
        }
    }
    let mut by_destination: BTreeMap<(IpAddr, u16), Expected> = BTreeMap::new();
    for (((_, _, dst, dport), _), (syns, outcome)) in attempts {
        let expected = by_destination.entry((dst, dport)).or_default();
        expected.outcomes[outcome.unwrap_or(3)] += 1;
        expected.syn_retransmits += syns - 1;
    }
    by_destination
}

/// The daemon's per-interface counts for the egress direction: by outcome, then retransmits.
fn interface_counts(scrape: &str, interface: &str) -> ([u64; 4], u64) {
    let outcome = |name: &str| {
        let labels = format!("interface=\"{interface}\",direction=\"egress\",outcome=\"{name}\"");
        sample(
            scrape,
            "network_probe_tcp_connection_attempts_total",
            &labels,
        )
        .unwrap_or_else(|| panic!("no {labels} in\n{scrape}")) as u64
    };
    let labels = format!("interface=\"{interface}\",direction=\"egress\"");
    let retransmits = sample(scrape, "network_probe_tcp_syn_retransmits_total", &labels)
        .unwrap_or_else(|| panic!("no retransmits {labels} in\n{scrape}"))
        as u64;
    (OUTCOMES.map(outcome), retransmits)
}

/// The flow series' attempts to `dst` port `port` by outcome (0 where absent).
fn series_counts(scrape: &str, interface: &str, dst: IpAddr, port: u16) -> [u64; 4] {
    OUTCOMES.map(|outcome| {
        let labels = format!(
            "interface=\"{interface}\",direction=\"egress\",dst=\"{dst}\",dst_port=\"{port}\",\
             outcome=\"{outcome}\""
        );
        sample(
            scrape,
            "network_probe_flow_connection_attempts_total",
            &labels,
        )
        .unwrap_or(0.0) as u64
    })
}

fn nft(pair: &VethPair, ns: &str, rules: &[&str]) {
    for rule in rules {
        let args: Vec<&str> = rule.split(' ').collect();
        pair.exec(ns, "nft", &args);
    }
}

/// Connects from a to `server` port `port` `count` times at once, each waiting at most `wait`;
/// the connections that succeed are closed at once.
fn connect_from_a(pair: &VethPair, server: IpAddr, port: u16, count: usize, wait: Duration) {
    let clients: Vec<_> = (0..count)
        .map(|_| {
            let ns = pair.a.clone();
            thread::spawn(move || {
                in_netns(&ns, move || {
                    drop(TcpStream::connect_timeout(
                        &SocketAddr::new(server, port),
                        wait,
                    ));
                })
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
}

/// Runs every kind of attempt to `server` (an address of b) and checks the daemon's counts
/// against the capture's.
fn attempts_equal_the_capture(pair: &VethPair, daemon: &Daemon, server: IpAddr) {
    let a_if = pair.a_if.as_str();
    let before = daemon.scrape();
    let capture = Capture::start(&pair.a, a_if);
    for port in [LISTENING, CLOSED, REJECTED] {
        for _ in 0..ATTEMPTS {
            connect_from_a(pair, server, port, 1, Duration::from_secs(2));
        }
    }
    connect_from_a(pair, server, DROPPED, SILENT_ATTEMPTS, CLIENT_WAIT);
    let frames = capture.finish_frames();
    let after = daemon.scrape();

    let expected = expected(&frames);
    // The traffic was what the test meant: every kind of outcome, and retransmits.
    let of = |port| expected.get(&(server, port)).cloned().unwrap_or_default();
    assert_eq!(of(LISTENING).outcomes[0], ATTEMPTS as u64, "{expected:?}");
    assert_eq!(of(CLOSED).outcomes[1], ATTEMPTS as u64, "{expected:?}");
    assert_eq!(of(REJECTED).outcomes[2], ATTEMPTS as u64, "{expected:?}");
    assert_eq!(
        of(DROPPED).outcomes[3],
        SILENT_ATTEMPTS as u64,
        "{expected:?}"
    );
    assert!(
        of(DROPPED).syn_retransmits >= SILENT_ATTEMPTS as u64,
        "{expected:?}"
    );

    // Per destination port on the flow series.
    for port in [LISTENING, CLOSED, REJECTED, DROPPED] {
        assert_eq!(
            series_counts(&after, a_if, server, port),
            of(port).outcomes,
            "flow series of {server} port {port} vs the capture\n{after}"
        );
    }
    // On the interface: what this family's traffic added.
    let (outcomes_before, retransmits_before) = interface_counts(&before, a_if);
    let (outcomes_after, retransmits_after) = interface_counts(&after, a_if);
    let mut total = Expected::default();
    for attempts in expected.values() {
        for (sum, count) in total.outcomes.iter_mut().zip(attempts.outcomes) {
            *sum += count;
        }
        total.syn_retransmits += attempts.syn_retransmits;
    }
    let added: [u64; 4] = std::array::from_fn(|i| outcomes_after[i] - outcomes_before[i]);
    assert_eq!(
        added, total.outcomes,
        "attempts on {a_if} vs the capture\n{after}"
    );
    assert_eq!(
        retransmits_after - retransmits_before,
        total.syn_retransmits,
        "SYN retransmits on {a_if} vs the capture\n{after}"
    );
    // Nobody connected to a: no attempts in the ingress direction.
    for outcome in OUTCOMES {
        let labels = format!("interface=\"{a_if}\",direction=\"ingress\",outcome=\"{outcome}\"");
        assert_eq!(
            sample(
                &after,
                "network_probe_tcp_connection_attempts_total",
                &labels
            ),
            Some(0.0),
            "{labels}\n{after}"
        );
    }
}

#[test]
fn attempts_by_outcome_equal_a_capture_over_ipv4_and_ipv6() {
    let pair = VethPair::new();
    pair.enable_ipv6();
    // b answers every ICMP error it should: no rate limit in its namespace.
    pair.exec(&pair.b, "sysctl", &["-qw", "net.ipv4.icmp_ratelimit=0"]);
    pair.exec(&pair.b, "sysctl", &["-qw", "net.ipv6.icmp.ratelimit=0"]);
    let reject =
        format!("add rule inet np in tcp dport {REJECTED} reject with icmpx port-unreachable");
    let drop_rule = format!("add rule inet np in tcp dport {DROPPED} drop");
    nft(
        &pair,
        &pair.b,
        &[
            "add table inet np",
            "add chain inet np in { type filter hook input priority 0 ; }",
            &reject,
            &drop_rule,
        ],
    );
    let v4: IpAddr = dotted(pair.b_addr).parse().unwrap();
    let v6: IpAddr = pair.b6().parse().unwrap();
    let listeners: Vec<TcpListener> = [v4, v6]
        .into_iter()
        .map(|address| {
            in_netns(&pair.b, move || {
                TcpListener::bind(SocketAddr::new(address, LISTENING)).unwrap()
            })
        })
        .collect();
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--flows.labels",
            "interface,direction,dst,dst_port",
            "--flows.connect-timeout",
            "1s",
            "--flows.families",
            "packets,connection_attempts",
        ],
    );
    attempts_equal_the_capture(&pair, &daemon, v4);
    attempts_equal_the_capture(&pair, &daemon, v6);
    drop(listeners);
}

#[test]
fn a_bad_connect_timeout_is_refused_with_the_reason() {
    let pair = VethPair::new();
    for (value, reason) in [
        ("0s", "must be positive"),
        ("3", "needs a unit"),
        ("11m", "longer than the longest connect timeout"),
    ] {
        let output = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &pair.a,
                network_probe_testkit::daemon_path(),
            ])
            .args(["--interface", &pair.a_if, "--flows.connect-timeout", value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{value}: {stderr}");
        assert!(
            stderr.contains("--flows.connect-timeout") && stderr.contains(reason),
            "{value}: {stderr}"
        );
    }
}

/// Destination port of the injected SYNs of the untracked test; a's nft rule counts and drops them.
const FLOODED: u16 = 7104;
/// SYNs sent per burst: fewer than the receive backlog (`netdev_max_backlog`, 1000 by default),
/// so the veth pair drops none of them before a's TC program.
const SYN_BURST: usize = 500;

/// Packets the counter of the rule in `ns`'s table `np` has counted.
fn rule_packets(pair: &VethPair, ns: &str) -> u64 {
    network_probe_testkit::nft::only_counter_packets(&pair.exec(
        ns,
        "nft",
        &["list", "table", "inet", "np"],
    ))
}

/// More unanswered SYNs than the pending-SYN map holds, each its own attempt (distinct source
/// ports), injected from b through an AF_PACKET socket towards a, where an nft rule counts and
/// drops them after the TC program saw them: the map takes the first
/// [`PENDING_CAPACITY`](network_probe::kernel::outcomes::PENDING_CAPACITY), every further one is
/// untracked, and the followed ones time out.
#[test]
fn attempts_past_the_pending_map_capacity_are_untracked() {
    let capacity = u64::from(network_probe::kernel::outcomes::PENDING_CAPACITY);
    let extra = 600;
    let syns = capacity + extra;
    let pair = VethPair::new();
    let rule = format!("add rule inet np in tcp dport {FLOODED} counter drop");
    nft(
        &pair,
        &pair.a,
        &[
            "add table inet np",
            "add chain inet np in { type filter hook input priority 0 ; }",
            &rule,
        ],
    );
    let daemon = Daemon::start(
        &pair.a,
        &["--interface", &pair.a_if, "--flows.connect-timeout", "1s"],
    );
    let a_if = pair.a_if.as_str();
    let ingress = |scrape: &str, name: &str, outcome: Option<&str>| {
        let mut labels = format!("interface=\"{a_if}\",direction=\"ingress\"");
        if let Some(outcome) = outcome {
            labels.push_str(&format!(",outcome=\"{outcome}\""));
        }
        sample(scrape, name, &labels)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{scrape}")) as u64
    };
    const UNTRACKED: &str = "network_probe_tcp_connection_attempts_untracked_total";
    const ATTEMPTS: &str = "network_probe_tcp_connection_attempts_total";
    let before = daemon.scrape();
    assert_eq!(ingress(&before, UNTRACKED, None), 0, "{before}");

    let injector = network_probe_testkit::injector::FlowInjector::new(&pair);
    let mut sent = 0u64;
    while sent < syns {
        let burst = (syns - sent).min(SYN_BURST as u64);
        for port in sent..sent + burst {
            injector
                .syn(pair.b_addr, 1024 + port as u16, FLOODED)
                .unwrap();
        }
        sent += burst;
        // Until a has taken the burst in (at most 10 s).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while rule_packets(&pair, &pair.a) < sent && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
    let arrived = rule_packets(&pair, &pair.a);
    assert_eq!(arrived, syns, "SYNs the nft rule in {} counted", pair.a);
    let scrape_started = std::time::Instant::now();
    let after = daemon.scrape();
    eprintln!(
        "outcomes: a scrape with the pending-SYN map full took {:?}",
        scrape_started.elapsed()
    );
    assert_eq!(
        ingress(&after, UNTRACKED, None),
        arrived - capacity,
        "untracked attempts on {a_if}: the rule's {arrived} SYNs past the map's {capacity}\n{}",
        after
            .lines()
            .filter(|l| l.contains("connection_attempts"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The followed attempts time out, and only they: the untracked ones are in no outcome.
    let deadline = std::time::Instant::now() + Duration::from_secs(10 * u64::from(slowdown()));
    let timed_out = loop {
        let scrape = daemon.scrape();
        let timed_out = ingress(&scrape, ATTEMPTS, Some("timeout"));
        if timed_out >= capacity || std::time::Instant::now() > deadline {
            break scrape;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        ingress(&timed_out, ATTEMPTS, Some("timeout")),
        capacity,
        "{timed_out}"
    );
    for outcome in ["answered", "reset", "unreachable"] {
        assert_eq!(ingress(&timed_out, ATTEMPTS, Some(outcome)), 0, "{outcome}");
    }
    assert_eq!(ingress(&timed_out, UNTRACKED, None), arrived - capacity);
    // Nothing went out: the egress direction has no attempt and nothing untracked.
    let egress = format!("interface=\"{a_if}\",direction=\"egress\"");
    assert_eq!(
        sample(&timed_out, UNTRACKED, &egress),
        Some(0.0),
        "{timed_out}"
    );
}
