//! tcpdump captures of an interface inside a namespace, read back as tcpdump decodes them, or
//! as the raw pcap records (each frame's capture time, length on the wire and first bytes).

use std::{
    io::Read as _,
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
    thread,
    time::Duration,
};

use crate::{command::sh, netns::NEXT_ID};

/// A tcpdump capture on an interface inside a namespace, read back as tcpdump's own decoding.
pub struct Capture {
    child: Child,
    file: std::path::PathBuf,
    /// Whether tcpdump is woken for every packet (else per ring block).
    immediate: bool,
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
        Capture::start_with(ns, ifname, true, "")
    }

    /// Like [`Capture::start`], keeping only the packets the pcap `filter` expression matches,
    /// with a 32 MiB buffer: under a burst of other traffic the kernel drops what does not
    /// match before it reaches tcpdump's buffer, so the packets that do are not lost.
    pub fn start_filtered(ns: &str, ifname: &str, filter: &str) -> Capture {
        Capture::start_with(ns, ifname, true, filter)
    }

    /// As [`Capture::start`], but without `--immediate-mode`: the kernel hands tcpdump whole
    /// ring blocks (when one fills or its timeout passes) instead of waking it for every
    /// packet. The tap then does less on a packet's way out (a copy into the ring, no wake-up
    /// of another process), which is what a test timing the path after the tap wants.
    pub fn start_quiet(ns: &str, ifname: &str) -> Capture {
        Capture::start_with(ns, ifname, false, "")
    }

    fn start_with(ns: &str, ifname: &str, immediate: bool, filter: &str) -> Capture {
        let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        let file = std::env::temp_dir().join(format!("np-cap-{}-{id}.pcap", std::process::id()));
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                // Nanosecond stamps in the file: the kernel stamps in nanoseconds, and the
                // handshake RTT comparison is tighter than a microsecond per stamp allows.
                "--time-stamp-precision=nano",
                "-i",
                ifname,
                "-s",
                "256",
                "-U",
            ])
            .args(immediate.then_some("--immediate-mode"))
            .args(if filter.is_empty() {
                &[][..]
            } else {
                &["-B", "32768"][..]
            })
            .arg("-w")
            .arg(&file)
            .args(filter.split_whitespace())
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
        Capture {
            child,
            file,
            immediate,
        }
    }

    /// Stops the capture and returns its packets (TCP and everything else).
    pub fn finish(mut self) -> Vec<CapturedPacket> {
        self.stop();
        let text = sh(
            "tcpdump",
            &["-tt", "-nn", "-v", "-r", self.file.to_str().unwrap()],
        );
        let _ = std::fs::remove_file(&self.file);
        parse_tcpdump(&text)
    }
}

impl Capture {
    /// Lets the last packets reach the file, then stops tcpdump cleanly. Without immediate mode
    /// the kernel hands over a ring block only when it fills or its timeout (tcpdump's 1 s
    /// read timeout) passes, and tcpdump does not read the block in progress when it stops:
    /// so wait out the timeout.
    fn stop(&mut self) {
        let settle = if self.immediate { 300 } else { 1_300 };
        thread::sleep(Duration::from_millis(settle));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }

    /// Stops the capture and returns every frame as the pcap file recorded it, in capture
    /// order: read from the file's records, not from tcpdump's decoding.
    pub fn finish_frames(mut self) -> Vec<Frame> {
        self.stop();
        let bytes = std::fs::read(&self.file).expect("reading the capture file");
        let _ = std::fs::remove_file(&self.file);
        parse_pcap(&bytes)
    }
}

/// One frame of a capture, from its pcap record.
#[derive(Debug, Clone)]
pub struct Frame {
    /// When the kernel stamped the frame (CLOCK_REALTIME), nanoseconds since the Unix epoch
    /// (the file holds microseconds).
    pub time_ns: u128,
    /// The frame's length at the tap (link-layer header included), `orig_len` of the record.
    pub len: u32,
    /// Its first bytes (at most the capture's snap length, 256), from the Ethernet header on.
    pub data: Vec<u8>,
}

/// The IP header fields of a frame (Ethernet, no VLAN tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    pub src: std::net::IpAddr,
    pub dst: std::net::IpAddr,
    /// IP packet length, header included: IPv4 total length, IPv6 payload length + 40.
    pub len: u32,
    /// IPv4 protocol / IPv6 next header (6: TCP, 17: UDP).
    pub protocol: u8,
    /// Source and destination ports for TCP and UDP.
    pub ports: Option<(u16, u16)>,
}

impl Frame {
    /// The frame's IP header, or `None` when it carries neither IPv4 nor IPv6.
    pub fn ip(&self) -> Option<IpHeader> {
        let be16 = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes(
                self.data.get(at..at + 2)?.try_into().ok()?,
            ))
        };
        let (src, dst, len, protocol, l4): (std::net::IpAddr, std::net::IpAddr, u32, u8, usize) =
            match be16(12)? {
                0x0800 => {
                    let header = self.data.get(14..34)?;
                    let octets = |at: usize| -> [u8; 4] { header[at..at + 4].try_into().unwrap() };
                    (
                        octets(12).into(),
                        octets(16).into(),
                        u32::from(be16(16)?),
                        header[9],
                        14 + usize::from(header[0] & 0x0f) * 4,
                    )
                }
                0x86dd => {
                    let header = self.data.get(14..54)?;
                    let octets =
                        |at: usize| -> [u8; 16] { header[at..at + 16].try_into().unwrap() };
                    (
                        octets(8).into(),
                        octets(24).into(),
                        u32::from(be16(18)?) + 40,
                        header[6],
                        54,
                    )
                }
                _ => return None,
            };
        let ports = match protocol {
            6 | 17 => Some((be16(l4)?, be16(l4 + 2)?)),
            _ => None,
        };
        Some(IpHeader {
            src,
            dst,
            len,
            protocol,
            ports,
        })
    }
}

/// Reads a classic pcap file (as `tcpdump -w` writes it: host byte order, microsecond or
/// nanosecond stamps, Ethernet link type).
fn parse_pcap(bytes: &[u8]) -> Vec<Frame> {
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
    assert!(bytes.len() >= 24, "a pcap file has a 24-byte header");
    let nanos_per_unit: u128 = match u32_at(0) {
        0xa1b2_c3d4 => 1_000,
        0xa1b2_3c4d => 1,
        magic => panic!("not a pcap file in host byte order (magic {magic:#x})"),
    };
    assert_eq!(u32_at(20), 1, "link type Ethernet");
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let (seconds, fraction, captured, len) =
            (u32_at(at), u32_at(at + 4), u32_at(at + 8), u32_at(at + 12));
        let data = bytes[at + 16..at + 16 + captured as usize].to_vec();
        frames.push(Frame {
            time_ns: u128::from(seconds) * 1_000_000_000 + u128::from(fraction) * nanos_per_unit,
            len,
            data,
        });
        at += 16 + captured as usize;
    }
    assert_eq!(at, bytes.len(), "the capture file ends inside a record");
    frames
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
