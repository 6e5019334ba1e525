//! The ping prober against real kernel peers: the daemon runs in namespace `a` and probes the
//! addresses of namespace `b` over a veth pair. References: b's own ICMP counters (nstat),
//! nftables rule counters in b (replies sent, packets dropped), iputils `ping` on the same
//! path, and our own user-space clock.

use std::{
    net::TcpListener,
    thread,
    time::{Duration, Instant},
};

use network_probe::probe::ping::timestamps;
use network_probe_testkit::{Daemon, VethPair, dotted, in_netns, nstat, sample};

/// Fast probing so a test gathers hundreds of samples in seconds.
const FAST: &[&str] = &[
    "--ping.interval",
    "20ms",
    "--ping.timeout",
    "500ms",
    "--ping.samples",
    "100000",
];

fn start(pair: &VethPair, extra: &[&str]) -> Daemon {
    let mut args = vec!["--interface", pair.a_if.as_str()];
    // The FAST settings, unless `extra` sets the same flag.
    for pair in FAST.chunks(2) {
        if !extra.contains(&pair[0]) {
            args.extend_from_slice(pair);
        }
    }
    args.extend_from_slice(extra);
    Daemon::start(&pair.a, &args)
}

/// GET /probe?module=ping&QUERY, asserting 200.
fn probe(daemon: &Daemon, query: &str) -> String {
    let (status, body) = daemon
        .get(&format!("/probe?module=ping&{query}"))
        .expect("probe request");
    assert_eq!(status, 200, "{body}");
    body
}

fn value(body: &str, name: &str, labels: &str) -> f64 {
    sample(body, name, labels).unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{body}"))
}

fn nft(pair: &VethPair, command: &str) -> String {
    let args: Vec<&str> = command.split(' ').collect();
    pair.exec(&pair.b, "nft", &args)
}

