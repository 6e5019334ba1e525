//! TCP flow telemetry on real traffic, each number compared with an independent reference on
//! the same packets: a tcpdump capture of the interface (SYN/FIN/RST, packets, DF, window scale,
//! zero windows, handshake RTT) or the sender's own kernel counters (retransmits, `nstat
//! TcpRetransSegs`). Every test runs on a veth pair between two namespaces it creates; the
//! daemon watches end `a`.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd},
    thread,
    time::{Duration, Instant},
};

use network_probe_testkit::{
    Capture, CapturedPacket, Daemon, VethPair, dotted, in_netns, nstat, sample,
};

/// The two ends' addresses for the chosen family.
fn addresses(pair: &VethPair, ipv6: bool) -> (IpAddr, IpAddr) {
    if ipv6 {
        pair.enable_ipv6();
        (pair.a6().parse().unwrap(), pair.b6().parse().unwrap())
    } else {
        (
            dotted(pair.a_addr).parse().unwrap(),
            dotted(pair.b_addr).parse().unwrap(),
        )
    }
}

/// Sets an int socket option, panicking on failure.
fn setsockopt(fd: i32, level: i32, name: i32, value: i32) {
    // SAFETY: valid fd and a pointer to an int of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// A TCP socket of `addr`'s family with SO_RCVBUF set before connect/listen (which is what
/// decides the window scale it offers).
fn tcp_socket(addr: SocketAddr, rcvbuf: Option<i32>) -> i32 {
    let family = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    if let Some(size) = rcvbuf {
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size);
    }
    fd
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: zeroed sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as u32)
}

/// connect(2) with an optional SO_RCVBUF; the error kind on failure.
pub(crate) fn connect(addr: SocketAddr, rcvbuf: Option<i32>) -> Result<TcpStream, ErrorKind> {
    let fd = tcp_socket(addr, rcvbuf);
    let (storage, len) = sockaddr(addr);
    // SAFETY: valid fd and sockaddr.
    let rc = unsafe { libc::connect(fd, &storage as *const _ as *const libc::sockaddr, len) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        // SAFETY: closing our own fd.
        unsafe { libc::close(fd) };
        return Err(err.kind());
    }
    // SAFETY: fd is a connected TCP socket we own.
    Ok(unsafe { TcpStream::from_raw_fd(fd) })
}

/// A listener with an optional SO_RCVBUF (inherited by accepted sockets).
pub(crate) fn listen(addr: SocketAddr, rcvbuf: Option<i32>) -> TcpListener {
    let fd = tcp_socket(addr, rcvbuf);
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    let (storage, len) = sockaddr(addr);
    // SAFETY: valid fd and sockaddr.
    unsafe {
        assert_eq!(
            libc::bind(fd, &storage as *const _ as *const libc::sockaddr, len),
            0
        );
        assert_eq!(libc::listen(fd, 128), 0);
        TcpListener::from_raw_fd(fd)
    }
}

/// Series labels for flows from `src` to `dst` on interface `ifname` (default label set).
fn flow_labels(ifname: &str, src: IpAddr, dst: IpAddr) -> String {
    format!("interface=\"{ifname}\",src=\"{src}\",dst=\"{dst}\"")
}

/// (upper bound, cumulative count) of every bucket of histogram `name` with `labels` (after
/// `le`, which the exposition puts first).
pub(crate) fn histogram_buckets(scrape: &str, name: &str, labels: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let suffix = format!("\",{labels}}}");
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (bound, value) = rest.split_once(&suffix)?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().expect("numeric bound")
            };
            Some((
                bound,
                value.trim().parse::<f64>().expect("numeric count") as u64,
            ))
        })
        .collect()
}

fn counter(scrape: &str, name: &str, labels: &str) -> u64 {
    sample(scrape, name, labels).unwrap_or(0.0) as u64
}

/// Captured TCP packets sent from `src` (address without port).
fn from(packets: &[CapturedPacket], src: IpAddr) -> Vec<&CapturedPacket> {
    let prefix = format!("{src}.");
    packets
        .iter()
        .filter(|p| p.src.starts_with(&prefix))
        .collect()
}

fn with_flag(packets: &[&CapturedPacket], flag: char) -> u64 {
    packets.iter().filter(|p| p.flags.contains(flag)).count() as u64
}

