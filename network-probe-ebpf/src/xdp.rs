//! XDP program for ingress, an alternative to `tc_ingress` on hosts where TC ingress costs too
//! much (generic or native mode, chosen by user space). Same accounting; XDP sees wire frames,
//! so every frame counts as one packet. Always returns `XDP_PASS`.

use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};
use network_probe_common::Direction;

use crate::account;

#[xdp]
pub(crate) fn xdp_ingress(ctx: XdpContext) -> u32 {
    // SAFETY: the kernel hands the program a valid xdp_md for its whole run.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    if account::observe::<_, { account::upto::ALL }>(&ctx, ifindex, Direction::Ingress, 1) {
        crate::rtt::tail_call_xdp(&ctx);
    }
    XDP_PASS
}
