//! Malformed and unusual frames through the real ingress programs (`tc_ingress` and
//! `xdp_ingress`) with BPF_PROG_TEST_RUN: truncation at every length, out-of-range IPv4 header
//! lengths and TCP data offsets, IPv6 extension-header chains, VLAN stacks, fragments and TCP
//! option lists around window scale.
//!
//! For every frame, each program must return "continue" (TC_ACT_UNSPEC / XDP_PASS), leave the
//! frame byte for byte as it was, and move exactly the expected counters of `lo`'s ingress
//! statistics: one packet of the frame's length, classified either as TCP (creating exactly
//! the expected flow entry, with the expected window scale) or as unclassified for exactly the
//! expected reason. Nothing is attached to any interface.

use aya::programs::ProgramError;
use network_probe_common::{
    DeviceStats, FAMILY_IPV4, FAMILY_IPV6, UNCLASSIFIED_REASONS, Unclassified,
};
use network_probe_testkit::testrun::*;

/// The programs every frame goes through, with the return value meaning "continue".
const PROGRAMS: [(&str, u32); 2] = [
    // TC_ACT_UNSPEC is -1; the test run reports the return value as u32.
    ("tc_ingress", -1i32 as u32),
    // XDP_PASS.
    ("xdp_ingress", 2),
];

/// What the datapath should make of a frame.
#[derive(Clone, Debug)]
enum Expect {
    Tcp(TcpExpect),
    Unclassified(Unclassified),
}

/// A frame classified as TCP.
#[derive(Clone, Debug)]
struct TcpExpect {
    /// The TCP header the frame carries (its ports name the flow).
    header: Tcp,
    family: u8,
    /// IP length the datapath must observe: the header's length field, or the bytes present
    /// when the frame is shorter.
    ip_len: usize,
    payload_len: usize,
    /// Window scale shift plus one the flow entry must hold (0: none).
    window_scale_plus_one: u8,
}

impl TcpExpect {
    /// A complete IPv4 or IPv6 packet carrying `header` and `payload_len` bytes of payload
    /// behind `ip_headers` bytes of IP headers.
    fn new(header: &Tcp, family: u8, ip_headers: usize, payload_len: usize) -> Self {
        TcpExpect {
            header: header.clone(),
            family,
            ip_len: ip_headers + header.header_len() + payload_len,
            payload_len,
            window_scale_plus_one: 0,
        }
    }

    fn window_scale(mut self, plus_one: u8) -> Self {
        self.window_scale_plus_one = plus_one;
        self
    }
}

/// The counters of one interface and direction a single frame may move.
#[derive(Debug, PartialEq, Eq)]
struct Delta {
    packets: u64,
    bytes: u64,
    tcp_packets: u64,
    tcp_syn: u64,
    unclassified: [u64; UNCLASSIFIED_REASONS],
    flows_created: u64,
    flow_create_failures: u64,
    tcp_payload_observations: u64,
    tcp_payload_sum: u64,
}

impl Delta {
    fn between(before: &DeviceStats, after: &DeviceStats) -> Self {
        let observations = |stats: &DeviceStats| stats.tcp_payload_size.iter().sum::<u64>();
        Delta {
            packets: after.packets - before.packets,
            bytes: after.bytes - before.bytes,
            tcp_packets: after.tcp_packets - before.tcp_packets,
            tcp_syn: after.tcp_syn - before.tcp_syn,
            unclassified: std::array::from_fn(|i| after.unclassified[i] - before.unclassified[i]),
            flows_created: after.flows_created - before.flows_created,
            flow_create_failures: after.flow_create_failures - before.flow_create_failures,
            tcp_payload_observations: observations(after) - observations(before),
            tcp_payload_sum: after.tcp_payload_sum - before.tcp_payload_sum,
        }
    }

