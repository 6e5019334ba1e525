//! The datapath benchmark (`cargo xtask bench`, or `cargo bench -p network-probe --bench
//! datapath` as root): time per packet of the ingress programs `tc_ingress` and `xdp_ingress`,
//! run by the kernel through BPF_PROG_TEST_RUN on established-flow TCP frames, each stated as a
//! ratio against an empty program of the same type (`tc_baseline`, `xdp_baseline`) measured in
//! the same process. Measurements are interleaved (ours and the baseline alternate, in
//! alternating order, round after round) and the medians over the rounds are reported as a
//! markdown table on stdout. Nothing is attached to any interface; nothing here asserts timing.
//!
//! The egress rows run `tc_egress` on established-flow ACKs with the timestamp option, on a
//! datapath of their own whose passive-RTT program array is filled as the daemon fills it (so
//! the tail call to `tc_rtt_store` runs: checked through the TSval it stores) and whose flows
//! have their reverse (ingress) entry, where the store writes; and again on a datapath whose
//! program array is left empty (the tail call fails: the egress path without the store).
//! `NETWORK_PROBE_BENCH_ONLY=egress` runs those rows alone.
// Cargo gives this target every dependency of the package; it uses the library's API only.
#![allow(unused_crate_dependencies)]

use network_probe_common::FLOW_SLOTS_DEFAULT;
use network_probe_testkit::testrun::*;

/// Repetitions of one frame per test run; the kernel runs the program this many times in a row.
const REPEAT: u32 = 1_000_000;
/// Rounds of interleaved measurements; the table reports medians over them. On this shared VM
/// our programs' time per packet moves by a quarter from one stretch of seconds to the next
/// (the empty program's much less): nine rounds (about ten seconds) gave single tables from
/// 1.5x to 2.0x for the same code; 21 rounds cover more of those stretches in each table.
const ROUNDS: usize = 21;

/// One program type: ours and its empty baseline, and the return value meaning "continue".
struct Hook {
    name: &'static str,
    program: &'static str,
    baseline: &'static str,
    pass: u32,
}

const HOOKS: [Hook; 3] = [
    Hook {
        name: "TC",
        program: "tc_ingress",
        baseline: "tc_baseline",
        // TC_ACT_UNSPEC (-1) as the test run reports it.
        pass: u32::MAX,
    },
    Hook {
        name: "XDP",
        program: "xdp_ingress",
        baseline: "xdp_baseline",
        // XDP_PASS.
        pass: 2,
    },
    Hook {
        name: "TC egress",
        program: "tc_egress",
        baseline: "tc_baseline",
        pass: u32::MAX,
    },
];

/// The TSval of the frames' timestamp option ([`TCP_TIMESTAMPS`]).
const TSVAL: u32 = 0x1234;

/// `frame` (Ethernet, IPv4 or IPv6 without options, TCP) with its addresses and ports swapped:
/// a segment of the reverse direction. The IPv4 checksum does not change (a sum).
fn reversed(frame: &[u8]) -> Vec<u8> {
    let mut frame = frame.to_vec();
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let (addresses, length, transport) = if ethertype == ETH_P_IP {
        (ETH_HLEN + 12, 4, ETH_HLEN + 20)
    } else {
        (ETH_HLEN + 8, 16, ETH_HLEN + 40)
    };
    let (src, dst) = frame[addresses..addresses + 2 * length].split_at_mut(length);
    src.swap_with_slice(dst);
    let (src, dst) = frame[transport..transport + 4].split_at_mut(2);
    src.swap_with_slice(dst);
    frame
}

/// `frame` (as [`reversed`] takes) with the TSval of its aligned timestamp option set.
fn with_tsval(frame: &[u8], tsval: u32) -> Vec<u8> {
    let mut frame = frame.to_vec();
    let transport = if u16::from_be_bytes([frame[12], frame[13]]) == ETH_P_IP {
        ETH_HLEN + 20
    } else {
        ETH_HLEN + 40
    };
    // NOP, NOP, kind, length, then the TSval.
    frame[transport + 24..transport + 28].copy_from_slice(&tsval.to_be_bytes());
    frame
}

/// The TSvals outstanding in the flows' entries of `datapath` (the upper half of an ingress
/// entry's outstanding-timestamp word; see network-probe-ebpf/src/rtt.rs), of the entries
/// that have one.
fn stored_tsvals(datapath: &mut TestRunDatapath) -> Vec<u32> {
    datapath
        .flows()
        .iter()
        .map(|(_, stats)| (stats.tracking.handshake_start_ns >> 32) as u32)
        .filter(|&tsval| tsval != 0)
        .collect()
}

