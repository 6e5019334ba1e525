//! Types shared by the eBPF programs and the daemon: the keys and values of every kernel map.
//!
//! Everything here is `#[repr(C)]` with explicit padding so the kernel and user space agree on the
//! layout byte for byte. The `user` feature adds `aya::Pod` impls so the daemon can read the maps.
#![no_std]

/// Per-CPU array of [`DeviceStats`]: interface slot `s` (see [`IFINDEX_SLOTS_MAP`]) keeps its
/// ingress statistics at index `2 * s` and its egress statistics at `2 * s + 1`.
pub const DEVICE_STATS_MAP: &str = "DEVICE_STATS";
/// Interfaces that can be watched at once (slots of [`DEVICE_STATS_MAP`]).
pub const DEVICE_SLOTS: u32 = 512;
/// Capacity of [`DEVICE_STATS_MAP`]: one entry per (slot, direction) pair.
pub const DEVICE_STATS_MAX_ENTRIES: u32 = DEVICE_SLOTS * 2;

/// Array of `u32` indexed by interface index: the interface's slot in [`DEVICE_STATS_MAP`] plus
/// one, or 0 for an interface that is not watched. User space fills it in (zeroing the slot's
/// statistics first) before it attaches to an interface, so the programs never write here and
/// find their statistics with two array lookups, no hashing.
pub const IFINDEX_SLOTS_MAP: &str = "IFINDEX_SLOTS";
/// Capacity of [`IFINDEX_SLOTS_MAP`]: interfaces with a higher index cannot be watched.
pub const IFINDEX_LIMIT: u32 = 65_536;

/// LRU hash maps of [`FlowStats`], one entry per flow and direction: IPv4 flows keyed by
/// [`FlowKey4`] (16 bytes), IPv6 flows by [`FlowKey6`] (40 bytes). Separate maps keep the IPv4
/// key small, and hashing the key is most of what a lookup costs.
pub const FLOWS4_MAP: &str = "FLOWS4";
pub const FLOWS6_MAP: &str = "FLOWS6";
/// Default capacity of each flow map; the daemon resizes both at load time
/// (`--flows.max-entries`).
pub const FLOWS_DEFAULT_MAX_ENTRIES: u32 = 65_536;

/// The flow slot table, the first home of new flows: an array of [`FlowSlot`] (the key and the
/// state shared by every CPU) and, at the same index, a per-CPU array of [`FlowCounts`].
/// A flow's slot is [`flow_slot_index`] of its key; a flow whose slot is taken by another flow
/// lives in its family's LRU map instead. An established flow's packet then costs two array
/// lookups the kernel inlines and a comparison, where a hash map would hash the key and call
/// out of line; its counters are per-CPU, so no atomic instruction either.
pub const FLOW_SLOTS_MAP: &str = "FLOW_SLOTS";
pub const FLOW_SLOT_COUNTERS_MAP: &str = "FLOW_SLOT_COUNTERS";
/// Name of the eBPF object's read-only global holding the number of slots (0: no slot table),
/// which the daemon sets before loading.
pub const FLOW_SLOT_COUNT_GLOBAL: &str = "FLOW_SLOT_COUNT";
/// Name of the read-only global holding [`flow_slot_shift`] of the number of slots, which the
/// daemon sets with [`FLOW_SLOT_COUNT_GLOBAL`].
pub const FLOW_SLOT_SHIFT_GLOBAL: &str = "FLOW_SLOT_SHIFT";
/// Default number of slots (`--flows.slots`; a power of two, or 0 for none).
pub const FLOW_SLOTS_DEFAULT: u32 = 8192;
/// Most slots `--flows.slots` accepts.
pub const FLOW_SLOTS_LIMIT: u32 = 1 << 20;

/// [`FlowSlot::owner`]: nobody; a program may claim the slot (compare-and-exchange to
/// [`SLOT_CLAIMING`]). Every CPU's [`FlowCounts`] of a free slot are zero.
pub const SLOT_FREE: u64 = 0;
/// A program is writing the key of the flow it claimed the slot for.
pub const SLOT_CLAIMING: u64 = 1;
/// User space is retiring the flow (idle): programs no longer count into this slot, and once
/// every program that might still do so has finished, user space reads the counters, zeroes
/// them and frees the slot.
pub const SLOT_DRAINING: u64 = 2;
// Otherwise the owner is the flow's family: FAMILY_IPV4 or FAMILY_IPV6.

/// Value of [`FLOW_SLOTS_MAP`]: a flow's key and the per-flow state that every CPU must see
/// (sequence tracking, handshake), 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    /// [`FlowKey4::words`] (then zeros) or [`FlowKey6::words`].
    pub key: [u64; 5],
    /// [`SLOT_FREE`], [`SLOT_CLAIMING`], [`SLOT_DRAINING`], or the family of the flow counted
    /// here.
    pub owner: u64,
    pub tracking: FlowTracking,
}

/// Per-flow state besides counters, as the programs keep it for one flow direction (in a
/// [`FlowSlot`] or, for flows in the LRU maps, in [`FlowStats`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTracking {
    /// CLOCK_MONOTONIC of the handshake leg this direction sent (SYN on egress-initiated
    /// connections, SYN-ACK on ingress-initiated ones) awaiting its answer; 0 when none.
    pub handshake_start_ns: u64,
    /// One past the highest sequence number sent in this direction (`seq + len`, SYN and FIN
    /// counting one), valid once `seq_valid` is 1.
    pub next_seq: u32,
    /// Window scale shift this direction offered in its SYN, plus one; 0 when no SYN with the
    /// option was seen.
    pub window_scale_plus_one: u8,
    pub seq_valid: u8,
    /// 1 while an ingress SYN awaits the ACK that completes the handshake (ingress-initiated).
    pub awaiting_ack: u8,
    pub _pad: u8,
}

/// The counters of one flow direction: in [`FlowStats`] for flows in the LRU maps (updated
/// with atomic adds), and at a slot's index of [`FLOW_SLOT_COUNTERS_MAP`], one copy per CPU,
/// for flows in the slot table (user space adds the copies up; the first seen time is the
/// smallest non-zero copy, the last seen the largest).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounts {
    // What every packet updates first (one cache line between them), then the rest.
    /// Wire packets (GSO segments counted).
    pub packets: u64,
    /// Bytes at the hook (see [`DeviceStats::bytes`]).
    pub bytes: u64,
    /// IPv4 packets with DF set (always 0 for IPv6, which has no DF bit).
    pub df: u64,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) of the last and first packet.
    pub last_seen_ns: u64,
    pub first_seen_ns: u64,
    /// Retransmitted segments (wire segments).
    pub retransmits: u64,
    /// Segments (not RST) advertising a zero window.
    pub zero_window: u64,
    pub rst: u64,
    pub syn: u64,
    pub fin: u64,
}

