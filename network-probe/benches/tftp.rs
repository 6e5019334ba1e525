//! TFTP download speed and CPU: the `tftp` prober's native client against the tftp-hpa client
//! and curl, each fetching the same 10 MiB file from one tftpd-hpa on loopback with the same
//! block size (512, 1468 and 65464 bytes, lock-step); then RFC 7440 windows against lock-step,
//! both ours, fetching the same file from atftpd (the only server here that speaks windowsize).
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
    net::UdpSocket,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use network_probe::probe::{ProbeContext, Query, tftp};
use sha2::{Digest as _, Sha256};

const FILE_SIZE: usize = 10 << 20;
const ROUNDS: usize = 7;
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

/// Our client, in process: `extra` holds the options (blksize, windowsize).
fn ours(fixture: &Fixture, port: u16, extra: &str, runtime: &tokio::runtime::Runtime) -> Sample {
    let query = Query::parse(&format!(
        "target=127.0.0.1:{port}&tftp_filename=file10m.bin&tsize=true&expected_sha256={}{extra}",
        fixture.sha256
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

fn main() {
    let fixture = start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (hpa, atftpd) = (fixture.hpa_port, fixture.atftpd_port);
    type Run<'a> = Box<dyn Fn() -> Sample + 'a>;
    // (client, server, block size, window, how)
    let mut clients: Vec<(&str, &str, u16, u16, Run)> = vec![
        (
            "ours",
            "tftpd-hpa",
            512,
            1,
            Box::new(|| ours(&fixture, hpa, "", &runtime)),
        ),
        (
            "tftp-hpa",
            "tftpd-hpa",
            512,
            1,
            Box::new(|| tftp_hpa(&fixture)),
        ),
        (
            "curl",
            "tftpd-hpa",
            512,
            1,
            Box::new(|| curl(&fixture, 512)),
        ),
    ];
    for blksize in [1468u16, 65464] {
        let extra = format!("&blksize={blksize}");
        let (fixture, runtime) = (&fixture, &runtime);
        clients.push((
            "ours",
            "tftpd-hpa",
            blksize,
            1,
            Box::new(move || ours(fixture, hpa, &extra, runtime)),
        ));
        clients.push((
            "curl",
            "tftpd-hpa",
            blksize,
            1,
            Box::new(move || curl(fixture, blksize)),
        ));
    }
    clients.push((
        "ours",
        "atftpd",
        512,
        1,
        Box::new(|| ours(&fixture, atftpd, "", &runtime)),
    ));
    for window in WINDOWS {
        let extra = format!("&windowsize={window}");
        let (fixture, runtime) = (&fixture, &runtime);
        clients.push((
            "ours",
            "atftpd",
            512,
            window,
            Box::new(move || ours(fixture, atftpd, &extra, runtime)),
        ));
    }
    let load_before = load();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); clients.len()];
    // One warm-up round, not recorded (page cache, first fork of the server).
    for round in 0..=ROUNDS {
        for (slot, (.., run)) in samples.iter_mut().zip(&clients) {
            let sample = run();
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
    let mib = FILE_SIZE as f64 / f64::from(1 << 20);
    let row = |client: &str, server: &str, blksize: u16, window: u16| {
        clients
            .iter()
            .position(|c| (c.0, c.1, c.2, c.3) == (client, server, blksize, window))
            .unwrap()
    };
    let ratio = |a: usize, b: usize| times[a].as_secs_f64() / times[b].as_secs_f64();
    println!("## TFTP download ({mib} MiB on loopback)\n");
    println!(
        "Median of {ROUNDS} interleaved rounds (every client once per round, after one warm-up \
         round); every download verified by SHA-256. Ours runs in the bench process, the \
         reference clients as processes (their start-up is in their time). CPU is user + system \
         time from getrusage (RUSAGE_SELF around our probe, RUSAGE_CHILDREN around a reference \
         client; the server's is in neither). Machine: {load_before} at the start, \
         {load_after} at the end.\n"
    );
    println!(
        "| client | server | block size | window | median time (s) | throughput (MB/s) | CPU (ms per MiB) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (i, (client, server, blksize, window, _)) in clients.iter().enumerate() {
        println!(
            "| {client} | {server} | {blksize} | {} | {:.3} | {:.1} | {:.1} |",
            if *window == 1 {
                "lock-step".to_string()
            } else {
                window.to_string()
            },
            times[i].as_secs_f64(),
            FILE_SIZE as f64 / times[i].as_secs_f64() / 1e6,
            cpus[i].as_secs_f64() * 1e3 / mib
        );
    }
    let ours_512 = row("ours", "tftpd-hpa", 512, 1);
    let goal = |met: bool| if met { "met" } else { "not met" };
    println!("\n| comparison | ratio | goal |");
    println!("|---|---:|---|");
    let r = ratio(ours_512, row("tftp-hpa", "tftpd-hpa", 512, 1));
    println!(
        "| time ours / tftp-hpa, 512 B lock-step | {r:.2} | at most 0.90: {} |",
        goal(r <= 0.9)
    );
    for blksize in [512u16, 1468, 65464] {
        let r = ratio(
            row("ours", "tftpd-hpa", blksize, 1),
            row("curl", "tftpd-hpa", blksize, 1),
        );
        let judged = if blksize == 512 {
            "(not a goal)".to_string()
        } else {
            format!("at most 1.00: {}", goal(r <= 1.0))
        };
        println!("| time ours / curl, {blksize} B lock-step | {r:.2} | {judged} |");
    }
    let lock_step = row("ours", "atftpd", 512, 1);
    for window in WINDOWS {
        let speedup = 1.0 / ratio(row("ours", "atftpd", 512, window), lock_step);
        println!(
            "| speed-up of windowsize {window} over lock-step, ours from atftpd, 512 B | \
             {speedup:.2}x | at least 5x: {} |",
            goal(speedup >= 5.0)
        );
    }
    let cpu_ratio =
        cpus[ours_512].as_secs_f64() / cpus[row("tftp-hpa", "tftpd-hpa", 512, 1)].as_secs_f64();
    println!("| CPU ours / tftp-hpa, 512 B lock-step | {cpu_ratio:.2} | (measured, no goal) |");
}
