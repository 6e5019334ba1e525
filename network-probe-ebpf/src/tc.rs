//! TC (TCX) classifiers attached at ingress and egress of each selected interface.
//!
//! They return `TC_ACT_UNSPEC`, which TCX treats as "next": the packet continues to any program
//! attached after ours and then the stack, exactly as if we were not there.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
use network_probe_common::Direction;

use crate::account;

#[classifier]
pub(crate) fn tc_ingress(ctx: TcContext) -> i32 {
    if observe::<{ account::upto::ALL }>(&ctx, Direction::Ingress) {
        crate::rtt::tail_call_tc(&ctx, Direction::Ingress);
    }
    TC_ACT_UNSPEC
}

#[classifier]
pub(crate) fn tc_egress(ctx: TcContext) -> i32 {
    if observe::<{ account::upto::ALL }>(&ctx, Direction::Egress) {
        crate::rtt::tail_call_tc(&ctx, Direction::Egress);
    }
    TC_ACT_UNSPEC
}

/// Reads the skb's metadata and accounts the packet as far as `UPTO` (see
/// [`account::upto`]; the benchmark programs in `baseline` stop early). True when passive RTT
/// has work (see `crate::rtt`).
#[inline(always)]
pub(crate) fn observe<const UPTO: u8>(ctx: &TcContext, direction: Direction) -> bool {
    // SAFETY: the kernel hands the program a valid __sk_buff for its whole run.
    let (ifindex, gso_segs) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).gso_segs) };
    // A non-GSO skb reports gso_segs 0: it is one packet on the wire.
    let segments = if gso_segs == 0 { 1 } else { gso_segs as u64 };
    account::observe::<_, UPTO>(ctx, ifindex, direction, segments)
}
