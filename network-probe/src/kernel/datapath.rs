//! The kernel side seen from user space: loads the eBPF object embedded at build time (with its
//! maps pinned in bpffs when asked, see [`crate::kernel::pinning`]), prepares the per-interface map
//! entries, attaches the programs (TCX links at ingress and egress, or cls_bpf filters on a
//! clsact qdisc on kernels without TCX, or XDP at ingress), reads and trims the maps on demand,
//! forgets interfaces whose device is gone, and detaches everything on shutdown.
//!
//! TCX and XDP links die with the process; cls_bpf filters do not, so before attaching to an
//! interface the filters of ours an earlier run left there (it was killed) are removed: the
//! programs are never attached twice. "Ours" is decided by the program a filter runs, never by
//! the filter's name (another tool may run a `tc_egress` too): the TC programs are pinned next
//! to the maps so the next run knows their ids (see [`crate::kernel::stale_filters`]).
//!
//! Each watched interface owns a slot of the per-CPU statistics array (assigned here, recorded
//! in the interface-index -> slot array the programs read; see `network-probe-common`). Flows
//! live in the flow slot table or, when their slot is taken, in one LRU map per address family;
//! [`Datapath::flows`] returns them all as [`FlowKey`]s (see [`crate::kernel::flow_maps`]).
//!
//! Per-interface counters never go backwards: when an interface is forgotten its statistics are
//! folded into a user-space total kept under its name before its slot is released, and every
//! sample is that retired total plus what the slot of the name's current index holds.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, IterableMap as _, MapData, MapType, PerCpuArray, PerCpuValues},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
        xdp::XdpLinkId,
    },
    util::nr_cpus,
};
use log::{debug, info, warn};
use network_probe_common::{
    DEVICE_SLOTS, DEVICE_STATS_MAP, DEVICE_STATS_MAX_ENTRIES, DeviceStats, Direction,
    FLOW_SLOT_COUNT_GLOBAL, FLOW_SLOT_COUNTERS_MAP, FLOW_SLOT_SHIFT_GLOBAL, FLOW_SLOTS_MAP,
    FLOWS4_MAP, FLOWS6_MAP, FlowCounts, FlowKey, FlowKey4, FlowKey6, FlowSlot, FlowStats,
    IFINDEX_LIMIT, IFINDEX_SLOTS_MAP, KernelEvent, TC_EGRESS_PROGRAM, TC_INGRESS_PROGRAM,
    XDP_INGRESS_PROGRAM, flow_slot_shift,
};

use crate::kernel::object::take_map;
use crate::{
    error::{Error, Result},
    kernel::drops::{DropCount, Drops, DropsMode, DropsStatus, KernelLayout},
    kernel::events::{self, KernelEvents, KernelLog},
    kernel::flow_maps::{FlowMapEntries, FlowMaps},
    kernel::map_batch,
    kernel::outcomes::{AttemptMaps, ConnectTimeout},
    kernel::pinning::{self, MapOrigin, WantedMap},
    kernel::rtnetlink,
    kernel::signals::{SignalSample, Signals},
    kernel::stale_filters::{self, Ownership},
};

/// The eBPF object built from `network-probe-ebpf` by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/network-probe"));

/// The embedded eBPF object (for tests and benchmarks that run its programs directly).
pub fn ebpf_object() -> &'static [u8] {
    EBPF_OBJECT
}

/// Which program watches ingress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IngressHook {
    /// TC classifier on a TCX link (sees GRO super-packets; counts their segments).
    Tc,
    /// XDP in generic (skb) mode: works on every driver.
    XdpGeneric,
    /// XDP in native (driver) mode: cheapest, needs driver support.
    XdpNative,
}

/// How TC programs are attached (`--datapath.tc-attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttach {
    /// TCX where the kernel has it (6.6+), netlink otherwise.
    Auto,
    /// TCX links (Linux 6.6+): detached by the kernel when the daemon exits, even on SIGKILL.
    Tcx,
    /// A cls_bpf filter in direct-action mode on a clsact qdisc (created if missing), over
    /// netlink: works on older kernels; filters outlive the process, so the ones an earlier run
    /// left are removed before attaching.
    Netlink,
}

impl TcAttach {
    /// `Auto` resolved for a kernel with or without TCX.
    pub fn resolve(self, kernel_has_tcx: bool) -> TcAttach {
        match self {
            TcAttach::Auto if kernel_has_tcx => TcAttach::Tcx,
            TcAttach::Auto => TcAttach::Netlink,
            chosen => chosen,
        }
    }

    /// Label value in metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            TcAttach::Auto => "auto",
            TcAttach::Tcx => "tcx",
            TcAttach::Netlink => "netlink",
        }
    }
}

/// Load-time choices.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    pub ingress: IngressHook,
    /// How TC programs are attached; `Auto` is resolved by the caller (see [`TcAttach::resolve`]).
    pub tc_attach: TcAttach,
    /// Capacity of each LRU flow map (entries).
    pub flow_map_entries: u32,
    /// Slots of the flow slot table (a power of two), or 0 for none.
    pub flow_slots: u32,
    /// bpffs directory to pin the maps in (`None`: maps live as long as the process).
    pub pin_path: Option<PathBuf>,
    /// Whether to load the drop program (see [`crate::kernel::drops`]).
    pub drops: DropsMode,
    /// How long a TCP connection attempt may wait for its answer (see
    /// [`crate::kernel::outcomes`]).
    pub connect_timeout: std::time::Duration,
}

