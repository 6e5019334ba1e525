//! The connection limit of `--web.max-connections` and what frees its slots: every accepted
//! connection (on any listener) holds one of N slots until it ends; a connection whose writes
//! make no progress for [`WRITE_TIMEOUT`] is closed; one that sends nothing is closed by the
//! header timeout of [`super::listen`]. Their metrics: open connections and connections
//! refused or closed by a limit, by reason.
//!
//! When all N slots are taken, a new connection takes the slot of the connection that has been
//! *stalled* longest: waiting for a request (including a TLS handshake) or blocked writing to a
//! client that does not read. That connection is closed. Connections doing work (a request
//! being answered and its response going out) are never taken over; when every slot is such a
//! connection, the listener stops accepting: new connections wait in the kernel's backlog
//! (the accepted one for at most [`ADMISSION_WAIT`], then it is closed) until a slot frees.
//! Why: refusing newcomers while full lets 512 silent sockets lock Prometheus out for as long as
//! they stay, and stopping the accept loop keeps its connection behind them in the backlog;
//! taking over stalled slots lets a scrape in at once (it is the newest, so the last to be taken
//! over), and the attacker's own connections are what gets closed. What remains: a client that
//! keeps all N slots busy with work (answered requests, read at a steady pace), which
//! `--web.max-concurrent-probes` and the timeouts make expensive but not impossible.

use std::{
    collections::HashMap,
    io::IoSlice,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
};

use crate::support::sync::lock;

/// How long a connection's writes may make no progress (the client does not read its
/// response) before the connection is closed.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an accepted connection waits for a slot while every slot is busy with work; then
/// it is closed (counted as `max_connections`).
pub(super) const ADMISSION_WAIT: Duration = Duration::from_secs(10);

/// Why the daemon refused or closed a connection; the `reason` label of
/// `network_probe_web_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// Every slot was busy with work for [`ADMISSION_WAIT`]: the new connection was closed.
    MaxConnections,
    /// Closed to give its slot to a new connection: it was the one stalled longest.
    Evicted,
    /// No complete request head within the header timeout, on a connection that had sent none.
    HeaderTimeout,
    /// No new request within the header timeout after the last response (keep-alive).
    IdleTimeout,
    /// Writes made no progress for [`WRITE_TIMEOUT`].
    WriteTimeout,
    /// The TLS handshake did not finish within the header timeout.
    TlsHandshakeTimeout,
}

impl Reason {
    const ALL: [Reason; 6] = [
        Reason::MaxConnections,
        Reason::Evicted,
        Reason::HeaderTimeout,
        Reason::IdleTimeout,
        Reason::WriteTimeout,
        Reason::TlsHandshakeTimeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Reason::MaxConnections => "max_connections",
            Reason::Evicted => "evicted",
            Reason::HeaderTimeout => "header_timeout",
            Reason::IdleTimeout => "idle_timeout",
            Reason::WriteTimeout => "write_timeout",
            Reason::TlsHandshakeTimeout => "tls_handshake_timeout",
        }
    }
}

/// The slots of `--web.max-connections`, shared by every listener.
#[derive(Debug)]
pub struct Connections {
    max: usize,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
    /// Signalled when a slot is given back.
    released: Notify,
    rejected: [AtomicU64; Reason::ALL.len()],
}

impl Connections {
    /// At most `max` connections at once (at least 1).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Connections {
            max: max.max(1),
            open: Mutex::default(),
            next_id: AtomicU64::new(0),
            released: Notify::new(),
            rejected: Default::default(),
        })
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The collector of `network_probe_web_connections_open` and
    /// `network_probe_web_connections_rejected_total`.
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(ConnectionsCollector(Arc::clone(self)))
    }

    pub(super) fn count(&self, reason: Reason) {
        let index = Reason::ALL.iter().position(|&r| r == reason).unwrap_or(0);
        self.rejected[index].fetch_add(1, Ordering::Relaxed);
    }

    /// A slot for a new connection: a free one, or the one of the connection stalled longest
    /// (which is told to close: `.1` is true then, and the caller should yield so that it does
    /// before the next accept). `None` while every slot is busy with work.
    pub(super) fn try_admit(self: &Arc<Self>) -> Option<(Slot, bool)> {
        let mut open = lock(&self.open);
        let mut evicted = false;
        if open.len() >= self.max {
            let (_, oldest) = open
                .iter()
                .filter_map(|(&id, activity)| Some((activity.stalled_since()?, id)))
                .min()?;
            if let Some(activity) = open.remove(&oldest) {
                activity.evicted.notify_one();
            }
            self.count(Reason::Evicted);
            evicted = true;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        open.insert(id, Arc::clone(&activity));
        Some((
            Slot {
                connections: Arc::clone(self),
                id,
                activity,
            },
            evicted,
        ))
    }

    /// Waits until a slot may have freed (one was given back, or `poll` passed).
    pub(super) async fn released(&self, poll: Duration) {
        tokio::select! {
            () = self.released.notified() => {}
            () = tokio::time::sleep(poll) => {}
        }
    }

    fn open_count(&self) -> usize {
        lock(&self.open).len()
    }
}

/// A connection's slot, given back on drop.
#[derive(Debug)]
pub(super) struct Slot {
    connections: Arc<Connections>,
    id: u64,
    pub(super) activity: Arc<Activity>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.connections.open).remove(&self.id);
        self.connections.released.notify_one();
    }
}