/// Opens connections from a to b: `clean` ones that exchange data and close with FINs, one
/// aborted with SO_LINGER 0 (RST from a), one to a closed port (RST from b).
fn handshakes_and_closes(pair: &VethPair, b: IpAddr, clean: usize) {
    let server_addr = SocketAddr::new(b, 5001);
    let listener = in_netns(&pair.b, move || listen(server_addr, None));
    let server = thread::spawn(move || {
        for _ in 0..clean + 1 {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            let _ = stream.read_to_end(&mut buf);
        }
    });
    in_netns(&pair.a, move || {
        for _ in 0..clean {
            // A small receive buffer makes a's window scale differ from b's default.
            let mut stream = connect(server_addr, Some(4096)).unwrap();
            stream.write_all(&[7u8; 1000]).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).unwrap();
        }
        let aborted = connect(server_addr, Some(4096)).unwrap();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: valid fd and linger struct.
        unsafe {
            libc::setsockopt(
                aborted.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
        drop(aborted);
        assert_eq!(
            connect(SocketAddr::new(server_addr.ip(), 5999), Some(4096)).unwrap_err(),
            ErrorKind::ConnectionRefused
        );
    });
    server.join().unwrap();
}

/// `ingress` is the `--datapath.ingress` value: the same numbers must come out of the TC and the
/// XDP ingress programs.
fn flags_packets_df_window_scale_and_rtt(ipv6: bool, ingress: &str) {
    const CLEAN: usize = 3;
    let pair = VethPair::new();
    pair.disable_offloads();
    let (a, b) = addresses(&pair, ipv6);
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--datapath.ingress",
            ingress,
            "--flows.families",
            "all",
        ],
    );
    let capture = Capture::start(&pair.a, &pair.a_if);
    handshakes_and_closes(&pair, b, CLEAN);
    let packets = capture.finish();
    let scrape = daemon.scrape();

    let program = if ingress == "tc" {
        "tc_ingress"
    } else {
        "xdp_ingress"
    };
    assert_eq!(
        sample(
            &scrape,
            "network_probe_datapath_programs_attached",
            &format!("interface=\"{}\",program=\"{program}\"", pair.a_if)
        ),
        Some(1.0)
    );
    // One flow entry per direction of every connection in the capture: in the slot table, or
    // (slot taken) in the LRU map of the family; none in the other family's map.
    let directions: std::collections::BTreeSet<(&str, &str)> = packets
        .iter()
        .map(|p| (p.src.as_str(), p.dst.as_str()))
        .collect();
    let (family_map, other_map) = if ipv6 {
        ("FLOWS6", "FLOWS4")
    } else {
        ("FLOWS4", "FLOWS6")
    };
    let entries = |map: &str| {
        sample(
            &scrape,
            "network_probe_datapath_map_entries",
            &format!("map=\"{map}\""),
        )
    };
    let (in_slots, in_lru) = (
        entries("FLOW_SLOTS").expect("FLOW_SLOTS entries"),
        entries(family_map).expect("LRU map entries"),
    );
    assert_eq!(
        in_slots + in_lru,
        directions.len() as f64,
        "{in_slots} in slots, {in_lru} in {family_map}: {directions:?}"
    );
    // A handful of flows in thousands of slots: two share a slot with a chance below 1%.
    assert!(
        in_slots >= directions.len() as f64 - 1.0,
        "{in_slots} of {} flows in slots",
        directions.len()
    );
    assert_eq!(entries(other_map), Some(0.0));

    let out = flow_labels(&pair.a_if, a, b);
    let back = flow_labels(&pair.a_if, b, a);
    let sent = from(&packets, a);
    let received = from(&packets, b);
    assert!(!sent.is_empty() && !received.is_empty(), "{packets:#?}");

    for (labels, captured) in [(&out, &sent), (&back, &received)] {
        let flow = |name: &str| counter(&scrape, name, labels);
        assert_eq!(
            flow("network_probe_flow_packets_total"),
            captured.len() as u64,
            "{labels}"
        );
        assert_eq!(
            flow("network_probe_flow_syn_total"),
            with_flag(captured, 'S'),
            "{labels}"
        );
        assert_eq!(
            flow("network_probe_flow_fin_total"),
            with_flag(captured, 'F'),
            "{labels}"
        );
        assert_eq!(
            flow("network_probe_flow_rst_total"),
            with_flag(captured, 'R'),
            "{labels}"
        );
        let df = captured.iter().filter(|p| p.df).count() as u64;
        assert_eq!(flow("network_probe_flow_df_packets_total"), df, "{labels}");
        if ipv6 {
            assert_eq!(df, 0);
        } else {
            assert!(df > 0, "Linux sets DF on TCP over IPv4");
        }
        assert_eq!(flow("network_probe_flow_retransmits_total"), 0, "{labels}");
    }
    // a sent CLEAN + 2 SYNs, got CLEAN + 1 SYN-ACKs, one RST each way.
    assert_eq!(with_flag(&sent, 'S'), CLEAN as u64 + 2);
    assert_eq!(with_flag(&received, 'R'), 1);
    assert_eq!(with_flag(&sent, 'R'), 1);

    // Window scale: the shift each side offered in its SYN / SYN-ACK.
    let offered = |side: &[&CapturedPacket]| -> Vec<u8> {
        let mut values: Vec<u8> = side
            .iter()
            .filter(|p| p.flags.contains('S'))
            .filter_map(|p| p.wscale)
            .collect();
        values.dedup();
        values
    };
    let a_scale = offered(&sent);
    let b_scale = offered(&received);
    assert_eq!(a_scale.len(), 1, "a offered one window scale: {a_scale:?}");
    assert_eq!(b_scale.len(), 1, "b offered one window scale: {b_scale:?}");
    assert_ne!(
        a_scale, b_scale,
        "the test wants different scales on each side"
    );
    assert_eq!(
        sample(&scrape, "network_probe_flow_window_scale", &out),
        Some(f64::from(a_scale[0]))
    );
    assert_eq!(
        sample(&scrape, "network_probe_flow_window_scale", &back),
        Some(f64::from(b_scale[0]))
    );

    // Per-interface totals agree with the capture per direction.
    let iface = |direction: &str| format!("interface=\"{}\",direction=\"{direction}\"", pair.a_if);
    for (direction, captured) in [("egress", &sent), ("ingress", &received)] {
        let labels = iface(direction);
        let total = |name: &str| counter(&scrape, name, &labels);
        assert_eq!(
            total("network_probe_interface_tcp_packets_total"),
            captured.len() as u64
        );
        assert_eq!(
            total("network_probe_interface_tcp_syn_total"),
            with_flag(captured, 'S')
        );
        assert_eq!(
            total("network_probe_interface_tcp_fin_total"),
            with_flag(captured, 'F')
        );
        assert_eq!(
            total("network_probe_interface_tcp_rst_total"),
            with_flag(captured, 'R')
        );
        let df = captured.iter().filter(|p| p.df).count() as u64;
        assert_eq!(total("network_probe_interface_ipv4_df_packets_total"), df);
        // TCP payload-size histogram: one observation per segment, summing tcpdump's "length".
        let payload = |p: &&CapturedPacket| -> u64 {
            let tail = p.text.rsplit("length ").next().unwrap();
            tail.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let payload_sum: u64 = captured.iter().map(payload).sum();
        assert_eq!(
            total("network_probe_interface_tcp_payload_size_bytes_count"),
            captured.len() as u64
        );
        assert_eq!(
            total("network_probe_interface_tcp_payload_size_bytes_sum"),
            payload_sum,
            "payload bytes vs the capture"
        );
        // Every bucket: the kernel's bucketing against the captured lengths (cumulative).
        let payloads: Vec<u64> = captured.iter().map(payload).collect();
        let buckets = histogram_buckets(
            &scrape,
            "network_probe_interface_tcp_payload_size_bytes",
            &labels,
        );
        assert_eq!(buckets.len(), 17, "16 bounds and +Inf: {buckets:?}");
        for (bound, count) in buckets {
            let expected = payloads.iter().filter(|&&p| p as f64 <= bound).count() as u64;
            assert_eq!(
                count, expected,
                "{direction} payloads <= {bound}: {payloads:?}"
            );
        }
    }

    // Handshake RTT: one sample per SYN answered by a SYN-ACK (the refused one got a RST).
    let rtt_count = sample(
        &scrape,
        "network_probe_tcp_handshake_rtt_seconds_count",
        &format!("interface=\"{}\"", pair.a_if),
    );
    assert_eq!(rtt_count, Some(with_flag(&received, 'S') as f64));
    let rtt_sum = sample(
        &scrape,
        "network_probe_tcp_handshake_rtt_seconds_sum",
        &format!("interface=\"{}\"", pair.a_if),
    )
    .unwrap();
    let captured_rtt = handshake_rtts(&packets, a);
    assert_eq!(captured_rtt.len() as f64, rtt_count.unwrap());
    let captured_sum: f64 = captured_rtt.iter().sum();
    // Both are kernel timestamps a few hundred nanoseconds apart on the same path. Not in the
    // emulated (TCG) guest: there a received frame's capture stamp (taken when the peer's veth
    // queues it to the backlog) and our TC ingress hook (when the softirq gets to it) are
    // milliseconds apart on a loaded machine (6.1 guest: ours 8.3 and 23.2 ms against the
    // capture's 5.8 and 1.3 ms); the guest declares it, so the comparison is printed and counted
    // as not applicable there, and everything else above is still checked.
    let case = format!(
        "flows (IPv{}, --datapath.ingress {ingress}): handshake RTT sum against the capture",
        if ipv6 { 6 } else { 4 }
    );
    if network_probe_testkit::applicability::applies(
        &case,
        "wire-timing",
        network_probe_testkit::daemon::slowdown() == 1,
        "microsecond timing between the TC hooks and a capture (emulated guest)",
    ) {
        assert!(
            (rtt_sum - captured_sum).abs()
                <= 50e-6 * captured_rtt.len() as f64 + 0.2 * captured_sum,
            "handshake RTT sum: ours {rtt_sum} s, capture {captured_sum} s"
        );
    }
}

