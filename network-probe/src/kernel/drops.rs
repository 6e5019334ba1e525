//! Kernel drop reasons: the `kfree_skb` program of the eBPF object (a BTF-enabled tracepoint,
//! `tp_btf`) counts every packet the kernel drops, host-wide, by drop reason, protocol class
//! and watched interface (see `network-probe-ebpf/src/drops.rs`); this module prepares it,
//! loads and attaches it, and reads its map at scrape time.
//!
//! Offsets from BTF. The program reads `sk_buff.dev`, `sk_buff.protocol`, `sk_buff.head`,
//! `sk_buff.network_header`, `net_device.ifindex`, `net_device.nd_net` and `net.ns.inum`.
//! Their offsets differ between kernel builds, and Rust eBPF programs get no CO-RE
//! relocations (the compiler emits no `preserve_access_index` records for them), so offsets
//! compiled into the object would be right on one kernel only. Instead they are looked up in
//! the running kernel's BTF (`/sys/kernel/btf/vmlinux`, read with [`crate::kernel::btf`]) at
//! load time and handed to the program as a read-only global ([`DropLayout`]); the program
//! reads through `bpf_probe_read_kernel`, so even a wrong offset could not fault.
//!
//! Names from BTF. Reason numbers differ between kernels (NETFILTER_DROP is 12 on 6.18, and
//! other numbers on 5.17 and 6.1): the names come from the running kernel's
//! `enum skb_drop_reason`, `SKB_DROP_REASON_NETFILTER_DROP` -> `netfilter_drop`, never from a
//! table of ours. Only reasons that occurred become series.
//!
//! Kernels: `tp_btf` needs BTF (5.5+); the reason is the third argument of the tracepoint
//! since 5.17 (the number of arguments is read from BTF, `btf_trace_kfree_skb`). Without it
//! every drop counts as `not_specified`. An interface is named only when the dropped skb's
//! device is a watched one in the daemon's network namespace (interface indexes are per
//! namespace); other drops count under `interface="other"`.

use std::{collections::BTreeMap, os::unix::fs::MetadataExt as _};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::BtfTracePoint,
};
use network_probe_common::{
    DROP_L3_ARP, DROP_L3_IPV4, DROP_L3_IPV6, DROP_L4_ICMP, DROP_L4_TCP, DROP_L4_UDP,
    DROP_LAYOUT_GLOBAL, DROPS_LOST_MAP, DROPS_MAP, DropKey, DropLayout, KFREE_SKB_PROGRAM,
    NO_OFFSET,
};

use crate::kernel::object::take_map;
use crate::{
    error::{Error, Result},
    kernel::btf,
};

/// The kernel's BTF.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
/// The tracepoint (and the kernel function whose BTF prototype names its arguments).
const TRACEPOINT: &str = "kfree_skb";
/// The enum the reason argument is of.
const REASON_ENUM: &str = "skb_drop_reason";
/// Prefix of the enum's drop reasons (`SKB_DROP_REASON_NO_SOCKET`). Its other values
/// (`SKB_NOT_DROPPED_YET`, `SKB_CONSUMED`) are no drops: the kernel reports consumed packets
/// on another tracepoint.
const REASON_PREFIX: &str = "SKB_DROP_REASON_";
/// Label of every drop on kernels whose tracepoint has no reason.
pub const NOT_SPECIFIED: &str = "not_specified";

/// `--datapath.drops`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DropsMode {
    /// Count drops where the kernel can (tp_btf on kfree_skb); run without them elsewhere.
    Auto,
    /// Count drops; refuse to start where the kernel cannot.
    On,
    /// Do not load the drop program.
    Off,
}

/// What the running kernel's BTF says the drop program needs.
#[derive(Clone, Debug)]
pub struct KernelLayout {
    layout: DropLayout,
    /// Reason value -> label, from `enum skb_drop_reason` (empty without the reason argument).
    reasons: BTreeMap<u32, String>,
}

