//! The ping prober under load (`cargo bench -p network-probe --bench ping`, as root): the daemon
//! in namespace `a` probes 1,024 addresses of namespace `b` (a /22 routed to b, answered by b's
//! kernel through a `local` route) over a veth pair, and this prints a markdown section:
//!
//! - sustained packets per second against the demand (targets / interval, capped by
//!   `--ping.max-pps`), the reply ratio, and the daemon's CPU share from /proc/<pid>/stat
//!   (utime + stime over wall time), and CPU time per packet next to iputils `ping -f` on the
//!   same path, in interleaved rounds where both run at once (ping's rusage per packet, ours
//!   over the same interval), so both see the same load;
//! - RTT accuracy: the median of our kernel-stamped RTTs and of our user-clock RTTs against
//!   iputils `ping`'s median on the same target in the same run, as ratios.
// Cargo gives this target every dependency of the package; it uses the library's API only.
#![allow(unused_crate_dependencies)]

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use network_probe_testkit::{Daemon, VethPair, dotted, sample};

const TARGETS: u32 = 1024;
const INTERVAL_MS: u32 = 100;
const MAX_PPS: u32 = 10_000;
const MEASURE: Duration = Duration::from_secs(10);

fn probe(daemon: &Daemon, query: &str) -> String {
    let (status, body) = daemon
        .get(&format!("/probe?module=ping&{query}"))
        .expect("probe");
    assert_eq!(status, 200, "{body}");
    body
}

/// CPU seconds (user + system) the process has used, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3) here.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// CPU seconds (user + system) used so far by the children we have waited for.
fn children_cpu_seconds() -> f64 {
    // SAFETY: zeroed rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to an rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Runs `ip netns exec ns program args` (exec'd, so one process) and returns (stdout, CPU
/// seconds it used).
fn run_with_rusage(ns: &str, program: &str, args: &[&str]) -> (String, f64) {
    let before = children_cpu_seconds();
    let output = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .output()
        .expect("spawn");
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        children_cpu_seconds() - before,
    )
}

