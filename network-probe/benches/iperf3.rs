//! Throughput of the native iperf3 client against the `iperf3 -c` binary (the baseline),
//! both against the same `iperf3 -s` on loopback, in interleaved rounds. The figure compared is
//! the server-side receive rate each client reports (the server's own count in both cases),
//! and the client's CPU time (user + system, getrusage: RUSAGE_SELF around our in-process test,
//! RUSAGE_CHILDREN around the waited-for `iperf3 -c`; the server is in neither) per GiB the
//! server received. Prints a markdown section; the goals are ours/theirs >= 1.0 in throughput
//! and <= 1.0 in CPU per GiB.
//!
//! The machine is shared, and one test's rate moves with what else runs during it. So each
//! round runs both clients back to back (the order alternating) and yields one ratio; the
//! table gives the median of the per-round ratios and their spread (lowest, quartiles,
//! highest), and counts the rounds in which ours was at least as fast.
// Cargo gives this target every dependency of the package; it uses the library's API only.
#![allow(unused_crate_dependencies)]

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use network_probe::probe::{
    ProbeContext, Query,
    iperf3::{Config, Iperf3Prober},
};

/// Rounds per row; `IPERF3_BENCH_ROUNDS` overrides (odd keeps one median).
const ROUNDS: usize = 11;
const SECONDS: u64 = 2;

/// `iperf3 -s` on a free loopback port, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("iperf3")
            .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting iperf3 -s (install the iperf3 package)");
        // Wait for the listening socket without connecting (a bare connect is a failed test).
        let filter = format!("sport = :{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listening = Command::new("ss")
                .args(["-Hltn", &filter])
                .output()
                .is_ok_and(|output| !output.stdout.is_empty());
            if listening {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "iperf3 -s not listening after 10 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One test: the server-side receive rate (bits per second) and the client's CPU seconds per
/// GiB the server received.
#[derive(Clone, Copy)]
struct Sample {
    rate: f64,
    cpu_per_gib: f64,
}

/// User + system CPU time of `who` (RUSAGE_SELF or RUSAGE_CHILDREN) so far, in seconds.
fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the zeroed plain-old-data struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(who, &mut usage) }, 0);
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

const GIB: f64 = (1u64 << 30) as f64;

/// One test by our client, in process.
fn ours(port: u16, parallel: u32) -> Sample {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let query = Query::parse(&format!(
        "target=127.0.0.1:{port}&period={SECONDS}&parallel={parallel}"
    ))
    .unwrap();
    let config = Config::from_query(&query).unwrap();
    let ctx = ProbeContext::new(Instant::now() + Duration::from_secs(SECONDS + 10));
    let prober = Iperf3Prober::new();
    let cpu = cpu_seconds(libc::RUSAGE_SELF);
    let measurement = runtime
        .block_on(prober.measure(&ctx, &config))
        .unwrap_or_else(|failure| panic!("our client failed: {failure:?}"));
    let cpu = cpu_seconds(libc::RUSAGE_SELF) - cpu;
    Sample {
        rate: measurement.received_bytes as f64 * 8.0 / measurement.received_seconds,
        cpu_per_gib: cpu / (measurement.received_bytes as f64 / GIB),
    }
}

