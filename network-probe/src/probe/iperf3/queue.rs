//! The per-server queue: one test at a time per server (iperf3 serves one client at a time),
//! keyed by address so `localhost` and `127.0.0.1` share one queue; at most [`MAX_WAITERS`]
//! probes wait, more fail with reason `busy`; a queue is forgotten once nobody uses it. While
//! holding the server, a busy server or a refused connection is retried with backoff as long as
//! a useful test still fits before the deadline (the test is shortened to fit).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use tokio::sync::Semaphore;

use super::{Config, Failure, FailureReason, control::run_test, report::Measurement};
use crate::probe::{
    ProbeContext,
    target::{ResolveError, SystemResolver, resolve},
};

/// Probes that may wait for one server while a test runs; more fail with reason `busy`.
pub const MAX_WAITERS: usize = 8;
/// Time reserved around the test for connecting, the exchanges and draining.
pub const EXCHANGE_MARGIN: Duration = Duration::from_millis(1500);
/// Shortest test worth running.
pub const MIN_PERIOD: Duration = Duration::from_millis(200);
/// First wait before retrying a server busy with another client; doubles each time.
const BUSY_BACKOFF: Duration = Duration::from_millis(250);
/// Attempts at a refused control connection (the server may be reopening its listener).
const CONNECT_ATTEMPTS: u32 = 3;
/// Wait between them.
const CONNECT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The prober and its state: one queue per server.
#[derive(Debug, Default)]
pub struct Iperf3Prober {
    servers: Mutex<HashMap<String, Arc<ServerSlot>>>,
}

/// One server's queue: a single permit, and how many probes wait for it.
#[derive(Debug)]
pub(super) struct ServerSlot {
    permit: Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Iperf3Prober {
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves `config`'s host and measures (for callers outside `/probe`, such as the
    /// benchmark; `/probe` hands over the addresses it resolved, see [`Self::measure_at`]).
    pub async fn measure(
        &self,
        ctx: &ProbeContext,
        config: &Config,
    ) -> Result<Measurement, Failure> {
        let addresses = resolve(&SystemResolver, &config.host, ctx.deadline).await;
        self.measure_at(ctx, config, &addresses).await
    }

    /// Waits for the server's turn, then runs the test, retrying while the server is busy.
    /// `addresses` are what the target resolved to; the first of the bind address' family
    /// (or the first) is tested.
    pub async fn measure_at(
        &self,
        ctx: &ProbeContext,
        config: &Config,
        addresses: &Result<Vec<IpAddr>, ResolveError>,
    ) -> Result<Measurement, Failure> {
        let address = choose(config, addresses)?;
        ctx.log(format!("resolved {:?} to {address}", config.host));
        // Keyed by address, so `localhost` and `127.0.0.1` share one queue.
        let key = address.to_string();
        let slot = self.slot(&key);
        let result = take_turn(&slot, ctx, config, address).await;
        drop(slot);
        self.release(&key);
        result
    }

    pub(super) fn slot(&self, key: &str) -> Arc<ServerSlot> {
        let mut servers = crate::support::sync::lock(&self.servers);
        Arc::clone(servers.entry(key.to_string()).or_insert_with(|| {
            Arc::new(ServerSlot {
                permit: Semaphore::new(1),
                waiting: Default::default(),
            })
        }))
    }

    /// Forgets a server's queue once nobody uses it.
    pub(super) fn release(&self, key: &str) {
        let mut servers = crate::support::sync::lock(&self.servers);
        if servers
            .get(key)
            .is_some_and(|slot| Arc::strong_count(slot) == 1)
        {
            servers.remove(key);
        }
    }

    /// Servers with a queue right now (tests).
    pub fn queued_servers(&self) -> usize {
        crate::support::sync::lock(&self.servers).len()
    }
}

/// The address to test: the first of the bind address' family, or the first.
fn choose(
    config: &Config,
    addresses: &Result<Vec<IpAddr>, ResolveError>,
) -> Result<SocketAddr, Failure> {
    let addresses = addresses
        .as_ref()
        .map_err(|err| Failure::new(FailureReason::ResolveFailed, err.to_string()))?;
    let chosen = match config.bind {
        Some(bind) => addresses
            .iter()
            .find(|address| address.is_ipv4() == bind.is_ipv4()),
        None => addresses.first(),
    };
    let address = *chosen.ok_or_else(|| {
        Failure::new(
            FailureReason::ResolveFailed,
            format!(
                "{:?} has no address of the bind address' family",
                config.host
            ),
        )
    })?;
    Ok(SocketAddr::new(address, config.port))
}

/// Waits in `slot`'s queue (bounded), then runs the test while holding the server's permit.
async fn take_turn(
    slot: &ServerSlot,
    ctx: &ProbeContext,
    config: &Config,
    address: SocketAddr,
) -> Result<Measurement, Failure> {
    if slot.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITERS {
        slot.waiting.fetch_sub(1, Ordering::SeqCst);
        return Err(Failure::new(
            FailureReason::Busy,
            format!("{MAX_WAITERS} probes already wait for this server"),
        ));
    }
    let deadline = tokio::time::Instant::from_std(ctx.deadline);
    let acquired = tokio::time::timeout_at(deadline, slot.permit.acquire()).await;
    slot.waiting.fetch_sub(1, Ordering::SeqCst);
    let Ok(Ok(_permit)) = acquired else {
        return Err(Failure::new(
            FailureReason::Busy,
            "the deadline passed while other probes of this server ran",
        ));
    };
    ctx.log(format!("server {address} is ours"));
    run_with_retries(ctx, config, address).await
}

/// Runs the test; a busy server is retried with backoff while a useful test still fits.
async fn run_with_retries(
    ctx: &ProbeContext,
    config: &Config,
    address: SocketAddr,
) -> Result<Measurement, Failure> {
    let deadline = tokio::time::Instant::from_std(ctx.deadline);
    let mut backoff = BUSY_BACKOFF;
    let mut attempts = 0;
    let mut last_failure: Option<Failure> = None;
    loop {
        let Some(period) = fit_period(config.period, ctx.remaining()) else {
            return Err(if let Some(last) = last_failure {
                Failure::new(
                    last.reason,
                    format!("{} (gave up after {attempts} attempts)", last.message),
                )
            } else {
                Failure::new(
                    FailureReason::Timeout,
                    format!(
                        "{:.1} s left: not enough for a test and the exchanges",
                        ctx.remaining().as_secs_f64()
                    ),
                )
            });
        };
        if period < config.period {
            let line = format!(
                "period {:.3} s does not fit before the deadline; running {:.3} s",
                config.period.as_secs_f64(),
                period.as_secs_f64()
            );
            log::info!("iperf3 {}: {line}", config.server_key());
            ctx.log(line);
        }
        attempts += 1;
        let test = run_test(ctx, config, address, period);
        match tokio::time::timeout_at(deadline, test).await {
            Ok(Err(failure))
                if failure.retry
                    && (failure.reason != FailureReason::ConnectFailed
                        || attempts < CONNECT_ATTEMPTS) =>
            {
                let wait = if failure.reason == FailureReason::ConnectFailed {
                    CONNECT_RETRY_DELAY
                } else {
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(4));
                    wait
                };
                ctx.log(format!(
                    "{} ({}); retrying in {} ms",
                    failure.reason,
                    failure.message,
                    wait.as_millis()
                ));
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + wait)).await;
                last_failure = Some(failure);
            }
            Ok(result) => return result,
            Err(_) => {
                return Err(Failure::new(
                    FailureReason::Timeout,
                    "the test did not finish before the deadline",
                ));
            }
        }
    }
}

