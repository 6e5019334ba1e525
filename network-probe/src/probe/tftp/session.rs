//! The I/O loop of one download, run on a blocking thread of the runtime's pool: sends the RRQ,
//! feeds every datagram to the pure state machine ([`super::codec::Transfer`]), sends what it
//! answers, hashes the content and keeps the retransmission timer and the probe deadline.
//!
//! Why a blocking thread and not the async socket: in a lock-step transfer every block is one
//! round trip, and the client's share of it is the per-block path. On the runtime's socket that
//! path was a recvfrom that often found nothing yet (the DATA is still on its way), an
//! epoll_wait (a profile showed epoll_wait about as often as recvfrom), the recvfrom, the sendto
//! and a timer entry re-armed per block. A blocking socket with a receive timeout
//! (SO_RCVTIMEO) waits in recvfrom itself: `perf trace -s` counts 20,481 recvfrom, 20,482
//! sendto and 2 setsockopt for a 10 MiB file in 20,481 blocks. The timer is the socket's
//! timeout, set again only when its value changes (after every block it is the same
//! retransmission interval). Bench pairs of the same day (tokio socket, then this; load 8 to
//! 12.5 on 2 CPUs): our CPU at 512-byte lock-step 18.3, 18.5 and 20.5 ms per MiB before, 15.2
//! to 15.8 after (tftp-hpa 18.4 to 21.6 in the same runs). The time did not measurably change:
//! its ratio to tftp-hpa's was 0.76 to 1.08 before and 0.69 to 1.00 after, the scatter of the
//! machine's load. The retransmission deadline is kept exactly as before: measured from the
//! last packet that made progress, checked when the socket's timeout expires. The timeout is capped at [`MAX_WAIT`]
//! so a cancelled probe (its future dropped) stops its thread within that time; the probe
//! deadline bounds the thread in any case.
//!
//! Measured on the lock-step path (10 MiB, 512-byte blocks, from tftpd-hpa, 2026-12-07, load 6
//! to 8.6 on 2 CPUs) and kept or dropped:
//! - kept: the ACK is sent before the block is hashed (tftp-hpa's client also sends before it
//!   writes), so the server prepares the next block while this one is hashed; the final stamp
//!   is taken when the final ACK is out. `perf` showed SHA-256 (x86 SHA extensions) at 4 % of
//!   our thread's samples, now off the round trip.
//! - dropped: a bounded spin (recvfrom with MSG_DONTWAIT for up to 50 us) before blocking. On
//!   this shared 2-CPU machine it stole the CPU the server needed: 1.07 and 1.20 s against 0.65
//!   and 0.64 s without, and CPU 32.1 to 33.5 ms per MiB against 15.6 to 17.4.
//! - dropped: connect() to the server's TID once it is known (send without the per-packet
//!   route lookup; `perf` put fib_table_lookup + ip_route_output_key_hash_rcu at about 3 % of
//!   our thread's samples). Three alternating runs each: 0.655 to 0.810 s connected, 0.666 to
//!   0.695 s not; CPU 15.0 to 17.5 against 15.2 to 16.7 ms per MiB: inside the noise. A
//!   connected UDP socket is also never given datagrams from other ports, so the ERROR 5 that
//!   RFC 1350 asks for towards a foreign TID would need a second socket on the same port.
//!
//! The probe log is collected here and handed to the probe's context when the thread ends.

