//! Passive RTT from TCP timestamps (issue 26, the ePPing method): a TSval leaving a watched
//! interface (egress) is remembered with the time it left; the first segment of the reverse
//! direction arriving at that interface (ingress) whose TSecr echoes it gives one RTT sample,
//! the time from this interface to the far end and back. The rules (one value outstanding per
//! flow direction, only a newer TSval stored, a value older than four seconds replaced) are
//! `network-probe-common`'s `rtt` module, where they are unit-tested.
//!
//! Where the outstanding value is kept, and why: in the flow's *ingress* entry, the one whose
//! segments echo it, in its `FlowTracking::handshake_start_ns` word, which an ingress entry
//! never uses (the handshake start lives in the entry of the direction that sent the SYN or
//! SYN-ACK). The ACK path (ingress) thus finds it in the slot or LRU entry it has found already:
//! one load, one compare with the TSecr, and the clock read only on a match. A map of its own
//! would cost a hash lookup per timestamped packet (IPv4 has about 4-10 ns of headroom under
//! the 2x-empty-program goal, a lookup costs more); a new field beside the slot's tracking
//! would grow the slot past its 64-byte cache line and change the pinned layout. The price is
//! on egress: storing a TSval takes a tail call, a second parse and a lookup of the reverse
//! (ingress) entry (the slot table's inlined lookup, else the LRU map), for every timestamped
//! egress segment. A flow whose reverse
//! direction was not seen yet on the interface (its first SYN) stores nothing.
//!
//! The option is read at the place Linux and most stacks put it on every segment but SYNs
//! (NOP, NOP, kind 8, length 10, right after the fixed header: one 12-byte load and a
//! compare); on SYNs (whose options Linux lays out otherwise) the RTT programs' parse walks
//! the options for it too (`parse::parse_with_syn_timestamps`), if it comes before the window
//! scale option (as Linux and most stacks send it). Other segments with the option elsewhere
//! give no sample.
//!
//! Where the work runs: in programs of their own, [`tc_rtt_store`] (egress), [`tc_rtt_echo`]
//! and [`xdp_rtt_echo`] (ingress), which the accounting programs tail-call, last, when
//! `account::observe` says there is work: on egress a segment with the option (or a SYN), on
//! ingress one whose TSecr echoes the value outstanding in the entry accounting has just
//! updated, or a newer one (a load and a compare on the ACK path, no call when there is
//! nothing to do: [`crate::tcp_timestamps::Timestamps::echo_due`]). The RTT program parses the packet again, finds
//! the flow's entry again (rare on ingress: once per sample) and stores or echoes. Each
//! program is verified on its own. Inlined in the accounting programs, the store (with its
//! reverse lookup) and the echo (with its sample) were verified again in every state reaching
//! them, and with the kernel events of `crate::events` also in, `tc_ingress` went past the
//! verifier's limit of a million processed instructions (6.18: main alone 766,607, this alone
//! 750,548). BPF global functions (tried next) kept 6.18 at 691,362 but not 6.1: its
//! precision tracking marks every scalar precise when it walks back across a BPF-to-BPF call,
//! and `tc_ingress` stopped at the limit (E2BIG). A tail call is a helper call, which 6.1
//! walks back across; the accounting programs keep no RTT code but the test. Figures in
//! docs/signals.md.
//!
//! Samples go to the interface's per-CPU [`RttStats`] (log2 histogram) and the flow's
//! [`FlowRtt`] entry (count, sum, minimum), made at the flow's first sample: a hash lookup
//! per sample, never per packet.

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action::XDP_PASS},
    helpers::generated::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{LruHashMap, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};
use network_probe_common::{
    DEVICE_STATS_MAX_ENTRIES, Direction, FLOW_RTT_MAX_ENTRIES, FlowKey4, FlowKey6, FlowRtt,
    RTT_BUCKETS, RttStats, ts_echo_matches, ts_echo_passed, ts_echo_rtt, ts_echoed, ts_store,
};

use crate::{
    account::{FlowMapKey, ports_word, tracking_of},
    atomic::atomic_add,
    maps::IFINDEX_SLOTS,
    packet::Packet,
    parse::{Parsed, parse_with_syn_timestamps},
    tcp_timestamps::Timestamps,
};

/// `BPF_NOEXIST`: create only if absent.
const BPF_NOEXIST: u64 = 1;

/// Per-interface, per-direction RTT histograms at `2 * slot + direction`, one copy per CPU.
#[map(name = "RTT_STATS")]
static RTT_STATS: PerCpuArray<RttStats> =
    PerCpuArray::with_max_entries(DEVICE_STATS_MAX_ENTRIES, 0);

/// Per-flow samples of IPv4 flows, under the echoing (ingress) direction's key.
#[map(name = "FLOW_RTT4")]
static FLOW_RTT4: LruHashMap<FlowKey4, FlowRtt> =
    LruHashMap::with_max_entries(FLOW_RTT_MAX_ENTRIES, 0);