/// The `counter packets N` of the rule whose text contains `marker` in b's ruleset.
fn nft_counter(pair: &VethPair, marker: &str) -> u64 {
    let ruleset = pair.exec(&pair.b, "nft", &["list", "ruleset"]);
    let line = ruleset
        .lines()
        .find(|line| line.contains(marker) && line.contains("counter packets"))
        .unwrap_or_else(|| panic!("no rule with {marker:?} in\n{ruleset}"));
    line.split("counter packets ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Makes b deaf to probes (an nftables drop rule on input matching `what`) and waits until
/// every probe in flight has been answered or timed out: from then on b's counters and our
/// received counts are final and compare exactly.
fn freeze(pair: &VethPair, what: &str) {
    nft(pair, "add table inet freeze");
    nft(
        pair,
        "add chain inet freeze in { type filter hook input priority -10 ; }",
    );
    nft(pair, &format!("add rule inet freeze in {what} drop"));
    // FAST's timeout is 500 ms; the expiry sweep runs every 50 ms.
    thread::sleep(Duration::from_millis(800));
}

/// RTTs in microseconds from the probe log line of `address` (`?debug=true`): (kernel, user).
fn window_rtts(debug_body: &str, address: &str) -> (Vec<f64>, Vec<f64>) {
    let line = debug_body
        .lines()
        .find(|line| line.starts_with(&format!("{address}:")))
        .unwrap_or_else(|| panic!("no log line for {address} in\n{debug_body}"));
    let field = |name: &str| -> Vec<f64> {
        line.split(&format!("| {name}:"))
            .nth(1)
            .unwrap()
            .split('|')
            .next()
            .unwrap()
            .split_whitespace()
            .filter(|value| *value != "lost" && !value.ends_with('u'))
            .map(|value| value.parse().unwrap())
            .collect()
    };
    (field("rtt_us"), field("user_rtt_us"))
}

/// An address as our labels write it (`fd00:231:0::2` becomes `fd00:231::2`).
fn canonical(address: &str) -> String {
    address.parse::<std::net::IpAddr>().unwrap().to_string()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

#[test]
fn icmp_v4_and_v6_replies_match_the_peers_counters() {
    let pair = VethPair::new();
    pair.enable_ipv6();
    let daemon = start(&pair, &[]);
    let (b4, b6) = (dotted(pair.b_addr), canonical(&pair.b6()));
    let query = format!("target={b4}&target={b6}");
    let first = probe(&daemon, &query);
    assert_eq!(value(&first, "icmp_active_probes", ""), 2.0);
    assert_eq!(value(&first, "ping_probe_success", ""), 1.0);
    thread::sleep(Duration::from_secs(2));
    let body = probe(&daemon, &query);
    for address in [&b4, &b6] {
        let labels = format!("ip=\"{address}\"");
        let sent = value(&body, "icmp_probe_packets_sent_total", &labels);
        let received = value(&body, "icmp_probe_packets_recv_total", &labels);
        assert!(sent >= 50.0, "{address}: only {sent} sent in 2 s at 20 ms");
        assert!(
            sent - received <= 1.0,
            "{address}: sent {sent}, received {received}"
        );
        assert_eq!(value(&body, "icmp_probe_loss_ratio", &labels), 0.0);
        let samples = value(&body, "icmp_probe_samples_count", &labels);
        assert!(
            (received - 1.0..=received).contains(&samples),
            "{samples} vs {received}"
        );
        let mean = value(&body, "icmp_probe_latency_seconds", &labels);
        assert!(
            mean > 0.0 && mean < 0.005,
            "{address}: mean RTT {mean} s on a veth"
        );
        assert!(value(&body, "icmp_probe_standard_deviation_seconds", &labels) >= 0.0);
        assert_eq!(
            value(&body, "icmp_probe_rtt_seconds_count", &labels),
            received
        );
        let sum = value(&body, "icmp_probe_latency_seconds_total", &labels);
        assert_eq!(value(&body, "icmp_probe_rtt_seconds_sum", &labels), sum);
        assert!(value(&body, "icmp_probe_latency_squared_seconds_total", &labels) > 0.0);
        // Software stamps on both ends of every sample but perhaps the socket's first reply.
        assert!(value(&body, "icmp_probe_user_clock_samples_total", &labels) <= 1.0);
        // The user clock brackets the kernel stamps, so its sum is larger.
        assert!(
            value(
                &body,
                "icmp_probe_user_clock_latency_seconds_total",
                &labels
            ) > sum
        );
    }
    // b's kernel counts the echo replies it sent: once b stops answering and the last probes
    // have timed out, that count and ours are final and equal.
    freeze(&pair, "meta l4proto { icmp, ipv6-icmp }");
    let body = probe(&daemon, &query);
    for (address, counter) in [(&b4, "IcmpOutEchoReps"), (&b6, "Icmp6OutEchoReplies")] {
        let labels = format!("ip=\"{address}\"");
        let received = value(&body, "icmp_probe_packets_recv_total", &labels);
        assert_eq!(received, nstat(&pair.b, counter) as f64, "{address}");
    }
    let sent_total = value(&body, "icmp_packets_sent_total", "");
    let per_target: f64 = [&b4, &b6]
        .iter()
        .map(|address| {
            value(
                &body,
                "icmp_probe_packets_sent_total",
                &format!("ip=\"{address}\""),
            )
        })
        .sum();
    assert_eq!(sent_total, per_target);
    assert_eq!(value(&body, "icmp_packets_error_total", ""), 0.0);
}

#[test]
fn datagram_icmp_sockets_where_ping_group_range_allows() {
    let pair = VethPair::new();
    pair.exec(
        &pair.a,
        "sysctl",
        &["-qw", "net.ipv4.ping_group_range=0 2147483647"],
    );
    let daemon = start(&pair, &["--ping.icmp-socket", "datagram"]);
    let b4 = dotted(pair.b_addr);
    probe(&daemon, &format!("target={b4}"));
    thread::sleep(Duration::from_secs(1));
    let body = probe(&daemon, &format!("target={b4}"));
    let labels = format!("ip=\"{b4}\"");
    assert!(
        value(&body, "icmp_probe_packets_recv_total", &labels) >= 20.0,
        "{body}"
    );
    assert!(value(&body, "icmp_probe_user_clock_samples_total", &labels) <= 1.0);
    // The kernel lists ping sockets in /proc/net/icmp (raw ones would be in /proc/net/raw).
    let sockets = |file: &str| pair.exec(&pair.a, "cat", &[file]).lines().count() - 1;
    assert_eq!(sockets("/proc/net/icmp"), 1);
    assert_eq!(sockets("/proc/net/raw"), 0);
    freeze(&pair, "icmp type echo-request");
    let body = probe(&daemon, &format!("target={b4}"));
    let received = value(&body, "icmp_probe_packets_recv_total", &labels);
    assert_eq!(received, nstat(&pair.b, "IcmpOutEchoReps") as f64);
}

#[test]
fn tcp_syn_to_open_and_closed_ports_matches_the_peers_replies() {
    let pair = VethPair::new();
    pair.enable_ipv6();
    // A listener on 8080 (both families); nothing on 8081, so b answers RST.
    let _listener = in_netns(&pair.b, || TcpListener::bind("[::]:8080").unwrap());
    nft(&pair, "add table inet np");
    nft(
        &pair,
        "add chain inet np out { type filter hook output priority 0 ; }",
    );
    nft(
        &pair,
        "add rule inet np out tcp sport 8080 tcp flags & (syn | ack) == syn | ack counter",
    );
    nft(
        &pair,
        "add rule inet np out tcp sport 8081 tcp flags & rst == rst counter",
    );
    let daemon = start(&pair, &[]);
    let (b4, b6) = (dotted(pair.b_addr), canonical(&pair.b6()));
    let query = format!("target={b4}&target={b6}&tcp_port=8080&tcp_port=8081");
    assert_eq!(value(&probe(&daemon, &query), "tcp_active_probes", ""), 4.0);
    thread::sleep(Duration::from_secs(2));
    let body = probe(&daemon, &query);
    for address in [&b4, &b6] {
        for port in [8080, 8081] {
            let labels = format!("ip=\"{address}\",port=\"{port}\"");
            let sent = value(&body, "tcp_probe_packets_sent_total", &labels);
            let received = value(&body, "tcp_probe_packets_recv_total", &labels);
            assert!(sent >= 50.0, "{labels}: {sent}");
            assert!(
                sent - received <= 1.0,
                "{labels}: sent {sent} received {received}"
            );
            let rst = value(&body, "tcp_probe_rst_total", &labels);
            assert_eq!(rst, if port == 8081 { received } else { 0.0 }, "{labels}");
            assert_eq!(value(&body, "tcp_probe_loss_ratio", &labels), 0.0);
            let mean = value(&body, "tcp_probe_latency_seconds", &labels);
            assert!(mean > 0.0 && mean < 0.005, "{labels}: {mean}");
            assert!(
                value(&body, "tcp_probe_user_clock_samples_total", &labels) <= 1.0,
                "{labels}"
            );
        }
    }
    assert_eq!(value(&body, "tcp_packets_error_total", ""), 0.0);
    // Once b ignores the SYNs and the last attempts have timed out, the SYN-ACKs and RSTs b
    // sent (its nftables counters) equal the replies we matched, port by port.
    freeze(&pair, "tcp dport { 8080, 8081 }");
    let body = probe(&daemon, &query);
    let mut ours = [0.0; 2];
    for address in [&b4, &b6] {
        for (port, slot) in [(8080, 0), (8081, 1)] {
            let labels = format!("ip=\"{address}\",port=\"{port}\"");
            ours[slot] += value(&body, "tcp_probe_packets_recv_total", &labels);
        }
    }
    assert_eq!(ours[0], nft_counter(&pair, "sport 8080") as f64, "SYN-ACKs");
    assert_eq!(ours[1], nft_counter(&pair, "sport 8081") as f64, "RSTs");
}

/// nftables in b drops a random quarter of the echo requests until its quota is used up; once
/// every dropped request has timed out, our lost samples equal the rule's drop counter.
#[test]
fn loss_equals_what_nftables_dropped() {
    let pair = VethPair::new();
    nft(&pair, "add table inet np");
    nft(
        &pair,
        "add chain inet np in { type filter hook input priority 0 ; }",
    );
    // Each request is 36 bytes at the IP layer: the quota lets about 40 drops through.
    nft(
        &pair,
        "add rule inet np in icmp type echo-request numgen random mod 4 == 0 quota until 1440 bytes counter drop",
    );
    let daemon = start(&pair, &["--ping.timeout", "200ms"]);
    let b4 = dotted(pair.b_addr);
    let labels = format!("ip=\"{b4}\"");
    probe(&daemon, &format!("target={b4}"));
    // Wait for the quota to run out (counter stable), then for the last drop to time out.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = u64::MAX;
    loop {
        thread::sleep(Duration::from_millis(500));
        let now = nft_counter(&pair, "numgen");
        if now == last && now > 0 {
            break;
        }
        last = now;
        assert!(Instant::now() < deadline, "nft counter still moving: {now}");
    }
    thread::sleep(Duration::from_millis(400));
    let body = probe(&daemon, &format!("target={b4}"));
    let dropped = nft_counter(&pair, "numgen") as f64;
    let samples = value(&body, "icmp_probe_samples_count", &labels);
    let loss = value(&body, "icmp_probe_loss_ratio", &labels);
    let lost = (loss * samples).round();
    assert_eq!(
        lost, dropped,
        "loss ratio {loss} over {samples} samples vs {dropped} dropped"
    );
    let sent = value(&body, "icmp_probe_packets_sent_total", &labels);
    let received = value(&body, "icmp_probe_packets_recv_total", &labels);
    // Sent = received + lost + at most one still in flight.
    assert!(
        (0.0..=1.0).contains(&(sent - received - dropped)),
        "sent {sent} received {received} dropped {dropped}"
    );
    // Lost probes never show as RTT: every histogram entry is a reply.
    assert_eq!(
        value(&body, "icmp_probe_rtt_seconds_count", &labels),
        received
    );
    assert!(dropped >= 10.0, "too few drops to mean anything: {dropped}");
}

/// Against iputils ping on the same path in the same run: kernel stamps at both ends must not
/// be slower at the median than ping (user clock at send, kernel stamp at receive), and our
/// user-clock RTT of each sample must be higher than its kernel-stamped RTT.
#[test]
fn rtt_is_at_most_pings_and_below_the_user_clock() {
    let pair = VethPair::new();
    let daemon = start(&pair, &["--ping.interval", "50ms"]);
    let b4 = dotted(pair.b_addr);
    probe(&daemon, &format!("target={b4}"));
    let output = pair.exec(&pair.a, "ping", &["-n", "-c", "40", "-i", "0.05", &b4]);
    let mut ping_rtts: Vec<f64> = output
        .lines()
        .filter_map(|line| line.split("time=").nth(1))
        .map(|time| time.trim_end_matches(" ms").parse::<f64>().unwrap() * 1000.0)
        .collect();
    assert!(ping_rtts.len() >= 39, "{output}");
    let (status, debug) = daemon
        .get(&format!("/probe?module=ping&target={b4}&debug=true"))
        .unwrap();
    assert_eq!(status, 200);
    let (mut kernel, mut user) = window_rtts(&debug, &b4);
    assert!(kernel.len() >= 30, "{debug}");
    let (ours, theirs, users) = (
        median(&mut kernel.clone()),
        median(&mut ping_rtts),
        median(&mut user.clone()),
    );
    eprintln!(
        "median RTT: ours {ours:.1} µs, iputils ping {theirs:.1} µs, our user clock {users:.1} µs"
    );
    assert!(
        ours <= theirs,
        "kernel-stamped median {ours} µs above ping's {theirs} µs"
    );
    assert!(
        users > ours,
        "user-clock median {users} µs not above kernel-stamped {ours} µs"
    );
    kernel.sort_by(f64::total_cmp);
    user.sort_by(f64::total_cmp);
    assert!(kernel.iter().zip(&user).all(|(k, u)| u >= k));
}

/// With a 1 s expiry, a target not requested again stops being probed: b's nft counter of
/// requests stops growing and the active-probes gauge drops.
#[test]
fn unrequested_targets_expire() {
    let pair = VethPair::new();
    nft(&pair, "add table inet np");
    nft(
        &pair,
        "add chain inet np in { type filter hook input priority 0 ; }",
    );
    nft(&pair, "add rule inet np in icmp type echo-request counter");
    let daemon = start(&pair, &["--ping.expiry", "1s"]);
    let (a4, b4) = (dotted(pair.a_addr), dotted(pair.b_addr));
    probe(&daemon, &format!("target={b4}"));
    thread::sleep(Duration::from_millis(300));
    // Another target keeps the daemon busy; b is not asked for again.
    assert_eq!(
        value(
            &probe(&daemon, &format!("target={a4}")),
            "icmp_active_probes",
            ""
        ),
        2.0
    );
    thread::sleep(Duration::from_millis(1500));
    let body = probe(&daemon, &format!("target={a4}"));
    assert_eq!(
        value(&body, "icmp_active_probes", ""),
        1.0,
        "b should have expired"
    );
    let frozen = nft_counter(&pair, "echo-request");
    assert!(frozen >= 20, "{frozen}");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        nft_counter(&pair, "echo-request"),
        frozen,
        "b still probed after expiry"
    );
    assert!(
        sample(
            &body,
            "icmp_probe_packets_sent_total",
            &format!("ip=\"{b4}\"")
        )
        .is_none()
    );
}

/// No NIC here stamps in hardware: SIOCSHWTSTAMP on a veth is EOPNOTSUPP, so `--ping.hard`
/// falls back to software stamps (one warning) and still measures with kernel stamps.
#[test]
fn hardware_stamps_fall_back_to_software_on_a_veth() {
    let pair = VethPair::new();
    let ifname = pair.a_if.clone();
    let (set, enable) = in_netns(&pair.a, move || {
        (
            timestamps::set_hardware_stamping(&ifname),
            timestamps::enable_hardware(&ifname, &timestamps::SavedConfigs::default()),
        )
    });
    assert_eq!(set.unwrap_err().raw_os_error(), Some(libc::EOPNOTSUPP));
    let reason = enable.unwrap_err();
    assert!(reason.contains("no hardware-transmit"), "{reason}");

    let daemon = start(&pair, &["--ping.hard", "--ping.interface4", &pair.a_if]);
    let b4 = dotted(pair.b_addr);
    probe(&daemon, &format!("target={b4}"));
    thread::sleep(Duration::from_secs(1));
    let body = probe(&daemon, &format!("target={b4}"));
    let labels = format!("ip=\"{b4}\"");
    assert!(value(&body, "icmp_probe_packets_recv_total", &labels) >= 20.0);
    assert!(value(&body, "icmp_probe_user_clock_samples_total", &labels) <= 1.0);
    assert_eq!(
        value(
            &body,
            "network_probe_ping_hardware_timestamp_fallbacks_total",
            ""
        ),
        1.0
    );
}

#[test]
fn bad_requests_are_400_with_the_reason() {
    let pair = VethPair::new();
    let daemon = start(&pair, &["--ping.max-targets", "2"]);
    let b4 = dotted(pair.b_addr);
    for (query, expected) in [
        (
            "target=no-such-host.invalid".to_string(),
            "cannot resolve \"no-such-host.invalid\"",
        ),
        (
            format!("target={b4}&tcp_port=70000"),
            "\"70000\" is not a port",
        ),
        (
            format!("target={b4}&ip_version=7"),
            "\"7\" is not 4, 6 or all",
        ),
        (
            format!("target={b4}&tcp_port=1&tcp_port=2&tcp_port=3"),
            "more than --ping.max-targets 2",
        ),
        ("tcp_port=80".to_string(), "missing parameter \"target\""),
    ] {
        let (status, body) = daemon.get(&format!("/probe?module=ping&{query}")).unwrap();
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(expected), "{query}: {body}");
    }
    // An interface that does not exist: 200, success 0 and the reason in the probe log.
    let daemon = {
        drop(daemon);
        start(&pair, &["--ping.interface4", "nosuch0"])
    };
    let (status, body) = daemon
        .get(&format!("/probe?module=ping&target={b4}&debug=true"))
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("Probe succeeded: false"), "{body}");
    assert!(body.contains("ping_probe_success 0"), "{body}");
    assert!(body.contains("nosuch0"), "{body}");
}

