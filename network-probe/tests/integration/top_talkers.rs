//! Admission by weight on real traffic: a burst of short connections (thousands of new port
//! tuples a second) while three long transfers run, with the port numbers in the label set and
//! a budget of 8 series. The heavy transfers keep their own series throughout (never absent
//! from a scrape once admitted, never lower than in the scrape before), their bytes within 1 %
//! of what a tcpdump capture of the interface saw; the burst lands in the interface's `other`
//! row; and the flow rows of the interface sum exactly to its TCP packet counters.
//!
//! Everything happens on a veth pair between two namespaces the test creates.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use network_probe_testkit::{Capture, Daemon, VethPair, dotted, in_netns, sample};

/// Label sets with a series of their own.
const BUDGET: usize = 8;
/// Ports of the heavy transfers' listeners in b.
const HEAVY_PORTS: [u16; 3] = [5101, 5102, 5103];
/// Port nothing listens on in a: the burst's connections are refused.
const CLOSED_PORT: u16 = 7;
/// How long the burst runs.
const BURST: Duration = Duration::from_secs(3);

/// Every `network_probe_flow_<family>_total` row of a scrape: label set -> value.
fn rows(scrape: &str, family: &str) -> BTreeMap<String, u64> {
    let prefix = format!("network_probe_flow_{family}_total{{");
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|line| {
            let (labels, value) = line.split_once("} ").expect("a sample line");
            (labels.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn value(scrape: &str, name: &str, labels: &str) -> u64 {
    sample(scrape, name, labels).unwrap_or(0.0) as u64
}

fn heavy_labels(ifname: &str, a: IpAddr, b: IpAddr, client: SocketAddr, port: u16) -> String {
    format!(
        "interface=\"{ifname}\",src=\"{a}\",dst=\"{b}\",src_port=\"{}\",dst_port=\"{port}\"",
        client.port()
    )
}

#[test]
fn heavy_flows_keep_their_series_through_a_burst_and_rows_sum_exactly() {
    let pair = VethPair::new();
    // One wire packet per skb where TC sees it, so the capture and the datapath count the
    // same packets (see truth.rs).
    pair.disable_offloads();
    for (ns, ifname) in [(&pair.a, &pair.a_if), (&pair.b, &pair.b_if)] {
        pair.exec(
            ns,
            "ip",
            &["link", "set", "dev", ifname, "gso_max_segs", "1"],
        );
    }
    let a: IpAddr = dotted(pair.a_addr).parse().unwrap();
    let b: IpAddr = dotted(pair.b_addr).parse().unwrap();
    let budget = BUDGET.to_string();
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--flows.labels",
            "interface,src,dst,src_port,dst_port",
            "--flows.max-series",
            &budget,
            "--flows.rank-window",
            "10s",
        ],
    );
    // The transfers' packets only: the burst's count is known exactly from the client side.
    let capture = Capture::start_filtered(
        &pair.a,
        &pair.a_if,
        &format!(
            "tcp portrange {}-{}",
            HEAVY_PORTS[0],
            HEAVY_PORTS[HEAVY_PORTS.len() - 1]
        ),
    );

    // The heavy transfers: a to b, paced (64 KiB every 20 ms each) so they last past the burst.
    let stop = Arc::new(AtomicBool::new(false));
    let mut heavy = Vec::new();
    for port in HEAVY_PORTS {
        let server_addr = SocketAddr::new(b, port);
        let listener: TcpListener =
            in_netns(&pair.b, move || TcpListener::bind(server_addr).unwrap());
        let reader = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut sink = vec![0u8; 1 << 16];
            let mut total = 0u64;
            loop {
                match stream.read(&mut sink) {
                    Ok(0) => return total,
                    Ok(n) => total += n as u64,
                    Err(err) => panic!("reading a heavy transfer: {err}"),
                }
            }
        });
        let stream: TcpStream = in_netns(&pair.a, move || TcpStream::connect(server_addr).unwrap());
        let client = stream.local_addr().unwrap();
        let stop = Arc::clone(&stop);
        let writer = thread::spawn(move || {
            let mut stream = stream;
            let chunk = vec![7u8; 64 * 1024];
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                stream.write_all(&chunk).unwrap();
                sent += chunk.len() as u64;
                thread::sleep(Duration::from_millis(20));
            }
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            sent
        });
        heavy.push((port, client, writer, reader));
    }
    thread::sleep(Duration::from_millis(500));
    // A read before the burst (a scrape, as Prometheus would make; the sweeper reads too): the
    // transfers are seen while there is room, so their series hold all of their bytes.
    let before_burst = daemon.scrape();
    assert_eq!(
        value(&before_burst, "network_probe_flow_series_admitted", ""),
        2 * HEAVY_PORTS.len() as u64,
        "the transfers and their ACKs: {before_burst}"
    );

    // The burst: connections from b to a closed port of a, each refused (a SYN in, a RST out,
    // a new source port each time), from two threads.
    let refused = Arc::new(AtomicU64::new(0));
    let to = SocketAddr::new(a, CLOSED_PORT);
    let burst: Vec<_> = (0..2)
        .map(|_| {
            let refused = Arc::clone(&refused);
            let ns = pair.b.clone();
            thread::spawn(move || {
                in_netns(&ns, move || {
                    let start = Instant::now();
                    while start.elapsed() < BURST {
                        match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                            Err(err) if err.kind() == ErrorKind::ConnectionRefused => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            other => panic!("expected a refusal, got {other:?}"),
                        }
                    }
                })
            })
        })
        .collect();

    // Scrapes while it runs: once a heavy transfer has its series it is in every scrape, and
    // never lower than before.
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut scrapes = 0;
    let started = Instant::now();
    while burst.iter().any(|t| !t.is_finished()) {
        let scrape = daemon.scrape();
        scrapes += 1;
        let bytes = rows(&scrape, "bytes");
        for (port, client, _, _) in &heavy {
            let labels = heavy_labels(&pair.a_if, a, b, *client, *port);
            let now = bytes.get(&labels).copied();
            assert!(
                now.is_some(),
                "scrape {scrapes}: the transfer to {port} has no series: {:?}",
                bytes.keys().collect::<Vec<_>>()
            );
            let before = seen.insert(labels, now.unwrap()).unwrap_or(0);
            assert!(now.unwrap() >= before, "{port}: {before} -> {now:?}");
        }
        assert!(
            value(&scrape, "network_probe_flow_series_admitted", "") <= BUDGET as u64,
            "{scrape}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let burst_seconds = started.elapsed().as_secs_f64();
    for thread in burst {
        thread.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for (port, client, writer, reader) in heavy {
        let bytes = writer.join().unwrap();
        assert_eq!(reader.join().unwrap(), bytes);
        sent.push((port, client));
    }
    let refused = refused.load(Ordering::Relaxed);
    // Each refused connection is two new flows with label sets of their own.
    let tuples_per_second = 2.0 * refused as f64 / burst_seconds;
    eprintln!(
        "burst: {refused} refused connections in {burst_seconds:.1} s ({tuples_per_second:.0} new \
         tuples/s), {scrapes} scrapes meanwhile"
    );
    assert!(tuples_per_second > 1000.0, "{tuples_per_second} tuples/s");
    thread::sleep(Duration::from_millis(500));
    let frames = capture.finish_frames();
    let scrape = daemon.scrape();

    // The heavy transfers: their own series, bytes within 1 % of the capture.
    let bytes = rows(&scrape, "bytes");
    eprintln!(
        "series ranked out {}, label sets in other {}",
        value(&scrape, "network_probe_flow_series_ranked_out_total", ""),
        value(&scrape, "network_probe_flow_label_sets_in_other", "")
    );
    for (port, client) in &sent {
        let captured: u64 = frames
            .iter()
            .filter(|frame| {
                frame.ip().is_some_and(|ip| {
                    ip.src == a && ip.dst == b && ip.ports == Some((client.port(), *port))
                })
            })
            .map(|frame| u64::from(frame.len))
            .sum();
        let ours = bytes
            .get(&heavy_labels(&pair.a_if, a, b, *client, *port))
            .copied()
            .unwrap_or(0);
        eprintln!("transfer to {port}: ours {ours} bytes, capture {captured}");
        assert!(captured > 1 << 20, "{port}: only {captured} bytes captured");
        let off = ours.abs_diff(captured) as f64 / captured as f64;
        assert!(
            off <= 0.01,
            "{port}: ours {ours}, capture {captured} ({off:.4} off)"
        );
    }

    // The burst: in other. Each refused connection is exactly one SYN in and one RST out; at
    // least 99 % of those packets are in the other row, and at most the budget's worth of the
    // burst's label sets have a series.
    let packets = rows(&scrape, "packets");
    let other = format!(
        "interface=\"{}\",src=\"other\",dst=\"other\",src_port=\"other\",dst_port=\"other\"",
        pair.a_if
    );
    let burst_port = |labels: &str| {
        labels.contains(&format!("src_port=\"{CLOSED_PORT}\""))
            || labels.contains(&format!("dst_port=\"{CLOSED_PORT}\""))
    };
    let burst_packets = 2 * refused;
    let in_other = packets.get(&other).copied().unwrap_or(0);
    let burst_rows = packets.keys().filter(|labels| burst_port(labels)).count();
    eprintln!(
        "burst: {burst_packets} packets, other row {in_other} packets, {burst_rows} \
         burst label sets with a series, {} series",
        packets.len()
    );
    assert!(burst_rows <= BUDGET, "{burst_rows} burst rows");
    assert!(
        in_other as f64 >= 0.99 * burst_packets as f64,
        "other {in_other} of {burst_packets} burst packets"
    );
    assert!(value(&scrape, "network_probe_flow_series_admitted", "") <= BUDGET as u64);
    assert_eq!(
        value(&scrape, "network_probe_flow_series_budget", ""),
        BUDGET as u64
    );

    // Totals exact: every flow row of the interface summed equals its TCP packet counters.
    let interface: u64 = ["ingress", "egress"]
        .iter()
        .map(|direction| {
            value(
                &scrape,
                "network_probe_interface_tcp_packets_total",
                &format!("interface=\"{}\",direction=\"{direction}\"", pair.a_if),
            )
        })
        .sum();
    let flows: u64 = packets
        .iter()
        .filter(|(labels, _)| labels.starts_with(&format!("interface=\"{}\"", pair.a_if)))
        .map(|(_, value)| value)
        .sum();
    eprintln!("interface TCP packets {interface}, flow rows {flows}");
    assert_eq!(flows, interface, "flow rows against the interface counters");
}
