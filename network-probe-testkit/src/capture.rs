//! tcpdump captures of an interface inside a namespace, read back as tcpdump decodes them.

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