impl FlowCounts {
    /// Adds what another CPU or place counted for the same flow: counters summed, the first
    /// seen time the earliest non-zero one, the last seen time the latest.
    pub fn accumulate(&mut self, other: &FlowCounts) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.retransmits += other.retransmits;
        self.rst += other.rst;
        self.syn += other.syn;
        self.fin += other.fin;
        self.zero_window += other.zero_window;
        self.df += other.df;
        self.first_seen_ns = match (self.first_seen_ns, other.first_seen_ns) {
            (0, theirs) => theirs,
            (ours, 0) => ours,
            (ours, theirs) => ours.min(theirs),
        };
        self.last_seen_ns = self.last_seen_ns.max(other.last_seen_ns);
    }
}

/// Odd multipliers of [`flow_slot_index`], one per key word.
const SLOT_HASH_MULTIPLIERS: [u64; 5] = [
    0x9e37_79b9_7f4a_7c15,
    0xc2b2_ae3d_27d4_eb4f,
    0x1656_67b1_9e37_79f9,
    0xd6e8_feb8_6659_fd93,
    0xff51_afd7_ed55_8ccd,
];

/// Slot of a flow key (its words, see [`FlowKey4::words`]) in a table of `mask + 1` slots,
/// `shift` being [`flow_slot_shift`] of that number: multiply-add hashing, the words multiplied
/// independently (so the CPU overlaps them), and the index taken from the top bits of the sum,
/// the only ones every input bit reaches (a product carries bits upwards only), so the index is
/// ready one shift after the products. Fixed (and part of [`MAP_LAYOUT_VERSION`]), so a
/// restarted daemon finds the flows its predecessor left in pinned slots. Not keyed: a
/// slot belongs to whichever flow came first, so a flood of new flows takes slots whatever the
/// hash, and aiming flows at one slot gains nothing more. A flow that finds its slot taken is
/// counted in the LRU map, exactly; only its cost per packet is higher.
#[inline(always)]
pub fn flow_slot_index(words: &[u64], shift: u32, mask: u32) -> u32 {
    let mut hash = 0u64;
    let mut index = 0;
    while index < words.len() && index < SLOT_HASH_MULTIPLIERS.len() {
        hash = hash.wrapping_add(words[index].wrapping_mul(SLOT_HASH_MULTIPLIERS[index]));
        index += 1;
    }
    // The mask changes nothing for 2 slots or more, and makes a single slot's index 0.
    (hash >> shift) as u32 & mask
}

/// The shift [`flow_slot_index`] takes for a table of `slots` slots (a power of two): 64 less
/// the index bits, and 63 for a single slot (whose mask is 0).
pub const fn flow_slot_shift(slots: u32) -> u32 {
    let bits = slots.trailing_zeros();
    64 - if bits == 0 { 1 } else { bits }
}

/// Version of the layout of every map's keys and values (and of what their fields mean). The
/// daemon pins its maps under a directory named after it, so a daemon that finds maps of another
/// version pinned discards them instead of misreading them. Bump it with any change to
/// [`DeviceStats`], [`FlowKey4`], [`FlowKey6`], [`FlowStats`] or the maps' indexing; the `layout_matches_version`
/// test lists every field's offset and fails until the table and this number are updated.
pub const MAP_LAYOUT_VERSION: u32 = 5;

/// Names of the programs in the eBPF object.
pub const TC_INGRESS_PROGRAM: &str = "tc_ingress";
pub const TC_EGRESS_PROGRAM: &str = "tc_egress";
pub const XDP_INGRESS_PROGRAM: &str = "xdp_ingress";

/// IP packet-size histogram buckets: bucket `i` counts packets of `2^(i-1) ..= 2^i - 1` bytes
/// (bucket 0: empty), so the upper bound of bucket `i` is `2^i - 1`. 17 buckets reach 65535.
pub const SIZE_BUCKETS: usize = 17;

/// Bit length of every byte value (0 for 0), for [`size_bucket`].
static BYTE_BIT_LENGTH: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut value = 1;
    while value < 256 {
        table[value] = (usize::BITS - value.leading_zeros()) as u8;
        value += 1;
    }
    table
};

/// Bucket of `value` in a size histogram of [`SIZE_BUCKETS`] buckets: its bit length, with
/// everything from 65536 up in the last bucket. One table lookup, of the high byte's bit length
/// (plus 8) or else the low byte's: the BPF instruction set has no count-leading-zeros, and the
/// generic expansion costs some 40 instructions per use on the per-packet path. The branch
/// goes the same way for every packet of a flow of one size class, so it predicts well.
#[inline(always)]
pub fn size_bucket(value: u32) -> usize {
    let value = if value > 0xffff { 0xffff } else { value } as usize;
    let high_byte_shift = if value > 0xff { 8 } else { 0 };
    // The mask changes nothing; it shows the BPF verifier the index is in the table.
    BYTE_BIT_LENGTH[(value >> high_byte_shift) & 0xff] as usize + high_byte_shift
}
/// Handshake RTT histogram buckets, log2 of microseconds: bucket `i` counts RTTs of
/// `2^(i-1) ..= 2^i - 1` µs (bucket 0: under 1 µs); the last bucket also takes everything larger.
pub const RTT_BUCKETS: usize = 24;

/// Why the parser could not classify a packet as TCP over IPv4/IPv6 (index into
/// [`DeviceStats::unclassified`]). Not an error: the packet passes untouched either way.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unclassified {
    /// Link layer is not Ethernet carrying IPv4/IPv6 (ARP, LLDP, ...).
    NotIp = 0,
    /// The frame ends inside the Ethernet header or a VLAN tag.
    TruncatedL2 = 1,
    /// More VLAN tags than the parser walks (two).
    VlanTooDeep = 2,
    /// The frame ends inside the IPv4 or IPv6 header.
    TruncatedIp = 3,
    /// IPv4 header length below 20 bytes, the IP version field disagreeing with the EtherType,
    /// or a header / extension chain longer than the length the IP header declares.
    BadIpHeader = 4,
    /// A non-first IP fragment: it carries no transport header.
    Fragment = 5,
    /// An IPv6 extension-header chain longer than the parser walks, or one it cannot walk (ESP).
    Ipv6Extensions = 6,
    /// The IP payload is not TCP (UDP, ICMP, ...).
    NotTcp = 7,
    /// The frame ends inside the TCP header or its options.
    TruncatedTcp = 8,
    /// TCP data offset below 20 bytes or beyond the segment the IP header declares.
    BadTcpHeader = 9,
}

