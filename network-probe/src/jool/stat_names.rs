//! The stat-id tables of Jool's statistics: for each layout of ids (which Jool releases use
//! it, told apart by the highest id the module sends), every id's Jool name, whether it is a
//! counter or a gauge, and the help text we export. The names and their order are those of
//! Jool's `enum jool_stat_id` (`src/common/stats.h` in Jool's source) in releases 4.1.8 through
//! 4.1.15; the help texts are ours (Jool's own descriptions are in its `src/usr/nl/stats.c`).
//! Our metric names derive from Jool's ([`StatDef::metric_name`]); docs/jool.md lists them all.

/// How a statistic behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatKind {
    /// Only ever grows (packets, events).
    Counter,
    /// Goes up and down (table sizes).
    Gauge,
}

/// One statistic: its id in a layout, Jool's name, and how we export it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatDef {
    pub id: u16,
    /// Jool's name, e.g. `JSTAT_RECEIVED6`.
    pub jool_name: &'static str,
    pub kind: StatKind,
    pub help: &'static str,
}

impl StatDef {
    /// Our metric name: `jool_` + the name without its `JSTAT` prefix, lower case, and `_total`
    /// for counters (`JSTAT64_SRC` -> `jool_64_src_total`).
    pub fn metric_name(&self) -> String {
        let stem = self.jool_name.trim_start_matches("JSTAT");
        let stem = stem.trim_start_matches('_').to_ascii_lowercase();
        match self.kind {
            StatKind::Counter => format!("jool_{stem}_total"),
            StatKind::Gauge => format!("jool_{stem}"),
        }
    }
}

use StatKind::{Counter as C, Gauge as G};

