//! Sans-IO packet code of the ping prober: building ICMP echo requests and TCP SYNs, parsing
//! ICMP echo replies and TCP SYN-ACK/RST replies, and the Internet checksum with the IPv4 and
//! IPv6 pseudo-headers. Every input here is untrusted bytes from a raw socket; parsers return
//! `None` for anything that is not exactly what they look for.

use std::net::IpAddr;

/// ICMP types of echo request and reply, IPv4 and IPv6.
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// Length of the echo requests we send: 8 bytes of header and an 8-byte cookie.
pub const ECHO_LEN: usize = 16;
/// Length of the SYNs we send: 20 bytes of header and an MSS option.
pub const SYN_LEN: usize = 24;

/// TCP flag bits.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The MSS we announce in SYNs (a plausible Ethernet value; no data ever follows).
const SYN_MSS: u16 = 1460;

/// The identifying fields of one echo request or reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Echo {
    pub id: u16,
    pub seq: u16,
    /// Random per socket, carried as payload: replies to other programs' requests with the same
    /// identifier do not match.
    pub cookie: u64,
}

/// Builds an echo request. The ICMPv4 checksum is filled in; for ICMPv6 the kernel computes it
/// (it needs the source address), so the field stays zero.
pub fn build_echo_request(v6: bool, echo: &Echo) -> [u8; ECHO_LEN] {
    let mut packet = [0u8; ECHO_LEN];
    packet[0] = if v6 {
        ICMPV6_ECHO_REQUEST
    } else {
        ICMP_ECHO_REQUEST
    };
    packet[4..6].copy_from_slice(&echo.id.to_be_bytes());
    packet[6..8].copy_from_slice(&echo.seq.to_be_bytes());
    packet[8..16].copy_from_slice(&echo.cookie.to_be_bytes());
    if !v6 {
        let sum = checksum(&[&packet]);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// Parses an echo reply as read from an ICMP socket. `with_ipv4_header` is true for raw IPv4
/// sockets, which deliver the IP header too. Requests (our own, looped back on `lo`), other ICMP
/// types, short packets and bad IPv4 checksums give `None`.
pub fn parse_echo_reply(v6: bool, with_ipv4_header: bool, packet: &[u8]) -> Option<Echo> {
    let icmp = if with_ipv4_header {
        ipv4_payload(packet, libc::IPPROTO_ICMP as u8)?.1
    } else {
        packet
    };
    if icmp.len() < ECHO_LEN {
        return None;
    }
    let reply_type = if v6 {
        ICMPV6_ECHO_REPLY
    } else {
        ICMP_ECHO_REPLY
    };
    if icmp[0] != reply_type || icmp[1] != 0 {
        return None;
    }
    // The kernel does not check ICMPv4 checksums before handing packets to raw sockets.
    if !v6 && checksum(&[icmp]) != 0 {
        return None;
    }
    Some(Echo {
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        cookie: u64::from_be_bytes(icmp[8..16].try_into().ok()?),
    })
}

/// The addresses and ports of one SYN probe and its initial sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syn {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub isn: u32,
}

/// Builds a TCP SYN (no IP header) with its pseudo-header checksum. `src` and `dst` must be of
/// the same family.
pub fn build_syn(syn: &Syn) -> [u8; SYN_LEN] {
    let mut segment = [0u8; SYN_LEN];
    segment[0..2].copy_from_slice(&syn.src_port.to_be_bytes());
    segment[2..4].copy_from_slice(&syn.dst_port.to_be_bytes());
    segment[4..8].copy_from_slice(&syn.isn.to_be_bytes());
    // Data offset 6 words (24 bytes), flags SYN.
    segment[12] = 6 << 4;
    segment[13] = TCP_SYN;
    segment[14..16].copy_from_slice(&64240u16.to_be_bytes());
    // Option: MSS (kind 2, length 4).
    segment[20] = 2;
    segment[21] = 4;
    segment[22..24].copy_from_slice(&SYN_MSS.to_be_bytes());
    let sum = tcp_checksum(syn.src, syn.dst, &segment);
    segment[16..18].copy_from_slice(&sum.to_be_bytes());
    segment
}

/// The fields of a received TCP segment the prober matches on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    /// Source address, when the packet carried an IPv4 header.
    pub src: Option<IpAddr>,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
}

/// What a reply to a SYN says about the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynReply {
    /// SYN-ACK: something listens.
    SynAck,
    /// RST with ACK: the host answered, nothing listens.
    Rst,
}

impl TcpSegment {
    /// The kind of reply this segment is to a SYN, if it is one (our own SYN seen on a raw
    /// socket, data segments and bare ACKs are not).
    pub fn syn_reply(&self) -> Option<SynReply> {
        let acked = self.flags & TCP_ACK != 0;
        if self.flags & TCP_RST != 0 && acked {
            Some(SynReply::Rst)
        } else if self.flags & (TCP_SYN | TCP_RST | TCP_FIN) == TCP_SYN && acked {
            Some(SynReply::SynAck)
        } else {
            None
        }
    }
}

