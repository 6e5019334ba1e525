//! Passive RTT from TCP timestamps (issue 26) on real traffic, against a tcpdump capture
//! (nanosecond stamps) of the same interface: the capture's TCP segments are run through the
//! admission rules the programs apply (one TSval outstanding per flow direction, stored on
//! egress once the reverse direction was seen, only a newer TSval, replaced after four seconds;
//! the first ingress segment echoing it in TSecr gives the sample, one echoing a newer TSval
//! drops it), written out here again,
//! independently of the daemon's code. The daemon's sample count must equal the capture's,
//! every sample's histogram bucket and the sum must agree within [`TOLERANCE_NS`] per sample,
//! and the per-flow series (count, minimum, smoothed value) likewise.
//!
//! Local traffic (the daemon on one end of a veth pair) and forwarded traffic (a router
//! namespace between two hosts, the daemon on the router watching both of its links: each
//! side's half on the interface facing it), IPv4 and IPv6. In the 6.1 guest
//! (`cargo xtask kernel-test passive_rtt::`), a netem delay of 10 ms on the peer's link shows
//! in every sample.

use std::{
    collections::{HashMap, HashSet},
    io::{Read, Write},
    net::{IpAddr, Shutdown, SocketAddr},
    thread,
    time::Duration,
};

use network_probe_testkit::{
    Capture, Daemon, Frame, Routed, VethPair, applicability, daemon::slowdown, dotted, in_netns,
    sample,
};

use crate::flows::{connect, histogram_buckets, listen};

/// How far one of the daemon's samples may lie from the capture's time difference: the
/// capture stamps a received frame before the TC ingress hook and a sent one after the egress
/// hook, and the stored time has a resolution of 256 ns. The captures run without
/// `--immediate-mode` ([`Capture::start_quiet`]): in immediate mode the tap wakes tcpdump for
/// every frame, between its stamp and the ingress hook, and after an idle gap that wake-up
/// (another vCPU woken) put the daemon 1.5 to 26 us above the capture (median 8 us per sample
/// on the 3 ms samples; the sum check failed about one run in four at load 2-3). With whole
/// ring blocks handed over instead, the mean error per sample on this host (2 vCPUs, load 3-4)
/// was 0.8 to 2.8 us in 11 runs of the suite.
const TOLERANCE_NS: u128 = 20_000;

/// An outstanding TSval older than this is replaced and gives no sample (as the programs).
const OUTSTANDING_MAX_NS: u128 = 4_000_000_000;

/// The flow families the daemons of these tests export.
const FAMILIES: &str = "packets,rtt_samples,rtt_min_seconds,rtt_seconds";

/// One flow direction: source, destination, source port, destination port.
type Direction4 = (IpAddr, IpAddr, u16, u16);

/// A captured TCP segment.
struct Segment {
    time_ns: u128,
    egress: bool,
    flow: Direction4,
    /// TSval, TSecr.
    timestamps: Option<(u32, u32)>,
}

/// The TCP segments of `frames` (captured on the interface whose MAC is `mac`), in order.
fn segments(frames: &[Frame], mac: &[u8]) -> Vec<Segment> {
    frames
        .iter()
        .filter_map(|frame| {
            let ip = frame.ip()?;
            if ip.protocol != 6 {
                return None;
            }
            let (src_port, dst_port) = ip.ports?;
            let l4 = match ip.src {
                IpAddr::V4(_) => 14 + usize::from(frame.data[14] & 0x0f) * 4,
                IpAddr::V6(_) => 54,
            };
            let header_len = usize::from(frame.data[l4 + 12] >> 4) * 4;
            let options = &frame.data[l4 + 20..l4 + header_len];
            Some(Segment {
                time_ns: frame.time_ns,
                egress: frame.data[6..12] == *mac,
                flow: (ip.src, ip.dst, src_port, dst_port),
                timestamps: timestamp_option(options),
            })
        })
        .collect()
}

/// The timestamp option among TCP `options`, walked option by option.
fn timestamp_option(options: &[u8]) -> Option<(u32, u32)> {
    let mut at = 0;
    while at < options.len() {
        match options[at] {
            0 => return None,
            1 => at += 1,
            kind => {
                let len = usize::from(*options.get(at + 1)?);
                if kind == 8 && len == 10 {
                    let word = |from: usize| {
                        u32::from_be_bytes(options[from..from + 4].try_into().unwrap())
                    };
                    return Some((word(at + 2), word(at + 6)));
                }
                if len < 2 {
                    return None;
                }
                at += len;
            }
        }
    }
    None
}

