//! A `target=` value from parsing to addresses, the same way for every prober: one syntax
//! ([`split_host_port`]), one resolver ([`Resolver`], the system's on threads of its own in
//! production), one resolution per target and request ([`resolve`]) and one failure
//! vocabulary ([`ResolveError`], the `resolve_failed` reason for every prober that reports
//! reasons).
//!
//! Resolving once matters for the allowlist: the `/probe` handler judges a name by the
//! addresses it resolved to and hands those same addresses to the prober, which never resolves
//! again, so a DNS answer that changes between the check and the probe cannot matter (before,
//! the handler and the prober each resolved; see docs/probe-routing.md).
//!
//! Lookups have a budget of their own. getaddrinfo blocks its thread and cannot be cancelled;
//! through `tokio::net::lookup_host` it ran on tokio's blocking pool (up to 512 threads), and a
//! probe deadline dropped the future but not the thread, so short-deadline requests for names
//! whose DNS never answers filled the pool that scrapes, the flow sweep and bcrypt also use.
//! [`SystemResolver`] now runs getaddrinfo on a [`LookupPool`] of its own:
//! `--probe.max-concurrent-lookups` threads (16 by default) with a queue of 8 lookups per
//! thread in front. A lookup waits for a thread at most until its deadline (`resolve_failed`,
//! timeout) and is refused at once when the queue is full (`resolve_failed`, "not looked up");
//! `network_probe_probe_lookups_total{result}` counts both. Nothing else of the daemon waits
//! for these threads, so a flood of slow names costs lookups, never scrapes.
//!
//! Why threads around getaddrinfo rather than an async DNS client (hickory-resolver, which
//! speaks DNS itself over UDP/TCP with per-query timeouts, and whose lookups end when dropped):
//! - behaviour: getaddrinfo is what the daemon used, with everything the system configures:
//!   nsswitch.conf (files, dns, myhostname, resolve, mdns, ldap, ...), /etc/hosts, the search
//!   domains, `ndots` and other resolv.conf options, gai.conf address ordering. hickory reads
//!   resolv.conf and /etc/hosts but knows no NSS module, so names served by nss-resolve,
//!   nss-myhostname or a directory would stop resolving, and address order could change;
//! - dependencies: none new (std threads, the tokio oneshot already built), against
//!   hickory-resolver and hickory-proto with their own dependency trees even with default
//!   features off (tokio runtime only, no DNSSEC, no DoH/DoT);
//! - cost: a lookup whose caller gave up keeps its thread until glibc's own timeouts (5 s
//!   times 2 attempts per query and search domain by default), so under a flood of slow names
//!   lookups of good names are refused or time out as well, until the threads free up. That is
//!   the bound doing its work: at most N threads and N × 8 queued lookups, whatever the
//!   callers do, and nothing outside name resolution waits. An async client would free its
//!   slot at the deadline, a cheaper failure mode, but not worth the behaviour change above.

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    io,
    net::{IpAddr, Ipv6Addr, ToSocketAddrs as _},
    pin::Pin,
    sync::{
        Arc, Condvar, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use tokio::sync::oneshot;

use super::BadRequest;
use crate::support::sync::lock;

/// A future a trait object can return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One `target=` of a request, parsed and resolved once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The value as the request gave it.
    pub raw: String,
    /// The host part: a name, or an address without brackets.
    pub host: String,
    /// The port the target names, if any.
    pub port: Option<u16>,
    /// What the host resolved to (an address resolves to itself without a lookup).
    pub addresses: Result<Vec<IpAddr>, ResolveError>,
}

impl Target {
    /// Parses and resolves `raw` with `resolver`, with no allowlist: for callers that run a
    /// prober directly (integration tests, benchmarks). `/probe` goes through
    /// [`super::handler`], which judges the allowlist on the same resolution.
    pub async fn resolve(
        raw: &str,
        resolver: &dyn Resolver,
        deadline: Instant,
    ) -> Result<Target, BadRequest> {
        let (host, port) = split_host_port(raw)?;
        let addresses = resolve(resolver, &host, deadline).await;
        Ok(Target {
            raw: raw.to_string(),
            host,
            port,
            addresses,
        })
    }
}