    /// The delta one frame of `len` bytes must cause.
    fn expected(len: usize, expect: &Expect) -> Self {
        let mut delta = Delta {
            packets: 1,
            bytes: len as u64,
            tcp_packets: 0,
            tcp_syn: 0,
            unclassified: [0; UNCLASSIFIED_REASONS],
            flows_created: 0,
            flow_create_failures: 0,
            tcp_payload_observations: 0,
            tcp_payload_sum: 0,
        };
        match expect {
            Expect::Unclassified(reason) => delta.unclassified[*reason as usize] = 1,
            Expect::Tcp(tcp) => {
                delta.tcp_packets = 1;
                delta.tcp_syn = u64::from(tcp.header.flags & TCP_SYN != 0);
                delta.flows_created = 1;
                delta.tcp_payload_observations = 1;
                delta.tcp_payload_sum = tcp.payload_len as u64;
            }
        }
        delta
    }
}

/// Runs `frame` through every program of [`PROGRAMS`] and asserts the outcome. The flow map is
/// empty before each run and emptied after it, so cases cannot interfere.
fn check(datapath: &mut TestRunDatapath, case: &str, frame: &[u8], expect: &Expect) {
    for (program, pass) in PROGRAMS {
        let context = format!("{case}: {} bytes through {program}", frame.len());
        assert_eq!(datapath.flow_keys(), [], "{context}: flow map not empty");
        let before = datapath.ingress_stats();
        let result = datapath.run(program, frame, 1);

        if test_run_refuses(program, frame) {
            match result {
                Err(ProgramError::SyscallError(err))
                    if err.io_error.raw_os_error() == Some(libc::EINVAL) => {}
                other => panic!("{context}: expected EINVAL from the kernel, got {other:?}"),
            }
            assert_eq!(datapath.ingress_stats(), before, "{context}");
            continue;
        }

        let run = result.unwrap_or_else(|err| panic!("{context}: test run failed: {err:?}"));
        assert_eq!(run.return_value, pass, "{context}: return value");
        assert!(run.data_out == frame, "{context}: the frame was modified");
        let after = datapath.ingress_stats();
        assert_eq!(
            Delta::between(&before, &after),
            Delta::expected(frame.len(), expect),
            "{context}: counters (expected {expect:?})"
        );

        let flows = datapath.flow_keys();
        match expect {
            Expect::Unclassified(_) => assert_eq!(flows, [], "{context}: flow created"),
            Expect::Tcp(tcp) => {
                let key = tcp.header.flow_key(datapath.ifindex, tcp.family);
                assert_eq!(flows, [key], "{context}: flow entries");
                let flow = datapath.flow(&key).expect("flow entry");
                assert_eq!(
                    (
                        flow.counts.packets,
                        flow.counts.bytes,
                        flow.tracking.window_scale_plus_one,
                    ),
                    (1, frame.len() as u64, tcp.window_scale_plus_one),
                    "{context}: flow (packets, bytes, window scale + 1)"
                );
                assert_eq!(
                    after.ip_size_sum - before.ip_size_sum,
                    tcp.ip_len as u64,
                    "{context}: observed IP length"
                );
                datapath.remove_flow(&key);
            }
        }
    }
}

/// Whether the kernel refuses `frame` as test-run input for `program` (measured on Linux
/// 6.18): for both hooks a frame shorter than an Ethernet header (for XDP even behind
/// metadata); for TC also an untagged IPv4 or IPv6 frame too short for the fixed IP header.
/// Those frames never reach the program, so the runs that do reach it cover these lengths: XDP
/// for every length from 14 bytes on, TC through VLAN-tagged frames.
fn test_run_refuses(program: &str, frame: &[u8]) -> bool {
    let ethertype = frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let ip_minimum = match ethertype {
        Some(ETH_P_IP) => ETH_HLEN + 20,
        Some(ETH_P_IPV6) => ETH_HLEN + 40,
        _ => ETH_HLEN,
    };
    frame.len() < ETH_HLEN || (program == "tc_ingress" && frame.len() < ip_minimum)
}