/// Number of [`Unclassified`] reasons.
pub const UNCLASSIFIED_REASONS: usize = 10;

impl Unclassified {
    pub const ALL: [Unclassified; UNCLASSIFIED_REASONS] = [
        Unclassified::NotIp,
        Unclassified::TruncatedL2,
        Unclassified::VlanTooDeep,
        Unclassified::TruncatedIp,
        Unclassified::BadIpHeader,
        Unclassified::Fragment,
        Unclassified::Ipv6Extensions,
        Unclassified::NotTcp,
        Unclassified::TruncatedTcp,
        Unclassified::BadTcpHeader,
    ];

    /// The label value used in metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Unclassified::NotIp => "not_ip",
            Unclassified::TruncatedL2 => "truncated_l2",
            Unclassified::VlanTooDeep => "vlan_too_deep",
            Unclassified::TruncatedIp => "truncated_ip",
            Unclassified::BadIpHeader => "bad_ip_header",
            Unclassified::Fragment => "fragment",
            Unclassified::Ipv6Extensions => "ipv6_extensions",
            Unclassified::NotTcp => "not_tcp",
            Unclassified::TruncatedTcp => "truncated_tcp",
            Unclassified::BadTcpHeader => "bad_tcp_header",
        }
    }
}

/// Direction of a packet relative to the interface it was seen on.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Received by the interface (TC ingress / XDP).
    Ingress = 0,
    /// Sent by the interface (TC egress).
    Egress = 1,
}

impl Direction {
    /// The label value used in metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// Decodes the raw value stored in a map key; `None` for values no program writes.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Direction::Ingress),
            1 => Some(Direction::Egress),
            _ => None,
        }
    }
}

/// Value of [`DEVICE_STATS_MAP`], one copy per CPU; user space sums the copies.
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceStats {
    // Fields in the order a packet touches them: what every TCP packet adds to comes first, so
    // that a pure ACK writes two cache lines of this value (the first, and its IP size bucket's).
    /// Packets on the wire: a GSO/GRO super-packet counts as its `gso_segs` segments.
    pub packets: u64,
    /// Bytes as the packet length at the hook (link-layer header included). A GSO super-packet
    /// counts its length once: per-segment headers are not added.
    pub bytes: u64,
    /// TCP segments (wire packets) classified.
    pub tcp_packets: u64,
    /// IPv4 packets (any protocol) with the Don't Fragment bit set, whatever other flags.
    pub ipv4_df: u64,
    /// Sum of the observed IP packet sizes, bytes.
    pub ip_size_sum: u64,
    /// Sum of the observed TCP payload sizes, bytes.
    pub tcp_payload_sum: u64,
    /// TCP payload sizes, one observation per TCP skb.
    pub tcp_payload_size: [u64; SIZE_BUCKETS],
    /// IP packet sizes (IP header included) of every classified IP packet, one observation per
    /// skb (see [`SIZE_BUCKETS`]).
    pub ip_size: [u64; SIZE_BUCKETS],
    /// TCP segments (not RST) advertising a zero receive window.
    pub tcp_zero_window: u64,
    /// TCP segments whose sequence range starts before the highest sequence already seen on
    /// their flow direction.
    pub tcp_retransmits: u64,
    pub tcp_rst: u64,
    pub tcp_syn: u64,
    pub tcp_fin: u64,
    /// Flow entries this interface and direction created in the flow maps.
    pub flows_created: u64,
    /// Flow entries that could not be created (map update failed).
    pub flow_create_failures: u64,
    /// Sum of handshake RTT samples, nanoseconds.
    pub handshake_rtt_sum_ns: u64,
    /// Handshake RTT histogram (see [`RTT_BUCKETS`]).
    pub handshake_rtt: [u64; RTT_BUCKETS],
    /// Packets the parser could not classify, per [`Unclassified`] reason.
    pub unclassified: [u64; UNCLASSIFIED_REASONS],
}

impl DeviceStats {
    pub const ZERO: DeviceStats = DeviceStats {
        packets: 0,
        bytes: 0,
        tcp_packets: 0,
        tcp_retransmits: 0,
        tcp_rst: 0,
        tcp_syn: 0,
        tcp_fin: 0,
        tcp_zero_window: 0,
        ipv4_df: 0,
        flows_created: 0,
        flow_create_failures: 0,
        handshake_rtt_sum_ns: 0,
        handshake_rtt: [0; RTT_BUCKETS],
        ip_size: [0; SIZE_BUCKETS],
        ip_size_sum: 0,
        tcp_payload_size: [0; SIZE_BUCKETS],
        tcp_payload_sum: 0,
        unclassified: [0; UNCLASSIFIED_REASONS],
    };

    /// Adds another CPU's copy into this one.
    pub fn accumulate(&mut self, other: &DeviceStats) {
        fn add(a: &mut u64, b: u64) {
            *a = a.wrapping_add(b);
        }
        fn add_all(a: &mut [u64], b: &[u64]) {
            for (a, b) in a.iter_mut().zip(b) {
                add(a, *b);
            }
        }
        add(&mut self.packets, other.packets);
        add(&mut self.bytes, other.bytes);
        add(&mut self.tcp_packets, other.tcp_packets);
        add(&mut self.tcp_retransmits, other.tcp_retransmits);
        add(&mut self.tcp_rst, other.tcp_rst);
        add(&mut self.tcp_syn, other.tcp_syn);
        add(&mut self.tcp_fin, other.tcp_fin);
        add(&mut self.tcp_zero_window, other.tcp_zero_window);
        add(&mut self.ipv4_df, other.ipv4_df);
        add(&mut self.flows_created, other.flows_created);
        add(&mut self.flow_create_failures, other.flow_create_failures);
        add(&mut self.handshake_rtt_sum_ns, other.handshake_rtt_sum_ns);
        add_all(&mut self.handshake_rtt, &other.handshake_rtt);
        add_all(&mut self.ip_size, &other.ip_size);
        add(&mut self.ip_size_sum, other.ip_size_sum);
        add_all(&mut self.tcp_payload_size, &other.tcp_payload_size);
        add(&mut self.tcp_payload_sum, other.tcp_payload_sum);
        add_all(&mut self.unclassified, &other.unclassified);
    }
}

