//! The eBPF object of network-probe.
//!
//! - [`tc`] and [`xdp`]: the hooks; thin wrappers that read the packet's metadata.
//! - [`packet`]: loading bytes from an skb or an XDP buffer behind one trait.
//! - [`parse`]: Ethernet / VLAN / IPv4 / IPv6 / TCP parsing into a small summary.
//! - [`drops`]: the hook on the kernel's `kfree_skb` tracepoint (dropped packets, any
//!   interface), which reads the skb's reason, protocol and device.
//! - [`account`]: per-interface and per-flow accounting from that summary, and drop counts.
//! - [`maps`]: every map of the object (but those of [`signals`] and [`outcomes`]).
//! - [`signals`], [`ecn`], [`pmtu`]: the passive signals of issue 26 (ECN codepoints, CE / ECE
//!   / CWR per flow, path-MTU messages), in maps of their own.
//! - [`rtt`]: passive RTT from TCP timestamps (issue 26), with its own maps and programs
//!   (tail-called by the TC and XDP programs); hooks in [`account`].
//! - [`outcomes`]: TCP connection attempts followed from the SYN to their answer (hooks in
//!   [`account`]), with their own maps.
//! - [`events`]: rare error branches counted and logged through aya-log (never reached by an
//!   ordinary packet).
//!
//! Each program only observes: every path returns "continue" (TCX next / XDP_PASS) and never
//! drops, delays or modifies a packet.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

// The empty library of this package exists for the daemon's build script (see lib.rs).
use network_probe_ebpf as _;

mod account;
mod atomic;
mod baseline;
mod drops;
mod ecn;
mod events;
mod icmp_quote;
mod maps;
mod outcomes;
mod packet;
mod parse;
mod pmtu;
mod rtt;
mod signals;
mod tc;
mod tcp_timestamps;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the programs cannot panic; this only satisfies no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