fn load() -> TestRunDatapath {
    TestRunDatapath::load(&PROGRAMS.map(|(program, _)| program))
}

fn ipv4_frame(tags: &[u16], ip: &Ipv4, l4: &[u8]) -> Vec<u8> {
    ethernet(tags, ETH_P_IP, &ip.packet(l4))
}

fn ipv6_frame(tags: &[u16], next_header: u8, payload: &[u8]) -> Vec<u8> {
    ethernet(tags, ETH_P_IPV6, &ipv6(next_header, None, payload))
}

/// Options of a Linux SYN: MSS, SACK permitted, timestamps, NOP, window scale `shift`.
fn linux_syn_options(shift: u8) -> Vec<u8> {
    [
        &TCP_MSS_1460[..],
        &TCP_SACK_PERMITTED,
        &TCP_TIMESTAMPS,
        &[TCP_NOP],
        &tcp_window_scale(shift),
    ]
    .concat()
}

/// Where the headers of a frame end, for the expected reason at each truncated length.
struct Layout {
    /// Ethernet header and tags.
    l2: usize,
    /// IP header with options / extension headers.
    ip_headers: usize,
}

/// Truncates `frame` (a complete TCP packet as `full` describes) at every length from 0 to its
/// full length and checks each.
fn check_every_truncation(
    datapath: &mut TestRunDatapath,
    case: &str,
    frame: &[u8],
    layout: &Layout,
    full: &TcpExpect,
) {
    let tcp_end = layout.l2 + layout.ip_headers + full.header.header_len();
    for len in 0..=frame.len() {
        let expect = if len < layout.l2 {
            Expect::Unclassified(Unclassified::TruncatedL2)
        } else if len < layout.l2 + layout.ip_headers {
            Expect::Unclassified(Unclassified::TruncatedIp)
        } else if len < tcp_end {
            Expect::Unclassified(Unclassified::TruncatedTcp)
        } else {
            // The IP length field claims the full packet: the datapath trusts the bytes present.
            Expect::Tcp(TcpExpect {
                ip_len: full.ip_len.min(len - layout.l2),
                payload_len: full.payload_len.min(len - tcp_end),
                ..full.clone()
            })
        };
        check(
            datapath,
            &format!("{case} truncated to {len}"),
            &frame[..len],
            &expect,
        );
    }
}

#[test]
fn ipv4_tcp_truncated_at_every_length() {
    let mut datapath = load();
    // IPv4 with a Router Alert option, a Linux SYN with five options, and some payload.
    let ip = Ipv4 {
        options: vec![0x94, 4, 0, 0],
        ..Ipv4::default()
    };
    let tcp = Tcp {
        flags: TCP_SYN,
        options: linux_syn_options(7),
        ..Tcp::default()
    };
    let payload = [0xab; 16];
    let frame = ipv4_frame(&[], &ip, &tcp.segment(&payload));
    let layout = Layout {
        l2: 14,
        ip_headers: 24,
    };
    let full = TcpExpect::new(&tcp, FAMILY_IPV4, 24, payload.len()).window_scale(8);
    check_every_truncation(&mut datapath, "IPv4/TCP SYN", &frame, &layout, &full);

    // Behind two VLAN tags, a plain ACK with payload.
    let tcp = Tcp::default();
    let frame = ipv4_frame(
        &[ETH_P_8021AD, ETH_P_8021Q],
        &Ipv4::default(),
        &tcp.segment(&payload),
    );
    let layout = Layout {
        l2: 22,
        ip_headers: 20,
    };
    let full = TcpExpect::new(&tcp, FAMILY_IPV4, 20, payload.len());
    check_every_truncation(&mut datapath, "QinQ IPv4/TCP ACK", &frame, &layout, &full);
}