/// The samples the admission rules give for `segments`: (the echoing flow direction, RTT ns).
fn expected_samples(segments: &[Segment]) -> Vec<(Direction4, u128)> {
    #[derive(Default)]
    struct Outstanding {
        last: Option<u32>,
        value: Option<(u32, u128)>,
    }
    let mut seen: HashSet<Direction4> = HashSet::new();
    let mut state: HashMap<Direction4, Outstanding> = HashMap::new();
    let mut samples = Vec::new();
    for segment in segments {
        let (src, dst, src_port, dst_port) = segment.flow;
        if !segment.egress {
            seen.insert(segment.flow);
            let Some((_, tsecr)) = segment.timestamps else {
                continue;
            };
            let entry = state.entry(segment.flow).or_default();
            // An echo of a newer TSval: the outstanding one will never be echoed.
            if let Some((tsval, _)) = entry.value
                && tsecr.wrapping_sub(tsval) as i32 > 0
            {
                entry.value = None;
                continue;
            }
            if let Some((tsval, sent_ns)) = entry.value
                && tsval == tsecr
            {
                entry.value = None;
                let age = segment.time_ns.checked_sub(sent_ns).unwrap_or_else(|| {
                    panic!(
                        "an echo captured at {} ns before the TSval it echoes left at {sent_ns} ns",
                        segment.time_ns
                    )
                });
                if age < OUTSTANDING_MAX_NS {
                    samples.push((segment.flow, age));
                } else {
                    eprintln!("{:?}: an echo {age} ns after the TSval left", segment.flow);
                }
            }
            continue;
        }
        let Some((tsval, _)) = segment.timestamps else {
            continue;
        };
        let reverse = (dst, src, dst_port, src_port);
        if !seen.contains(&reverse) {
            continue;
        }
        let entry = state.entry(reverse).or_default();
        if entry
            .last
            .is_some_and(|last| tsval.wrapping_sub(last) as i32 <= 0)
        {
            continue;
        }
        if entry
            .value
            .is_some_and(|(_, sent_ns)| segment.time_ns - sent_ns < OUTSTANDING_MAX_NS)
        {
            continue;
        }
        entry.last = Some(tsval);
        entry.value = Some((tsval, segment.time_ns));
    }
    samples
}

/// Whether the capture's stamps can be held to microseconds against the hooks' (not in the
/// emulated guest, which declares `wire-timing` absent: there the two are milliseconds apart).
fn wire_timing(case: &str) -> bool {
    applicability::applies(
        case,
        "wire-timing",
        slowdown() == 1,
        "microsecond timing between the TC hooks and a capture (emulated guest)",
    )
}

