//! The drop hook: a BTF-enabled tracepoint on `kfree_skb`, the kernel's "this packet is
//! dropped" event (never run for packets that are not dropped: `consume_skb` is another
//! tracepoint). It reads the skb's drop reason, protocol and device and counts the drop in
//! [`crate::maps::DROPS`] (see [`crate::account::count_drop`]); nothing here runs on the TC or
//! XDP per-packet path.
//!
//! Rust eBPF has no CO-RE relocations, so the offsets of the kernel fields read here are not
//! compiled in: the daemon finds them in the running kernel's BTF and sets them in
//! [`DROP_LAYOUT`] (read-only data) before loading. Every read of kernel memory goes through
//! `bpf_probe_read_kernel`, so a wrong offset can only mislabel a drop, never fault.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use network_probe_common::{
    DROP_L3_ARP, DROP_L3_IPV4, DROP_L3_IPV6, DROP_L3_OTHER, DROP_L4_ICMP, DROP_L4_NONE,
    DROP_L4_TCP, DROP_L4_UDP, DropKey, DropLayout, NO_OFFSET,
};

use crate::{account, maps::IFINDEX_SLOTS};

/// Offsets of the kernel fields read, set by the daemon from BTF (see the module doc).
#[unsafe(no_mangle)]
static DROP_LAYOUT: DropLayout = DropLayout::UNKNOWN;

/// One field of [`DROP_LAYOUT`]; volatile so the compiler does not fold the placeholder in
/// (the verifier, which sees the value the daemon set, prunes what it rules out).
macro_rules! layout {
    ($field:ident) => {
        // SAFETY: a read of a field of an initialised static.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(DROP_LAYOUT.$field)) }
    };
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

#[btf_tracepoint(function = "kfree_skb")]
pub(crate) fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    // Arguments: (skb, location, reason, ...) since Linux 5.17; (skb, location) before.
    let skb: u64 = ctx.arg(0);
    // The verifier knows has_reason and skips the read where the argument does not exist.
    let reason: u32 = if layout!(has_reason) != 0 {
        ctx.arg::<u64>(2) as u32
    } else {
        0
    };
    let (l3, l4) = protocols(skb);
    let key = DropKey {
        reason,
        ifindex: watched_ifindex(skb),
        l3,
        l4,
        _pad: 0,
    };
    account::count_drop(&key);
    0
}

/// Reads a `T` at `base + offset` in kernel memory, `None` when unknown or unreadable.
#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == NO_OFFSET {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

/// The L3 class from `skb->protocol` and, for IP, the L4 class from the network header.
#[inline(always)]
fn protocols(skb: u64) -> (u8, u8) {
    let Some(protocol) = read::<u16>(skb, layout!(skb_protocol)) else {
        return (DROP_L3_OTHER, DROP_L4_NONE);
    };
    let (l3, version, protocol_at) = match u16::from_be(protocol) {
        ETH_P_IP => (DROP_L3_IPV4, 4, 9),
        ETH_P_IPV6 => (DROP_L3_IPV6, 6, 6),
        ETH_P_ARP => return (DROP_L3_ARP, DROP_L4_NONE),
        _ => return (DROP_L3_OTHER, DROP_L4_NONE),
    };
    (l3, transport(skb, version, protocol_at))
}

/// The L4 class of an IP skb: the protocol byte at `protocol_at` of the network header, when
/// the header is set and its version nibble is `version`.
#[inline(always)]
fn transport(skb: u64, version: u8, protocol_at: u64) -> u8 {
    let (Some(head), Some(network)) = (
        read::<u64>(skb, layout!(skb_head)),
        read::<u16>(skb, layout!(skb_network_header)),
    ) else {
        return DROP_L4_NONE;
    };
    if network == u16::MAX {
        return DROP_L4_NONE;
    }
    let header = head + network as u64;
    let Some(first) = read::<u8>(header, 0) else {
        return DROP_L4_NONE;
    };
    if first >> 4 != version {
        return DROP_L4_NONE;
    }
    match read::<u8>(header + protocol_at, 0) {
        Some(IPPROTO_TCP) => DROP_L4_TCP,
        Some(IPPROTO_UDP) => DROP_L4_UDP,
        Some(IPPROTO_ICMP) if version == 4 => DROP_L4_ICMP,
        Some(IPPROTO_ICMPV6) if version == 6 => DROP_L4_ICMP,
        _ => DROP_L4_NONE,
    }
}

/// `skb->dev->ifindex` when the device is in the daemon's network namespace and watched; 0
/// otherwise (interface indexes are per namespace, and the tracepoint sees every namespace).
#[inline(always)]
fn watched_ifindex(skb: u64) -> u32 {
    let Some(dev) = read::<u64>(skb, layout!(skb_dev)) else {
        return 0;
    };
    let net_offset = layout!(dev_net);
    if net_offset != NO_OFFSET {
        let inum = read::<u64>(dev, net_offset).and_then(|net| read::<u32>(net, layout!(net_inum)));
        if inum != Some(layout!(netns_inum)) {
            return 0;
        }
    }
    let Some(ifindex) = read::<i32>(dev, layout!(dev_ifindex)) else {
        return 0;
    };
    let ifindex = ifindex as u32;
    match IFINDEX_SLOTS.get(ifindex) {
        Some(&slot) if slot != 0 => ifindex,
        _ => 0,
    }
}
