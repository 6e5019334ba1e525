//! Benchmark baselines: programs that do nothing but return "continue", one per hook type.
//!
//! `cargo xtask bench` runs them through BPF_PROG_TEST_RUN next to the real programs to measure
//! the cost of the test-run machinery itself, so the datapath's own cost can be stated as a
//! ratio. The daemon never loads or attaches them.

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action::XDP_PASS},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// Benchmark baseline for `tc_ingress` / `tc_egress`: returns `TC_ACT_UNSPEC` and touches
/// nothing. Never loaded by the daemon.
#[classifier]
pub fn tc_baseline(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Benchmark baseline for `xdp_ingress`: returns `XDP_PASS` and touches nothing. Never loaded
/// by the daemon.
#[xdp]
pub fn xdp_baseline(_ctx: XdpContext) -> u32 {
    XDP_PASS
}
