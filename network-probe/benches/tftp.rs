//! TFTP download speed and CPU: the `tftp` prober's native client against the tftp-hpa client
//! and curl, each fetching the same 10 MiB file from one tftpd-hpa on loopback with the same
//! block size (512, 1468 and 65464 bytes, lock-step); then RFC 7440 windows against lock-step,
//! both ours, fetching the same file from atftpd (the only server here that speaks windowsize).
//!
//! The window rows are measured twice: on loopback, where a round trip is microseconds and a
//! lock-step client barely waits, and through a delaying relay ([`DelayLink`]) that holds
//! every datagram for [`ONE_WAY_DELAY`] in each direction (a link with a real round trip; this
//! host's kernel has no netem qdisc and no fq for EDT pacing). The relay is user space: its
//! own forwarding is in every delayed row alike, and the table prints the lock-step time per
//! block through it, the round trip the client saw. The delayed rows fetch a smaller file
//! ([`DELAYED_FILE_SIZE`]) so lock-step stays within seconds.
//!
//! Options are equal per comparison: ours requests none against tftp-hpa (whose client sends
//! none), and `tsize` + `blksize` against curl (which always sends both). Ours runs in the
//! bench process (no process start-up), the reference clients as processes (exec and dynamic
//! loading, about a millisecond, are in their time).
//!
//! Rounds are interleaved (every client once per round, in turn) so drift on a shared machine
//! hits all of them alike; the medians are compared as ratios (time ours / time theirs, below
//! 1 means ours is faster). Every download is checked against the file's SHA-256. CPU is user +
//! system time from getrusage: the bench process's own (RUSAGE_SELF) around our in-process
//! probe, the waited-for client's (RUSAGE_CHILDREN) around a reference client; the servers are
//! not waited for, so neither side counts them.
//! Needs root (tftpd-hpa forks, chroots and drops privileges), the Debian packages tftpd-hpa,
//! tftp-hpa and curl, and atftpd as `cargo xtask test`/`bench` extract it into
//! `~/.cache/network-probe/atftpd/`. Prints a markdown section on stdout.
// Cargo gives this target every dependency of the package; it uses the library's API only.
#![allow(unused_crate_dependencies)]