/// Checks the interface's histogram and the per-flow series in `scrape` against the samples
/// `expected` of the capture of `interface`, whose flows are labelled `src`/`dst` by default.
/// With `exact_timing`, each sample within [`TOLERANCE_NS`]; else within `loose_ns`.
fn check(scrape: &str, interface: &str, expected: &[(Direction4, u128)], tolerance_ns: u128) {
    let labels = format!("interface=\"{interface}\"");
    let count = sample(scrape, "network_probe_tcp_rtt_seconds_count", &labels)
        .unwrap_or_else(|| panic!("no RTT histogram for {interface} in\n{scrape}"));
    assert_eq!(
        count as usize,
        expected.len(),
        "{interface}: samples vs the capture's admitted TSval->TSecr pairs"
    );
    let sum = sample(scrape, "network_probe_tcp_rtt_seconds_sum", &labels).unwrap();
    let captured_sum: u128 = expected.iter().map(|(_, rtt)| rtt).sum();
    let sum_ns = (sum * 1e9).round() as i128;
    let allowed = (tolerance_ns * expected.len() as u128) as i128;
    eprintln!(
        "{interface}: {} samples, sum {sum_ns} ns, capture {captured_sum} ns (difference {} ns, \
         mean {} ns per sample)",
        expected.len(),
        sum_ns - captured_sum as i128,
        (sum_ns - captured_sum as i128) / (expected.len().max(1) as i128)
    );
    assert!(
        (sum_ns - captured_sum as i128).abs() <= allowed,
        "{interface}: sum {sum_ns} ns vs the capture's {captured_sum} ns"
    );
    // Each sample's bucket: the cumulative count at every bound lies between the samples
    // surely below it and those possibly below it, given the tolerance.
    let buckets = histogram_buckets(scrape, "network_probe_tcp_rtt_seconds", &labels);
    assert_eq!(buckets.len(), 24, "{interface}: {buckets:?}");
    for (bound, cumulative) in buckets {
        let bound_ns = if bound.is_infinite() {
            u128::MAX
        } else {
            (bound * 1e9).round() as u128
        };
        let surely = expected
            .iter()
            .filter(|(_, rtt)| rtt + tolerance_ns < bound_ns)
            .count() as u64;
        let possibly = expected
            .iter()
            .filter(|(_, rtt)| rtt.saturating_sub(tolerance_ns) < bound_ns)
            .count() as u64;
        assert!(
            (surely..=possibly).contains(&cumulative),
            "{interface}: {cumulative} samples under {bound} s, the capture's {surely}..={possibly}"
        );
    }
    // Per flow series (default labels: interface, src, dst).
    let mut flows: HashMap<(IpAddr, IpAddr), Vec<u128>> = HashMap::new();
    for ((src, dst, _, _), rtt) in expected {
        flows.entry((*src, *dst)).or_default().push(*rtt);
    }
    for ((src, dst), rtts) in &flows {
        let labels = format!("interface=\"{interface}\",src=\"{src}\",dst=\"{dst}\"");
        let samples = sample(scrape, "network_probe_flow_rtt_samples_total", &labels)
            .unwrap_or_else(|| panic!("no RTT samples of {labels}"));
        assert_eq!(samples as usize, rtts.len(), "{labels}: samples");
        let min = sample(scrape, "network_probe_flow_rtt_min_seconds", &labels).unwrap();
        let captured_min = *rtts.iter().min().unwrap();
        let min_ns = (min * 1e9).round() as u128;
        assert!(
            min_ns.abs_diff(captured_min) <= tolerance_ns,
            "{labels}: minimum {min_ns} ns vs the capture's {captured_min} ns"
        );
        // The smoothed value is the mean of the samples of one read interval of the maps (a
        // scrape, or the daemon's periodic sweep, which may fall inside the traffic): the mean
        // of some run of consecutive samples of the capture.
        let mean = sample(scrape, "network_probe_flow_rtt_seconds", &labels).unwrap();
        let mean_ns = (mean * 1e9).round() as u128;
        let captured_mean = (0..rtts.len())
            .flat_map(|from| (from + 1..=rtts.len()).map(move |to| (from, to)))
            .map(|(from, to)| rtts[from..to].iter().sum::<u128>() / (to - from) as u128)
            .min_by_key(|run_mean| run_mean.abs_diff(mean_ns))
            .unwrap();
        assert!(
            mean_ns.abs_diff(captured_mean) <= tolerance_ns,
            "{labels}: smoothed {mean_ns} ns, the capture's nearest mean of consecutive samples \
             {captured_mean} ns"
        );
        eprintln!(
            "{labels}: {} samples, min {min_ns} ns (capture {captured_min}), mean {mean_ns} ns \
             (capture {captured_mean})",
            rtts.len()
        );
    }
}

/// A client in `client_ns` talking to a server in `server_ns` at `server`: request/response
/// rounds a few milliseconds apart (each with a new TSval), then a bulk transfer each way.
/// The local cases' run: the daemon on a's end of `pair`, `rounds` of [`traffic`] from b to
/// a's `server`, a capture of a's interface; the scrape taken `settle_ms` after, and the samples
/// the capture admits.
fn local_run(
    pair: &VethPair,
    server: SocketAddr,
    rounds: usize,
    settle_ms: u64,
) -> (String, Vec<(Direction4, u128)>) {
    let daemon = Daemon::start(
        &pair.a,
        &["--interface", &pair.a_if, "--flows.families", FAMILIES],
    );
    let _timestamping = timestamping();
    let capture = Capture::start_quiet(&pair.a, &pair.a_if);
    traffic(&pair.b, &pair.a, server, rounds);
    thread::sleep(Duration::from_millis(settle_ms));
    let scrape = daemon.scrape();
    let frames = capture.finish_frames();
    let mac = mac_bytes(&pair.mac(&pair.a, &pair.a_if));
    (scrape, expected_samples(&segments(&frames, &mac)))
}

