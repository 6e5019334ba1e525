//! The TCP timestamp option (RFC 7323) as the programs read it: at the aligned place after the
//! fixed header on ordinary segments ([`timestamps`]), from the option walk on SYNs
//! ([`Timestamps::from_option`]). Parsing owns the reading; passive RTT (`crate::rtt`) and the
//! accounting programs' decision whether RTT has work (`crate::account`) use the values.

use crate::packet::Packet;

/// NOP, NOP, kind 8, length 10 as the first four option bytes, in memory order.
const ALIGNED_TIMESTAMPS: u32 = u32::from_ne_bytes([1, 1, 8, 10]);

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

    /// Whether an ingress segment with these timestamps has work to do with `word`, its
    /// entry's outstanding-timestamp word: the option is there, a value is outstanding, and
    /// the TSecr echoes it or a newer one ([`network_probe_common::ts_echo_matches`] or
    /// [`network_probe_common::ts_echo_passed`]). Tested inline: the ACK path, which mostly
    /// has nothing to do, then tail-calls nothing.
    #[inline(always)]
    pub(crate) fn echo_due(&self, word: u64) -> bool {
        self.found()
            && word as u32 != 0
            && (self.tsecr().wrapping_sub((word >> 32) as u32) as i32) >= 0
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
