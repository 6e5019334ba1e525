//! Flow series: turns the kernel's LRU flow map into a bounded set of Prometheus series whose
//! counters never go backwards.
//!
//! - Flows are projected onto the configured label set (default: interface, source, destination)
//!   and summed per series: every refresh adds to a series what each of its flows gained since
//!   the last read (the whole count of a flow not seen before, or of a new flow that took the
//!   key of one that left between two reads).
//! - At most `max_series` label sets (the budget) have a series of their own: while there is
//!   room a new label set gets one at once; when the budget is spent its flows count in its
//!   interface's `other` row, and after every read the label sets are ranked by weight
//!   ([`crate::flows::admission`]): the heaviest by the chosen measure over the window take the
//!   places, with hysteresis. A series that leaves the top K is folded into its interface's
//!   `other` row (what it counted stays counted there), one that enters starts at zero; every
//!   gain of a flow is added to exactly one row, so an interface's rows sum to what its flows
//!   counted, and no exported counter goes backwards.
//! - A flow idle for `idle_timeout` is deleted from the kernel map (its counts stay in its
//!   series); a flow the kernel evicted (map full) keeps in its series what the last read found
//!   and is counted as an eviction. A series with no live flow left, idle for `idle_timeout`, is
//!   folded into its interface's `other` row and stops being exported.
//!
//! This module is pure: the caller reads the map and deletes what [`FlowTable::refresh`] returns.
//! What lives only here (the totals less what the flows still in the map hold, and the table's
//! own counters) can be saved and restored across restarts ([`FlowTable::saved`],
//! [`FlowTable::restore`]); the live part is in the pinned kernel map.

use std::{
    collections::{HashMap, hash_map::Entry},
    hash::BuildHasher as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use network_probe_common::{FAMILY_IPV4, FlowKey, FlowStats};
use serde::{Deserialize, Serialize};

use crate::flows::{
    admission::{self, Candidate, RankBy},
    families::FlowFamilies,
};

/// The table's maps: keyed by flows and series seen on the wire, hashed with foldhash (seeded
/// per process, so crafted addresses cannot aim at collisions) rather than SipHash, which was
/// the largest single cost of a 100k-series scrape.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Which labels flow series carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowLabels {
    pub interface: bool,
    pub direction: bool,
    pub src: bool,
    pub dst: bool,
    pub src_port: bool,
    pub dst_port: bool,
}

impl FlowLabels {
    pub const DEFAULT: &'static str = "interface,src,dst";
    pub const KNOWN: [&'static str; 6] = [
        "interface",
        "direction",
        "src",
        "dst",
        "src_port",
        "dst_port",
    ];
}

impl std::fmt::Display for FlowLabels {
    /// The canonical comma-separated list (labels in [`FlowLabels::KNOWN`] order).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let enabled = [
            self.interface,
            self.direction,
            self.src,
            self.dst,
            self.src_port,
            self.dst_port,
        ];
        let names: Vec<&str> = FlowLabels::KNOWN
            .iter()
            .zip(enabled)
            .filter_map(|(name, on)| on.then_some(*name))
            .collect();
        f.write_str(&names.join(","))
    }
}

impl std::str::FromStr for FlowLabels {
    type Err = String;

    /// Parses a comma-separated list such as `interface,src,dst,dst_port`.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut labels = FlowLabels {
            interface: false,
            direction: false,
            src: false,
            dst: false,
            src_port: false,
            dst_port: false,
        };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let flag = match name {
                "interface" => &mut labels.interface,
                "direction" => &mut labels.direction,
                "src" => &mut labels.src,
                "dst" => &mut labels.dst,
                "src_port" => &mut labels.src_port,
                "dst_port" => &mut labels.dst_port,
                other => {
                    return Err(format!(
                        "unknown flow label {other:?} (known: {})",
                        FlowLabels::KNOWN.join(", ")
                    ));
                }
            };
            *flag = true;
        }
        Ok(labels)
    }
}

/// Settings of the flow table.
#[derive(Clone, Copy, Debug)]
pub struct FlowOptions {
    pub labels: FlowLabels,
    /// The budget: label sets with a series of their own.
    pub max_series: usize,
    pub idle_timeout: Duration,
    /// The families a series carries (the exposition's business; kept here with the rest).
    pub families: FlowFamilies,
    /// What label sets are ranked by for the budget, and over what window.
    pub rank_by: RankBy,
    pub rank_window: Duration,
}

/// The counters of a flow or series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowCounters {
    pub packets: u64,
    pub bytes: u64,
    pub retransmits: u64,
    pub rst: u64,
    pub syn: u64,
    pub fin: u64,
    pub zero_window: u64,
    pub df: u64,
    /// TCP connection attempts (SYNs of this series' flows) by outcome, in
    /// [`crate::flows::outcomes::Outcome`] order; counted by [`FlowTable::count_attempts`],
    /// never by the flow maps. Absent from state files written before it existed.
    #[serde(default)]
    pub attempts: [u64; 4],
    /// The passive signals of this series' flows, in [`SIGNALS`] order (CE-marked packets,
    /// ECE and CWR segments, path-MTU messages); counted by [`FlowTable::count_signals`] from
    /// the kernel's per-flow signal maps. Not in state files: the signal maps are not pinned,
    /// these counters restart with the daemon.
    #[serde(skip)]
    pub signals: [u64; 4],
    /// Passive RTT samples of this series' flows (taken on ingress, see
    /// [`crate::flows::rtt`]) and their sum in nanoseconds; counted by
    /// [`FlowTable::count_rtt`], never by the flow maps. Absent from older state files.
    #[serde(default)]
    pub rtt_samples: u64,
    #[serde(default)]
    pub rtt_sum_ns: u64,
}

/// The passive signals a series counts ([`FlowCounters::signals`]), by family name.
pub(crate) const SIGNALS: [&str; 4] = [
    "ce_packets",
    "tcp_ece_segments",
    "tcp_cwr_segments",
    "pmtu_messages",
];

impl FlowCounters {
    /// What each counter gained since `earlier` (none for a counter that is lower now).
    fn since(&self, earlier: &FlowCounters) -> FlowCounters {
        FlowCounters {
            packets: self.packets.saturating_sub(earlier.packets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            retransmits: self.retransmits.saturating_sub(earlier.retransmits),
            rst: self.rst.saturating_sub(earlier.rst),
            syn: self.syn.saturating_sub(earlier.syn),
            fin: self.fin.saturating_sub(earlier.fin),
            zero_window: self.zero_window.saturating_sub(earlier.zero_window),
            df: self.df.saturating_sub(earlier.df),
            attempts: std::array::from_fn(|i| self.attempts[i].saturating_sub(earlier.attempts[i])),
            signals: std::array::from_fn(|i| self.signals[i].saturating_sub(earlier.signals[i])),
            rtt_samples: self.rtt_samples.saturating_sub(earlier.rtt_samples),
            rtt_sum_ns: self.rtt_sum_ns.saturating_sub(earlier.rtt_sum_ns),
        }
    }

    fn add(&mut self, other: &FlowCounters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.retransmits += other.retransmits;
        self.rst += other.rst;
        self.syn += other.syn;
        self.fin += other.fin;
        self.zero_window += other.zero_window;
        self.df += other.df;
        for (total, added) in self.attempts.iter_mut().zip(other.attempts) {
            *total += added;
        }
        for (total, added) in self.signals.iter_mut().zip(other.signals) {
            *total += added;
        }
        self.rtt_samples += other.rtt_samples;
        self.rtt_sum_ns += other.rtt_sum_ns;
    }
}

impl From<&FlowStats> for FlowCounters {
    fn from(stats: &FlowStats) -> Self {
        FlowCounters {
            packets: stats.counts.packets,
            bytes: stats.counts.bytes,
            retransmits: stats.counts.retransmits,
            rst: stats.counts.rst,
            syn: stats.counts.syn,
            fin: stats.counts.fin,
            zero_window: stats.counts.zero_window,
            df: stats.counts.df,
            attempts: [0; 4],
            signals: [0; 4],
            rtt_samples: 0,
            rtt_sum_ns: 0,
        }
    }
}

/// The counters the flow maps keep (a [`FlowCounters`] without what user space counts), as a
/// flow's last read and a series' totals hold them: 64 bytes where a [`FlowCounters`] takes
/// 96, per flow and per series (see [`Series`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MapCounts([u64; 8]);

impl MapCounts {
    fn of(counters: &FlowCounters) -> MapCounts {
        MapCounts([
            counters.packets,
            counters.bytes,
            counters.retransmits,
            counters.rst,
            counters.syn,
            counters.fin,
            counters.zero_window,
            counters.df,
        ])
    }