/// What one connection is doing, as far as the limit cares.
#[derive(Debug)]
pub(super) struct Activity {
    state: Mutex<ActivityState>,
    /// Signalled when the connection's slot was given to a new connection.
    evicted: Notify,
    /// Signalled when writes start to block.
    write_blocked: Notify,
}

#[derive(Debug)]
struct ActivityState {
    /// Requests whose response has not been handed to hyper in full.
    in_flight: usize,
    /// Requests answered (or being answered).
    requests: u64,
    /// Since when no request has been in flight (the accept, or the last response).
    idle_since: Instant,
    /// Since when a write has been pending.
    write_blocked_since: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                requests: 0,
                idle_since: Instant::now(),
                write_blocked_since: None,
            }),
            evicted: Notify::new(),
            write_blocked: Notify::new(),
        }
    }

    /// Since when the connection has been doing nothing useful: waiting for a request or
    /// blocked writing; `None` while it works on a request.
    fn stalled_since(&self) -> Option<Instant> {
        let state = lock(&self.state);
        let idle = (state.in_flight == 0).then_some(state.idle_since);
        match (idle, state.write_blocked_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Marks a request in flight until the returned guard (kept with its response body) drops.
    pub(super) fn begin_request(self: &Arc<Self>) -> InFlight {
        let mut state = lock(&self.state);
        state.in_flight += 1;
        state.requests += 1;
        InFlight(Arc::clone(self))
    }

    /// Whether the connection has had a request (so a header timeout is an idle keep-alive
    /// connection timing out rather than a client that never completed a request).
    pub(super) fn had_requests(&self) -> bool {
        lock(&self.state).requests > 0
    }

    fn set_write_blocked(&self, blocked: bool) {
        let mut state = lock(&self.state);
        if blocked {
            state.write_blocked_since.get_or_insert_with(Instant::now);
            drop(state);
            self.write_blocked.notify_one();
        } else {
            state.write_blocked_since = None;
        }
    }

    /// Completes when the slot was given to another connection.
    pub(super) async fn evicted(&self) {
        self.evicted.notified().await;
    }

    /// Completes once a write has been pending for `limit` without progress.
    pub(super) async fn write_stalled(&self, limit: Duration) {
        loop {
            let since = lock(&self.state).write_blocked_since;
            match since {
                None => self.write_blocked.notified().await,
                Some(since) => {
                    let deadline = since + limit;
                    if Instant::now() >= deadline {
                        return;
                    }
                    tokio::time::sleep_until(deadline.into()).await;
                }
            }
        }
    }
}

/// A request in flight on a connection (see [`Activity::begin_request`]).
#[derive(Debug)]
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
        }
    }
}

/// A response body that keeps its request [`InFlight`] until hyper has taken all of it (or
/// dropped it with the connection).
#[derive(Debug)]
pub(super) struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub(super) fn new(body: B, in_flight: InFlight) -> Self {
        Tracked {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A socket that tells its connection's [`Activity`] when writes block and when they make
/// progress again (under TLS, so handshake writes count too).
#[derive(Debug)]
pub(super) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    blocked: bool,
}

impl<S> Watched<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Watched {
            inner,
            activity,
            blocked: false,
        }
    }

    fn observe<T>(&mut self, poll: Poll<T>) -> Poll<T> {
        let blocked = poll.is_pending();
        if blocked != self.blocked {
            self.blocked = blocked;
            self.activity.set_write_blocked(blocked);
        }
        poll
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.observe(poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.observe(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.observe(poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.observe(poll)
    }
}

#[derive(Debug)]
struct ConnectionsCollector(Arc<Connections>);

impl Collector for ConnectionsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(self.0.open_count() as i64);
        gauge.encode(encoder.encode_descriptor(
            "network_probe_web_connections_open",
            "HTTP connections open now, on all listeners (at most --web.max-connections)",
            None,
            gauge.metric_type(),
        )?)?;
        let limit = ConstGauge::new(self.0.max as i64);
        limit.encode(encoder.encode_descriptor(
            "network_probe_web_connections_max",
            "The limit of open HTTP connections, --web.max-connections",
            None,
            limit.metric_type(),
        )?)?;
        let mut family = encoder.encode_descriptor(
            "network_probe_web_connections_rejected",
            "HTTP connections refused or closed by a limit (connection limit, timeouts), by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in Reason::ALL.iter().zip(&self.0.rejected) {
            ConstCounter::new(count.load(Ordering::Relaxed))
                .encode(family.encode_family(&[("reason", reason.label())])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_slots_go_to_the_connection_stalled_longest() {
        let connections = Connections::new(2);
        let (first, evicted) = connections.try_admit().unwrap();
        assert!(!evicted);
        let (second, _) = connections.try_admit().unwrap();
        // Both working: nothing to take over.
        let busy_first = first.activity.begin_request();
        let busy_second = second.activity.begin_request();
        assert!(connections.try_admit().is_none());
        // The second answered; the first blocks writing a little later: the second has
        // been stalled longest.
        drop(busy_second);
        std::thread::sleep(Duration::from_millis(5));
        first.activity.set_write_blocked(true);
        let (third, evicted) = connections.try_admit().unwrap();
        assert!(evicted);
        assert_eq!(connections.open_count(), 2);
        assert!(!lock(&connections.open).contains_key(&second.id));
        // The evicted slot's drop gives back nothing twice.
        drop(second);
        assert_eq!(connections.open_count(), 2);
        drop((third, busy_first, first));
        assert_eq!(connections.open_count(), 0);
        assert_eq!(
            connections.rejected[1].load(Ordering::Relaxed),
            1,
            "one eviction counted"
        );
    }
}