/// SYN to SYN-ACK times in a capture read with timestamps, for connections `client` opened.
fn handshake_rtts(packets: &[CapturedPacket], client: IpAddr) -> Vec<f64> {
    let time =
        |p: &CapturedPacket| -> f64 { p.text.split_whitespace().next().unwrap().parse().unwrap() };
    let prefix = format!("{client}.");
    let mut rtts = Vec::new();
    for syn in packets
        .iter()
        .filter(|p| p.flags == "S" && p.src.starts_with(&prefix))
    {
        if let Some(syn_ack) = packets
            .iter()
            .find(|p| p.flags == "S." && p.dst == syn.src && time(p) >= time(syn))
        {
            rtts.push(time(syn_ack) - time(syn));
        }
    }
    rtts
}

#[test]
fn flags_packets_df_window_scale_and_handshake_rtt_match_a_capture_ipv4() {
    flags_packets_df_window_scale_and_rtt(false, "tc");
}

#[test]
fn flags_packets_df_window_scale_and_handshake_rtt_match_a_capture_ipv6() {
    flags_packets_df_window_scale_and_rtt(true, "tc");
}

#[test]
fn xdp_generic_ingress_counts_the_same_as_a_capture() {
    flags_packets_df_window_scale_and_rtt(false, "xdp-generic");
}

