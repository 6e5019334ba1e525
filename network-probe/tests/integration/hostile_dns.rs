//! Name resolution under a flood of names whose DNS never answers: the daemon runs in a
//! namespace whose resolv.conf (written to /etc/netns/NS/, which `ip netns exec` mounts over
//! /etc) names a UDP socket of this test inside that namespace that reads queries and never
//! replies, and nsswitch.conf says `files dns`, so no query leaves the namespace. 500 probes
//! with a 0.1 s scrape timeout each resolve a different such name. The daemon's resolver
//! threads (`--probe.max-concurrent-lookups`) stay bounded, scrapes keep answering, the probes
//! fail as resolve_failed within their budget, and once glibc gives up on the stuck lookups a
//! name from /etc/hosts resolves again.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use network_probe_testkit::{Daemon, VethPair, in_netns, sample};

/// Resolver threads the daemon may start in this test.
const LOOKUP_THREADS: usize = 8;
/// Probes of never-answered names.
const PROBES: usize = 500;
/// Clients sending them at once (under the default --web.max-concurrent-probes 64).
const CLIENTS: usize = 25;
/// Most threads the daemon may have at any time during the flood: its runtime thread, the
/// resolver threads and a few tokio blocking threads for scrapes and the flow sweep. (Before
/// the resolver had threads of its own, every lookup took a tokio blocking thread until glibc
/// gave up, up to 512: one per probe here.)
const MAX_THREADS: u64 = 24;
/// Longest a scrape of /metrics may take during the flood.
const SCRAPE_BOUND: Duration = Duration::from_secs(1);

/// /etc/netns/NS/ with a resolv.conf and an nsswitch.conf for programs started in NS; removed
/// on drop.
struct NetnsEtc(PathBuf);

