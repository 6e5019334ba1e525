//! TFTP download speed: the `tftp` prober's native client against the tftp-hpa client and curl,
//! each fetching the same 10 MiB file from one tftpd-hpa on loopback with the same block size.
//!
//! Rounds are interleaved (every client once per round, in turn) so drift on a shared machine
//! hits all of them alike; the medians are compared as ratios (time ours / time theirs, below
//! 1 means ours is faster). Every download is checked against the file's SHA-256.
//! Needs root (tftpd-hpa forks, chroots and drops privileges) and the Debian packages
//! tftpd-hpa, tftp-hpa and curl. Prints a markdown section on stdout.
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

struct Fixture {
    dir: PathBuf,
    server: Child,
    port: u16,
    sha256: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
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
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Command::new("in.tftpd")
        .args([
            "-L",
            "-s",
            dir.to_str().unwrap(),
            "-a",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting in.tftpd (apt-get install tftpd-hpa; run as root)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "in.tftpd did not bind");
        std::thread::sleep(Duration::from_millis(20));
    }
    Fixture {
        sha256: sha256_of(&file),
        dir,
        server,
        port,
    }
}

fn ours(fixture: &Fixture, blksize: u16, runtime: &tokio::runtime::Runtime) -> Duration {
    let query = Query::parse(&format!(
        "target=127.0.0.1:{}&tftp_filename=file10m.bin&blksize={blksize}&tsize=true\
         &expected_sha256={}",
        fixture.port, fixture.sha256
    ))
    .unwrap();
    let started = Instant::now();
    let ctx = ProbeContext::new(started + Duration::from_secs(60));
    let report = runtime.block_on(tftp::probe(&ctx, &query)).unwrap();
    let elapsed = started.elapsed();
    assert!(report.success, "our download failed: {:?}", ctx.log_lines());
    elapsed
}

fn external(fixture: &Fixture, program: &str, args: &[String]) -> Duration {
    let out = fixture.dir.join("out/download.bin");
    let _ = std::fs::remove_file(&out);
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|err| panic!("starting {program}: {err}"));
    let elapsed = started.elapsed();
    assert!(status.success(), "{program} {args:?}: {status}");
    assert_eq!(
        sha256_of(&out),
        fixture.sha256,
        "{program} download differs"
    );
    elapsed
}

fn tftp_hpa(fixture: &Fixture) -> Duration {
    // `tftp HOST PORT -m binary -c get REMOTE LOCAL` (512-byte blocks, no options).
    let args = [
        "127.0.0.1".to_string(),
        fixture.port.to_string(),
        "-m".into(),
        "binary".into(),
        "-c".into(),
        "get".into(),
        "file10m.bin".into(),
    ];
    external(fixture, "tftp", &args)
}

fn curl(fixture: &Fixture, blksize: u16) -> Duration {
    let args = [
        "-s".to_string(),
        "--tftp-blksize".into(),
        blksize.to_string(),
        format!("tftp://127.0.0.1:{}/file10m.bin", fixture.port),
        "-o".into(),
    ];
    external(fixture, "curl", &args)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let fixture = start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let names = [
        "ours 512",
        "tftp-hpa 512",
        "curl 512",
        "ours 1468",
        "curl 1468",
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    // One warm-up round, not recorded (page cache, first fork of the server).
    for round in 0..=ROUNDS {
        let sample = [
            ours(&fixture, 512, &runtime),
            tftp_hpa(&fixture),
            curl(&fixture, 512),
            ours(&fixture, 1468, &runtime),
            curl(&fixture, 1468),
        ];
        if round > 0 {
            for (slot, time) in times.iter_mut().zip(sample) {
                slot.push(time);
            }
        }
    }
    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    let ratio = |a: usize, b: usize| medians[a].as_secs_f64() / medians[b].as_secs_f64();
    println!(
        "## TFTP download ({} MiB from tftpd-hpa on loopback)\n",
        FILE_SIZE >> 20
    );
    println!("Median of {ROUNDS} interleaved rounds; every download verified by SHA-256.\n");
    println!("| client | block size | median time (s) | throughput (MB/s) |");
    println!("|---|---|---|---|");
    for (name, median) in names.iter().zip(&medians) {
        let (client, blksize) = name.split_once(' ').unwrap();
        println!(
            "| {client} | {blksize} | {:.3} | {:.1} |",
            median.as_secs_f64(),
            FILE_SIZE as f64 / median.as_secs_f64() / 1e6
        );
    }
    println!("\n| comparison | ratio (time ours / time theirs) |");
    println!("|---|---|");
    println!("| ours / tftp-hpa, 512 B | {:.2} |", ratio(0, 1));
    println!("| ours / curl, 512 B | {:.2} |", ratio(0, 2));
    println!("| ours / curl, 1468 B | {:.2} |", ratio(3, 4));
}