/// A program our object attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    TcIngress,
    TcEgress,
    XdpIngress,
}

impl Hook {
    /// Label value used in metrics, equal to the program's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Hook::TcIngress => TC_INGRESS_PROGRAM,
            Hook::TcEgress => TC_EGRESS_PROGRAM,
            Hook::XdpIngress => XDP_INGRESS_PROGRAM,
        }
    }
}

#[derive(Debug)]
enum LinkId {
    Tc(SchedClassifierLinkId),
    Xdp(XdpLinkId),
}

/// One program attached to one interface.
#[derive(Debug)]
struct Attachment {
    interface: String,
    ifindex: u32,
    hook: Hook,
    link: LinkId,
}

/// Interface label of drops on devices that are not watched.
pub const OTHER_INTERFACE: &str = "other";

/// Drops of one (interface, reason, protocol) row, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropSample {
    pub interface: String,
    pub reason: String,
    pub protocol: &'static str,
    pub drops: u64,
}

/// Statistics of one interface and direction, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSample {
    pub interface: String,
    pub direction: Direction,
    pub stats: DeviceStats,
}

struct Inner {
    ebpf: Ebpf,
    config: DatapathConfig,
    device_stats: PerCpuArray<MapData, DeviceStats>,
    ifindex_slots: Array<MapData, u32>,
    /// What `ifindex_slots` holds, by interface index: the slot of every interface that has one.
    slots: BTreeMap<u32, u32>,
    flows: FlowMaps,
    attachments: Vec<Attachment>,
    /// Statistics of interfaces forgotten since start, by name and direction.
    retired: BTreeMap<(String, Direction), DeviceStats>,
    /// Name of every interface index ever attached, so flows of a forgotten interface keep
    /// their interface label.
    seen_names: BTreeMap<u32, String>,
    /// Where each map's contents came from at load.
    map_origins: Vec<(&'static str, MapOrigin)>,
    /// Kernel ids of the pinned maps (the identity a state file is checked against).
    map_ids: Vec<(String, u32)>,
    /// Which cls_bpf filters are ours (left by an earlier run, removed before attaching).
    ownership: Ownership,
    /// Bumped whenever `retired` or `seen_names` change.
    generation: u64,
    /// The drop program, when loaded.
    drops: Option<Drops>,
    drops_status: DropsStatus,
    /// The passive signals' maps (ECN, path MTU; see [`crate::kernel::signals`]).
    signals: Signals,
    /// The connection-attempt maps (see [`crate::kernel::outcomes`]).
    attempts: AttemptMaps,
    /// The rare kernel-side events' counters (see [`crate::kernel::events`]).
    kernel_events: KernelEvents,
    /// The programs' log ring until the daemon takes it to forward it.
    kernel_log: Option<KernelLog>,
    /// The passive RTT maps (see [`crate::kernel::rtt`]).
    rtt: crate::kernel::rtt::RttMaps,
}

/// What only user space knows about interfaces, for the state file: the statistics of forgotten
/// devices by name, and the names of the interface indexes seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatapathTotals {
    pub retired: Vec<(String, u32, DeviceStats)>,
    pub seen_names: Vec<(u32, String)>,
}

/// The loaded eBPF object and its attachments. Shared between the daemon (which attaches and
/// detaches) and the metrics collectors (which read).
pub struct Datapath {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath").finish_non_exhaustive()
    }
}

/// The sizes of the flow slot table for `slots` slots (0: none), which an object about to be
/// loaded takes with [`FlowSlotSizes::apply`]: its two maps, and the globals the programs
/// index it with. Kept alive while the loader borrows the globals.
pub struct FlowSlotSizes {
    slots: u32,
    /// Without a slot table the slot maps keep one (unused) entry: arrays cannot be empty.
    entries: u32,
    shift: u32,
}

impl FlowSlotSizes {
    pub fn new(slots: u32) -> Self {
        let entries = slots.max(1);
        FlowSlotSizes {
            slots,
            entries,
            shift: flow_slot_shift(entries),
        }
    }

    pub fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader.map_max_entries(FLOW_SLOTS_MAP, self.entries);
        loader.map_max_entries(FLOW_SLOT_COUNTERS_MAP, self.entries);
        loader.override_global(FLOW_SLOT_COUNT_GLOBAL, &self.slots, true);
        loader.override_global(FLOW_SLOT_SHIFT_GLOBAL, &self.shift, true);
    }
}

