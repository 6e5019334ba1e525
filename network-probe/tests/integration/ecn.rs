//! ECN (issue 26) on real traffic, each number against a reference that is not the daemon: the
//! counter of the nft rule that set CE on the packets (`ip ecn set ce`), or a tcpdump capture
//! of the interface (ECN codepoints of every IP packet, ECE and CWR of every TCP segment). Each
//! test runs on a veth pair between two namespaces it creates; the daemon watches end `a`.

use std::{
    io::{Read, Write},
    net::{IpAddr, Shutdown, SocketAddr},
    thread,
};

use network_probe_testkit::{Capture, Daemon, Frame, VethPair, dotted, in_netns, sample};

use crate::flows::{connect, listen};

fn addresses(pair: &VethPair) -> (IpAddr, IpAddr) {
    (
        dotted(pair.a_addr).parse().unwrap(),
        dotted(pair.b_addr).parse().unwrap(),
    )
}

/// The per-flow signal families are opt-in flow families (`--flows.families`).
const FAMILIES: &str =
    "--flows.families=packets,bytes,retransmits,ce_packets,tcp_ece_segments,tcp_cwr_segments";

/// A counter that must be exported (a missing sample is a failure, not a zero).
fn exported(scrape: &str, name: &str, labels: &str) -> u64 {
    sample(scrape, name, labels)
        .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in\n{scrape}")) as u64
}

/// A per-flow signal counter: its series exists once the flow has counted one (absent: 0).
fn flow_signal(scrape: &str, name: &str, labels: &str) -> u64 {
    sample(scrape, name, labels).map_or(0, |value| value as u64)
}

/// One packet per write: offloads off, at most one segment per GSO packet.
fn one_frame_per_packet(pair: &VethPair) {
    pair.disable_offloads();
    for (ns, ifname) in [(&pair.a, &pair.a_if), (&pair.b, &pair.b_if)] {
        pair.exec(
            ns,
            "ip",
            &["link", "set", "dev", ifname, "gso_max_segs", "1"],
        );
    }
}

/// The packets counter of the only counter in nft chain `chain` of table `table` in `ns`.
fn nft_rule_packets(pair: &VethPair, ns: &str, table: &str, chain: &str) -> u64 {
    network_probe_testkit::nft::only_counter_packets(&pair.exec(
        ns,
        "nft",
        &["list", "chain", "ip", table, chain],
    ))
}

/// Messages the client of [`ce_marks_set_by_nft_are_counted_exactly`] sends, each echoed before
/// the next: one data segment each.
const MESSAGES: usize = 7;