use std::{
    net::{SocketAddr, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use network_probe::probe::{ProbeContext, Query, tftp};
use sha2::{Digest as _, Sha256};

const FILE_SIZE: usize = 10 << 20;
/// The file of the delayed-link rows.
const DELAYED_FILE_SIZE: usize = 1 << 20;
/// What the relay adds in each direction: a round trip of twice this.
const ONE_WAY_DELAY: Duration = Duration::from_micros(500);
const ROUNDS: usize = 11;
/// The window of the RFC 7440 rows (blocks per ACK).
const WINDOWS: [u16; 2] = [16, 64];

/// One download: wall time and CPU time (user + system) of the client.
#[derive(Clone, Copy)]
struct Sample {
    time: Duration,
    cpu: Duration,
}

struct Fixture {
    dir: PathBuf,
    servers: Vec<Child>,
    hpa_port: u16,
    atftpd_port: u16,
    sha256: String,
    /// SHA-256 of `file1m.bin` (the delayed rows).
    small_sha256: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_of(path: &Path) -> String {
    hex(&Sha256::digest(
        std::fs::read(path).expect("reading a download"),
    ))
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_bound(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "{what} did not bind");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// atftpd as `cargo xtask test`/`bench` extract it (xtask/src/bootstrap.rs).
fn atftpd_binary() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    let binary = cache.join("network-probe/atftpd/usr/sbin/atftpd");
    assert!(
        binary.exists(),
        "{} missing: run `cargo xtask test` (it extracts atftpd)",
        binary.display()
    );
    binary
}

fn start() -> Fixture {
    let dir = PathBuf::from(format!("/tmp/np-tftp-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("out")).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut content = Vec::with_capacity(FILE_SIZE);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    while content.len() < FILE_SIZE {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        content.extend_from_slice(&state.to_le_bytes());
    }
    content.truncate(FILE_SIZE);
    let file = dir.join("file10m.bin");
    std::fs::write(&file, &content).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let small = dir.join("file1m.bin");
    std::fs::write(&small, &content[..DELAYED_FILE_SIZE]).unwrap();
    std::fs::set_permissions(&small, std::fs::Permissions::from_mode(0o644)).unwrap();
    let hpa_port = free_udp_port();
    let hpa = Command::new("in.tftpd")
        .args([
            "-L",
            "-s",
            dir.to_str().unwrap(),
            "-a",
            &format!("127.0.0.1:{hpa_port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting in.tftpd (apt-get install tftpd-hpa; run as root)");
    let mut fixture = Fixture {
        sha256: sha256_of(&file),
        small_sha256: sha256_of(&small),
        dir,
        servers: vec![hpa],
        hpa_port,
        atftpd_port: 0,
    };
    wait_bound(hpa_port, "in.tftpd");
    fixture.atftpd_port = free_udp_port();
    let atftpd = Command::new(atftpd_binary())
        .args(["--daemon", "--no-fork", "--port"])
        .arg(fixture.atftpd_port.to_string())
        .args(["--bind-address", "127.0.0.1", "--user", "nobody"])
        .args(["--group", "nogroup", "--logfile", "/dev/null"])
        .arg(&fixture.dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting atftpd");
    fixture.servers.push(atftpd);
    wait_bound(fixture.atftpd_port, "atftpd");
    fixture
}

/// A UDP relay on loopback that holds every datagram for a fixed delay in each direction: the
/// client sends its RRQ and ACKs to `port` and gets the server's packets from it (one transfer
/// ID, which TFTP allows); the relay talks to the server from its own socket and follows the
/// server's transfer ID. One transfer at a time; a new RRQ starts over.
struct DelayLink {
    port: u16,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for DelayLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Smallest timer slack for the calling thread, so its sleeps end on time.
fn precise_sleeps() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// Sends what `queue` delivers once each datagram's time has come (FIFO: one fixed delay keeps
/// the order).
fn delayed_sender(
    socket: UdpSocket,
    queue: mpsc::Receiver<(Instant, Vec<u8>, SocketAddr)>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        precise_sleeps();
        for (due, datagram, to) in queue {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let _ = socket.send_to(&datagram, to);
        }
    })
}

fn delay_link(server: SocketAddr, one_way: Duration) -> DelayLink {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = front.local_addr().unwrap().port();
    for socket in [&front, &back] {
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    // The client's address and the server's transfer ID, as last seen.
    let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    let server_tid: Arc<std::sync::Mutex<SocketAddr>> = Arc::new(std::sync::Mutex::new(server));
    let (to_server, to_server_queue) = mpsc::channel();
    let (to_client, to_client_queue) = mpsc::channel();
    let mut threads = vec![
        delayed_sender(back.try_clone().unwrap(), to_server_queue),
        delayed_sender(front.try_clone().unwrap(), to_client_queue),
    ];
    {
        let (stop, client, server_tid) = (stop.clone(), client.clone(), server_tid.clone());
        threads.push(std::thread::spawn(move || {
            let mut buffer = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                let Ok((len, from)) = front.recv_from(&mut buffer) else {
                    continue;
                };
                let due = Instant::now() + one_way;
                *client.lock().unwrap() = Some(from);
                let to = if buffer[..2] == [0, 1] {
                    // A new read request: to the server's port, whose answer sets the TID.
                    *server_tid.lock().unwrap() = server;
                    server
                } else {
                    *server_tid.lock().unwrap()
                };
                let _ = to_server.send((due, buffer[..len].to_vec(), to));
            }
        }));
    }
    {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut buffer = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                let Ok((len, from)) = back.recv_from(&mut buffer) else {
                    continue;
                };
                let due = Instant::now() + one_way;
                *server_tid.lock().unwrap() = from;
                if let Some(client) = *client.lock().unwrap() {
                    let _ = to_client.send((due, buffer[..len].to_vec(), client));
                }
            }
        }));
    }
    DelayLink {
        port,
        stop,
        threads,
    }
}

/// User + system CPU time of `who` (RUSAGE_SELF or RUSAGE_CHILDREN) so far.
fn cpu_time(who: libc::c_int) -> Duration {
    // SAFETY: getrusage fills the zeroed plain-old-data struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(who, &mut usage) }, 0);
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Our client, in process, fetching `file` (SHA-256 `sha256`): `extra` holds the options
/// (tsize, blksize, windowsize).
fn ours(
    port: u16,
    file: &str,
    sha256: &str,
    extra: &str,
    runtime: &tokio::runtime::Runtime,
) -> Sample {
    let query = Query::parse(&format!(
        "target=127.0.0.1:{port}&tftp_filename={file}&expected_sha256={sha256}{extra}"
    ))
    .unwrap();
    let cpu = cpu_time(libc::RUSAGE_SELF);
    let started = Instant::now();
    let ctx = ProbeContext::new(started + Duration::from_secs(60));
    let report = runtime.block_on(tftp::probe(&ctx, &query)).unwrap();
    let time = started.elapsed();
    let cpu = cpu_time(libc::RUSAGE_SELF) - cpu;
    assert!(
        report.success,
        "our download ({extra}) failed: {:?}",
        ctx.log_lines()
    );
    Sample { time, cpu }
}

fn external(fixture: &Fixture, program: &str, args: &[String]) -> Sample {
    let out = fixture.dir.join("out/download.bin");
    let _ = std::fs::remove_file(&out);
    let cpu = cpu_time(libc::RUSAGE_CHILDREN);
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|err| panic!("starting {program}: {err}"));
    let time = started.elapsed();
    let cpu = cpu_time(libc::RUSAGE_CHILDREN) - cpu;
    assert!(status.success(), "{program} {args:?}: {status}");
    assert_eq!(
        sha256_of(&out),
        fixture.sha256,
        "{program} download differs"
    );
    Sample { time, cpu }
}

fn tftp_hpa(fixture: &Fixture) -> Sample {
    // `tftp HOST PORT -m binary -c get REMOTE LOCAL` (512-byte blocks, no options).
    let args = [
        "127.0.0.1".to_string(),
        fixture.hpa_port.to_string(),
        "-m".into(),
        "binary".into(),
        "-c".into(),
        "get".into(),
        "file10m.bin".into(),
    ];
    external(fixture, "tftp", &args)
}

fn curl(fixture: &Fixture, blksize: u16) -> Sample {
    let args = [
        "-s".to_string(),
        "--tftp-blksize".into(),
        blksize.to_string(),
        format!("tftp://127.0.0.1:{}/file10m.bin", fixture.hpa_port),
        "-o".into(),
    ];
    external(fixture, "curl", &args)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// The 1-minute load average and the number of CPUs, for the report.
fn load() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "load average {} on {cpus} CPUs",
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// One row: who fetches what, how, over which link.
struct Row<'a> {
    client: &'static str,
    server: &'static str,
    /// "loopback" or "delayed".
    link: &'static str,
    blksize: u16,
    window: u16,
    /// The options requested, as the table prints them.
    options: &'static str,
    run: Box<dyn Fn() -> Sample + 'a>,
}

fn main() {
    let fixture = start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (hpa, atftpd) = (fixture.hpa_port, fixture.atftpd_port);
    let delayed = delay_link(SocketAddr::from(([127, 0, 0, 1], atftpd)), ONE_WAY_DELAY);
    let (fixture, runtime) = (&fixture, &runtime);
    let big = |port: u16, extra: String| -> Box<dyn Fn() -> Sample + '_> {
        Box::new(move || ours(port, "file10m.bin", &fixture.sha256, &extra, runtime))
    };
    let mut rows: Vec<Row> = vec![
        Row {
            client: "ours",
            server: "tftpd-hpa",
            link: "loopback",
            blksize: 512,
            window: 1,
            options: "none",
            run: big(hpa, String::new()),
        },
        Row {
            client: "tftp-hpa",
            server: "tftpd-hpa",
            link: "loopback",
            blksize: 512,
            window: 1,
            options: "none",
            run: Box::new(|| tftp_hpa(fixture)),
        },
    ];
    for blksize in [512u16, 1468, 65464] {
        rows.push(Row {
            client: "ours",
            server: "tftpd-hpa",
            link: "loopback",
            blksize,
            window: 1,
            options: "tsize, blksize",
            run: big(hpa, format!("&tsize=true&blksize={blksize}")),
        });
        rows.push(Row {
            client: "curl",
            server: "tftpd-hpa",
            link: "loopback",
            blksize,
            window: 1,
            options: "tsize, blksize",
            run: Box::new(move || curl(fixture, blksize)),
        });
    }
    for window in [1].into_iter().chain(WINDOWS) {
        let extra = if window == 1 {
            String::new()
        } else {
            format!("&windowsize={window}")
        };
        rows.push(Row {
            client: "ours",
            server: "atftpd",
            link: "loopback",
            blksize: 512,
            window,
            options: if window == 1 { "none" } else { "windowsize" },
            run: big(atftpd, extra.clone()),
        });
        let port = delayed.port;
        rows.push(Row {
            client: "ours",
            server: "atftpd",
            link: "delayed",
            blksize: 512,
            window,
            options: if window == 1 { "none" } else { "windowsize" },
            run: Box::new(move || ours(port, "file1m.bin", &fixture.small_sha256, &extra, runtime)),
        });
    }
    // `TFTP_BENCH_ONLY="ours tftpd-hpa loopback 512 1,tftp-hpa"` keeps the rows whose "client
    // server link blksize window" contains one of the comma-separated needles (for profiling
    // one row); the comparisons are then left out.
    let only = std::env::var("TFTP_BENCH_ONLY").ok();
    if let Some(only) = &only {
        rows.retain(|row| {
            let key = format!(
                "{} {} {} {} {}",
                row.client, row.server, row.link, row.blksize, row.window
            );
            only.split(',').any(|needle| key.contains(needle.trim()))
        });
    }
    let load_before = load();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); rows.len()];
    // One warm-up round, not recorded (page cache, first fork of the server).
    for round in 0..=ROUNDS {
        for (slot, row) in samples.iter_mut().zip(&rows) {
            let sample = (row.run)();
            if round > 0 {
                slot.push(sample);
            }
        }
    }
    let load_after = load();
    let times: Vec<Duration> = samples
        .iter()
        .map(|s| median(s.iter().map(|s| s.time).collect()))
        .collect();
    let cpus: Vec<Duration> = samples
        .iter()
        .map(|s| median(s.iter().map(|s| s.cpu).collect()))
        .collect();
    let size = |row: &Row| {
        if row.link == "delayed" {
            DELAYED_FILE_SIZE
        } else {
            FILE_SIZE
        }
    };
    let mib = |row: &Row| size(row) as f64 / f64::from(1 << 20);
    println!(
        "## TFTP download ({} MiB on loopback, {} MiB through a {} ms round trip)\n",
        FILE_SIZE >> 20,
        DELAYED_FILE_SIZE >> 20,
        2.0 * ONE_WAY_DELAY.as_secs_f64() * 1e3
    );
    println!(
        "Median of {ROUNDS} interleaved rounds (every row once per round, after one warm-up \
         round); every download verified by SHA-256. Ours runs in the bench process (no process \
         start-up), the reference clients as processes (their start-up, about a millisecond, is \
         in their time). Options equal per comparison: none against tftp-hpa (its client sends \
         none), tsize + blksize against curl (it always sends both). CPU is user + system \
         time from getrusage (RUSAGE_SELF around our probe, RUSAGE_CHILDREN around a reference \
         client; the server's is in neither; not given for the delayed rows, where the relay's threads \
         share our process). The delayed link is a relay \
         in the bench process holding every datagram {} us in each direction (the host kernel \
         has no netem). Machine: {load_before} at the start, {load_after} at the end.\n",
        ONE_WAY_DELAY.as_micros()
    );
    println!(
        "| client | server | link | block size | window | options | median time (s) | \
         throughput (MB/s) | CPU (ms per MiB) |"
    );
    println!("|---|---|---|---:|---:|---|---:|---:|---:|");
    for (i, row) in rows.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.3} | {:.1} | {} |",
            row.client,
            row.server,
            row.link,
            row.blksize,
            if row.window == 1 {
                "lock-step".to_string()
            } else {
                row.window.to_string()
            },
            row.options,
            times[i].as_secs_f64(),
            size(row) as f64 / times[i].as_secs_f64() / 1e6,
            // The relay's threads share the bench process: RUSAGE_SELF would count them.
            if row.link == "delayed" {
                "(relay counted too)".to_string()
            } else {
                format!("{:.1}", cpus[i].as_secs_f64() * 1e3 / mib(row))
            }
        );
    }
    if only.is_some() {
        return;
    }
    let find =
        |client: &str, server: &str, link: &str, blksize: u16, window: u16, options: &str| {
            rows.iter()
                .position(|r| {
                    (r.client, r.server, r.link, r.blksize, r.window, r.options)
                        == (client, server, link, blksize, window, options)
                })
                .unwrap()
        };
    // Per-round ratios of row a's time to row b's (both ran in the same round): their median,
    // lowest and highest.
    let paired = |a: usize, b: usize| {
        let mut ratios: Vec<f64> = samples[a]
            .iter()
            .zip(&samples[b])
            .map(|(x, y)| x.time.as_secs_f64() / y.time.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        (
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
        )
    };
    let goal = |met: bool| if met { "met" } else { "missed" };
    println!(
        "\nRatios are the median of the {ROUNDS} per-round ratios (both rows of a ratio ran in the \
         same round), lowest to highest in brackets.\n"
    );
    println!("| comparison | ratio (lowest to highest) | goal |");
    println!("|---|---:|---|");
    let ours_512 = find("ours", "tftpd-hpa", "loopback", 512, 1, "none");
    let hpa_512 = find("tftp-hpa", "tftpd-hpa", "loopback", 512, 1, "none");
    let (r, low, high) = paired(ours_512, hpa_512);
    println!(
        "| time ours / tftp-hpa, 512 B lock-step, no options | {r:.2} ({low:.2} to {high:.2}) | \
         at most 0.90: {} |",
        goal(r <= 0.9)
    );
    let with_options = "tsize, blksize";
    for blksize in [512u16, 1468, 65464] {
        let (r, low, high) = paired(
            find("ours", "tftpd-hpa", "loopback", blksize, 1, with_options),
            find("curl", "tftpd-hpa", "loopback", blksize, 1, with_options),
        );
        let judged = if blksize == 512 {
            "(not a goal)".to_string()
        } else {
            format!("at most 1.00: {}", goal(r <= 1.0))
        };
        println!(
            "| time ours / curl, {blksize} B lock-step, tsize + blksize | {r:.2} ({low:.2} to \
             {high:.2}) | {judged} |"
        );
    }
    for link in ["loopback", "delayed"] {
        let lock_step = find("ours", "atftpd", link, 512, 1, "none");
        for window in WINDOWS {
            let windowed = find("ours", "atftpd", link, 512, window, "windowsize");
            let (r, low, high) = paired(lock_step, windowed);
            println!(
                "| speed-up of windowsize {window} over lock-step, ours from atftpd, 512 B, \
                 {link} | {r:.2}x ({low:.2}x to {high:.2}x) | at least 5x: {} |",
                goal(r >= 5.0)
            );
        }
    }
    let delayed_lock_step = find("ours", "atftpd", "delayed", 512, 1, "none");
    let blocks = DELAYED_FILE_SIZE / 512 + 1;
    println!(
        "| lock-step time per block through the relay (the round trip the client saw) | {:.3} ms \
         | (set: {:.1} ms) |",
        times[delayed_lock_step].as_secs_f64() * 1e3 / blocks as f64,
        2.0 * ONE_WAY_DELAY.as_secs_f64() * 1e3
    );
    let cpu_ratio = cpus[ours_512].as_secs_f64() / cpus[hpa_512].as_secs_f64();
    println!("| CPU ours / tftp-hpa, 512 B lock-step | {cpu_ratio:.2} | (measured, no goal) |");
}