    /// As counters (none of what user space counts).
    fn widen(&self) -> FlowCounters {
        let [packets, bytes, retransmits, rst, syn, fin, zero_window, df] = self.0;
        FlowCounters {
            packets,
            bytes,
            retransmits,
            rst,
            syn,
            fin,
            zero_window,
            df,
            attempts: [0; 4],
            signals: [0; 4],
            rtt_samples: 0,
            rtt_sum_ns: 0,
        }
    }
}

/// What a series counts beyond the flow maps' counters: connection attempts by outcome and
/// passive signals. Few series have any, so a series holds it boxed, allocated at its first
/// count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Extra {
    attempts: [u64; 4],
    signals: [u64; 4],
    /// Passive RTT: samples and their sum (counters), the smallest sample and the mean of the
    /// last refresh that gained any, nanoseconds (0: none).
    rtt_samples: u64,
    rtt_sum_ns: u64,
    rtt_min_ns: u64,
    rtt_mean_ns: u64,
}

/// The label values of one series; `None` for labels not in the configured set. `other` rows
/// keep only the interface.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    pub other: bool,
    pub ifindex: Option<u32>,
    pub direction: Option<u8>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

/// One exported series.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Everything its flows counted up to the last read, departed flows included: each read
    /// adds what a flow gained since the one before, so a count never moves between series.
    /// The flow maps' counters here, the rest in `extra` (see [`Series::total`]).
    counted: MapCounts,
    extra: Option<Box<Extra>>,
    /// Flows of the last read with this label set.
    live_flows: u32,
    /// A label set without a series of its own (beyond the budget): not exported, counts
    /// nothing; its flows count in the `other` row at `other_place`. Kept for its weight.
    shadow: bool,
    other_place: u32,
    /// The label set's weight for the ranking: decayed at the start of each refresh, then
    /// increased by what its flows gained of the measure. A single-precision float: a weight
    /// only has to tell heavier from lighter by the hysteresis factor.
    weight: f32,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Window scale shift of the most recently active flow that offered one.
    pub window_scale: Option<u8>,
    window_scale_seen_ns: u64,
}

impl Series {
    /// Everything counted for this series so far.
    pub fn total(&self) -> FlowCounters {
        let mut total = self.counted.widen();
        if let Some(extra) = &self.extra {
            total.attempts = extra.attempts;
            total.signals = extra.signals;
            total.rtt_samples = extra.rtt_samples;
            total.rtt_sum_ns = extra.rtt_sum_ns;
        }
        total
    }

    /// The smallest passive RTT sample of the series' flows, nanoseconds (0: none).
    pub fn rtt_min_ns(&self) -> u64 {
        self.extra.as_ref().map_or(0, |extra| extra.rtt_min_ns)
    }

    /// The mean of the passive RTT samples the series gained at the last refresh that gained
    /// any, nanoseconds (0: none yet).
    pub fn rtt_mean_ns(&self) -> u64 {
        self.extra.as_ref().map_or(0, |extra| extra.rtt_mean_ns)
    }

    /// Adds `counters` to what this series counted.
    fn add(&mut self, counters: &FlowCounters) {
        for (total, added) in self.counted.0.iter_mut().zip(MapCounts::of(counters).0) {
            *total += added;
        }
        if counters.attempts != [0; 4]
            || counters.signals != [0; 4]
            || counters.rtt_samples != 0
            || counters.rtt_sum_ns != 0
        {
            let extra = self.extra.get_or_insert_with(Box::default);
            extra.rtt_samples += counters.rtt_samples;
            extra.rtt_sum_ns += counters.rtt_sum_ns;
            for (total, added) in extra.attempts.iter_mut().zip(counters.attempts) {
                *total += added;
            }
            for (total, added) in extra.signals.iter_mut().zip(counters.signals) {
                *total += added;
            }
        }
    }

    /// Sets what this series counted to `counters`.
    fn set_total(&mut self, counters: &FlowCounters) {
        self.counted = MapCounts::default();
        self.extra = None;
        self.add(counters);
    }
}

/// Counts about the table itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTableStats {
    /// Flows that vanished from the map without us removing them (LRU eviction).
    pub evicted: u64,
    /// Flows removed by us after `idle_timeout` without packets.
    pub idle_removed: u64,
    /// Series folded into their interface's `other` row after going idle.
    pub series_expired: u64,
    /// Series folded into their interface's `other` row after leaving the top K.
    #[serde(default)]
    pub series_ranked_out: u64,
    /// IPv4 and IPv6 flows in the maps at the last refresh.
    #[serde(skip)]
    pub live_flows: [usize; 2],
}

/// The part of a series that only user space knows: what its departed flows counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSeries {
    pub retired: FlowCounters,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub window_scale: Option<u8>,
    pub window_scale_seen_ns: u64,
}

/// What a restarted daemon needs to carry on where this table stands, given the same kernel
/// map: the retired totals of every series and the table's own counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTableState {
    /// The `--flows.labels` the series keys were made with.
    pub labels: String,
    pub series: Vec<(SeriesKey, SavedSeries)>,
    pub stats: FlowTableStats,
}

/// A flow as the last refresh read it.
#[derive(Debug)]
struct LastRead {
    counts: MapCounts,
    /// Tells this flow from a later one under the same key (the kernel evicted it and a new
    /// packet created another between two reads).
    first_seen_ns: u64,
    /// The number of the refresh that read it (wrapping).
    refresh: u32,
    /// Where its label set is in [`SeriesSet::places`] (a label set cannot leave while a flow
    /// of it is in the maps): its series, or, for a shadow, the entry naming its `other` row.
    label: u32,
}

/// The series and their admission under the cap. Each series has a place in a vector, which
/// flows remember: a flow read again finds its series without hashing its labels.
#[derive(Debug)]
struct SeriesSet {
    labels: FlowLabels,
    max_series: usize,
    /// The places, found by their series' label set (hashed with `hasher`); a label set is
    /// kept once, in `places`.
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// The series by place; `None` where an expired series was, until a new one takes it.
    places: Vec<Option<(SeriesKey, Series)>>,
    /// Places without a series.
    free: Vec<u32>,
    /// Series with their own label set (not `other` rows, not shadows).
    admitted: usize,
    /// Label sets beyond the budget, counted in `other` rows.
    shadows: usize,
}

/// The least number of places [`SeriesSet::places`] grows by.
const PLACES_STEP: usize = 1024;

/// See the module documentation.
#[derive(Debug)]
pub struct FlowTable {
    options: FlowOptions,
    last_read: FastMap<FlowKey, LastRead>,
    /// Refreshes so far (wrapping), numbering [`LastRead::refresh`].
    refreshes: u32,
    series: SeriesSet,
    stats: FlowTableStats,
    /// Bumped whenever something only user space knows changes (a retired total, a series
    /// folded into `other`): the caller saves the state when it moved.
    generation: u64,
    /// CLOCK_MONOTONIC of the last ranking.
    ranked_at_ns: u64,
}