/// An nft rule in b's output path sets CE on the data segments of one connection from b to a
/// (`ip ecn set ce`, with a counter); the daemon on a counts exactly the rule's packets as CE
/// on that flow and on the interface's ingress, and none on egress.
#[test]
fn ce_marks_set_by_nft_are_counted_exactly() {
    let pair = VethPair::new();
    one_frame_per_packet(&pair);
    let (a, b) = addresses(&pair);
    let port = 7201;
    let table = "np_ecn";
    for command in [
        vec!["add", "table", "ip", table],
        vec![
            "add", "chain", "ip", table, "out", "{", "type", "filter", "hook", "output",
            "priority", "0", ";", "}",
        ],
    ] {
        pair.exec(&pair.b, "nft", &command);
    }
    let a_text = a.to_string();
    let port_text = port.to_string();
    // Data segments only (an ACK is 52 bytes), of this connection only.
    pair.exec(
        &pair.b,
        "nft",
        &[
            "add", "rule", "ip", table, "out", "ip", "daddr", &a_text, "tcp", "dport", &port_text,
            "ip", "length", ">", "500", "counter", "ip", "ecn", "set", "ce",
        ],
    );
    let daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if, FAMILIES]);

    let server_addr = SocketAddr::new(a, port);
    let listener = in_netns(&pair.a, move || listen(server_addr, None));
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut message = [0u8; 777];
        for _ in 0..MESSAGES {
            stream.read_exact(&mut message).unwrap();
            stream.write_all(b"ok").unwrap();
        }
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
    });
    in_netns(&pair.b, move || {
        let mut stream = connect(server_addr, None).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut reply = [0u8; 2];
        for _ in 0..MESSAGES {
            stream.write_all(&[5u8; 777]).unwrap();
            stream.read_exact(&mut reply).unwrap();
        }
        stream.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
    });
    server.join().unwrap();
    thread::sleep(std::time::Duration::from_millis(200));

    let marked = nft_rule_packets(&pair, &pair.b, table, "out");
    assert!(
        marked >= MESSAGES as u64,
        "the rule marked {marked} packets, fewer than the {MESSAGES} messages"
    );
    let scrape = daemon.scrape();
    let interface = |direction: &str, codepoint: &str| {
        exported(
            &scrape,
            "network_probe_interface_ecn_packets_total",
            &format!(
                "interface=\"{}\",direction=\"{direction}\",codepoint=\"{codepoint}\"",
                pair.a_if
            ),
        )
    };
    assert_eq!(
        interface("ingress", "ce"),
        marked,
        "interface CE vs the rule"
    );
    assert_eq!(interface("egress", "ce"), 0, "nothing marks a's packets");
    // Nobody asked for ECN: everything else is not-ECT, every packet counted once.
    for direction in ["ingress", "egress"] {
        let packets = exported(
            &scrape,
            "network_probe_interface_packets_total",
            &format!("interface=\"{}\",direction=\"{direction}\"", pair.a_if),
        );
        assert_eq!(
            interface(direction, "not_ect") + interface(direction, "ce"),
            packets,
            "{direction}: codepoints vs packets"
        );
        assert_eq!(interface(direction, "ect0"), 0, "{direction}");
        assert_eq!(interface(direction, "ect1"), 0, "{direction}");
    }
    let flow = |src: IpAddr, dst: IpAddr| {
        format!("interface=\"{}\",src=\"{src}\",dst=\"{dst}\"", pair.a_if)
    };
    assert_eq!(
        flow_signal(&scrape, "network_probe_flow_ce_packets_total", &flow(b, a)),
        marked,
        "flow CE vs the rule"
    );
    assert_eq!(
        flow_signal(&scrape, "network_probe_flow_ce_packets_total", &flow(a, b)),
        0
    );
}

/// Connections of [`ce_marks_beyond_the_budget_fold_into_other`], each from its own port; more
/// than [`BUDGET`].
const CONNECTIONS: u16 = 6;
/// `--flows.max-series` of that test.
const BUDGET: usize = 2;

/// Every sample of the flow family `name`: (labels, value).
fn flow_rows(scrape: &str, name: &str) -> Vec<(String, u64)> {
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .map(|rest| {
            let (labels, value) = rest.rsplit_once("} ").expect("a sample line");
            (
                labels.to_string(),
                value.parse::<f64>().expect("a value") as u64,
            )
        })
        .collect()
}