/// Why a target has no address to probe. Every prober reports it alike: the `reason` label
/// `resolve_failed` (blackbox_exporter counts a failed or timed-out lookup as the probe's
/// failure to resolve, not as a probe timeout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolveError {
    /// The resolver answered with an error.
    Failed { host: String, error: String },
    /// The resolver did not answer before the probe deadline.
    Timeout { host: String },
    /// The resolver answered with no address.
    NoAddress { host: String },
}

impl ResolveError {
    /// The failure reason label probers export for it.
    pub const LABEL: &'static str = "resolve_failed";
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Failed { host, error } => write!(f, "cannot resolve {host:?}: {error}"),
            ResolveError::Timeout { host } => {
                write!(f, "resolving {host:?} did not finish before the deadline")
            }
            ResolveError::NoAddress { host } => write!(f, "{host:?} has no address"),
        }
    }
}

impl std::error::Error for ResolveError {}

/// Looks names up. The production one is [`SystemResolver`]; tests give their own to control
/// the answers.
pub trait Resolver: Send + Sync + fmt::Debug {
    /// The addresses of `host` (a name, never an address).
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>>;
}

/// Default of `--probe.max-concurrent-lookups`: resolver threads of the daemon.
pub(crate) const DEFAULT_MAX_CONCURRENT_LOOKUPS: usize = 16;

/// Lookups that may wait for a busy resolver thread, per thread: enough for a burst of probes
/// of names that answer in milliseconds (64 `/probe` requests at once by default, some with
/// several targets), few enough that waiting is short.
pub(crate) const QUEUED_LOOKUPS_PER_THREAD: usize = 8;

/// The system resolver (getaddrinfo, as before, so /etc/hosts, nsswitch.conf, resolv.conf
/// search domains and options and gai.conf ordering all apply), run on the daemon's own
/// [`LookupPool`] of `--probe.max-concurrent-lookups` threads, never on tokio's blocking pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        system_pool().lookup(host)
    }
}

static SYSTEM_POOL: OnceLock<LookupPool> = OnceLock::new();

/// Sets the number of resolver threads of [`SystemResolver`] (`--probe.max-concurrent-lookups`);
/// without a call it has [`DEFAULT_MAX_CONCURRENT_LOOKUPS`]. No thread starts here (they start
/// with the first lookups, after the daemon dropped its capabilities, which are per thread).
/// Fails once the pool exists, i.e. after a first lookup or an earlier call.
pub(crate) fn set_max_concurrent_lookups(threads: usize) -> Result<(), String> {
    let mut created = false;
    SYSTEM_POOL.get_or_init(|| {
        created = true;
        LookupPool::new(
            threads,
            threads.saturating_mul(QUEUED_LOOKUPS_PER_THREAD),
            getaddrinfo,
        )
    });
    match created {
        true => Ok(()),
        false => Err("the resolver threads are already set up".into()),
    }
}

/// The pool behind [`SystemResolver`].
pub(crate) fn system_pool() -> &'static LookupPool {
    SYSTEM_POOL.get_or_init(|| {
        LookupPool::new(
            DEFAULT_MAX_CONCURRENT_LOOKUPS,
            DEFAULT_MAX_CONCURRENT_LOOKUPS * QUEUED_LOOKUPS_PER_THREAD,
            getaddrinfo,
        )
    })
}

/// One getaddrinfo call, addresses in its order without repeats (what
/// `tokio::net::lookup_host` gave, minus the port).
fn getaddrinfo(host: &str) -> io::Result<Vec<IpAddr>> {
    let mut addresses: Vec<IpAddr> = Vec::new();
    for address in (host, 0).to_socket_addrs()? {
        if !addresses.contains(&address.ip()) {
            addresses.push(address.ip());
        }
    }
    Ok(addresses)
}