impl FlowTable {
    pub fn new(options: FlowOptions) -> Self {
        FlowTable {
            options,
            last_read: FastMap::default(),
            refreshes: 0,
            series: SeriesSet::new(&options),
            stats: FlowTableStats::default(),
            generation: 0,
            ranked_at_ns: 0,
        }
    }

    /// Changes whenever [`FlowTable::saved`] would return something new.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The retired totals and counters, for a state file: what each series counted, less what
    /// its flows still in the maps had counted at the last read (the next run's first read
    /// counts those again).
    pub fn saved(&self) -> FlowTableState {
        let mut in_maps = vec![FlowCounters::default(); self.series.places.len()];
        for last in self.last_read.values() {
            in_maps[self.series.count_place(last.label) as usize].add(&last.counts.widen());
        }
        // A series that entered the top K while its flows lived holds only what they gained
        // since; the rest of their counts is in its `other` row. Subtracted there, so the next
        // run, which reads those flows again whole (into the series), counts nothing twice: the
        // total is kept, the `other` row restarts lower by that part (as it does for any flow
        // of `other` whose label set finds room in the next run).
        let mut before_admission: HashMap<Option<u32>, FlowCounters> = HashMap::new();
        for (place, key, series) in self.series.iter_places() {
            if !key.other && !series.shadow {
                let deficit = in_maps[place as usize].since(&series.total());
                if deficit != FlowCounters::default() {
                    before_admission
                        .entry(key.ifindex)
                        .or_default()
                        .add(&deficit);
                }
            }
        }
        let mut series: Vec<(SeriesKey, SavedSeries)> = self
            .series
            .iter_places()
            .filter(|(_, _, series)| !series.shadow)
            .map(|(place, key, series)| {
                let mut live = in_maps[place as usize];
                if key.other
                    && let Some(deficit) = before_admission.get(&key.ifindex)
                {
                    live.add(deficit);
                }
                (
                    key.clone(),
                    SavedSeries {
                        retired: FlowCounters {
                            // Not saved: the kernel's signal maps restart with the daemon too.
                            signals: [0; 4],
                            ..series.total().since(&live)
                        },
                        first_seen_ns: series.first_seen_ns,
                        last_seen_ns: series.last_seen_ns,
                        window_scale: series.window_scale,
                        window_scale_seen_ns: series.window_scale_seen_ns,
                    },
                )
            })
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        FlowTableState {
            labels: self.options.labels.to_string(),
            series,
            stats: FlowTableStats {
                live_flows: [0; 2],
                ..self.stats
            },
        }
    }

    /// Takes over what a previous run saved (before the first refresh). Refused, naming both
    /// label sets, when it was made with other `--flows.labels`: its series would not match.
    pub fn restore(&mut self, state: FlowTableState) -> Result<(), String> {
        let labels = self.options.labels.to_string();
        if state.labels != labels {
            return Err(format!(
                "saved with --flows.labels={}, running with --flows.labels={labels}",
                state.labels
            ));
        }
        self.series = SeriesSet::new(&self.options);
        for (key, saved) in state.series {
            // A file this table wrote names each series once; should one name it twice, the
            // first stands (two places for one label set would split its counts).
            if self.series.find(&key).is_some() {
                continue;
            }
            // Admission stays sticky across the restart, even beyond a lowered cap.
            let mut series = Series {
                first_seen_ns: saved.first_seen_ns,
                last_seen_ns: saved.last_seen_ns,
                window_scale: saved.window_scale,
                window_scale_seen_ns: saved.window_scale_seen_ns,
                ..Series::default()
            };
            series.set_total(&saved.retired);
            self.series.insert(key, series);
        }
        self.stats = state.stats;
        self.generation += 1;
        Ok(())
    }

    /// Takes a fresh read of the whole flow map at `now_ns` (CLOCK_MONOTONIC, the clock of the
    /// kernel's timestamps) and returns the idle flows the caller must delete from the map.
    ///
    /// One pass over the read, updating the last read in place (no new map per refresh): each
    /// flow adds to its series what it gained since the last read (all of it if new), and is
    /// stamped with this refresh's number; a flow of the last read left unstamped is one the
    /// kernel evicted, whose counts up to the last read are already in its series.
    pub fn refresh(&mut self, now_ns: u64, flows: Vec<(FlowKey, FlowStats)>) -> Vec<FlowKey> {
        self.refresh_from(now_ns, |sink| {
            for (key, stats) in flows {
                sink(key, stats);
            }
            true
        })
    }

    /// [`FlowTable::refresh`] from a reader that hands each flow to the sink it is given as it
    /// reads the maps, and returns whether it read them all; no vector of every flow is made
    /// (140 bytes a flow). After an incomplete read nothing is taken for evicted or expired:
    /// the flows not read are read at the next refresh.
    pub fn refresh_from(
        &mut self,
        now_ns: u64,
        read: impl FnOnce(&mut dyn FnMut(FlowKey, FlowStats)) -> bool,
    ) -> Vec<FlowKey> {
        let idle_ns = self.options.idle_timeout.as_nanos() as u64;
        self.refreshes = self.refreshes.wrapping_add(1);
        let this_refresh = self.refreshes;
        // The weights decay first, then gain what this read adds: one exp() per refresh, not
        // per label set (100k of them at 100k flows).
        let elapsed = Duration::from_nanos(now_ns.saturating_sub(self.ranked_at_ns));
        self.ranked_at_ns = now_ns;
        let factor = admission::decay_factor(elapsed, self.options.rank_window) as f32;
        for (_, _, series) in self.series.iter_places_mut() {
            series.live_flows = 0;
            series.weight *= factor;
        }
        let mut idle = Vec::new();
        let mut live_flows = [0; 2];
        let complete = read(&mut |key, stats| {
            if self.see_flow(key, &stats, now_ns, idle_ns, this_refresh) {
                self.generation += 1;
                idle.push(key);
            } else {
                live_flows[usize::from(key.family != network_probe_common::FAMILY_IPV4)] += 1;
            }
        });
        self.stats.idle_removed += idle.len() as u64;
        if complete {
            let evicted_before = self.last_read.len();
            self.last_read
                .retain(|_, last| last.refresh == this_refresh);
            let evicted = (evicted_before - self.last_read.len()) as u64;
            self.stats.evicted += evicted;
            self.generation += evicted;
            self.expire_series(now_ns, idle_ns);
        }
        self.rank();
        self.stats.live_flows = live_flows;
        idle
    }

    /// Takes one flow of a read into the table: what it gained since the last read, in the
    /// series its label set counts in. Returns whether it is idle (to be deleted).
    fn see_flow(
        &mut self,
        key: FlowKey,
        stats: &FlowStats,
        now_ns: u64,
        idle_ns: u64,
        this_refresh: u32,
    ) -> bool {
        let counts = FlowCounters::from(stats);
        let first_seen_ns = stats.counts.first_seen_ns;
        let is_idle = now_ns.saturating_sub(stats.counts.last_seen_ns) >= idle_ns;
        let entry = self.last_read.entry(key);
        // The same flow as last time: what it gained since, in its series. New, or a new
        // flow under the key of one that left between two reads: all of its count, in the
        // series its labels admit it to now.
        let (gained, label) = match &entry {
            Entry::Occupied(last) if last.get().first_seen_ns == first_seen_ns => {
                (counts.since(&last.get().counts.widen()), last.get().label)
            }
            _ => (counts, self.series.label_place(&key)),
        };
        let read = LastRead {
            counts: MapCounts::of(&counts),
            first_seen_ns,
            refresh: this_refresh,
            label,
        };
        match entry {
            Entry::Occupied(last) if is_idle => {
                last.remove();
            }
            Entry::Occupied(mut last) => *last.get_mut() = read,
            Entry::Vacant(slot) if !is_idle => {
                slot.insert(read);
            }
            Entry::Vacant(_) => {}
        }
        let place = self.series.count_place(label);
        let series = self.series.get_mut(place);
        series.add(&gained);
        series.note_times(stats);
        let label_set = self.series.get_mut(label);
        if place != label {
            label_set.note_times(stats);
        }
        label_set.weight += self.options.rank_by.of(&gained) as f32;
        if !is_idle {
            label_set.live_flows += 1;
        }
        is_idle
    }