/// The test length that fits in `remaining` with [`EXCHANGE_MARGIN`] to spare, or `None`.
pub fn fit_period(wanted: Duration, remaining: Duration) -> Option<Duration> {
    let available = remaining.checked_sub(EXCHANGE_MARGIN)?;
    (available >= MIN_PERIOD).then(|| wanted.min(available))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Query;
    use std::time::Instant;

    #[test]
    fn period_is_shortened_to_fit_the_deadline() {
        let wanted = Duration::from_secs(10);
        assert_eq!(fit_period(wanted, Duration::from_secs(30)), Some(wanted));
        assert_eq!(
            fit_period(wanted, Duration::from_secs(4)),
            Some(Duration::from_secs(4) - EXCHANGE_MARGIN)
        );
        assert_eq!(fit_period(wanted, EXCHANGE_MARGIN + MIN_PERIOD / 2), None);
        assert_eq!(fit_period(wanted, Duration::ZERO), None);
    }

    #[tokio::test]
    async fn queue_is_bounded_and_forgotten() {
        let prober = Iperf3Prober::new();
        let slot = prober.slot("a:1");
        let _held = slot.permit.acquire().await.unwrap();
        slot.waiting.store(MAX_WAITERS, Ordering::SeqCst);
        let ctx = ProbeContext::new(Instant::now() + Duration::from_secs(5));
        let c = Config::from_query(&Query::from_pairs([("target", "127.0.0.1:1")])).unwrap();
        let key = "127.0.0.1:1";
        let other = prober.slot(key);
        other.waiting.store(MAX_WAITERS, Ordering::SeqCst);
        let failure = prober.measure(&ctx, &c).await.unwrap_err();
        assert_eq!(failure.reason, FailureReason::Busy);
        other.waiting.store(0, Ordering::SeqCst);
        drop(other);
        prober.release(key);
        assert_eq!(prober.queued_servers(), 1);
    }
}
