//! Background probing: every active probe (target address, and port for TCP) sends one packet
//! every interval, from one timer wheel ([`super::wheel`]) that a single task turns: each tick
//! hands the probes due in it to their senders as one batch (one `sendmmsg` per socket),
//! through a shared packets-per-second limiter; a probe stops once it has not been requested
//! for the expiry period. The number of active probes is capped
//! (`--ping.max-active-targets`): a request that would start probes past the cap starts none
//! and is refused, while the probes already active go on and may always be requested again.
//! Also owns the table of probes in flight, which both socket drivers use to match replies and
//! to turn silence into loss after the timeout.
//!
//! Sending is paced by the receive side: a driver takes no more probes than it has
//! [`Sender::room`] for (its socket's receive buffer filled to half by what waits to be read,
//! [`room_in_receive_buffer`]). A daemon short of CPU then sends less instead of sending what
//! it cannot read: every reply the target sends is still queued, read, stamped and matched. What could not be sent in time is counted
//! ([`Scheduler::missed`], `network_probe_ping_sends_missed`): a probe sent a whole interval
//! or more after it was due counts each interval it missed.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    io,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    stats::{Outcome, TargetStats},
    timestamps::{self, ControlMessages},
    wheel::Wheel,
};

pub(crate) use crate::support::sync::lock;

/// What is probed: an address, with ICMP echo (`tcp_port` None) or TCP SYN to a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ProbeKey {
    pub address: IpAddr,
    pub tcp_port: Option<u16>,
}

/// One target being probed in the background.
#[derive(Debug)]
pub(crate) struct ActiveProbe {
    pub key: ProbeKey,
    pub stats: Mutex<TargetStats>,
    last_requested: Mutex<Instant>,
}

/// Sends probe packets; implemented by the ICMP and TCP SYN drivers.
pub(crate) trait Sender: std::fmt::Debug + Send + Sync + 'static {
    /// Sends one probe to `probe.key` and registers it as in flight.
    fn send(&self, probe: &Arc<ActiveProbe>) -> io::Result<()>;

    /// Sends one probe to each of `due`, in order, and registers each as in flight; a probe
    /// whose packet could not leave is handed to `failed` with the error. Returns how many of
    /// `due` it dealt with (sent or failed): it may stop early when the socket's send buffer
    /// is full (`EAGAIN`), and the scheduler holds the rest back to the next tick.
    /// One by one unless the driver batches.
    fn send_batch(
        &self,
        due: &[Due],
        failed: &mut dyn FnMut(&Arc<ActiveProbe>, io::Error),
    ) -> usize {
        for entry in due {
            if let Err(err) = self.send(&entry.probe) {
                failed(&entry.probe, err);
            }
        }
        due.len()
    }

    /// Stops serving its socket (replaced: [`super::rebind`]); the socket closes once nothing
    /// refers to the driver any more.
    fn retire(&self) {}

    /// How many more probes it may send now (the receive side's pacing, see
    /// [`room_in_receive_buffer`]); the scheduler holds back the rest of a tick's probes to the
    /// next tick. Unbounded unless the driver says otherwise.
    fn room(&self) -> usize {
        usize::MAX
    }
}

/// Bytes of receive buffer one probe in flight may need: its reply and its transmit stamp
/// (error queue) are both charged to the socket's receive buffer until read. Measured on 6.18:
/// 1,664 bytes (truesize of an ICMP echo reply plus a `SOF_TIMESTAMPING_OPT_TSONLY` stamp, 200
/// requests to a local address unread, `SO_MEMINFO`); rounded up.
pub(crate) const RECEIVE_BYTES_PER_PROBE: usize = 2048;

/// How many more probes a socket may send while `queued` bytes of its `buffer`-byte receive
/// buffer wait to be read (`SO_MEMINFO`): as many as fill it to half. The other half is for
/// the replies and stamps of probes already sent that have not come yet; so while the daemon
/// reads slower than it sends, it stops sending before the kernel would drop a reply for want
/// of room. Probes that will never be answered (a target down) take no room: a bound on
/// probes in flight would count them, for the whole timeout, and stop probing the live ones.
pub(crate) fn room_in_receive_buffer(queued: usize, buffer: usize) -> usize {
    (buffer / 2).saturating_sub(queued) / RECEIVE_BYTES_PER_PROBE
}