fn main() {
    let pair = VethPair::new();
    // b answers for a whole /22; a routes it to b.
    let prefix = format!("10.232.{}.0/22", (pair.a_addr[2] % 60) * 4);
    pair.exec(
        &pair.b,
        "ip",
        &["route", "add", "local", &prefix, "dev", "lo"],
    );
    pair.exec(
        &pair.a,
        "ip",
        &["route", "add", &prefix, "via", &dotted(pair.b_addr)],
    );
    let base = (pair.a_addr[2] % 60) * 4;
    let targets: Vec<String> = (0..TARGETS)
        .map(|i| format!("10.232.{}.{}", base + (i / 256) as u8, i % 256))
        .collect();

    let interval = format!("{INTERVAL_MS}ms");
    let max_pps = MAX_PPS.to_string();
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--ping.interval",
            &interval,
            "--ping.timeout",
            "1s",
            "--ping.max-pps",
            &max_pps,
            "--ping.max-targets",
            "2000",
            "--log.level",
            "warn",
        ],
    );
    // RTT accuracy first, on an idle daemon: b's own address, iputils ping alongside.
    let b4 = dotted(pair.b_addr);
    probe(&daemon, &format!("target={b4}"));
    let (output, _) = run_with_rusage(&pair.a, "ping", &["-n", "-c", "100", "-i", "0.02", &b4]);
    let ping_rtts: Vec<f64> = output
        .lines()
        .filter_map(|line| line.split("time=").nth(1))
        .map(|time| time.trim_end_matches(" ms").parse::<f64>().unwrap() * 1000.0)
        .collect();
    let (_, debug) = daemon
        .get(&format!("/probe?module=ping&target={b4}&debug=true"))
        .unwrap();
    let line = debug
        .lines()
        .find(|line| line.starts_with(&format!("{b4}:")))
        .unwrap();
    let field = |name: &str| -> Vec<f64> {
        line.split(&format!("| {name}:"))
            .nth(1)
            .unwrap()
            .split('|')
            .next()
            .unwrap()
            .split_whitespace()
            .filter(|value| *value != "lost" && !value.ends_with('u'))
            .map(|value| value.parse().unwrap())
            .collect()
    };
    let (kernel, user) = (field("rtt_us"), field("user_rtt_us"));
    let (ours, ping, user_clock) = (
        median(kernel.clone()),
        median(ping_rtts.clone()),
        median(user.clone()),
    );

    // Load: every target requested, then a steady-state measurement.
    for chunk in targets.chunks(200) {
        let query: Vec<String> = chunk.iter().map(|t| format!("target={t}")).collect();
        probe(&daemon, &query.join("&"));
    }
    thread::sleep(Duration::from_secs(3));
    let counters = |body: &str| {
        (
            sample(body, "icmp_packets_sent_total", "").unwrap(),
            sample(body, "icmp_packets_recv_total", "").unwrap(),
            sample(body, "icmp_packets_error_total", "").unwrap(),
        )
    };
    let pid = daemon.child.id();
    let first = format!("target={}", targets[0]);
    let (sent0, recv0, _) = counters(&probe(&daemon, &first));
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    thread::sleep(MEASURE);
    let (sent1, recv1, errors) = counters(&probe(&daemon, &first));
    let (cpu1, t1) = (cpu_seconds(pid), Instant::now());
    let wall = (t1 - t0).as_secs_f64();
    let pps = (sent1 - sent0) / wall;
    let demand = (f64::from(TARGETS + 1) * 1000.0 / f64::from(INTERVAL_MS)).min(f64::from(MAX_PPS));
    let reply_ratio = (recv1 - recv0) / (sent1 - sent0);
    let cpu_share = (cpu1 - cpu0) / wall;
    let ours_per_packet = (cpu1 - cpu0) / (sent1 - sent0);

    // Baseline, interleaved under the same load: in each round iputils `ping -f` floods one of
    // the same targets while the daemon keeps probing all of them, and each side's CPU time per
    // packet is taken over that same interval (ours from /proc, ping's from its rusage), so
    // both carry the load of the other and of the machine's neighbours at that moment.
    const ROUNDS: u32 = 5;
    const FLOOD: u32 = 10_000;
    let flood_count = FLOOD.to_string();
    let (mut ours_flooded, mut ping_flooded, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (sent0, _, _) = counters(&probe(&daemon, &first));
        let cpu0 = cpu_seconds(pid);
        let (_, ping_cpu) = run_with_rusage(
            &pair.a,
            "ping",
            &["-q", "-f", "-c", &flood_count, &targets[1]],
        );
        let (sent1, _, _) = counters(&probe(&daemon, &first));
        let ours = (cpu_seconds(pid) - cpu0) / (sent1 - sent0);
        let theirs = ping_cpu / f64::from(FLOOD);
        ours_flooded.push(ours);
        ping_flooded.push(theirs);
        ratios.push(ours / theirs);
    }
    let (ours_beside_ping, ping_per_packet, ratio) =
        (median(ours_flooded), median(ping_flooded), median(ratios));

    println!("## ping prober\n");
    println!(
        "{TARGETS} targets in b (a /22 via a veth), interval {INTERVAL_MS} ms, --ping.max-pps {MAX_PPS}, measured over {wall:.1} s.\n"
    );
    println!("| figure | value | baseline | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| sustained packets/s | {pps:.0} | demand {demand:.0} | {:.3} |",
        pps / demand
    );
    println!("| replies / requests | {reply_ratio:.4} | 1 | {reply_ratio:.4} |");
    println!("| socket errors | {errors} | 0 | |");
    println!("| daemon CPU share | {:.1} % | | |", cpu_share * 100.0);
    println!(
        "| CPU per packet (µs), ours alone | {:.2} | | |",
        ours_per_packet * 1e6
    );
    println!(
        "| CPU per packet (µs), {ROUNDS} interleaved rounds beside `ping -f -c {FLOOD}` (medians; ratio: median of the rounds') | {:.2} | iputils `ping -f`: {:.2} | {ratio:.2} |",
        ours_beside_ping * 1e6,
        ping_per_packet * 1e6,
    );
    println!(
        "| median RTT (µs) on an idle daemon, kernel stamps | {ours:.1} ({} samples) | iputils ping: {ping:.1} ({} samples) | {:.2} |",
        kernel.len(),
        ping_rtts.len(),
        ours / ping
    );
    println!(
        "| median RTT (µs), our user clock | {user_clock:.1} | kernel stamps: {ours:.1} | {:.2} |",
        user_clock / ours
    );
    println!();
}