/// The per-flow CE family under the series budget: an nft rule marks CE on every packet from b
/// to one port of a, over more connections (label sets: the source port is a label) than the
/// budget has places. At most the budget's series have CE rows of their own, the interface's
/// `other` row has the rest, and the rows sum to the interface's CE counter, which equals the
/// rule's; each flow's CE row is the row of its packets.
#[test]
fn ce_marks_beyond_the_budget_fold_into_other() {
    let pair = VethPair::new();
    one_frame_per_packet(&pair);
    let (a, b) = addresses(&pair);
    let port = 7203;
    let table = "np_ecn_budget";
    for command in [
        vec!["add", "table", "ip", table],
        vec![
            "add", "chain", "ip", table, "out", "{", "type", "filter", "hook", "output",
            "priority", "0", ";", "}",
        ],
    ] {
        pair.exec(&pair.b, "nft", &command);
    }
    let (a_text, port_text) = (a.to_string(), port.to_string());
    pair.exec(
        &pair.b,
        "nft",
        &[
            "add", "rule", "ip", table, "out", "ip", "daddr", &a_text, "tcp", "dport", &port_text,
            "counter", "ip", "ecn", "set", "ce",
        ],
    );
    let budget = BUDGET.to_string();
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--flows.labels=interface,src,dst,src_port",
            "--flows.max-series",
            &budget,
            "--flows.families=packets,ce_packets",
        ],
    );

    let server_addr = SocketAddr::new(a, port);
    let listener = in_netns(&pair.a, move || listen(server_addr, None));
    let server = thread::spawn(move || {
        for _ in 0..CONNECTIONS {
            let (mut stream, _) = listener.accept().unwrap();
            let mut message = [0u8; 300];
            stream.read_exact(&mut message).unwrap();
            stream.write_all(b"ok").unwrap();
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).unwrap();
        }
    });
    in_netns(&pair.b, move || {
        for _ in 0..CONNECTIONS {
            let mut stream = connect(server_addr, None).unwrap();
            stream.write_all(&[5u8; 300]).unwrap();
            let mut reply = [0u8; 2];
            stream.read_exact(&mut reply).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).unwrap();
        }
    });
    server.join().unwrap();
    thread::sleep(std::time::Duration::from_millis(200));

    let marked = nft_rule_packets(&pair, &pair.b, table, "out");
    assert!(
        marked >= 3 * u64::from(CONNECTIONS),
        "the rule marked {marked} packets"
    );
    let scrape = daemon.scrape();
    let interface_ce = exported(
        &scrape,
        "network_probe_interface_ecn_packets_total",
        &format!(
            "interface=\"{}\",direction=\"ingress\",codepoint=\"ce\"",
            pair.a_if
        ),
    );
    assert_eq!(interface_ce, marked, "interface CE vs the rule");
    let rows = flow_rows(&scrape, "network_probe_flow_ce_packets_total");
    let other_labels = format!(
        "interface=\"{}\",src=\"other\",dst=\"other\",src_port=\"other\"",
        pair.a_if
    );
    let own: Vec<&(String, u64)> = rows
        .iter()
        .filter(|(labels, _)| *labels != other_labels)
        .collect();
    assert!(
        own.len() <= BUDGET,
        "{} CE rows of their own, budget {BUDGET}: {rows:?}",
        own.len()
    );
    let other = rows
        .iter()
        .find(|(labels, _)| *labels == other_labels)
        .map(|(_, value)| *value)
        .unwrap_or_else(|| panic!("no other row in {rows:?}"));
    assert!(
        other > 0,
        "the other row carries the flows beyond the budget"
    );
    assert_eq!(
        rows.iter().map(|(_, value)| value).sum::<u64>(),
        interface_ce,
        "the CE rows sum to the interface's CE counter: {rows:?}"
    );
    // A flow's CE row is the row of its packets: every row of its own from b carries both.
    let packets = flow_rows(&scrape, "network_probe_flow_packets_total");
    for (labels, ce) in &own {
        let flow_packets = packets
            .iter()
            .find(|(other, _)| other == labels)
            .map(|(_, value)| *value)
            .unwrap_or_else(|| panic!("no packets row {labels} in {packets:?}"));
        assert!(
            labels.contains(&format!("src=\"{b}\"")) && *ce <= flow_packets,
            "{labels}: {ce} CE of {flow_packets} packets"
        );
    }
    assert_eq!(
        sample(&scrape, "network_probe_flow_series_admitted", "").map(|v| v as usize),
        Some(BUDGET)
    );
}

/// ECN fields of a captured IP frame: (codepoint, TCP flags if TCP). IPv4: the low two bits of
/// the TOS byte; IPv6: of the traffic class, which spans the header's first two bytes (TCP
/// right after the fixed header here: the test's segments carry no extension header).
fn ecn_of(frame: &Frame) -> (u8, Option<u8>) {
    let ip = frame.ip().unwrap_or_else(|| panic!("non-IP {frame:?}"));
    let data = &frame.data;
    let (codepoint, l4) = match ip.src {
        IpAddr::V4(_) => (data[15] & 3, 14 + usize::from(data[14] & 0x0f) * 4),
        IpAddr::V6(_) => ((data[15] >> 4) & 3, 54),
    };
    let flags = (ip.protocol == 6).then(|| data[l4 + 13]);
    (codepoint, flags)
}

