//! Watching hardware stamps once `--ping.hard` turned them on for a socket. A reply on such a
//! socket whose round trip came from software stamps (or the user clock) means the NIC did not
//! stamp that exchange: a transmit stamp missing on the error queue (drivers skip some, under
//! load or when their stamping unit is busy), or a configuration the driver lost (some reset
//! it when the link goes down and comes back). Each such reply is counted
//! (`network_probe_ping_hardware_timestamp_missing_total`), the first one logs the daemon's one
//! warning about it, and `SIOCSHWTSTAMP` is applied again (at most once a second per socket),
//! so stamping comes back by itself after a reset. The reply itself keeps the software round
//! trip: both of its stamps come from one clock.
//!
//! Tested in the qemu guest on the simulated NIC (testing/hwtstamp-veth: `skip_tx_stamps`,
//! `forget_on_down`; tests/integration/hwtstamp.rs).

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::timestamps;

/// Shortest time between two re-applications of the configuration by one socket.
const REAPPLY_INTERVAL: Duration = Duration::from_secs(1);

/// What every socket's watch shares: the count behind the metric and the one warning.
#[derive(Debug, Default)]
pub(crate) struct MissingStamps {
    count: AtomicU64,
    warned: AtomicBool,
}

impl MissingStamps {
    /// Replies measured without hardware stamps on sockets set up for them.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The watch of one socket set up for hardware stamps on `interface`.
#[derive(Debug)]
pub(crate) struct HardwareWatch {
    interface: String,
    shared: std::sync::Arc<MissingStamps>,
    last_reapplied: Mutex<Option<Instant>>,
}

impl HardwareWatch {
    pub(crate) fn new(interface: &str, shared: std::sync::Arc<MissingStamps>) -> Self {
        HardwareWatch {
            interface: interface.to_string(),
            shared,
            last_reapplied: Mutex::new(None),
        }
    }

    /// Called for every matched reply (before its outcome is recorded) with whether its round
    /// trip came from hardware stamps on both ends.
    pub(crate) fn observe(&self, hardware: bool, now: Instant) {
        if hardware {
            return;
        }
        self.shared.count.fetch_add(1, Ordering::Relaxed);
        if !self.shared.warned.swap(true, Ordering::Relaxed) {
            log::warn!(
                "ping: hardware timestamps missing on {}: a reply was measured with software \
                 timestamps (counted in network_probe_ping_hardware_timestamp_missing_total); \
                 applying SIOCSHWTSTAMP again",
                self.interface
            );
        }
        let mut last = super::scheduler::lock(&self.last_reapplied);
        if last.is_some_and(|last| now.saturating_duration_since(last) < REAPPLY_INTERVAL) {
            return;
        }
        *last = Some(now);
        match timestamps::set_hardware_stamping(&self.interface) {
            Ok(()) => log::debug!(
                "ping: {}: hardware timestamping applied again (TX on, receive filter all)",
                self.interface
            ),
            Err(err) => log::debug!(
                "ping: {}: applying hardware timestamping again: SIOCSHWTSTAMP: {err}",
                self.interface
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_software_replies_and_reapplies_at_most_once_a_second() {
        let shared = std::sync::Arc::new(MissingStamps::default());
        // lo cannot stamp: applying fails (logged at debug), counting goes on.
        let watch = HardwareWatch::new("lo", std::sync::Arc::clone(&shared));
        let start = Instant::now();
        watch.observe(true, start);
        assert_eq!(shared.count(), 0);
        assert_eq!(*super::super::scheduler::lock(&watch.last_reapplied), None);
        watch.observe(false, start);
        watch.observe(false, start + Duration::from_millis(500));
        assert_eq!(shared.count(), 2);
        assert_eq!(
            *super::super::scheduler::lock(&watch.last_reapplied),
            Some(start)
        );
        watch.observe(false, start + Duration::from_millis(1_000));
        assert_eq!(shared.count(), 3);
        assert_eq!(
            *super::super::scheduler::lock(&watch.last_reapplied),
            Some(start + Duration::from_millis(1_000))
        );
        assert!(shared.warned.load(Ordering::Relaxed));
    }
}
