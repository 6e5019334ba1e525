//! The ping prober under load (`cargo bench -p network-probe --bench ping`, as root): the daemon
//! in namespace `a` probes addresses of namespace `b` (a /18 routed to b, answered by b's
//! kernel through a `local` route) over a veth pair, and this prints a markdown section:
//!
//! - RTT accuracy: the median of our kernel-stamped RTTs and of our user-clock RTTs against
//!   iputils `ping`'s median on the same target in the same run, as ratios;
//! - (a) CPU per echo request at 20,000 echoes/s across 2,000 targets (interval 100 ms): the
//!   daemon's utime + stime from /proc/<pid>/stat over a measured window, per request sent;
//! - (b) the sustained rate across 10,000 targets at a demand of 100,000 echoes/s, the daemon
//!   pinned to one CPU (`taskset -c 1` in front of it, so its thread and the kernel work its
//!   system calls do run on that CPU only);
//! - the daemon and fping on CPU 1 in both loads, b's receive queue steered to CPU 0 (RPS): b's
//!   echo work is the peer's cost, not charged to the sender's system calls (docs/ping.md);
//! - both next to fping on the same targets in the same run, interleaved: each round measures
//!   the daemon over a window, then stops it (SIGSTOP), runs fping (its rusage; in (b) pinned
//!   to the same CPU), and resumes the daemon, so both meet the machine in the same state;
//! - the reference for requests and replies is the target's kernel: b's `Icmp: InEchos` and
//!   `OutEchoReps` (/proc/net/snmp of b) over the same windows, next to our own counters. Its
//!   calibration: b's counters over a window with the daemon stopped and fping not started
//!   (must be 0: nothing else pings b); the daemon's CPU over a window with no target (its
//!   idle cost, in the CPU per echo but not caused by it).
// Cargo gives this target every dependency of the package; it uses the library's API only.
#![allow(unused_crate_dependencies)]

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use network_probe_testkit::{Daemon, VethPair, dotted, sample};

const INTERVAL_MS: u32 = 100;
/// (a): targets, demand 20,000 echoes/s.
const FEW: usize = 2_000;
/// (b): targets, demand 100,000 echoes/s.
const MANY: usize = 10_000;
/// Each daemon window.
const MEASURE: Duration = Duration::from_secs(5);
/// Rounds of (a) and (b).
const ROUNDS_FEW: usize = 3;
const ROUNDS_MANY: usize = 2;
/// Echoes of one fping run: fping holds each sequence number for 10 s and has 65,535
/// ("not enough sequence numbers available" past that).
const FPING_ECHOES: usize = 60_000;
/// After SIGCONT, before the next window: the wheel's backlog of the stop sent and settled.
const SETTLE: Duration = Duration::from_secs(2);

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

/// b's `Icmp: InEchos` and `OutEchoReps` (its kernel's own counts of echo requests received
/// and replies sent), from /proc/net/snmp read inside b.
fn target_counts(pair: &VethPair) -> (f64, f64) {
    let snmp = pair.exec(&pair.b, "cat", &["/proc/net/snmp"]);
    let mut icmp = snmp.lines().filter(|line| line.starts_with("Icmp: "));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let value = |wanted: &str| -> f64 {
        let at = names
            .split_whitespace()
            .position(|name| name == wanted)
            .unwrap();
        values.split_whitespace().nth(at).unwrap().parse().unwrap()
    };
    (value("InEchos"), value("OutEchoReps"))
}

/// Our ICMP counters (sent, received, socket errors, sends missed), read with a probe of an
/// active target.
fn counters(daemon: &Daemon, first: &str) -> (f64, f64, f64, f64) {
    let body = probe(daemon, first);
    (
        sample(&body, "icmp_packets_sent_total", "").unwrap(),
        sample(&body, "icmp_packets_recv_total", "").unwrap(),
        sample(&body, "icmp_packets_error_total", "").unwrap(),
        sample(&body, "network_probe_ping_sends_missed_total", "").unwrap(),
    )
}

/// NET_RX softirqs per CPU so far (/proc/softirqs): where the packets were processed.
fn net_rx() -> Vec<f64> {
    std::fs::read_to_string("/proc/softirqs")
        .unwrap()
        .lines()
        .find(|line| line.trim_start().starts_with("NET_RX:"))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|count| count.parse().unwrap())
        .collect()
}