impl Default for DeviceStats {
    fn default() -> Self {
        DeviceStats::ZERO
    }
}

/// Address family of a [`FlowKey`].
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// One direction of a TCP connection as seen on one interface, either family: how user space
/// names flows (the maps use the compact [`FlowKey4`] / [`FlowKey6`]; see [`FlowKey::kernel`]).
/// IPv4 addresses occupy the first 4 bytes of `src`/`dst`, the rest is zero.
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub ifindex: u32,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// A [`Direction`] as `u8`.
    pub direction: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// The key of the opposite direction of the same connection on the same interface.
    pub const fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            ifindex: self.ifindex,
            family: self.family,
            direction: if self.direction == Direction::Ingress as u8 {
                Direction::Egress as u8
            } else {
                Direction::Ingress as u8
            },
            _pad: [0; 2],
        }
    }
}

/// Interface index and [`Direction`] in one word, as the flow map keys hold them: `ifindex`
/// shifted left by one, the direction in the low bit (Linux interface indexes are below 2^31).
#[inline(always)]
pub const fn ifindex_direction(ifindex: u32, direction: Direction) -> u32 {
    (ifindex << 1) | direction as u32
}

/// Key of [`FLOWS4_MAP`]: one direction of an IPv4 TCP connection on one interface. Aligned
/// to 8 bytes so that the slot table can read it as words in place ([`FlowKey4::words`]).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    /// See [`ifindex_direction`].
    pub ifindex_direction: u32,
}

/// Key of [`FLOWS6_MAP`]: one direction of an IPv6 TCP connection on one interface. Aligned
/// to 8 bytes like [`FlowKey4`].
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// See [`ifindex_direction`].
    pub ifindex_direction: u32,
}

impl FlowKey4 {
    /// The key whose [`FlowKey4::words`] these are.
    #[inline(always)]
    pub const fn from_words(words: [u64; 2]) -> FlowKey4 {
        // SAFETY: #[repr(C, align(8))], 16 bytes without padding, every bit pattern valid.
        unsafe { core::mem::transmute::<[u64; 2], FlowKey4>(words) }
    }

    /// The key as the slot table compares and hashes it: its 16 bytes as two words, read in
    /// place (memory order).
    #[inline(always)]
    pub fn words(&self) -> &[u64; 2] {
        // SAFETY: #[repr(C, align(8))], 16 bytes without padding: two initialised, aligned
        // words.
        unsafe { &*(self as *const FlowKey4 as *const [u64; 2]) }
    }

    /// The key of the opposite direction of the same connection on the same interface.
    #[inline(always)]
    pub const fn reversed(&self) -> FlowKey4 {
        FlowKey4 {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            ifindex_direction: self.ifindex_direction ^ 1,
        }
    }
}

impl FlowKey6 {
    /// The key whose [`FlowKey6::words`] these are.
    #[inline(always)]
    pub const fn from_words(words: [u64; 5]) -> FlowKey6 {
        // SAFETY: #[repr(C, align(8))], 40 bytes without padding, every bit pattern valid.
        unsafe { core::mem::transmute::<[u64; 5], FlowKey6>(words) }
    }

    /// The key as the slot table compares and hashes it: its 40 bytes as five words, read in
    /// place (memory order).
    #[inline(always)]
    pub fn words(&self) -> &[u64; 5] {
        // SAFETY: #[repr(C, align(8))], 40 bytes without padding: five initialised, aligned
        // words.
        unsafe { &*(self as *const FlowKey6 as *const [u64; 5]) }
    }

    /// The key of the opposite direction of the same connection on the same interface.
    #[inline(always)]
    pub const fn reversed(&self) -> FlowKey6 {
        FlowKey6 {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            ifindex_direction: self.ifindex_direction ^ 1,
        }
    }
}

/// A flow key as one of the flow maps holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFlowKey {
    V4(FlowKey4),
    V6(FlowKey6),
}

impl FlowKey {
    /// The key the flow maps hold this flow under; `None` for a family or direction no program
    /// writes.
    pub fn kernel(&self) -> Option<KernelFlowKey> {
        let direction = Direction::from_raw(self.direction as u32)?;
        let ifindex_direction = ifindex_direction(self.ifindex, direction);
        match self.family {
            FAMILY_IPV4 => {
                let mut src = [0; 4];
                let mut dst = [0; 4];
                src.copy_from_slice(&self.src[..4]);
                dst.copy_from_slice(&self.dst[..4]);
                Some(KernelFlowKey::V4(FlowKey4 {
                    src,
                    dst,
                    src_port: self.src_port,
                    dst_port: self.dst_port,
                    ifindex_direction,
                }))
            }
            FAMILY_IPV6 => Some(KernelFlowKey::V6(FlowKey6 {
                src: self.src,
                dst: self.dst,
                src_port: self.src_port,
                dst_port: self.dst_port,
                ifindex_direction,
            })),
            _ => None,
        }
    }
}

impl From<FlowKey4> for FlowKey {
    fn from(key: FlowKey4) -> FlowKey {
        let mut src = [0; 16];
        let mut dst = [0; 16];
        src[..4].copy_from_slice(&key.src);
        dst[..4].copy_from_slice(&key.dst);
        FlowKey {
            src,
            dst,
            src_port: key.src_port,
            dst_port: key.dst_port,
            ifindex: key.ifindex_direction >> 1,
            family: FAMILY_IPV4,
            direction: (key.ifindex_direction & 1) as u8,
            _pad: [0; 2],
        }
    }
}

impl From<FlowKey6> for FlowKey {
    fn from(key: FlowKey6) -> FlowKey {
        FlowKey {
            src: key.src,
            dst: key.dst,
            src_port: key.src_port,
            dst_port: key.dst_port,
            ifindex: key.ifindex_direction >> 1,
            family: FAMILY_IPV6,
            direction: (key.ifindex_direction & 1) as u8,
            _pad: [0; 2],
        }
    }
}

/// Value of [`FLOWS4_MAP`] and [`FLOWS6_MAP`]. Counters are updated with atomic adds; the
/// tracking fields are owned by whichever CPU processes the flow (one flow direction is
/// processed serially in practice; a race can only misjudge one segment).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub counts: FlowCounts,
    pub tracking: FlowTracking,
}

