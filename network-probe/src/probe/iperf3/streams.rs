//! The data streams of a test, one blocking thread each: TCP and UDP senders (with optional
//! pacing) and receivers, the stop signal they watch, and the kernel counters read from our
//! own sockets (SIOCOUTQ to wait for acknowledgements, TCP_INFO for retransmits). Blocking
//! sockets with short timeouts: no busy polling, and every thread notices the stop signal and
//! the probe deadline within [`SOCKET_POLL`].

use std::{
    io::{ErrorKind, Read as _, Write as _},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::oneshot;

use super::protocol::{self, UdpReceiver};

/// How long stream threads block in one socket call before checking for stop.
pub(super) const SOCKET_POLL: Duration = Duration::from_millis(100);
/// A receiving stream is finished once it has been quiet this long after the server stopped.
pub(super) const DRAIN_QUIET: Duration = Duration::from_millis(50);
/// Longest a sending TCP stream waits for its unacknowledged bytes after the timer fired.
pub(super) const SEND_DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// Stream thread control: run, then stop sending / finish draining.
pub(super) const RUN: u8 = 0;
pub(super) const STOP: u8 = 1;

/// What one data stream reports when its thread ends.
#[derive(Debug, Default)]
pub(super) struct StreamTally {
    pub bytes: u64,
    pub packets: u64,
    pub retransmits: Option<u64>,
    pub udp_receiver: Option<UdpReceiver>,
}

/// A data socket handed to a stream thread.
pub(super) enum DataSocket {
    Tcp(std::net::TcpStream),
    Udp(std::net::UdpSocket),
}

/// Sets the stop flag when dropped, so stream threads end even if the probe future is dropped.
pub(super) struct StopOnDrop(pub Arc<AtomicU8>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(STOP, Ordering::SeqCst);
    }
}

/// One stream thread's job.
pub(super) struct StreamJob {
    pub socket: DataSocket,
    pub sending: bool,
    /// Bits per second for this stream; 0 is unlimited.
    pub bitrate: u64,
    pub block_len: usize,
    pub deadline: Instant,
}

impl StreamJob {
    /// Runs the job on its own thread; the receiver yields its tally when the thread ends.
    pub(super) fn spawn(
        self,
        stop: Arc<AtomicU8>,
    ) -> std::io::Result<oneshot::Receiver<StreamTally>> {
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("iperf3-stream".into())
            .spawn(move || {
                let _ = tx.send(self.run(&stop));
            })?;
        Ok(rx)
    }

    fn run(self, stop: &AtomicU8) -> StreamTally {
        match (self.socket, self.sending) {
            (DataSocket::Tcp(stream), true) => {
                tcp_send(stream, stop, self.bitrate, self.block_len, self.deadline)
            }
            (DataSocket::Tcp(stream), false) => tcp_receive(stream, stop, self.deadline),
            (DataSocket::Udp(socket), true) => {
                udp_send(socket, stop, self.bitrate, self.block_len, self.deadline)
            }
            (DataSocket::Udp(socket), false) => udp_receive(socket, stop, self.deadline),
        }
    }
}

/// Waits for every stream thread's tally (a thread that died counts nothing).
pub(super) async fn collect(
    tallies: impl Iterator<Item = oneshot::Receiver<StreamTally>>,
) -> Vec<StreamTally> {
    let mut collected = Vec::new();
    for tally in tallies {
        collected.push(tally.await.unwrap_or_default());
    }
    collected
}

/// Sleeps until `sent` bytes are due at `bitrate` since `start` (no-op when unlimited).
fn pace(start: Instant, sent: u64, bitrate: u64) {
    if bitrate == 0 {
        return;
    }
    let due = Duration::from_secs_f64(sent as f64 * 8.0 / bitrate as f64);
    let elapsed = start.elapsed();
    if due > elapsed {
        std::thread::sleep((due - elapsed).min(SOCKET_POLL));
    }
}

