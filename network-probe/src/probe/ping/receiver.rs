//! The receive side both ping drivers share: the loop that serves a timestamping socket,
//! draining its error queue (transmit stamps) before each batch of replies, a bounded batch per
//! wake-up (`recvmmsg`, [`super::mmsg`]) over the socket plumbing of [`super::socket`], and the
//! sweeps that turn unanswered probes into loss, after reading what is queued.

use std::{
    os::fd::OwnedFd,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use tokio::io::{Interest, unix::AsyncFd};

use super::{
    mmsg::{self, ReceiveBatch},
    socket::{Received, raw},
    timestamps::ControlMessages,
};

/// Reads every entry waiting on the error queue of `fd` (transmit stamps), a batch per
/// `recvmmsg`, and hands its control messages to `stamp`.
pub(crate) fn drain_error_queue(
    fd: &AsyncFd<OwnedFd>,
    batch: &mut ReceiveBatch,
    mut stamp: impl FnMut(ControlMessages),
) {
    while let Ok(count) = batch.receive(raw(fd.get_ref()), true) {
        for index in 0..count {
            stamp(batch.message(index).1.control);
        }
        if count < mmsg::BATCH {
            break;
        }
    }
}

/// Packets [`receive_loop`] reads per `recvmmsg`.
pub(crate) const RECEIVE_BATCH: usize = mmsg::BATCH;

/// Most `recvmmsg` batches [`receive_loop`] reads per wake-up before it yields to the other
/// tasks: 256 packets, more than the wheel sends per turn (one batch, or one tick's slot), so
/// a reader that shares the thread with the sender keeps up with it.
pub(crate) const BATCHES_PER_WAKE: usize = 4;

/// Most batches a sweep reads before it expires the probes whose deadline passed: the socket's
/// queue as far as the pacing lets it grow (`scheduler::room_in_receive_buffer`, half of a
/// 16 MiB buffer: 4,096 probes, with room to spare), so a reply queued before its deadline is
/// matched, not lost.
const SWEEP_BATCHES: usize = 8192 / RECEIVE_BATCH;

/// Bytes kept of an error-queue entry: transmit stamps come without the packet
/// (`SOF_TIMESTAMPING_OPT_TSONLY`), the stamps are in the control messages.
const ERROR_ENTRY_LEN: usize = 256;

/// How often [`receive_loop`] sweeps the probes in flight for expired ones: every tenth of the
/// timeout, 5 ms to 100 ms.
pub(crate) fn sweep_period(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(5), Duration::from_millis(100))
}

/// Serves a timestamping socket until it fails, for both ping drivers: on every wake-up it first
/// drains the error queue (transmit stamps, through `drain_error_queue`) so the replies that
/// follow find theirs, then reads up to [`BATCHES_PER_WAKE`] batches of [`RECEIVE_BATCH`]
/// queued packets (one `recvmmsg` each) and hands each packet to `handle` with its arrival time
/// and a batch for re-reading the error queue. Receive errors count in `errors`.
///
/// Every [`sweep_period`] of `timeout` it reads what is queued (up to [`SWEEP_BATCHES`]
/// batches), then calls `expire` to turn the probes whose deadline passed into loss: a reply
/// that came in time but was not read yet (a daemon short of CPU) is matched, not lost. The
/// sweep runs in this task, the only reader of the socket.
///
/// A bounded number of packets per wake-up: the daemon runs on one runtime thread, and a
/// socket that never runs dry (a flood faster than we read) would otherwise keep this loop busy
/// and starve `/metrics`, the scheduler and the expiry sweeps. After the last full batch the
/// loop yields with the socket still marked ready, so it resumes right after the other ready
/// tasks. It returns when `stop` is notified (the driver was replaced).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn receive_loop(
    fd: &AsyncFd<OwnedFd>,
    stop: &tokio::sync::Notify,
    protocol: &str,
    errors: &AtomicU64,
    timeout: Duration,
    drain_error_queue: impl Fn(&mut ReceiveBatch),
    handle: impl Fn(&[u8], &Received, Instant, &mut ReceiveBatch),
    expire: impl Fn(Instant),
) {
    // Allocated once: every packet is read into these.
    let mut batch = ReceiveBatch::new(2048);
    let mut error_batch = ReceiveBatch::new(ERROR_ENTRY_LEN);
    let mut sweep = tokio::time::interval(sweep_period(timeout));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let read = |batch: &mut ReceiveBatch, error_batch: &mut ReceiveBatch| -> bool {
        drain_error_queue(error_batch);
        match batch.receive(raw(fd.get_ref()), false) {
            Ok(count) => {
                let now = Instant::now();
                for index in 0..count {
                    let (bytes, received) = batch.message(index);
                    handle(bytes, &received, now, error_batch);
                }
                // Fewer than a full batch: the queue was empty when the kernel stopped reading.
                count < RECEIVE_BATCH
            }
            Err(err) => {
                errors.fetch_add(1, Ordering::Relaxed);
                log::debug!("ping: {protocol} receive: {err}");
                true
            }
        }
    };
    loop {
        let ready = tokio::select! {
            ready = fd.ready(Interest::READABLE | Interest::ERROR) => Some(ready),
            _ = sweep.tick() => None,
            () = stop.notified() => return,
        };
        let Some(ready) = ready else {
            for _ in 0..SWEEP_BATCHES {
                if read(&mut batch, &mut error_batch) {
                    break;
                }
            }
            expire(Instant::now());
            continue;
        };
        let mut guard = match ready {
            Ok(guard) => guard,
            Err(err) => {
                log::error!("ping: {protocol} socket failed: {err}");
                return;
            }
        };
        let mut drained = false;
        for _ in 0..BATCHES_PER_WAKE {
            drained = read(&mut batch, &mut error_batch);
            if drained {
                break;
            }
        }
        if drained {
            guard.clear_ready();
        } else {
            // More may be queued: keep the readiness, let the other tasks run first.
            drop(guard);
            tokio::task::yield_now().await;
        }
    }
}
