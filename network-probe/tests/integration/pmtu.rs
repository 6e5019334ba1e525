//! Path-MTU messages (issue 26) on forwarded traffic: a sender, a router and a far host in three
//! namespaces, the router's far link with a smaller MTU, TCP from the sender (Don't Fragment,
//! as path-MTU discovery sends) through the router; the daemon on the router watches the
//! interface facing the sender, where the router's fragmentation-needed / packet-too-big
//! messages leave. Counts, announced MTUs and the quoted flow against a tcpdump capture of the
//! same interface, IPv4 and IPv6.

use std::{
    io::{Read, Write},
    net::{IpAddr, Shutdown, SocketAddr},
    thread,
};

use network_probe_common::{PMTU_BOUNDS, pmtu_bucket};
use network_probe_testkit::{Capture, Daemon, Frame, Routed, in_netns, sample};

use crate::flows::{connect, histogram_buckets, listen};

/// The far link's MTU (IPv6's minimum, so both families use it).
const FAR_MTU: u32 = 1280;

/// A path-MTU message in a captured frame: (announced MTU, quoted (src, dst, TCP ports)).
fn pmtu_message(frame: &Frame) -> Option<(u32, IpAddr, IpAddr, (u16, u16))> {
    let ip = frame.ip()?;
    let data = &frame.data;
    let be16 = |at: usize| u16::from_be_bytes([data[at], data[at + 1]]);
    match (ip.src, ip.protocol) {
        (IpAddr::V4(_), 1) => {
            let l4 = 14 + usize::from(data[14] & 0x0f) * 4;
            if data[l4] != 3 || data[l4 + 1] != 4 {
                return None;
            }
            let quoted = l4 + 8;
            let ihl = usize::from(data[quoted] & 0x0f) * 4;
            assert_eq!(data[quoted + 9], 6, "the quoted packet is TCP");
            let octets = |at: usize| -> [u8; 4] { data[at..at + 4].try_into().unwrap() };
            Some((
                u32::from(be16(l4 + 6)),
                octets(quoted + 12).into(),
                octets(quoted + 16).into(),
                (be16(quoted + ihl), be16(quoted + ihl + 2)),
            ))
        }
        (IpAddr::V6(_), 58) => {
            let l4 = 54;
            if data[l4] != 2 {
                return None;
            }
            let quoted = l4 + 8;
            assert_eq!(data[quoted + 6], 6, "the quoted packet is TCP");
            let octets = |at: usize| -> [u8; 16] { data[at..at + 16].try_into().unwrap() };
            Some((
                u32::from_be_bytes(data[l4 + 4..l4 + 8].try_into().unwrap()),
                octets(quoted + 8).into(),
                octets(quoted + 24).into(),
                (be16(quoted + 40), be16(quoted + 42)),
            ))
        }
        _ => None,
    }
}

fn path_mtu_messages_match_the_capture(ipv6: bool) {
    let routed = Routed::new("m", 77, FAR_MTU);
    // No rate limit on the router's ICMP errors: every packet too big gets its message.
    routed.exec(&routed.r, "sysctl", &["-qw", "net.ipv4.icmp_ratelimit=0"]);
    routed.exec(&routed.r, "sysctl", &["-qw", "net.ipv6.icmp.ratelimit=0"]);
    let (sender, far): (IpAddr, IpAddr) = if ipv6 {
        ("fd77:1::1".parse().unwrap(), "fd77:2::1".parse().unwrap())
    } else {
        ("10.77.1.1".parse().unwrap(), "10.77.2.1".parse().unwrap())
    };
    // The per-flow family is opt-in (`--flows.families`).
    let daemon = Daemon::start(
        &routed.r,
        &[
            "--interface",
            &routed.r_s,
            "--flows.families=packets,bytes,retransmits,pmtu_messages",
        ],
    );
    let capture = Capture::start(&routed.r, &routed.r_s);

    let server_addr = SocketAddr::new(far, 7301);
    let listener = in_netns(&routed.f, move || listen(server_addr, None));
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        received.len()
    });
    in_netns(&routed.s, move || {
        let mut stream = connect(server_addr, None).unwrap();
        stream.write_all(&vec![9u8; 300_000]).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
    });
    assert_eq!(server.join().unwrap(), 300_000);
    let frames = capture.finish_frames();
    let scrape = daemon.scrape();

    let messages: Vec<(u32, IpAddr, IpAddr, (u16, u16))> =
        frames.iter().filter_map(pmtu_message).collect();
    assert!(
        !messages.is_empty(),
        "the router sent no path-MTU message: the test shows nothing"
    );
    eprintln!(
        "{} path-MTU messages in the capture ({})",
        messages.len(),
        if ipv6 { "IPv6" } else { "IPv4" }
    );
    for (mtu, src, dst, (_, dst_port)) in &messages {
        assert_eq!(*mtu, FAR_MTU);
        assert_eq!((*src, *dst, *dst_port), (sender, far, 7301));
    }
    let labels =
        |direction: &str| format!("interface=\"{}\",direction=\"{direction}\"", routed.r_s);
    let counted = |direction: &str| {
        sample(
            &scrape,
            "network_probe_interface_pmtu_messages_total",
            &labels(direction),
        )
        .unwrap_or_else(|| panic!("no pmtu messages sample in\n{scrape}")) as usize
    };
    assert_eq!(
        counted("egress"),
        messages.len(),
        "egress messages vs the capture"
    );
    assert_eq!(counted("ingress"), 0, "none arrive from the sender");
    let name = "network_probe_interface_pmtu_announced_bytes";
    let buckets = histogram_buckets(&scrape, name, &labels("egress"));
    assert_eq!(buckets.len(), PMTU_BOUNDS.len() + 1, "{buckets:?}");
    for (bound, count) in buckets {
        let expected = messages
            .iter()
            .filter(|(mtu, ..)| f64::from(*mtu) <= bound)
            .count();
        assert_eq!(count, expected as u64, "announced MTUs <= {bound}");
    }
    assert_eq!(
        sample(&scrape, &format!("{name}_sum"), &labels("egress")),
        Some(
            messages
                .iter()
                .map(|(mtu, ..)| f64::from(*mtu))
                .sum::<f64>()
        )
    );
    assert_eq!(pmtu_bucket(FAR_MTU), 2);
    // The quoted flow: the sender's data direction as it entered the router.
    let flow = format!(
        "interface=\"{}\",src=\"{sender}\",dst=\"{far}\"",
        routed.r_s
    );
    assert_eq!(
        sample(&scrape, "network_probe_flow_pmtu_messages_total", &flow),
        Some(messages.len() as f64),
        "per-flow messages vs the capture"
    );
}

#[test]
fn ipv4_fragmentation_needed_matches_the_capture() {
    path_mtu_messages_match_the_capture(false);
}

#[test]
fn ipv6_packet_too_big_matches_the_capture() {
    path_mtu_messages_match_the_capture(true);
}
