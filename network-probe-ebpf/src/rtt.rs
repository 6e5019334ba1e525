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
//! on egress: storing a TSval looks up the reverse (ingress) entry (the slot table's inlined
//! lookup, else the LRU map), for every timestamped egress segment. A flow whose reverse
//! direction was not seen yet on the interface (its first SYN) stores nothing.
//!
//! The option is read at the place Linux and most stacks put it on every segment but SYNs
//! (NOP, NOP, kind 8, length 10, right after the fixed header: one 12-byte load and a
//! compare); on SYNs (whose options Linux lays out otherwise) the parser's bounded walk of
//! the options for window scale picks it up too, if it comes before the window scale option
//! (as Linux and most stacks send it). Other segments with the option elsewhere give no sample.
//!
//! The store and the echo run in BPF global functions, one of each per family
//! ([`network_probe_rtt_store4`], [`network_probe_rtt_echo4`], and the `6` ones), called without
//! a test around them (the option's presence is tested inside): the verifier checks their
//! bodies once, on their own, and each call only for its arguments. Inlined, the store (with
//! its reverse lookup) and the echo (with its sample) were verified again in every state
//! reaching them, and with the kernel events of `crate::events` also in, `tc_ingress` went
//! past the verifier's limit of a million processed instructions (6.18: main alone 766,607,
//! this alone 750,548). Which one a program calls is known when it is compiled: `tc_egress`
//! stores, `tc_ingress` (and XDP) echo. Arguments: the key as a pointer (to the caller's
//! stack: memory of the key's size to the verifier; copied to the callee's stack before a map
//! helper takes it: older kernels' helpers may refuse such memory as a key; not yet verified, see below), the entry's word as a pointer into the map value, the
//! option's words as scalars. A BPF call chain shares 512 bytes of stack and `tc_ingress`
//! takes 368 of them: the functions keep to 16 to 64 bytes (one function doing both, with a
//! whole-key volatile copy, took 272 and the load failed). With them (6.18), `tc_ingress`
//! processes 691,362 instructions and `tc_egress` 705,316, fewer than main alone (766,607 and
//! 791,719): the calls also took inlined code out of the states the rest of the program forks.
//! Not yet enough on 6.1: there `tc_ingress` still stops at the limit (E2BIG), also with a
//! single call placed last in `observe_flow` (tried, reverted).
//!
//! Samples go to the interface's per-CPU [`RttStats`] (log2 histogram) and the flow's
//! [`FlowRtt`] entry (count, sum, minimum), made at the flow's first sample: a hash lookup
//! per sample, never per packet.

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_ns,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use network_probe_common::{
    DEVICE_STATS_MAX_ENTRIES, FLOW_RTT_MAX_ENTRIES, FlowKey4, FlowKey6, FlowRtt, RTT_BUCKETS,
    RttStats, ts_echo_matches, ts_echo_passed, ts_echo_rtt, ts_echoed, ts_store,
};

use crate::{
    account::{FlowMapKey, tracking_of},
    atomic::atomic_add,
    maps::IFINDEX_SLOTS,
    packet::Packet,
};

/// `BPF_NOEXIST`: create only if absent.
const BPF_NOEXIST: u64 = 1;
/// NOP, NOP, kind 8, length 10 as the first four option bytes, in memory order.
const ALIGNED_TIMESTAMPS: u32 = u32::from_ne_bytes([1, 1, 8, 10]);

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
    /// Egress: the segment of the flow `key` stores its TSval in the reverse entry (a call
    /// of the family's global function).
    fn rtt_store(key: &Self, timestamps: Timestamps);
    /// Ingress: the segment of the flow `key`, whose entry's outstanding-timestamp word is
    /// `word`, is matched against it (a call of the family's global function).
    fn rtt_echo(key: &Self, word: &mut u64, timestamps: Timestamps);
    /// The key's interface index and direction (`ifindex << 1 | direction`).
    fn ifindex_direction(&self) -> u32;
}