/// One test by `iperf3 -c`. The server takes a moment to accept the next client after a test,
/// so "busy" is retried.
fn theirs(port: u16, parallel: u32) -> Sample {
    for _ in 0..50 {
        let cpu = cpu_seconds(libc::RUSAGE_CHILDREN);
        let output = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-J"])
            .args(["-t", &SECONDS.to_string(), "-P", &parallel.to_string()])
            .output()
            .expect("running iperf3 -c");
        let cpu = cpu_seconds(libc::RUSAGE_CHILDREN) - cpu;
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("iperf3 -J output");
        let received = &report["end"]["sum_received"];
        if let (Some(rate), Some(bytes)) = (
            received["bits_per_second"].as_f64(),
            received["bytes"].as_f64(),
        ) {
            return Sample {
                rate,
                cpu_per_gib: cpu / (bytes / GIB),
            };
        }
        assert!(
            report["error"].as_str().is_some_and(|e| e.contains("busy")),
            "iperf3 -c failed: {report}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    panic!("the server stayed busy for 5 s");
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The load averages and the number of CPUs, for the report.
fn load() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "load average {} on {cpus} CPUs",
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// The value at fraction `q` (0 to 1) of the sorted `values` (nearest rank).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// One row of the table: per-round samples of both clients.
struct Row {
    parallel: u32,
    ours: Vec<Sample>,
    theirs: Vec<Sample>,
}

fn main() {
    let rounds: usize = std::env::var("IPERF3_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS);
    let parallels: Vec<u32> = std::env::var("IPERF3_BENCH_PARALLEL")
        .ok()
        .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2]);
    let server = Server::start();
    let load_before = load();
    let mut rows = Vec::new();
    for &parallel in &parallels {
        let mut row = Row {
            parallel,
            ours: Vec::new(),
            theirs: Vec::new(),
        };
        for round in 0..rounds {
            // Alternate who goes first so drift in machine load hits both alike.
            if round % 2 == 0 {
                row.ours.push(ours(server.port, parallel));
                row.theirs.push(theirs(server.port, parallel));
            } else {
                row.theirs.push(theirs(server.port, parallel));
                row.ours.push(ours(server.port, parallel));
            }
        }
        let runs = |samples: &[Sample]| {
            samples
                .iter()
                .map(|s| format!("{:.1} Gbit/s {:.2} s/GiB", s.rate / 1e9, s.cpu_per_gib))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        eprintln!(
            "P{parallel}: ours {} | theirs {}",
            runs(&row.ours),
            runs(&row.theirs)
        );
        rows.push(row);
    }
    let load_after = load();
    let goal = |met: bool| if met { "met" } else { "missed" };
    println!("## iperf3 client throughput (loopback, {rounds} paired rounds of {SECONDS} s)\n");
    println!(
        "Both clients against the same `iperf3 -s` on 127.0.0.1, back to back in each round, \
         the order alternating per round; the rate is the server's count of what it received. \
         Each round gives one ratio ours / iperf3 -c; the table has the median of the \
         per-round ratios and their spread (lowest / lower quartile / upper quartile / \
         highest) and the rounds ours was at least as fast. CPU is the client's user + system \
         time (getrusage: RUSAGE_SELF around our in-process test, RUSAGE_CHILDREN around \
         `iperf3 -c`; the server's is in neither) per GiB the server received. Machine: \
         {load_before} at the start, {load_after} at the end.\n"
    );
    println!(
        "| streams | ours (Gbit/s, median) | iperf3 -c (Gbit/s, median) | ours / iperf3, median of rounds | spread | rounds ours >= iperf3 | goal >= 1.0 | CPU ours / iperf3 (s/GiB), median of rounds | spread | goal <= 1.0 |"
    );
    println!("|---|---:|---:|---:|---|---:|---|---:|---|---|");
    for row in &rows {
        let rate_ratios: Vec<f64> = row
            .ours
            .iter()
            .zip(&row.theirs)
            .map(|(o, t)| o.rate / t.rate)
            .collect();
        let cpu_ratios: Vec<f64> = row
            .ours
            .iter()
            .zip(&row.theirs)
            .map(|(o, t)| o.cpu_per_gib / t.cpu_per_gib)
            .collect();
        let spread = |values: &[f64]| {
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2}",
                quantile(values, 0.0),
                quantile(values, 0.25),
                quantile(values, 0.75),
                quantile(values, 1.0)
            )
        };
        let rates = |samples: &[Sample]| samples.iter().map(|s| s.rate).collect::<Vec<_>>();
        let cpu = |samples: &[Sample]| samples.iter().map(|s| s.cpu_per_gib).collect::<Vec<_>>();
        let (ratio, cpu_ratio) = (quantile(&rate_ratios, 0.5), quantile(&cpu_ratios, 0.5));
        println!(
            "| {} | {:.2} | {:.2} | {ratio:.2} | {} | {} of {} | {} | {cpu_ratio:.2} ({:.3} / {:.3}) | {} | {} |",
            row.parallel,
            median(&mut rates(&row.ours)) / 1e9,
            median(&mut rates(&row.theirs)) / 1e9,
            spread(&rate_ratios),
            rate_ratios.iter().filter(|&&r| r >= 1.0).count(),
            rate_ratios.len(),
            goal(ratio >= 1.0),
            median(&mut cpu(&row.ours)),
            median(&mut cpu(&row.theirs)),
            spread(&cpu_ratios),
            goal(cpu_ratio <= 1.0)
        );
    }
    println!(
        "\nJudged per row on the median of the per-round ratios of this run (runs on a shared \
         VM vary by tens of percent; both clients run the same way, back to back)."
    );
}