    /// Counts finished connection attempts in the series of their SYN's flow (admitting it
    /// under the cap like a flow, else its interface's `other` row): `attempts` holds the SYN's
    /// flow key, the outcome and when the SYN was last seen. Call after [`FlowTable::refresh`],
    /// which has put the SYN's flow in its series already.
    pub fn count_attempts(&mut self, attempts: &[(FlowKey, crate::flows::outcomes::Outcome, u64)]) {
        for (key, outcome, seen_ns) in attempts {
            let label = self.series.label_place(key);
            let place = self.series.count_place(label);
            let series = self.series.get_mut(place);
            let mut attempt = FlowCounters::default();
            attempt.attempts[*outcome as usize] = 1;
            series.add(&attempt);
            // A series created for the attempt alone must not expire before it is exported.
            series.last_seen_ns = series.last_seen_ns.max(*seen_ns);
            if series.first_seen_ns == 0 {
                series.first_seen_ns = *seen_ns;
            }
        }
        if !attempts.is_empty() {
            self.generation += 1;
        }
    }

    /// Sizes and capacities of the table's parts (for the heap measurement).
    #[cfg(test)]
    pub(crate) fn memory_report(&self) -> String {
        format!(
            "last_read: {} of capacity {} x ({} key + {} value); places: {} of capacity {} x {}; \
             index capacity {}",
            self.last_read.len(),
            self.last_read.capacity(),
            std::mem::size_of::<FlowKey>(),
            std::mem::size_of::<LastRead>(),
            self.series.places.len(),
            self.series.places.capacity(),
            std::mem::size_of::<Option<(SeriesKey, Series)>>(),
            self.series.index.capacity(),
        )
    }

    /// Counts what the kernel's per-flow signal maps gained since their last read (`read`:
    /// flow key and gain) in the series of each flow, like its packets: its series if its label
    /// set has one (admitting it while under the budget), else its interface's `other` row. A
    /// series that leaves the top K takes its signals to the `other` row with the rest.
    pub fn count_signals(&mut self, read: &[(FlowKey, network_probe_common::FlowSignals)]) {
        for (key, gained) in read {
            let signals = [gained.ce, gained.ece, gained.cwr, gained.pmtu_messages];
            if signals == [0; 4] {
                continue;
            }
            let label = self.series.label_place(key);
            let place = self.series.count_place(label);
            self.series.get_mut(place).add(&FlowCounters {
                signals,
                ..FlowCounters::default()
            });
        }
    }

    /// Counts passive RTT samples in the series of their flow (admitting it under the cap like
    /// a flow, else its interface's `other` row): `samples` holds each flow's key (the echoing,
    /// ingress direction) and what it gained since the last refresh (see
    /// [`crate::flows::rtt::RttReads`]). A series' smoothed value becomes the mean of what it
    /// gained now; its minimum the smallest sample ever counted in it. Call after
    /// [`FlowTable::refresh`].
    pub fn count_rtt(&mut self, samples: &[(FlowKey, crate::flows::rtt::RttGain)]) {
        let mut gained: HashMap<u32, (u64, u64)> = HashMap::new();
        for (key, gain) in samples {
            if gain.samples == 0 {
                continue;
            }
            let label = self.series.label_place(key);
            let place = self.series.count_place(label);
            let series = self.series.get_mut(place);
            series.add(&FlowCounters {
                rtt_samples: gain.samples,
                rtt_sum_ns: gain.sum_ns,
                ..FlowCounters::default()
            });
            let extra = series.extra.get_or_insert_with(Box::default);
            extra.rtt_min_ns = min_nonzero(extra.rtt_min_ns, gain.min_ns);
            let entry = gained.entry(place).or_default();
            entry.0 += gain.samples;
            entry.1 += gain.sum_ns;
        }
        for (place, (count, sum_ns)) in &gained {
            let series = self.series.get_mut(*place);
            series.extra.get_or_insert_with(Box::default).rtt_mean_ns = (sum_ns / count).max(1);
        }
        if !gained.is_empty() {
            self.generation += 1;
        }
    }

    /// Number of series exported (the `other` rows included).
    pub fn series_count(&self) -> usize {
        self.series.len() - self.series.shadows
    }

    /// Label sets with a series of their own, against the budget (`max_series`).
    pub fn admitted(&self) -> usize {
        self.series.admitted
    }

    /// Label sets with live flows beyond the budget, their flows counted in `other` rows.
    pub fn in_other(&self) -> usize {
        self.series.shadows
    }

    /// The exported series in no particular order, for a scrape.
    pub fn series_iter(&self) -> impl Iterator<Item = (&SeriesKey, &Series)> {
        self.series
            .iter_places()
            .filter(|(_, _, series)| !series.shadow)
            .map(|(_, key, series)| (key, series))
    }

    /// The exported series, sorted by labels (for tests).
    #[cfg(test)]
    pub fn series(&self) -> Vec<(&SeriesKey, &Series)> {
        let mut all: Vec<_> = self
            .series
            .iter_places()
            .filter(|(_, _, series)| !series.shadow)
            .map(|(_, key, series)| (key, series))
            .collect();
        // Keys are unique: an unstable sort gives the same order, faster.
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all
    }

    pub fn stats(&self) -> FlowTableStats {
        self.stats
    }

    pub fn options(&self) -> &FlowOptions {
        &self.options
    }

    /// Folds series without live flows, idle for `idle_ns`, into their `other` row, and
    /// forgets the label sets beyond the budget that have no live flow left (they hold no
    /// counts).
    fn expire_series(&mut self, now_ns: u64, idle_ns: u64) {
        let expired: Vec<(u32, bool)> = self
            .series
            .iter_places()
            .filter(|(_, key, series)| {
                !key.other
                    && series.live_flows == 0
                    && (series.shadow || now_ns.saturating_sub(series.last_seen_ns) >= idle_ns)
            })
            .map(|(place, _, series)| (place, series.shadow))
            .collect();
        for (place, shadow) in expired {
            let (key, series) = self.series.remove(place);
            if shadow {
                continue;
            }
            self.stats.series_expired += 1;
            self.generation += 1;
            self.series.fold_into_other(&key, &series);
        }
    }

    /// Ranks the label sets by weight when some are beyond the budget, and applies the result:
    /// the series leaving the top K are folded into their `other` row (their flows count there
    /// from now on), the label sets entering it get a series starting at zero.
    fn rank(&mut self) {
        if self.series.shadows == 0 {
            return;
        }
        let candidates: Vec<Candidate> = self
            .series
            .iter_places()
            .filter(|(_, key, _)| !key.other)
            .map(|(place, _, series)| Candidate {
                id: place,
                weight: f64::from(series.weight),
                admitted: !series.shadow,
            })
            .collect();
        let changes = admission::select(&candidates, self.options.max_series);
        for &place in &changes.fold {
            self.stats.series_ranked_out += 1;
            self.generation += 1;
            self.series.demote(place);
        }
        for &place in &changes.admit {
            self.series.promote(place);
        }
    }
}

impl SeriesSet {
    fn new(options: &FlowOptions) -> Self {
        SeriesSet {
            labels: options.labels,
            max_series: options.max_series,
            index: hashbrown::HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            places: Vec::new(),
            free: Vec::new(),
            admitted: 0,
            shadows: 0,
        }
    }