#[test]
fn ipv6_tcp_truncated_at_every_length() {
    let mut datapath = load();
    // IPv6 with a destination options header, a Linux SYN and some payload.
    let tcp = Tcp {
        flags: TCP_SYN,
        options: linux_syn_options(9),
        ..Tcp::default()
    };
    let payload = [0xcd; 16];
    let l4 = [ipv6_extension(IPPROTO_TCP, 1), tcp.segment(&payload)].concat();
    let frame = ipv6_frame(&[], IPV6_DEST_OPTS, &l4);
    let layout = Layout {
        l2: 14,
        ip_headers: 48,
    };
    let full = TcpExpect::new(&tcp, FAMILY_IPV6, 48, payload.len()).window_scale(10);
    check_every_truncation(&mut datapath, "IPv6/TCP SYN", &frame, &layout, &full);

    // Behind one VLAN tag, no extension header.
    let tcp = Tcp::default();
    let frame = ipv6_frame(&[ETH_P_8021Q], IPPROTO_TCP, &tcp.segment(&payload));
    let layout = Layout {
        l2: 18,
        ip_headers: 40,
    };
    let full = TcpExpect::new(&tcp, FAMILY_IPV6, 40, payload.len());
    check_every_truncation(&mut datapath, "VLAN IPv6/TCP ACK", &frame, &layout, &full);
}

#[test]
fn ipv4_header_length_out_of_range() {
    let mut datapath = load();
    let tcp = Tcp::default();
    let segment = tcp.segment(&[1, 2, 3, 4]);
    let bad = Expect::Unclassified(Unclassified::BadIpHeader);

    for ihl in 0..5 {
        let ip = Ipv4 {
            ihl: Some(ihl),
            ..Ipv4::default()
        };
        let frame = ipv4_frame(&[], &ip, &segment);
        check(&mut datapath, &format!("IHL {ihl}"), &frame, &bad);
    }

    // IHL 15 (60 bytes) in a 44-byte packet whose length field agrees with the frame.
    let ip = Ipv4 {
        ihl: Some(15),
        ..Ipv4::default()
    };
    let frame = ipv4_frame(&[], &ip, &segment);
    check(&mut datapath, "IHL past the packet", &frame, &bad);

    // IHL 6 in a packet whose length field (22) ends inside the header; the frame goes on.
    let ip = Ipv4 {
        options: vec![1, 1, 1, 0],
        total_len: Some(22),
        ..Ipv4::default()
    };
    let frame = ipv4_frame(&[], &ip, &segment);
    check(&mut datapath, "IHL past the total length", &frame, &bad);

    // IHL 15, and a length field claiming more than the frame holds: the frame is cut short.
    let ip = Ipv4 {
        ihl: Some(15),
        total_len: Some(200),
        ..Ipv4::default()
    };
    let frame = ipv4_frame(&[], &ip, &segment);
    check(
        &mut datapath,
        "IHL past a cut frame",
        &frame,
        &Expect::Unclassified(Unclassified::TruncatedIp),
    );

    // The version field disagrees with the EtherType, both ways.
    let ip = Ipv4 {
        version: Some(6),
        ..Ipv4::default()
    };
    check(
        &mut datapath,
        "IPv4 EtherType, version 6",
        &ipv4_frame(&[], &ip, &segment),
        &bad,
    );
    let mut packet = ipv6(IPPROTO_TCP, None, &segment);
    packet[0] = 0x45;
    check(
        &mut datapath,
        "IPv6 EtherType, version 4",
        &ethernet(&[], ETH_P_IPV6, &packet),
        &bad,
    );

    // The longest valid header (40 bytes of options) is skipped correctly.
    let ip = Ipv4 {
        options: [vec![TCP_NOP; 39], vec![0]].concat(),
        ..Ipv4::default()
    };
    let frame = ipv4_frame(&[], &ip, &segment);
    let expect = Expect::Tcp(TcpExpect::new(&tcp, FAMILY_IPV4, 60, 4));
    check(&mut datapath, "IHL 15 with options", &frame, &expect);
}

