//! The interface a probe socket is bound to going away and coming back. `SO_BINDTODEVICE`
//! binds a socket to an interface *index*: once the device is deleted every send on it fails
//! (`ENODEV`, counted as a lost sample and a socket error), and a device re-created under the
//! same name (a driver reload, a NIC reset that re-registers it) gets a new index, so the old
//! socket stays dead for good and the new device never had `SIOCSHWTSTAMP` applied.
//!
//! Each socket the prober opens is held in a [`Rebinding`] slot that remembers the index its
//! interface had when it was opened. On every request that uses the slot the prober compares
//! it with the interface's index now ([`decide`]): while the interface is gone the probes on it
//! count lost; once it is back under another index the socket is opened (and bound) again,
//! which enables hardware stamping again when `--ping.hard` asked for it, and one warning says
//! so. The running probes send through the slot, so they move to the new socket at once.
//!
//! Tested in the qemu guest on the simulated NIC (testing/hwtstamp-veth unloaded and loaded
//! again under the running daemon: tests/integration/hwtstamp.rs).

use std::{
    ffi::CString,
    io,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use super::scheduler::{ActiveProbe, Due, Sender};

/// What to do with a socket opened on interface index `opened`, the interface's index being
/// `current` now (`None`: no interface of that name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The socket's interface is still there: keep it.
    Keep,
    /// No interface of that name now: keep the socket (its sends fail, counted lost) and look
    /// again on the next request.
    Gone,
    /// An interface of that name is there under another index: open the socket again.
    Reopen,
}

/// The pure decision of [`Rebinding::check`].
pub(crate) fn decide(opened: Option<u32>, current: Option<u32>) -> Decision {
    match (opened, current) {
        (_, None) => Decision::Gone,
        (Some(opened), Some(current)) if opened == current => Decision::Keep,
        // Opened while it was missing (index unknown) or under another index.
        _ => Decision::Reopen,
    }
}

/// The index of the interface called `name` in the daemon's namespace, if there is one.
pub(crate) fn interface_index(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// A probe socket (driver) bound to `interface`, replaceable while probes send through it.
#[derive(Debug)]
pub(crate) struct Rebinding {
    interface: Option<String>,
    /// The interface's index when the current driver was opened (0: unknown or unbound).
    index: AtomicU32,
    inner: RwLock<Arc<dyn Sender>>,
}

impl Rebinding {
    /// `driver`, just opened on `interface` (whose index was `index` before it was opened).
    pub(crate) fn new(
        interface: Option<String>,
        index: Option<u32>,
        driver: Arc<dyn Sender>,
    ) -> Self {
        Rebinding {
            interface,
            index: AtomicU32::new(index.unwrap_or(0)),
            inner: RwLock::new(driver),
        }
    }

    /// Compares the index the socket was opened on with the interface's index now.
    pub(crate) fn check(&self) -> Decision {
        let Some(interface) = &self.interface else {
            return Decision::Keep;
        };
        let opened = self.index.load(Ordering::Relaxed);
        decide((opened != 0).then_some(opened), interface_index(interface))
    }

    /// Puts `driver`, opened on interface index `index`, in place of the current one. The
    /// replaced driver sends no more; after `grace` (its probes in flight have expired, counted
    /// lost) it stops receiving and its socket is closed.
    pub(crate) fn replace(&self, index: Option<u32>, driver: Arc<dyn Sender>, grace: Duration) {
        let old = std::mem::replace(
            &mut *self
                .inner
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            driver,
        );
        self.index.store(index.unwrap_or(0), Ordering::Relaxed);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            old.retire();
        });
    }

    /// The index the current socket was opened on (0: unknown).
    pub(crate) fn index(&self) -> u32 {
        self.index.load(Ordering::Relaxed)
    }
}

impl Sender for Rebinding {
    fn send(&self, probe: &Arc<ActiveProbe>) -> io::Result<()> {
        let driver = Arc::clone(
            &self
                .inner
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        driver.send(probe)
    }

    fn send_batch(
        &self,
        due: &[Due],
        failed: &mut dyn FnMut(&Arc<ActiveProbe>, io::Error),
    ) -> usize {
        let driver = Arc::clone(
            &self
                .inner
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        driver.send_batch(due, failed)
    }

    fn room(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .room()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_from_the_index_opened_on_and_the_index_now() {
        assert_eq!(decide(Some(5), Some(5)), Decision::Keep);
        // Deleted: nothing to bind to yet.
        assert_eq!(decide(Some(5), None), Decision::Gone);
        assert_eq!(decide(None, None), Decision::Gone);
        // Re-created under the same name: a new index.
        assert_eq!(decide(Some(5), Some(7)), Decision::Reopen);
        // Opened while the interface was missing, there now.
        assert_eq!(decide(None, Some(7)), Decision::Reopen);
    }

    #[test]
    fn loopback_has_an_index_and_a_made_up_name_none() {
        assert!(interface_index("lo").is_some());
        assert_eq!(interface_index("np-no-such-if0"), None);
        assert_eq!(interface_index("bad\0name"), None);
    }
}