/// (Jool name, kind, help) of ids 1..=67, shared by Jool 4.1.8 through 4.1.15.
const COMMON: [(&str, StatKind, &str); 67] = [
    (
        "JSTAT_RECEIVED6",
        C,
        "IPv6 packets handed to the translator.",
    ),
    (
        "JSTAT_RECEIVED4",
        C,
        "IPv4 packets handed to the translator.",
    ),
    (
        "JSTAT_SUCCESS",
        C,
        "Packets translated and handed on (delivery is not confirmed).",
    ),
    (
        "JSTAT_BIB_ENTRIES",
        G,
        "Binding (BIB) entries held now (NAT64).",
    ),
    ("JSTAT_SESSIONS", G, "Session entries held now (NAT64)."),
    (
        "JSTAT_ENOMEM",
        C,
        "Packets dropped because memory could not be allocated.",
    ),
    (
        "JSTAT_XLATOR_DISABLED",
        C,
        "Packets ignored while the instance was disabled.",
    ),
    (
        "JSTAT_POOL6_UNSET",
        C,
        "Packets ignored because pool6 is not configured.",
    ),
    (
        "JSTAT_SKB_SHARED",
        C,
        "Packets dropped because the socket buffer was shared.",
    ),
    (
        "JSTAT_L3HDR_OFFSET",
        C,
        "Packets dropped because the network header offset was inconsistent.",
    ),
    (
        "JSTAT_SKB_TRUNCATED",
        C,
        "Packets dropped because they were truncated.",
    ),
    (
        "JSTAT_HDR6",
        C,
        "Packets dropped because of an invalid IPv6 header or extension header.",
    ),
    (
        "JSTAT_HDR4",
        C,
        "Packets dropped because of an invalid IPv4 header.",
    ),
    (
        "JSTAT_UNKNOWN_L4_PROTO",
        C,
        "Packets not translated: transport protocol unknown to NAT64.",
    ),
    (
        "JSTAT_UNKNOWN_ICMP6_TYPE",
        C,
        "Packets not translated: ICMPv6 type without an ICMPv4 equivalent.",
    ),
    (
        "JSTAT_UNKNOWN_ICMP4_TYPE",
        C,
        "Packets not translated: ICMPv4 type without an ICMPv6 equivalent.",
    ),
    (
        "JSTAT_DOUBLE_ICMP6_ERROR",
        C,
        "Packets not translated: ICMPv6 error inside an ICMPv6 error.",
    ),
    (
        "JSTAT_DOUBLE_ICMP4_ERROR",
        C,
        "Packets not translated: ICMPv4 error inside an ICMPv4 error.",
    ),
    (
        "JSTAT_UNKNOWN_PROTO_INNER",
        C,
        "Packets not translated: unknown transport protocol inside an ICMP error.",
    ),
    (
        "JSTAT_HAIRPIN_LOOP",
        C,
        "Packets dropped: a hairpinned packet would loop.",
    ),
    (
        "JSTAT_POOL6_MISMATCH",
        C,
        "IPv6 packets not translated: destination outside pool6 (not meant for the translator).",
    ),
    (
        "JSTAT_POOL4_MISMATCH",
        C,
        "IPv4 packets not translated: destination and protocol outside pool4 (harmless for netfilter instances).",
    ),
    (
        "JSTAT_ICMP6_FILTER",
        C,
        "ICMPv6 packets dropped by the drop-icmpv6-info policy.",
    ),
    (
        "JSTAT_UNTRANSLATABLE_DST6",
        C,
        "IPv6 packets dropped: destination cannot be translated.",
    ),
    (
        "JSTAT_UNTRANSLATABLE_DST4",
        C,
        "IPv4 packets dropped: destination cannot be translated.",
    ),
    (
        "JSTAT_6056_F",
        C,
        "Packets dropped: no free pool4 transport address (RFC 6056 function F failed).",
    ),
    (
        "JSTAT_MASK_DOMAIN_NOT_FOUND",
        C,
        "Packets dropped: no pool4 mark domain matched.",
    ),
    (
        "JSTAT_BIB6_NOT_FOUND",
        C,
        "IPv6 packets dropped: no BIB entry and none may be created.",
    ),
    (
        "JSTAT_BIB4_NOT_FOUND",
        C,
        "IPv4 packets dropped: no BIB entry matched.",
    ),
    (
        "JSTAT_SESSION_NOT_FOUND",
        C,
        "Packets dropped: no session matched.",
    ),
    (
        "JSTAT_ADF",
        C,
        "Packets dropped by address-dependent filtering.",
    ),
    (
        "JSTAT_V4_SYN",
        C,
        "IPv4 SYNs dropped by the drop-externally-initiated-tcp policy.",
    ),
    (
        "JSTAT_SYN6_EXPECTED",
        C,
        "IPv6 TCP packets dropped: first of a connection without SYN.",
    ),
    (
        "JSTAT_SYN4_EXPECTED",
        C,
        "IPv4 TCP packets dropped: first of a connection without SYN.",
    ),
    (
        "JSTAT_TYPE1PKT",
        C,
        "Type 1 packets ever queued (never decreases when they leave the queue).",
    ),
    (
        "JSTAT_TYPE2PKT",
        C,
        "Type 2 packets ever queued (never decreases when they leave the queue).",
    ),
    (
        "JSTAT_SO_EXISTS",
        C,
        "Packets dropped: simultaneous-open retry of a stored packet.",
    ),
    (
        "JSTAT_SO_FULL",
        C,
        "Packets dropped: the simultaneous-open queue was full.",
    ),
    (
        "JSTAT64_SRC",
        C,
        "IPv6-to-IPv4: source address could not be translated.",
    ),
    (
        "JSTAT64_DST",
        C,
        "IPv6-to-IPv4: destination address could not be translated.",
    ),
    (
        "JSTAT64_PSKB_COPY",
        C,
        "IPv6-to-IPv4: the outgoing packet could not be allocated.",
    ),
    (
        "JSTAT64_6791_ENOENT",
        C,
        "IPv6-to-IPv4: ICMP error source untranslatable and no RFC 6791 pool address.",
    ),
    (
        "JSTAT64_ICMP_CSUM",
        C,
        "IPv6-to-IPv4: ICMPv6 checksum incorrect.",
    ),
    (
        "JSTAT64_UNTRANSLATABLE_PARAM_PROB_PTR",
        C,
        "IPv6-to-IPv4: parameter-problem pointer cannot be translated.",
    ),
    ("JSTAT64_TTL", C, "IPv6-to-IPv4: hop limit expired."),
    (
        "JSTAT64_FRAGMENTED_ICMP",
        C,
        "IPv6-to-IPv4: fragmented ICMP packet (unsupported).",
    ),
    (
        "JSTAT64_2XFRAG",
        C,
        "IPv6-to-IPv4: packet with two fragment headers.",
    ),
    (
        "JSTAT64_FRAG_THEN_EXT",
        C,
        "IPv6-to-IPv4: extension header after the fragment header.",
    ),
    (
        "JSTAT64_SEGMENTS_LEFT",
        C,
        "IPv6-to-IPv4: routing header with segments left.",
    ),
    (
        "JSTAT46_SRC",
        C,
        "IPv4-to-IPv6: source address could not be translated.",
    ),
    (
        "JSTAT46_DST",
        C,
        "IPv4-to-IPv6: destination address could not be translated.",
    ),
    (
        "JSTAT46_PSKB_COPY",
        C,
        "IPv4-to-IPv6: the outgoing packet could not be allocated.",
    ),
    (
        "JSTAT46_6791_ENOENT",
        C,
        "IPv4-to-IPv6: ICMP error source untranslatable and no RFC 6791 pool address.",
    ),
    (
        "JSTAT46_ICMP_CSUM",
        C,
        "IPv4-to-IPv6: ICMPv4 checksum incorrect.",
    ),
    (
        "JSTAT46_UNTRANSLATABLE_PARAM_PROBLEM_PTR",
        C,
        "IPv4-to-IPv6: parameter-problem pointer cannot be translated.",
    ),
    ("JSTAT46_TTL", C, "IPv4-to-IPv6: TTL expired."),
    (
        "JSTAT46_FRAGMENTED_ICMP",
        C,
        "IPv4-to-IPv6: fragmented ICMP packet (unsupported).",
    ),
    (
        "JSTAT46_SRC_ROUTE",
        C,
        "IPv4-to-IPv6: packet with an unexpired source route.",
    ),
    (
        "JSTAT46_FRAGMENTED_ZERO_CSUM",
        C,
        "IPv4-to-IPv6: fragmented UDP packet with a zero checksum.",
    ),
    (
        "JSTAT46_BAD_MTU",
        C,
        "IPv4-to-IPv6: fragmentation-needed error with an unusable MTU.",
    ),
    (
        "JSTAT_FAILED_ROUTES",
        C,
        "Translated packets that could not be routed.",
    ),
    (
        "JSTAT_PKT_TOO_BIG",
        C,
        "Translated packets too big for the outgoing MTU.",
    ),
    (
        "JSTAT_DST_OUTPUT",
        C,
        "Translated packets the kernel failed to send.",
    ),
    (
        "JSTAT_ICMP6ERR_SUCCESS",
        C,
        "ICMPv6 errors the translator sent.",
    ),
    (
        "JSTAT_ICMP6ERR_FAILURE",
        C,
        "ICMPv6 errors the translator failed to send.",
    ),
    (
        "JSTAT_ICMP4ERR_SUCCESS",
        C,
        "ICMPv4 errors the translator sent.",
    ),
    (
        "JSTAT_ICMP4ERR_FAILURE",
        C,
        "ICMPv4 errors the translator failed to send.",
    ),
];

