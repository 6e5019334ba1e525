//! Rare kernel-side events seen from user space (see `network-probe-ebpf/src/events.rs` and
//! `network-probe-common`'s `events` module): the per-CPU counters of [`KERNEL_EVENTS_MAP`],
//! exported as `network_probe_datapath_kernel_events_total{event}`, and the aya-log ring
//! buffer through which the programs describe them, forwarded to the daemon's logger (the
//! `log` crate) at the level the program chose: warn for an event that loses a count, debug
//! for a harmless race.
//!
//! Before loading, [`LogLevel`] hands the daemon's log level to the object (aya-log's
//! `AYA_LOG_LEVEL` global), so a debug event in a daemon running at info is counted but not
//! written to the ring. The programs log an event only when their CPU's count of it reaches a
//! power of two, so a flood writes a few records, never one per packet.
//!
//! When the logger cannot start (the object's `AYA_LOGS` ring cannot be opened), the daemon
//! says so once at warn level and runs on: the events are still counted, exactly, and the
//! metric is all there is of them. A record the ring had no room for is lost (the programs go
//! on); the count is not.

use std::os::fd::AsRawFd as _;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
};
use aya_log::EbpfLogger;
use log::warn;
use network_probe_common::{KERNEL_EVENTS_MAP, KernelEvent};
use tokio::io::{Interest, unix::AsyncFd};

use crate::error::Result;
use crate::kernel::object::take_map;

/// The reader of the programs' log ring, writing to the daemon's logger.
pub type KernelLog = EbpfLogger<&'static dyn log::Log>;

/// The daemon's log level in the form the object takes it (aya-log's level numbers: error 1
/// to trace 5, 0 for off); kept alive while the loader borrows it.
pub struct LogLevel(u8);

impl LogLevel {
    /// The level of the daemon's logger (`log::max_level`), set by then.
    pub fn current() -> Self {
        LogLevel(log::max_level() as usize as u8)
    }

    pub fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader.override_global(aya_log::LEVEL, &self.0, true);
    }
}

/// The counters of the rare events.
pub struct KernelEvents {
    counts: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for KernelEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelEvents").finish_non_exhaustive()
    }
}

impl KernelEvents {
    /// Takes the counters' map out of the loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(KernelEvents {
            counts: take_map(ebpf, KERNEL_EVENTS_MAP, TryFrom::try_from)?,
        })
    }

    /// Every event with its count since the object was loaded, summed over CPUs (0 for those
    /// that never happened; a counter that cannot be read is left out, with a warning).
    pub fn read(&self) -> Vec<(KernelEvent, u64)> {
        KernelEvent::ALL
            .iter()
            .filter_map(|&event| match self.counts.get(&(event as u32), 0) {
                Ok(per_cpu) => Some((event, per_cpu.iter().sum())),
                Err(err) => {
                    warn!("reading {KERNEL_EVENTS_MAP}[{}]: {err}", event.as_str());
                    None
                }
            })
            .collect()
    }
}

/// Opens the object's log ring, or says why not (see the module doc) and returns `None`.
pub fn start_log(ebpf: &mut Ebpf) -> Option<KernelLog> {
    match EbpfLogger::init(ebpf) {
        Ok(log) => Some(log),
        Err(err) => {
            warn!(
                "the eBPF programs' log (aya-log) cannot start: {err}; rare kernel-side events \
                 are not logged, only counted in network_probe_datapath_kernel_events_total"
            );
            None
        }
    }
}

/// Forwards the records of `log` to the daemon's logger as they arrive, until the ring cannot
/// be polled any more (said at warn level).
pub async fn forward(log: KernelLog) {
    let fd = log.as_raw_fd();
    // SAFETY: the logger owns its ring buffer's map and keeps that one descriptor open until
    // it is dropped, which the AsyncFd does.
    let registered = unsafe { AsyncFd::register_with_interest(log, Interest::READABLE) };
    let mut log = match registered {
        Ok(log) => log,
        Err(err) => {
            warn!(
                "polling the eBPF programs' log ring (fd {fd}): {err}; rare kernel-side events \
                 are not logged, only counted in network_probe_datapath_kernel_events_total"
            );
            return;
        }
    };
    loop {
        match log.readable_mut().await {
            Ok(mut ready) => {
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
            Err(err) => {
                warn!(
                    "polling the eBPF programs' log ring: {err}; rare kernel-side events are no \
                     longer logged, only counted in network_probe_datapath_kernel_events_total"
                );
                return;
            }
        }
    }
}
