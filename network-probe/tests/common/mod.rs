//! Test fixtures shared by the integration tests: network namespaces with a veth pair between
//! them, running code inside a namespace, the daemon as a child process, and a tiny HTTP client.
//!
//! Every address used lives inside namespaces these fixtures create, and they are deleted on
//! drop. Tests need root (`cargo xtask test` checks).
#![allow(dead_code)]

use aya::programs::{SchedClassifier, TcAttachType};
use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::UdpSocket,
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

/// Path of the daemon binary cargo built for this test run.
pub const DAEMON: &str = env!("CARGO_BIN_EXE_network-probe");

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// How many times slower than the host the tests run: `NETWORK_PROBE_TEST_SLOWDOWN`, which
/// `cargo xtask kernel-test` sets for its emulated (TCG) guest, where loading the eBPF programs
/// alone takes over 10 s; 1 when unset. Fixed waits for the daemon are multiplied by it.
pub fn slowdown() -> u32 {
    std::env::var("NETWORK_PROBE_TEST_SLOWDOWN")
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|&factor| factor >= 1)
        .unwrap_or(1)
}

/// Runs a command and panics with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("starting {program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Two network namespaces `a` and `b` joined by a veth pair: `a_if` (in `a`, 10.231.N.1/30)
/// and `b_if` (in `b`, 10.231.N.2/30). IPv6 is off on the veths and the neighbours are static,
/// so no packet crosses the pair unless a test sends it.
pub struct VethPair {
    pub a: String,
    pub b: String,
    pub a_if: String,
    pub b_if: String,
    pub a_addr: [u8; 4],
    pub b_addr: [u8; 4],
}

impl VethPair {
    pub fn new() -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}-{id}", std::process::id() % 100_000);
        let pair = VethPair {
            a: format!("np-{tag}-a"),
            b: format!("np-{tag}-b"),
            a_if: format!("npa{tag}"),
            b_if: format!("npb{tag}"),
            a_addr: [10, 231, id as u8, 1],
            b_addr: [10, 231, id as u8, 2],
        };
        sh("ip", &["netns", "add", &pair.a]);
        sh("ip", &["netns", "add", &pair.b]);
        sh(
            "ip",
            &[
                "link", "add", &pair.a_if, "netns", &pair.a, "type", "veth", "peer", "name",
                &pair.b_if, "netns", &pair.b,
            ],
        );
        for (ns, ifname, addr) in [
            (&pair.a, &pair.a_if, pair.a_addr),
            (&pair.b, &pair.b_if, pair.b_addr),
        ] {
            let cidr = format!("{}/30", dotted(addr));
            pair.exec(ns, "ip", &["link", "set", "lo", "up"]);
            let key = format!("net.ipv6.conf.{ifname}.disable_ipv6=1");
            pair.exec(ns, "sysctl", &["-qw", &key]);
            pair.exec(ns, "ip", &["addr", "add", &cidr, "dev", ifname]);
            pair.exec(ns, "ip", &["link", "set", ifname, "up"]);
        }
        let a_mac = pair.mac(&pair.a.clone(), &pair.a_if.clone());
        let b_mac = pair.mac(&pair.b.clone(), &pair.b_if.clone());
        pair.exec(
            &pair.a,
            "ip",
            &[
                "neigh",
                "replace",
                &dotted(pair.b_addr),
                "lladdr",
                &b_mac,
                "nud",
                "permanent",
                "dev",
                &pair.a_if,
            ],
        );
        pair.exec(
            &pair.b,
            "ip",
            &[
                "neigh",
                "replace",
                &dotted(pair.a_addr),
                "lladdr",
                &a_mac,
                "nud",
                "permanent",
                "dev",
                &pair.b_if,
            ],
        );
        pair
    }

    /// Runs `program` inside namespace `ns`.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", ns, program];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    pub fn mac(&self, ns: &str, ifname: &str) -> String {
        let path = format!("/sys/class/net/{ifname}/address");
        self.exec(ns, "cat", &[&path]).trim().to_string()
    }

    /// Enables IPv6 on both ends with fd00:231:N::1/64 (a) and ::2/64 (b), without DAD, and
    /// static neighbour entries (so no neighbour discovery crosses the pair unasked).
    pub fn enable_ipv6(&self) {
        let [a6, b6] = [self.a6(), self.b6()];
        for (ns, ifname, addr) in [(&self.a, &self.a_if, &a6), (&self.b, &self.b_if, &b6)] {
            let key = format!("net.ipv6.conf.{ifname}.disable_ipv6=0");
            self.exec(ns, "sysctl", &["-qw", &key]);
            let cidr = format!("{addr}/64");
            self.exec(
                ns,
                "ip",
                &["-6", "addr", "add", &cidr, "dev", ifname, "nodad"],
            );
        }
        let a_mac = self.mac(&self.a, &self.a_if);
        let b_mac = self.mac(&self.b, &self.b_if);
        self.exec(
            &self.a,
            "ip",
            &[
                "-6",
                "neigh",
                "replace",
                &b6,
                "lladdr",
                &b_mac,
                "nud",
                "permanent",
                "dev",
                &self.a_if,
            ],
        );
        self.exec(
            &self.b,
            "ip",
            &[
                "-6",
                "neigh",
                "replace",
                &a6,
                "lladdr",
                &a_mac,
                "nud",
                "permanent",
                "dev",
                &self.b_if,
            ],
        );
    }

    /// IPv6 address of end a (after [`VethPair::enable_ipv6`]).
    pub fn a6(&self) -> String {
        format!("fd00:231:{}::1", self.a_addr[2])
    }

    /// IPv6 address of end b (after [`VethPair::enable_ipv6`]).
    pub fn b6(&self) -> String {
        format!("fd00:231:{}::2", self.a_addr[2])
    }

    /// Turns off segmentation/receive offloads on both ends, so every packet the TC programs
    /// see is one wire packet and one line in a capture.
    pub fn disable_offloads(&self) {
        for (ns, ifname) in [(&self.a, &self.a_if), (&self.b, &self.b_if)] {
            self.exec(
                ns,
                "ethtool",
                &["-K", ifname, "tso", "off", "gso", "off", "gro", "off"],
            );
        }
    }

    /// A kernel interface statistic (`rx_packets`, `tx_bytes`, ...) read from sysfs in `ns`.
    pub fn stat(&self, ns: &str, ifname: &str, name: &str) -> u64 {
        let path = format!("/sys/class/net/{ifname}/statistics/{name}");
        self.exec(ns, "cat", &[&path]).trim().parse().unwrap()
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the peer.
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

pub fn dotted(addr: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", addr[0], addr[1], addr[2], addr[3])
}

/// Runs `body` on a thread that has entered network namespace `ns` (setns is per thread).
pub fn in_netns<T: Send + 'static>(ns: &str, body: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/run/netns").join(ns);
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        // SAFETY: a valid namespace fd; setns only affects this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        body()
    })
    .join()
    .expect("netns thread panicked")
}