#[test]
fn xdp_native_ingress_counts_the_same_as_a_capture_ipv6() {
    // veth has a native XDP implementation, so driver mode works here.
    flags_packets_df_window_scale_and_rtt(true, "xdp-native");
}

/// With ports in the label set and a cap of 2 series, connections to 6 ports produce more
/// label sets than the cap: the rest is summed into the interface's `other` row, and all rows
/// together still equal the interface's TCP packet counters.
#[test]
fn series_beyond_the_cap_are_summed_into_other() {
    let pair = VethPair::new();
    let (_, b) = addresses(&pair, false);
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--flows.labels",
            "interface,src,dst,dst_port",
            "--flows.max-series",
            "2",
        ],
    );
    in_netns(&pair.a, move || {
        for port in 6000..6006 {
            assert_eq!(
                connect(SocketAddr::new(b, port), None).unwrap_err(),
                ErrorKind::ConnectionRefused
            );
        }
    });
    let scrape = daemon.scrape();
    let rows: Vec<(&str, u64)> = scrape
        .lines()
        .filter_map(|line| line.strip_prefix("network_probe_flow_packets_total{"))
        .map(|line| {
            let (labels, value) = line.split_once("} ").unwrap();
            (labels, value.parse().unwrap())
        })
        .collect();
    let individual = rows
        .iter()
        .filter(|(l, _)| !l.contains("src=\"other\""))
        .count();
    assert_eq!(individual, 2, "{rows:?}");
    let other = format!(
        "interface=\"{}\",src=\"other\",dst=\"other\",dst_port=\"other\"",
        pair.a_if
    );
    assert!(
        counter(&scrape, "network_probe_flow_packets_total", &other) > 0,
        "{rows:?}"
    );
    let total: u64 = rows.iter().map(|(_, v)| v).sum();
    let interface = |direction: &str| {
        counter(
            &scrape,
            "network_probe_interface_tcp_packets_total",
            &format!("interface=\"{}\",direction=\"{direction}\"", pair.a_if),
        )
    };
    // 6 SYNs out, 6 RSTs in.
    assert_eq!(interface("egress") + interface("ingress"), 12);
    assert_eq!(total, 12, "{rows:?}");
    assert_eq!(sample(&scrape, "network_probe_flow_series", ""), Some(3.0));
}