/// The transmit stamps the kernel queues carry the stamp key we gave each send (the driver
/// relies on it to pair stamps with probes), each with a software stamp.
#[test]
fn transmit_stamps_carry_our_keys() {
    use network_probe::probe::ping::{packet, socket};
    let pair = VethPair::new();
    let b4: std::net::IpAddr = dotted(pair.b_addr).parse().unwrap();
    let stamps = in_netns(&pair.a, move || {
        let fd = socket::open(
            false,
            libc::SOCK_RAW,
            libc::IPPROTO_ICMP,
            timestamps::SOFTWARE_FLAGS,
            None,
        )
        .unwrap();
        let sender = socket::StampedSender::default();
        for seq in 0..5u16 {
            let request = packet::build_echo_request(
                false,
                &packet::Echo {
                    id: 7,
                    seq,
                    cookie: 1,
                },
            );
            let to = std::net::SocketAddr::new(b4, 0);
            sender
                .send(socket::raw(&fd), &request, to, 1000 + u32::from(seq))
                .unwrap();
        }
        thread::sleep(Duration::from_millis(100));
        let mut buffer = [0u8; 2048];
        let mut stamps = Vec::new();
        while let Some(entry) = socket::receive(socket::raw(&fd), &mut buffer, true).unwrap() {
            let key = entry.control.error.and_then(|error| error.tx_stamp_key());
            stamps.push((key, entry.control.software.is_some()));
        }
        stamps
    });
    let expected: Vec<_> = (1000..1005).map(|key| (Some(key), true)).collect();
    assert_eq!(stamps, expected);
}

