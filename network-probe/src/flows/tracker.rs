//! Drives the [`FlowTable`]: reads the kernel flow maps, refreshes the table, deletes the flows
//! it folded. Called on every scrape and by a periodic sweep, so evictions are noticed and idle
//! flows leave the map even when nobody scrapes.
//!
//! With a state file ([`crate::flows::state`]) it also restores, at start, what the previous run folded
//! out of the pinned maps, and saves it again whenever it changes: before the folded flows are
//! deleted from the kernel map, and at shutdown. What the restore took over is reported part by
//! part ([`state::Restored`]); a state file that does not decode is kept aside
//! ([`state::keep_aside`]) before the first save overwrites it, and counted.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use log::{info, warn};
use network_probe_common::FlowKey;

use crate::{
    flows::outcomes::Attempts,
    flows::signals::SignalReads,
    flows::state::{self, LoadError, Restored, SavedState},
    flows::table::SIGNALS,
    flows::table::{FlowOptions, FlowTable},
    kernel::datapath::Datapath,
};

#[derive(Debug)]
pub struct FlowTracker {
    datapath: Arc<Datapath>,
    table: Mutex<FlowTable>,
    state_file: Option<PathBuf>,
    /// (table generation, datapath generation) of the last state written.
    saved_generations: Mutex<(u64, u64)>,
    restored: Mutex<Restored>,
    save_errors: AtomicU64,
    /// State files kept aside because they did not decode (at most one per start).
    corrupt_files: AtomicU64,
    /// TCP connection attempts (see [`crate::flows::outcomes`]).
    attempts: Mutex<Attempts>,
    /// The last read of the per-flow signal maps (see [`crate::flows::signals`]).
    signals: Mutex<SignalReads>,
    /// The last read of the per-flow RTT maps (see [`crate::flows::rtt`]).
    rtt: Mutex<crate::flows::rtt::RttReads>,
}

impl FlowTracker {
    /// A tracker over `datapath`; with `state_file`, restores the previous run's user-space
    /// totals from it when they belong to the same pinned maps.
    pub fn new(datapath: Arc<Datapath>, options: FlowOptions, state_file: Option<PathBuf>) -> Self {
        let attempts = Mutex::new(Attempts::new(datapath.connect_timeout()));
        let tracker = FlowTracker {
            attempts,
            datapath,
            table: Mutex::new(FlowTable::new(options)),
            state_file,
            saved_generations: Mutex::new((0, 0)),
            restored: Mutex::new(Restored::default()),
            save_errors: AtomicU64::new(0),
            corrupt_files: AtomicU64::new(0),
            signals: Mutex::default(),
            rtt: Mutex::default(),
        };
        tracker.restore();
        tracker
    }

    fn restore(&self) {
        let Some(path) = &self.state_file else {
            return;
        };
        if let Err(err) = state::prepare_dir(path) {
            warn!("--datapath.state-file {}: {err}", path.display());
        }
        let saved = match state::load(path) {
            Ok(Some(saved)) => saved,
            Ok(None) => return,
            Err(LoadError::Read(err)) => {
                warn!(
                    "--datapath.state-file: {err}: totals of flows and interfaces that left the \
                     maps start from zero"
                );
                return;
            }
            Err(LoadError::Damaged(err)) => {
                self.corrupt_files.fetch_add(1, Ordering::Relaxed);
                let kept = match state::keep_aside(path, realtime_ns() / 1_000_000_000) {
                    Ok(aside) => format!("kept as {}", aside.display()),
                    Err(err) => {
                        format!("could not be kept aside ({err}): the next save replaces it")
                    }
                };
                warn!(
                    "--datapath.state-file: {err}: the file is damaged, {kept}; totals of flows \
                     and interfaces that left the maps start from zero"
                );
                return;
            }
        };
        let map_ids = self.datapath.map_ids();
        if !state::belongs_to(&saved, &map_ids) {
            info!(
                "{} was saved with maps {:?}, these are {map_ids:?} (fresh maps): not restored",
                path.display(),
                saved.map_ids
            );
            return;
        }
        self.datapath.restore_totals(saved.datapath);
        let mut restored = Restored {
            interfaces: true,
            flows: false,
        };
        let mut table = self.lock_table();
        match table.restore(saved.flows) {
            Ok(()) => {
                restored.flows = true;
                info!(
                    "restored the totals of {} flow series from {}",
                    table.series_count(),
                    path.display()
                )
            }
            Err(err) => warn!(
                "flow totals in {} not restored ({err}): flow series start from zero (the \
                 totals of interfaces were restored)",
                path.display()
            ),
        }
        // Folded into the saved totals already; the previous run may have died before deleting.
        let stale: Vec<FlowKey> = self
            .datapath
            .flows()
            .into_iter()
            .filter(|(key, stats)| {
                stats.counts.first_seen_ns <= saved.saved_at_ns
                    && saved.pending_deletes.contains(key)
            })
            .map(|(key, _)| key)
            .collect();
        if !stale.is_empty() {
            info!("deleted {} flows the previous run had folded", stale.len());
            self.datapath.remove_flows(&stale);
        }
        *crate::support::sync::lock(&self.restored) = restored;
    }

