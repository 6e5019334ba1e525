//! Interface churn while the daemon runs: the veth end it watches is deleted and re-created
//! under the same name, several times. After each deletion the interface's counters must still
//! be exported with exactly the values they had (not lost, not backwards) and its programs must
//! no longer be reported attached; after each re-creation the programs must be attached again
//! within 2 s, and new traffic must be counted exactly on top of the old totals. The daemon must
//! log the forget and the re-attach at info level and log no warning.
//!
//! Everything happens in namespaces the test creates (see `network_probe_testkit::VethPair`).

use std::{
    fs::File,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use network_probe::kernel::rtnetlink;
use network_probe_testkit::{
    Daemon, VethPair, attached_programs, daemon_path, dotted, sample, send_datagrams, sh,
};

/// Delete/re-create cycles; each sends its own numbers of datagrams each way.
const CYCLES: usize = 3;
const INGRESS_DATAGRAMS: usize = 40;
const INGRESS_PAYLOAD: usize = 100;
const EGRESS_DATAGRAMS: usize = 25;
const EGRESS_PAYLOAD: usize = 300;
/// Ethernet + IPv4 + UDP headers around each payload.
const FRAME_OVERHEAD: usize = 14 + 20 + 8;
/// Longest accepted time from the device's creation to both programs being attached (times
/// the test kit's slowdown factor: 5 in the emulated 6.1 guest).
const REATTACH_DEADLINE: Duration = Duration::from_secs(2);

fn reattach_deadline() -> Duration {
    REATTACH_DEADLINE * network_probe_testkit::daemon::slowdown()
}

fn both_attached(pair: &VethPair) -> bool {
    attached_programs(&pair.a, &pair.a_if, TcAttachType::Ingress) == ["tc_ingress"]
        && attached_programs(&pair.a, &pair.a_if, TcAttachType::Egress) == ["tc_egress"]
}

/// Re-creates the pair and measures how long after `ip link add` returned the kernel reports
/// both programs attached to the new `a_if`, polling from a thread already inside namespace
/// `a` (entering a namespace per poll costs milliseconds right after churn). Gives up, with
/// `None`, at [`reattach_deadline`].
fn recreate_and_time_reattach(pair: &VethPair) -> Option<Duration> {
    let (ns, ifname) = (pair.a.clone(), pair.a_if.clone());
    let (ready_tx, ready_rx) = mpsc::channel();
    let (start_tx, start_rx) = mpsc::channel::<Instant>();
    let poller = thread::spawn(move || {
        let path = format!("/run/netns/{ns}");
        let file = File::open(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
        // SAFETY: a valid namespace fd; setns only affects this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        ready_tx.send(()).unwrap();
        let created = start_rx.recv().unwrap();
        // TCX links where the kernel has TCX, else (6.1) the cls_bpf filters the daemon
        // attaches over netlink, named by their program; both read without a child process.
        let names = |attach_type| {
            let mut names = SchedClassifier::query_tcx(&ifname, attach_type)
                .map(|(_, programs)| {
                    programs
                        .iter()
                        .map(|p| p.name_as_str().unwrap_or("?").to_string())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            let parent = match attach_type {
                TcAttachType::Ingress => rtnetlink::CLSACT_INGRESS,
                _ => rtnetlink::CLSACT_EGRESS,
            };
            if let Ok(index) = rtnetlink::interface_index(&ifname) {
                names.extend(
                    rtnetlink::cls_bpf_filters(index, parent)
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|filter| filter.name),
                );
            }
            names
        };
        loop {
            if names(TcAttachType::Ingress) == ["tc_ingress"]
                && names(TcAttachType::Egress) == ["tc_egress"]
            {
                return Some(created.elapsed());
            }
            if created.elapsed() > reattach_deadline() {
                return None;
            }
            thread::sleep(Duration::from_micros(200));
        }
    });
    ready_rx.recv().unwrap();
    recreate(pair);
    start_tx.send(Instant::now()).unwrap();
    poller.join().expect("poller panicked")
}

/// Re-creates the veth pair `pair` describes, with the same names, in the same namespaces. The
/// ends are left down and unconfigured (see [`configure`]).
fn recreate(pair: &VethPair) {
    sh(
        "ip",
        &[
            "link", "add", &pair.a_if, "netns", &pair.a, "type", "veth", "peer", "name",
            &pair.b_if, "netns", &pair.b,
        ],
    );
}

/// Configures a re-created pair as `VethPair::new` does: IPv6 off before the link comes up (so
/// nothing is sent unasked), the same addresses, links up, static neighbours with the new MACs.
fn configure(pair: &VethPair) {
    for (ns, ifname, addr) in [
        (&pair.a, &pair.a_if, pair.a_addr),
        (&pair.b, &pair.b_if, pair.b_addr),
    ] {
        let key = format!("net.ipv6.conf.{ifname}.disable_ipv6=1");
        pair.exec(ns, "sysctl", &["-qw", &key]);
        let cidr = format!("{}/30", dotted(addr));
        pair.exec(ns, "ip", &["addr", "add", &cidr, "dev", ifname]);
        pair.exec(ns, "ip", &["link", "set", ifname, "up"]);
    }
    for (ns, ifname, peer_ns, peer_if, peer_addr) in [
        (&pair.a, &pair.a_if, &pair.b, &pair.b_if, pair.b_addr),
        (&pair.b, &pair.b_if, &pair.a, &pair.a_if, pair.a_addr),
    ] {
        let peer_mac = pair.mac(peer_ns, peer_if);
        pair.exec(
            ns,
            "ip",
            &[
                "neigh",
                "replace",
                &dotted(peer_addr),
                "lladdr",
                &peer_mac,
                "nud",
                "permanent",
                "dev",
                ifname,
            ],
        );
    }
}

/// Starts the daemon in `ns` like `Daemon::start`, with its log (stderr) written to a file.
fn start_logged(ns: &str, args: &[&str]) -> (Daemon, PathBuf) {
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("churn-{ns}.log"));
    // The qemu guest has the test executable at its host path, but not cargo's tmp directory.
    std::fs::create_dir_all(log.parent().expect("a parent")).expect("creating the log directory");
    let listen: SocketAddr = "127.0.0.1:9435".parse().unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", ns, daemon_path(), "--web.listen-address"])
        .arg(listen.to_string())
        // Nothing pinned: parallel tests must not share maps.
        .arg("--datapath.pin-path=")
        .args(args)
        .stdout(Stdio::null())
        .stderr(File::create(&log).expect("creating the daemon log"))
        .spawn()
        .expect("starting the daemon");
    let mut daemon = Daemon {
        child,
        ns: ns.to_string(),
        listen,
    };
    // As the test kit's Daemon::start: 20 s, times the slowdown (loading and verifying the
    // programs took up to 34 s in the emulated 6.1 guest on a loaded machine).
    let limit = Duration::from_secs(20) * network_probe_testkit::daemon::slowdown();
    let deadline = Instant::now() + limit;
    while !matches!(daemon.get("/-/ready"), Ok((200, _))) {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("daemon exited during start-up: {status}\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "daemon not ready after {limit:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    (daemon, log)
}

/// (ingress packets, ingress bytes, egress packets, egress bytes) of `ifname` in a scrape.
fn counters(scrape: &str, ifname: &str) -> [u64; 4] {
    let value = |name: &str, direction: &str| {
        let labels = format!("interface=\"{ifname}\",direction=\"{direction}\"");
        sample(scrape, name, &labels).unwrap_or(0.0) as u64
    };
    [
        value("network_probe_interface_packets_total", "ingress"),
        value("network_probe_interface_bytes_total", "ingress"),
        value("network_probe_interface_packets_total", "egress"),
        value("network_probe_interface_bytes_total", "egress"),
    ]
}

fn programs_reported(scrape: &str, ifname: &str) -> usize {
    ["tc_ingress", "tc_egress"]
        .iter()
        .filter(|program| {
            let labels = format!("interface=\"{ifname}\",program=\"{program}\"");
            sample(scrape, "network_probe_datapath_programs_attached", &labels) == Some(1.0)
        })
        .count()
}

/// Sends this cycle's datagrams both ways and returns what they add to [`counters`].
fn traffic(pair: &VethPair, cycle: usize) -> [u64; 4] {
    let a: SocketAddr = format!("{}:5000", dotted(pair.a_addr)).parse().unwrap();
    let b: SocketAddr = format!("{}:5000", dotted(pair.b_addr)).parse().unwrap();
    let (ingress, egress) = (INGRESS_DATAGRAMS + cycle, EGRESS_DATAGRAMS + cycle);
    send_datagrams(&pair.b, b, &pair.a, a, ingress, INGRESS_PAYLOAD);
    send_datagrams(&pair.a, a, &pair.b, b, egress, EGRESS_PAYLOAD);
    [
        ingress as u64,
        (ingress * (INGRESS_PAYLOAD + FRAME_OVERHEAD)) as u64,
        egress as u64,
        (egress * (EGRESS_PAYLOAD + FRAME_OVERHEAD)) as u64,
    ]
}

fn add(a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]]
}

#[test]
fn a_deleted_interface_keeps_its_counters_and_is_reattached_when_it_returns() {
    let pair = VethPair::new();
    let (mut daemon, log_path) = start_logged(&pair.a, &["--interface", &pair.a_if]);
    assert!(both_attached(&pair), "not attached at start");

    let mut expected = counters(&daemon.scrape(), &pair.a_if);
    expected = add(expected, traffic(&pair, 0));
    let mut reattach_times = Vec::new();

    for cycle in 1..=CYCLES {
        let scrape = daemon.scrape();
        assert_eq!(
            counters(&scrape, &pair.a_if),
            expected,
            "cycle {cycle}: before deletion"
        );
        assert_eq!(programs_reported(&scrape, &pair.a_if), 2);

        // Deleting one end deletes the pair.
        pair.exec(&pair.a, "ip", &["link", "del", &pair.a_if]);
        let deadline = Instant::now() + reattach_deadline();
        let scrape = loop {
            let scrape = daemon.scrape();
            if programs_reported(&scrape, &pair.a_if) == 0 {
                break scrape;
            }
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: programs still reported {:?} after the deletion\n{scrape}",
                reattach_deadline()
            );
            thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            counters(&scrape, &pair.a_if),
            expected,
            "cycle {cycle}: counters of the deleted interface must keep their values"
        );

        let took = recreate_and_time_reattach(&pair).unwrap_or_else(|| {
            panic!(
                "cycle {cycle}: programs not attached {:?} after re-creation",
                reattach_deadline()
            )
        });
        assert!(both_attached(&pair));
        reattach_times.push(took);
        eprintln!("cycle {cycle}: programs attached again {took:?} after `ip link add` returned");

        configure(&pair);
        let kernel_before = [
            pair.stat(&pair.a, &pair.a_if, "rx_packets"),
            pair.stat(&pair.a, &pair.a_if, "tx_packets"),
        ];
        let added = traffic(&pair, cycle);
        expected = add(expected, added);
        let scrape = daemon.scrape();
        assert_eq!(
            counters(&scrape, &pair.a_if),
            expected,
            "cycle {cycle}: new traffic counted exactly on top of the old totals"
        );
        assert_eq!(programs_reported(&scrape, &pair.a_if), 2);
        let kernel_after = [
            pair.stat(&pair.a, &pair.a_if, "rx_packets"),
            pair.stat(&pair.a, &pair.a_if, "tx_packets"),
        ];
        assert_eq!(
            [
                kernel_after[0] - kernel_before[0],
                kernel_after[1] - kernel_before[1]
            ],
            [added[0], added[2]],
            "cycle {cycle}: the kernel saw exactly the datagrams sent"
        );
    }
    eprintln!("re-attach times: {reattach_times:?}");

    assert_eq!(daemon.stop(libc::SIGTERM).code(), Some(0));
    let log = std::fs::read_to_string(&log_path).expect("reading the daemon log");
    let _ = std::fs::remove_file(&log_path);
    let lines = |needle: &str| log.lines().filter(|line| line.contains(needle)).count();
    assert_eq!(
        lines(&format!("forgot {}", pair.a_if)),
        CYCLES,
        "one forget per deletion\n{log}"
    );
    assert_eq!(
        lines(&format!(
            "attached tc_ingress and tc_egress to {}",
            pair.a_if
        )),
        CYCLES + 1,
        "the start-up attach and one per re-creation\n{log}"
    );
    assert!(
        log.lines()
            .filter(|line| line.contains("forgot ") || line.contains("attached tc_"))
            .all(|line| line.contains(" INFO ")),
        "attach and forget are logged at info level\n{log}"
    );
    assert!(
        !log.contains(" WARN ") && !log.contains(" ERROR "),
        "no warning or error expected\n{log}"
    );
}