impl Datapath {
    /// Loads the embedded object and verifies the programs `config` needs. Attaches nothing.
    pub fn load(config: DatapathConfig) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            return Err(Error::Other(
                "this binary was built with AYA_BUILD_SKIP=1 and has no eBPF object; rebuild \
                 with `cargo xtask run`"
                    .into(),
            ));
        }
        let wanted = wanted_maps(config.flow_map_entries, config.flow_slots);
        let plan = config
            .pin_path
            .as_deref()
            .map(|root| pinning::prepare(root, &wanted))
            .transpose()?;
        let slot_sizes = FlowSlotSizes::new(config.flow_slots);
        let drop_layout = match config.drops {
            DropsMode::Off => Err("turned off (--datapath.drops off)".to_string()),
            DropsMode::Auto | DropsMode::On => KernelLayout::read(),
        };
        if let (Err(why), DropsMode::On) = (&drop_layout, config.drops) {
            return Err(Error::Other(format!(
                "--datapath.drops on: drop reasons are unavailable: {why}"
            )));
        }
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(FLOWS4_MAP, config.flow_map_entries);
        loader.map_max_entries(FLOWS6_MAP, config.flow_map_entries);
        slot_sizes.apply(&mut loader);
        let connect_timeout = ConnectTimeout::new(config.connect_timeout);
        connect_timeout.apply(&mut loader);
        if let Ok(layout) = &drop_layout {
            layout.apply(&mut loader);
        }
        let log_level = events::LogLevel::current();
        log_level.apply(&mut loader);
        let map_origins = match &plan {
            Some(plan) => {
                for map in &wanted {
                    loader.map_pin_path(map.name, plan.map_path(map.name));
                }
                plan.origins.clone()
            }
            None => wanted
                .iter()
                .map(|map| (map.name, MapOrigin::Unpinned))
                .collect(),
        };
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|err| Error::datapath("loading the eBPF object", &err))?;
        let map_ids = match &plan {
            Some(plan) => wanted
                .iter()
                .map(|map| {
                    let path = plan.map_path(map.name);
                    aya::maps::MapInfo::from_pin(&path)
                        .map(|info| (map.name.to_string(), info.id()))
                        .map_err(|err| Error::datapath(format!("reading {}", path.display()), &err))
                })
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let hooks: &[Hook] = match config.ingress {
            IngressHook::Tc => &[Hook::TcIngress, Hook::TcEgress],
            IngressHook::XdpGeneric | IngressHook::XdpNative => &[Hook::XdpIngress, Hook::TcEgress],
        };
        for &hook in hooks {
            let verify = |err: &(dyn std::error::Error + 'static)| {
                Error::datapath(format!("verifying program {}", hook.as_str()), err)
            };
            let info = match hook {
                Hook::XdpIngress => {
                    let program = xdp_mut(&mut ebpf)?;
                    program.load().map_err(|e| verify(&e))?;
                    program.info()
                }
                _ => {
                    let program = tc_mut(&mut ebpf, hook)?;
                    program.load().map_err(|e| verify(&e))?;
                    program.info()
                }
            };
            // The verifier's work (its limit is a million processed instructions): the figure
            // the datapath's size is watched by, on each kernel it loads on.
            if let Some(count) = info.ok().and_then(|info| info.verified_instruction_count()) {
                log::debug!(
                    "verified program {}: {count} instructions processed",
                    hook.as_str()
                );
            }
        }
        // The RTT programs are loaded while every map they refer to is still open in the
        // object: a map taken out below and dropped (the slot table's under `--flows.slots
        // 0`) would leave them a closed descriptor, which the verifier rejects.
        let rtt = crate::kernel::rtt::RttMaps::take(&mut ebpf, config.ingress != IngressHook::Tc)?;
        // The previous run's pinned programs are read before this run's replace them.
        let ownership = own_programs(&mut ebpf, hooks, config.pin_path.as_deref())?;
        let device_stats = take_map(&mut ebpf, DEVICE_STATS_MAP, PerCpuArray::try_from)?;
        let ifindex_slots = take_map(&mut ebpf, IFINDEX_SLOTS_MAP, Array::try_from)?;
        let flows4 = take_map(&mut ebpf, FLOWS4_MAP, HashMap::try_from)?;
        let flows6 = take_map(&mut ebpf, FLOWS6_MAP, HashMap::try_from)?;
        let slot_maps = (
            take_map(&mut ebpf, FLOW_SLOTS_MAP, Array::try_from)?,
            take_map(&mut ebpf, FLOW_SLOT_COUNTERS_MAP, PerCpuArray::try_from)?,
        );
        let flows = FlowMaps::new(flows4, flows6, (config.flow_slots > 0).then_some(slot_maps))
            .map_err(|err| Error::datapath("preparing the flow slot table", &err))?;
        let signals = Signals::take(&mut ebpf)?;
        // Slots a previous run assigned (pinned maps): their interfaces keep their counts.
        let slots = assigned_slots(&ifindex_slots)?;
        let attempts = AttemptMaps::take(&mut ebpf)?;
        let kernel_events = KernelEvents::take(&mut ebpf)?;
        let kernel_log = events::start_log(&mut ebpf);
        let (drops, drops_status) = match drop_layout {
            Err(why) => (None, DropsStatus::Unavailable(why)),
            Ok(layout) => match Drops::load(&mut ebpf, layout.clone()) {
                Ok(drops) => {
                    let status = drops.status();
                    (Some(drops), status)
                }
                Err(err) if config.drops == DropsMode::On => return Err(err),
                Err(err) => (None, DropsStatus::Unavailable(err.to_string())),
            },
        };
        // Off is no unavailability: it is what was asked for.
        let drops_status = if config.drops == DropsMode::Off {
            DropsStatus::Off
        } else {
            drops_status
        };
        Ok(Datapath {
            inner: Mutex::new(Inner {
                ebpf,
                config,
                device_stats,
                ifindex_slots,
                slots,
                flows,
                attachments: Vec::new(),
                retired: BTreeMap::new(),
                seen_names: BTreeMap::new(),
                map_origins,
                map_ids,
                ownership,
                generation: 0,
                drops,
                drops_status,
                signals,
                attempts,
                kernel_events,
                kernel_log,
                rtt,
            }),
        })
    }

    /// The reader of the programs' log ring, for the caller to forward (see
    /// [`crate::kernel::events::forward`]); `None` when it could not start or was taken.
    pub fn take_kernel_log(&self) -> Option<KernelLog> {
        self.lock().kernel_log.take()
    }

    /// The rare kernel-side events' counts since load (see [`crate::kernel::events`]).
    pub fn kernel_events(&self) -> Vec<(KernelEvent, u64)> {
        self.lock().kernel_events.read()
    }

    /// Attaches the drop program to its tracepoint (host-wide, once), when it is loaded.
    pub fn attach_drops(&self) -> Result<()> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        match &mut inner.drops {
            Some(drops) => drops.attach(&mut inner.ebpf),
            None => Ok(()),
        }
    }

    /// Whether drops are counted in this run, and if not why.
    pub fn drops_status(&self) -> DropsStatus {
        self.lock().drops_status.clone()
    }

    /// Drops counted since the program was loaded, labelled: the watched interface's name
    /// (`other` for every other device, none included), the reason and the protocol class;
    /// plus the drops that found the map full. Empty without the drop program.
    pub fn drop_samples(&self) -> (Vec<DropSample>, u64) {
        let inner = self.lock();
        let Some(drops) = &inner.drops else {
            return (Vec::new(), 0);
        };
        let rows = match drops.read() {
            Ok(rows) => rows,
            Err(err) => {
                warn!("{err}");
                return (Vec::new(), drops.lost());
            }
        };
        let names = inner.names();
        let mut samples: BTreeMap<(String, String, &'static str), u64> = BTreeMap::new();
        for DropCount {
            ifindex,
            reason,
            protocol,
            drops,
        } in rows
        {
            let interface = names
                .get(&ifindex)
                .copied()
                .or_else(|| inner.seen_names.get(&ifindex).map(String::as_str))
                .filter(|_| ifindex != 0)
                .unwrap_or(OTHER_INTERFACE);
            *samples
                .entry((interface.to_string(), reason, protocol))
                .or_default() += drops;
        }
        let samples = samples
            .into_iter()
            .map(|((interface, reason, protocol), drops)| DropSample {
                interface,
                reason,
                protocol,
                drops,
            })
            .collect();
        (samples, drops.lost())
    }

    /// Prepares the statistics entries of `interface` and attaches the ingress and egress
    /// programs to it. Works on a device that is not up yet. On failure nothing stays attached
    /// to that interface and no entry is left behind.
    pub fn attach(&self, interface: &str) -> Result<()> {
        let ifindex = rtnetlink::interface_index(interface)?;
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.attachments.iter().any(|a| a.ifindex == ifindex) {
            return Ok(());
        }
        // Names are unique at any moment: an attachment under this name but another index is
        // left from a device that is gone (its removal not processed yet).
        let stale = inner
            .attachments
            .iter()
            .find(|a| a.interface == interface)
            .map(|a| a.ifindex);
        if let Some(stale) = stale
            && let Some(name) = inner.forget(stale)
        {
            info!(
                "forgot {name} (ifindex {stale}): the name now belongs to ifindex {ifindex}; its \
                 counters are kept"
            );
        }
        // Keep counts of an interface we attached to before (same index, same slot): no
        // counter goes backwards.
        let new_slot = !inner.slots.contains_key(&ifindex);
        if new_slot {
            inner.assign_slot(interface, ifindex)?;
        }

        let hooks = match inner.config.ingress {
            IngressHook::Tc => [Hook::TcIngress, Hook::TcEgress],
            _ => [Hook::XdpIngress, Hook::TcEgress],
        };
        let mut added = Vec::new();
        for hook in hooks {
            let attached = remove_stale_filters(inner, hook, interface, ifindex)
                .and_then(|()| attach_one(&mut inner.ebpf, &inner.config, hook, interface));
            match attached {
                Ok(link) => added.push(Attachment {
                    interface: interface.to_string(),
                    ifindex,
                    hook,
                    link,
                }),
                Err(err) => {
                    for attachment in added {
                        if let Err(err) = detach_one(&mut inner.ebpf, attachment) {
                            warn!("{err}");
                        }
                    }
                    if new_slot {
                        inner.release_slot(ifindex);
                    }
                    return Err(err);
                }
            }
        }
        info!(
            "attached {} to {interface} (ifindex {ifindex})",
            hooks.map(Hook::as_str).join(" and ")
        );
        if inner
            .seen_names
            .insert(ifindex, interface.to_string())
            .as_deref()
            != Some(interface)
        {
            inner.generation += 1;
        }
        inner.attachments.extend(added);
        Ok(())
    }

    /// Detaches every program from every interface.
    pub fn detach_all(&self) {
        let mut inner = self.lock();
        let attachments = std::mem::take(&mut inner.attachments);
        for attachment in attachments {
            info!(
                "detaching {} from {}",
                attachment.hook.as_str(),
                attachment.interface
            );
            if let Err(err) = detach_one(&mut inner.ebpf, attachment) {
                warn!("{err}");
            }
        }
    }

    /// Forgets the interface that had index `ifindex`, typically because its device is gone:
    /// drops its attachments and folds its statistics into the total kept under its name before
    /// deleting its map entries, so its exported counters keep their values and carry on from
    /// there if the name comes back. Returns the interface's name, or `None` if nothing was
    /// attached there.
    pub fn forget(&self, ifindex: u32) -> Option<String> {
        self.lock().forget(ifindex)
    }

    /// Per-interface statistics, summed over CPUs: for every interface attached now or at some
    /// point since start, what its forgotten devices counted plus what its current one counts.
    pub fn device_samples(&self) -> Vec<DeviceSample> {
        let inner = self.lock();
        let names = inner.names();
        let mut totals = inner.retired.clone();
        for (&ifindex, &slot) in &inner.slots {
            let Some(interface) = names.get(&ifindex) else {
                continue;
            };
            for direction in [Direction::Ingress, Direction::Egress] {
                match inner.device_stats.get(&stats_index(slot, direction), 0) {
                    Ok(per_cpu) => totals
                        .entry((interface.to_string(), direction))
                        .or_insert(DeviceStats::ZERO)
                        .accumulate(&sum_over_cpus(&per_cpu)),
                    Err(err) => warn!("reading {DEVICE_STATS_MAP} slot {slot}: {err}"),
                }
            }
        }
        totals
            .into_iter()
            .map(|((interface, direction), stats)| DeviceSample {
                interface,
                direction,
                stats,
            })
            .collect()
    }

    /// The passive signals per interface (see [`crate::kernel::signals`]): for every interface
    /// attached now or since start, its forgotten devices' totals plus its current slot's.
    pub fn signal_samples(&self) -> Vec<SignalSample> {
        let inner = self.lock();
        inner.signals.samples(inner.attached_slots())
    }

    /// The passive RTT histogram of every interface attached now or since start (see
    /// [`crate::kernel::rtt`]).
    pub fn rtt_samples(&self) -> Vec<(String, network_probe_common::RttStats)> {
        let inner = self.lock();
        inner.rtt.samples(inner.attached_slots())
    }

    /// Every entry of the per-flow RTT maps (see [`crate::kernel::rtt`]).
    pub fn flow_rtt(&self) -> Vec<(FlowKey, network_probe_common::FlowRtt)> {
        self.lock().rtt.flows()
    }

    /// Every entry of the per-flow signal maps (see [`crate::kernel::signals`]).
    pub fn flow_signals(&self) -> Vec<(FlowKey, network_probe_common::FlowSignals)> {
        self.lock().signals.flows()
    }

    /// Every TCP connection attempt in the pending-SYN maps (see [`crate::kernel::outcomes`]).
    pub fn pending_attempts(&self) -> Vec<(FlowKey, network_probe_common::PendingSyn)> {
        self.lock().attempts.pending()
    }

    /// Deletes connection attempts the caller counted.
    pub fn remove_attempts(&self, keys: &[FlowKey]) {
        if !keys.is_empty() {
            self.lock().attempts.remove(keys);
        }
    }

    /// SYN retransmits and untracked attempts of each watched interface and direction, by
    /// interface index (interfaces forgotten since start are not kept).
    pub fn connect_samples(&self) -> Vec<(u32, Direction, network_probe_common::ConnectStats)> {
        let inner = self.lock();
        let mut samples = Vec::new();
        for (&ifindex, &slot) in &inner.slots {
            for direction in [Direction::Ingress, Direction::Egress] {
                samples.push((ifindex, direction, inner.attempts.stats(slot, direction)));
            }
        }
        samples
    }

    /// Every flow in the slot table and the LRU maps, once (see [`crate::kernel::flow_maps`]).
    pub fn flows(&self) -> Vec<(FlowKey, FlowStats)> {
        self.lock().flows.read()
    }

    /// Every flow, handed to `sink` as the maps are read (see [`FlowMaps::read_into`]: no
    /// vector of them all); whether the read is complete.
    pub fn flows_into(&self, sink: &mut dyn FnMut(FlowKey, FlowStats)) -> bool {
        self.lock().flows.read_into(sink)
    }

    /// Deletes flows (idle ones, already folded into totals by the caller).
    pub fn remove_flows(&self, keys: &[FlowKey]) {
        self.lock().flows.remove(keys);
    }

    /// Entries the last [`Datapath::flows`] found in each flow map.
    pub fn flow_map_entries(&self) -> FlowMapEntries {
        self.lock().flows.entries()
    }

    /// (interface, program) for every attached program.
    pub fn attached(&self) -> Vec<(String, Hook)> {
        self.lock()
            .attachments
            .iter()
            .map(|a| (a.interface.clone(), a.hook))
            .collect()
    }

    /// Interface names by index, for every interface attached since start (flow series of a
    /// forgotten interface keep its name).
    pub fn interface_names(&self) -> BTreeMap<u32, String> {
        self.lock().seen_names.clone()
    }

    /// `--flows.connect-timeout`, as the programs were loaded with it.
    pub fn connect_timeout(&self) -> std::time::Duration {
        self.lock().config.connect_timeout
    }

    /// Capacity of each LRU flow map (one per address family).
    pub fn flow_map_capacity(&self) -> u32 {
        self.lock().config.flow_map_entries
    }

    /// Slots of the flow slot table (0: none).
    pub fn flow_slots(&self) -> u32 {
        self.lock().config.flow_slots
    }

    /// Where each map's contents came from at load (pinned by an earlier run or fresh).
    pub fn map_origins(&self) -> Vec<(&'static str, MapOrigin)> {
        self.lock().map_origins.clone()
    }

    /// Kernel ids of the pinned maps, by name (empty when nothing is pinned).
    pub fn map_ids(&self) -> Vec<(String, u32)> {
        self.lock().map_ids.clone()
    }

    /// Changes whenever [`Datapath::totals`] would return something new.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// What only user space knows (see [`DatapathTotals`]), for the state file.
    pub fn totals(&self) -> DatapathTotals {
        let inner = self.lock();
        DatapathTotals {
            retired: inner
                .retired
                .iter()
                .map(|((name, direction), stats)| (name.clone(), *direction as u32, *stats))
                .collect(),
            seen_names: inner
                .seen_names
                .iter()
                .map(|(index, name)| (*index, name.clone()))
                .collect(),
        }
    }

    /// Takes over what a previous run saved about the same maps (before attaching).
    pub fn restore_totals(&self, totals: DatapathTotals) {
        let mut inner = self.lock();
        for (name, direction, stats) in totals.retired {
            if let Some(direction) = Direction::from_raw(direction) {
                inner.retired.insert((name, direction), stats);
            }
        }
        // Names attached in this run win over saved ones.
        for (index, name) in totals.seen_names {
            inner.seen_names.entry(index).or_insert(name);
        }
        inner.generation += 1;
    }

    /// How `hook` is attached in this run: `tcx` or `netlink` for the TC programs,
    /// `xdp-generic` or `xdp-native` for XDP.
    pub fn attach_mode(&self, hook: Hook) -> &'static str {
        let config = &self.lock().config;
        match hook {
            Hook::TcIngress | Hook::TcEgress => config.tc_attach.as_str(),
            Hook::XdpIngress if config.ingress == IngressHook::XdpNative => "xdp-native",
            Hook::XdpIngress => "xdp-generic",
        }
    }

    /// How TC programs are attached in this run.
    pub fn tc_attach(&self) -> TcAttach {
        self.lock().config.tc_attach
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        crate::support::sync::lock(&self.inner)
    }
}

