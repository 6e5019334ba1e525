//! The receive side both ping drivers share: the loop that serves a timestamping socket,
//! draining its error queue (transmit stamps) before each batch of replies, a bounded batch per
//! wake-up (one `recvmmsg`, [`super::mmsg`]) over the socket plumbing of [`super::socket`].

use std::{
    os::fd::OwnedFd,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
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

/// Most packets [`receive_loop`] handles per wake-up before it yields to the other tasks (one
/// `recvmmsg`).
pub(crate) const RECEIVE_BATCH: usize = mmsg::BATCH;

/// Bytes kept of an error-queue entry: transmit stamps come without the packet
/// (`SOF_TIMESTAMPING_OPT_TSONLY`), the stamps are in the control messages.
const ERROR_ENTRY_LEN: usize = 256;

/// Serves a timestamping socket until it fails, for both ping drivers: on every wake-up it first
/// drains the error queue (transmit stamps, through `drain_error_queue`) so the replies that
/// follow find theirs, then reads up to [`RECEIVE_BATCH`] queued packets with one `recvmmsg`
/// and hands each to `handle` with its arrival time and a batch for re-reading the error queue.
/// Receive errors count in `errors`.
///
/// At most [`RECEIVE_BATCH`] packets per wake-up: the daemon runs on one runtime thread, and a
/// socket that never runs dry (a flood faster than we read) would otherwise keep this loop busy
/// and starve `/metrics`, the scheduler and the expiry sweeps. After a full batch the loop
/// yields with the socket still marked ready, so it resumes right after the other ready tasks.
/// It returns when `stop` is notified (the driver was replaced).
pub(crate) async fn receive_loop(
    fd: &AsyncFd<OwnedFd>,
    stop: &tokio::sync::Notify,
    protocol: &str,
    errors: &AtomicU64,
    drain_error_queue: impl Fn(&mut ReceiveBatch),
    handle: impl Fn(&[u8], &Received, Instant, &mut ReceiveBatch),
) {
    // Allocated once: every packet is read into these.
    let mut batch = ReceiveBatch::new(2048);
    let mut error_batch = ReceiveBatch::new(ERROR_ENTRY_LEN);
    loop {
        let ready = tokio::select! {
            ready = fd.ready(Interest::READABLE | Interest::ERROR) => ready,
            () = stop.notified() => return,
        };
        let mut guard = match ready {
            Ok(guard) => guard,
            Err(err) => {
                log::error!("ping: {protocol} socket failed: {err}");
                return;
            }
        };
        drain_error_queue(&mut error_batch);
        // Fewer than a full batch: the queue was empty when the kernel stopped reading.
        let drained = match batch.receive(raw(fd.get_ref()), false) {
            Ok(count) => {
                let now = Instant::now();
                for index in 0..count {
                    let (bytes, received) = batch.message(index);
                    handle(bytes, &received, now, &mut error_batch);
                }
                count < RECEIVE_BATCH
            }
            Err(err) => {
                errors.fetch_add(1, Ordering::Relaxed);
                log::debug!("ping: {protocol} receive: {err}");
                true
            }
        };
        if drained {
            guard.clear_ready();
        } else {
            // More may be queued: keep the readiness, let the other tasks run first.
            drop(guard);
            tokio::task::yield_now().await;
        }
    }
}