fn zero_windows(ipv6: bool) {
    let pair = VethPair::new();
    pair.disable_offloads();
    let (a, b) = addresses(&pair, ipv6);
    let daemon = Daemon::start(
        &pair.a,
        &["--interface", &pair.a_if, "--flows.families", "all"],
    );
    let capture = Capture::start(&pair.a, &pair.a_if);
    let server_addr = SocketAddr::new(b, 5002);
    // b accepts and never reads, with a small buffer: it soon advertises a zero window.
    let listener = in_netns(&pair.b, move || listen(server_addr, Some(2048)));
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        thread::sleep(Duration::from_millis(1500));
        drop(stream);
    });
    in_netns(&pair.a, move || {
        let mut stream = connect(server_addr, None).unwrap();
        stream.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_millis(1200);
        while Instant::now() < deadline {
            match stream.write(&[1u8; 4096]) {
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(20))
                }
                Err(err) => panic!("write: {err}"),
            }
        }
    });
    server.join().unwrap();
    let packets = capture.finish();
    let scrape = daemon.scrape();
    let zero = |side: Vec<&CapturedPacket>| {
        side.iter()
            .filter(|p| p.window == Some(0) && !p.flags.contains('R'))
            .count() as u64
    };
    let from_b = zero(from(&packets, b));
    assert!(from_b > 0, "the receiver never advertised a zero window");
    assert_eq!(
        counter(
            &scrape,
            "network_probe_flow_zero_window_total",
            &flow_labels(&pair.a_if, b, a)
        ),
        from_b
    );
    assert_eq!(
        counter(
            &scrape,
            "network_probe_interface_tcp_zero_window_total",
            &format!("interface=\"{}\",direction=\"ingress\"", pair.a_if)
        ),
        from_b
    );
    assert_eq!(
        counter(
            &scrape,
            "network_probe_flow_zero_window_total",
            &flow_labels(&pair.a_if, a, b)
        ),
        zero(from(&packets, a))
    );
}

#[test]
fn zero_windows_match_a_capture_ipv4() {
    zero_windows(false);
}

#[test]
fn zero_windows_match_a_capture_ipv6() {
    zero_windows(true);
}

/// Makes b's input drop one in 25 data segments to `port`, so a's TCP has to retransmit.
fn lossy_receiver(pair: &VethPair, port: u16) {
    let rule = format!(
        "add rule inet np in tcp dport {port} meta length > 200 numgen random mod 25 == 0 drop"
    );
    for args in [
        "add table inet np",
        "add chain inet np in { type filter hook input priority 0 ; }",
        rule.as_str(),
    ] {
        let args: Vec<&str> = args.split(' ').collect();
        pair.exec(&pair.b, "nft", &args);
    }
}