impl RttKey for FlowKey4 {
    #[inline(always)]
    fn rtt_map() -> &'static LruHashMap<Self, FlowRtt> {
        &FLOW_RTT4
    }
    #[inline(always)]
    fn rtt_store(key: &Self, timestamps: Timestamps) {
        network_probe_rtt_store4(key, timestamps.kinds, timestamps.tsval);
    }
    #[inline(always)]
    fn rtt_echo(key: &Self, word: &mut u64, timestamps: Timestamps) {
        network_probe_rtt_echo4(key, word, timestamps.kinds, timestamps.tsecr);
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
    fn rtt_store(key: &Self, timestamps: Timestamps) {
        network_probe_rtt_store6(key, timestamps.kinds, timestamps.tsval);
    }
    #[inline(always)]
    fn rtt_echo(key: &Self, word: &mut u64, timestamps: Timestamps) {
        network_probe_rtt_echo6(key, word, timestamps.kinds, timestamps.tsecr);
    }
    #[inline(always)]
    fn ifindex_direction(&self) -> u32 {
        self.ifindex_direction
    }
}

/// A segment's timestamp option (RFC 7323) as loaded: the four bytes before the values
/// (NOP, NOP, kind 8, length 10 when there is one; see [`Timestamps::found`]) and the values
/// in network byte order. Kept raw, tested only where used: a flag set on the parser's paths
/// (a constant true or false) doubled the states the verifier follows through the rest of the
/// program, past its limit; the loaded words are unknown values, which it does not tell apart.
/// Not an `Option` either: a `None`'s payload is undefined, and the compiler spilled it as a
/// register never written, which the verifier rejects.
#[derive(Clone, Copy)]
pub(crate) struct Timestamps {
    kinds: u32,
    tsval: u32,
    tsecr: u32,
}

impl Timestamps {
    /// No timestamp option.
    pub(crate) const NONE: Timestamps = Timestamps {
        kinds: 0,
        tsval: 0,
        tsecr: 0,
    };

    /// Whether the segment has the option.
    #[inline(always)]
    pub(crate) fn found(&self) -> bool {
        self.kinds == ALIGNED_TIMESTAMPS
    }

    #[inline(always)]
    pub(crate) fn tsval(&self) -> u32 {
        u32::from_be(self.tsval)
    }

    #[inline(always)]
    pub(crate) fn tsecr(&self) -> u32 {
        u32::from_be(self.tsecr)
    }

    /// The option whose kind byte is at `position` of the option bytes `options` (copied to
    /// the stack by the parser's walk; indexes masked, as the verifier needs).
    #[inline(always)]
    pub(crate) fn from_option(options: &[u8; 64], position: usize) -> Timestamps {
        let at = |index: usize| options[(position + index) & 63] as u32;
        let tsval = at(2) << 24 | at(3) << 16 | at(4) << 8 | at(5);
        let tsecr = at(6) << 24 | at(7) << 16 | at(8) << 8 | at(9);
        Timestamps {
            kinds: ALIGNED_TIMESTAMPS,
            tsval: tsval.to_be(),
            tsecr: tsecr.to_be(),
        }
    }
}

/// The timestamp option of the TCP header at `offset` whose length is `header_len` (20 to 60),
/// at the aligned place; SYNs' options are walked by the parser's window-scale walk, which
/// calls [`Timestamps::from_option`].
#[inline(always)]
pub(crate) fn timestamps<P: Packet>(
    packet: &P,
    offset: usize,
    header_len: u32,
    unknown: u32,
) -> Timestamps {
    // The twelve bytes after the fixed header, payload for a header shorter than 32 bytes: the
    // mask (all ones from 32 bytes on, else zero: `header_len >> 5` is 0 or 1) clears them
    // without a branch.
    // Headers are in the linear data in practice; a segment whose option is not gives no
    // sample.
    // Past the linear data, `unknown` (the header's first word, of any value to the verifier)
    // stands in, with a bit set that the aligned option's first word never has: constants
    // there (zeros) made the verifier follow that path separately through the rest.
    let [kinds, tsval, tsecr] = packet.load_linear::<[u32; 3]>(offset + 20).unwrap_or([
        unknown | 1 << 31,
        unknown,
        unknown,
    ]);
    Timestamps {
        kinds: kinds & (header_len >> 5).wrapping_neg(),
        tsval,
        tsecr,
    }
}

