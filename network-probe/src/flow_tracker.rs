//! Drives the [`FlowTable`]: reads the kernel flow map, refreshes the table, deletes the flows
//! it folded. Called on every scrape and by a periodic sweep, so evictions are noticed and idle
//! flows leave the map even when nobody scrapes.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::{
    datapath::Datapath,
    flows::{FlowOptions, FlowTable},
};

#[derive(Debug)]
pub struct FlowTracker {
    datapath: Arc<Datapath>,
    table: Mutex<FlowTable>,
}

impl FlowTracker {
    pub fn new(datapath: Arc<Datapath>, options: FlowOptions) -> Self {
        FlowTracker {
            datapath,
            table: Mutex::new(FlowTable::new(options)),
        }
    }

    /// Reads the flow map and refreshes the table; returns the table for reading.
    pub fn refresh(&self) -> MutexGuard<'_, FlowTable> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let flows = self.datapath.flows();
        let idle = table.refresh(monotonic_ns(), flows);
        if !idle.is_empty() {
            self.datapath.remove_flows(&idle);
        }
        table
    }

    pub fn datapath(&self) -> &Datapath {
        &self.datapath
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in nanoseconds.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