/// Per-CPU hash map of packet drops (the `kfree_skb` tracepoint): [`DropKey`] -> drops. Not
/// pinned: the kernel's drop counters are host-wide facts re-read from zero each run, and a
/// restart of the daemon is an ordinary counter reset to Prometheus.
pub const DROPS_MAP: &str = "DROPS";
/// Capacity of [`DROPS_MAP`]: a key exists per reason that occurred, watched interface (plus
/// one for every other) and protocol class, so a few hundred in practice. A drop that finds
/// the map full is counted in [`DROPS_LOST_MAP`] instead.
pub const DROPS_MAX_ENTRIES: u32 = 16_384;
/// Per-CPU array of one `u64`: drops that found [`DROPS_MAP`] full.
pub const DROPS_LOST_MAP: &str = "DROPS_LOST";
/// Name of the drop program (BTF-enabled tracepoint on `kfree_skb`).
pub const KFREE_SKB_PROGRAM: &str = "kfree_skb";
/// Name of the read-only global of type [`DropLayout`] the daemon sets before loading.
pub const DROP_LAYOUT_GLOBAL: &str = "DROP_LAYOUT";
/// [`DropLayout`] field value for a field the running kernel does not have.
pub const NO_OFFSET: u32 = u32::MAX;

/// [`DropKey::l3`] values, from `skb->protocol`.
pub const DROP_L3_OTHER: u8 = 0;
pub const DROP_L3_IPV4: u8 = 1;
pub const DROP_L3_IPV6: u8 = 2;
pub const DROP_L3_ARP: u8 = 3;
/// [`DropKey::l4`] values, from the IP header's protocol (IPv6: the first next header); none
/// when the network header is unset or unreadable.
pub const DROP_L4_NONE: u8 = 0;
pub const DROP_L4_TCP: u8 = 1;
pub const DROP_L4_UDP: u8 = 2;
pub const DROP_L4_ICMP: u8 = 3;

/// Key of [`DROPS_MAP`], 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct DropKey {
    /// The tracepoint's `enum skb_drop_reason` value (0 on kernels without the argument).
    pub reason: u32,
    /// `skb->dev->ifindex` when that device is in the daemon's network namespace and watched
    /// (has a slot in [`IFINDEX_SLOTS_MAP`]); 0 for every other drop.
    pub ifindex: u32,
    /// One of the `DROP_L3_*` values.
    pub l3: u8,
    /// One of the `DROP_L4_*` values.
    pub l4: u8,
    pub _pad: u16,
}

/// Where the drop program finds what it reads in kernel structures: byte offsets the daemon
/// takes from the running kernel's BTF (there are no CO-RE relocations for Rust eBPF
/// programs), [`NO_OFFSET`] for a field the kernel lacks. Read-only data the program reads at
/// run time and the verifier knows the value of.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropLayout {
    /// `sk_buff.dev` (a `struct net_device *`).
    pub skb_dev: u32,
    /// `sk_buff.protocol` (`__be16`).
    pub skb_protocol: u32,
    /// `sk_buff.head` (`unsigned char *`).
    pub skb_head: u32,
    /// `sk_buff.network_header` (`__u16`, offset from head; `0xffff` when unset).
    pub skb_network_header: u32,
    /// `net_device.ifindex` (`int`).
    pub dev_ifindex: u32,
    /// `net_device.nd_net.net` (`struct net *`); [`NO_OFFSET`] without network namespaces.
    pub dev_net: u32,
    /// `net.ns.inum` (`unsigned int`).
    pub net_inum: u32,
    /// Inode number of the daemon's network namespace: only devices in it can be watched ones.
    pub netns_inum: u32,
    /// 1 when the tracepoint passes the drop reason (third argument, Linux 5.17+).
    pub has_reason: u32,
}

impl DropLayout {
    /// The placeholder in the object: nothing known, nothing read.
    pub const UNKNOWN: DropLayout = DropLayout {
        skb_dev: NO_OFFSET,
        skb_protocol: NO_OFFSET,
        skb_head: NO_OFFSET,
        skb_network_header: NO_OFFSET,
        dev_ifindex: NO_OFFSET,
        dev_net: NO_OFFSET,
        net_inum: NO_OFFSET,
        netns_inum: 0,
        has_reason: 0,
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] u64 fields and arrays, no padding.
    unsafe impl aya::Pod for super::DeviceStats {}
    // SAFETY: #[repr(C)], explicit padding field, 44 bytes, alignment 4.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: #[repr(C)], 16 bytes without padding (4 + 4 + 2 + 2 + 4), alignment 4.
    unsafe impl aya::Pod for super::FlowKey4 {}
    // SAFETY: #[repr(C)], 40 bytes without padding (16 + 16 + 2 + 2 + 4), alignment 4.
    unsafe impl aya::Pod for super::FlowKey6 {}
    // SAFETY: #[repr(C)], explicit padding field, size a multiple of 8.
    unsafe impl aya::Pod for super::FlowStats {}
    // SAFETY: #[repr(C)], explicit padding fields, 64 bytes.
    unsafe impl aya::Pod for super::FlowSlot {}
    // SAFETY: #[repr(C)], u64 fields only.
    unsafe impl aya::Pod for super::FlowCounts {}
    // SAFETY: #[repr(C)], explicit padding field, 12 bytes, alignment 4.
    unsafe impl aya::Pod for super::DropKey {}
    // SAFETY: #[repr(C)], u32 fields only.
    unsafe impl aya::Pod for super::DropLayout {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(
            core::mem::size_of::<FlowKey>(),
            16 + 16 + 2 + 2 + 4 + 1 + 1 + 2
        );
        assert_eq!(core::mem::size_of::<FlowKey4>(), 4 + 4 + 2 + 2 + 4);
        assert_eq!(core::mem::size_of::<FlowKey6>(), 16 + 16 + 2 + 2 + 4);
        assert_eq!(core::mem::size_of::<FlowStats>(), 11 * 8 + 4 + 4);
        assert_eq!(core::mem::size_of::<FlowTracking>(), 8 + 4 + 4);
        assert_eq!(core::mem::size_of::<FlowCounts>(), 10 * 8);
        assert_eq!(core::mem::size_of::<FlowSlot>(), 5 * 8 + 8 + 16);
        assert_eq!(
            core::mem::size_of::<DeviceStats>(),
            8 * (12 + RTT_BUCKETS + 2 * SIZE_BUCKETS + 2 + UNCLASSIFIED_REASONS)
        );
        assert_eq!(core::mem::size_of::<DropKey>(), 4 + 4 + 1 + 1 + 2);
        assert_eq!(core::mem::size_of::<DropLayout>(), 9 * 4);
    }