/// An active probe in the wheel, with the sender of its packets.
#[derive(Debug, Clone)]
pub(crate) struct Due {
    pub probe: Arc<ActiveProbe>,
    pub sender: Arc<dyn Sender>,
    /// The wheel's tick its next packet is due at (a probe held back keeps it).
    pub due: u64,
}

impl Due {
    fn same_sender(&self, other: &Due) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.sender), Arc::as_ptr(&other.sender))
    }
}

/// Packets sent, received and socket errors of one protocol, for the meta metrics.
#[derive(Debug, Default)]
pub(crate) struct ProtocolCounters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub errors: AtomicU64,
}

impl ProtocolCounters {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Settings of the scheduler.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub interval: Duration,
    pub expiry: Duration,
    pub window: usize,
    pub max_packets_per_second: u32,
    /// Most probes active at once.
    pub max_active: usize,
}

/// A request refused because its new probes would take the active ones past the cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OverCapacity {
    /// Probes the request would have started.
    pub new: usize,
    /// Probes active when it came.
    pub active: usize,
    /// The cap.
    pub limit: usize,
}

/// The active probes and the shared rate limit.
#[derive(Debug)]
pub(crate) struct Scheduler {
    schedule: Schedule,
    probes: Mutex<HashMap<ProbeKey, Arc<ActiveProbe>>>,
    limiter: RateLimiter,
    /// Probes refused by the cap, for the meta metrics.
    refused: AtomicU64,
    /// Intervals in which a probe sent nothing because it was held back (rate limit, pacing by
    /// the receive side, a daemon short of CPU), for the meta metrics.
    missed: AtomicU64,
    /// Probes started by requests, waiting for their first packet from the wheel's task.
    started: Mutex<Vec<Due>>,
    /// Wakes the wheel's task for `started`.
    wake: tokio::sync::Notify,
    /// The wheel's task is running (started by the first request).
    turning: std::sync::atomic::AtomicBool,
}