/// The seed's defect: a SYN-ACK that is lost makes the server retransmit it about 1 s later,
/// which must count as the loss of that attempt, never as a 1 s round trip. nftables in a drops
/// the first SYN-ACK; b's own counter shows it sent the retransmission; ours shows one attempt,
/// lost, and no latency.
#[test]
fn a_retransmitted_syn_ack_is_loss_not_latency() {
    let pair = VethPair::new();
    let _listener = in_netns(&pair.b, || TcpListener::bind("0.0.0.0:8080").unwrap());
    nft(&pair, "add table inet np");
    nft(
        &pair,
        "add chain inet np out { type filter hook output priority 0 ; }",
    );
    nft(
        &pair,
        "add rule inet np out tcp sport 8080 tcp flags & (syn | ack) == syn | ack counter",
    );
    let drop_rule =
        "add rule inet np in tcp sport 8080 tcp flags & (syn | ack) == syn | ack counter drop";
    let a_nft = |command: &str| {
        let args: Vec<&str> = command.split(' ').collect();
        pair.exec(&pair.a, "nft", &args)
    };
    a_nft("add table inet np");
    a_nft("add chain inet np in { type filter hook input priority 0 ; }");
    a_nft(drop_rule);
    // One SYN per 10 s, the default 3 s timeout (capped at 1 s for SYNs).
    let daemon = start(&pair, &["--ping.interval", "10s", "--ping.timeout", "3s"]);
    let b4 = dotted(pair.b_addr);
    let query = format!("target={b4}&tcp_port=8080");
    probe(&daemon, &query);
    thread::sleep(Duration::from_millis(300));
    let ruleset = a_nft("list ruleset");
    assert!(ruleset.contains("counter packets 1 "), "{ruleset}");
    a_nft("flush chain inet np in");
    // b retransmits its SYN-ACK about 1 s after the first; it reaches our socket now.
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        nft_counter(&pair, "sport 8080"),
        2,
        "b should have retransmitted its SYN-ACK"
    );
    let body = probe(&daemon, &query);
    let labels = format!("ip=\"{b4}\",port=\"8080\"");
    assert_eq!(value(&body, "tcp_probe_packets_sent_total", &labels), 1.0);
    assert_eq!(value(&body, "tcp_probe_packets_recv_total", &labels), 0.0);
    assert_eq!(value(&body, "tcp_probe_loss_ratio", &labels), 1.0);
    assert_eq!(value(&body, "tcp_probe_samples_count", &labels), 1.0);
    assert!(
        sample(&body, "tcp_probe_latency_seconds", &labels).is_none(),
        "{body}"
    );
    assert_eq!(value(&body, "tcp_probe_rtt_seconds_count", &labels), 0.0);
}
