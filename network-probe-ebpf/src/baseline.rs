//! Benchmark programs, never loaded or attached by the daemon.
//!
//! - Baselines that do nothing but return "continue", one per hook type: `cargo xtask bench`
//!   runs them through BPF_PROG_TEST_RUN next to the real programs to measure the cost of the
//!   test-run machinery itself, so the datapath's own cost can be stated as a ratio.
//! - `tc_ingress` stopped after each step of its per-packet path (see [`account::upto`]), so
//!   the benchmark can show what each step costs.

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action::XDP_PASS},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use network_probe_common::Direction;

use crate::{account, tc};

/// Benchmark baseline for `tc_ingress` / `tc_egress`: returns `TC_ACT_UNSPEC` and touches
/// nothing. Never loaded by the daemon.
#[classifier]
pub(crate) fn tc_baseline(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Benchmark baseline for `xdp_ingress`: returns `XDP_PASS` and touches nothing. Never loaded
/// by the daemon.
#[xdp]
pub(crate) fn xdp_baseline(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// `tc_ingress` up to the interface's statistics (packets, bytes). Never loaded by the daemon.
#[classifier]
pub(crate) fn tc_upto_device(ctx: TcContext) -> i32 {
    tc::observe::<{ account::upto::DEVICE }>(&ctx, Direction::Ingress);
    TC_ACT_UNSPEC
}

/// `tc_ingress` up to parsing and the interface's IP/TCP statistics. Never loaded by the
/// daemon.
#[classifier]
pub(crate) fn tc_upto_parse(ctx: TcContext) -> i32 {
    tc::observe::<{ account::upto::PARSE }>(&ctx, Direction::Ingress);
    TC_ACT_UNSPEC
}

/// `tc_ingress` up to the flow map lookup. Never loaded by the daemon.
#[classifier]
pub(crate) fn tc_upto_lookup(ctx: TcContext) -> i32 {
    tc::observe::<{ account::upto::LOOKUP }>(&ctx, Direction::Ingress);
    TC_ACT_UNSPEC
}
