//! The web server against hostile callers, with the real daemon in a namespace the test
//! creates (every connection goes to 127.0.0.1 inside it):
//! - 2,000 connections that never read (most silent, some pipelining `/metrics` requests)
//!   against `--web.max-connections 256`: a fresh scrape still answers within 2 s, the daemon's
//!   descriptors stay within the limit plus a few, every hostile connection is closed by the
//!   daemon within the timeouts, and the rejected counter adds up to what the test did;
//! - a client that pipelines requests and never reads (small receive window): closed by the
//!   write timeout, counted as `write_timeout`;
//! - `POST /-/reload` is 403 without `--web.enable-lifecycle` and 200 with it; SIGHUP reloads
//!   either way.
//!
//! The flood test runs alone ([`isolation::exclusive`]): its deadlines (the flood within 5 s so
//! the 10 s timeouts do not blur the counts, the fresh scrape within 2 s) are about the daemon,
//! not about the other suites sharing the two cores. It raises the test process's soft
//! RLIMIT_NOFILE to the hard limit for its 2,000 sockets (only ever raised, so no other test is
//! affected but for the daemons they start inheriting the higher limit).

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::FromRawFd as _,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use network_probe_testkit::{Daemon, VethPair, http, in_netns, isolation, sample};

/// The daemon's header timeout and write timeout (web/listen.rs, web/connections.rs).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

const REASONS: [&str; 6] = [
    "max_connections",
    "evicted",
    "header_timeout",
    "idle_timeout",
    "write_timeout",
    "tls_handshake_timeout",
];

/// Raises this process's soft RLIMIT_NOFILE to at least `needed` (up to the hard limit); the
/// daemon, started afterwards, inherits it.
fn raise_open_file_limit(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    if limit.rlim_cur < needed {
        assert!(
            limit.rlim_max >= needed,
            "the hard open file limit {} is below the {needed} this test needs",
            limit.rlim_max
        );
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) },
            0,
            "setrlimit: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn open_descriptors(daemon: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", daemon.child.id()))
        .expect("the daemon's /proc/PID/fd")
        .count()
}

/// The rejected counter of a scrape, by reason (in [`REASONS`] order).
fn rejected(scrape: &str) -> [f64; 6] {
    REASONS.map(|reason| {
        sample(
            scrape,
            "network_probe_web_connections_rejected_total",
            &format!("reason=\"{reason}\""),
        )
        .unwrap_or_else(|| panic!("no rejected counter for {reason} in\n{scrape}"))
    })
}

fn open_connections(scrape: &str) -> f64 {
    sample(scrape, "network_probe_web_connections_open", "").expect("open connections gauge")
}

fn delta(now: [f64; 6], before: [f64; 6]) -> [f64; 6] {
    std::array::from_fn(|i| now[i] - before[i])
}

/// Whether the daemon has closed `stream`: reads (and discards) what it sent until end of
/// stream or a reset; `false` when the read would wait.
fn closed_by_daemon(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buffer = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(err) if err.kind() == ErrorKind::ConnectionReset => return true,
            Err(err) => panic!("reading a hostile connection: {err}"),
        }
    }
}

/// A pipeline of `count` keep-alive requests for the telemetry path.
fn pipeline(count: usize) -> Vec<u8> {
    "GET /metrics HTTP/1.1\r\nHost: np\r\n\r\n"
        .repeat(count)
        .into_bytes()
}

/// Opens `silent` connections that send nothing and `pipelining` that send 8 pipelined
/// requests each (interleaved: one pipelining connection after every few silent ones), none
/// of which ever reads. Runs on a thread in `ns`; the sockets stay in it.
fn flood(ns: &str, to: SocketAddr, silent: usize, pipelining: usize) -> Vec<TcpStream> {
    in_netns(ns, move || {
        let total = silent + pipelining;
        let every = total / pipelining.max(1);
        let mut streams = Vec::with_capacity(total);
        let mut pipelined = 0;
        for i in 0..total {
            let stream = TcpStream::connect_timeout(&to, Duration::from_secs(10))
                .unwrap_or_else(|err| panic!("hostile connection {i}: {err}"));
            if pipelined < pipelining && i % every == every - 1 {
                stream
                    .set_write_timeout(Some(Duration::from_secs(1)))
                    .unwrap();
                (&stream).write_all(&pipeline(8)).unwrap();
                pipelined += 1;
            }
            streams.push(stream);
        }
        assert_eq!(pipelined, pipelining);
        streams
    })
}