/// Passive RTT for an egress segment of an IPv4 flow, as a BPF global function (see the
/// module doc): exported by bpf-linker (build.rs passes `--export`). `key` is the flow's key,
/// `kinds` and `tsval` words of its [`Timestamps`]. Returns 0 (a global function must return
/// a scalar).
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn network_probe_rtt_store4(
    key: *const FlowKey4,
    kinds: u32,
    tsval: u32,
) -> u32 {
    store_reverse(key, kinds, tsval);
    0
}

/// The same for IPv6 flows.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn network_probe_rtt_store6(
    key: *const FlowKey6,
    kinds: u32,
    tsval: u32,
) -> u32 {
    store_reverse(key, kinds, tsval);
    0
}

/// Passive RTT for an ingress segment of an IPv4 flow, as a BPF global function (see the
/// module doc). `key` is the flow's key, `word` its entry's outstanding-timestamp word,
/// `kinds` and `tsecr` words of its [`Timestamps`]. Returns 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn network_probe_rtt_echo4(
    key: *const FlowKey4,
    word: *mut u64,
    kinds: u32,
    tsecr: u32,
) -> u32 {
    echo_of(key, word, kinds, tsecr);
    0
}

/// The same for IPv6 flows.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn network_probe_rtt_echo6(
    key: *const FlowKey6,
    word: *mut u64,
    kinds: u32,
    tsecr: u32,
) -> u32 {
    echo_of(key, word, kinds, tsecr);
    0
}

/// Egress: the TSval is stored in the reverse (ingress) entry (see the module doc for why).
#[inline(always)]
fn store_reverse<K: FlowMapKey>(key: *const K, kinds: u32, tsval: u32) {
    let timestamps = Timestamps {
        kinds,
        tsval,
        tsecr: 0,
    };
    // The verifier has the pointer as possibly null (any caller might pass null).
    if key.is_null() || !timestamps.found() {
        return;
    }
    // SAFETY: non-null, to a key on the caller's stack, valid for the call. The reversed key
    // is a new one on this function's stack.
    let reversed = FlowMapKey::reversed(unsafe { &*key });
    if let Some(reverse) = tracking_of(&reversed) {
        // SAFETY: a pointer into a map value, valid for this program run.
        store(
            unsafe { &mut (*reverse).handshake_start_ns },
            timestamps.tsval(),
        );
    }
}

/// Ingress: the TSecr is matched against the outstanding value in `word`.
#[inline(always)]
fn echo_of<K: RttKey>(key: *const K, word: *mut u64, kinds: u32, tsecr: u32) {
    let timestamps = Timestamps {
        kinds,
        tsval: 0,
        tsecr,
    };
    if key.is_null() || word.is_null() || !timestamps.found() {
        return;
    }
    // SAFETY: non-null, into the flow's map value, valid for the call.
    echo(key, unsafe { &mut *word }, timestamps.tsecr());
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
fn echo<K: RttKey>(key: *const K, word: &mut u64, tsecr: u32) {
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
        // SAFETY: non-null (tested by the caller), to a key on the caller's stack.
        record(&unsafe { stack_copy(key) }, rtt_ns);
    }
}

/// A copy of `*key` on this function's stack: the verifier has `key` as memory of the key's
/// size, which older kernels' map helpers may not take as a key (a precaution, not yet verified on 6.1). Volatile reads, so that the
/// compiler does not hand the helpers the pointer itself; word by word (the keys are aligned
/// to 8 bytes and a multiple of 8 long), as a volatile read of the whole key was done byte by
/// byte through the stack (272 bytes of it for IPv6, past the 512 a call chain shares).
///
/// # Safety
///
/// `key` is valid for reads and aligned to 8 bytes.
#[inline(always)]
unsafe fn stack_copy<K: Copy>(key: *const K) -> K {
    let mut copy = core::mem::MaybeUninit::<K>::uninit();
    let source = key.cast::<u64>();
    let target = copy.as_mut_ptr().cast::<u64>();
    let mut word = 0;
    while word < core::mem::size_of::<K>() / 8 {
        // SAFETY: within the key (the caller's promise) and the copy.
        unsafe { target.add(word).write(source.add(word).read_volatile()) };
        word += 1;
    }
    // SAFETY: every byte written (the keys' sizes are multiples of 8).
    unsafe { copy.assume_init() }
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
