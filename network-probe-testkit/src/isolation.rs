//! Which tests may run at the same time inside one test process.
//!
//! The integration tests used to be one executable per suite: cargo ran the executables one
//! after the other and only the tests of one suite ran in parallel. In the single
//! `integration` executable any two tests may run together, and two of them must not share the
//! machine:
//! - `deb::package_installs_runs_as_its_user_and_purges_cleanly` installs and purges the
//!   Debian package host-wide (`/usr/bin`, `/etc/network-probe`, `/etc/default`, systemd unit
//!   links, the `network-probe` user) and runs cargo-deb and dpkg; it was the only test of its
//!   executable;
//! - `jool::real_jool_in_qemu` boots a TCG qemu guest with two vCPUs that keeps both of the
//!   build machines' cores busy for minutes under a 240 s limit; its only sibling is the
//!   ignored guest-side test, so it too ran alone.
//!
//! Both take [`exclusive`]. Everything timing-sensitive takes [`shared`] for its whole run:
//! every [`crate::VethPair`] holds a shared guard (every test with a namespace: daemon
//! start-up deadlines, comparisons against captures and kernel counters, churn's 2 s re-attach
//! deadline, the probes' budgets), and the TFTP tests, which probe servers on the host's
//! loopback without a namespace, take one explicitly. Tests holding neither (BPF_PROG_TEST_RUN
//! runs, file checks) neither disturb nor are disturbed by the exclusive ones.
//!
//! Nothing else in the suites relies on a process of its own: they set no environment
//! variable and change no capability of the test process (tests/integration/privileges.rs reads the
//! daemon's), enter namespaces only on threads of their own (`in_netns`), listen on fixed ports
//! only inside their namespaces, pin maps only in a private [`crate::Bpffs`], and count the
//! fds, threads and memory of the daemon, never of the test process.
//!
//! The lock prefers shared holders: [`shared`] waits only while an exclusive guard is held (so
//! a test may hold several, e.g. two veth pairs, and helper threads may take one), and
//! [`exclusive`] waits until no shared guard is left. An exclusive holder's own thread passes
//! through [`shared`], so the exclusive tests use the fixtures as before.

use std::{
    sync::{Condvar, Mutex, MutexGuard, PoisonError},
    thread::{self, ThreadId},
};

struct State {
    shared: usize,
    exclusive: Option<ThreadId>,
}

static STATE: Mutex<State> = Mutex::new(State {
    shared: 0,
    exclusive: None,
});
static CHANGED: Condvar = Condvar::new();

/// A failed test panics while holding a guard; the state stays consistent (guards undo their
/// count on unwinding), so a poisoned lock is used as is.
fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Held by a test that must not run alongside an exclusive one; see the module doc.
#[must_use = "the guard keeps exclusive tests out while it lives"]
pub struct Shared {
    counted: bool,
}

/// Held by a test that must run with no other guarded test; see the module doc.
#[must_use = "the guard keeps other tests out while it lives"]
pub struct Exclusive(());

/// Waits while another thread holds [`exclusive`], then keeps it out until dropped.
pub fn shared() -> Shared {
    let me = thread::current().id();
    let mut state = state();
    loop {
        match state.exclusive {
            Some(owner) if owner == me => return Shared { counted: false },
            Some(_) => state = CHANGED.wait(state).unwrap_or_else(PoisonError::into_inner),
            None => break,
        }
    }
    state.shared += 1;
    Shared { counted: true }
}

/// Waits until no other guard is held, then keeps every other guarded test out until dropped.
pub fn exclusive() -> Exclusive {
    let mut state = state();
    while state.exclusive.is_some() || state.shared > 0 {
        state = CHANGED.wait(state).unwrap_or_else(PoisonError::into_inner);
    }
    state.exclusive = Some(thread::current().id());
    Exclusive(())
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.counted {
            state().shared -= 1;
            CHANGED.notify_all();
        }
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        state().exclusive = None;
        CHANGED.notify_all();
    }
}