/// Sends `bytes` from a to a listener at `server_addr` in b that reads everything, waits until
/// the last ACKs settle, and returns how much a's TcpRetransSegs grew meanwhile.
fn bulk_transfer(pair: &VethPair, server_addr: SocketAddr, bytes: usize) -> u64 {
    let listener = in_netns(&pair.b, move || listen(server_addr, None));
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).unwrap();
        buf.len()
    });
    let before = nstat(&pair.a, "TcpRetransSegs");
    in_netns(&pair.a, move || {
        let mut stream = connect(server_addr, None).unwrap();
        let chunk = vec![3u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            stream.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        stream.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
    });
    assert_eq!(server.join().unwrap(), bytes);
    // Let the last ACKs settle so no retransmission is still in flight.
    thread::sleep(Duration::from_millis(300));
    nstat(&pair.a, "TcpRetransSegs") - before
}

/// Bulk transfer from a to b while an nftables rule in b drops one in `one_in` data segments,
/// offloads on (so GSO super-packets and their segment counts are exercised). Our
/// retransmit counts must equal the sender's own TcpRetransSegs.
fn retransmits(ipv6: bool) {
    let pair = VethPair::new();
    let (a, b) = addresses(&pair, ipv6);
    lossy_receiver(&pair, 5003);
    let daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if]);
    let kernel = bulk_transfer(&pair, SocketAddr::new(b, 5003), 16 << 20);
    let scrape = daemon.scrape();
    let ours_flow = counter(
        &scrape,
        "network_probe_flow_retransmits_total",
        &flow_labels(&pair.a_if, a, b),
    );
    let ours_interface = counter(
        &scrape,
        "network_probe_interface_tcp_retransmits_total",
        &format!("interface=\"{}\",direction=\"egress\"", pair.a_if),
    );
    eprintln!("retransmits ipv6={ipv6}: kernel TcpRetransSegs {kernel}, ours {ours_flow}");
    assert!(kernel > 0, "the drop rule caused no retransmission");
    assert_eq!(
        ours_flow, kernel,
        "flow retransmits vs the sender's TcpRetransSegs"
    );
    assert_eq!(
        ours_interface, kernel,
        "interface retransmits vs TcpRetransSegs"
    );
    assert_eq!(
        counter(
            &scrape,
            "network_probe_flow_retransmits_total",
            &flow_labels(&pair.a_if, b, a)
        ),
        0,
        "the receiver sent only ACKs"
    );
}

#[test]
fn retransmits_match_the_senders_kernel_counter_ipv4() {
    retransmits(false);
}

#[test]
fn retransmits_match_the_senders_kernel_counter_ipv6() {
    retransmits(true);
}

/// Retransmits against a capture: offloads off (one wire segment per captured packet), a drop
/// rule at the receiver, and the sender's data segments read back from tcpdump. A captured
/// segment that starts before the highest sequence already captured in that direction is a
/// retransmission; that count must equal ours and the sender's TcpRetransSegs.
#[test]
fn retransmits_match_a_capture_and_the_kernel_counter() {
    let pair = VethPair::new();
    pair.disable_offloads();
    let (a, b) = addresses(&pair, false);
    lossy_receiver(&pair, 5004);
    let daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if]);
    let capture = Capture::start(&pair.a, &pair.a_if);
    let kernel = bulk_transfer(&pair, SocketAddr::new(b, 5004), 2 << 20);
    let packets = capture.finish();
    let scrape = daemon.scrape();

    // tcpdump prints data segments as "seq START:END" (relative to the flow's first sequence).
    let mut highest_end: Option<i64> = None;
    let mut captured = 0u64;
    for packet in from(&packets, a) {
        let Some(range) = packet.text.split("seq ").nth(1) else {
            continue;
        };
        let range = range.split(',').next().unwrap();
        let Some((start, end)) = range.split_once(':') else {
            continue; // no payload
        };
        let (start, end): (i64, i64) = (start.parse().unwrap(), end.parse().unwrap());
        if highest_end.is_some_and(|highest| start < highest) {
            captured += 1;
        }
        highest_end = Some(highest_end.map_or(end, |highest| highest.max(end)));
    }
    let ours = counter(
        &scrape,
        "network_probe_flow_retransmits_total",
        &flow_labels(&pair.a_if, a, b),
    );
    eprintln!("retransmits: capture {captured}, kernel {kernel}, ours {ours}");
    assert!(captured > 0, "the drop rule caused no retransmission");
    assert_eq!(ours, captured, "ours vs the capture");
    assert_eq!(ours, kernel, "ours vs the sender's TcpRetransSegs");
}