impl Inner {
    fn names(&self) -> BTreeMap<u32, &str> {
        self.attachments
            .iter()
            .map(|a| (a.ifindex, a.interface.as_str()))
            .collect()
    }

    /// The slot and name of every interface attached now.
    fn attached_slots(&self) -> Vec<(u32, &str)> {
        let names = self.names();
        self.slots
            .iter()
            .filter_map(|(ifindex, &slot)| Some((slot, *names.get(ifindex)?)))
            .collect()
    }

    /// See [`Datapath::forget`].
    fn forget(&mut self, ifindex: u32) -> Option<String> {
        let (gone, kept): (Vec<Attachment>, Vec<Attachment>) =
            std::mem::take(&mut self.attachments)
                .into_iter()
                .partition(|a| a.ifindex == ifindex);
        self.attachments = kept;
        let name = gone.first()?.interface.clone();
        for attachment in gone {
            // The kernel removes TCX and XDP links together with their device, so failing to
            // detach from a device that is gone is expected.
            if let Err(err) = detach_one(&mut self.ebpf, attachment) {
                debug!("{err} (expected when the device is gone)");
            }
        }
        if let Some(&slot) = self.slots.get(&ifindex) {
            // Fold first, release after: a failed read keeps the slot (and its counts).
            let mut folded = Vec::new();
            for direction in [Direction::Ingress, Direction::Egress] {
                match self.device_stats.get(&stats_index(slot, direction), 0) {
                    Ok(per_cpu) => folded.push((direction, sum_over_cpus(&per_cpu))),
                    Err(err) => {
                        warn!(
                            "reading {DEVICE_STATS_MAP} for {name} (ifindex {ifindex}) before \
                             forgetting it: {err}; its slot stays"
                        );
                        return Some(name);
                    }
                }
            }
            self.generation += 1;
            self.signals.retire(&name, slot);
            self.rtt.retire(&name, slot);
            for (direction, stats) in folded {
                self.retired
                    .entry((name.clone(), direction))
                    .or_insert(DeviceStats::ZERO)
                    .accumulate(&stats);
            }
            self.release_slot(ifindex);
        }
        Some(name)
    }