use std::{
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sha2::Digest as _;

use super::{
    Measurement,
    codec::{self, BLKSIZE_RANGE, Failure, FailureReason, Outcome, Transfer, error_code},
};

/// Longest the thread blocks in one receive before it looks at the cancel flag.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// One download's state, moved onto the blocking thread and back.
pub(super) struct Session {
    pub(super) socket: UdpSocket,
    pub(super) server: SocketAddr,
    pub(super) transfer: Transfer,
    pub(super) rrq: Vec<u8>,
    pub(super) measurement: Measurement,
    pub(super) deadline: Instant,
    /// Lines for the probe log.
    pub(super) log: Vec<String>,
    /// The socket's receive timeout as last set.
    armed: Option<Duration>,
}

/// Sets the flag when dropped: the probe future went away, the thread should stop.
pub(super) struct CancelOnDrop(pub Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Session {
    pub(super) fn new(
        socket: UdpSocket,
        server: SocketAddr,
        transfer: Transfer,
        rrq: Vec<u8>,
        measurement: Measurement,
        deadline: Instant,
    ) -> Session {
        Session {
            socket,
            server,
            transfer,
            rrq,
            measurement,
            deadline,
            log: Vec::new(),
            armed: None,
        }
    }

    /// Sets the socket's receive timeout to wait until `until` (at most [`MAX_WAIT`]), with a
    /// system call only when the value changes.
    fn arm(&mut self, now: Instant, until: Instant) {
        let wait = until
            .saturating_duration_since(now)
            .clamp(Duration::from_millis(1), MAX_WAIT);
        if self.armed != Some(wait) {
            // Only fails for a zero duration, which the clamp rules out.
            let _ = self.socket.set_read_timeout(Some(wait));
            self.armed = Some(wait);
        }
    }

    /// Sends the RRQ and runs the state machine until it ends, the deadline passes or `cancel`
    /// is set. The first answer from the server's address locks the transfer ID; datagrams from
    /// anywhere else get ERROR 5 and are otherwise ignored.
    pub(super) fn run(&mut self, cancel: &AtomicBool) -> Result<(), Failure> {
        let io_failure = |what: &str, err: std::io::Error| {
            Failure::new(FailureReason::ServerError, format!("{what}: {err}"))
        };
        let start = Instant::now();
        self.measurement.request_sent = Some(start);
        self.socket
            .send_to(&self.rrq, self.server)
            .map_err(|err| io_failure("sending the read request", err))?;
        let mut tid: Option<SocketAddr> = None;
        let mut buffer = vec![0u8; usize::from(*BLKSIZE_RANGE.end()) + 4 + 1];
        let mut wait_until = Instant::now() + self.transfer.retransmit_interval();
        self.arm(Instant::now(), wait_until.min(self.deadline));
        loop {
            let (len, from) = match self.socket.recv_from(&mut buffer) {
                Ok(received) => received,
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    let now = Instant::now();
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Failure::new(
                            FailureReason::Timeout,
                            "the probe was cancelled",
                        ));
                    }
                    if now >= self.deadline {
                        return Err(self.deadline_failure(tid));
                    }
                    if now < wait_until {
                        self.arm(now, wait_until.min(self.deadline));
                        continue;
                    }
                    let step = self.transfer.on_timeout();
                    if let Some(Outcome::Failed(failure)) = step.outcome {
                        return Err(failure);
                    }
                    if let Some(packet) = step.send {
                        self.log.push(format!(
                            "timeout: retransmission {}",
                            self.transfer.retransmissions()
                        ));
                        let _ = self.socket.send_to(&packet, tid.unwrap_or(self.server));
                    }
                    let now = Instant::now();
                    wait_until = now + self.transfer.retransmit_interval();
                    self.arm(now, wait_until.min(self.deadline));
                    continue;
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                // ICMP errors (port unreachable) surface here on Linux: keep waiting, the
                // retransmission timer decides.
                Err(err) => {
                    self.log.push(format!("receive error: {err}"));
                    let now = Instant::now();
                    if now >= self.deadline {
                        return Err(self.deadline_failure(tid));
                    }
                    self.arm(now, wait_until.min(self.deadline));
                    continue;
                }
            };
            match tid {
                Some(locked) if locked != from => {
                    self.answer_foreign(from);
                    self.arm(Instant::now(), wait_until.min(self.deadline));
                    continue;
                }
                None if from.ip() != self.server.ip() => {
                    self.answer_foreign(from);
                    self.arm(Instant::now(), wait_until.min(self.deadline));
                    continue;
                }
                None => tid = Some(from),
                Some(_) => {}
            }
            let blocks_before = self.transfer.blocks();
            let step = self.transfer.on_packet(&buffer[..len]);
            if step.payload.is_some() && blocks_before == 0 {
                self.measurement.first_block = Some(start.elapsed());
            }
            // The ACK goes out before the block is hashed: the server prepares the next
            // block while this one is hashed.
            if let Some(packet) = &step.send {
                self.socket
                    .send_to(packet, from)
                    .map_err(|err| io_failure("sending to the server", err))?;
            }
            if matches!(step.outcome, Some(Outcome::Complete)) {
                // Stamped when the final ACK is out, before the last block is hashed.
                self.measurement.transfer_time = Some(start.elapsed());
            }
            if let Some(payload) = step.payload {
                self.measurement.content_hash.update(payload);
            }
            match step.outcome {
                Some(Outcome::Complete) => return Ok(()),
                Some(Outcome::Failed(failure)) => return Err(failure),
                None => {}
            }
            let now = Instant::now();
            if step.send.is_some() || step.payload.is_some() {
                wait_until = now + self.transfer.retransmit_interval();
            }
            self.arm(now, wait_until.min(self.deadline));
        }
    }

    /// ERROR 5 to a datagram's source that is not our server's transfer ID.
    fn answer_foreign(&mut self, from: SocketAddr) {
        self.log.push(format!(
            "datagram from unknown transfer ID {from}: answered with ERROR 5"
        ));
        let packet = codec::encode_error(error_code::UNKNOWN_TRANSFER_ID, "unknown transfer ID");
        let _ = self.socket.send_to(&packet, from);
    }

    /// Tells the server (if it answered) that we gave up, and describes the timeout.
    fn deadline_failure(&self, tid: Option<SocketAddr>) -> Failure {
        if let Some(tid) = tid {
            let packet = codec::encode_error(error_code::NOT_DEFINED, "probe deadline reached");
            let _ = self.socket.send_to(&packet, tid);
        }
        Failure::new(
            FailureReason::Timeout,
            match tid {
                None => "the server did not answer before the probe deadline",
                Some(_) => "the transfer did not finish before the probe deadline",
            },
        )
    }
}
