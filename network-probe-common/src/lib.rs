//! Types shared by the eBPF programs and the daemon: the keys and values of every kernel map.
//!
//! Everything here is `#[repr(C)]` with explicit padding so the kernel and user space agree on the
//! layout byte for byte. The `user` feature adds `aya::Pod` impls so the daemon can read the maps.
#![no_std]

/// Name of the per-CPU hash map holding [`DeviceCounters`] keyed by [`DeviceKey`].
pub const DEVICE_COUNTERS_MAP: &str = "DEVICE_COUNTERS";

/// Capacity of [`DEVICE_COUNTERS_MAP`]: one entry per (interface, direction) pair.
pub const DEVICE_COUNTERS_MAX_ENTRIES: u32 = 2048;

/// Names of the TC programs in the eBPF object.
pub const TC_INGRESS_PROGRAM: &str = "tc_ingress";
pub const TC_EGRESS_PROGRAM: &str = "tc_egress";

/// Direction of a packet relative to the interface it was seen on.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Received by the interface (TC ingress / XDP).
    Ingress = 0,
    /// Sent by the interface (TC egress).
    Egress = 1,
}

impl Direction {
    /// The label value used in metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// Decodes the raw value stored in a map key; `None` for values no program writes.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Direction::Ingress),
            1 => Some(Direction::Egress),
            _ => None,
        }
    }
}

/// Key of [`DEVICE_COUNTERS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceKey {
    /// Kernel interface index the packet was seen on.
    pub ifindex: u32,
    /// A [`Direction`] as `u32`.
    pub direction: u32,
}

/// Value of [`DEVICE_COUNTERS_MAP`], one copy per CPU; user space sums the copies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Packets on the wire: a GSO/GRO super-packet counts as its `gso_segs` segments.
    pub packets: u64,
    /// Bytes as the skb length at the TC hook (link-layer header included). A GSO super-packet
    /// counts its length once: the headers the NIC or the stack replicate per segment are not
    /// added.
    pub bytes: u64,
}

impl DeviceCounters {
    /// Adds another CPU's copy into this one.
    pub fn accumulate(&mut self, other: &DeviceCounters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers without padding holes.
    unsafe impl aya::Pod for super::DeviceKey {}
    // SAFETY: plain #[repr(C)] integers without padding holes.
    unsafe impl aya::Pod for super::DeviceCounters {}
}