/// Writes `block_len` bytes per write(2) (iperf3's 128 KiB by default). Tried and dropped
/// (2026-12-07, load 7.5 on 2 CPUs, 11 paired rounds of 2 s, one stream on loopback): 1 MiB
/// writes when unpaced, 0.87x the throughput of 128 KiB (median of per-round ratios 128 KiB /
/// 1 MiB 1.14, spread 0.62 to 1.98) and 1.27x its CPU per GiB. MSG_ZEROCOPY is not used: the
/// kernel copies every zero-copy packet looped to a local socket anyway (deferred copy, see
/// Documentation/networking/msg_zerocopy.rst), so on loopback it only adds page pinning and
/// completion notifications; sendfile from a memfd was tried before and dropped.
fn tcp_send(
    mut stream: std::net::TcpStream,
    stop: &AtomicU8,
    bitrate: u64,
    block_len: usize,
    deadline: Instant,
) -> StreamTally {
    let _ = stream.set_write_timeout(Some(SOCKET_POLL));
    let block = vec![0x5au8; block_len];
    let start = Instant::now();
    let mut bytes = 0u64;
    while stop.load(Ordering::Relaxed) == RUN && Instant::now() < deadline {
        if bitrate > 0 && bytes as f64 * 8.0 > start.elapsed().as_secs_f64() * bitrate as f64 {
            pace(start, bytes, bitrate);
            continue;
        }
        match stream.write(&block) {
            Ok(n) => bytes += n as u64,
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    // Let the peer's kernel acknowledge what is queued, so the server counts it.
    let drain_until = (Instant::now() + SEND_DRAIN_LIMIT).min(deadline);
    while unsent_bytes(&stream).is_some_and(|queued| queued > 0) && Instant::now() < drain_until {
        std::thread::sleep(Duration::from_millis(1));
    }
    StreamTally {
        bytes,
        retransmits: total_retransmits(&stream),
        ..StreamTally::default()
    }
}

fn tcp_receive(mut stream: std::net::TcpStream, stop: &AtomicU8, deadline: Instant) -> StreamTally {
    let _ = stream.set_read_timeout(Some(SOCKET_POLL));
    let mut buffer = vec![0u8; 256 * 1024];
    let mut bytes = 0u64;
    let mut draining = false;
    while Instant::now() < deadline {
        if !draining && stop.load(Ordering::Relaxed) == STOP {
            draining = true;
            let _ = stream.set_read_timeout(Some(DRAIN_QUIET));
        }
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            // Draining: nothing arrived for DRAIN_QUIET, so the server's data is all in.
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if draining {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    StreamTally {
        bytes,
        ..StreamTally::default()
    }
}

fn udp_send(
    socket: std::net::UdpSocket,
    stop: &AtomicU8,
    bitrate: u64,
    block_len: usize,
    deadline: Instant,
) -> StreamTally {
    let _ = socket.set_write_timeout(Some(SOCKET_POLL));
    let mut datagram = vec![0x5au8; block_len.max(protocol::UDP_HEADER_LEN)];
    let start = Instant::now();
    let mut tally = StreamTally::default();
    while stop.load(Ordering::Relaxed) == RUN && Instant::now() < deadline {
        if bitrate > 0 && tally.bytes as f64 * 8.0 > start.elapsed().as_secs_f64() * bitrate as f64
        {
            pace(start, tally.bytes, bitrate);
            continue;
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let packet = (tally.packets + 1) as u32;
        protocol::write_udp_header(
            &mut datagram,
            now.as_secs() as u32,
            now.subsec_micros(),
            packet,
        );
        match socket.send(&datagram) {
            Ok(n) => {
                tally.bytes += n as u64;
                tally.packets += 1;
            }
            // ENOBUFS, a refused port: skip this datagram, as iperf3 does.
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    tally
}

fn udp_receive(socket: std::net::UdpSocket, stop: &AtomicU8, deadline: Instant) -> StreamTally {
    let _ = socket.set_read_timeout(Some(SOCKET_POLL));
    let origin = Instant::now();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut receiver = UdpReceiver::default();
    let mut draining = false;
    while Instant::now() < deadline {
        if !draining && stop.load(Ordering::Relaxed) == STOP {
            draining = true;
            let _ = socket.set_read_timeout(Some(DRAIN_QUIET));
        }
        match socket.recv(&mut buffer) {
            Ok(len) => {
                if len == 4 && protocol::is_udp_connect_reply(&buffer[..len]) {
                    continue;
                }
                let Some((sec, usec, packet)) = protocol::read_udp_header(&buffer[..len]) else {
                    continue;
                };
                let sent = f64::from(sec) + f64::from(usec) * 1e-6;
                receiver.record(len, u64::from(packet), sent, origin.elapsed().as_secs_f64());
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if draining {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    StreamTally {
        bytes: receiver.bytes,
        packets: receiver.packets,
        udp_receiver: Some(receiver),
        ..StreamTally::default()
    }
}

/// Bytes written but not yet acknowledged by the peer (SIOCOUTQ).
fn unsent_bytes(stream: &std::net::TcpStream) -> Option<i32> {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int through the pointer.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    (rc == 0).then_some(queued)
}

/// The kernel's count of retransmitted segments on this connection (TCP_INFO).
fn total_retransmits(stream: &std::net::TcpStream) -> Option<u64> {
    // SAFETY: tcp_info is plain old data; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(u64::from(info.tcpi_total_retrans))
}