/// Parses a TCP segment from a raw TCP socket. Raw IPv4 sockets deliver the IP header
/// (`with_ipv4_header`), IPv6 raw sockets the segment alone. The checksum is not verified: a
/// segment from a local or veth peer may carry only the partial sum of checksum offload (the
/// kernel's SYN-ACKs do), so a check would reject good replies; the match on our port, the
/// target's port and our ISN + 1 guards against stray segments.
pub fn parse_tcp_segment(with_ipv4_header: bool, packet: &[u8]) -> Option<TcpSegment> {
    let (src, segment) = if with_ipv4_header {
        let (header, segment) = ipv4_payload(packet, libc::IPPROTO_TCP as u8)?;
        let src = IpAddr::from(<[u8; 4]>::try_from(&header[12..16]).ok()?);
        (Some(src), segment)
    } else {
        (None, packet)
    };
    if segment.len() < 20 || usize::from(segment[12] >> 4) * 4 < 20 {
        return None;
    }
    let word = |at: usize| {
        u32::from_be_bytes([
            segment[at],
            segment[at + 1],
            segment[at + 2],
            segment[at + 3],
        ])
    };
    Some(TcpSegment {
        src,
        src_port: u16::from_be_bytes([segment[0], segment[1]]),
        dst_port: u16::from_be_bytes([segment[2], segment[3]]),
        seq: word(4),
        ack: word(8),
        flags: segment[13],
    })
}

/// Splits an IPv4 packet into header and payload if it is a whole, unfragmented packet of
/// `protocol`.
fn ipv4_payload(packet: &[u8], protocol: u8) -> Option<(&[u8], &[u8])> {
    let first = *packet.first()?;
    let header_len = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || header_len < 20 || packet.len() < header_len {
        return None;
    }
    if packet[9] != protocol {
        return None;
    }
    // A fragment (offset or more-fragments set) is never a whole reply.
    let fragment = u16::from_be_bytes([packet[6], packet[7]]);
    if fragment & 0x3fff != 0 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let end = if (header_len..=packet.len()).contains(&total) {
        total
    } else {
        packet.len()
    };
    Some((&packet[..header_len], &packet[header_len..end]))
}

/// The TCP checksum of `segment` (checksum field included: a correct segment sums to 0) with
/// the pseudo-header of `src` and `dst`. Mixed families give 0xffff, which never validates.
pub fn tcp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let length = segment.len() as u32;
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut pseudo = [0u8; 12];
            pseudo[0..4].copy_from_slice(&src.octets());
            pseudo[4..8].copy_from_slice(&dst.octets());
            pseudo[9] = libc::IPPROTO_TCP as u8;
            pseudo[10..12].copy_from_slice(&(length as u16).to_be_bytes());
            checksum(&[&pseudo, segment])
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut pseudo = [0u8; 40];
            pseudo[0..16].copy_from_slice(&src.octets());
            pseudo[16..32].copy_from_slice(&dst.octets());
            pseudo[32..36].copy_from_slice(&length.to_be_bytes());
            pseudo[39] = libc::IPPROTO_TCP as u8;
            checksum(&[&pseudo, segment])
        }
        _ => 0xffff,
    }
}

