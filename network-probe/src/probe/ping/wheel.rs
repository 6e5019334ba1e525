//! The timer wheel of the ping scheduler (pure: no clock reads, no IO). Every active probe has
//! the same interval, so one revolution of the wheel is one interval: a probe lives in one slot
//! and is due each time the wheel's hand passes that slot. The hand advances one slot per tick
//! (`interval / slots`, 1 ms down to the interval's 1/4096th), so one timer serves every probe
//! and each tick hands the scheduler the whole slot as one batch (one `sendmmsg` per socket).
//!
//! It replaced one tokio task and timer per probe: at 10,000 probes per 100 ms those timers
//! and task wake-ups were a quarter of the daemon's CPU (perf: `tokio::...::Wheel::poll`,
//! task polls and clock reads, docs/ping.md).

use std::time::{Duration, Instant};

/// Most slots of a wheel: a long interval gets coarser ticks instead of more slots.
pub(crate) const MAX_SLOTS: usize = 4096;
/// The finest tick (tokio's timer resolution).
pub(crate) const MIN_TICK: Duration = Duration::from_millis(1);

/// A wheel of `slots` slots, one revolution per interval.
#[derive(Debug)]
pub(crate) struct Wheel<T> {
    slots: Vec<Vec<T>>,
    tick: Duration,
    start: Instant,
    /// The next tick to process (ticks counted from `start`).
    next: u64,
    len: usize,
}

impl<T> Wheel<T> {
    /// A wheel turning once per `interval`, its tick 0 at `start`.
    pub(crate) fn new(interval: Duration, start: Instant) -> Self {
        let slots =
            (interval.as_nanos().div_ceil(MIN_TICK.as_nanos()) as usize).clamp(1, MAX_SLOTS);
        Wheel {
            slots: (0..slots).map(|_| Vec::new()).collect(),
            tick: interval / slots as u32,
            start,
            next: 0,
            len: 0,
        }
    }

    /// The tick `now` falls in.
    pub(crate) fn tick_at(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.start).as_nanos();
        (since / self.tick.as_nanos().max(1)) as u64
    }

    /// When `tick` begins.
    pub(crate) fn instant_of(&self, tick: u64) -> Instant {
        self.start
            + self
                .tick
                .saturating_mul(u32::try_from(tick).unwrap_or(u32::MAX))
    }

    /// The first tick due at `now` and not processed yet, marked processed; `None` if none is
    /// due. A wheel more than one revolution behind skips to the last revolution: a slot is
    /// handed out at most once per call sequence catching up.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<u64> {
        let current = self.tick_at(now);
        if current < self.next {
            return None;
        }
        let tick = self
            .next
            .max((current + 1).saturating_sub(self.slots.len() as u64));
        self.next = tick + 1;
        Some(tick)
    }

    fn slot(&self, tick: u64) -> usize {
        (tick % self.slots.len() as u64) as usize
    }

    /// Moves the items of `tick`'s slot to `out` (the slot keeps its capacity).
    pub(crate) fn take(&mut self, tick: u64, out: &mut Vec<T>) {
        let slot = self.slot(tick);
        self.len -= self.slots[slot].len();
        out.append(&mut self.slots[slot]);
    }

    /// Puts `item` in `tick`'s slot: it is due next when the hand reaches that slot again
    /// (at `tick` itself if that tick is not processed yet, else one revolution later).
    pub(crate) fn insert(&mut self, tick: u64, item: T) {
        let slot = self.slot(tick);
        self.slots[slot].push(item);
        self.len += 1;
    }

    /// The first tick not processed yet (the one before it is the last processed).
    pub(crate) fn next_tick(&self) -> u64 {
        self.next
    }

    /// When the next non-empty slot is due; `None` if the wheel is empty.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        (self.next..self.next + self.slots.len() as u64)
            .find(|&tick| !self.slots[self.slot(tick)].is_empty())
            .map(|tick| self.instant_of(tick))
    }

    /// Slots of the wheel: ticks per interval.
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Items in the wheel.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn all_due(wheel: &mut Wheel<char>, now: Instant) -> Vec<u64> {
        std::iter::from_fn(|| wheel.pop_due(now)).collect()
    }

    #[test]
    fn one_revolution_per_interval() {
        let start = Instant::now();
        let mut wheel = Wheel::new(Duration::from_millis(100), start);
        assert_eq!(wheel.tick, MS);
        assert_eq!(all_due(&mut wheel, start), [0]);
        wheel.insert(0, 'a');
        wheel.insert(1, 'b');
        assert_eq!(wheel.next_due(), Some(start + MS));
        // 'a' was put in tick 0 after tick 0 was processed: next due one interval later.
        assert_eq!(all_due(&mut wheel, start + MS * 5 / 2), [1, 2]);
        let mut out = Vec::new();
        wheel.take(1, &mut out);
        assert_eq!(out, ['b']);
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.next_due(), Some(start + MS * 100));
        wheel.take(2, &mut out);
        assert_eq!(out, ['b']);
        out.clear();
        for tick in all_due(&mut wheel, start + MS * 99) {
            wheel.take(tick, &mut out);
        }
        assert!(out.is_empty());
        assert_eq!(wheel.pop_due(start + MS * 99), None);
        assert_eq!(all_due(&mut wheel, start + MS * 100), [100]);
        wheel.take(100, &mut out);
        assert_eq!(out, ['a']);
    }

    #[test]
    fn a_late_wake_hands_each_slot_out_once() {
        let start = Instant::now();
        let mut wheel = Wheel::new(Duration::from_millis(10), start);
        // Three revolutions late: the last revolution's ten slots, each once.
        assert_eq!(
            all_due(&mut wheel, start + MS * 35),
            (26..36).collect::<Vec<_>>()
        );
        assert_eq!(wheel.next_tick(), 36);
    }

    #[test]
    fn long_intervals_get_coarser_ticks() {
        let start = Instant::now();
        let wheel = Wheel::<u8>::new(Duration::from_secs(3600), start);
        assert_eq!(wheel.slots.len(), MAX_SLOTS);
        assert_eq!(wheel.tick * MAX_SLOTS as u32, Duration::from_secs(3600));
        assert_eq!(wheel.next_due(), None);
        let short = Wheel::<u8>::new(Duration::from_millis(10), start);
        assert_eq!((short.slots.len(), short.tick), (10, MS));
    }
}