#[test]
fn two_thousand_connections_that_never_read_do_not_lock_out_scrapes() {
    const LIMIT: usize = 256;
    const SILENT: usize = 1800;
    const PIPELINING: usize = 200;
    const HOSTILE: usize = SILENT + PIPELINING;
    let _alone = isolation::exclusive();
    raise_open_file_limit(HOSTILE as u64 + 1024);
    let pair = VethPair::new();
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--web.max-connections",
            &LIMIT.to_string(),
        ],
    );
    let before = daemon.scrape();
    assert_eq!(open_connections(&before), 1.0, "{before}");
    assert_eq!(
        sample(&before, "network_probe_web_connections_max", ""),
        Some(LIMIT as f64)
    );
    let counted_before = rejected(&before);
    let idle_descriptors = open_descriptors(&daemon);

    let flood_started = Instant::now();
    let mut hostile = flood(&daemon.ns, daemon.listen, SILENT, PIPELINING);
    let flooded = Instant::now();
    eprintln!(
        "{HOSTILE} hostile connections open after {:?}; daemon descriptors idle {idle_descriptors}",
        flooded - flood_started
    );
    assert!(
        flooded - flood_started < Duration::from_secs(5),
        "the flood took {:?}: the timeouts would interfere with the counts",
        flooded - flood_started
    );

    // A fresh client gets its scrape within 2 s while they are open.
    let asked = Instant::now();
    let (status, body) = http(&daemon.ns, daemon.listen, "GET", "/metrics").expect("fresh scrape");
    let took = asked.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("network_probe_build_info"), "{body}");
    assert!(
        took < Duration::from_secs(2),
        "the fresh scrape took {took:?}"
    );
    let descriptors = open_descriptors(&daemon);
    eprintln!("fresh scrape in {took:?}; daemon descriptors under the flood: {descriptors}");
    assert!(
        descriptors <= idle_descriptors + LIMIT + 8,
        "{descriptors} descriptors open: more than the {idle_descriptors} of the idle daemon \
         plus --web.max-connections {LIMIT} plus 8"
    );

    // Every connection beyond the limit (the hostile ones and the fresh scrape) took the slot
    // of a stalled one, or was refused; nothing else ended yet (the timeouts are 10 s).
    let during = daemon.scrape();
    let counted = delta(rejected(&during), counted_before);
    assert!(
        flood_started.elapsed() < HEADER_TIMEOUT,
        "too slow to count before the timeouts"
    );
    assert_eq!(
        counted[0] + counted[1],
        (HOSTILE + 1 - LIMIT) as f64,
        "evicted + refused, by reason {REASONS:?}: {counted:?}"
    );
    assert_eq!(counted[2..], [0.0; 4], "{REASONS:?}: {counted:?}");
    // The hostile survivors fill every slot but the one this scrape took (the fresh one's).
    let open = open_connections(&during);
    assert!(
        open == LIMIT as f64,
        "{open} connections open under the flood, expected {LIMIT}"
    );

    // The daemon closes the rest within the timeouts (header or idle timeout for the silent
    // and the answered ones, write timeout for the blocked ones).
    let deadline = flooded + HEADER_TIMEOUT + WRITE_TIMEOUT + Duration::from_secs(5);
    let after = loop {
        let scrape = daemon.scrape();
        if open_connections(&scrape) == 1.0 {
            break scrape;
        }
        assert!(
            Instant::now() < deadline,
            "{} connections still open {:?} after the flood",
            open_connections(&scrape),
            flooded.elapsed()
        );
        thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "all hostile connections closed {:?} after the flood",
        flooded.elapsed()
    );
    let still_open = hostile
        .iter_mut()
        .filter_map(|stream| (!closed_by_daemon(stream)).then_some(()))
        .count();
    assert_eq!(still_open, 0, "hostile connections the daemon left open");
    // Each hostile connection ended once, for one counted reason.
    let counted = delta(rejected(&after), counted_before);
    eprintln!("rejected by reason {REASONS:?}: {counted:?}");
    assert_eq!(
        counted.iter().sum::<f64>(),
        HOSTILE as f64,
        "{REASONS:?}: {counted:?}"
    );
    assert_eq!(counted[5], 0.0, "no TLS here: {counted:?}");
    assert!(
        counted[2] >= 1.0,
        "the silent survivors time out reading headers: {counted:?}"
    );
    let descriptors = open_descriptors(&daemon);
    assert!(
        descriptors <= idle_descriptors + 2,
        "{descriptors} descriptors after the flood, {idle_descriptors} before"
    );
}