/// The same for IPv6 flows.
#[map(name = "FLOW_RTT6")]
static FLOW_RTT6: LruHashMap<FlowKey6, FlowRtt> =
    LruHashMap::with_max_entries(FLOW_RTT_MAX_ENTRIES, 0);

/// A flow key with a per-flow RTT map.
pub(crate) trait RttKey: Copy + 'static {
    fn rtt_map() -> &'static LruHashMap<Self, FlowRtt>;
    /// The key's interface index and direction (`ifindex << 1 | direction`).
    fn ifindex_direction(&self) -> u32;
}

impl RttKey for FlowKey4 {
    #[inline(always)]
    fn rtt_map() -> &'static LruHashMap<Self, FlowRtt> {
        &FLOW_RTT4
    }
    #[inline(always)]
    fn ifindex_direction(&self) -> u32 {
        self.ifindex_direction
    }
}

impl RttKey for FlowKey6 {
    #[inline(always)]
    fn rtt_map() -> &'static LruHashMap<Self, FlowRtt> {
        &FLOW_RTT6
    }
    #[inline(always)]
    fn ifindex_direction(&self) -> u32 {
        self.ifindex_direction
    }
}

/// The RTT programs of the TC hooks, tail-called by `tc_ingress` and `tc_egress` when
/// [`crate::account::observe`] says there is work: [`TC_STORE`] and [`TC_ECHO`]. Filled by the
/// daemon after loading; an empty entry makes the tail call fail and the packet go on
/// (accounted, without RTT).
#[map(name = "RTT_TC_PROGRAMS")]
static RTT_TC_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// The same for XDP (a program array takes programs of one type): [`XDP_ECHO`].
#[map(name = "RTT_XDP_PROGRAMS")]
static RTT_XDP_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Index of [`tc_rtt_store`] in [`RTT_TC_PROGRAMS`].
const TC_STORE: u32 = 0;
/// Index of [`tc_rtt_echo`] in [`RTT_TC_PROGRAMS`].
const TC_ECHO: u32 = 1;
/// Index of [`xdp_rtt_echo`] in [`RTT_XDP_PROGRAMS`].
const XDP_ECHO: u32 = 0;

/// Tail-calls the TC RTT program of `direction` (the last thing a TC program does: it does not
/// return when the call succeeds).
#[inline(always)]
pub(crate) fn tail_call_tc(ctx: &TcContext, direction: Direction) {
    let index = if direction == Direction::Egress {
        TC_STORE
    } else {
        TC_ECHO
    };
    // SAFETY: the caller does nothing after this but return its verdict, which the RTT
    // program returns alike.
    unsafe { RTT_TC_PROGRAMS.tail_call(ctx, index) };
}

/// Tail-calls the XDP RTT program (ingress), as [`tail_call_tc`].
#[inline(always)]
pub(crate) fn tail_call_xdp(ctx: &XdpContext) {
    // SAFETY: as in `tail_call_tc`.
    unsafe { RTT_XDP_PROGRAMS.tail_call(ctx, XDP_ECHO) };
}

/// Egress RTT program, tail-called by `tc_egress`: stores the segment's TSval in the flow's
/// reverse (ingress) entry. Returns `TC_ACT_UNSPEC`, as `tc_egress`.
#[classifier]
pub(crate) fn tc_rtt_store(ctx: TcContext) -> i32 {
    // SAFETY: the kernel hands the program a valid __sk_buff for its whole run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    of_packet(&ctx, ifindex, Direction::Egress);
    TC_ACT_UNSPEC
}

/// Ingress RTT program, tail-called by `tc_ingress`: matches the segment's TSecr with the
/// value outstanding in its flow's entry, and records the sample.
#[classifier]
pub(crate) fn tc_rtt_echo(ctx: TcContext) -> i32 {
    // SAFETY: as above.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    of_packet(&ctx, ifindex, Direction::Ingress);
    TC_ACT_UNSPEC
}

/// The same for `xdp_ingress`. Returns `XDP_PASS`.
#[xdp]
pub(crate) fn xdp_rtt_echo(ctx: XdpContext) -> u32 {
    // SAFETY: the kernel hands the program a valid xdp_md for its whole run.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    of_packet(&ctx, ifindex, Direction::Ingress);
    XDP_PASS
}

/// The RTT work of one segment: parsed again (the tail call keeps nothing of the caller but
/// the packet), its flow's key built as accounting builds it.
#[inline(always)]
fn of_packet<P: Packet>(packet: &P, ifindex: u32, direction: Direction) {
    match parse_with_syn_timestamps(packet) {
        Parsed::Tcp4(_, tcp, addresses) => {
            let key = FlowKey4::from_words([addresses, ports_word(&tcp, ifindex, direction)]);
            of_flow(&key, direction, tcp.timestamps);
        }
        Parsed::Tcp6(_, tcp, [src0, src1, dst0, dst1]) => {
            let ports = ports_word(&tcp, ifindex, direction);
            let key = FlowKey6::from_words([src0, src1, dst0, dst1, ports]);
            of_flow(&key, direction, tcp.timestamps);
        }
        _ => {}
    }
}