    /// Gives `interface` (index `ifindex`) a free statistics slot, zeroed, and records it where
    /// the programs look it up.
    fn assign_slot(&mut self, interface: &str, ifindex: u32) -> Result<()> {
        if ifindex >= IFINDEX_LIMIT {
            return Err(Error::Other(format!(
                "cannot watch {interface}: its interface index {ifindex} is beyond what the \
                 datapath's {IFINDEX_SLOTS_MAP} map covers (indexes below {IFINDEX_LIMIT})"
            )));
        }
        let taken: std::collections::BTreeSet<u32> = self.slots.values().copied().collect();
        let slot = (0..DEVICE_SLOTS)
            .find(|slot| !taken.contains(slot))
            .ok_or_else(|| {
                Error::Other(format!(
                    "cannot watch {interface}: all {DEVICE_SLOTS} interface slots of \
                     {DEVICE_STATS_MAP} are in use"
                ))
            })?;
        self.signals.zero(slot)?;
        self.rtt.zero(slot)?;
        let cpus =
            nr_cpus().map_err(|(path, err)| Error::Other(format!("reading {path}: {err}")))?;
        self.attempts.zero(slot, cpus)?;
        for direction in [Direction::Ingress, Direction::Egress] {
            let zero = PerCpuValues::try_from(vec![DeviceStats::ZERO; cpus])
                .map_err(|err| Error::Other(format!("per-CPU values: {err}")))?;
            self.device_stats
                .set(stats_index(slot, direction), zero, 0)
                .map_err(|err| {
                    Error::datapath(
                        format!("zeroing {DEVICE_STATS_MAP} slot {slot} for {interface}"),
                        &err,
                    )
                })?;
        }
        self.ifindex_slots
            .set(ifindex, slot + 1, 0)
            .map_err(|err| {
                Error::datapath(
                    format!("recording {interface}'s slot in {IFINDEX_SLOTS_MAP}"),
                    &err,
                )
            })?;
        self.slots.insert(ifindex, slot);
        Ok(())
    }