#[test]
fn tcp_data_offset_out_of_range() {
    let mut datapath = load();
    let bad = Expect::Unclassified(Unclassified::BadTcpHeader);
    let payload = [7u8; 20];
    for data_offset in 0..5 {
        let tcp = Tcp {
            data_offset: Some(data_offset),
            ..Tcp::default()
        };
        let segment = tcp.segment(&payload);
        let name = format!("IPv4, data offset {data_offset}");
        check(
            &mut datapath,
            &name,
            &ipv4_frame(&[], &Ipv4::default(), &segment),
            &bad,
        );
        let name = format!("IPv6, data offset {data_offset}");
        check(
            &mut datapath,
            &name,
            &ipv6_frame(&[], IPPROTO_TCP, &segment),
            &bad,
        );
    }

    // Data offset 15 (60 bytes) in a 20-byte segment and in a 40-byte one.
    for payload_len in [0, 20] {
        let tcp = Tcp {
            data_offset: Some(15),
            ..Tcp::default()
        };
        let segment = tcp.segment(&payload[..payload_len]);
        let name = format!("IPv4, data offset past a {}-byte segment", segment.len());
        check(
            &mut datapath,
            &name,
            &ipv4_frame(&[], &Ipv4::default(), &segment),
            &bad,
        );
        let name = format!("IPv6, data offset past a {}-byte segment", segment.len());
        check(
            &mut datapath,
            &name,
            &ipv6_frame(&[], IPPROTO_TCP, &segment),
            &bad,
        );
    }

    // Ethernet padding is not TCP: a 40-byte IPv4/TCP packet padded to a 60-byte frame has no
    // payload.
    let tcp = Tcp::default();
    let mut frame = ipv4_frame(&[], &Ipv4::default(), &tcp.segment(&[]));
    frame.resize(60, 0);
    let expect = Expect::Tcp(TcpExpect::new(&tcp, FAMILY_IPV4, 20, 0));
    check(&mut datapath, "padded minimum frame", &frame, &expect);
    // An IP length (30) that ends inside the TCP header makes it bad, whether the frame ends
    // there too or goes on with the rest of the header.
    let ip = Ipv4 {
        total_len: Some(30),
        ..Ipv4::default()
    };
    let frame = ipv4_frame(&[], &ip, &tcp.segment(&[]));
    check(
        &mut datapath,
        "TCP header cut by the IP length, frame goes on",
        &frame,
        &bad,
    );
    check(
        &mut datapath,
        "TCP header cut by the IP length, frame ends there",
        &frame[..ETH_HLEN + 30],
        &bad,
    );
}

