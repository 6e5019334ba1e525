//! The ICMP echo driver: one long-lived socket per address family shared by every ICMP target
//! (a fresh socket often misses the stamp of its first reply), raw or datagram ("ping socket",
//! where `ping_group_range` allows it). It sends echo requests, reads their transmit stamps
//! from the error queue, matches replies by identifier, sequence and cookie, and expires
//! unanswered requests as loss.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::io::{Interest, unix::AsyncFd};

use super::{
    hardware::HardwareWatch,
    mmsg::{self, ReceiveBatch, SendBatch},
    packet::{self, Echo},
    receiver,
    scheduler::{
        ActiveProbe, Due, InFlightTable, ProtocolCounters, Sender, lock, room_in_receive_buffer,
    },
    socket::{self, StampedSender},
};

/// Which kind of ICMP socket to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SocketMode {
    /// A datagram ICMP socket if `net.ipv4.ping_group_range` admits our group, else raw.
    Auto,
    /// SOCK_RAW: needs CAP_NET_RAW; sees every echo reply of the host, filtered here.
    Raw,
    /// SOCK_DGRAM: the kernel assigns replies by identifier; needs ping_group_range.
    Datagram,
}

/// How to open the socket of one family.
#[derive(Clone, Debug)]
pub(crate) struct IcmpConfig {
    pub v6: bool,
    pub mode: SocketMode,
    pub identifier: u16,
    pub interface: Option<String>,
    pub stamp_flags: u32,
    pub timeout: Duration,
    /// Set when the socket is set up for hardware stamps (`--ping.hard` enabled them).
    pub hardware: Option<Arc<HardwareWatch>>,
}

#[derive(Debug)]
struct SendState {
    next_seq: u16,
    /// Successful sends so far: the stamp key of the next one.
    sends: u32,
    /// The `sendmmsg` buffers, reused batch after batch.
    batch: SendBatch,
}

/// The ICMP socket of one family and its probes in flight.
#[derive(Debug)]
pub(crate) struct IcmpDriver {
    v6: bool,
    raw: bool,
    fd: AsyncFd<OwnedFd>,
    identifier: u16,
    cookie: u64,
    state: Mutex<SendState>,
    in_flight: Mutex<InFlightTable<(IpAddr, u16)>>,
    sender: StampedSender,
    counters: Arc<ProtocolCounters>,
    hardware: Option<Arc<HardwareWatch>>,
    /// Ends the receive loop (the driver was replaced).
    stop: tokio::sync::Notify,
    /// `--ping.timeout` (the sweeps' period follows it).
    timeout: Duration,
}