const ICMPEXT_SMALL: (&str, StatKind, &str) = (
    "JSTAT_ICMPEXT_SMALL",
    C,
    "ICMP errors whose extension length field was too small.",
);
const ICMPEXT_BIG: (&str, StatKind, &str) = (
    "JSTAT_ICMPEXT_BIG",
    C,
    "ICMP errors whose extension did not fit in the translated packet.",
);
const UNKNOWN: (&str, StatKind, &str) = (
    "JSTAT_UNKNOWN",
    C,
    "Packets dropped for a reason Jool does not classify.",
);
/// joold (session synchronisation) counters of 4.1.12+, in 4.1.13 order.
const JOOLD: [(&str, StatKind, &str); 14] = [
    (
        "JSTAT_JOOLD_EMPTY",
        C,
        "joold: sessions sent although the queue was empty.",
    ),
    (
        "JSTAT_JOOLD_TIMEOUT",
        C,
        "joold: packets sent because the flush deadline passed.",
    ),
    (
        "JSTAT_JOOLD_MISSING_ACK",
        C,
        "joold: sends delayed waiting for an acknowledgement.",
    ),
    (
        "JSTAT_JOOLD_AD_ONGOING",
        C,
        "joold: sends delayed by an advertisement in progress.",
    ),
    (
        "JSTAT_JOOLD_PKT_FULL",
        C,
        "joold: packets sent because they were full.",
    ),
    (
        "JSTAT_JOOLD_QUEUING",
        C,
        "joold: sessions queued without sending.",
    ),
    (
        "JSTAT_JOOLD_SSS_QUEUED",
        C,
        "joold: sessions queued for synchronisation.",
    ),
    ("JSTAT_JOOLD_SSS_SENT", C, "joold: sessions sent to peers."),
    (
        "JSTAT_JOOLD_SSS_RCVD",
        C,
        "joold: sessions received from peers.",
    ),
    (
        "JSTAT_JOOLD_SSS_ENOSPC",
        C,
        "joold: sessions dropped because the queue was full.",
    ),
    ("JSTAT_JOOLD_PKT_SENT", C, "joold: packets sent to peers."),
    (
        "JSTAT_JOOLD_PKT_RCVD",
        C,
        "joold: packets received from peers.",
    ),
    ("JSTAT_JOOLD_ADS", C, "joold: advertisements sent."),
    ("JSTAT_JOOLD_ACKS", C, "joold: acknowledgements sent."),
];
const JOOLD_FLUSH_ASAP: (&str, StatKind, &str) = (
    "JSTAT_JOOLD_FLUSH_ASAP",
    C,
    "joold: packets sent at once because flush-asap is on.",
);