    /// Every field's offset in layout version 4, and where the slot table puts a flow. A
    /// failure here means a map layout changed: bump [`MAP_LAYOUT_VERSION`], then update this
    /// table (and its version).
    #[test]
    fn layout_matches_version() {
        use core::mem::{offset_of, size_of};
        assert_eq!(
            MAP_LAYOUT_VERSION, 5,
            "update the offsets below for the new version"
        );
        let v4 = FlowKey4 {
            src: [10, 0, 0, 1],
            dst: [10, 0, 0, 2],
            src_port: 40_000,
            dst_port: 443,
            ifindex_direction: 2 << 1,
        };
        let v6 = FlowKey6 {
            src: [0xfd; 16],
            dst: [0xfe; 16],
            src_port: 40_000,
            dst_port: 443,
            ifindex_direction: 2 << 1,
        };
        let (shift, mask) = (flow_slot_shift(FLOW_SLOTS_LIMIT), FLOW_SLOTS_LIMIT - 1);
        assert_eq!(
            (
                flow_slot_index(v4.words(), shift, mask),
                flow_slot_index(v6.words(), shift, mask)
            ),
            (772_405, 784_529),
            "the slot index changed: a new layout version"
        );
        assert_eq!(
            [1, 2, 1024, FLOW_SLOTS_LIMIT].map(flow_slot_shift),
            [63, 63, 54, 44]
        );
        assert_eq!(flow_slot_index(v4.words(), flow_slot_shift(1), 0), 0);
        assert!(flow_slot_index(v4.words(), flow_slot_shift(2), 1) <= 1);
        assert_eq!((DEVICE_SLOTS, DEVICE_STATS_MAX_ENTRIES), (512, 1024));
        let device_stats = [
            offset_of!(DeviceStats, packets),
            offset_of!(DeviceStats, bytes),
            offset_of!(DeviceStats, tcp_packets),
            offset_of!(DeviceStats, tcp_retransmits),
            offset_of!(DeviceStats, tcp_rst),
            offset_of!(DeviceStats, tcp_syn),
            offset_of!(DeviceStats, tcp_fin),
            offset_of!(DeviceStats, tcp_zero_window),
            offset_of!(DeviceStats, ipv4_df),
            offset_of!(DeviceStats, flows_created),
            offset_of!(DeviceStats, flow_create_failures),
            offset_of!(DeviceStats, handshake_rtt_sum_ns),
            offset_of!(DeviceStats, handshake_rtt),
            offset_of!(DeviceStats, ip_size),
            offset_of!(DeviceStats, ip_size_sum),
            offset_of!(DeviceStats, tcp_payload_size),
            offset_of!(DeviceStats, tcp_payload_sum),
            offset_of!(DeviceStats, unclassified),
            size_of::<DeviceStats>(),
        ];
        assert_eq!(
            device_stats,
            [
                0, 8, 16, 328, 336, 344, 352, 320, 24, 360, 368, 376, 384, 184, 32, 48, 40, 576,
                656
            ]
        );
        let flow_key4 = [
            offset_of!(FlowKey4, src),
            offset_of!(FlowKey4, dst),
            offset_of!(FlowKey4, src_port),
            offset_of!(FlowKey4, dst_port),
            offset_of!(FlowKey4, ifindex_direction),
            size_of::<FlowKey4>(),
        ];
        assert_eq!(flow_key4, [0, 4, 8, 10, 12, 16]);
        let flow_key6 = [
            offset_of!(FlowKey6, src),
            offset_of!(FlowKey6, dst),
            offset_of!(FlowKey6, src_port),
            offset_of!(FlowKey6, dst_port),
            offset_of!(FlowKey6, ifindex_direction),
            size_of::<FlowKey6>(),
        ];
        assert_eq!(flow_key6, [0, 16, 32, 34, 36, 40]);
        assert_eq!(ifindex_direction(7, Direction::Egress), 15);
        let flow_counts = [
            offset_of!(FlowCounts, packets),
            offset_of!(FlowCounts, bytes),
            offset_of!(FlowCounts, retransmits),
            offset_of!(FlowCounts, rst),
            offset_of!(FlowCounts, syn),
            offset_of!(FlowCounts, fin),
            offset_of!(FlowCounts, zero_window),
            offset_of!(FlowCounts, df),
            offset_of!(FlowCounts, first_seen_ns),
            offset_of!(FlowCounts, last_seen_ns),
            size_of::<FlowCounts>(),
        ];
        assert_eq!(flow_counts, [0, 8, 40, 56, 64, 72, 48, 16, 32, 24, 80]);
        let flow_tracking = [
            offset_of!(FlowTracking, handshake_start_ns),
            offset_of!(FlowTracking, next_seq),
            offset_of!(FlowTracking, window_scale_plus_one),
            offset_of!(FlowTracking, seq_valid),
            offset_of!(FlowTracking, awaiting_ack),
            size_of::<FlowTracking>(),
        ];
        assert_eq!(flow_tracking, [0, 8, 12, 13, 14, 16]);
        let flow_stats = [
            offset_of!(FlowStats, counts),
            offset_of!(FlowStats, tracking),
            size_of::<FlowStats>(),
        ];
        assert_eq!(flow_stats, [0, 80, 96]);
        let flow_slot = [
            offset_of!(FlowSlot, key),
            offset_of!(FlowSlot, owner),
            offset_of!(FlowSlot, tracking),
            size_of::<FlowSlot>(),
        ];
        assert_eq!(flow_slot, [0, 40, 48, 64]);
        assert_eq!(
            (SLOT_FREE, SLOT_CLAIMING, SLOT_DRAINING),
            (0, 1, 2),
            "owner values"
        );
    }

    #[test]
    fn slot_index_uses_every_word_and_spreads() {
        let key = |src_port: u16, ifindex: u32| FlowKey4 {
            src: [10, 0, 0, 1],
            dst: [10, 0, 0, 2],
            src_port,
            dst_port: 443,
            ifindex_direction: ifindex << 1,
        };
        let (shift, mask) = (flow_slot_shift(1024), 1023);
        // Consecutive ports (the usual way flows differ) fill the table at least as evenly as
        // random keys would: 1024 random flows into 1024 slots leave about 1024/e empty.
        // (Multiplicative hashing spreads them more evenly than that: about 250 empty, no slot
        // with more than two; random keys would leave some slot with five or more.)
        let mut flows_in = [0u32; 1024];
        for port in 40_000..41_024 {
            flows_in[flow_slot_index(key(port, 2).words(), shift, mask) as usize] += 1;
        }
        let empty = flows_in.iter().filter(|flows| **flows == 0).count();
        let fullest = flows_in.iter().max().copied().unwrap_or_default();
        assert!(empty <= 460, "{empty} of 1024 slots empty");
        assert!(
            fullest <= 6,
            "a slot took {fullest} of 1024 consecutive ports"
        );
        // Every field moves the slot: the high half of a word (destination address,
        // interface) as well as the low one.
        let base = flow_slot_index(key(40_000, 2).words(), shift, mask);
        assert_ne!(flow_slot_index(key(40_000, 3).words(), shift, mask), base);
        let mut other_dst = key(40_000, 2);
        other_dst.dst[3] = 3;
        assert_ne!(flow_slot_index(other_dst.words(), shift, mask), base);
        let v6 = FlowKey6 {
            src: [0xfd; 16],
            dst: [0xfe; 16],
            src_port: 1,
            dst_port: 2,
            ifindex_direction: 4,
        };
        let mut other = v6;
        other.dst[15] = 0;
        assert_ne!(
            flow_slot_index(v6.words(), shift, mask),
            flow_slot_index(other.words(), shift, mask)
        );
    }