/// How one lookup of a [`LookupPool`] ended: the `result` label of
/// `network_probe_probe_lookups_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LookupResult {
    /// Addresses came back.
    Success = 0,
    /// The resolver answered with an error or with no address.
    Failure = 1,
    /// The caller's deadline passed first, waiting for a thread or during the lookup (the
    /// thread, if it had started, finishes the lookup and drops the answer).
    Timeout = 2,
    /// Refused at once: the threads were busy and the queue in front of them full.
    Refused = 3,
}

impl LookupResult {
    const ALL: [LookupResult; 4] = [
        LookupResult::Success,
        LookupResult::Failure,
        LookupResult::Timeout,
        LookupResult::Refused,
    ];

    fn label(self) -> &'static str {
        match self {
            LookupResult::Success => "success",
            LookupResult::Failure => "failure",
            LookupResult::Timeout => "timeout",
            LookupResult::Refused => "refused",
        }
    }
}

/// A blocking lookup function a pool runs on its threads.
pub(crate) type BlockingLookup = fn(&str) -> io::Result<Vec<IpAddr>>;

/// A fixed number of threads running a blocking lookup function, with a bounded queue in
/// front: a lookup waits for a thread at most until its caller gives up (the [`resolve`]
/// deadline drops the future, and a thread skips a job nobody waits for), and is refused at
/// once when the queue is full. A thread inside getaddrinfo cannot be interrupted, so a lookup
/// whose caller gave up keeps its thread until glibc's own timeouts end it (resolv.conf
/// `timeout` and `attempts`, 5 s and 2 by default, per query and search domain); at most
/// `threads` lookups run at once whatever the callers do.
#[derive(Clone)]
pub(crate) struct LookupPool {
    shared: Arc<PoolShared>,
}

struct PoolShared {
    threads: usize,
    queue_capacity: usize,
    lookup: BlockingLookup,
    state: Mutex<PoolState>,
    work: Condvar,
    results: [AtomicU64; 4],
}

#[derive(Default)]
struct PoolState {
    queue: VecDeque<Job>,
    /// Threads started (they never stop).
    started: usize,
    /// Threads waiting for a job.
    idle: usize,
    /// Threads inside the lookup function.
    running: usize,
}

struct Job {
    host: String,
    reply: oneshot::Sender<io::Result<Vec<IpAddr>>>,
}

impl fmt::Debug for LookupPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LookupPool")
            .field("threads", &self.shared.threads)
            .field("queue_capacity", &self.shared.queue_capacity)
            .finish_non_exhaustive()
    }
}

impl LookupPool {
    /// A pool of at most `threads` threads (at least 1) running `lookup`, started as lookups
    /// need them, with `queue_capacity` lookups (at least 1) waiting at most.
    pub(crate) fn new(threads: usize, queue_capacity: usize, lookup: BlockingLookup) -> LookupPool {
        LookupPool {
            shared: Arc::new(PoolShared {
                threads: threads.max(1),
                queue_capacity: queue_capacity.max(1),
                lookup,
                state: Mutex::new(PoolState::default()),
                work: Condvar::new(),
                results: Default::default(),
            }),
        }
    }

    /// The lookups that ended with `result` so far.
    pub(crate) fn count(&self, result: LookupResult) -> u64 {
        self.shared.results[result as usize].load(Ordering::Relaxed)
    }

    /// (threads started, lookups running on them, lookups waiting for one).
    pub(crate) fn load(&self) -> (usize, usize, usize) {
        let state = lock(&self.shared.state);
        (state.started, state.running, state.queue.len())
    }

