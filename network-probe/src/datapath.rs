//! The kernel side seen from user space: loads the eBPF object embedded at build time, attaches
//! its TC programs (TCX links) at ingress and egress of each selected interface, reads the maps
//! on demand and detaches everything on shutdown.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
};

use aya::{
    maps::{MapData, PerCpuHashMap},
    programs::{tc::SchedClassifierLinkId, SchedClassifier, TcAttachType},
    Ebpf,
};
use log::{info, warn};
use network_probe_common::{
    DeviceCounters, DeviceKey, Direction, DEVICE_COUNTERS_MAP, DEVICE_COUNTERS_MAX_ENTRIES,
    TC_EGRESS_PROGRAM, TC_INGRESS_PROGRAM,
};

use crate::{
    error::{Error, Result},
    rtnetlink,
};

/// The eBPF object built from `network-probe-ebpf` by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/network-probe"));

/// A TC hook our programs attach to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    TcIngress,
    TcEgress,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::TcIngress, Hook::TcEgress];

    /// Label value used in metrics, equal to the program's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Hook::TcIngress => TC_INGRESS_PROGRAM,
            Hook::TcEgress => TC_EGRESS_PROGRAM,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::TcIngress => TcAttachType::Ingress,
            Hook::TcEgress => TcAttachType::Egress,
        }
    }
}

/// One program attached to one interface.
#[derive(Debug)]
struct Attachment {
    interface: String,
    ifindex: u32,
    hook: Hook,
    link: SchedClassifierLinkId,
}

/// Counters of one interface and direction, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSample {
    pub interface: String,
    pub direction: Direction,
    pub counters: DeviceCounters,
}

/// What a scrape needs from the datapath, read in one go.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub devices: Vec<DeviceSample>,
    /// (interface, hook) for every attached program.
    pub attached: Vec<(String, Hook)>,
    pub device_map_entries: usize,
    pub device_map_capacity: u32,
}

struct Inner {
    ebpf: Ebpf,
    device_counters: PerCpuHashMap<MapData, DeviceKey, DeviceCounters>,
    attachments: Vec<Attachment>,
}

/// The loaded eBPF object and its attachments. Shared between the daemon (which attaches and
/// detaches) and the metrics collector (which reads).
pub struct Datapath {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath").finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the embedded object and verifies its programs with the kernel. Attaches nothing.
    pub fn load() -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            return Err(Error::Other(
                "this binary was built with AYA_BUILD_SKIP=1 and has no eBPF object; rebuild \
                 with `cargo xtask run`"
                    .into(),
            ));
        }
        let mut ebpf = Ebpf::load(EBPF_OBJECT)
            .map_err(|err| Error::datapath("loading the eBPF object", &err))?;
        for hook in Hook::ALL {
            program_mut(&mut ebpf, hook)?.load().map_err(|err| {
                Error::datapath(format!("verifying program {}", hook.as_str()), &err)
            })?;
        }
        let map = ebpf
            .take_map(DEVICE_COUNTERS_MAP)
            .ok_or_else(|| Error::Other(format!("eBPF object has no map {DEVICE_COUNTERS_MAP}")))?;
        let device_counters = PerCpuHashMap::try_from(map)
            .map_err(|err| Error::datapath(format!("opening map {DEVICE_COUNTERS_MAP}"), &err))?;
        Ok(Datapath {
            inner: Mutex::new(Inner {
                ebpf,
                device_counters,
                attachments: Vec::new(),
            }),
        })
    }

    /// Attaches the ingress and egress programs to `interface` with TCX links. On failure
    /// nothing stays attached to that interface.
    pub fn attach(&self, interface: &str) -> Result<()> {
        let ifindex = rtnetlink::interface_index(interface)?;
        let mut inner = self.lock();
        let mut added = Vec::new();
        for hook in Hook::ALL {
            let program = program_mut(&mut inner.ebpf, hook)?;
            match program.attach(interface, hook.attach_type()) {
                Ok(link) => added.push(Attachment {
                    interface: interface.to_string(),
                    ifindex,
                    hook,
                    link,
                }),
                Err(err) => {
                    for attachment in added {
                        detach_one(&mut inner.ebpf, attachment);
                    }
                    return Err(Error::datapath(
                        format!("attaching {} to {interface}", hook.as_str()),
                        &err,
                    ));
                }
            }
        }
        info!("attached {TC_INGRESS_PROGRAM} and {TC_EGRESS_PROGRAM} to {interface} (ifindex {ifindex}) with TCX");
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
            detach_one(&mut inner.ebpf, attachment);
        }
    }

    /// Reads the device counters (summing per-CPU copies) and the attachment list.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        let names: BTreeMap<u32, &str> = inner
            .attachments
            .iter()
            .map(|a| (a.ifindex, a.interface.as_str()))
            .collect();
        let mut devices = Vec::new();
        let mut entries = 0;
        for item in inner.device_counters.iter() {
            let (key, per_cpu) = match item {
                Ok(item) => item,
                Err(err) => {
                    warn!("reading {DEVICE_COUNTERS_MAP}: {err}");
                    continue;
                }
            };
            entries += 1;
            let (Some(direction), Some(interface)) =
                (Direction::from_raw(key.direction), names.get(&key.ifindex))
            else {
                continue;
            };
            let mut counters = DeviceCounters::default();
            for cpu in per_cpu.iter() {
                counters.accumulate(cpu);
            }
            devices.push(DeviceSample {
                interface: interface.to_string(),
                direction,
                counters,
            });
        }
        devices.sort_by(|a, b| (&a.interface, a.direction).cmp(&(&b.interface, b.direction)));
        Snapshot {
            devices,
            attached: inner
                .attachments
                .iter()
                .map(|a| (a.interface.clone(), a.hook))
                .collect(),
            device_map_entries: entries,
            device_map_capacity: DEVICE_COUNTERS_MAX_ENTRIES,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn program_mut(ebpf: &mut Ebpf, hook: Hook) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(hook.as_str())
        .ok_or_else(|| Error::Other(format!("eBPF object has no program {}", hook.as_str())))?
        .try_into()
        .map_err(|err| Error::datapath(format!("program {}", hook.as_str()), &err))
}

fn detach_one(ebpf: &mut Ebpf, attachment: Attachment) {
    let result = program_mut(ebpf, attachment.hook).and_then(|program| {
        program.detach(attachment.link).map_err(|err| {
            Error::datapath(
                format!(
                    "detaching {} from {}",
                    attachment.hook.as_str(),
                    attachment.interface
                ),
                &err,
            )
        })
    });
    if let Err(err) = result {
        warn!("{err}");
    }
}