/// A sender with `net.ipv4.tcp_ecn=1` in its namespace (it applies to IPv6 too) negotiates ECN
/// with a (which accepts it, the default 2): its data segments and a's are ECT(0). Every IP
/// packet's codepoint, both directions, counted equal to the capture of the same interface;
/// ECE and CWR per flow direction equal to the capture's TCP flags.
fn ect0_traffic_is_counted_as_the_capture_shows(ipv6: bool) {
    let pair = VethPair::new();
    one_frame_per_packet(&pair);
    pair.exec(&pair.b, "sysctl", &["-qw", "net.ipv4.tcp_ecn=1"]);
    let (a, b) = if ipv6 {
        pair.enable_ipv6();
        (pair.a6().parse().unwrap(), pair.b6().parse().unwrap())
    } else {
        addresses(&pair)
    };
    let daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if, FAMILIES]);
    let capture = Capture::start(&pair.a, &pair.a_if);
    // The interface counters are compared as the difference of two scrapes with the frames the
    // capture stamped between them: the link's own ICMPv6 (router solicitations, MLD reports
    // after IPv6 comes up) goes out at moments of its own, and one sent while the daemon
    // started but before the capture did was once counted but not captured (6.1 guest).
    let before = daemon.scrape();
    let from_ns = now_ns();

    let server_addr = SocketAddr::new(a, 7202);
    let listener = in_netns(&pair.a, move || listen(server_addr, None));
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        stream.write_all(&vec![7u8; 20_000]).unwrap();
        received.len()
    });
    in_netns(&pair.b, move || {
        let mut stream = connect(server_addr, None).unwrap();
        stream.write_all(&vec![6u8; 200_000]).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        assert_eq!(reply.len(), 20_000);
    });
    assert_eq!(server.join().unwrap(), 200_000);
    // The connection's last ACKs out before the window closes.
    thread::sleep(std::time::Duration::from_millis(300));
    let to_ns = now_ns();
    let scrape = daemon.scrape();
    let frames = capture.finish_frames();

    // A frame's direction from its source MAC: with IPv6 on, the capture also holds the link's
    // own ICMPv6 (link-local sources), which the interface counters count too.
    let a_mac: Vec<u8> = pair
        .mac(&pair.a, &pair.a_if)
        .split(':')
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect();
    for (direction, src, dst) in [("egress", a, b), ("ingress", b, a)] {
        let sent_by_a = direction == "egress";
        let all: Vec<(u8, Option<u8>)> = frames
            .iter()
            .filter(|frame| frame.time_ns > from_ns && frame.time_ns < to_ns)
            .filter(|frame| frame.ip().is_some() && (frame.data[6..12] == a_mac[..]) == sent_by_a)
            .map(ecn_of)
            .collect();
        let mine: Vec<(u8, Option<u8>)> = frames
            .iter()
            .filter(|frame| frame.ip().map(|ip| ip.src) == Some(src))
            .map(ecn_of)
            .collect();
        eprintln!(
            "{direction}: {} IP packets, {} from {src}, {} ECT(0)",
            all.len(),
            mine.len(),
            all.iter().filter(|(cp, _)| *cp == 2).count()
        );
        for (value, codepoint) in ["not_ect", "ect1", "ect0", "ce"].iter().enumerate() {
            let captured = all.iter().filter(|(cp, _)| *cp == value as u8).count() as u64;
            let labels = format!(
                "interface=\"{}\",direction=\"{direction}\",codepoint=\"{codepoint}\"",
                pair.a_if
            );
            let family = "network_probe_interface_ecn_packets_total";
            let counted = exported(&scrape, family, &labels) - exported(&before, family, &labels);
            assert_eq!(counted, captured, "{direction} {codepoint} vs the capture");
            if *codepoint == "ect0" {
                assert!(
                    captured > 10,
                    "{direction}: ECN was negotiated ({captured} ECT(0))"
                );
            }
        }
        let labels = format!("interface=\"{}\",src=\"{src}\",dst=\"{dst}\"", pair.a_if);
        for (bit, name) in [
            (0x40u8, "network_probe_flow_tcp_ece_segments_total"),
            (0x80, "network_probe_flow_tcp_cwr_segments_total"),
        ] {
            let captured = mine
                .iter()
                .filter(|(_, flags)| flags.is_some_and(|flags| flags & bit != 0))
                .count() as u64;
            assert_eq!(
                flow_signal(&scrape, name, &labels),
                captured,
                "{direction} {name} vs the capture"
            );
        }
    }
    // The ECN-setup SYN carries ECE and CWR, the SYN-ACK ECE: both families have samples.
    let b_to_a = format!("interface=\"{}\",src=\"{b}\",dst=\"{a}\"", pair.a_if);
    assert!(
        flow_signal(
            &scrape,
            "network_probe_flow_tcp_cwr_segments_total",
            &b_to_a
        ) >= 1
    );
}

#[test]
fn ect0_traffic_over_ipv4_is_counted_as_the_capture_shows() {
    ect0_traffic_is_counted_as_the_capture_shows(false);
}

#[test]
fn ect0_traffic_over_ipv6_is_counted_as_the_capture_shows() {
    ect0_traffic_is_counted_as_the_capture_shows(true);
}

/// CLOCK_REALTIME in nanoseconds since the Unix epoch, the clock of the capture's stamps.
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos()
}