/// The daemon running in a namespace, killed on drop if still alive.
pub struct Daemon {
    pub child: Child,
    pub ns: String,
    pub listen: SocketAddr,
}

impl Daemon {
    /// Starts the daemon in `ns` listening on 127.0.0.1:9435 there, and waits (at most 20 s,
    /// times [`slowdown`]) until `/-/ready` answers 200. Its maps are not pinned unless `args` name a
    /// `--datapath.pin-path`.
    pub fn start(ns: &str, args: &[&str]) -> Daemon {
        Daemon::start_wrapped(ns, &[], args)
    }

    /// Like [`Daemon::start`], with `wrapper` (e.g. a setpriv command line) in front.
    pub fn start_wrapped(ns: &str, wrapper: &[&str], args: &[&str]) -> Daemon {
        let listen: SocketAddr = "127.0.0.1:9435".parse().unwrap();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .args(wrapper)
            .args([DAEMON, "--web.listen-address", &listen.to_string()])
            .args(args)
            // Daemons of parallel tests must not share pinned maps (interface indexes repeat
            // across namespaces): no pinning unless the test asks for it.
            .args(
                (!args
                    .iter()
                    .any(|arg| arg.starts_with("--datapath.pin-path")))
                .then_some("--datapath.pin-path="),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = command.spawn().expect("starting the daemon");
        let mut daemon = Daemon {
            child,
            ns: ns.to_string(),
            listen,
        };
        let limit = Duration::from_secs(20) * slowdown();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok((200, _)) = daemon.get("/-/ready") {
                return daemon;
            }
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("daemon exited during start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready after {} s",
                limit.as_secs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET `path` from the daemon: (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http(&self.ns, self.listen, "GET", path)
    }

    /// GET the telemetry path and return the body, asserting 200.
    pub fn scrape(&self) -> String {
        let (status, body) = self.get("/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Sends `signal` and waits (at most 10 s, times [`slowdown`]) for the exit status.
    pub fn stop(&mut self, signal: i32) -> ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let limit = Duration::from_secs(10) * slowdown();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon still running {} s after signal {signal}",
                limit.as_secs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 request from inside `ns`: (status, body).
pub fn http(ns: &str, to: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
    in_netns(ns, move || {
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad response {response:?}")))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(head, body)| response_body(head, body))
            .unwrap_or_default();
        Ok((status, body))
    })
}

/// GET `path` from `to` inside `ns` with an optional Accept header: (status, content type,
/// body).
pub fn get(ns: &str, to: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let accept = accept
        .map(|accept| format!("Accept: {accept}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\n{accept}Connection: close\r\n\r\n");
    let response = in_netns(ns, move || {
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    });
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, response_body(head, body))
}

/// The body of an HTTP/1.1 response with head `head`, de-chunked if it was sent with
/// `Transfer-Encoding: chunked` (the telemetry path streams its body so; Prometheus sends its
/// larger API answers so).
pub fn response_body(head: &str, body: &str) -> String {
    let chunked = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding") && value.trim() == "chunked"
        })
    });
    if !chunked {
        return body.to_string();
    }
    let mut chunks = body;
    let mut whole = String::new();
    loop {
        let (size, rest) = chunks.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return whole;
        }
        whole.push_str(&rest[..size]);
        chunks = rest[size..].strip_prefix("\r\n").expect("chunk end");
    }
}

/// Value of the sample `name{labels}` in a scrape, where `labels` is the exact label text.
pub fn sample(scrape: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().expect("numeric sample"))
}

