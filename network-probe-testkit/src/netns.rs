//! Network namespaces with a veth pair between them, running code inside a namespace, and
//! sending traffic across the pair.
//!
//! Every address used lives inside namespaces these fixtures create, and they are deleted on
//! drop. Tests need root (`cargo xtask test` checks).

use std::{
    fs::File,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use crate::{command::sh, isolation};

/// Numbers the pairs (and captures) of this process, so their names never repeat.
pub(crate) static NEXT_ID: AtomicU32 = AtomicU32::new(0);

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
    /// Keeps tests that need the machine to themselves from running meanwhile.
    _isolation: isolation::Shared,
}

// `new` mounts / creates kernel objects: not a `Default` value.
#[expect(clippy::new_without_default)]
impl VethPair {
    pub fn new() -> Self {
        let isolation = isolation::shared();
        let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}-{id}", std::process::id() % 100_000);
        let pair = VethPair {
            a: format!("np-{tag}-a"),
            b: format!("np-{tag}-b"),
            a_if: format!("npa{tag}"),
            b_if: format!("npb{tag}"),
            a_addr: [10, 231, id as u8, 1],
            b_addr: [10, 231, id as u8, 2],
            _isolation: isolation,
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

    /// Makes b answer for every address of `prefix` (a `local` route on its loopback) and
    /// routes them from a to b: many probe targets behind one veth pair.
    pub fn b_answers_for(&self, prefix: &str) {
        self.exec(
            &self.b,
            "ip",
            &["route", "add", "local", prefix, "dev", "lo"],
        );
        self.exec(
            &self.a,
            "ip",
            &["route", "add", prefix, "via", &dotted(self.b_addr)],
        );
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

    /// Turns off segmentation/receive offloads on both ends, so every packet a capture records
    /// is one wire packet. TCP still hands TC egress GSO super-packets (the kernel allows
    /// software GSO for TCP whatever the device's flags) that are segmented after it; the
    /// datapath counts their segments, but sees their length whole (`gso_max_segs 1` on the
    /// link makes TCP send one segment per packet).
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