    /// Reads the flow map and refreshes the table; returns the table for reading.
    pub fn refresh(&self) -> MutexGuard<'_, FlowTable> {
        let mut table = self.lock_table();
        // The flows go from the maps' read batches straight into the table.
        let idle = table.refresh_from(monotonic_ns(), |sink| self.datapath.flows_into(sink));
        // Save before deleting: a crash in between leaves keys the next start deletes, never
        // counts that vanished.
        self.save_if_changed(&table, &idle);
        if !idle.is_empty() {
            self.datapath.remove_flows(&idle);
        }
        // After the flows: an attempt's SYN flow is in its series when the attempt is counted.
        let harvest = crate::support::sync::lock(&self.attempts)
            .harvest(monotonic_ns(), self.datapath.pending_attempts());
        table.count_attempts(&harvest.counted);
        self.datapath.remove_attempts(&harvest.delete);
        // The per-flow signals, counted in the flows' series; the maps are read only when a
        // family needs them.
        let families = table.options().families;
        if SIGNALS.iter().any(|name| families.has_named(name)) {
            let read = self.datapath.flow_signals();
            let gains = crate::support::sync::lock(&self.signals).gains(read);
            table.count_signals(&gains);
        }
        // Passive RTT per flow likewise (see `crate::flows::rtt`).
        if ["rtt_samples", "rtt_min_seconds", "rtt_seconds"]
            .iter()
            .any(|name| families.has_named(name))
        {
            let rtt = crate::support::sync::lock(&self.rtt).update(self.datapath.flow_rtt());
            table.count_rtt(&rtt);
        }
        table
    }

    /// TCP connection attempts counted so far by (interface index, direction of the SYN), by
    /// outcome ([`crate::flows::outcomes::Outcome`] order), as of the last refresh.
    pub fn attempt_totals(&self) -> std::collections::BTreeMap<(u32, u8), [u64; 4]> {
        crate::support::sync::lock(&self.attempts).totals().clone()
    }

    /// The table as the last refresh left it (no map read).
    pub fn table(&self) -> MutexGuard<'_, FlowTable> {
        self.lock_table()
    }

    /// Writes the state file now (at shutdown), if there is one and anything changed.
    pub fn save(&self) {
        let table = self.lock_table();
        self.save_if_changed(&table, &[]);
    }

    /// What of the previous run's user-space totals was restored at start, part by part.
    pub fn restored(&self) -> Restored {
        *crate::support::sync::lock(&self.restored)
    }

    /// State files kept aside at start because they did not decode.
    pub fn corrupt_files(&self) -> u64 {
        self.corrupt_files.load(Ordering::Relaxed)
    }

    /// State file writes that failed since start.
    pub fn save_errors(&self) -> u64 {
        self.save_errors.load(Ordering::Relaxed)
    }

    fn save_if_changed(&self, table: &FlowTable, pending_deletes: &[FlowKey]) {
        let Some(path) = &self.state_file else {
            return;
        };
        let generations = (table.generation(), self.datapath.generation());
        let mut saved = crate::support::sync::lock(&self.saved_generations);
        if *saved == generations && pending_deletes.is_empty() {
            return;
        }
        let state = SavedState::new(
            self.datapath.map_ids(),
            self.datapath.totals(),
            table.saved(),
            pending_deletes.to_vec(),
            monotonic_ns(),
        );
        match state::save(path, &state) {
            Ok(()) => *saved = generations,
            Err(err) => {
                self.save_errors.fetch_add(1, Ordering::Relaxed);
                warn!("writing --datapath.state-file {}: {err}", path.display());
            }
        }
    }

    fn lock_table(&self) -> MutexGuard<'_, FlowTable> {
        crate::support::sync::lock(&self.table)
    }

    pub fn datapath(&self) -> &Datapath {
        &self.datapath
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns.
pub(crate) fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in nanoseconds.
pub(crate) fn realtime_ns() -> u64 {
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