    /// Stops the programs counting `ifindex` and frees its slot.
    fn release_slot(&mut self, ifindex: u32) {
        match self.ifindex_slots.set(ifindex, 0, 0) {
            Ok(()) => {
                self.slots.remove(&ifindex);
            }
            Err(err) => warn!("clearing the {IFINDEX_SLOTS_MAP} entry of ifindex {ifindex}: {err}"),
        }
    }
}

/// Index of a slot's statistics for `direction` in [`DEVICE_STATS_MAP`].
fn stats_index(slot: u32, direction: Direction) -> u32 {
    slot * 2 + direction as u32
}

/// The slots recorded in [`IFINDEX_SLOTS_MAP`] (by a previous run, when the map is pinned).
fn assigned_slots(ifindex_slots: &Array<MapData, u32>) -> Result<BTreeMap<u32, u32>> {
    let fd = ifindex_slots.map().fd().as_fd().as_raw_fd();
    let entries: Vec<(u32, u32)> = match map_batch::lookup_all(fd) {
        Ok(entries) => entries,
        Err(err) => {
            debug!("reading {IFINDEX_SLOTS_MAP} in batches: {err}; reading it entry by entry");
            ifindex_slots
                .iter()
                .enumerate()
                .map(|(index, value)| value.map(|value| (index as u32, value)))
                .collect::<std::result::Result<_, _>>()
                .map_err(|err| Error::datapath(format!("reading {IFINDEX_SLOTS_MAP}"), &err))?
        }
    };
    Ok(entries
        .into_iter()
        .filter(|&(_, value)| value != 0 && value <= DEVICE_SLOTS)
        .map(|(ifindex, value)| (ifindex, value - 1))
        .collect())
}