    /// Keys that differ in one byte, anywhere, land in the same slot about as often as random
    /// keys would (1 in 1024 for 1024 slots).
    #[test]
    fn slot_index_collides_like_a_random_function() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let trials = 100_000;
        let mut same = 0;
        for _ in 0..trials {
            let words: [u64; 5] = core::array::from_fn(|_| next());
            let mut changed = words;
            let byte = next() % 40;
            let flip = (next() % 255 + 1) << (8 * (byte % 8));
            changed[(byte / 8) as usize] ^= flip;
            let shift = flow_slot_shift(1024);
            same += (flow_slot_index(&words, shift, 1023) == flow_slot_index(&changed, shift, 1023))
                as u32;
        }
        // Expected about 98; a hash that lets some bytes miss the index bits gives hundreds.
        assert!(
            same < 150,
            "{same} of {trials} one-byte changes kept the slot"
        );
    }

    #[test]
    fn words_round_trip() {
        let v4 = FlowKey4 {
            src: [1, 2, 3, 4],
            dst: [5, 6, 7, 8],
            src_port: 0x0a0b,
            dst_port: 0x0c0d,
            ifindex_direction: 0x0e0f_1011,
        };
        assert_eq!(FlowKey4::from_words(*v4.words()), v4);
        let mut v6 = FlowKey6 {
            src: [0; 16],
            dst: [0; 16],
            src_port: 7,
            dst_port: 8,
            ifindex_direction: 9,
        };
        for i in 0..16 {
            v6.src[i] = i as u8;
            v6.dst[i] = 100 + i as u8;
        }
        assert_eq!(FlowKey6::from_words(*v6.words()), v6);
    }

    #[test]
    fn reversed_swaps_ends_and_direction() {
        let key = FlowKey {
            src: [1; 16],
            dst: [2; 16],
            src_port: 10,
            dst_port: 20,
            ifindex: 3,
            family: FAMILY_IPV6,
            direction: Direction::Egress as u8,
            _pad: [0; 2],
        };
        let back = key.reversed();
        assert_eq!((back.src, back.dst), ([2; 16], [1; 16]));
        assert_eq!((back.src_port, back.dst_port), (20, 10));
        assert_eq!(back.direction, Direction::Ingress as u8);
        assert_eq!(back.reversed(), key);
    }

    #[test]
    fn kernel_keys_round_trip_and_reverse_like_flow_keys() {
        for (family, src, dst) in [
            (FAMILY_IPV4, [10, 0, 0, 1], [10, 0, 0, 2]),
            (FAMILY_IPV6, [0xfd, 0, 0, 1], [0xfd, 0, 0, 2]),
        ] {
            let mut key = FlowKey {
                src: [0; 16],
                dst: [0; 16],
                src_port: 40000,
                dst_port: 443,
                ifindex: 70_000,
                family,
                direction: Direction::Egress as u8,
                _pad: [0; 2],
            };
            key.src[..4].copy_from_slice(&src);
            key.dst[..4].copy_from_slice(&dst);
            if family == FAMILY_IPV6 {
                key.src[15] = 9;
            }
            let (back, reversed) = match key.kernel().unwrap() {
                KernelFlowKey::V4(k) => (FlowKey::from(k), FlowKey::from(k.reversed())),
                KernelFlowKey::V6(k) => (FlowKey::from(k), FlowKey::from(k.reversed())),
            };
            assert_eq!(back, key);
            assert_eq!(reversed, key.reversed());
        }
        let unknown = FlowKey {
            family: 0,
            ..FlowKey::from(FlowKey4 {
                src: [0; 4],
                dst: [0; 4],
                src_port: 0,
                dst_port: 0,
                ifindex_direction: 2,
            })
        };
        assert_eq!(unknown.kernel(), None);
    }

    #[test]
    fn size_bucket_is_the_clamped_bit_length() {
        for value in (0..=200_000u32).chain([u32::MAX - 1, u32::MAX]) {
            let bit_length = (u32::BITS - value.leading_zeros()) as usize;
            assert_eq!(
                size_bucket(value),
                bit_length.min(SIZE_BUCKETS - 1),
                "value {value}"
            );
        }
    }
}

// ===========================================================================================
// Passive signals (issue 26): ECN codepoints and path-MTU messages per interface and per flow.
// Kept in maps of their own, beside the interface statistics and flow maps above, so that the
// existing layouts (and the pinned maps that hold them) do not change. Not pinned: a restart of
// the daemon restarts these counters, as an ordinary counter reset to Prometheus.
// ===========================================================================================

/// Per-CPU array of [`SignalStats`], indexed like [`DEVICE_STATS_MAP`] (`2 * slot + direction`).
pub const SIGNAL_STATS_MAP: &str = "SIGNAL_STATS";
/// LRU hash maps of per-flow signals: [`FlowKey4`] / [`FlowKey6`] -> [`FlowSignals`]. An entry
/// is created only when a flow has something to count here (a CE mark, ECE, CWR, a path-MTU
/// message quoting it), so most flows never have one.
pub const FLOW_SIGNALS4_MAP: &str = "FLOW_SIGNALS4";
pub const FLOW_SIGNALS6_MAP: &str = "FLOW_SIGNALS6";
/// Capacity of each of [`FLOW_SIGNALS4_MAP`] and [`FLOW_SIGNALS6_MAP`].
pub const FLOW_SIGNALS_MAX_ENTRIES: u32 = 16_384;

/// ECN codepoints (RFC 3168), indexed by their value in the IP header's two ECN bits.
pub const ECN_CODEPOINTS: [&str; 4] = ["not_ect", "ect1", "ect0", "ce"];
/// The CE ("congestion experienced") codepoint.
pub const ECN_CE: u8 = 3;

