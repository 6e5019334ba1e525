//! The TCP SYN driver: one raw TCP socket per address family shared by every TCP target. It
//! sends SYNs from a source port it holds reserved (so the local stack never mistakes the
//! replies for one of its connections, and answers them with RST), lets the kernel pass only
//! SYN-ACKs and RSTs to that port to the socket ([`super::filter`]), reads transmit stamps from
//! the error queue, and matches SYN-ACK and RST replies by address, port and acknowledgement
//! number = our initial sequence number + 1, only while the attempt is in flight: a SYN-ACK the
//! server retransmits after our timeout finds nothing and the attempt stays lost.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::io::{Interest, unix::AsyncFd};

use super::{
    filter,
    hardware::HardwareWatch,
    mmsg::ReceiveBatch,
    packet::{self, Syn, SynReply},
    receiver,
    scheduler::{
        ActiveProbe, InFlightTable, ProtocolCounters, Sender, lock, room_in_receive_buffer,
    },
    socket::{self, StampedSender},
};

/// Longest a SYN waits for its reply, whatever `--ping.timeout` says: a server whose SYN-ACK
/// was lost retransmits it after its initial retransmission timeout, 1 s (RFC 6298, Linux
/// `TCP_TIMEOUT_INIT`). A reply later than that may be such a retransmission, which would pass
/// a lost SYN-ACK off as a 1 s round trip; ending the attempt at 1 s counts it as the loss it
/// is.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(1);

/// Source addresses remembered before the cache is cleared (routes may change).
const MAX_CACHED_SOURCES: usize = 65_536;

/// How to open the socket of one family.
#[derive(Clone, Debug)]
pub(crate) struct TcpConfig {
    pub v6: bool,
    pub interface: Option<String>,
    pub stamp_flags: u32,
    pub timeout: Duration,
    /// Set when the socket is set up for hardware stamps (`--ping.hard` enabled them).
    pub hardware: Option<Arc<HardwareWatch>>,
}

/// (target address, target port, expected acknowledgement number).
type ReplyKey = (IpAddr, u16, u32);

#[derive(Debug)]
struct SendState {
    sends: u32,
    random: super::Random,
}

/// The raw TCP socket of one family and its SYNs in flight.
#[derive(Debug)]
pub(crate) struct TcpDriver {
    v6: bool,
    fd: AsyncFd<OwnedFd>,
    /// A bound, never listening TCP socket that keeps `local_port` ours.
    _reservation: OwnedFd,
    local_port: u16,
    interface: Option<String>,
    state: Mutex<SendState>,
    in_flight: Mutex<InFlightTable<ReplyKey>>,
    sources: Mutex<HashMap<IpAddr, IpAddr>>,
    sender: StampedSender,
    counters: Arc<ProtocolCounters>,
    hardware: Option<Arc<HardwareWatch>>,
    /// Ends the receive loop (the driver was replaced).
    stop: tokio::sync::Notify,
    /// `--ping.timeout` (the sweeps' period follows it).
    timeout: Duration,
}