/// A datapath for the egress rows: the RTT programs in their array (`rtt`; else the array is
/// left empty, as the tests' datapaths leave it), and the flows of the ACKs `frames` made
/// established in both directions (the reverse direction's ingress entry, which the store
/// writes, then the egress entry), the TSval stored (none without `rtt`).
fn load_egress_datapath(frames: &[&[u8]], rtt: bool) -> TestRunDatapath {
    let mut datapath = TestRunDatapath::load(&["tc_egress", "tc_ingress", "tc_baseline"]);
    if rtt {
        datapath.fill_rtt_programs();
    }
    let egress = &HOOKS[2];
    for (index, frame) in frames.iter().enumerate() {
        measure(&datapath, egress, "tc_ingress", &reversed(frame));
        assert_eq!(
            stored_tsvals(&mut datapath).len(),
            if rtt { index } else { 0 },
            "a TSval stored before the flow's egress segment"
        );
        measure(&datapath, egress, egress.program, frame);
    }
    assert_eq!(
        stored_tsvals(&mut datapath),
        vec![TSVAL; if rtt { frames.len() } else { 0 }],
        "tc_egress did not store the TSval in the reverse entries (the tail call to \
         tc_rtt_store did not run)"
    );
    datapath
}

/// The frames measured: a pure ACK (with timestamps, as Linux sends them) of an established
/// flow over IPv4 and IPv6, and a full-MTU data segment of one (a 1500-byte IP packet).
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let tcp = Tcp {
        flags: TCP_ACK,
        options: [&[TCP_NOP, TCP_NOP][..], &TCP_TIMESTAMPS].concat(),
        ..Tcp::default()
    };
    let data = Tcp {
        flags: TCP_ACK | TCP_PSH,
        ..tcp.clone()
    };
    let ipv4_frame = |segment: &[u8]| ethernet(&[], ETH_P_IP, &Ipv4::default().packet(segment));
    let ipv6_frame = |segment: &[u8]| ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_TCP, None, segment));
    let ipv4_headers = ETH_HLEN + 20 + tcp.header_len();
    let ipv6_headers = ETH_HLEN + 40 + tcp.header_len();
    const FULL_FRAME: usize = ETH_HLEN + 1500;
    vec![
        ("IPv4/TCP ACK", ipv4_frame(&tcp.segment(&[]))),
        ("IPv6/TCP ACK", ipv6_frame(&tcp.segment(&[]))),
        (
            "IPv4/TCP data",
            ipv4_frame(&data.segment(&vec![0x5a; FULL_FRAME - ipv4_headers])),
        ),
        (
            "IPv6/TCP data",
            ipv6_frame(&data.segment(&vec![0x5a; FULL_FRAME - ipv6_headers])),
        ),
    ]
}

/// One test run of `program` on `frame`, per repetition.
struct Sample {
    /// CPU time of this thread (user and system) over the test-run system call, divided by the
    /// repetitions. The fixed cost of the call (copying the frame in and out, building the skb)
    /// is spread over [`REPEAT`] repetitions, which makes it negligible; unlike wall-clock time
    /// it excludes time other tasks ran while the test run yielded the CPU, and unlike the
    /// kernel's own figure it keeps fractions of a nanosecond.
    cpu_ns: f64,
    /// The kernel's own figure (time inside the test-run loop, whole nanoseconds).
    kernel_ns: f64,
}

fn thread_cpu_ns() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; this clock exists on every Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    now.tv_sec as f64 * 1e9 + now.tv_nsec as f64
}