/// Upper bounds (bytes) of the announced-MTU histogram's buckets, before `+Inf`: the minimum
/// IPv4 MTU, IPv6's minimum, then the tunnel and PPPoE sizes just below Ethernet's 1500, and
/// jumbo frames.
pub const PMTU_BOUNDS: [u32; 9] = [576, 1024, 1280, 1400, 1450, 1480, 1492, 1500, 9000];
/// Buckets of the announced-MTU histogram ([`PMTU_BOUNDS`] and `+Inf`).
pub const PMTU_BUCKETS: usize = PMTU_BOUNDS.len() + 1;

/// The bucket of an announced MTU: the first bound it does not exceed, else `+Inf`.
#[inline(always)]
pub fn pmtu_bucket(mtu: u32) -> usize {
    let mut index = 0;
    while index < PMTU_BOUNDS.len() {
        if mtu <= PMTU_BOUNDS[index] {
            return index;
        }
        index += 1;
    }
    PMTU_BOUNDS.len()
}

/// Value of [`SIGNAL_STATS_MAP`]: one interface and direction on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalStats {
    /// IP packets (GSO segments counted) by ECN codepoint, indexed by its value.
    pub ecn: [u64; 4],
    /// ICMPv4 fragmentation-needed and ICMPv6 packet-too-big messages.
    pub pmtu_messages: u64,
    /// The MTU those messages announce, by [`pmtu_bucket`].
    pub pmtu_announced: [u64; PMTU_BUCKETS],
    /// Sum of the announced MTUs, bytes.
    pub pmtu_announced_sum: u64,
}

impl SignalStats {
    pub const ZERO: SignalStats = SignalStats {
        ecn: [0; 4],
        pmtu_messages: 0,
        pmtu_announced: [0; PMTU_BUCKETS],
        pmtu_announced_sum: 0,
    };

    /// Adds `other` (another CPU's copy, or a forgotten interface's totals).
    pub fn accumulate(&mut self, other: &SignalStats) {
        for (total, value) in self.ecn.iter_mut().zip(other.ecn) {
            *total += value;
        }
        self.pmtu_messages += other.pmtu_messages;
        for (total, value) in self.pmtu_announced.iter_mut().zip(other.pmtu_announced) {
            *total += value;
        }
        self.pmtu_announced_sum += other.pmtu_announced_sum;
    }
}

impl Default for SignalStats {
    fn default() -> Self {
        SignalStats::ZERO
    }
}

/// Value of [`FLOW_SIGNALS4_MAP`] and [`FLOW_SIGNALS6_MAP`]: one flow direction on one
/// interface, shared by every CPU (atomic adds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSignals {
    /// IP packets of the flow marked CE (GSO segments counted).
    pub ce: u64,
    /// TCP segments with ECE (ECN-Echo) set, SYNs included (where ECN is negotiated).
    pub ece: u64,
    /// TCP segments with CWR (Congestion Window Reduced) set, SYNs included.
    pub cwr: u64,
    /// Path-MTU messages (ICMPv4 fragmentation-needed, ICMPv6 packet-too-big) seen on the
    /// interface that quote a packet of this flow direction.
    pub pmtu_messages: u64,
}

impl FlowSignals {
    /// What was counted since `earlier`, a previous read of the same entry; the whole of
    /// `self` when a counter went backwards (the entry was evicted and created anew).
    pub fn since(&self, earlier: &FlowSignals) -> FlowSignals {
        if self.ce < earlier.ce
            || self.ece < earlier.ece
            || self.cwr < earlier.cwr
            || self.pmtu_messages < earlier.pmtu_messages
        {
            return *self;
        }
        FlowSignals {
            ce: self.ce - earlier.ce,
            ece: self.ece - earlier.ece,
            cwr: self.cwr - earlier.cwr,
            pmtu_messages: self.pmtu_messages - earlier.pmtu_messages,
        }
    }

    /// Adds `other`.
    pub fn add(&mut self, other: &FlowSignals) {
        self.ce += other.ce;
        self.ece += other.ece;
        self.cwr += other.cwr;
        self.pmtu_messages += other.pmtu_messages;
    }
}

#[cfg(feature = "user")]
mod signals_pod {
    // SAFETY: #[repr(C)], u64 fields and arrays only, no padding.
    unsafe impl aya::Pod for super::SignalStats {}
    // SAFETY: #[repr(C)], u64 fields only.
    unsafe impl aya::Pod for super::FlowSignals {}
}

#[cfg(test)]
mod signals_tests {
    use super::*;

    #[test]
    fn signal_layouts_have_no_implicit_padding() {
        assert_eq!(
            core::mem::size_of::<SignalStats>(),
            (4 + 1 + PMTU_BUCKETS + 1) * 8
        );
        assert_eq!(core::mem::size_of::<FlowSignals>(), 4 * 8);
    }

    #[test]
    fn pmtu_bucket_is_the_first_bound_not_exceeded() {
        assert_eq!(pmtu_bucket(0), 0);
        assert_eq!(pmtu_bucket(576), 0);
        assert_eq!(pmtu_bucket(577), 1);
        assert_eq!(pmtu_bucket(1280), 2);
        assert_eq!(pmtu_bucket(1400), 3);
        assert_eq!(pmtu_bucket(1500), 7);
        assert_eq!(pmtu_bucket(1501), 8);
        assert_eq!(pmtu_bucket(9001), PMTU_BUCKETS - 1);
        assert_eq!(pmtu_bucket(u32::MAX), PMTU_BUCKETS - 1);
    }

    #[test]
    fn flow_signals_since_restarts_on_a_counter_going_back() {
        let earlier = FlowSignals {
            ce: 5,
            ece: 2,
            cwr: 1,
            pmtu_messages: 0,
        };
        let now = FlowSignals { ce: 7, ..earlier };
        assert_eq!(
            now.since(&earlier),
            FlowSignals {
                ce: 2,
                ..FlowSignals::default()
            }
        );
        let recreated = FlowSignals {
            ce: 1,
            ..FlowSignals::default()
        };
        assert_eq!(recreated.since(&earlier), recreated);
    }
}

// ---- Connection outcomes (see outcomes.rs) ----
mod outcomes;
pub use outcomes::*;

// ---- Rare kernel-side events (see events.rs) ----
mod events;
pub use events::*;
// ---- Passive RTT from TCP timestamps (see rtt.rs) ----
mod rtt;
pub use rtt::*;