/// One interface and direction's statistics: the per-CPU copies added up.
fn sum_over_cpus(per_cpu: &PerCpuValues<DeviceStats>) -> DeviceStats {
    let mut stats = DeviceStats::ZERO;
    for cpu in per_cpu.iter() {
        stats.accumulate(cpu);
    }
    stats
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn tc_mut(ebpf: &mut Ebpf, hook: Hook) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(hook.as_str())
        .ok_or_else(|| Error::Other(format!("eBPF object has no program {}", hook.as_str())))?
        .try_into()
        .map_err(|err| Error::datapath(format!("program {}", hook.as_str()), &err))
}

fn xdp_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(XDP_INGRESS_PROGRAM)
        .ok_or_else(|| Error::Other(format!("eBPF object has no program {XDP_INGRESS_PROGRAM}")))?
        .try_into()
        .map_err(|err| Error::datapath(format!("program {XDP_INGRESS_PROGRAM}"), &err))
}

/// The maps of the object as this run wants them (what a pinned map must match to be reused).
fn wanted_maps(flow_map_entries: u32, flow_slots: u32) -> [WantedMap; 6] {
    let flows = |name, key_size| WantedMap {
        name,
        map_type: MapType::LruHash,
        key_size,
        value_size: size_of::<FlowStats>() as u32,
        max_entries: flow_map_entries,
    };
    let slots = |name, map_type, value_size| WantedMap {
        name,
        map_type,
        key_size: size_of::<u32>() as u32,
        value_size,
        max_entries: flow_slots.max(1),
    };
    [
        WantedMap {
            name: IFINDEX_SLOTS_MAP,
            map_type: MapType::Array,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<u32>() as u32,
            max_entries: IFINDEX_LIMIT,
        },
        WantedMap {
            name: DEVICE_STATS_MAP,
            map_type: MapType::PerCpuArray,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<DeviceStats>() as u32,
            max_entries: DEVICE_STATS_MAX_ENTRIES,
        },
        flows(FLOWS4_MAP, size_of::<FlowKey4>() as u32),
        flows(FLOWS6_MAP, size_of::<FlowKey6>() as u32),
        slots(FLOW_SLOTS_MAP, MapType::Array, size_of::<FlowSlot>() as u32),
        slots(
            FLOW_SLOT_COUNTERS_MAP,
            MapType::PerCpuArray,
            size_of::<FlowCounts>() as u32,
        ),
    ]
}