impl KernelLayout {
    /// Reads the offsets, the reason argument and the reason names from [`KERNEL_BTF`].
    pub fn read() -> std::result::Result<KernelLayout, String> {
        let data =
            std::fs::read(KERNEL_BTF).map_err(|err| format!("reading {KERNEL_BTF}: {err}"))?;
        let btf = btf::Btf::parse(&data).map_err(|err| format!("parsing {KERNEL_BTF}: {err}"))?;
        let netns_inum = std::fs::metadata("/proc/self/ns/net")
            .map(|meta| meta.ino() as u32)
            .map_err(|err| format!("reading /proc/self/ns/net: {err}"))?;
        KernelLayout::from_btf(&btf, netns_inum)
    }

    pub(crate) fn from_btf(
        btf: &btf::Btf,
        netns_inum: u32,
    ) -> std::result::Result<KernelLayout, String> {
        let required = |name: &str, path: &[&str]| {
            btf.offset(name, path)
                .ok_or_else(|| format!("{KERNEL_BTF} has no {name}.{}", path.join(".")))
        };
        let optional = |name: &str, path: &[&str]| btf.offset(name, path).unwrap_or(NO_OFFSET);
        // The typedef's prototype starts with the tracepoint's context (void *).
        let arguments = btf
            .typedef_proto_params(&format!("btf_trace_{TRACEPOINT}"))
            .ok_or_else(|| format!("{KERNEL_BTF} has no tracepoint {TRACEPOINT}"))?
            .saturating_sub(1);
        let reasons = btf.enum_values(REASON_ENUM).unwrap_or_default();
        let has_reason = arguments >= 3 && !reasons.is_empty();
        let (dev_net, net_inum) = match (
            btf.offset("net_device", &["nd_net", "net"]),
            btf.offset("net", &["ns", "inum"]),
        ) {
            (Some(dev_net), Some(net_inum)) => (dev_net, net_inum),
            // Without network namespaces every device is in ours.
            _ => (NO_OFFSET, NO_OFFSET),
        };
        Ok(KernelLayout {
            layout: DropLayout {
                skb_dev: required("sk_buff", &["dev"])?,
                skb_protocol: required("sk_buff", &["protocol"])?,
                skb_head: optional("sk_buff", &["head"]),
                skb_network_header: optional("sk_buff", &["network_header"]),
                dev_ifindex: required("net_device", &["ifindex"])?,
                dev_net,
                net_inum,
                netns_inum,
                has_reason: u32::from(has_reason),
            },
            reasons: if has_reason {
                reason_labels(&reasons)
            } else {
                BTreeMap::new()
            },
        })
    }

    /// Hands the offsets to the object about to be loaded.
    pub(crate) fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader.override_global(DROP_LAYOUT_GLOBAL, &self.layout, true);
    }

    /// Whether the tracepoint passes the reason.
    pub fn has_reason(&self) -> bool {
        self.layout.has_reason != 0
    }

    /// Reason value -> label, as the kernel's BTF names them.
    pub fn reasons(&self) -> &BTreeMap<u32, String> {
        &self.reasons
    }
}

/// Labels of the reason enum's drop reasons: `SKB_DROP_REASON_NO_SOCKET` -> `no_socket`, the
/// set the tracepoint's own print format lists (its end marker `SKB_DROP_REASON_MAX` too,
/// which never occurs). `SKB_DROP_REASON_SUBSYS_MASK` (6.4+) is a bit mask, not a reason; a
/// subsystem's reasons (values above it, e.g. mac80211's) are named in enums of their own and
/// are exported as `reason_<number>`.
pub(crate) fn reason_labels(values: &[(String, u64)]) -> BTreeMap<u32, String> {
    values
        .iter()
        .filter(|(name, _)| !name.starts_with("SKB_DROP_REASON_SUBSYS_"))
        .filter_map(|(name, value)| {
            let label = name.strip_prefix(REASON_PREFIX)?;
            Some((u32::try_from(*value).ok()?, label.to_ascii_lowercase()))
        })
        .collect()
}