/// A TCP connection from a socket whose receive buffer is `receive_buffer` bytes, so that a
/// client that does not read stops the daemon's writes early.
fn connect_with_small_window(to: SocketAddr, receive_buffer: i32) -> TcpStream {
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    // SAFETY: plain socket calls on a descriptor we own; the stream takes it over.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        assert_eq!(
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&receive_buffer as *const i32).cast(),
                size_of::<i32>() as libc::socklen_t,
            ),
            0
        );
        let address = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*to.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        assert_eq!(
            libc::connect(
                fd,
                (&address as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
        stream
    }
}

#[test]
fn a_client_that_never_reads_its_responses_is_closed_by_the_write_timeout() {
    let pair = VethPair::new();
    let daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if]);
    let before = rejected(&daemon.scrape());
    let to = daemon.listen;
    // 600 pipelined scrapes (megabytes of responses) into a 4 KiB window, never read.
    let sent = Instant::now();
    let mut stream = in_netns(&daemon.ns, move || {
        let stream = connect_with_small_window(to, 4096);
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        // The daemon stops reading once its writes block; what it has not read stays queued.
        drop((&stream).write_all(&pipeline(600)));
        stream
    });
    // Meanwhile others are served.
    let (status, _) = http(&daemon.ns, daemon.listen, "GET", "/metrics").unwrap();
    assert_eq!(status, 200);
    let deadline = sent + WRITE_TIMEOUT + Duration::from_secs(15);
    let counted = loop {
        let counted = delta(rejected(&daemon.scrape()), before);
        if counted[4] >= 1.0 {
            break counted;
        }
        assert!(
            Instant::now() < deadline,
            "not closed for the write timeout after {:?}: {REASONS:?} {counted:?}",
            sent.elapsed()
        );
        thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "closed for the write timeout {:?} after the requests",
        sent.elapsed()
    );
    assert_eq!(counted, [0.0, 0.0, 0.0, 0.0, 1.0, 0.0], "{REASONS:?}");
    assert_eq!(open_connections(&daemon.scrape()), 1.0);
    // The client, reading at last, finds the rest of what was sent, then the end.
    let received = Instant::now();
    while !closed_by_daemon(&mut stream) {
        assert!(
            received.elapsed() < Duration::from_secs(10),
            "the connection is still open"
        );
    }
}

/// A scratch configuration file, removed on drop.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(text: &str) -> ConfigFile {
        let path = std::env::temp_dir().join(format!(
            "np-hostile-web-{}-{}.yml",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::write(&path, text).unwrap();
        ConfigFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn successful_reloads(daemon: &Daemon) -> f64 {
    sample(
        &daemon.scrape(),
        "network_probe_config_reloads_total",
        "result=\"success\"",
    )
    .expect("reload counter")
}

#[test]
fn reload_over_http_needs_the_lifecycle_flag_and_sighup_does_not() {
    let config =
        ConfigFile::new("modules:\n  ping4:\n    prober: ping\n    ping:\n      ip_version: 4\n");

    // Without --web.enable-lifecycle: 403 naming the flag, nothing reloaded.
    let pair = VethPair::new();
    let daemon = Daemon::start(
        &pair.a,
        &["--interface", &pair.a_if, "--config.file", config.path()],
    );
    for method in ["POST", "PUT"] {
        let (status, body) = http(&daemon.ns, daemon.listen, method, "/-/reload").unwrap();
        assert_eq!(status, 403, "{method}: {body}");
        assert!(body.contains("--web.enable-lifecycle"), "{method}: {body}");
    }
    let (status, _) = http(&daemon.ns, daemon.listen, "GET", "/-/reload").unwrap();
    assert_eq!(status, 405);
    assert_eq!(successful_reloads(&daemon), 0.0);
    // SIGHUP reloads all the same.
    // SAFETY: signalling our own child.
    assert_eq!(
        unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) },
        0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while successful_reloads(&daemon) < 1.0 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(successful_reloads(&daemon), 1.0);
    drop(daemon);

    // With it: 200.
    let pair = VethPair::new();
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--config.file",
            config.path(),
            "--web.enable-lifecycle",
        ],
    );
    let (status, body) = http(&daemon.ns, daemon.listen, "POST", "/-/reload").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("configuration reloaded\n"), "{body}");
    assert_eq!(successful_reloads(&daemon), 1.0);
}