impl Scheduler {
    pub(crate) fn new(schedule: Schedule) -> Arc<Self> {
        Arc::new(Scheduler {
            schedule,
            probes: Mutex::new(HashMap::new()),
            limiter: RateLimiter::new(schedule.max_packets_per_second),
            refused: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            started: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            turning: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Marks every probe of `wanted` as requested now and starts those not yet active, each
    /// through its sender, in the request's order; all or none: if starting the new ones would
    /// take the active probes past the cap, none is started, the new ones are counted as
    /// refused and the answer says by how much. The active ones of the request are marked
    /// requested either way (a refusal never shortens anybody's probing). Must run inside the
    /// tokio runtime.
    pub(crate) fn request(
        self: &Arc<Self>,
        wanted: Vec<(ProbeKey, Arc<dyn Sender>)>,
    ) -> Result<Vec<Arc<ActiveProbe>>, OverCapacity> {
        let now = Instant::now();
        let mut probes = lock(&self.probes);
        let mut new = std::collections::HashSet::new();
        for (key, _) in &wanted {
            match probes.get(key) {
                Some(probe) => *lock(&probe.last_requested) = now,
                None => {
                    new.insert(*key);
                }
            }
        }
        let active = probes.len();
        if active + new.len() > self.schedule.max_active {
            self.refused.fetch_add(new.len() as u64, Ordering::Relaxed);
            return Err(OverCapacity {
                new: new.len(),
                active,
                limit: self.schedule.max_active,
            });
        }
        let mut requested = Vec::with_capacity(wanted.len());
        let mut started = Vec::new();
        for (key, sender) in wanted {
            if let Some(probe) = probes.get(&key) {
                requested.push(Arc::clone(probe));
                continue;
            }
            let probe = Arc::new(ActiveProbe {
                key,
                stats: Mutex::new(TargetStats::new(self.schedule.window)),
                last_requested: Mutex::new(now),
            });
            probes.insert(key, Arc::clone(&probe));
            started.push(Due {
                probe: Arc::clone(&probe),
                sender,
                // Set by the wheel's task when it takes the probe.
                due: 0,
            });
            requested.push(probe);
        }
        drop(probes);
        if !started.is_empty() {
            lock(&self.started).append(&mut started);
            if !self.turning.swap(true, Ordering::AcqRel) {
                tokio::spawn(Arc::clone(self).turn());
            }
            self.wake.notify_one();
        }
        Ok(requested)
    }

    /// Probes refused by the cap so far.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Probe packets not sent in time so far: each whole interval a probe was sent late by.
    pub(crate) fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    /// Number of active probes, ICMP and TCP.
    pub(crate) fn active(&self) -> (usize, usize) {
        let probes = lock(&self.probes);
        let tcp = probes.keys().filter(|key| key.tcp_port.is_some()).count();
        (probes.len() - tcp, tcp)
    }

    /// The wheel's task: sends the probes of every tick as they come due, a new probe's first
    /// packet at once, and sleeps until the next non-empty slot (or a new probe) otherwise.
    /// Probes held back (rate limit, room in flight, a full send buffer) wait in a backlog that
    /// goes first at the next turn, oldest first: under a binding limit every probe gets its
    /// turn (they used to join the next tick's slot behind the probes due there, which went
    /// first, so some targets waited indefinitely).
    async fn turn(self: Arc<Self>) {
        let mut wheel: Wheel<Due> = Wheel::new(self.schedule.interval, Instant::now());
        // Reused from tick to tick: no allocation per packet once they have grown.
        let mut due = Vec::new();
        let mut deferred = Vec::new();
        let mut backlog = Vec::new();
        let mut sent_late = Vec::new();
        let mut runs = Vec::new();
        let slots = wheel.slots() as u64;
        loop {
            let now = Instant::now();
            let current = wheel.tick_at(now);
            // The backlog first, oldest first; then the new probes' first packets.
            due.append(&mut backlog);
            let taken = due.len();
            due.append(&mut lock(&self.started));
            for entry in &mut due[taken..] {
                entry.due = current;
            }
            if !due.is_empty() {
                self.send_due(&mut due, &mut deferred, &mut runs, now, current, slots);
                sent_late.append(&mut due);
            }
            // At most about one batch per turn, then the other tasks (the receive loops above
            // all) run: a wheel that is behind must not send for long without reading replies.
            let mut budget = super::mmsg::BATCH;
            while budget > 0
                && let Some(tick) = wheel.pop_due(now)
            {
                wheel.take(tick, &mut due);
                budget = budget.saturating_sub(due.len());
                self.send_due(&mut due, &mut deferred, &mut runs, now, current, slots);
                for mut entry in due.drain(..) {
                    entry.due = tick + slots;
                    wheel.insert(tick, entry);
                }
            }
            // Those sent from the backlog, and the new ones: due again at the first tick of their
            // own phase after this one (a probe held back keeps its slot, and every interval
            // from one due tick to the next is either sent or counted missed); in the last tick
            // processed if the wheel is so far behind that their slot would come round sooner.
            let home = wheel.next_tick().saturating_sub(1);
            for mut entry in sent_late.drain(..) {
                entry.due = next_due(entry.due, current, slots);
                let at = if entry.due >= wheel.next_tick() + slots {
                    home
                } else {
                    entry.due
                };
                wheel.insert(at, entry);
            }
            std::mem::swap(&mut backlog, &mut deferred);
            let next = if backlog.is_empty() {
                wheel.next_due()
            } else {
                // Held back: try again at the next tick (tokens, room).
                let retry = wheel.instant_of(current + 1);
                Some(wheel.next_due().map_or(retry, |at| at.min(retry)))
            };
            match next {
                // Behind: yield, not sleep (a past deadline would be ready at once).
                Some(at) if at <= Instant::now() => tokio::task::yield_now().await,
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// Sends one packet for each probe of `due` the rate limit and its sender's room for
    /// probes in flight let through, in batches of consecutive probes sharing a sender; moves
    /// the ones held back to `deferred` and drops the expired ones. `due` keeps the probes that
    /// were sent (or failed to be); each of them due a whole interval or more before `current`
    /// (ticks of `slots` per interval) counts the intervals it missed. `runs` is scratch space.
    fn send_due(
        &self,
        due: &mut Vec<Due>,
        deferred: &mut Vec<Due>,
        runs: &mut Vec<(usize, usize, usize)>,
        now: Instant,
        current: u64,
        slots: u64,
    ) {
        due.retain(|entry| {
            let expired = self.expire_if_idle(&entry.probe, now);
            if expired {
                log::debug!(
                    "ping: {:?} not requested for {:?}; stopped",
                    entry.probe.key,
                    self.schedule.expiry
                );
            }
            !expired
        });
        let mut failed = |probe: &Arc<ActiveProbe>, err: io::Error| {
            log::debug!("ping: sending to {:?}: {err}", probe.key);
            // The packet could not leave (no route, ...): the target is unreachable.
            let mut stats = lock(&probe.stats);
            stats.record_sent();
            stats.record(Outcome::Lost);
        };
        // (start, end, how many of it were sent or failed) of each run of one sender
        runs.clear();
        let mut start = 0;
        while let Some(first) = due.get(start) {
            let end = start
                + due[start..]
                    .iter()
                    .position(|entry| !entry.same_sender(first))
                    .unwrap_or(due.len() - start);
            let wanted = (end - start).min(first.sender.room());
            let granted = self.limiter.take(now, wanted);
            let dealt = first
                .sender
                .send_batch(&due[start..start + granted], &mut failed);
            runs.push((start, end, dealt.min(granted)));
            start = end;
        }
        let (mut index, mut run, mut missed) = (0, 0, 0);
        due.retain(|entry| {
            while runs[run].1 <= index {
                run += 1;
            }
            let (start, _, granted) = runs[run];
            let keep = index - start < granted;
            index += 1;
            if keep {
                missed += missed_intervals(entry.due, current, slots);
            } else {
                deferred.push(entry.clone());
            }
            keep
        });
        if missed > 0 {
            self.missed.fetch_add(missed, Ordering::Relaxed);
        }
    }

    /// Removes `probe` from the table if its expiry has passed at `now`; true if it did.
    fn expire_if_idle(&self, probe: &Arc<ActiveProbe>, now: Instant) -> bool {
        let idle = |probe: &ActiveProbe| {
            now.saturating_duration_since(*lock(&probe.last_requested)) >= self.schedule.expiry
        };
        if !idle(probe) {
            return false;
        }
        // Again under the table's lock, which a request holds while it marks the probe.
        let mut probes = lock(&self.probes);
        if !idle(probe) {
            return false;
        }
        if probes
            .get(&probe.key)
            .is_some_and(|current| Arc::ptr_eq(current, probe))
        {
            probes.remove(&probe.key);
        }
        true
    }
}

/// Whole intervals (of `slots` ticks) a probe due at tick `due` and sent at tick `current`
/// missed: 0 while it goes out within an interval of when it was due.
pub(crate) fn missed_intervals(due: u64, current: u64, slots: u64) -> u64 {
    current.saturating_sub(due) / slots.max(1)
}

/// The tick a probe due at `due` and sent at tick `current` is due next: one interval (of
/// `slots` ticks) after the last due tick it was sent or counted missed for.
pub(crate) fn next_due(due: u64, current: u64, slots: u64) -> u64 {
    due + (missed_intervals(due, current, slots) + 1) * slots
}

/// A token bucket shared by every probe: at most `rate` packets per second, with a burst of
/// 20 ms worth of packets (the timer's resolution is 1 ms).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub(crate) fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        let burst = (rate / 50.0).max(1.0);
        RateLimiter {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token if one is available, else says how long until one is.
    #[cfg(test)]
    pub(crate) fn try_acquire(&self, now: Instant) -> Result<(), Duration> {
        let mut state = lock(&self.state);
        let (tokens, last) = *state;
        let tokens = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate)
            .min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }

    /// Takes up to `wanted` tokens at `now`; returns how many it took.
    pub(crate) fn take(&self, now: Instant, wanted: usize) -> usize {
        let mut state = lock(&self.state);
        let (tokens, last) = *state;
        let tokens = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate)
            .min(self.burst);
        let granted = (tokens.max(0.0).floor() as usize).min(wanted);
        *state = (tokens - granted as f64, now);
        granted
    }
}

/// The in-flight maps: a lookup or two per packet sent, stamped and received, hashed with
/// foldhash (seeded per process) instead of SipHash (perf at 20,000 echoes/s: the two maps'
/// inserts were 5 % of the daemon's CPU).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One probe in flight.
#[derive(Debug)]
struct InFlight {
    probe: Arc<ActiveProbe>,
    stamp_key: u32,
    sent: Instant,
    tx: Option<ControlMessages>,
}

/// What a socket driver gets back when a reply matches.
#[derive(Debug)]
pub(crate) struct Matched {
    pub probe: Arc<ActiveProbe>,
    pub outcome: Outcome,
    /// The round trip came from hardware stamps on both ends.
    pub hardware: bool,
}

/// Probes in flight on one socket, keyed by what the reply will carry (`K`) and by the stamp
/// key of their transmit stamp. Entries leave on a matching reply or at their deadline (then as
/// loss); a reply after that matches nothing.
#[derive(Debug)]
pub(crate) struct InFlightTable<K> {
    timeout: Duration,
    by_reply: FastMap<K, InFlight>,
    by_stamp: FastMap<u32, K>,
    /// Insertion order = deadline order (one timeout for all).
    deadlines: VecDeque<(Instant, K, u32)>,
}

impl<K: Copy + Eq + Hash> InFlightTable<K> {
    pub(crate) fn new(timeout: Duration) -> Self {
        InFlightTable {
            timeout,
            by_reply: FastMap::default(),
            by_stamp: FastMap::default(),
            deadlines: VecDeque::new(),
        }
    }

    /// Registers a probe sent at `sent`. An older probe with the same key (a wrapped sequence
    /// number) is lost.
    pub(crate) fn insert(
        &mut self,
        key: K,
        stamp_key: u32,
        probe: Arc<ActiveProbe>,
        sent: Instant,
    ) {
        if let Some(old) = self.by_reply.insert(
            key,
            InFlight {
                probe,
                stamp_key,
                sent,
                tx: None,
            },
        ) {
            self.by_stamp.remove(&old.stamp_key);
            lock(&old.probe.stats).record(Outcome::Lost);
        }
        self.by_stamp.insert(stamp_key, key);
        self.deadlines
            .push_back((sent + self.timeout, key, stamp_key));
    }

    /// Attaches a transmit stamp read from the error queue.
    pub(crate) fn transmit_stamp(&mut self, tx: ControlMessages) {
        let Some(stamp_key) = tx.error.and_then(|error| error.tx_stamp_key()) else {
            return;
        };
        if let Some(key) = self.by_stamp.get(&stamp_key)
            && let Some(in_flight) = self.by_reply.get_mut(key)
        {
            in_flight.tx = Some(tx);
        }
    }

    /// Whether a probe waits for `key` without its transmit stamp yet (then the error queue is
    /// worth reading before completing it).
    pub(crate) fn lacks_transmit_stamp(&self, key: &K) -> bool {
        self.by_reply
            .get(key)
            .is_some_and(|in_flight| in_flight.tx.is_none())
    }

    /// Completes the probe waiting for `key` with a reply received at `received` (user clock)
    /// carrying control messages `rx`. `None` if nothing waits for it (late, foreign, dup), or
    /// if its round trip exceeds the timeout (then the probe is lost).
    pub(crate) fn reply(
        &mut self,
        key: &K,
        rx: &ControlMessages,
        received: Instant,
        rst: bool,
    ) -> Option<Matched> {
        let in_flight = self.by_reply.remove(key)?;
        self.by_stamp.remove(&in_flight.stamp_key);
        let user_rtt = received
            .saturating_duration_since(in_flight.sent)
            .as_secs_f64();
        let kernel = in_flight
            .tx
            .as_ref()
            .and_then(|tx| timestamps::round_trip(tx, rx));
        let rtt = kernel.map_or(user_rtt, |(rtt, _)| rtt.as_secs_f64());
        if rtt > self.timeout.as_secs_f64() {
            // It arrived before the expiry sweep got to it: the timeout is a hard bound.
            lock(&in_flight.probe.stats).record(Outcome::Lost);
            return None;
        }
        let outcome = Outcome::Reply {
            rtt,
            user_rtt,
            user_clock: kernel.is_none(),
            rst,
        };
        Some(Matched {
            probe: in_flight.probe,
            outcome,
            hardware: kernel.is_some_and(|(_, hardware)| hardware),
        })
    }

    /// Moves every probe whose deadline passed to loss; returns how many.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let mut expired = 0;
        while let Some(&(deadline, key, stamp_key)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self
                .by_reply
                .get(&key)
                .is_some_and(|in_flight| in_flight.stamp_key == stamp_key)
            {
                let in_flight = self.by_reply.remove(&key).expect("just seen");
                self.by_stamp.remove(&stamp_key);
                lock(&in_flight.probe.stats).record(Outcome::Lost);
                expired += 1;
            }
        }
        expired
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_reply.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.by_reply.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ping::timestamps::ExtendedError;

    fn probe() -> Arc<ActiveProbe> {
        Arc::new(ActiveProbe {
            key: ProbeKey {
                address: "10.0.0.1".parse().unwrap(),
                tcp_port: Some(80),
            },
            stats: Mutex::new(TargetStats::new(10)),
            last_requested: Mutex::new(Instant::now()),
        })
    }

    fn stamped(software: Duration, key: Option<u32>) -> ControlMessages {
        ControlMessages {
            software: Some(software),
            hardware: None,
            error: key.map(|data| ExtendedError {
                errno: libc::ENOMSG as u32,
                origin: libc::SO_EE_ORIGIN_TIMESTAMPING,
                kind: 0,
                code: 0,
                info: 0,
                data,
            }),
        }
    }

    #[test]
    fn kernel_stamps_give_the_rtt() {
        let mut table = InFlightTable::new(Duration::from_secs(1));
        let start = Instant::now();
        table.insert(42u32, 0, probe(), start);
        table.transmit_stamp(stamped(Duration::from_micros(1_000), Some(0)));
        let matched = table
            .reply(
                &42,
                &stamped(Duration::from_micros(1_030), None),
                start + Duration::from_micros(90),
                false,
            )
            .unwrap();
        let Outcome::Reply {
            rtt,
            user_rtt,
            user_clock,
            rst,
        } = matched.outcome
        else {
            panic!()
        };
        assert!((rtt - 30e-6).abs() < 1e-12);
        assert!((user_rtt - 90e-6).abs() < 1e-12);
        assert!(!user_clock && !rst);
        assert!(table.is_empty());
    }

    #[test]
    fn missing_stamp_falls_back_to_the_user_clock() {
        let mut table = InFlightTable::new(Duration::from_secs(1));
        let start = Instant::now();
        table.insert(1u32, 7, probe(), start);
        let matched = table
            .reply(
                &1,
                &stamped(Duration::from_micros(5), None),
                start + Duration::from_micros(70),
                true,
            )
            .unwrap();
        let Outcome::Reply {
            rtt,
            user_clock,
            rst,
            ..
        } = matched.outcome
        else {
            panic!()
        };
        assert!((rtt - 70e-6).abs() < 1e-12);
        assert!(user_clock && rst);
    }

    // The seed's defect: a SYN-ACK retransmitted by the server after our timeout must not
    // turn into a latency sample.
    #[test]
    fn a_late_reply_is_loss_not_latency() {
        let mut table = InFlightTable::new(Duration::from_secs(1));
        let start = Instant::now();
        let target = probe();
        table.insert(1000u32, 0, Arc::clone(&target), start);
        assert_eq!(table.expire(start + Duration::from_millis(999)), 0);
        assert_eq!(table.expire(start + Duration::from_secs(1)), 1);
        let late = table.reply(
            &1000,
            &ControlMessages::default(),
            start + Duration::from_secs(2),
            false,
        );
        assert!(late.is_none());
        let stats = lock(&target.stats);
        assert_eq!(stats.received, 0);
        assert_eq!(stats.summary().loss_ratio, 1.0);
    }

    #[test]
    fn a_reply_beyond_the_timeout_is_loss_even_before_the_sweep() {
        let mut table = InFlightTable::new(Duration::from_secs(1));
        let start = Instant::now();
        let target = probe();
        table.insert(9u32, 3, Arc::clone(&target), start);
        table.transmit_stamp(stamped(Duration::from_secs(100), Some(3)));
        // Kernel stamps 1.000001 s apart: over the timeout, whatever the user clock says.
        let rx = stamped(Duration::from_micros(101_000_001), None);
        assert!(
            table
                .reply(&9, &rx, start + Duration::from_millis(5), false)
                .is_none()
        );
        assert!(table.is_empty());
        assert_eq!(table.expire(start + Duration::from_secs(5)), 0);
        let stats = lock(&target.stats);
        assert_eq!((stats.received, stats.window.len()), (0, 1));
    }

    #[test]
    fn a_reused_key_loses_the_older_probe() {
        let mut table = InFlightTable::new(Duration::from_secs(10));
        let start = Instant::now();
        let target = probe();
        table.insert(5u32, 0, Arc::clone(&target), start);
        table.insert(5u32, 1, Arc::clone(&target), start);
        assert_eq!(table.len(), 1);
        assert_eq!(lock(&target.stats).window.len(), 1);
        // The stale deadline entry of the first insert does not expire the second.
        assert_eq!(table.expire(start + Duration::from_secs(10)), 1);
    }

    /// A sender that only counts.
    #[derive(Debug, Default)]
    struct Counting(AtomicU64);

    impl Sender for Counting {
        fn send(&self, _probe: &Arc<ActiveProbe>) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn keys(range: std::ops::Range<u8>) -> Vec<ProbeKey> {
        range
            .map(|last| ProbeKey {
                address: IpAddr::from([10, 0, 0, last]),
                tcp_port: None,
            })
            .collect()
    }

    #[tokio::test]
    async fn the_cap_refuses_new_probes_all_or_nothing_and_never_the_active_ones() {
        let scheduler = Scheduler::new(Schedule {
            interval: Duration::from_secs(3600),
            expiry: Duration::from_secs(3600),
            window: 10,
            max_packets_per_second: 1000,
            max_active: 5,
        });
        let sender: Arc<dyn Sender> = Arc::new(Counting::default());
        let wanted = |keys: Vec<ProbeKey>| -> Vec<(ProbeKey, Arc<dyn Sender>)> {
            keys.into_iter()
                .map(|key| (key, Arc::clone(&sender)))
                .collect()
        };
        let first = scheduler.request(wanted(keys(0..3))).unwrap();
        assert_eq!(first.len(), 3);
        assert_eq!(scheduler.active(), (3, 0));
        // 2 active + 3 new = 8 > 5: none of the three starts.
        let refused = scheduler.request(wanted(keys(1..6))).unwrap_err();
        assert_eq!(
            refused,
            OverCapacity {
                new: 3,
                active: 3,
                limit: 5
            }
        );
        assert_eq!((scheduler.active(), scheduler.refused()), ((3, 0), 3));
        // Up to the cap exactly, duplicates counted once.
        let mut fill = keys(3..5);
        fill.extend(keys(3..5));
        assert_eq!(scheduler.request(wanted(fill)).unwrap().len(), 4);
        assert_eq!(scheduler.active(), (5, 0));
        // At the cap, active probes are still served (the same ones), a new one is not.
        let again = scheduler.request(wanted(keys(0..5))).unwrap();
        assert!(again.iter().zip(&first).all(|(a, b)| Arc::ptr_eq(a, b)));
        let refused = scheduler.request(wanted(keys(4..6))).unwrap_err();
        assert_eq!((refused.new, refused.active), (1, 5));
        assert_eq!(scheduler.refused(), 4);
    }

    /// A sender with room for `room` probes in flight, counting what it sends.
    #[derive(Debug)]
    struct Bounded {
        room: usize,
        sent: AtomicU64,
    }

    impl Sender for Bounded {
        fn send(&self, _probe: &Arc<ActiveProbe>) -> io::Result<()> {
            self.sent.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }

        fn room(&self) -> usize {
            self.room
                .saturating_sub(self.sent.load(Ordering::Relaxed) as usize)
        }
    }

    #[test]
    fn the_room_is_half_the_receive_buffer_less_what_waits() {
        // 16 MiB as the kernel counts it, empty: 4,096 probes of 2 KiB.
        assert_eq!(room_in_receive_buffer(0, 16 << 20), 4096);
        assert_eq!(room_in_receive_buffer(4 << 20, 16 << 20), 2048);
        // Half full or more: nothing until the daemon has read.
        assert_eq!(room_in_receive_buffer(8 << 20, 16 << 20), 0);
        assert_eq!(room_in_receive_buffer(20 << 20, 16 << 20), 0);
        // The default 208 KiB (doubled): 104.
        assert_eq!(room_in_receive_buffer(0, 425_984), 104);
    }

    #[test]
    fn missed_intervals_count_whole_intervals_late() {
        assert_eq!(missed_intervals(100, 100, 100), 0);
        assert_eq!(missed_intervals(100, 199, 100), 0);
        assert_eq!(missed_intervals(100, 200, 100), 1);
        assert_eq!(missed_intervals(100, 450, 100), 3);
        // Sent before it was due (a new probe's first packet): nothing missed.
        assert_eq!(missed_intervals(300, 200, 100), 0);
        // Due again in its own phase: every interval sent or missed, none dropped by rounding.
        assert_eq!(next_due(100, 100, 100), 200);
        assert_eq!(next_due(100, 399, 100), 400);
        assert_eq!(next_due(100, 400, 100), 500);
        assert_eq!(next_due(300, 200, 100), 400);
    }

    #[test]
    fn a_sender_gets_no_more_than_its_room_and_the_rest_is_held_back() {
        let scheduler = Scheduler::new(Schedule {
            interval: Duration::from_millis(100),
            expiry: Duration::from_secs(3600),
            window: 10,
            max_packets_per_second: 1_000_000,
            max_active: 100,
        });
        let full: Arc<dyn Sender> = Arc::new(Bounded {
            room: 3,
            sent: AtomicU64::new(0),
        });
        let free: Arc<dyn Sender> = Arc::new(Counting::default());
        let entry = |sender: &Arc<dyn Sender>, due: u64| Due {
            probe: probe(),
            sender: Arc::clone(sender),
            due,
        };
        // Current tick 1000, 100 ticks per interval: due at 800 missed two intervals, at 950
        // none.
        let mut due = vec![
            entry(&full, 800),
            entry(&full, 950),
            entry(&free, 950),
            entry(&full, 800),
            entry(&full, 800),
            entry(&full, 800),
        ];
        let (mut deferred, mut runs) = (Vec::new(), Vec::new());
        let now = Instant::now();
        scheduler.send_due(&mut due, &mut deferred, &mut runs, now, 1000, 100);
        let dues = |entries: &[Due]| entries.iter().map(|e| e.due).collect::<Vec<_>>();
        // Two from the first run of `full`, the one of `free`, one more of `full` (room 3).
        assert_eq!(dues(&due), [800, 950, 950, 800]);
        assert_eq!(dues(&deferred), [800, 800]);
        assert!(Arc::ptr_eq(&deferred[0].sender, &full));
        assert_eq!(scheduler.missed(), 2 + 2);
    }

    /// A sender whose socket takes `accepts` probes per batch, then would block.
    #[derive(Debug)]
    struct Blocking {
        accepts: usize,
    }

    impl Sender for Blocking {
        fn send(&self, _probe: &Arc<ActiveProbe>) -> io::Result<()> {
            Ok(())
        }

        fn send_batch(
            &self,
            due: &[Due],
            _failed: &mut dyn FnMut(&Arc<ActiveProbe>, io::Error),
        ) -> usize {
            due.len().min(self.accepts)
        }
    }

    #[test]
    fn what_a_full_send_buffer_leaves_is_held_back_not_lost() {
        let scheduler = Scheduler::new(Schedule {
            interval: Duration::from_millis(100),
            expiry: Duration::from_secs(3600),
            window: 10,
            max_packets_per_second: 1_000_000,
            max_active: 100,
        });
        let sender: Arc<dyn Sender> = Arc::new(Blocking { accepts: 2 });
        let targets: Vec<_> = (0..5).map(|_| probe()).collect();
        let mut due: Vec<Due> = targets
            .iter()
            .map(|target| Due {
                probe: Arc::clone(target),
                sender: Arc::clone(&sender),
                due: 10,
            })
            .collect();
        let (mut deferred, mut runs) = (Vec::new(), Vec::new());
        scheduler.send_due(&mut due, &mut deferred, &mut runs, Instant::now(), 10, 100);
        assert_eq!((due.len(), deferred.len()), (2, 3));
        assert!(Arc::ptr_eq(&deferred[0].probe, &targets[2]));
        // Held back is not lost: nothing recorded for them.
        assert!(lock(&targets[2].stats).window.is_empty());
        assert_eq!(scheduler.missed(), 0);
    }

    #[test]
    fn rate_limiter_caps_the_rate() {
        let limiter = RateLimiter::new(100);
        let start = Instant::now();
        // Burst: 2 tokens (20 ms at 100/s).
        assert!(limiter.try_acquire(start).is_ok());
        assert!(limiter.try_acquire(start).is_ok());
        let wait = limiter.try_acquire(start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.01).abs() < 1e-6, "{wait:?}");
        assert!(
            limiter
                .try_acquire(start + Duration::from_millis(10))
                .is_ok()
        );
        // Over one simulated second, at most 100 + burst tokens.
        let mut granted = 0;
        for ms in 0..1000 {
            let now = start + Duration::from_millis(20 + ms);
            while limiter.try_acquire(now).is_ok() {
                granted += 1;
            }
        }
        assert!((99..=102).contains(&granted), "{granted}");
    }
}