/// Label of a protocol class of [`DropKey`].
pub fn protocol_label(l3: u8, l4: u8) -> &'static str {
    match (l3, l4) {
        (DROP_L3_IPV4, DROP_L4_TCP) => "ipv4_tcp",
        (DROP_L3_IPV4, DROP_L4_UDP) => "ipv4_udp",
        (DROP_L3_IPV4, DROP_L4_ICMP) => "ipv4_icmp",
        (DROP_L3_IPV4, _) => "ipv4",
        (DROP_L3_IPV6, DROP_L4_TCP) => "ipv6_tcp",
        (DROP_L3_IPV6, DROP_L4_UDP) => "ipv6_udp",
        (DROP_L3_IPV6, DROP_L4_ICMP) => "ipv6_icmp",
        (DROP_L3_IPV6, _) => "ipv6",
        (DROP_L3_ARP, _) => "arp",
        _ => "other",
    }
}

/// Whether the daemon counts drops in this run, and if not why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropsStatus {
    /// The program is loaded; `reasons` names known (0: every drop is `not_specified`).
    Counting { reasons: usize },
    /// `--datapath.drops off`.
    Off,
    /// The kernel cannot run the program (why).
    Unavailable(String),
}

/// The loaded drop program and its maps.
pub(crate) struct Drops {
    counts: PerCpuHashMap<MapData, DropKey, u64>,
    lost: PerCpuArray<MapData, u64>,
    reasons: BTreeMap<u32, String>,
    has_reason: bool,
    attached: bool,
}

/// One row of drops read from the map, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DropCount {
    /// The watched interface's index, 0 for any other.
    pub(crate) ifindex: u32,
    pub(crate) reason: String,
    pub(crate) protocol: &'static str,
    pub(crate) drops: u64,
}

impl Drops {
    /// Loads (verifies) the program of `ebpf`, which was loaded with `layout` applied, and
    /// takes its maps. Attaches nothing.
    pub(crate) fn load(ebpf: &mut Ebpf, layout: KernelLayout) -> Result<Drops> {
        let btf = Btf::from_sys_fs()
            .map_err(|err| Error::datapath(format!("reading {KERNEL_BTF}"), &err))?;
        let program: &mut BtfTracePoint = ebpf
            .program_mut(KFREE_SKB_PROGRAM)
            .ok_or_else(|| Error::Other(format!("eBPF object has no program {KFREE_SKB_PROGRAM}")))?
            .try_into()
            .map_err(|err| Error::datapath(format!("program {KFREE_SKB_PROGRAM}"), &err))?;
        program.load(TRACEPOINT, &btf).map_err(|err| {
            Error::datapath(format!("verifying program {KFREE_SKB_PROGRAM}"), &err)
        })?;
        let counts = take_map(ebpf, DROPS_MAP, PerCpuHashMap::try_from)?;
        let lost = take_map(ebpf, DROPS_LOST_MAP, PerCpuArray::try_from)?;
        Ok(Drops {
            counts,
            lost,
            has_reason: layout.has_reason(),
            reasons: layout.reasons,
            attached: false,
        })
    }

    /// Attaches the program to the tracepoint (once).
    pub(crate) fn attach(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        if self.attached {
            return Ok(());
        }
        let context = || format!("attaching {KFREE_SKB_PROGRAM} to tp_btf/{TRACEPOINT}");
        let program: &mut BtfTracePoint = ebpf
            .program_mut(KFREE_SKB_PROGRAM)
            .ok_or_else(|| Error::Other(format!("eBPF object has no program {KFREE_SKB_PROGRAM}")))?
            .try_into()
            .map_err(|err| Error::datapath(context(), &err))?;
        // The program keeps the link: attached until the object is dropped.
        program
            .attach()
            .map_err(|err| Error::datapath(context(), &err))?;
        self.attached = true;
        Ok(())
    }