    /// Queues a lookup of `host`, starting a thread if none is free and the limit allows.
    fn submit(
        &self,
        host: &str,
        reply: oneshot::Sender<io::Result<Vec<IpAddr>>>,
    ) -> io::Result<()> {
        let shared = &self.shared;
        let mut state = lock(&shared.state);
        // Queued jobs that a thread, idle or yet to start, will take at once do not wait.
        let places = shared.queue_capacity + state.idle + (shared.threads - state.started);
        if state.queue.len() >= places {
            // Jobs whose callers gave up only hold places.
            state.queue.retain(|job| !job.reply.is_closed());
        }
        if state.queue.len() >= places {
            return Err(io::Error::other(format!(
                "not looked up: all {} resolver threads are busy and {} lookups wait for them \
                 (--probe.max-concurrent-lookups)",
                shared.threads,
                state.queue.len()
            )));
        }
        state.queue.push_back(Job {
            host: host.to_string(),
            reply,
        });
        if state.queue.len() > state.idle && state.started < shared.threads {
            let worker = Arc::clone(shared);
            let spawned = std::thread::Builder::new()
                .name("resolver".into())
                .spawn(move || worker.run());
            match spawned {
                Ok(_) => state.started += 1,
                Err(err) if state.started == 0 => {
                    state.queue.pop_back();
                    return Err(io::Error::other(format!(
                        "starting a resolver thread: {err}"
                    )));
                }
                // The threads already there will take it.
                Err(_) => {}
            }
        }
        shared.work.notify_one();
        Ok(())
    }
}

impl PoolShared {
    /// A resolver thread: takes jobs forever, skipping those nobody waits for any more.
    fn run(&self) {
        let mut state = lock(&self.state);
        loop {
            let Some(job) = state.queue.pop_front() else {
                state.idle += 1;
                state = self
                    .work
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                state.idle -= 1;
                continue;
            };
            if job.reply.is_closed() {
                continue;
            }
            state.running += 1;
            drop(state);
            let answer = (self.lookup)(&job.host);
            // The caller may have given up meanwhile; the answer is then dropped.
            drop(job.reply.send(answer));
            state = lock(&self.state);
            state.running -= 1;
        }
    }
}

/// Counts a lookup's result when its future ends, completed or dropped at the deadline.
struct Tally<'a> {
    shared: &'a PoolShared,
    result: LookupResult,
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.shared.results[self.result as usize].fetch_add(1, Ordering::Relaxed);
    }
}

impl Resolver for LookupPool {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let mut tally = Tally {
                shared: &self.shared,
                result: LookupResult::Timeout,
            };
            let (reply, answer) = oneshot::channel();
            if let Err(err) = self.submit(host, reply) {
                tally.result = LookupResult::Refused;
                return Err(err);
            }
            let answer = answer
                .await
                .unwrap_or_else(|_| Err(io::Error::other("the resolver thread stopped")));
            tally.result = match &answer {
                Ok(addresses) if !addresses.is_empty() => LookupResult::Success,
                _ => LookupResult::Failure,
            };
            answer
        })
    }
}

/// `network_probe_probe_lookups_total{result}` and the load of [`SystemResolver`]'s pool.
#[derive(Debug, Default)]
pub(crate) struct LookupCollector;

impl Collector for LookupCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let pool = system_pool();
        let mut family = encoder.encode_descriptor(
            "network_probe_probe_lookups",
            "Name lookups of probe targets by result: success, failure (an error or no \
             address), timeout (the probe deadline passed first), refused (resolver threads \
             busy and their queue full).",
            None,
            MetricType::Counter,
        )?;
        for result in LookupResult::ALL {
            ConstCounter::new(pool.count(result))
                .encode(family.encode_family(&[("result", result.label())])?)?;
        }
        let (started, running, queued) = pool.load();
        for (name, help, value) in [
            (
                "network_probe_probe_lookup_threads",
                "Resolver threads started (at most --probe.max-concurrent-lookups).",
                started,
            ),
            (
                "network_probe_probe_lookups_running",
                "Lookups running on a resolver thread, those whose probe gave up included.",
                running,
            ),
            (
                "network_probe_probe_lookups_queued",
                "Lookups waiting for a resolver thread.",
                queued,
            ),
        ] {
            let gauge = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value as i64).encode(gauge)?;
        }
        Ok(())
    }
}