/// Steers the packets b receives on its veth to CPU 0 (`rps_cpus` of its receive queue, `0`
/// turns it off): b's echo processing, and our reply's way up a's stack behind it, then run
/// in CPU 0's softirq instead of inside the sender's system call on CPU 1.
fn steer(pair: &VethPair, mask: &str) {
    pair.exec(
        &pair.b,
        "sh",
        &[
            "-c",
            &format!(
                "echo {mask} > /sys/class/net/{}/queues/rx-0/rps_cpus",
                pair.b_if
            ),
        ],
    );
}

/// One window of the daemon probing: deltas of everything, read around `MEASURE`.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    wall: f64,
    cpu: f64,
    sent: f64,
    received: f64,
    errors: f64,
    missed: f64,
    target_in: f64,
    target_out: f64,
    /// NET_RX softirqs on CPU 0 and on CPU 1.
    net_rx: [f64; 2],
}

fn daemon_window(pair: &VethPair, daemon: &Daemon, first: &str) -> Window {
    let pid = daemon.child.id();
    // b's counters on both sides of ours, averaged: read at the same moment as ours, to the
    // few milliseconds the reads take.
    let around = |pair: &VethPair| {
        let before = target_counts(pair);
        let ours = counters(daemon, first);
        let after = target_counts(pair);
        (
            ours,
            ((before.0 + after.0) / 2.0, (before.1 + after.1) / 2.0),
        )
    };
    let ((sent0, recv0, errors0, missed0), (in0, out0)) = around(pair);
    let rx0 = net_rx();
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    thread::sleep(MEASURE);
    let ((sent1, recv1, errors1, missed1), (in1, out1)) = around(pair);
    let rx1 = net_rx();
    let (cpu1, t1) = (cpu_seconds(pid), Instant::now());
    Window {
        wall: (t1 - t0).as_secs_f64(),
        cpu: cpu1 - cpu0,
        sent: sent1 - sent0,
        received: recv1 - recv0,
        errors: errors1 - errors0,
        missed: missed1 - missed0,
        target_in: in1 - in0,
        target_out: out1 - out0,
        net_rx: [rx1[0] - rx0[0], rx1[1] - rx0[1]],
    }
}

/// One fping run: CPU seconds, echoes b received and replies it sent during it, its wall
/// time, and the rate b saw while fping was sending (b's count sampled every 50 ms, from its
/// first rise to its last: fping's start-up and its wait for the last replies left out).
struct FpingRun {
    cpu: f64,
    echoes: f64,
    replies: f64,
    wall: f64,
    rate: f64,
}