/// A stat-id layout: which Jool releases use it, and its ids in order from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// 4.1.8: ICMPEXT_SMALL at 68, last id 70.
    V4_1_8,
    /// 4.1.9 - 4.1.11: last id 69.
    V4_1_9,
    /// 4.1.12: joold counters with FLUSH_ASAP at 73, last id 84.
    V4_1_12,
    /// 4.1.13 - 4.1.15: joold counters, last id 83.
    V4_1_13,
}

impl Layout {
    /// The layout whose last id (`JSTAT_UNKNOWN`, the highest the module sends) is `last_id`;
    /// None for releases whose ids we do not map (4.1.0 - 4.1.7, 4.2 previews).
    pub fn from_last_id(last_id: u16) -> Option<Layout> {
        match last_id {
            70 => Some(Layout::V4_1_8),
            69 => Some(Layout::V4_1_9),
            84 => Some(Layout::V4_1_12),
            83 => Some(Layout::V4_1_13),
            _ => None,
        }
    }

    /// The definition of `id` in this layout.
    pub fn stat(self, id: u16) -> Option<StatDef> {
        let index = usize::from(id).checked_sub(1)?;
        let entry = match (self, index) {
            (_, i) if i < COMMON.len() => COMMON[i],
            (Layout::V4_1_8, 67) => ICMPEXT_SMALL,
            (Layout::V4_1_8, 68) => ICMPEXT_BIG,
            (Layout::V4_1_8, 69) => UNKNOWN,
            (_, 67) => ICMPEXT_BIG,
            (Layout::V4_1_9, 68) => UNKNOWN,
            (Layout::V4_1_12, i @ 68..=71) => JOOLD[i - 68],
            (Layout::V4_1_12, 72) => JOOLD_FLUSH_ASAP,
            (Layout::V4_1_12, i @ 73..=82) => JOOLD[i - 69],
            (Layout::V4_1_12, 83) => UNKNOWN,
            (Layout::V4_1_13, i @ 68..=81) => JOOLD[i - 68],
            (Layout::V4_1_13, 82) => UNKNOWN,
            _ => return None,
        };
        Some(StatDef {
            id,
            jool_name: entry.0,
            kind: entry.1,
            help: entry.2,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_follow_the_last_id() {
        let v419 = Layout::from_last_id(69).unwrap();
        assert_eq!(v419.stat(1).unwrap().jool_name, "JSTAT_RECEIVED6");
        assert_eq!(v419.stat(4).unwrap().kind, StatKind::Gauge);
        assert_eq!(v419.stat(5).unwrap().metric_name(), "jool_sessions");
        assert_eq!(v419.stat(39).unwrap().metric_name(), "jool_64_src_total");
        assert_eq!(v419.stat(68).unwrap().jool_name, "JSTAT_ICMPEXT_BIG");
        assert_eq!(v419.stat(69).unwrap().jool_name, "JSTAT_UNKNOWN");
        assert_eq!(v419.stat(70), None);
        assert_eq!(v419.stat(0), None);
        let v418 = Layout::from_last_id(70).unwrap();
        assert_eq!(v418.stat(68).unwrap().jool_name, "JSTAT_ICMPEXT_SMALL");
        assert_eq!(v418.stat(70).unwrap().jool_name, "JSTAT_UNKNOWN");
        let v4112 = Layout::from_last_id(84).unwrap();
        assert_eq!(v4112.stat(73).unwrap().jool_name, "JSTAT_JOOLD_FLUSH_ASAP");
        assert_eq!(v4112.stat(83).unwrap().jool_name, "JSTAT_JOOLD_ACKS");
        assert_eq!(v4112.stat(84).unwrap().jool_name, "JSTAT_UNKNOWN");
        let v4113 = Layout::from_last_id(83).unwrap();
        assert_eq!(v4113.stat(69).unwrap().jool_name, "JSTAT_JOOLD_EMPTY");
        assert_eq!(v4113.stat(82).unwrap().jool_name, "JSTAT_JOOLD_ACKS");
        assert_eq!(v4113.stat(83).unwrap().jool_name, "JSTAT_UNKNOWN");
        assert_eq!(Layout::from_last_id(68), None);
        // Every name of a layout is distinct.
        for layout in [v418, v419, v4112, v4113] {
            let mut names: Vec<String> = (1..=84)
                .filter_map(|id| layout.stat(id))
                .map(|def| def.metric_name())
                .collect();
            let count = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), count, "{layout:?}");
        }
    }
}