#[test]
fn ipv6_extension_header_chains() {
    let mut datapath = load();
    let tcp = Tcp::default();
    let segment = tcp.segment(&[9; 12]);

    // Hop-by-hop, routing, destination options, TCP.
    let chain = [
        ipv6_extension(IPV6_ROUTING, 1),
        ipv6_extension(IPV6_DEST_OPTS, 2),
        ipv6_extension(IPPROTO_TCP, 1),
        segment.clone(),
    ]
    .concat();
    let expect = Expect::Tcp(TcpExpect::new(&tcp, FAMILY_IPV6, 40 + 32, 12));
    check(
        &mut datapath,
        "hop-by-hop, routing, destination options",
        &ipv6_frame(&[], IPV6_HOP_BY_HOP, &chain),
        &expect,
    );

    // Hop-by-hop, authentication header, destination options, TCP.
    let chain = [
        ipv6_extension(IPV6_AH, 1),
        ipv6_auth_header(IPV6_DEST_OPTS),
        ipv6_extension(IPPROTO_TCP, 1),
        segment.clone(),
    ]
    .concat();
    let expect = Expect::Tcp(TcpExpect::new(&tcp, FAMILY_IPV6, 40 + 32, 12));
    check(
        &mut datapath,
        "hop-by-hop, AH, destination options",
        &ipv6_frame(&[], IPV6_HOP_BY_HOP, &chain),
        &expect,
    );

    // One 2 KiB hop-by-hop header.
    let chain = [ipv6_extension(IPPROTO_TCP, 255), segment.clone()].concat();
    let expect = Expect::Tcp(TcpExpect::new(&tcp, FAMILY_IPV6, 40 + 2040, 12));
    check(
        &mut datapath,
        "2040-byte hop-by-hop header",
        &ipv6_frame(&[], IPV6_HOP_BY_HOP, &chain),
        &expect,
    );

    // Chains of n destination options headers: the parser walks 8.
    let chain_of = |n: usize| {
        let mut chain: Vec<u8> = (1..n)
            .flat_map(|_| ipv6_extension(IPV6_DEST_OPTS, 1))
            .collect();
        chain.extend(ipv6_extension(IPPROTO_TCP, 1));
        chain.extend(&segment);
        ipv6_frame(&[], IPV6_DEST_OPTS, &chain)
    };
    let expect = Expect::Tcp(TcpExpect::new(&tcp, FAMILY_IPV6, 40 + 8 * 8, 12));
    check(&mut datapath, "8 extension headers", &chain_of(8), &expect);
    for n in [9, 10, 30] {
        check(
            &mut datapath,
            &format!("{n} extension headers"),
            &chain_of(n),
            &Expect::Unclassified(Unclassified::Ipv6Extensions),
        );
    }

    // ESP hides what follows.
    let chain = [ipv6_extension(IPV6_ESP, 1), vec![0; 24]].concat();
    check(
        &mut datapath,
        "hop-by-hop, ESP",
        &ipv6_frame(&[], IPV6_HOP_BY_HOP, &chain),
        &Expect::Unclassified(Unclassified::Ipv6Extensions),
    );

    // Another transport behind the chain.
    let chain = [ipv6_extension(IPPROTO_UDP, 1), vec![0; 16]].concat();
    check(
        &mut datapath,
        "hop-by-hop, UDP",
        &ipv6_frame(&[], IPV6_HOP_BY_HOP, &chain),
        &Expect::Unclassified(Unclassified::NotTcp),
    );

    // An extension header longer than the frame (the frame is cut) ...
    let chain = [
        ipv6_extension(IPPROTO_TCP, 16)[..8].to_vec(),
        segment.clone(),
    ]
    .concat();
    check(
        &mut datapath,
        "extension header past the frame",
        &ethernet(&[], ETH_P_IPV6, &ipv6(IPV6_HOP_BY_HOP, Some(200), &chain)),
        &Expect::Unclassified(Unclassified::TruncatedIp),
    );
    // ... and one longer than the payload length field says (the header is inconsistent).
    let chain = [ipv6_extension(IPPROTO_TCP, 2), segment.clone()].concat();
    check(
        &mut datapath,
        "extension header past the payload length",
        &ethernet(&[], ETH_P_IPV6, &ipv6(IPV6_HOP_BY_HOP, Some(8), &chain)),
        &Expect::Unclassified(Unclassified::BadIpHeader),
    );
}