impl IcmpDriver {
    /// Opens the socket and starts its receive and expiry tasks (inside the tokio runtime).
    pub(crate) fn start(
        config: &IcmpConfig,
        counters: Arc<ProtocolCounters>,
    ) -> io::Result<Arc<Self>> {
        let (fd, raw) = open_socket(config)?;
        let identifier = if raw {
            config.identifier
        } else {
            // Datagram sockets: the identifier is the socket's "port".
            socket::local_address(socket::raw(&fd))?.port()
        };
        let buffer = socket::receive_buffer(socket::raw(&fd))?;
        let driver = Arc::new(IcmpDriver {
            v6: config.v6,
            raw,
            // SAFETY: the AsyncFd owns the descriptor and keeps it open until dropped.
            fd: unsafe {
                AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::ERROR)
            }?,
            identifier,
            cookie: crate::support::random::u64(),
            state: Mutex::new(SendState {
                next_seq: 0,
                sends: 0,
                batch: SendBatch::default(),
            }),
            in_flight: Mutex::new(InFlightTable::new(config.timeout)),
            sender: StampedSender::default(),
            counters,
            hardware: config.hardware.clone(),
            stop: tokio::sync::Notify::new(),
            timeout: config.timeout,
        });
        log::info!(
            "ping: ICMPv{} {} socket, identifier {identifier}, receive buffer {buffer} bytes{}",
            if config.v6 { 6 } else { 4 },
            if raw { "raw" } else { "datagram" },
            config
                .interface
                .as_deref()
                .map(|name| format!(", bound to {name}"))
                .unwrap_or_default()
        );
        tokio::spawn(Arc::clone(&driver).receive_loop());
        Ok(driver)
    }

    async fn receive_loop(self: Arc<Self>) {
        receiver::receive_loop(
            &self.fd,
            &self.stop,
            "ICMP",
            &self.counters.errors,
            self.timeout,
            |buffer| self.drain_error_queue(buffer),
            |bytes, received, now, error_buffer| {
                self.handle_reply(bytes, received, now, error_buffer)
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

    fn handle_reply(
        &self,
        bytes: &[u8],
        received: &socket::Received,
        now: Instant,
        error_buffer: &mut ReceiveBatch,
    ) {
        let with_header = self.raw && !self.v6;
        let Some(echo) = packet::parse_echo_reply(self.v6, with_header, bytes) else {
            return;
        };
        let Some(from) = received.from else { return };
        if echo.id != self.identifier || echo.cookie != self.cookie {
            return;
        }
        let key = (from, echo.seq);
        if lock(&self.in_flight).lacks_transmit_stamp(&key) {
            self.drain_error_queue(error_buffer);
        }
        let matched = lock(&self.in_flight).reply(&key, &received.control, now, false);
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

impl Sender for IcmpDriver {
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
        let address = probe.key.address;
        let mut state = lock(&self.state);
        let seq = state.next_seq;
        state.next_seq = seq.wrapping_add(1);
        let echo = Echo {
            id: self.identifier,
            seq,
            cookie: self.cookie,
        };
        let request = packet::build_echo_request(self.v6, &echo);
        let sent = Instant::now();
        let result = self.sender.send(
            socket::raw(self.fd.get_ref()),
            &request,
            SocketAddr::new(address, 0),
            state.sends,
        );
        if let Err(err) = result {
            ProtocolCounters::count(&self.counters.errors);
            return Err(err);
        }
        lock(&self.in_flight).insert((address, seq), state.sends, Arc::clone(probe), sent);
        state.sends = state.sends.wrapping_add(1);
        ProtocolCounters::count(&self.counters.sent);
        lock(&probe.stats).record_sent();
        Ok(())
    }

    /// One `sendmmsg` per [`mmsg::BATCH`] probes. Sequence numbers and stamp keys are given as
    /// [`Self::send`] gives them one by one: a failed send uses up its sequence number, not a
    /// stamp key; the probes after it are renumbered and sent again from there. A full send
    /// buffer (`EAGAIN`: the packets before are still on their way out) ends the batch: the
    /// rest is neither sent nor lost, the scheduler holds it back.
    fn send_batch(
        &self,
        due: &[Due],
        failed: &mut dyn FnMut(&Arc<ActiveProbe>, io::Error),
    ) -> usize {
        let fd = socket::raw(self.fd.get_ref());
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let mut rest = due;
        while !rest.is_empty() {
            let explicit = self.sender.explicit_keys();
            state.batch.clear();
            for (offset, entry) in rest.iter().take(mmsg::BATCH).enumerate() {
                let echo = Echo {
                    id: self.identifier,
                    seq: state.next_seq.wrapping_add(offset as u16),
                    cookie: self.cookie,
                };
                state.batch.push(
                    &packet::build_echo_request(self.v6, &echo),
                    SocketAddr::new(entry.probe.key.address, 0),
                    explicit.then(|| state.sends.wrapping_add(offset as u32)),
                );
            }
            let sent_at = Instant::now();
            match state.batch.send(fd, 0) {
                Ok(count) => {
                    let mut in_flight = lock(&self.in_flight);
                    for (offset, entry) in rest[..count].iter().enumerate() {
                        let seq = state.next_seq.wrapping_add(offset as u16);
                        let key = state.sends.wrapping_add(offset as u32);
                        in_flight.insert(
                            (entry.probe.key.address, seq),
                            key,
                            Arc::clone(&entry.probe),
                            sent_at,
                        );
                    }
                    drop(in_flight);
                    for entry in &rest[..count] {
                        ProtocolCounters::count(&self.counters.sent);
                        lock(&entry.probe.stats).record_sent();
                    }
                    state.next_seq = state.next_seq.wrapping_add(count as u16);
                    state.sends = state.sends.wrapping_add(count as u32);
                    rest = &rest[count..];
                }
                Err(err) if explicit && err.raw_os_error() == Some(libc::EINVAL) => {
                    self.sender.no_explicit_keys();
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    ProtocolCounters::count(&self.counters.errors);
                    state.next_seq = state.next_seq.wrapping_add(1);
                    failed(&rest[0].probe, err);
                    rest = &rest[1..];
                }
            }
        }
        due.len() - rest.len()
    }
}

/// Opens the socket `config` asks for; returns it and whether it is raw.
fn open_socket(config: &IcmpConfig) -> io::Result<(OwnedFd, bool)> {
    let protocol = if config.v6 {
        libc::IPPROTO_ICMPV6
    } else {
        libc::IPPROTO_ICMP
    };
    let interface = config.interface.as_deref();
    let datagram = || -> io::Result<OwnedFd> {
        let fd = socket::open(
            config.v6,
            libc::SOCK_DGRAM,
            protocol,
            config.stamp_flags,
            interface,
        )?;
        let unspecified: IpAddr = if config.v6 {
            "::".parse().unwrap()
        } else {
            "0.0.0.0".parse().unwrap()
        };
        // Ask for our identifier as the port; another socket may hold it, then any will do.
        if socket::bind(
            socket::raw(&fd),
            SocketAddr::new(unspecified, config.identifier),
        )
        .is_err()
        {
            socket::bind(socket::raw(&fd), SocketAddr::new(unspecified, 0))?;
        }
        Ok(fd)
    };
    let raw = || -> io::Result<OwnedFd> {
        let fd = socket::open(
            config.v6,
            libc::SOCK_RAW,
            protocol,
            config.stamp_flags,
            interface,
        )?;
        install_reply_filter(socket::raw(&fd), config.v6)?;
        Ok(fd)
    };
    match config.mode {
        SocketMode::Raw => Ok((raw()?, true)),
        SocketMode::Datagram => Ok((datagram()?, false)),
        SocketMode::Auto => match datagram() {
            Ok(fd) => Ok((fd, false)),
            Err(err) => {
                log::debug!("ping: no datagram ICMP socket ({err}); using a raw one");
                Ok((raw()?, true))
            }
        },
    }
}

/// Lets only echo replies through to a raw socket (the kernel then drops our own requests
/// looped back on lo and every other ICMP type before they are copied to us).
fn install_reply_filter(fd: std::os::fd::RawFd, v6: bool) -> io::Result<()> {
    const ICMP_FILTER: i32 = 1;
    const ICMPV6_FILTER: i32 = 1;
    if v6 {
        // struct icmp6_filter: a set bit blocks that type.
        let mut blocked = [u32::MAX; 8];
        let reply = usize::from(packet::ICMPV6_ECHO_REPLY);
        blocked[reply >> 5] &= !(1 << (reply & 31));
        socket::set_option(fd, libc::IPPROTO_ICMPV6, ICMPV6_FILTER, &blocked)
    } else {
        let blocked: u32 = !(1 << packet::ICMP_ECHO_REPLY);
        socket::set_option(fd, libc::SOL_RAW, ICMP_FILTER, &blocked)
    }
}