    /// The label set of flow `key` (an admitted series or not).
    fn labels_of(&self, key: &FlowKey) -> SeriesKey {
        let labels = self.labels;
        SeriesKey {
            other: false,
            ifindex: labels.interface.then_some(key.ifindex),
            direction: labels.direction.then_some(key.direction),
            src: labels.src.then(|| address(key.family, &key.src)),
            dst: labels.dst.then(|| address(key.family, &key.dst)),
            src_port: labels.src_port.then_some(key.src_port),
            dst_port: labels.dst_port.then_some(key.dst_port),
        }
    }

    /// The place of flow `key`'s label set: its series (admitting it while under the budget),
    /// or a shadow naming its interface's `other` row.
    fn label_place(&mut self, key: &FlowKey) -> u32 {
        let full = self.labels_of(key);
        if let Some(place) = self.find(&full) {
            return place;
        }
        if self.admitted < self.max_series {
            return self.insert(full, Series::default());
        }
        let other_place = self.place_of_key(other_row(full.ifindex));
        self.insert(
            full,
            Series {
                shadow: true,
                other_place,
                ..Series::default()
            },
        )
    }

    /// Where the flows of the label set at `label` count: its series, or its `other` row.
    fn count_place(&self, label: u32) -> u32 {
        match &self.places[label as usize] {
            Some((_, series)) if series.shadow => series.other_place,
            _ => label,
        }
    }

    /// Adds what the series `key` counted to its interface's `other` row.
    fn fold_into_other(&mut self, key: &SeriesKey, series: &Series) {
        let other_place = self.place_of_key(other_row(key.ifindex));
        let other = self.get_mut(other_place);
        other.add(&series.total());
        other.first_seen_ns = min_nonzero(other.first_seen_ns, series.first_seen_ns);
        other.last_seen_ns = other.last_seen_ns.max(series.last_seen_ns);
        if series.rtt_min_ns() != 0 {
            let extra = other.extra.get_or_insert_with(Box::default);
            extra.rtt_min_ns = min_nonzero(extra.rtt_min_ns, series.rtt_min_ns());
        }
    }

    /// Folds the admitted series at `place` into its `other` row and makes it a shadow.
    fn demote(&mut self, place: u32) {
        let Some((key, series)) = self.places[place as usize].clone() else {
            return;
        };
        if series.shadow || key.other {
            return;
        }
        self.fold_into_other(&key, &series);
        let other_place = self.place_of_key(other_row(key.ifindex));
        let series = self.get_mut(place);
        series.shadow = true;
        series.other_place = other_place;
        series.set_total(&FlowCounters::default());
        self.admitted -= 1;
        self.shadows += 1;
    }

    /// Gives the shadow at `place` a series of its own, starting at zero.
    fn promote(&mut self, place: u32) {
        let series = self.get_mut(place);
        if !series.shadow {
            return;
        }
        series.shadow = false;
        series.set_total(&FlowCounters::default());
        self.shadows -= 1;
        self.admitted += 1;
    }

    /// The place of the series `key`, added (empty) if absent, beyond the cap or not.
    fn place_of_key(&mut self, key: SeriesKey) -> u32 {
        match self.find(&key) {
            Some(place) => place,
            None => self.insert(key, Series::default()),
        }
    }

    /// The place of the series `key`, if there is one.
    fn find(&self, key: &SeriesKey) -> Option<u32> {
        let places = &self.places;
        self.index
            .find(self.hasher.hash_one(key), |&place| {
                places[place as usize]
                    .as_ref()
                    .is_some_and(|(held, _)| held == key)
            })
            .copied()
    }

    /// Number of series.
    fn len(&self) -> usize {
        self.index.len()
    }

    /// Adds a series (absent so far); returns its place.
    fn insert(&mut self, key: SeriesKey, series: Series) -> u32 {
        if series.shadow {
            self.shadows += 1;
        } else if !key.other {
            self.admitted += 1;
        }
        let place = match self.free.pop() {
            Some(place) => place,
            None => {
                // Grown by an eighth at a time, not doubled: at 100k series a doubled vector
                // held 31k empty places of 184 bytes (5.8 MB); the regrowth of a vector this
                // large moves its pages (mremap) rather than copying them.
                if self.places.len() == self.places.capacity() {
                    self.places
                        .reserve_exact((self.places.len() / 8).max(PLACES_STEP));
                }
                self.places.push(None);
                (self.places.len() - 1) as u32
            }
        };
        let hash = self.hasher.hash_one(&key);
        self.places[place as usize] = Some((key, series));
        let (places, hasher) = (&self.places, &self.hasher);
        self.index.insert_unique(hash, place, |&other| {
            let (key, _) = places[other as usize]
                .as_ref()
                .expect("an indexed place holds a series");
            hasher.hash_one(key)
        });
        place
    }

    /// Removes the series at `place` (which holds one).
    fn remove(&mut self, place: u32) -> (SeriesKey, Series) {
        let (key, series) = self.places[place as usize]
            .take()
            .expect("a place being removed holds a series");
        if let Ok(entry) = self
            .index
            .find_entry(self.hasher.hash_one(&key), |&other| other == place)
        {
            entry.remove();
        }
        if series.shadow {
            self.shadows -= 1;
        } else if !key.other {
            self.admitted -= 1;
        }
        self.free.push(place);
        (key, series)
    }

    /// The series at `place` (which holds one).
    fn get_mut(&mut self, place: u32) -> &mut Series {
        &mut self.places[place as usize]
            .as_mut()
            .expect("a flow's series place holds its series")
            .1
    }

    fn iter_places(&self) -> impl Iterator<Item = (u32, &SeriesKey, &Series)> {
        self.places.iter().enumerate().filter_map(|(place, entry)| {
            entry
                .as_ref()
                .map(|(key, series)| (place as u32, key, series))
        })
    }

    fn iter_places_mut(&mut self) -> impl Iterator<Item = (u32, &SeriesKey, &mut Series)> {
        self.places
            .iter_mut()
            .enumerate()
            .filter_map(|(place, entry)| {
                entry
                    .as_mut()
                    .map(|(key, series)| (place as u32, &*key, series))
            })
    }
}

impl Series {
    fn note_times(&mut self, stats: &FlowStats) {
        let (counts, tracking) = (&stats.counts, &stats.tracking);
        self.first_seen_ns = min_nonzero(self.first_seen_ns, counts.first_seen_ns);
        self.last_seen_ns = self.last_seen_ns.max(counts.last_seen_ns);
        if tracking.window_scale_plus_one != 0 && counts.last_seen_ns >= self.window_scale_seen_ns {
            self.window_scale = Some(tracking.window_scale_plus_one - 1);
            self.window_scale_seen_ns = counts.last_seen_ns;
        }
    }
}

fn other_row(ifindex: Option<u32>) -> SeriesKey {
    SeriesKey {
        other: true,
        ifindex,
        direction: None,
        src: None,
        dst: None,
        src_port: None,
        dst_port: None,
    }
}

fn min_nonzero(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, b) => b,
        (a, 0) => a,
        (a, b) => a.min(b),
    }
}