/// The Internet checksum (RFC 1071) over the concatenation of `chunks`; every chunk but the
/// last must have an even length.
pub fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        let mut pairs = chunk.chunks_exact(2);
        for pair in &mut pairs {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        if let [last] = pairs.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..digits.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
            .collect()
    }

    // A SYN the kernel sent from 127.0.0.1:55386 to 127.0.0.1:9, captured with `tcpdump -x` on
    // lo. The capture shows the checksum field unfilled (offload); tcpdump computed the correct
    // value, 0x7ee3, which is written in here: that is our independent reference.
    const SYN_V4: &str = "4500 003c e480 4000 4006 5839 7f00 0001 7f00 0001 d85a 0009 246d 6530 \
        0000 0000 a002 ffd7 7ee3 0000 0204 ffd7 0402 080a c5af a96a 0000 0000 0103 030a";
    // The same from ::1.33988 to ::1.9 (tcpdump: correct checksum 0x1433), TCP part only.
    const SYN_V6_TCP: &str = "84c4 0009 3799 66a0 0000 0000 a002 ffc4 1433 0000 0204 ffc4 \
        0402 080a a545 71a6 0000 0000 0103 030a";
    // The kernel's RST answer to it (tcpdump: correct checksum 0x8cc7).
    const RST_V6_TCP: &str = "0009 84c4 0000 0000 3799 66a1 5014 0000 8cc7 0000";

    #[test]
    fn checksums_match_tcpdump_on_kernel_packets() {
        let v4 = hex(SYN_V4);
        let segment = parse_tcp_segment(true, &v4).expect("a SYN segment");
        assert_eq!(segment.src, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            (segment.src_port, segment.dst_port, segment.seq),
            (55386, 9, 611149104)
        );
        assert_eq!(segment.syn_reply(), None, "a SYN is not a reply");
        // The captured segment sums to zero; recomputing with the field zeroed gives tcpdump's
        // value.
        let lo4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(tcp_checksum(lo4, lo4, &v4[20..]), 0);
        let mut tcp = v4[20..].to_vec();
        tcp[16..18].fill(0);
        assert_eq!(tcp_checksum(lo4, lo4, &tcp), 0x7ee3);
        // A flipped bit is detected.
        tcp[16..18].copy_from_slice(&0x7ee3u16.to_be_bytes());
        tcp[5] ^= 1;
        assert_ne!(tcp_checksum(lo4, lo4, &tcp), 0);

        let lo6: IpAddr = "::1".parse().unwrap();
        for (text, sum) in [(SYN_V6_TCP, 0x1433), (RST_V6_TCP, 0x8cc7)] {
            let mut tcp = hex(text);
            assert_eq!(tcp_checksum(lo6, lo6, &tcp), 0, "{text}");
            tcp[16..18].fill(0);
            assert_eq!(tcp_checksum(lo6, lo6, &tcp), sum);
        }
        let rst = parse_tcp_segment(false, &hex(RST_V6_TCP)).unwrap();
        assert_eq!(rst.syn_reply(), Some(SynReply::Rst));
        assert_eq!(rst.ack, 932800160 + 1);
        // Not TCP: no segment.
        let mut udp = v4.clone();
        udp[9] = 17;
        assert_eq!(parse_tcp_segment(true, &udp), None);
    }

    #[test]
    fn built_syns_have_valid_checksums() {
        for (src, dst) in [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")] {
            let syn = Syn {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                src_port: 40000,
                dst_port: 443,
                isn: 0xdead_beef,
            };
            let segment = build_syn(&syn);
            assert_eq!(tcp_checksum(syn.src, syn.dst, &segment), 0);
            let parsed = parse_tcp_segment(false, &segment).unwrap();
            assert_eq!(
                (parsed.src_port, parsed.dst_port, parsed.seq),
                (40000, 443, 0xdead_beef)
            );
            assert_eq!(parsed.flags, TCP_SYN);
            assert_eq!(parsed.syn_reply(), None);
        }
    }

    #[test]
    fn syn_ack_and_rst_are_replies() {
        let segment = |flags| TcpSegment {
            src: None,
            src_port: 1,
            dst_port: 2,
            seq: 0,
            ack: 1,
            flags,
        };
        assert_eq!(
            segment(TCP_SYN | TCP_ACK).syn_reply(),
            Some(SynReply::SynAck)
        );
        assert_eq!(segment(TCP_RST | TCP_ACK).syn_reply(), Some(SynReply::Rst));
        assert_eq!(segment(TCP_RST).syn_reply(), None);
        assert_eq!(segment(TCP_ACK).syn_reply(), None);
        assert_eq!(segment(TCP_SYN | TCP_ACK | TCP_FIN).syn_reply(), None);
    }

    #[test]
    fn echo_round_trip_and_own_requests_ignored() {
        let echo = Echo {
            id: 0x1234,
            seq: 7,
            cookie: 0x0102_0304_0506_0708,
        };
        let request = build_echo_request(false, &echo);
        assert_eq!(checksum(&[&request]), 0);
        assert_eq!(
            parse_echo_reply(false, false, &request),
            None,
            "own request"
        );
        let mut reply = request;
        reply[0] = ICMP_ECHO_REPLY;
        reply[2..4].fill(0);
        let sum = checksum(&[&reply]);
        reply[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(parse_echo_reply(false, false, &reply), Some(echo));
        // With an IPv4 header in front, as raw sockets deliver it.
        let mut ip = hex("4500 0024 0000 4000 4001 0000 0a00 0002 0a00 0001");
        ip.extend_from_slice(&reply);
        assert_eq!(parse_echo_reply(false, true, &ip), Some(echo));
        // A fragment is not a reply.
        ip[6] = 0x20;
        assert_eq!(parse_echo_reply(false, true, &ip), None);
        // Corrupted checksum.
        reply[9] ^= 0xff;
        assert_eq!(parse_echo_reply(false, false, &reply), None);

        let mut v6 = build_echo_request(true, &echo);
        assert_eq!(parse_echo_reply(true, false, &v6), None, "own request");
        v6[0] = ICMPV6_ECHO_REPLY;
        assert_eq!(parse_echo_reply(true, false, &v6), Some(echo));
        assert_eq!(parse_echo_reply(true, false, &v6[..15]), None);
    }

    #[test]
    fn odd_inputs_never_panic() {
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 0x45) as u8).collect();
            let _ = parse_echo_reply(false, true, &bytes);
            let _ = parse_echo_reply(true, false, &bytes);
            let _ = parse_tcp_segment(true, &bytes);
            let _ = parse_tcp_segment(false, &bytes);
        }
        assert_eq!(checksum(&[&[0xff]]), 0x00ff);
    }
}