fn tc_attach_type(hook: Hook) -> TcAttachType {
    if hook == Hook::TcIngress {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    }
}

/// Removes the cls_bpf filters of ours at `hook` that an earlier run left on `interface`
/// (netlink filters outlive their process); other filters stay (see
/// [`crate::kernel::stale_filters`]). With TCX the interface may have no clsact qdisc at all:
/// only a netlink run leaves filters, so failing to list them is fine there.
fn remove_stale_filters(inner: &Inner, hook: Hook, interface: &str, ifindex: u32) -> Result<()> {
    if hook == Hook::XdpIngress {
        return Ok(());
    }
    stale_filters::remove(
        &inner.ownership,
        hook.as_str(),
        interface,
        ifindex,
        tc_attach_type(hook),
        inner.config.tc_attach == TcAttach::Tcx,
    )
    .map(drop)
}

/// What makes a cls_bpf filter ours: the ids of the TC programs just loaded and of those the
/// previous run pinned under `pin_path`, and the tags of the programs just loaded. With a pin
/// path, the programs just loaded are pinned in its place for the next run.
fn own_programs(ebpf: &mut Ebpf, hooks: &[Hook], pin_path: Option<&Path>) -> Result<Ownership> {
    let mut ownership = Ownership::default();
    let program_dir = pin_path.map(|root| root.join(pinning::PROGRAMS_DIR));
    if let Some(dir) = &program_dir {
        for (name, id) in pinning::pinned_program_ids(dir) {
            debug!("program {name} pinned by the previous run: id {id}");
            ownership.program_ids.insert(id);
        }
    }
    for &hook in hooks.iter().filter(|&&hook| hook != Hook::XdpIngress) {
        let program = tc_mut(ebpf, hook)?;
        let info = program
            .info()
            .map_err(|err| Error::datapath(format!("reading program {}", hook.as_str()), &err))?;
        ownership.program_ids.insert(info.id());
        ownership.tags.insert(hook.as_str().to_string(), info.tag());
        if let Some(dir) = &program_dir {
            pinning::pin_program(program, dir, hook.as_str())?;
        }
    }
    Ok(ownership)
}

fn attach_one(
    ebpf: &mut Ebpf,
    config: &DatapathConfig,
    hook: Hook,
    interface: &str,
) -> Result<LinkId> {
    let context = || {
        format!(
            "attaching {} to {interface} ({})",
            hook.as_str(),
            if hook == Hook::XdpIngress {
                "xdp"
            } else {
                config.tc_attach.as_str()
            }
        )
    };
    match hook {
        Hook::TcIngress | Hook::TcEgress => {
            let options = if config.tc_attach == TcAttach::Netlink {
                add_clsact(interface)?;
                TcAttachOptions::Netlink(NlOptions::default())
            } else {
                TcAttachOptions::TcxOrder(Default::default())
            };
            tc_mut(ebpf, hook)?
                .attach_with_options(interface, tc_attach_type(hook), options)
                .map(LinkId::Tc)
                .map_err(|err| Error::datapath(context(), &err))
        }
        Hook::XdpIngress => {
            let mode = if config.ingress == IngressHook::XdpNative {
                XdpMode::Driver
            } else {
                XdpMode::Skb
            };
            xdp_mut(ebpf)?
                .attach(interface, mode)
                .map(LinkId::Xdp)
                .map_err(|err| {
                    let mut err = Error::datapath(context(), &err);
                    if mode == XdpMode::Driver
                        && let Error::Datapath { message, .. } = &mut err
                    {
                        message.push_str(
                            " (the driver may lack native XDP: try --datapath.ingress=xdp-generic)",
                        );
                    }
                    err
                })
        }
    }
}

/// Adds the clsact qdisc cls_bpf filters hang from; one already there is fine (and kept on
/// exit: other tools' filters may use it).
fn add_clsact(interface: &str) -> Result<()> {
    match tc::qdisc_add_clsact(interface) {
        Ok(()) => Ok(()),
        Err(TcError::NetlinkError(err)) if err.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(err) => Err(Error::datapath(
            format!("adding a clsact qdisc to {interface}"),
            &err,
        )),
    }
}

fn detach_one(ebpf: &mut Ebpf, attachment: Attachment) -> Result<()> {
    let context = || {
        format!(
            "detaching {} from {}",
            attachment.hook.as_str(),
            attachment.interface
        )
    };
    match attachment.link {
        LinkId::Tc(link) => tc_mut(ebpf, attachment.hook)
            .and_then(|p| p.detach(link).map_err(|e| Error::datapath(context(), &e))),
        LinkId::Xdp(link) => {
            xdp_mut(ebpf).and_then(|p| p.detach(link).map_err(|e| Error::datapath(context(), &e)))
        }
    }
}