/// The IP address in a flow key's address bytes.
pub(crate) fn address(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

impl RankBy {
    /// The measure in `gained` (the ranking itself, in [`crate::flows::admission`], sees only
    /// the numbers).
    pub(crate) fn of(self, gained: &FlowCounters) -> u64 {
        match self {
            RankBy::Bytes => gained.bytes,
            RankBy::Packets => gained.packets,
            RankBy::Retransmits => gained.retransmits,
        }
    }
}

#[cfg(test)]
mod tests {
    use network_probe_common::{Direction, FAMILY_IPV6, FlowCounts};

    use super::*;

    #[test]
    fn the_measure_is_the_one_chosen() {
        let gained = FlowCounters {
            packets: 3,
            bytes: 4500,
            retransmits: 1,
            ..FlowCounters::default()
        };
        assert_eq!(RankBy::Bytes.of(&gained), 4500);
        assert_eq!(RankBy::Packets.of(&gained), 3);
        assert_eq!(RankBy::Retransmits.of(&gained), 1);
    }

    const SECOND: u64 = 1_000_000_000;

    fn options(max_series: usize) -> FlowOptions {
        FlowOptions {
            labels: FlowLabels::DEFAULT.parse().unwrap(),
            max_series,
            idle_timeout: Duration::from_secs(60),
            families: FlowFamilies::DEFAULT.parse().unwrap(),
            rank_by: RankBy::Bytes,
            rank_window: Duration::from_secs(60),
        }
    }

    fn key(src: u8, dst: u8, src_port: u16) -> FlowKey {
        FlowKey {
            src: [10, 0, 0, src, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 0, 0, dst, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port,
            dst_port: 80,
            ifindex: 2,
            family: FAMILY_IPV4,
            direction: Direction::Egress as u8,
            _pad: [0; 2],
        }
    }

    fn stats(packets: u64, last_seen_s: u64) -> FlowStats {
        FlowStats {
            counts: FlowCounts {
                packets,
                bytes: packets * 100,
                retransmits: packets / 10,
                first_seen_ns: SECOND,
                last_seen_ns: last_seen_s * SECOND,
                ..FlowCounts::default()
            },
            ..FlowStats::default()
        }
    }

    fn packets_of(table: &FlowTable, other: bool, src: Option<&str>) -> Option<u64> {
        table
            .series()
            .into_iter()
            .find(|(key, _)| key.other == other && key.src.map(|a| a.to_string()).as_deref() == src)
            .map(|(_, series)| series.total().packets)
    }

    #[test]
    fn connection_attempts_count_in_their_flows_series_or_the_other_row_and_are_saved() {
        use crate::flows::outcomes::Outcome;
        let attempts_of = |table: &FlowTable, other: bool, src: Option<&str>| {
            table
                .series()
                .into_iter()
                .find(|(key, _)| {
                    key.other == other && key.src.map(|a| a.to_string()).as_deref() == src
                })
                .map(|(_, series)| series.total().attempts)
        };
        // One series admitted (cap 1): the second flow's attempts go to the other row.
        let mut table = FlowTable::new(options(1));
        table.refresh(
            10 * SECOND,
            vec![
                (key(1, 9, 1000), stats(1, 10)),
                (key(2, 9, 1000), stats(1, 10)),
            ],
        );
        table.count_attempts(&[
            (key(1, 9, 1000), Outcome::Answered, 10 * SECOND),
            (key(1, 9, 1000), Outcome::Timeout, 10 * SECOND),
            (key(2, 9, 1000), Outcome::Reset, 10 * SECOND),
        ]);
        assert_eq!(
            attempts_of(&table, false, Some("10.0.0.1")),
            Some([1, 0, 0, 1])
        );
        assert_eq!(attempts_of(&table, true, None), Some([0, 1, 0, 0]));
        // A later refresh of the flows keeps them; a state file carries them over.
        table.refresh(11 * SECOND, vec![(key(1, 9, 1000), stats(2, 11))]);
        assert_eq!(
            attempts_of(&table, false, Some("10.0.0.1")),
            Some([1, 0, 0, 1])
        );
        let mut next = FlowTable::new(options(1));
        next.restore(table.saved()).unwrap();
        assert_eq!(
            attempts_of(&next, false, Some("10.0.0.1")),
            Some([1, 0, 0, 1])
        );
        assert_eq!(attempts_of(&next, true, None), Some([0, 1, 0, 0]));
    }

    fn ce(count: u64) -> network_probe_common::FlowSignals {
        network_probe_common::FlowSignals {
            ce: count,
            ..Default::default()
        }
    }

    /// Every exported row's CE count.
    fn ce_rows(table: &FlowTable) -> Vec<(SeriesKey, u64)> {
        table
            .series()
            .into_iter()
            .map(|(key, series)| (key.clone(), series.total().signals[0]))
            .collect()
    }

    #[test]
    fn signals_count_in_their_flows_row_and_fold_with_it() {
        // A budget of one label set, three label sets with CE marks: one series of its own,
        // the rest in the other row, the rows summing to every mark.
        let mut table = FlowTable::new(options(1));
        table.refresh(
            2 * SECOND,
            vec![
                (key(1, 9, 1), stats(10, 2)),
                (key(2, 9, 1), stats(1, 2)),
                (key(3, 9, 1), stats(1, 2)),
            ],
        );
        table.count_signals(&[
            (key(1, 9, 1), ce(5)),
            (key(2, 9, 1), ce(7)),
            (key(3, 9, 1), ce(11)),
            (key(3, 9, 2), ce(0)),
        ]);
        let rows = ce_rows(&table);
        let own: Vec<_> = rows.iter().filter(|(key, _)| !key.other).collect();
        assert_eq!(own.len(), 1, "{rows:?}");
        assert_eq!(own[0].1, 5, "the admitted series has its own flow's marks");
        assert_eq!(
            ce_rows(&table)
                .iter()
                .find(|(key, _)| key.other)
                .map(|(_, ce)| *ce),
            Some(18),
            "the other row has the rest"
        );
        // A row's signals and packets stay together: the other row has the packets of the
        // same two flows.
        assert_eq!(packets_of(&table, true, None), Some(2));
        // 10.0.0.3 becomes much heavier and takes the place: 10.0.0.1's series, marks
        // included, is folded into the other row, which never goes down; 10.0.0.3's series
        // starts at zero and counts its new marks.
        table.refresh(
            3 * SECOND,
            vec![
                (key(1, 9, 1), stats(10, 3)),
                (key(2, 9, 1), stats(1, 3)),
                (key(3, 9, 1), stats(5000, 3)),
            ],
        );
        assert_eq!(table.stats().series_ranked_out, 1);
        table.count_signals(&[(key(3, 9, 1), ce(2)), (key(1, 9, 1), ce(1))]);
        let rows = ce_rows(&table);
        let of = |src: &str| {
            rows.iter()
                .find(|(key, _)| {
                    !key.other && key.src.map(|a| a.to_string()).as_deref() == Some(src)
                })
                .map(|(_, ce)| *ce)
        };
        assert_eq!(of("10.0.0.1"), None);
        assert_eq!(of("10.0.0.3"), Some(2));
        let other = rows.iter().find(|(key, _)| key.other).unwrap().1;
        assert_eq!(other, 5 + 7 + 11 + 1);
        assert_eq!(
            rows.iter().map(|(_, ce)| ce).sum::<u64>(),
            5 + 7 + 11 + 2 + 1
        );
        // Not in a state file: the kernel's signal maps are not pinned either.
        let mut next = FlowTable::new(options(1));
        next.restore(table.saved()).unwrap();
        assert!(ce_rows(&next).iter().all(|(_, ce)| *ce == 0));
    }

    #[test]
    fn signals_of_a_series_that_expires_stay_in_the_other_row() {
        let mut table = FlowTable::new(FlowOptions {
            idle_timeout: Duration::from_secs(5),
            ..options(10)
        });
        table.refresh(2 * SECOND, vec![(key(1, 9, 1), stats(1, 2))]);
        table.count_signals(&[(key(1, 9, 1), ce(4))]);
        // Idle: the flow leaves the map, its series is folded with its marks.
        table.refresh(9 * SECOND, vec![(key(1, 9, 1), stats(1, 2))]);
        assert_eq!(
            ce_rows(&table),
            vec![(other_row(Some(2)), 4)],
            "the other row keeps the marks"
        );
    }

    #[test]
    fn parses_label_sets() {
        let labels: FlowLabels = "interface, src,dst,dst_port".parse().unwrap();
        assert!(labels.interface && labels.src && labels.dst && labels.dst_port);
        assert!(!labels.src_port && !labels.direction);
        let err = "interface,port".parse::<FlowLabels>().unwrap_err();
        assert!(err.contains("\"port\""), "{err}");
    }

    #[test]
    fn label_sets_print_canonically() {
        let labels: FlowLabels = "dst_port, src ,interface".parse().unwrap();
        assert_eq!(labels.to_string(), "interface,src,dst_port");
        assert_eq!(
            FlowLabels::DEFAULT
                .parse::<FlowLabels>()
                .unwrap()
                .to_string(),
            FlowLabels::DEFAULT
        );
    }

    #[test]
    fn a_restored_table_continues_from_the_saved_totals() {
        let mut table = FlowTable::new(options(10));
        table.refresh(
            2 * SECOND,
            vec![
                (key(1, 2, 1000), stats(5, 2)),
                (key(3, 2, 1000), stats(4, 2)),
            ],
        );
        let generation = table.generation();
        // 1000 from 10.0.0.1 is evicted (retired: 5); the other one stays live (4).
        table.refresh(3 * SECOND, vec![(key(3, 2, 1000), stats(6, 3))]);
        assert!(table.generation() > generation);
        let saved = table.saved();

        // The next run: the live flow is still in the (pinned) map.
        let mut next = FlowTable::new(options(10));
        next.restore(saved.clone()).unwrap();
        next.refresh(4 * SECOND, vec![(key(3, 2, 1000), stats(7, 4))]);
        assert_eq!(packets_of(&next, false, Some("10.0.0.1")), Some(5));
        assert_eq!(packets_of(&next, false, Some("10.0.0.3")), Some(7));
        assert_eq!(next.stats().evicted, 1);
        let retired = |state: FlowTableState| -> Vec<(SeriesKey, FlowCounters)> {
            state
                .series
                .into_iter()
                .map(|(key, s)| (key, s.retired))
                .collect()
        };
        assert_eq!(retired(next.saved()), retired(saved.clone()));

        // A state naming a series twice restores it once.
        let mut twice = saved.clone();
        twice.series.push(twice.series[0].clone());
        let mut again = FlowTable::new(options(10));
        again.restore(twice).unwrap();
        assert_eq!(again.series_count(), saved.series.len());

        // Saved with other labels: refused, naming both.
        let mut other = FlowTable::new(FlowOptions {
            labels: "interface,dst".parse().unwrap(),
            ..options(10)
        });
        let err = other.restore(saved).unwrap_err();
        assert_eq!(
            err,
            "saved with --flows.labels=interface,src,dst, running with --flows.labels=interface,dst"
        );
        assert!(other.series().is_empty());
    }

    #[test]
    fn flows_with_the_same_labels_are_summed() {
        let mut table = FlowTable::new(options(10));
        let removed = table.refresh(
            2 * SECOND,
            vec![
                (key(1, 2, 1000), stats(5, 2)),
                (key(1, 2, 1001), stats(7, 2)),
            ],
        );
        assert!(removed.is_empty());
        assert_eq!(packets_of(&table, false, Some("10.0.0.1")), Some(12));
        assert_eq!(table.series().len(), 1);
    }

    #[test]
    fn counters_never_go_backwards_when_flows_leave() {
        let mut table = FlowTable::new(options(10));
        table.refresh(
            2 * SECOND,
            vec![
                (key(1, 2, 1000), stats(5, 2)),
                (key(1, 2, 1001), stats(7, 2)),
            ],
        );
        // Flow 1000 is evicted by the kernel; 1001 keeps going.
        table.refresh(3 * SECOND, vec![(key(1, 2, 1001), stats(9, 3))]);
        assert_eq!(packets_of(&table, false, Some("10.0.0.1")), Some(14));
        assert_eq!(table.stats().evicted, 1);
        // 1001 goes idle: removed from the map; with no live flow left and idle as long, its
        // series is folded into the interface's other row, keeping the total.
        let removed = table.refresh(70 * SECOND, vec![(key(1, 2, 1001), stats(9, 3))]);
        assert_eq!(removed, vec![key(1, 2, 1001)]);
        assert_eq!(table.stats().idle_removed, 1);
        assert_eq!(packets_of(&table, false, Some("10.0.0.1")), None);
        assert_eq!(packets_of(&table, true, None), Some(14));
        assert_eq!(table.stats().series_expired, 1);
    }

    #[test]
    fn the_cap_folds_new_series_into_other_and_admission_is_sticky() {
        let mut table = FlowTable::new(options(2));
        table.refresh(
            2 * SECOND,
            vec![
                (key(1, 9, 1), stats(1, 2)),
                (key(2, 9, 1), stats(2, 2)),
                (key(3, 9, 1), stats(4, 2)),
                (key(4, 9, 1), stats(8, 2)),
            ],
        );
        let individual: u64 = table
            .series()
            .iter()
            .filter(|(k, _)| !k.other)
            .map(|(_, s)| s.total().packets)
            .sum();
        let other = packets_of(&table, true, None).unwrap();
        assert_eq!(table.series().iter().filter(|(k, _)| !k.other).count(), 2);
        assert_eq!(individual + other, 15);
        // Next refresh: the same series stay admitted, nothing moves between rows.
        let before: Vec<_> = table
            .series()
            .iter()
            .map(|(k, s)| ((*k).clone(), s.total().packets))
            .collect();
        table.refresh(
            3 * SECOND,
            vec![
                (key(1, 9, 1), stats(1, 3)),
                (key(2, 9, 1), stats(2, 3)),
                (key(3, 9, 1), stats(4, 3)),
                (key(4, 9, 1), stats(8, 3)),
            ],
        );
        let after: Vec<_> = table
            .series()
            .iter()
            .map(|(k, s)| ((*k).clone(), s.total().packets))
            .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn a_new_flow_under_the_key_of_an_evicted_one_adds_its_whole_count() {
        let mut table = FlowTable::new(options(10));
        table.refresh(2 * SECOND, vec![(key(1, 2, 1000), stats(50, 2))]);
        // Between two reads the kernel evicted the flow and a new packet created another under
        // the same key: fewer packets, a later first packet.
        let mut again = stats(3, 3);
        again.counts.first_seen_ns = 3 * SECOND;
        table.refresh(3 * SECOND, vec![(key(1, 2, 1000), again)]);
        assert_eq!(packets_of(&table, false, Some("10.0.0.1")), Some(53));
        // The same flow read again adds only what it gained.
        let mut later = again;
        later.counts.packets = 10;
        table.refresh(4 * SECOND, vec![(key(1, 2, 1000), later)]);
        assert_eq!(packets_of(&table, false, Some("10.0.0.1")), Some(60));
    }

    #[test]
    fn a_label_set_in_other_gets_a_series_when_a_place_frees() {
        // Ranked by retransmits, of which these flows have none: only room decides.
        let mut table = FlowTable::new(FlowOptions {
            idle_timeout: Duration::from_secs(5),
            rank_by: RankBy::Retransmits,
            ..options(1)
        });
        // 10.0.0.1 takes the only place; 10.0.0.2 goes to other, and stays there (no weight
        // to challenge with).
        table.refresh(
            2 * SECOND,
            vec![(key(1, 9, 1), stats(1, 2)), (key(2, 9, 1), stats(4, 2))],
        );
        assert_eq!(packets_of(&table, true, None), Some(4));
        assert_eq!(packets_of(&table, false, Some("10.0.0.2")), None);
        assert_eq!((table.admitted(), table.in_other()), (1, 1));
        // 10.0.0.1 goes idle and its series expires (folded: other 4 + 2 + 1), freeing the
        // place; 10.0.0.2 takes it, its series starting at zero.
        table.refresh(
            8 * SECOND,
            vec![(key(1, 9, 1), stats(1, 2)), (key(2, 9, 1), stats(6, 8))],
        );
        assert_eq!(packets_of(&table, true, None), Some(7));
        assert_eq!(packets_of(&table, false, Some("10.0.0.2")), Some(0));
        assert_eq!((table.admitted(), table.in_other()), (1, 0));
        // Both flows of 10.0.0.2 now count in its series; nothing moved out of other.
        table.refresh(
            9 * SECOND,
            vec![(key(2, 9, 1), stats(7, 9)), (key(2, 9, 2), stats(2, 9))],
        );
        assert_eq!(packets_of(&table, true, None), Some(7));
        assert_eq!(packets_of(&table, false, Some("10.0.0.2")), Some(3));
        assert_eq!(table.stats().series_ranked_out, 0);
    }

    /// Every exported row and its packets.
    fn rows(table: &FlowTable) -> Vec<(SeriesKey, u64)> {
        table
            .series()
            .into_iter()
            .map(|(key, series)| (key.clone(), series.total().packets))
            .collect()
    }

    #[test]
    fn a_heavy_label_set_takes_the_place_of_a_light_one_and_totals_stay_exact() {
        let mut table = FlowTable::new(options(1));
        // 10.0.0.1 (1 packet) arrives first and takes the place; 10.0.0.2 (4 packets, 400
        // bytes) counts in other, then outweighs 10.0.0.1 more than twice: 10.0.0.1 is folded
        // into other (1 + 4), 10.0.0.2's series starts at zero.
        table.refresh(
            2 * SECOND,
            vec![(key(1, 9, 1), stats(1, 2)), (key(2, 9, 1), stats(4, 2))],
        );
        assert_eq!(packets_of(&table, false, Some("10.0.0.1")), None);
        assert_eq!(packets_of(&table, false, Some("10.0.0.2")), Some(0));
        assert_eq!(packets_of(&table, true, None), Some(5));
        assert_eq!(table.stats().series_ranked_out, 1);
        // From now on 10.0.0.2's gains are its own; 10.0.0.1's go to other.
        table.refresh(
            3 * SECOND,
            vec![(key(1, 9, 1), stats(2, 3)), (key(2, 9, 1), stats(10, 3))],
        );
        assert_eq!(packets_of(&table, false, Some("10.0.0.2")), Some(6));
        assert_eq!(packets_of(&table, true, None), Some(6));
        // 10.0.0.1 picks up, but not to twice 10.0.0.2's weight: no change (hysteresis).
        table.refresh(
            4 * SECOND,
            vec![(key(1, 9, 1), stats(14, 4)), (key(2, 9, 1), stats(16, 4))],
        );
        assert_eq!(packets_of(&table, false, Some("10.0.0.2")), Some(12));
        assert_eq!(packets_of(&table, true, None), Some(18));
        assert_eq!(table.stats().series_ranked_out, 1);
    }

    #[test]
    fn a_restart_after_a_promotion_counts_nothing_twice() {
        let mut table = FlowTable::new(options(1));
        // 10.0.0.2 starts in other (4 packets there) and is promoted; it gains 6 more in its
        // series. Total 1 + 10.
        table.refresh(
            2 * SECOND,
            vec![(key(1, 9, 1), stats(1, 2)), (key(2, 9, 1), stats(4, 2))],
        );
        table.refresh(
            3 * SECOND,
            vec![(key(1, 9, 1), stats(1, 3)), (key(2, 9, 1), stats(10, 3))],
        );
        let total =
            |table: &FlowTable| -> u64 { rows(table).iter().map(|(_, packets)| packets).sum() };
        assert_eq!(total(&table), 11);
        // The next run reads the same flows again, whole.
        let mut next = FlowTable::new(options(1));
        next.restore(table.saved()).unwrap();
        next.refresh(
            4 * SECOND,
            vec![(key(1, 9, 1), stats(1, 4)), (key(2, 9, 1), stats(10, 4))],
        );
        assert_eq!(total(&next), 11, "{:?}", rows(&next));
    }

    #[test]
    fn rows_sum_to_the_flows_and_never_go_backwards_under_churn() {
        // Three places, flows of 40 label sets coming and going with shifting weights: after
        // every read the rows sum exactly to what the flows counted, and no exported row is
        // lower than it was (a series that left is absent, not lower).
        let mut table = FlowTable::new(FlowOptions {
            idle_timeout: Duration::from_secs(3),
            rank_window: Duration::from_secs(2),
            ..options(3)
        });
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut live: HashMap<FlowKey, FlowStats> = HashMap::new();
        let mut departed = 0u64;
        let mut before: HashMap<SeriesKey, u64> = HashMap::new();
        let mut ranked_out = 0;
        for second in 2..200u64 {
            for _ in 0..5 {
                let src = random(40) as u8;
                let flow = key(src, 9, random(3) as u16);
                let entry = live.entry(flow).or_insert_with(|| {
                    let mut fresh = stats(0, second);
                    fresh.counts.first_seen_ns = second * SECOND;
                    fresh
                });
                // Some label sets are much heavier than the others, for a while.
                let weight = if (u64::from(src) + second / 50) % 13 == 0 {
                    50
                } else {
                    1
                };
                entry.counts.packets += 1 + random(weight);
                entry.counts.bytes = entry.counts.packets * 100;
                entry.counts.last_seen_ns = second * SECOND;
            }
            // Now and then the kernel evicts a flow (what was read of it stays counted).
            if random(4) == 0
                && let Some(&flow) = live.keys().next()
            {
                let gone = live.remove(&flow).unwrap();
                departed += table
                    .last_read
                    .get(&flow)
                    .filter(|last| last.first_seen_ns == gone.counts.first_seen_ns)
                    .map_or(0, |last| last.counts.widen().packets);
            }
            let flows: Vec<_> = live.iter().map(|(k, v)| (*k, *v)).collect();
            let idle = table.refresh(second * SECOND, flows);
            for flow in idle {
                departed += live.remove(&flow).unwrap().counts.packets;
            }
            let now = rows(&table);
            let total: u64 = now.iter().map(|(_, packets)| packets).sum();
            let in_maps: u64 = live.values().map(|s| s.counts.packets).sum();
            assert_eq!(total, in_maps + departed, "second {second}");
            // A series in two reads in a row was not folded in between: it only grows.
            for (key, packets) in &now {
                if let Some(&earlier) = before.get(key) {
                    assert!(*packets >= earlier, "{key:?} {earlier} -> {packets}");
                }
            }
            assert!(table.admitted() <= 3);
            ranked_out = table.stats().series_ranked_out;
            before = now.into_iter().collect();
        }
        assert!(ranked_out > 0, "the workload never changed the top K");
    }

    #[test]
    fn window_scale_comes_from_the_latest_flow() {
        let mut table = FlowTable::new(options(10));
        let mut old = stats(1, 2);
        old.tracking.window_scale_plus_one = 8;
        let mut new = stats(1, 3);
        new.tracking.window_scale_plus_one = 10;
        table.refresh(3 * SECOND, vec![(key(1, 2, 1), old), (key(1, 2, 2), new)]);
        let (_, series) = table.series()[0];
        assert_eq!(series.window_scale, Some(9));
    }

    #[test]
    fn ipv6_addresses_render() {
        let mut bytes = [0u8; 16];
        bytes[0] = 0xfd;
        bytes[15] = 1;
        assert_eq!(address(FAMILY_IPV6, &bytes).to_string(), "fd00::1");
        assert_eq!(
            address(
                FAMILY_IPV4,
                &[192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
            )
            .to_string(),
            "192.0.2.1"
        );
    }
}