/// The addresses of `host` before `deadline`: an address is itself, a name is looked up once.
pub(crate) async fn resolve(
    resolver: &dyn Resolver,
    host: &str,
    deadline: Instant,
) -> Result<Vec<IpAddr>, ResolveError> {
    if let Ok(address) = host.parse::<IpAddr>() {
        return Ok(vec![address]);
    }
    match tokio::time::timeout_at(deadline.into(), resolver.lookup(host)).await {
        Err(_) => Err(ResolveError::Timeout {
            host: host.to_string(),
        }),
        Ok(Err(err)) => Err(ResolveError::Failed {
            host: host.to_string(),
            error: err.to_string(),
        }),
        Ok(Ok(addresses)) if addresses.is_empty() => Err(ResolveError::NoAddress {
            host: host.to_string(),
        }),
        Ok(Ok(addresses)) => Ok(addresses),
    }
}

/// Splits a `target=` value: `host`, `host:port`, `v4:port`, a bare IPv6 address, `[v6]` or
/// `[v6]:port`. A port is 1 to 65535 (0 is refused for every prober); a host name is letters,
/// digits, `-`, `_` and dots, at most 253 bytes. Errors name the parameter and the value.
pub(crate) fn split_host_port(target: &str) -> Result<(String, Option<u16>), BadRequest> {
    let bad = |why: String| BadRequest(format!("parameter \"target\": {target:?} {why}"));
    let port = |text: &str| {
        text.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| {
            BadRequest(format!(
                "parameter \"target\": port {text:?} in {target:?} is not a port number from 1 \
                 to 65535"
            ))
        })
    };
    if let Ok(address) = target.parse::<IpAddr>() {
        return Ok((address.to_string(), None));
    }
    if let Some(rest) = target.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("lacks the closing ']'".into()))?;
        let address = inner
            .parse::<Ipv6Addr>()
            .map_err(|_| bad("is not a bracketed IPv6 address".into()))?;
        let port = match after.strip_prefix(':') {
            Some(text) => Some(port(text)?),
            None if after.is_empty() => None,
            None => return Err(bad("has text after the ']' that is not :PORT".into())),
        };
        return Ok((address.to_string(), port));
    }
    let (host, port) = match target.rsplit_once(':') {
        Some((host, text)) if !host.contains(':') => (host, Some(port(text)?)),
        Some(_) => return Err(bad("is not a host name, an address or HOST:PORT".into())),
        None => (target, None),
    };
    if let Ok(address) = host.parse::<std::net::Ipv4Addr>() {
        return Ok((address.to_string(), port));
    }
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !valid_name {
        return Err(bad("is not a host name, an address or HOST:PORT".into()));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_alike_for_every_prober() {
        for (target, host, port) in [
            ("h", "h", None),
            ("host.example:69", "host.example", Some(69)),
            ("10.0.0.1", "10.0.0.1", None),
            ("10.0.0.1:5201", "10.0.0.1", Some(5201)),
            ("::1", "::1", None),
            ("[::1]", "::1", None),
            ("[fe80::1]:70", "fe80::1", Some(70)),
        ] {
            assert_eq!(
                split_host_port(target).unwrap(),
                (host.to_string(), port),
                "{target}"
            );
        }
        for (target, said) in [
            ("h:0", "port \"0\" in \"h:0\""),
            ("[::1]:0", "port \"0\""),
            ("a:http", "\"http\""),
            ("h:x", "\"h:x\""),
            ("a b", "\"a b\""),
            ("[zz]", "\"[zz]\""),
            ("[::1", "']'"),
            ("[::1]x", "\"[::1]x\""),
            ("", "is not a host name"),
            ("a/b", "\"a/b\""),
        ] {
            let err = split_host_port(target).unwrap_err().0;
            assert!(err.contains(said), "{target}: {err}");
            assert!(err.starts_with("parameter \"target\""), "{err}");
        }
    }

    /// Calls of [`gated`] so far, and whether its gate is open.
    static GATE: (Mutex<(usize, bool)>, Condvar) = (Mutex::new((0, false)), Condvar::new());

    /// A lookup that blocks until [`GATE`] opens, like getaddrinfo for a name whose DNS never
    /// answers.
    fn gated(_: &str) -> io::Result<Vec<IpAddr>> {
        let (state, changed) = &GATE;
        let mut state = lock(state);
        state.0 += 1;
        changed.notify_all();
        while !state.1 {
            state = changed.wait(state).unwrap();
        }
        Ok(vec![IpAddr::from([192, 0, 2, 9])])
    }

    #[tokio::test]
    async fn lookups_beyond_the_threads_wait_until_their_deadline_or_are_refused_at_once() {
        use std::time::Duration;
        // Two threads, one place in the queue.
        let pool = LookupPool::new(2, 1, gated);
        let later = Instant::now() + Duration::from_secs(30);
        let held: Vec<_> = (0..2)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(
                    async move { resolve(&pool, &format!("held{i}.example"), later).await },
                )
            })
            .collect();
        let limit = Instant::now() + Duration::from_secs(5);
        while lock(&GATE.0).0 < 2 {
            assert!(Instant::now() < limit, "the two lookups did not start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The third waits for a thread, until its deadline and no longer.
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let deadline = start + Duration::from_millis(300);
                (
                    resolve(&pool, "third.example", deadline).await,
                    start.elapsed(),
                )
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(pool.load(), (2, 2, 1));
        // The fourth finds the queue full: refused at once, whatever its deadline.
        let start = Instant::now();
        let err = resolve(&pool, "fourth.example", later).await.unwrap_err();
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "{:?}",
            start.elapsed()
        );
        let ResolveError::Failed { error, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(error.contains("not looked up"), "{error}");
        assert!(error.contains("--probe.max-concurrent-lookups"), "{error}");
        let (third, waited) = waiting.await.unwrap();
        assert_eq!(
            third,
            Err(ResolveError::Timeout {
                host: "third.example".into()
            })
        );
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        // The place of a lookup whose caller gave up is taken by the next one.
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            resolve(&pool, "fifth.example", soon).await,
            Err(ResolveError::Timeout { .. })
        ));
        assert_eq!(pool.count(LookupResult::Refused), 1);
        assert_eq!(pool.count(LookupResult::Timeout), 2);
        // Never more threads than the bound; once the blocked lookups end, the threads skip
        // the jobs nobody waits for and serve new ones.
        {
            let mut state = lock(&GATE.0);
            state.1 = true;
            GATE.1.notify_all();
        }
        for held in held {
            assert_eq!(held.await.unwrap().unwrap(), [IpAddr::from([192, 0, 2, 9])]);
        }
        let soon = Instant::now() + Duration::from_secs(5);
        assert!(resolve(&pool, "sixth.example", soon).await.is_ok());
        assert_eq!(lock(&GATE.0).0, 3, "third and fifth were never looked up");
        assert_eq!(pool.count(LookupResult::Success), 3);
        assert_eq!(pool.load().0, 2);
    }

    #[tokio::test]
    async fn addresses_are_not_looked_up_and_failures_are_named() {
        #[derive(Debug)]
        struct Never;
        impl Resolver for Never {
            fn lookup<'a>(&'a self, _: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
                Box::pin(std::future::pending())
            }
        }
        let soon = Instant::now() + std::time::Duration::from_millis(50);
        assert_eq!(
            resolve(&Never, "192.0.2.1", soon).await.unwrap(),
            ["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        let err = resolve(&Never, "slow.example", soon).await.unwrap_err();
        assert_eq!(
            err,
            ResolveError::Timeout {
                host: "slow.example".into()
            }
        );
        assert!(err.to_string().contains("before the deadline"), "{err}");
        let err = resolve(
            &SystemResolver,
            "name.invalid",
            soon + std::time::Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(
            err,
            ResolveError::Failed { .. } | ResolveError::Timeout { .. }
        ));
    }
}