fn measure(datapath: &TestRunDatapath, hook: &Hook, program: &str, frame: &[u8]) -> Sample {
    let start = thread_cpu_ns();
    let run = datapath
        .run(program, frame, REPEAT)
        .unwrap_or_else(|err| panic!("test run of {program}: {err:?}"));
    let cpu_ns = (thread_cpu_ns() - start) / f64::from(REPEAT);
    assert_eq!(run.return_value, hook.pass, "{program} did not continue");
    Sample {
        cpu_ns,
        kernel_ns: run.kernel_duration.as_nanos() as f64,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// Measurements of one (hook, frame) pair over the rounds.
struct Series {
    hook: &'static Hook,
    packet: &'static str,
    /// Measured on the datapath without a slot table: the flow lives in its LRU map, as a flow
    /// whose slot another flow holds does.
    lru: bool,
    /// Measured on the egress datapath ([`load_egress_datapath`]).
    egress: bool,
    /// On the egress datapath whose RTT program array is empty.
    no_rtt: bool,
    frame: Vec<u8>,
    baseline: Vec<Sample>,
    ours: Vec<Sample>,
}

/// The per-packet path of `tc_ingress`, step by step: benchmark programs that stop after each
/// step (see network-probe-ebpf's `baseline`), cumulative, with what each step adds.
const STEPS: [(&str, &str); 5] = [
    ("tc_baseline", "empty program (the test-run loop itself)"),
    (
        "tc_upto_device",
        "the interface's slot and per-CPU statistics found (two array lookups); packets, bytes",
    ),
    (
        "tc_upto_parse",
        "headers parsed; the interface's IP and TCP counters and size histograms",
    ),
    (
        "tc_upto_lookup",
        "the flow found: its key hashed and compared with its slot's; the coarse clock",
    ),
    (
        "tc_ingress",
        "the flow updated: per-CPU counters, sequence tracking",
    ),
];

/// Each step's time per packet on `frame` over [`ROUNDS`] rounds in which every step program
/// runs once, in an order rotated from round to round: (median, fastest round) per step.
fn step_times(datapath: &TestRunDatapath, frame: &[u8]) -> Vec<(f64, f64)> {
    let tc = &HOOKS[0];
    let mut samples = vec![Vec::new(); STEPS.len()];
    for round in 0..ROUNDS {
        for offset in 0..STEPS.len() {
            let step = (round + offset) % STEPS.len();
            samples[step].push(measure(datapath, tc, STEPS[step].0, frame).cpu_ns);
        }
    }
    samples
        .iter_mut()
        .map(|values| {
            let fastest = values.iter().copied().fold(f64::INFINITY, f64::min);
            (median(values), fastest)
        })
        .collect()
}

/// Where the time of `tc_ingress` goes, per step, for an IPv4 and an IPv6 ACK.
fn print_steps(datapath: &TestRunDatapath) {
    let frames = frames();
    let ipv4 = step_times(datapath, &frames[0].1);
    let ipv6 = step_times(datapath, &frames[1].1);
    println!(
        "\nWhere the time of `tc_ingress` goes: the same program stopped after each step of its \
         per-packet path (benchmark programs built from the same code with the later steps \
         compiled out), each step's time per packet (median of {ROUNDS} rounds, order rotated \
         per round) and what it adds to the step before, on the established-flow ACKs above. \
         The fastest round is given too: on a machine whose neighbours steal time it moves \
         less than the median.\n"
    );
    println!(
        "| step | program | IPv4 ACK (ns/packet) | IPv4: added by the step | IPv4: fastest round | \
         IPv6 ACK (ns/packet) | IPv6: added by the step | IPv6: fastest round |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (index, (program, what)) in STEPS.iter().enumerate() {
        let added = |times: &[(f64, f64)]| {
            if index == 0 {
                "".to_string()
            } else {
                format!("{:+.1}", times[index].0 - times[index - 1].0)
            }
        };
        println!(
            "| {what} | `{program}` | {:.1} | {} | {:.1} | {:.1} | {} | {:.1} |",
            ipv4[index].0,
            added(&ipv4),
            ipv4[index].1,
            ipv6[index].0,
            added(&ipv6),
            ipv6[index].1,
        );
    }
    let ratio = |times: &[(f64, f64)]| {
        let last = STEPS.len() - 1;
        (times[last].0 / times[0].0, times[last].1 / times[0].1)
    };
    let ((ipv4_median, ipv4_fastest), (ipv6_median, ipv6_fastest)) = (ratio(&ipv4), ratio(&ipv6));
    println!(
        "\n`tc_ingress` / `tc_baseline` in this table: IPv4 {ipv4_median:.2}x (fastest rounds \
         {ipv4_fastest:.2}x), IPv6 {ipv6_median:.2}x (fastest rounds {ipv6_fastest:.2}x)."
    );
}

fn main() {
    // `NETWORK_PROBE_BENCH_ONLY=steps`: the step table alone (about twenty seconds), for trying a
    // change to the per-packet path.
    if std::env::var("NETWORK_PROBE_BENCH_ONLY").as_deref() == Ok("steps") {
        println!(
            "**NETWORK_PROBE_BENCH_ONLY=steps: the step table alone; the other sections of this \
             benchmark were not run.**\n"
        );
        let steps: Vec<&str> = STEPS.iter().map(|(program, _)| *program).collect();
        let datapath = TestRunDatapath::load(&steps);
        // Warm-up, which also creates the flows.
        for (_, frame) in frames() {
            measure(&datapath, &HOOKS[0], HOOKS[0].program, &frame);
        }
        print_steps(&datapath);
        return;
    }
    // `NETWORK_PROBE_BENCH_ONLY=egress`: the egress rows alone.
    let only_egress = std::env::var("NETWORK_PROBE_BENCH_ONLY").as_deref() == Ok("egress");
    let programs: Vec<&str> = HOOKS[..2]
        .iter()
        .flat_map(|hook| [hook.program, hook.baseline])
        .chain(STEPS.iter().map(|(program, _)| *program))
        .fold(Vec::new(), |mut unique, program| {
            if !unique.contains(&program) {
                unique.push(program);
            }
            unique
        });
    let mut datapath = TestRunDatapath::load(&programs);
    let mut lru_datapath =
        TestRunDatapath::load_with_slots(&[HOOKS[0].program, HOOKS[0].baseline], 0);
    let mut series: Vec<Series> = HOOKS[..2]
        .iter()
        .flat_map(|hook| {
            frames().into_iter().map(move |(packet, frame)| Series {
                hook,
                packet,
                lru: false,
                egress: false,
                no_rtt: false,
                frame,
                baseline: Vec::new(),
                ours: Vec::new(),
            })
        })
        .collect();
    // The TC ACKs once more, on flows in the LRU map.
    series.extend(
        frames()
            .into_iter()
            .filter(|(packet, _)| packet.ends_with("ACK"))
            .map(|(packet, frame)| Series {
                hook: &HOOKS[0],
                packet,
                lru: true,
                egress: false,
                no_rtt: false,
                frame,
                baseline: Vec::new(),
                ours: Vec::new(),
            }),
    );
    let egress_frames: Vec<(&str, Vec<u8>)> = frames()
        .into_iter()
        .filter(|(packet, _)| packet.ends_with("ACK"))
        .collect();
    let egress_frame_slices: Vec<&[u8]> = egress_frames
        .iter()
        .map(|(_, frame)| frame.as_slice())
        .collect();
    let mut egress_datapath = load_egress_datapath(&egress_frame_slices, true);
    let mut no_rtt_datapath = load_egress_datapath(&egress_frame_slices, false);
    if only_egress {
        series.clear();
        println!(
            "**NETWORK_PROBE_BENCH_ONLY=egress: the egress rows alone; the other sections of \
             this benchmark were not run.**\n"
        );
    }
    for no_rtt in [false, true] {
        series.extend(egress_frames.iter().map(|(packet, frame)| Series {
            hook: &HOOKS[2],
            packet,
            lru: false,
            egress: true,
            no_rtt,
            frame: frame.clone(),
            baseline: Vec::new(),
            ours: Vec::new(),
        }));
    }
    let choose = |s: &Series| -> &TestRunDatapath {
        if s.lru {
            &lru_datapath
        } else if s.no_rtt {
            &no_rtt_datapath
        } else if s.egress {
            &egress_datapath
        } else {
            &datapath
        }
    };
    let on = |s: &Series| choose(s);

    // Warm-up, which also creates the flow entries: every measured repetition then updates
    // an established flow.
    for s in &series {
        for program in [s.hook.program, s.hook.baseline] {
            measure(on(s), s.hook, program, &s.frame);
        }
    }
    let tcp_before =
        datapath.ingress_stats().tcp_packets + lru_datapath.ingress_stats().tcp_packets;
    let egress_before =
        egress_datapath.egress_stats().tcp_packets + no_rtt_datapath.egress_stats().tcp_packets;
    for round in 0..ROUNDS {
        for s in &mut series {
            let ours_first = round % 2 == 0;
            let datapath = choose(s);
            for measure_ours in [ours_first, !ours_first] {
                if measure_ours {
                    let sample = measure(datapath, s.hook, s.hook.program, &s.frame);
                    s.ours.push(sample);
                } else {
                    let sample = measure(datapath, s.hook, s.hook.baseline, &s.frame);
                    s.baseline.push(sample);
                }
            }
        }
    }
    // The programs really accounted every repetition (not an early return): both ingress
    // hooks share lo's ingress statistics.
    let egress_series = series.iter().filter(|s| s.egress).count();
    let measured = (ROUNDS * (series.len() - egress_series)) as u64 * u64::from(REPEAT);
    let tcp_counted = datapath.ingress_stats().tcp_packets
        + lru_datapath.ingress_stats().tcp_packets
        - tcp_before;
    assert_eq!(
        tcp_counted, measured,
        "the programs did not classify every repetition as TCP"
    );
    let egress_measured = (ROUNDS * egress_series) as u64 * u64::from(REPEAT);
    assert_eq!(
        egress_datapath.egress_stats().tcp_packets + no_rtt_datapath.egress_stats().tcp_packets
            - egress_before,
        egress_measured,
        "tc_egress did not classify every repetition as TCP"
    );
    // The store still runs after the rounds: a new TSval replaces the stored one.
    for s in series.iter().filter(|s| s.egress && !s.no_rtt) {
        measure(
            &egress_datapath,
            s.hook,
            s.hook.program,
            &with_tsval(&s.frame, TSVAL + 1),
        );
    }
    assert_eq!(
        stored_tsvals(&mut egress_datapath),
        vec![TSVAL + 1; egress_frame_slices.len()],
        "tc_egress did not store the new TSval (the tail call to tc_rtt_store did not run)"
    );
    assert!(
        stored_tsvals(&mut no_rtt_datapath).is_empty(),
        "a TSval stored through an empty program array"
    );
    if !only_egress {
        // Each datapath holds the flows of its frames where the table says.
        datapath.flows();
        lru_datapath.flows();
        let (slots, lru) = (datapath.flow_map_entries(), lru_datapath.flow_map_entries());
        // One flow per family (every frame of a family has the same addresses and ports).
        assert_eq!(
            (lru.slots, lru.flows4, lru.flows6),
            (0, 1, 1),
            "LRU-only datapath"
        );
        assert_eq!(
            (slots.slots, slots.flows4, slots.flows6),
            (2, 0, 0),
            "datapath with slots"
        );
    }

    println!(
        "CPU time per packet of the programs, run by the kernel with BPF_PROG_TEST_RUN \
         ({REPEAT} repetitions per run, {ROUNDS} interleaved rounds, medians), against an empty \
         program of the same type measured alongside. The empty program's time is the test-run \
         loop itself; \"added\" is what our program costs on top of it. The last column is the \
         kernel's own figure for the same runs (whole nanoseconds, time inside the loop).\n"
    );
    println!(
        "| hook | packet | frame (bytes) | empty program (ns/packet) | ours (ns/packet) | added \
         (ns/packet) | ratio ours / empty | kernel's figure, ours / empty (ns) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for s in &series {
        let hook = if s.lru {
            format!("{} (flow in the LRU map)", s.hook.name)
        } else if s.no_rtt {
            format!("{} (RTT program array empty: no store)", s.hook.name)
        } else if s.egress {
            format!("{} (TSval as stored: no new store)", s.hook.name)
        } else {
            s.hook.name.to_string()
        };
        let column = |samples: &[Sample], value: fn(&Sample) -> f64| {
            median(&mut samples.iter().map(value).collect::<Vec<_>>())
        };
        let paired = |combine: fn(f64, f64) -> f64| {
            let mut values: Vec<f64> = s
                .ours
                .iter()
                .zip(&s.baseline)
                .map(|(ours, baseline)| combine(ours.cpu_ns, baseline.cpu_ns))
                .collect();
            median(&mut values)
        };
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} / {:.0} |",
            hook,
            s.packet,
            s.frame.len(),
            column(&s.baseline, |sample| sample.cpu_ns),
            column(&s.ours, |sample| sample.cpu_ns),
            paired(|ours, baseline| ours - baseline),
            paired(|ours, baseline| ours / baseline),
            column(&s.ours, |sample| sample.kernel_ns),
            column(&s.baseline, |sample| sample.kernel_ns),
        );
    }
    println!(
        "\nEvery run repeats one frame on one flow, so after the warm-up each repetition updates \
         an existing flow entry; a repeated data segment is judged a retransmission (its \
         sequence range was already seen), an ACK occupies no sequence space. New flows are \
         counted in the flow slot table (the daemon's default, {FLOW_SLOTS_DEFAULT} slots); the \
         rows \"flow in the LRU map\" measure the other path, that of a flow whose slot another \
         flow holds (or of `--flows.slots 0`), on a datapath loaded without slots. All \
         {measured} measured repetitions were accounted as TCP packets. The rows \"TC egress\" \
         run `tc_egress` on a datapath whose passive-RTT program array is filled as the daemon \
         fills it: each repetition is accounted on the flow's egress entry, then tail-calls \
         `tc_rtt_store`, which parses again, finds the reverse (ingress) entry and returns at \
         its test \"TSval not newer than the stored one\" (a repeated frame repeats its TSval, \
         as segments do within a millisecond); after the rounds a frame with the next TSval \
         was stored, which shows the tail call ran. The rows \"RTT program array empty\" run \
         the same on a datapath whose array was left empty: the tail call fails and returns, \
         which is the egress path without the store (the timestamp option's test in accounting \
         included). All {egress_measured} measured egress repetitions were accounted as TCP \
         packets."
    );
    if !only_egress {
        print_steps(&datapath);
    }
}