fn fping(
    pair: &VethPair,
    pin: Option<&str>,
    file: &str,
    count: usize,
    interval_ms: f64,
) -> FpingRun {
    // Its per-target summaries go to a file: a pipe nobody reads while it runs would fill.
    let log_path = format!("{file}.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = vec!["netns", "exec", &pair.a];
    if let Some(cpu) = pin {
        command.extend(["taskset", "-c", cpu]);
    }
    let (count, period, interval) = (
        count.to_string(),
        INTERVAL_MS.to_string(),
        format!("{interval_ms}"),
    );
    command.extend([
        "fping", "-q", "-c", &count, "-p", &period, "-i", &interval, "-f", file,
    ]);
    let before = children_cpu_seconds();
    let (in0, out0) = target_counts(pair);
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(&command)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("fping");
    let mut samples = Vec::new();
    while child.try_wait().expect("fping").is_none() {
        samples.push((Instant::now(), target_counts(pair).0));
        thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().expect("fping");
    let wall = start.elapsed().as_secs_f64();
    // fping exits 1 when a target did not answer at all; the counts below tell the rest.
    assert!(
        status.code().is_some_and(|code| code <= 1),
        "fping: {status}: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let (in1, out1) = target_counts(pair);
    let rising = samples.iter().position(|&(_, count)| count > in0);
    let last = samples.iter().rposition(|&(_, count)| count < in1);
    let rate = match (rising, last) {
        (Some(first), Some(last)) if last > first => {
            let ((t0, c0), (t1, c1)) = (samples[first], samples[last]);
            (c1 - c0) / (t1 - t0).as_secs_f64()
        }
        _ => f64::NAN,
    };
    FpingRun {
        cpu: children_cpu_seconds() - before,
        echoes: in1 - in0,
        replies: out1 - out0,
        wall,
        rate,
    }
}

fn signal(daemon: &Daemon, signal: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.child.id() as i32, signal) };
}

fn request_all(daemon: &Daemon, targets: &[String]) {
    for chunk in targets.chunks(200) {
        let query: Vec<String> = chunk.iter().map(|t| format!("target={t}")).collect();
        probe(daemon, &query.join("&"));
    }
}

fn sum(windows: &[Window]) -> Window {
    windows.iter().fold(Window::default(), |total, w| Window {
        wall: total.wall + w.wall,
        cpu: total.cpu + w.cpu,
        sent: total.sent + w.sent,
        received: total.received + w.received,
        errors: total.errors + w.errors,
        missed: total.missed + w.missed,
        target_in: total.target_in + w.target_in,
        target_out: total.target_out + w.target_out,
        net_rx: [total.net_rx[0] + w.net_rx[0], total.net_rx[1] + w.net_rx[1]],
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A daemon probing nothing yet, with the flags of one load.
fn start_daemon(pair: &VethPair, wrapper: &[&str], max_pps: u32, targets: usize) -> Daemon {
    let (interval, max_pps, targets) = (
        format!("{INTERVAL_MS}ms"),
        max_pps.to_string(),
        targets.to_string(),
    );
    Daemon::start_wrapped(
        &pair.a,
        wrapper,
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
            &targets,
            "--ping.max-active-targets",
            &targets,
            "--log.level",
            "warn",
        ],
    )
}

/// Interleaved rounds of one load: a daemon window, then the daemon stopped, b's counters
/// over a quiet second (calibration), fping, the daemon resumed and settled.
fn rounds(
    pair: &VethPair,
    daemon: &Daemon,
    first: &str,
    rounds: usize,
    fping_args: (Option<&str>, &str, usize, f64),
) -> (Vec<Window>, Vec<FpingRun>, f64) {
    let (mut ours, mut theirs, mut quiet) = (Vec::new(), Vec::new(), 0.0);
    for _ in 0..rounds {
        ours.push(daemon_window(pair, daemon, first));
        signal(daemon, libc::SIGSTOP);
        // Replies to the last requests arrive within microseconds; then nothing may ping b.
        thread::sleep(Duration::from_millis(200));
        let (in0, _) = target_counts(pair);
        thread::sleep(Duration::from_secs(1));
        quiet += target_counts(pair).0 - in0;
        let (pin, file, count, interval) = fping_args;
        theirs.push(fping(pair, pin, file, count, interval));
        signal(daemon, libc::SIGCONT);
        thread::sleep(SETTLE);
    }
    (ours, theirs, quiet)
}

fn main() {
    let pair = VethPair::new();
    // b answers for a whole /18 (16,384 addresses); a routes it to b.
    let prefix = "10.232.0.0/18";
    pair.b_answers_for(prefix);
    // b's side of every echo on CPU 0; the daemon and fping run on CPU 1 (taskset).
    steer(&pair, "1");
    let targets: Vec<String> = (0..MANY)
        .map(|i| format!("10.232.{}.{}", i / 250, 1 + i % 250))
        .collect();
    let files = std::env::temp_dir().join(format!("ping-bench-{}", std::process::id()));
    std::fs::create_dir_all(&files).unwrap();
    let write_targets = |name: &str, count: usize| {
        let path = files.join(name);
        std::fs::write(&path, targets[..count].join("\n") + "\n").unwrap();
        path.into_os_string().into_string().unwrap()
    };
    let (few_file, many_file) = (write_targets("few", FEW), write_targets("many", MANY));
    let first = format!("target={}", targets[0]);

    // (a) 2,000 targets at 100 ms: 20,000 echoes/s, under a --ping.max-pps that does not bind.
    let daemon = start_daemon(&pair, &["taskset", "-c", "1"], 40_000, FEW);
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
    let (ours_rtt, ping_rtt, user_clock) = (
        median(kernel.clone()),
        median(ping_rtts.clone()),
        median(user.clone()),
    );
    // b's address is a target too; then the daemon's idle cost with those two targets only.
    let pid = daemon.child.id();
    let (idle0, idle_t0) = (cpu_seconds(pid), Instant::now());
    thread::sleep(Duration::from_secs(2));
    let idle = (cpu_seconds(pid) - idle0) / idle_t0.elapsed().as_secs_f64();
    request_all(&daemon, &targets[..FEW - 1]);
    thread::sleep(Duration::from_secs(3));
    let load_few = load_average();
    // fping: 2,000 targets, 100 ms apart each, 50 µs between any two: 20,000 echoes/s.
    let (few, fping_few, quiet_few) = rounds(
        &pair,
        &daemon,
        &first,
        ROUNDS_FEW,
        (Some("1"), &few_file, FPING_ECHOES / FEW, 0.05),
    );
    // The same load without steering, once: b's echo work inside the senders' system calls.
    steer(&pair, "0");
    thread::sleep(SETTLE);
    let unsteered = daemon_window(&pair, &daemon, &first);
    signal(&daemon, libc::SIGSTOP);
    thread::sleep(Duration::from_millis(200));
    let fping_unsteered = fping(&pair, Some("1"), &few_file, FPING_ECHOES / FEW, 0.05);
    signal(&daemon, libc::SIGCONT);
    steer(&pair, "1");
    drop(daemon);

    // (b) 10,000 targets at 100 ms: 100,000 echoes/s, the daemon on CPU 1 only.
    let daemon = start_daemon(&pair, &["taskset", "-c", "1"], 200_000, MANY);
    request_all(&daemon, &targets);
    thread::sleep(Duration::from_secs(3));
    let load_many = load_average();
    let (many, fping_many, quiet_many) = rounds(
        &pair,
        &daemon,
        &first,
        ROUNDS_MANY,
        (Some("1"), &many_file, FPING_ECHOES / MANY, 0.01),
    );
    drop(daemon);
    std::fs::remove_dir_all(&files).ok();

    let per_echo = |w: &Window| w.cpu / w.sent * 1e6;
    let fping_per_echo = |run: &FpingRun| run.cpu / run.echoes * 1e6;
    let rate = |w: &Window| w.sent / w.wall;
    let few_total = sum(&few);
    let many_total = sum(&many);
    let few_ratios: Vec<f64> = few
        .iter()
        .zip(&fping_few)
        .map(|(w, run)| per_echo(w) / fping_per_echo(run))
        .collect();
    let many_rate_ratios: Vec<f64> = many
        .iter()
        .zip(&fping_many)
        .map(|(w, run)| rate(w) / run.rate)
        .collect();
    let list = |values: Vec<f64>, digits: usize| {
        values
            .iter()
            .map(|value| format!("{value:.digits$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };

    println!("## ping prober\n");
    println!(
        "The daemon in namespace a, targets in b (a /18 answered by b's kernel through a `local` route, over a veth pair), interval {INTERVAL_MS} ms, timeout 1 s, raw ICMP socket, software kernel stamps. Every figure comes from one run, the daemon and fping interleaved: each round measures the daemon over {} s, stops it (SIGSTOP), checks b's counters stay still over 1 s, runs fping on the same targets at the same demand (60,000 echoes a run: fping holds a sequence number for 10 s and has 65,535; its rate is b's count from its first rise to its last, sampled every 50 ms), and resumes the daemon ({} s to settle). Requests and replies are counted by b's kernel (`Icmp: InEchos`, `OutEchoReps` of /proc/net/snmp in b) over the same windows as our counters (b's read just before and just after ours, averaged). CPU is utime + stime (/proc/<pid>/stat for the daemon, rusage for fping). The daemon and fping both run on CPU 1 (`taskset -c 1`), and b's veth steers what it receives to CPU 0 (`rps_cpus` = 1 on its receive queue): without it, b's kernel answers inside the sender's `sendmsg` (the veth hands the packet to the backlog of the sending CPU, processed when the call re-enables softirqs) and, this kernel lacking CONFIG_IRQ_TIME_ACCOUNTING, that echo work is charged to the sender. With it, b's echo processing and the reply's way back up a's stack run in CPU 0's softirq; the sender pays its own system calls, its stack down to the veth and the reads of its socket. The NET_RX softirq counts per CPU (/proc/softirqs) over the daemon's windows show where the packets were processed; one window and one fping run without steering, at the end of (a), give the old method's figures.\n",
        MEASURE.as_secs(),
        SETTLE.as_secs()
    );
    println!(
        "### (a) 2,000 targets, demand 20,000 echoes/s (`taskset -c 1` in front of the daemon and of fping; --ping.max-pps 40000; load average {load_few})\n"
    );
    println!("| figure | ours | fping 5.1 (`-p 100 -i 0.05 -c 30`) | ratio ours / fping |");
    println!("|---|---|---|---|");
    println!(
        "| CPU per echo request (µs), per round | {} | {} | {} |",
        list(few.iter().map(per_echo).collect(), 2),
        list(fping_few.iter().map(fping_per_echo).collect(), 2),
        list(few_ratios.clone(), 2)
    );
    println!(
        "| CPU per echo request (µs), median of the rounds | **{:.2}** | {:.2} | {:.2} |",
        median(few.iter().map(per_echo).collect()),
        median(fping_few.iter().map(fping_per_echo).collect()),
        median(few_ratios)
    );
    println!(
        "| echoes/s sent | {:.0} | {:.0} | |",
        rate(&few_total),
        median(fping_few.iter().map(|run| run.rate).collect())
    );
    println!(
        "| daemon CPU share | {:.1} % (idle with 2 targets: {:.2} %) | | |",
        few_total.cpu / few_total.wall * 100.0,
        idle * 100.0
    );
    print_truth(&few_total, &fping_few, quiet_few);
    println!(
        "| without steering (b's echo work in the senders' system calls), one window / run: CPU per echo request (µs) | {:.2} | {:.2} | {:.2} |",
        per_echo(&unsteered),
        fping_per_echo(&fping_unsteered),
        per_echo(&unsteered) / fping_per_echo(&fping_unsteered)
    );
    println!();
    println!(
        "### (b) 10,000 targets, demand 100,000 echoes/s, one core (`taskset -c 1` in front of the daemon and of fping; --ping.max-pps 200000; load average {load_many})\n"
    );
    println!("| figure | ours | fping 5.1 (`-p 100 -i 0.01 -c 6`) | ratio ours / fping |");
    println!("|---|---|---|---|");
    println!(
        "| sustained echoes/s, per round (fping: b's count while it sent) | {} | {} | {} |",
        list(many.iter().map(rate).collect(), 0),
        list(fping_many.iter().map(|run| run.rate).collect(), 0),
        list(many_rate_ratios.clone(), 2)
    );
    println!(
        "| sustained echoes/s, all rounds (ours: {:.1} s) / demand 100,000 | **{:.0}** ({:.3}) | {:.0} ({:.3}) | {:.2} |",
        many_total.wall,
        rate(&many_total),
        rate(&many_total) / 100_000.0,
        median(fping_many.iter().map(|run| run.rate).collect()),
        median(fping_many.iter().map(|run| run.rate).collect()) / 100_000.0,
        median(many_rate_ratios)
    );
    println!(
        "| CPU per echo request (µs), all rounds | {:.2} | {:.2} | |",
        per_echo(&many_total),
        median(fping_many.iter().map(fping_per_echo).collect())
    );
    println!(
        "| CPU share of the one core | {:.1} % | {:.1} % (whole run: {:.1} s) | |",
        many_total.cpu / many_total.wall * 100.0,
        median(
            fping_many
                .iter()
                .map(|run| run.cpu / run.wall * 100.0)
                .collect()
        ),
        median(fping_many.iter().map(|run| run.wall).collect())
    );
    print_truth(&many_total, &fping_many, quiet_many);
    println!();
    println!("### RTT accuracy (idle daemon, b's own address)\n");
    println!("| figure | value | baseline | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| median RTT (µs) on an idle daemon, kernel stamps | {ours_rtt:.1} ({} samples) | iputils ping: {ping_rtt:.1} ({} samples) | {:.2} |",
        kernel.len(),
        ping_rtts.len(),
        ours_rtt / ping_rtt
    );
    println!(
        "| median RTT (µs), our user clock | {user_clock:.1} | kernel stamps: {ours_rtt:.1} | {:.2} |",
        user_clock / ours_rtt
    );
    println!();
}

/// The rows counted by b's kernel: requests and replies, ours against b's and fping's.
fn print_truth(ours: &Window, fping: &[FpingRun], quiet: f64) {
    let (echoes, replies): (f64, f64) = fping
        .iter()
        .fold((0.0, 0.0), |(e, r), run| (e + run.echoes, r + run.replies));
    println!(
        "| echo requests sent (ours: our counter; fping: b's count) | {:.0} | {:.0} | |",
        ours.sent, echoes
    );
    println!(
        "| b's InEchos / our requests sent | {:.4} | | |",
        ours.target_in / ours.sent
    );
    println!(
        "| replies matched / requests sent (our counters) | **{:.4}** | | |",
        ours.received / ours.sent
    );
    println!(
        "| b's OutEchoReps / b's InEchos (b answered every request) | {:.4} | {:.4} | |",
        ours.target_out / ours.target_in,
        replies / echoes
    );
    println!(
        "| replies matched / b's OutEchoReps | **{:.4}** | | |",
        ours.received / ours.target_out
    );
    println!("| socket errors | {:.0} | | |", ours.errors);
    println!(
        "| sends missed (`network_probe_ping_sends_missed`: intervals a probe was sent late by), and / (sent + missed) | {:.0} ({:.4}) | | |",
        ours.missed,
        ours.missed / (ours.sent + ours.missed)
    );
    println!(
        "| NET_RX softirqs over our windows, CPU 0 / CPU 1 (b's side steered to CPU 0) | {:.0} / {:.0} | | |",
        ours.net_rx[0], ours.net_rx[1]
    );
    println!(
        "| calibration: b's InEchos over 1 s with the daemon stopped, before each fping (sum) | {quiet:.0} | must be 0 | |"
    );
}