    pub(crate) fn status(&self) -> DropsStatus {
        // The end marker is listed, but is no reason.
        DropsStatus::Counting {
            reasons: self
                .reasons
                .values()
                .filter(|label| *label != "max")
                .count(),
        }
    }

    /// Every (watched interface, reason, protocol) row with drops, summed over CPUs.
    pub(crate) fn read(&self) -> Result<Vec<DropCount>> {
        let mut rows: BTreeMap<(u32, String, &'static str), u64> = BTreeMap::new();
        for entry in self.counts.iter() {
            let (key, per_cpu) =
                entry.map_err(|err| Error::datapath(format!("reading {DROPS_MAP}"), &err))?;
            let drops: u64 = per_cpu.iter().sum();
            if drops == 0 {
                continue;
            }
            let reason = if self.has_reason {
                self.reasons
                    .get(&key.reason)
                    .cloned()
                    .unwrap_or_else(|| format!("reason_{}", key.reason))
            } else {
                NOT_SPECIFIED.to_string()
            };
            *rows
                .entry((key.ifindex, reason, protocol_label(key.l3, key.l4)))
                .or_default() += drops;
        }
        Ok(rows
            .into_iter()
            .map(|((ifindex, reason, protocol), drops)| DropCount {
                ifindex,
                reason,
                protocol,
                drops,
            })
            .collect())
    }

    /// Drops that found the map full.
    pub(crate) fn lost(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

/// The reason labels of the running kernel, value -> label (for checks against the
/// tracepoint's own format file).
pub fn kernel_reason_labels() -> std::result::Result<BTreeMap<u32, String>, String> {
    Ok(KernelLayout::read()?.reasons)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_come_from_the_enum_names() {
        let values = [
            ("SKB_NOT_DROPPED_YET", 0),
            ("SKB_CONSUMED", 1),
            ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
            ("SKB_DROP_REASON_NETFILTER_DROP", 12),
            ("SKB_DROP_REASON_MAX", 130),
            ("SKB_DROP_REASON_SUBSYS_MASK", 0xffff_0000),
        ]
        .map(|(name, value)| (name.to_string(), value));
        let labels = reason_labels(&values);
        assert_eq!(labels.get(&2).map(String::as_str), Some("not_specified"));
        assert_eq!(labels.get(&12).map(String::as_str), Some("netfilter_drop"));
        assert_eq!(labels.get(&1), None);
        assert_eq!(labels.get(&130).map(String::as_str), Some("max"));
        assert_eq!(labels.len(), 3);
    }

    #[test]
    fn protocol_labels() {
        assert_eq!(protocol_label(DROP_L3_IPV4, DROP_L4_UDP), "ipv4_udp");
        assert_eq!(protocol_label(DROP_L3_IPV6, DROP_L4_ICMP), "ipv6_icmp");
        assert_eq!(protocol_label(DROP_L3_IPV6, 0), "ipv6");
        assert_eq!(protocol_label(DROP_L3_ARP, 0), "arp");
        assert_eq!(protocol_label(0, 0), "other");
    }

    #[test]
    fn this_kernel_has_the_reason_argument_and_the_offsets() {
        let layout = KernelLayout::read().unwrap();
        assert!(layout.has_reason(), "this host runs a kernel after 5.17");
        assert_eq!(
            layout
                .reasons()
                .values()
                .find(|l| *l == "netfilter_drop")
                .map(String::as_str),
            Some("netfilter_drop")
        );
        for offset in [
            layout.layout.skb_dev,
            layout.layout.skb_protocol,
            layout.layout.skb_head,
            layout.layout.skb_network_header,
            layout.layout.dev_ifindex,
            layout.layout.dev_net,
            layout.layout.net_inum,
        ] {
            assert_ne!(offset, NO_OFFSET);
        }
    }
}