impl TcpDriver {
    /// Opens the sockets and starts the receive and expiry tasks (inside the tokio runtime).
    pub(crate) fn start(
        config: &TcpConfig,
        counters: Arc<ProtocolCounters>,
    ) -> io::Result<Arc<Self>> {
        let interface = config.interface.as_deref();
        // The reservation first: the raw socket's filter needs its port.
        let reservation = socket::open(config.v6, libc::SOCK_STREAM, 0, 0, None)?;
        let unspecified: IpAddr = if config.v6 {
            "::".parse().unwrap()
        } else {
            "0.0.0.0".parse().unwrap()
        };
        if config.v6 {
            socket::set_option(
                socket::raw(&reservation),
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                &1i32,
            )?;
        }
        socket::bind(socket::raw(&reservation), SocketAddr::new(unspecified, 0))?;
        let local_port = socket::local_address(socket::raw(&reservation))?.port();
        let fd = socket::open(
            config.v6,
            libc::SOCK_RAW,
            libc::IPPROTO_TCP,
            config.stamp_flags,
            interface,
        )?;
        // Only SYN-ACKs and RSTs to our port reach the socket (see [`filter`]); segments queued
        // before this call are checked in `handle_segment` like any other.
        socket::attach_filter(
            socket::raw(&fd),
            &filter::tcp_replies(config.v6, local_port),
        )?;
        let buffer = socket::receive_buffer(socket::raw(&fd))?;
        let driver = Arc::new(TcpDriver {
            v6: config.v6,
            // SAFETY: the AsyncFd owns the descriptor and keeps it open until dropped.
            fd: unsafe {
                AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::ERROR)
            }?,
            _reservation: reservation,
            local_port,
            interface: config.interface.clone(),
            state: Mutex::new(SendState {
                sends: 0,
                random: super::Random::new(),
            }),
            in_flight: Mutex::new(InFlightTable::new(config.timeout)),
            sources: Mutex::new(HashMap::new()),
            sender: StampedSender::default(),
            counters,
            hardware: config.hardware.clone(),
            stop: tokio::sync::Notify::new(),
            timeout: config.timeout,
        });
        log::info!(
            "ping: TCP SYN over IPv{} from port {local_port}, receive buffer {buffer} bytes{}",
            if config.v6 { 6 } else { 4 },
            interface
                .map(|name| format!(", bound to {name}"))
                .unwrap_or_default()
        );
        tokio::spawn(Arc::clone(&driver).receive_loop());
        Ok(driver)
    }

    /// The source address the kernel would use towards `target` (a connected UDP socket asks
    /// the routing table; nothing is sent).
    fn source_for(&self, target: IpAddr, port: u16) -> io::Result<IpAddr> {
        if let Some(source) = lock(&self.sources).get(&target) {
            return Ok(*source);
        }
        let any: SocketAddr = if self.v6 {
            "[::]:0".parse().unwrap()
        } else {
            "0.0.0.0:0".parse().unwrap()
        };
        let probe = UdpSocket::bind(any)?;
        if let Some(interface) = &self.interface {
            let name = interface.as_bytes();
            // SAFETY: the name is a valid buffer for the call.
            let rc = unsafe {
                libc::setsockopt(
                    probe.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_BINDTODEVICE,
                    name.as_ptr().cast(),
                    name.len() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        probe.connect(SocketAddr::new(target, port))?;
        let source = probe.local_addr()?.ip();
        let mut sources = lock(&self.sources);
        if sources.len() >= MAX_CACHED_SOURCES {
            sources.clear();
        }
        sources.insert(target, source);
        Ok(source)
    }

    async fn receive_loop(self: Arc<Self>) {
        receiver::receive_loop(
            &self.fd,
            &self.stop,
            "TCP raw",
            &self.counters.errors,
            self.timeout,
            |buffer| self.drain_error_queue(buffer),
            |bytes, received, now, error_buffer| {
                self.handle_segment(bytes, received, now, error_buffer)
            },
            |now| {
                lock(&self.in_flight).expire(now);
            },
        )
        .await;
    }

    fn drain_error_queue(&self, buffer: &mut ReceiveBatch) {
        receiver::drain_error_queue(&self.fd, buffer, |control| {
            lock(&self.in_flight).transmit_stamp(control)
        });
    }

    fn handle_segment(
        &self,
        bytes: &[u8],
        received: &socket::Received,
        now: Instant,
        error_buffer: &mut ReceiveBatch,
    ) {
        let Some(segment) = packet::parse_tcp_segment(!self.v6, bytes) else {
            return;
        };
        if segment.dst_port != self.local_port {
            return;
        }
        let Some(reply) = segment.syn_reply() else {
            return;
        };
        let Some(from) = segment.src.or(received.from) else {
            return;
        };
        let key = (from, segment.src_port, segment.ack);
        if lock(&self.in_flight).lacks_transmit_stamp(&key) {
            self.drain_error_queue(error_buffer);
        }
        let matched =
            lock(&self.in_flight).reply(&key, &received.control, now, reply == SynReply::Rst);
        if let Some(matched) = matched {
            // Counted before the outcome is recorded: the metric never lags the replies.
            if let Some(watch) = &self.hardware {
                watch.observe(matched.hardware, now);
            }
            ProtocolCounters::count(&self.counters.received);
            lock(&matched.probe.stats).record(matched.outcome);
        }
    }
}

impl Sender for TcpDriver {
    fn retire(&self) {
        self.stop.notify_one();
    }

    fn room(&self) -> usize {
        // Without the figure (never seen), no pacing: as before.
        socket::receive_memory(socket::raw(self.fd.get_ref()))
            .map_or(usize::MAX, |(queued, buffer)| {
                room_in_receive_buffer(queued, buffer)
            })
    }

    fn send(&self, probe: &Arc<ActiveProbe>) -> io::Result<()> {
        let target = probe.key.address;
        let port = probe.key.tcp_port.unwrap_or(0);
        let source = self
            .source_for(target, port)
            .inspect_err(|_| ProtocolCounters::count(&self.counters.errors))?;
        let mut state = lock(&self.state);
        let isn = state.random.next_u64() as u32;
        let syn = packet::build_syn(&Syn {
            src: source,
            dst: target,
            src_port: self.local_port,
            dst_port: port,
            isn,
        });
        let sent = Instant::now();
        if let Err(err) = self.sender.send(
            socket::raw(self.fd.get_ref()),
            &syn,
            SocketAddr::new(target, 0),
            state.sends,
        ) {
            ProtocolCounters::count(&self.counters.errors);
            return Err(err);
        }
        lock(&self.in_flight).insert(
            (target, port, isn.wrapping_add(1)),
            state.sends,
            Arc::clone(probe),
            sent,
        );
        state.sends = state.sends.wrapping_add(1);
        ProtocolCounters::count(&self.counters.sent);
        lock(&probe.stats).record_sent();
        Ok(())
    }
}