#[test]
fn vlan_stacks() {
    let mut datapath = load();
    let tcp = Tcp::default();
    let segment = tcp.segment(&[5; 10]);
    for tags in [
        &[][..],
        &[ETH_P_8021Q],
        &[ETH_P_8021AD],
        &[ETH_P_8021AD, ETH_P_8021Q],
        &[ETH_P_8021Q, ETH_P_8021Q],
    ] {
        let expect = Expect::Tcp(TcpExpect::new(&tcp, FAMILY_IPV4, 20, 10));
        let name = format!("{} tags, IPv4", tags.len());
        check(
            &mut datapath,
            &name,
            &ipv4_frame(tags, &Ipv4::default(), &segment),
            &expect,
        );
        let expect = Expect::Tcp(TcpExpect::new(&tcp, FAMILY_IPV6, 40, 10));
        let name = format!("{} tags, IPv6", tags.len());
        check(
            &mut datapath,
            &name,
            &ipv6_frame(tags, IPPROTO_TCP, &segment),
            &expect,
        );
    }
    for tags in [
        &[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q][..],
        &[ETH_P_8021Q; 3],
        &[ETH_P_8021AD; 5],
    ] {
        let name = format!("{} tags", tags.len());
        check(
            &mut datapath,
            &name,
            &ipv4_frame(tags, &Ipv4::default(), &segment),
            &Expect::Unclassified(Unclassified::VlanTooDeep),
        );
    }
    for tags in [&[][..], &[ETH_P_8021Q], &[ETH_P_8021AD, ETH_P_8021Q]] {
        let name = format!("ARP behind {} tags", tags.len());
        check(
            &mut datapath,
            &name,
            &ethernet(tags, ETH_P_ARP, &[0; 28]),
            &Expect::Unclassified(Unclassified::NotIp),
        );
    }
}

#[test]
fn fragments() {
    let mut datapath = load();
    let fragment = Expect::Unclassified(Unclassified::Fragment);
    let tcp = Tcp::default();
    let segment = tcp.segment(&[3; 24]);

    // IPv4: a middle and a last fragment (offset 185 * 8), then a first fragment.
    for (name, flags_fragment) in [("middle", IPV4_MF | 185), ("last", 185)] {
        let ip = Ipv4 {
            flags_fragment,
            ..Ipv4::default()
        };
        let name = format!("IPv4 {name} fragment");
        check(
            &mut datapath,
            &name,
            &ipv4_frame(&[], &ip, &segment),
            &fragment,
        );
    }
    let ip = Ipv4 {
        flags_fragment: IPV4_MF,
        ..Ipv4::default()
    };
    let expect = Expect::Tcp(TcpExpect::new(&tcp, FAMILY_IPV4, 20, 24));
    check(
        &mut datapath,
        "IPv4 first fragment",
        &ipv4_frame(&[], &ip, &segment),
        &expect,
    );

    // IPv6: fragment headers with a non-zero offset, directly and behind hop-by-hop.
    for more in [true, false] {
        let chain = [
            ipv6_fragment_header(IPPROTO_TCP, 185, more),
            segment.clone(),
        ]
        .concat();
        let name = format!("IPv6 fragment at offset 185, more {more}");
        check(
            &mut datapath,
            &name,
            &ipv6_frame(&[], IPV6_FRAGMENT, &chain),
            &fragment,
        );
    }
    let chain = [
        ipv6_extension(IPV6_FRAGMENT, 1),
        ipv6_fragment_header(IPPROTO_TCP, 1, true),
        segment.clone(),
    ]
    .concat();
    check(
        &mut datapath,
        "IPv6 hop-by-hop, fragment at offset 1",
        &ipv6_frame(&[], IPV6_HOP_BY_HOP, &chain),
        &fragment,
    );

    // IPv6 first fragment and atomic fragment (offset 0, no more fragments) carry TCP.
    for more in [true, false] {
        let chain = [ipv6_fragment_header(IPPROTO_TCP, 0, more), segment.clone()].concat();
        let expect = Expect::Tcp(TcpExpect::new(&tcp, FAMILY_IPV6, 48, 24));
        let name = format!("IPv6 fragment at offset 0, more {more}");
        check(
            &mut datapath,
            &name,
            &ipv6_frame(&[], IPV6_FRAGMENT, &chain),
            &expect,
        );
    }
}