impl NetnsEtc {
    fn write(ns: &str, files: &[(&str, &str)]) -> NetnsEtc {
        let dir = Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        let etc = NetnsEtc(dir);
        for (name, text) in files {
            std::fs::write(etc.0.join(name), text).unwrap();
        }
        etc
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One GET from inside `ns` with extra header lines: (status, body, time to the full answer).
fn get(ns: &str, path: &str, headers: &str) -> (u16, String, Duration) {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n");
    in_netns(ns, move || {
        let start = Instant::now();
        let to: SocketAddr = "127.0.0.1:9435".parse().unwrap();
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let elapsed = start.elapsed();
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad response {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        (status, body, elapsed)
    })
}

/// The `Threads:` line of /proc/PID/status.
fn threads(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|count| count.trim().parse().ok())
        .expect("a Threads: line")
}

#[test]
fn names_whose_dns_never_answers_keep_lookups_and_threads_bounded() {
    let pair = VethPair::new();
    let ns = pair.a.clone();
    // The "DNS server": reads queries on 127.0.0.1:53 inside the namespace, answers none.
    let dns = in_netns(&ns, || {
        UdpSocket::bind("127.0.0.1:53").expect("bind 127.0.0.1:53")
    });
    dns.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let queries = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (queries, stop) = (Arc::clone(&queries), Arc::clone(&stop));
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if dns.recv_from(&mut buf).is_ok() {
                    queries.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let _etc = NetnsEtc::write(
        &ns,
        &[
            ("resolv.conf", "nameserver 127.0.0.1\n"),
            ("nsswitch.conf", "hosts: files dns\n"),
            ("hosts", "127.0.0.1 localhost\n127.0.0.1 good.lab\n"),
        ],
    );
    let threads_arg = LOOKUP_THREADS.to_string();
    let daemon = Daemon::start(
        &ns,
        &[
            "--interface",
            &pair.a_if,
            "--probe.max-concurrent-lookups",
            &threads_arg,
        ],
    );
    let pid = daemon.child.id();
    let idle_threads = threads(pid);

    // The flood, with scrapes and thread counts taken meanwhile.
    let flooding = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (ns, flooding) = (ns.clone(), Arc::clone(&flooding));
        thread::spawn(move || {
            let (mut scrapes, mut slowest, mut most_threads) = (0, Duration::ZERO, 0);
            while flooding.load(Ordering::Relaxed) {
                let (status, body, took) = get(&ns, "/metrics", "");
                assert_eq!(status, 200, "{body}");
                scrapes += 1;
                slowest = slowest.max(took);
                most_threads = most_threads.max(threads(pid));
                thread::sleep(Duration::from_millis(20));
            }
            (scrapes, slowest, most_threads)
        })
    };
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let ns = ns.clone();
            thread::spawn(move || {
                let mut slowest = Duration::ZERO;
                for i in (client..PROBES).step_by(CLIENTS) {
                    let (status, body, took) = get(
                        &ns,
                        &format!("/probe?module=tftp&target=silent-{i}.hostile.test:69"),
                        "X-Prometheus-Scrape-Timeout-Seconds: 0.1\r\n",
                    );
                    assert_eq!(status, 200, "{body}");
                    assert!(
                        body.contains("tftp_probe_failure{reason=\"resolve_failed\"} 1"),
                        "{body}"
                    );
                    slowest = slowest.max(took);
                }
                slowest
            })
        })
        .collect();
    let slowest_probe = clients
        .into_iter()
        .map(|client| client.join().unwrap())
        .max()
        .unwrap();
    let flood = started.elapsed();
    flooding.store(false, Ordering::Relaxed);
    let (scrapes, slowest_scrape, most_threads) = watcher.join().unwrap();
    eprintln!(
        "{PROBES} probes in {flood:?} (slowest {slowest_probe:?}); {scrapes} scrapes meanwhile, \
         slowest {slowest_scrape:?}; threads {idle_threads} idle, at most {most_threads}; \
         {} DNS queries",
        queries.load(Ordering::Relaxed)
    );
    // The daemon did ask our server (and nothing answered).
    assert!(queries.load(Ordering::Relaxed) > 0, "no DNS query arrived");
    // Every probe ended near its 0.1 s budget, never waiting for a stuck lookup.
    assert!(slowest_probe < Duration::from_secs(2), "{slowest_probe:?}");
    assert!(scrapes >= 3, "only {scrapes} scrapes during the flood");
    assert!(slowest_scrape < SCRAPE_BOUND, "{slowest_scrape:?}");
    assert!(
        most_threads <= MAX_THREADS,
        "{most_threads} threads (idle: {idle_threads})"
    );

    // Every lookup is counted: timed out (waiting for a thread, or in one) or refused.
    let scrape = daemon.scrape();
    let count = |result: &str| {
        sample(
            &scrape,
            "network_probe_probe_lookups_total",
            &format!("result=\"{result}\""),
        )
        .unwrap_or_else(|| panic!("no {result} count in {scrape}"))
    };
    assert_eq!(count("success"), 0.0, "{scrape}");
    assert_eq!(
        count("timeout") + count("refused"),
        PROBES as f64,
        "{scrape}"
    );
    let started_threads = sample(&scrape, "network_probe_probe_lookup_threads", "").unwrap();
    assert_eq!(started_threads, LOOKUP_THREADS as f64, "{scrape}");

    // Once glibc gives up on the stuck lookups (5 s, twice, by default), the threads are free
    // again and skip the lookups nobody waits for: a name from /etc/hosts resolves.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let scrape = daemon.scrape();
        let running = sample(&scrape, "network_probe_probe_lookups_running", "").unwrap();
        if running == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "lookups still running: {scrape}");
        thread::sleep(Duration::from_millis(200));
    }
    let (status, body, _) = get(
        &ns,
        "/probe?module=tftp&target=good.lab:1",
        "X-Prometheus-Scrape-Timeout-Seconds: 1\r\n",
    );
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("resolve_failed\"} 1"), "{body}");
    assert!(threads(pid) <= MAX_THREADS);
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
}