/// Egress: the TSval is stored in the reverse entry; ingress: the TSecr is matched against
/// this entry's outstanding value.
#[inline(always)]
fn of_flow<K: FlowMapKey + RttKey>(key: &K, direction: Direction, timestamps: Timestamps) {
    if !timestamps.found() {
        return;
    }
    if direction == Direction::Egress {
        let reversed = FlowMapKey::reversed(key);
        if let Some(reverse) = tracking_of(&reversed) {
            // SAFETY: a pointer into a map value, valid for this program run.
            store(
                unsafe { &mut (*reverse).handshake_start_ns },
                timestamps.tsval(),
            );
        }
    } else if let Some(tracking) = tracking_of(key) {
        // SAFETY: as above.
        echo(
            key,
            unsafe { &mut (*tracking).handshake_start_ns },
            timestamps.tsecr(),
        );
    }
}

/// Egress: `tsval` leaves; `word` is the reverse (ingress) entry's outstanding-timestamp word.
#[inline(always)]
fn store(word: &mut u64, tsval: u32) {
    let stored = *word;
    // The cheap test first: most segments repeat the last TSval (it ticks once a millisecond).
    if stored != 0 && (tsval.wrapping_sub((stored >> 32) as u32) as i32) <= 0 {
        return;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(new) = ts_store(stored, tsval, now) {
        *word = new;
    }
}

/// Ingress: a segment of the flow `*key` echoes `tsecr`; `word` is this entry's
/// outstanding-timestamp word.
#[inline(always)]
fn echo<K: RttKey>(key: &K, word: &mut u64, tsecr: u32) {
    let stored = *word;
    if !ts_echo_matches(stored, tsecr) {
        if ts_echo_passed(stored, tsecr) {
            *word = ts_echoed(stored);
        }
        return;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    *word = ts_echoed(stored);
    if let Some(rtt_ns) = ts_echo_rtt(stored, now) {
        record(key, rtt_ns);
    }
}

/// One sample: the interface's histogram, the flow's entry.
#[inline(always)]
fn record<K: RttKey>(key: &K, rtt_ns: u64) {
    let ifindex_direction = key.ifindex_direction();
    if let Some(&slot) = IFINDEX_SLOTS.get(ifindex_direction >> 1)
        && slot != 0
        && let Some(stats) = RTT_STATS.get_ptr_mut((slot - 1) * 2 + (ifindex_direction & 1))
    {
        // SAFETY: a per-CPU value: only this CPU writes this copy, and the program is not
        // re-entered on this CPU while it runs.
        let stats = unsafe { &mut *stats };
        if let Some(bucket) = stats.buckets.get_mut(log2_bucket(rtt_ns / 1000)) {
            *bucket += 1;
        }
        stats.sum_ns += rtt_ns;
    }
    let map = K::rtt_map();
    if let Some(entry) = map.get_ptr_mut(key) {
        // SAFETY: a pointer into the map value, valid for this program run; shared between
        // CPUs, hence the atomic adds.
        add(unsafe { &mut *entry }, rtt_ns);
        return;
    }
    let first = FlowRtt {
        samples: 1,
        sum_ns: rtt_ns,
        min_ns: rtt_ns,
    };
    if map.insert(key, first, BPF_NOEXIST).is_ok() {
        return;
    }
    // Created meanwhile on another CPU: add to it.
    if let Some(entry) = map.get_ptr_mut(key) {
        // SAFETY: as above.
        add(unsafe { &mut *entry }, rtt_ns);
    }
}

#[inline(always)]
fn add(entry: &mut FlowRtt, rtt_ns: u64) {
    atomic_add(&mut entry.samples, 1);
    atomic_add(&mut entry.sum_ns, rtt_ns);
    if entry.min_ns == 0 || rtt_ns < entry.min_ns {
        entry.min_ns = rtt_ns;
    }
}

/// Bucket of `micros` in the log2 histogram of [`RTT_BUCKETS`] buckets: 0 for 0, else the
/// bit length, the last bucket taking everything larger (as the handshake histogram).
#[inline(always)]
fn log2_bucket(micros: u64) -> usize {
    // Opaque to the compiler, which otherwise knows the bit length is at most 64, drops the
    // bound check below, and leaves the verifier an index it cannot bound.
    let bits = core::hint::black_box((64 - micros.leading_zeros()) as usize);
    if bits >= RTT_BUCKETS {
        RTT_BUCKETS - 1
    } else {
        bits
    }
}