/// Flows the daemon holds in the kernel, wherever they are: the IPv4 LRU map plus the slot
/// table (every caller's flows are IPv4); `None` when the scrape lacks either sample.
pub fn flow_entries(scrape: &str) -> Option<f64> {
    let entries = |map: &str| {
        sample(
            scrape,
            "network_probe_datapath_map_entries",
            &format!("map=\"{map}\""),
        )
    };
    Some(entries("FLOWS4")? + entries("FLOW_SLOTS")?)
}

/// A tcpdump capture on an interface inside a namespace, read back as tcpdump's own decoding.
pub struct Capture {
    child: Child,
    file: std::path::PathBuf,
}

/// One packet of a capture, as tcpdump decoded it.
#[derive(Debug, Clone)]
pub struct CapturedPacket {
    /// The summary line(s) tcpdump printed for the packet (`-v`, joined).
    pub text: String,
    pub src: String,
    pub dst: String,
    /// TCP flags as printed, e.g. "S", "S.", "R.", "P.".
    pub flags: String,
    pub window: Option<u32>,
    pub wscale: Option<u8>,
    /// IPv4 DF bit.
    pub df: bool,
}

impl Capture {
    /// Starts `tcpdump -i ifname` in `ns` and waits until it is listening.
    pub fn start(ns: &str, ifname: &str) -> Capture {
        let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        let file = std::env::temp_dir().join(format!("np-cap-{}-{id}.pcap", std::process::id()));
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "--immediate-mode",
                "-i",
                ifname,
                "-s",
                "256",
                "-U",
                "-w",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcpdump");
        // tcpdump prints "listening on ..." once the socket is bound.
        let mut stderr = child.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            match stderr.read(&mut byte) {
                Ok(1) => seen.push(byte[0]),
                _ => panic!("tcpdump did not start: {}", String::from_utf8_lossy(&seen)),
            }
        }
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Capture { child, file }
    }

    /// Stops the capture and returns its packets (TCP and everything else).
    pub fn finish(mut self) -> Vec<CapturedPacket> {
        // Let the last packets reach the file, then stop tcpdump cleanly.
        thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let text = sh(
            "tcpdump",
            &["-tt", "-nn", "-v", "-r", self.file.to_str().unwrap()],
        );
        let _ = std::fs::remove_file(&self.file);
        parse_tcpdump(&text)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Splits `tcpdump -nn -v` output into packets (a packet starts with a timestamp line) and
/// picks out the fields the tests compare.
fn parse_tcpdump(text: &str) -> Vec<CapturedPacket> {
    let mut packets: Vec<String> = Vec::new();
    for line in text.lines() {
        let starts_packet = line.as_bytes().first().is_some_and(|b| b.is_ascii_digit());
        match packets.last_mut() {
            Some(last) if !starts_packet => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ => packets.push(line.to_string()),
        }
    }
    packets
        .into_iter()
        .filter_map(|text| {
            // "... IP (tos ..., flags [DF], proto TCP (6), length 60) 10.1.2.1.3333 > 10.1.2.2.80: Flags [S], ..."
            let flags_at = text.find(": Flags [")?;
            let head = &text[..flags_at];
            let (src_port, dst_port) = head.rsplit_once(" > ")?;
            let src = src_port.rsplit(' ').next()?.to_string();
            let dst = dst_port.to_string();
            let rest = &text[flags_at + ": Flags [".len()..];
            let flags = rest[..rest.find(']')?].to_string();
            let window = rest
                .split(", win ")
                .nth(1)
                .and_then(|w| w.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|w| w.parse().ok());
            let wscale = rest
                .split("wscale ")
                .nth(1)
                .and_then(|w| w.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|w| w.parse().ok());
            let df = head.contains("flags [DF]");
            Some(CapturedPacket {
                text: text.clone(),
                src,
                dst,
                flags,
                window,
                wscale,
                df,
            })
        })
        .collect()
}

/// A `nstat` counter (e.g. TcpRetransSegs) of namespace `ns`, absolute value.
pub fn nstat(ns: &str, counter: &str) -> u64 {
    let text = sh("ip", &["netns", "exec", ns, "nstat", "-az", counter]);
    text.lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(counter)).then(|| fields.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {counter} in nstat output {text:?}"))
}

/// Sends `count` datagrams of `payload` bytes from namespace `from_ns` to `to` (bound in
/// `to_ns`) and waits until every one has arrived.
pub fn send_datagrams(
    from_ns: &str,
    from: SocketAddr,
    to_ns: &str,
    to: SocketAddr,
    count: usize,
    payload: usize,
) {
    let receiver = in_netns(to_ns, move || UdpSocket::bind(to).expect("bind receiver"));
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    in_netns(from_ns, move || {
        let sender = UdpSocket::bind(from).expect("bind sender");
        for _ in 0..count {
            sender.send_to(&vec![0x5a; payload], to).expect("send");
        }
    });
    let mut buf = [0u8; 2048];
    for received in 0..count {
        let (len, _) = receiver
            .recv_from(&mut buf)
            .unwrap_or_else(|err| panic!("datagram {received} of {count} lost: {err}"));
        assert_eq!(len, payload);
    }
}

/// TC programs attached at `attach_type` of `ifname` in `ns`, as the kernel reports them: TCX
/// links (where the kernel has TCX) and then cls_bpf filters on the clsact qdisc (named by their
/// program), so a program attached both ways shows up twice. Empty when the interface does not
/// exist.
pub fn attached_programs(ns: &str, ifname: &str, attach_type: TcAttachType) -> Vec<String> {
    let name = ifname.to_string();
    let mut programs: Vec<String> = in_netns(ns, move || {
        SchedClassifier::query_tcx(&name, attach_type)
            .map(|(_, programs)| {
                programs
                    .iter()
                    .map(|p| p.name_as_str().unwrap_or("?").to_string())
                    .collect()
            })
            .unwrap_or_default()
    });
    programs.extend(cls_bpf_filters(ns, ifname, attach_type));
    programs
}

/// Program names of the cls_bpf filters at `attach_type` of `ifname`, from `tc -j filter show`.
pub fn cls_bpf_filters(ns: &str, ifname: &str, attach_type: TcAttachType) -> Vec<String> {
    let parent = match attach_type {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    };
    let output = Command::new("ip")
        .args([
            "netns", "exec", ns, "tc", "-j", "filter", "show", "dev", ifname, parent,
        ])
        .output()
        .expect("running tc");
    // No such device, or no clsact qdisc: nothing attached.
    if !output.status.success() || output.stdout.trim_ascii().is_empty() {
        return Vec::new();
    }
    let filters: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("tc -j prints a JSON list");
    filters
        .iter()
        .filter(|filter| filter["kind"] == "bpf")
        .filter_map(|filter| filter["options"]["prog"]["name"].as_str())
        .map(str::to_string)
        .collect()
}

/// A private bpffs instance mounted under /run for one test (unmounted, with everything pinned
/// in it, on drop), so nothing is pinned under the host's /sys/fs/bpf.
pub struct Bpffs {
    pub mount: PathBuf,
}

impl Bpffs {
    pub fn new() -> Bpffs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let mount = PathBuf::from(format!(
            "/run/network-probe-test-bpffs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&mount).unwrap();
        sh("mount", &["-t", "bpf", "bpf", mount.to_str().unwrap()]);
        Bpffs { mount }
    }

    /// The daemon's pin directory inside this instance.
    pub fn pin_path(&self) -> PathBuf {
        self.mount.join("network-probe")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

/// Runs `promtool check metrics` on `body`: (exit status success, what it printed on stdout and
/// stderr).
pub fn promtool_check_metrics(body: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}
