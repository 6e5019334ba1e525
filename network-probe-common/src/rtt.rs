//! Passive RTT from TCP timestamps (issue 26): the rules by which the TC programs pair a TSval
//! leaving a watched interface with the TSecr that echoes it on the way back, and the maps the
//! samples go to.
//!
//! One value is outstanding per flow direction at a time. It is kept in the flow's *ingress*
//! entry (the direction whose segments will echo it), in the [`crate::FlowTracking`] field
//! `handshake_start_ns`, which an ingress entry never uses (only the direction that sent a SYN
//! or SYN-ACK, egress, keeps a handshake start there): so the ACK path finds it in the entry
//! it has found already, and the layout of the pinned flow maps stays as it is. The word holds
//! the TSval in its high half and the time it left in its low half ([`ts_word`]), in units of
//! `2^TS_TIME_SHIFT` ns (256 ns: the 32 bits wrap after 18 minutes; a sample is exact to one
//! unit).
//!
//! - [`ts_store`]: a TSval leaving on egress is stored only if it is newer (serial arithmetic)
//!   than the last one stored, and only if nothing is outstanding or what is outstanding is
//!   older than [`TS_OUTSTANDING_MAX_NS`].
//! - [`ts_echo_matches`] / [`ts_echo_rtt`]: a segment arriving on ingress whose TSecr equals
//!   the outstanding TSval gives one sample (now minus the time stored), unless the outstanding
//!   value is older than [`TS_OUTSTANDING_MAX_NS`]; either way it is no longer outstanding.
//! - [`ts_echo_passed`]: a TSecr newer than the outstanding TSval (the peer echoed a later
//!   segment's, as a delayed ACK of two segments may) drops it without a sample.

use crate::RTT_BUCKETS;

/// Per-CPU array of [`RttStats`] at `2 * slot + direction` (like `DEVICE_STATS`); samples are
/// taken on ingress, so only the ingress entries count.
pub const RTT_STATS_MAP: &str = "RTT_STATS";
/// LRU hash maps of [`FlowRtt`]: the samples of a flow direction, under the key of the
/// direction that echoed (ingress). An entry is made at a flow's first sample.
pub const FLOW_RTT4_MAP: &str = "FLOW_RTT4";
pub const FLOW_RTT6_MAP: &str = "FLOW_RTT6";
/// Capacity of each of [`FLOW_RTT4_MAP`] and [`FLOW_RTT6_MAP`].
pub const FLOW_RTT_MAX_ENTRIES: u32 = 16_384;

/// The unit of the stored time: `2^TS_TIME_SHIFT` nanoseconds.
pub const TS_TIME_SHIFT: u32 = 8;
/// An outstanding TSval older than this may be replaced, and gives no sample when echoed.
pub const TS_OUTSTANDING_MAX_NS: u64 = 4_000_000_000;

/// Value of [`RTT_STATS_MAP`]: one interface and direction on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RttStats {
    /// Samples by log2 of microseconds, as the handshake histogram ([`RTT_BUCKETS`]).
    pub buckets: [u64; RTT_BUCKETS],
    /// Sum of the samples, nanoseconds.
    pub sum_ns: u64,
}

impl RttStats {
    pub const ZERO: RttStats = RttStats {
        buckets: [0; RTT_BUCKETS],
        sum_ns: 0,
    };

    /// Adds `other` (another CPU's copy, or a forgotten interface's totals).
    pub fn accumulate(&mut self, other: &RttStats) {
        for (total, value) in self.buckets.iter_mut().zip(other.buckets) {
            *total += value;
        }
        self.sum_ns += other.sum_ns;
    }