#[test]
fn window_scale_option_among_other_options() {
    let mut datapath = load();
    let ws = tcp_window_scale;
    // (case, flags, options, window scale shift plus one the flow must record)
    let cases: Vec<(&str, u8, Vec<u8>, u8)> = vec![
        ("alone", TCP_SYN, ws(7).to_vec(), 8),
        ("Linux SYN order", TCP_SYN, linux_syn_options(7), 8),
        ("SYN-ACK", TCP_SYN | TCP_ACK, linux_syn_options(7), 8),
        (
            "first",
            TCP_SYN,
            [&ws(2)[..], &[TCP_NOP], &TCP_MSS_1460].concat(),
            3,
        ),
        (
            "shift 0 after NOPs",
            TCP_SYN,
            [&[TCP_NOP; 3][..], &ws(0)].concat(),
            1,
        ),
        (
            "between MSS and SACK permitted",
            TCP_SYN,
            [
                &TCP_MSS_1460[..],
                &[TCP_NOP],
                &ws(5),
                &TCP_SACK_PERMITTED,
                &TCP_TIMESTAMPS,
            ]
            .concat(),
            6,
        ),
        (
            "after timestamps and SACK permitted",
            TCP_SYN,
            [&TCP_TIMESTAMPS[..], &TCP_SACK_PERMITTED, &ws(4)].concat(),
            5,
        ),
        (
            "ending at byte 40",
            TCP_SYN,
            [&[TCP_NOP; 37][..], &ws(9)].concat(),
            10,
        ),
        ("shift 14", TCP_SYN, linux_syn_options(14), 15),
        ("shift 15, capped at 14", TCP_SYN, linux_syn_options(15), 15),
        (
            "shift 255, capped at 14",
            TCP_SYN,
            linux_syn_options(255),
            15,
        ),
        (
            "absent",
            TCP_SYN,
            [
                &TCP_MSS_1460[..],
                &TCP_SACK_PERMITTED,
                &TCP_TIMESTAMPS,
                &[TCP_NOP; 2],
            ]
            .concat(),
            0,
        ),
        ("on a non-SYN", TCP_ACK, linux_syn_options(7), 0),
        // The data offset ends the options after the kind and length bytes.
        (
            "cut by the data offset",
            TCP_SYN,
            [&[TCP_NOP; 38][..], &[3, 3]].concat(),
            0,
        ),
        (
            // What follows end of option list is not read, even bytes that would chain.
            "after end of option list",
            TCP_SYN,
            [&TCP_MSS_1460[..], &[TCP_EOL, 2], &ws(7)].concat(),
            0,
        ),
        (
            "after an option of length 0",
            TCP_SYN,
            [&TCP_MSS_1460[..], &[8, 0], &ws(7)].concat(),
            0,
        ),
        (
            "after an option of length 1",
            TCP_SYN,
            [&[30, 1][..], &ws(7)].concat(),
            0,
        ),
        (
            "inside an option whose length runs past the end",
            TCP_SYN,
            [&TCP_MSS_1460[..], &[254, 36], &ws(7)].concat(),
            0,
        ),
        (
            "with a wrong length",
            TCP_SYN,
            [&[3, 4, 7, TCP_NOP][..], &TCP_MSS_1460].concat(),
            0,
        ),
    ];
    for (case, flags, options, plus_one) in cases {
        let tcp = Tcp {
            flags,
            options,
            ..Tcp::default()
        };
        // A payload byte that would read as a shift if the scan ran past the options.
        let segment = tcp.segment(&[9]);
        let expect = TcpExpect::new(&tcp, FAMILY_IPV4, 20, 1).window_scale(plus_one);
        check(
            &mut datapath,
            &format!("IPv4 window scale {case}"),
            &ipv4_frame(&[], &Ipv4::default(), &segment),
            &Expect::Tcp(expect),
        );
        let expect = TcpExpect::new(&tcp, FAMILY_IPV6, 40, 1).window_scale(plus_one);
        check(
            &mut datapath,
            &format!("IPv6 window scale {case}"),
            &ipv6_frame(&[], IPPROTO_TCP, &segment),
            &Expect::Tcp(expect),
        );
    }
}
