//! Path MTU: ICMPv4 fragmentation-needed (type 3 code 4, RFC 1191) and ICMPv6 packet-too-big
//! (type 2, RFC 8201) messages, counted on the interface and direction they cross with the MTU
//! they announce (a histogram, [`network_probe_common::pmtu_bucket`]), and per flow: the
//! message quotes the head of the packet that did not fit, whose TCP flow (as it crossed this
//! interface, in the direction opposite to the message's) gets one count.
//!
//! Only packets the parser left as "not TCP" reach this module (a protocol compare), so TCP
//! segments pay nothing for it. The ICMP header and the quoted TCP flow are read by
//! `icmp_quote` (shared with `outcomes`), as it is, without walking IPv4 options' contents
//! beyond their length or IPv6 extension headers: a quoted IPv6 packet whose next header is
//! not TCP counts on the interface only.

use network_probe_common::{Direction, FlowSignals, SignalStats, pmtu_bucket};

use crate::{
    icmp_quote::{self, IcmpHeader},
    packet::Packet,
    signals,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PKT_TOOBIG: u8 = 2;

/// An ICMP / ICMPv6 message (its header read by `icmp_quote`): counts it if it is a path-MTU
/// message.
#[inline(always)]
pub(crate) fn observe<P: Packet>(
    packet: &P,
    icmp: &IcmpHeader,
    ifindex: u32,
    direction: Direction,
    stats: Option<&mut SignalStats>,
) {
    let header = icmp.rest;
    let mtu = if !icmp.v6 {
        if icmp.kind != ICMP_DEST_UNREACH || icmp.code != ICMP_FRAG_NEEDED {
            return;
        }
        u16::from_be_bytes([header[2], header[3]]) as u32
    } else {
        if icmp.kind != ICMPV6_PKT_TOOBIG {
            return;
        }
        u32::from_be_bytes(header)
    };
    // The flow of the quoted packet crossed this interface the other way.
    let ifindex_direction = icmp_quote::quoted_ifindex_direction(ifindex, direction);
    icmp_quote::quoted_tcp(
        packet,
        icmp,
        ifindex_direction,
        |key, _| count(key),
        |key, _| count(key),
    );
    if let Some(stats) = stats {
        stats.pmtu_messages += 1;
        if let Some(bucket) = stats.pmtu_announced.get_mut(pmtu_bucket(mtu)) {
            *bucket += 1;
        }
        stats.pmtu_announced_sum += mtu as u64;
    }
}

#[inline(always)]
fn count<K: signals::SignalKey>(key: &K) {
    signals::add_to_flow(
        key,
        &FlowSignals {
            pmtu_messages: 1,
            ..FlowSignals::default()
        },
    );
}