    /// Samples counted.
    pub fn samples(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl Default for RttStats {
    fn default() -> Self {
        RttStats::ZERO
    }
}

/// Value of [`FLOW_RTT4_MAP`] and [`FLOW_RTT6_MAP`], shared by every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowRtt {
    /// Samples taken (atomic adds).
    pub samples: u64,
    /// Their sum, nanoseconds (atomic adds).
    pub sum_ns: u64,
    /// The smallest, nanoseconds (0: none yet). A plain store: two CPUs sampling the same flow
    /// direction at the same instant may keep the larger of their two samples.
    pub min_ns: u64,
}

/// The stored word for `tsval` leaving at `now_ns`.
#[inline(always)]
pub fn ts_word(tsval: u32, now_ns: u64) -> u64 {
    let time = (now_ns >> TS_TIME_SHIFT) as u32;
    // 0 means "nothing outstanding"; one time unit in four billion is stored one unit late.
    ((tsval as u64) << 32) | if time == 0 { 1 } else { time } as u64
}

/// Age of the outstanding value of `word` at `now_ns`, nanoseconds (modulo the 32-bit time).
#[inline(always)]
fn age_ns(word: u64, now_ns: u64) -> u64 {
    let now = (now_ns >> TS_TIME_SHIFT) as u32;
    ((now.wrapping_sub(word as u32)) as u64) << TS_TIME_SHIFT
}

/// The word to store for `tsval` leaving at `now_ns`, given the stored `word`; `None` when it
/// must stay (see the module documentation).
#[inline(always)]
pub fn ts_store(word: u64, tsval: u32, now_ns: u64) -> Option<u64> {
    if word != 0 {
        let last = (word >> 32) as u32;
        // Not newer than the last one stored (RFC 1982 serial arithmetic).
        if (tsval.wrapping_sub(last) as i32) <= 0 {
            return None;
        }
        if word as u32 != 0 && age_ns(word, now_ns) < TS_OUTSTANDING_MAX_NS {
            return None;
        }
    }
    Some(ts_word(tsval, now_ns))
}

/// Whether a TSecr of `tsecr` echoes the value outstanding in `word` (the cheap test, before
/// the clock is read).
#[inline(always)]
pub fn ts_echo_matches(word: u64, tsecr: u32) -> bool {
    word as u32 != 0 && (word >> 32) as u32 == tsecr
}

/// Whether a TSecr of `tsecr` echoes a TSval newer than the one outstanding in `word`: the
/// peer has passed it (TSecr only moves forwards), so it will never be echoed and is dropped
/// ([`ts_echoed`]) without a sample, instead of blocking the next store until it is old.
#[inline(always)]
pub fn ts_echo_passed(word: u64, tsecr: u32) -> bool {
    word as u32 != 0 && (tsecr.wrapping_sub((word >> 32) as u32) as i32) > 0
}

/// The word once its outstanding value was echoed: the TSval stays (the last one stored), no
/// time.
#[inline(always)]
pub fn ts_echoed(word: u64) -> u64 {
    word & !0xffff_ffff
}

/// The sample of an echo ([`ts_echo_matches`]) arriving at `now_ns`; `None` when the
/// outstanding value was too old.
#[inline(always)]
pub fn ts_echo_rtt(word: u64, now_ns: u64) -> Option<u64> {
    let age = age_ns(word, now_ns);
    (age < TS_OUTSTANDING_MAX_NS).then_some(age)
}

#[cfg(feature = "user")]
mod rtt_pod {
    // SAFETY: #[repr(C)], u64 fields and arrays only, no padding.
    unsafe impl aya::Pod for super::RttStats {}
    // SAFETY: #[repr(C)], u64 fields only.
    unsafe impl aya::Pod for super::FlowRtt {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn one_outstanding_value_newer_than_the_last() {
        let t0 = 1_000 * MS;
        let word = ts_store(0, 100, t0).unwrap();
        // Outstanding and young: kept, whatever the TSval.
        assert_eq!(ts_store(word, 101, t0 + MS), None);
        // Echoed: cleared, the TSval kept as the last one.
        assert!(ts_echo_matches(word, 100));
        assert!(!ts_echo_matches(word, 99));
        let rtt = ts_echo_rtt(word, t0 + 5 * MS).unwrap();
        assert!(rtt.abs_diff(5 * MS) < 1 << TS_TIME_SHIFT, "{rtt}");
        let cleared = ts_echoed(word);
        assert!(!ts_echo_matches(cleared, 100));
        // An echo of a newer TSval passes the outstanding one.
        assert!(!ts_echo_passed(word, 100));
        assert!(!ts_echo_passed(word, 99));
        assert!(ts_echo_passed(word, 101));
        assert!(!ts_echo_passed(ts_echoed(word), 101));
        // Only a newer TSval is stored next.
        assert_eq!(ts_store(cleared, 100, t0 + 6 * MS), None);
        assert_eq!(ts_store(cleared, 99, t0 + 6 * MS), None);
        let next = ts_store(cleared, 102, t0 + 6 * MS).unwrap();
        assert_eq!(next >> 32, 102);
        // Wrapping TSvals are newer by serial arithmetic.
        let high = ts_word(u32::MAX, t0);
        assert!(ts_store(ts_echoed(high), 3, t0).is_some());
    }

    #[test]
    fn an_old_outstanding_value_is_replaced_and_gives_no_sample() {
        let t0 = 77 * MS;
        let word = ts_store(0, 5, t0).unwrap();
        let late = t0 + TS_OUTSTANDING_MAX_NS + MS;
        assert_eq!(ts_echo_rtt(word, late), None);
        assert!(ts_store(word, 6, late).is_some());
        assert_eq!(ts_store(word, 6, t0 + TS_OUTSTANDING_MAX_NS - MS), None);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<RttStats>(), (RTT_BUCKETS + 1) * 8);
        assert_eq!(core::mem::size_of::<FlowRtt>(), 3 * 8);
    }
}