/// Keeps the calling thread on CPU 0. Both ends of the test's connection run there, so the
/// kernel handles every segment of it on one CPU, in one order, which the capture and the hooks
/// then both see: with the two ends on two CPUs a store and an echo handled at the same moment
/// on different CPUs can reach the hooks in the other order than the capture's stamps say,
/// which the slow emulated 6.1 guest made happen (50 samples against the capture's 51).
fn on_cpu_zero() {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity get valid
    // pointers to it and its size.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        result,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}

fn traffic(client_ns: &str, server_ns: &str, server: SocketAddr, rounds: usize) {
    let listener = in_netns(server_ns, move || listen(server, None));
    let server_thread = thread::spawn(move || {
        on_cpu_zero();
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_nodelay(true).unwrap();
        let mut request = [0u8; 100];
        for _ in 0..rounds {
            stream.read_exact(&mut request).unwrap();
            stream.write_all(&[1u8; 300]).unwrap();
        }
        let mut upload = vec![0u8; 300_000];
        stream.read_exact(&mut upload).unwrap();
        stream.write_all(&vec![2u8; 300_000]).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
    });
    in_netns(client_ns, move || {
        on_cpu_zero();
        let mut stream = connect(server, None).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut response = [0u8; 300];
        for _ in 0..rounds {
            stream.write_all(&[3u8; 100]).unwrap();
            stream.read_exact(&mut response).unwrap();
            thread::sleep(Duration::from_millis(3));
        }
        stream.write_all(&vec![4u8; 300_000]).unwrap();
        let mut download = vec![0u8; 300_000];
        stream.read_exact(&mut download).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
    });
    server_thread.join().unwrap();
}

fn mac_bytes(text: &str) -> Vec<u8> {
    text.split(':')
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect()
}

/// Holds the kernel's receive timestamping on while it lives (a socket with `SO_TIMESTAMPNS`).
/// Without it, a sent packet's capture stamp is whatever time the packet carries: TCP's
/// departure time (CLOCK_MONOTONIC) where the stack kept it, not the time of the tap; the
/// forwarded IPv6 case failed that way when no other socket of the machine had timestamping
/// on (egress stamps hours before the ingress ones).
fn timestamping() -> std::net::UdpSocket {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_TIMESTAMPNS");
    socket
}

/// The daemon on end a of a veth pair; b connects to a server on a.
fn local_traffic_matches_the_capture(ipv6: bool) {
    let pair = VethPair::new();
    let (a, b): (IpAddr, IpAddr) = if ipv6 {
        pair.enable_ipv6();
        (pair.a6().parse().unwrap(), pair.b6().parse().unwrap())
    } else {
        (
            dotted(pair.a_addr).parse().unwrap(),
            dotted(pair.b_addr).parse().unwrap(),
        )
    };
    let (scrape, expected) = local_run(&pair, SocketAddr::new(a, 7301), 40, 200);
    // Samples of both ends' TSvals: a's echoed by b (flow b -> a), and none other here.
    assert!(
        expected.len() >= 40,
        "the capture admits {} samples",
        expected.len()
    );
    assert!(
        expected
            .iter()
            .all(|((src, dst, _, _), _)| (*src, *dst) == (b, a))
    );
    let case = format!(
        "passive_rtt local IPv{}: samples within microseconds of the capture",
        if ipv6 { 6 } else { 4 }
    );
    let tolerance = if wire_timing(&case) {
        TOLERANCE_NS
    } else {
        50_000_000
    };
    check(&scrape, &pair.a_if, &expected, tolerance);
}

#[test]
fn local_ipv4_samples_match_the_capture() {
    local_traffic_matches_the_capture(false);
}

#[test]
fn local_ipv6_samples_match_the_capture() {
    local_traffic_matches_the_capture(true);
}

/// The daemon on the router, watching both links; the sender connects to the far host through
/// it. On the link facing the far host the far host's half is measured (the sender's TSvals
/// leave there and the far host echoes them), on the link facing the sender the sender's half.
fn forwarded_traffic_matches_the_capture(ipv6: bool) {
    let routed = Routed::new("t", 78, 1500);
    let (s, f): (IpAddr, IpAddr) = if ipv6 {
        ("fd78:1::1".parse().unwrap(), "fd78:2::1".parse().unwrap())
    } else {
        ("10.78.1.1".parse().unwrap(), "10.78.2.1".parse().unwrap())
    };
    let daemon = Daemon::start(
        &routed.r,
        &[
            "--interface",
            &routed.r_s,
            "--interface",
            &routed.r_f,
            "--flows.families",
            FAMILIES,
        ],
    );
    let _timestamping = timestamping();
    let captures = [
        Capture::start_quiet(&routed.r, &routed.r_s),
        Capture::start_quiet(&routed.r, &routed.r_f),
    ];
    traffic(&routed.s, &routed.f, SocketAddr::new(f, 7302), 40);
    thread::sleep(Duration::from_millis(200));
    let scrape = daemon.scrape();
    let case = format!(
        "passive_rtt forwarded IPv{}: samples within microseconds of the capture",
        if ipv6 { 6 } else { 4 }
    );
    let tolerance = if wire_timing(&case) {
        TOLERANCE_NS
    } else {
        50_000_000
    };
    let [to_sender, to_far] = captures;
    for (capture, interface, echoer, other) in
        [(to_sender, &routed.r_s, s, f), (to_far, &routed.r_f, f, s)]
    {
        let frames = capture.finish_frames();
        let mac = mac_bytes(
            routed
                .exec(
                    &routed.r,
                    "cat",
                    &[&format!("/sys/class/net/{interface}/address")],
                )
                .trim(),
        );
        let all = segments(&frames, &mac);
        let expected = expected_samples(&all);
        let describe = |segment: &Segment| {
            format!(
                "{} {:?} {:?} at {}",
                if segment.egress { "out" } else { "in" },
                segment.flow,
                segment.timestamps,
                segment.time_ns
            )
        };
        assert!(
            expected.len() >= 40,
            "{interface}: the capture admits {} samples of {} segments; the first ones:\n{}",
            expected.len(),
            all.len(),
            all.iter()
                .take(10)
                .map(describe)
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            expected
                .iter()
                .all(|((src, dst, _, _), _)| (*src, *dst) == (echoer, other)),
            "{interface}: only {echoer}'s echoes"
        );
        check(&scrape, interface, &expected, tolerance);
    }
}

#[test]
fn forwarded_ipv4_samples_match_the_capture_on_each_side() {
    forwarded_traffic_matches_the_capture(false);
}

#[test]
fn forwarded_ipv6_samples_match_the_capture_on_each_side() {
    forwarded_traffic_matches_the_capture(true);
}

/// A netem delay of 10 ms on the peer's link (its egress, toward the daemon's host): every
/// sample is at least 10 ms (none under the 8.192 ms bucket bound, none in the capture either),
/// the count equal to the capture's, and the samples match the capture's within the tolerance.
/// Needs `sch_netem`, which this host may lack: ignored here, run in the 6.1 guest
/// (`cargo xtask kernel-test passive_rtt::`, which includes the ignored tests of this suite);
/// a kernel without netem fails it unless the run declares `netem` absent (then it is counted
/// as not applicable).
#[test]
#[ignore = "needs sch_netem: run in the 6.1 guest (cargo xtask kernel-test passive_rtt::)"]
fn netem_delay_on_the_peer_link_shows_in_every_sample() {
    const DELAY_NS: u128 = 10_000_000;
    let pair = VethPair::new();
    let (a, b): (IpAddr, IpAddr) = (
        dotted(pair.a_addr).parse().unwrap(),
        dotted(pair.b_addr).parse().unwrap(),
    );
    let netem = std::process::Command::new("ip")
        .args([
            "netns", "exec", &pair.b, "tc", "qdisc", "add", "dev", &pair.b_if,
        ])
        .args(["root", "netem", "delay", "10ms"])
        .status()
        .is_ok_and(|status| status.success());
    if !applicability::applies(
        "passive_rtt netem delay",
        "netem",
        netem,
        "the netem qdisc (sch_netem)",
    ) {
        return;
    }
    let (scrape, expected) = local_run(&pair, SocketAddr::new(a, 7303), 20, 300);
    assert!(
        expected.len() >= 20,
        "the capture admits {} samples",
        expected.len()
    );
    assert!(
        expected
            .iter()
            .all(|((src, dst, _, _), _)| (*src, *dst) == (b, a))
    );
    let shortest = expected.iter().map(|(_, rtt)| *rtt).min().unwrap();
    assert!(
        shortest >= DELAY_NS,
        "the capture's shortest sample {shortest} ns is under the netem delay"
    );
    let labels = format!("interface=\"{}\"", pair.a_if);
    let buckets = histogram_buckets(&scrape, "network_probe_tcp_rtt_seconds", &labels);
    let under = buckets
        .iter()
        .filter(|(bound, _)| *bound < 0.008192 + 1e-9)
        .map(|(_, count)| *count)
        .max()
        .unwrap();
    assert_eq!(under, 0, "samples under 8.192 ms with a 10 ms netem delay");
    let tolerance = if wire_timing("passive_rtt netem delay: samples within microseconds") {
        TOLERANCE_NS
    } else {
        // The emulated guest: its hooks and the capture are milliseconds apart.
        5_000_000
    };
    check(&scrape, &pair.a_if, &expected, tolerance);
}
