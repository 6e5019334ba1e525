//! A fast TCP flow generator for the benchmarks that need many flows in the daemon's flow map
//! (`benches/overhead.rs`, `benches/soak.rs`): hand-built Ethernet/IPv4/TCP SYN frames sent from
//! namespace `b` of a [`VethPair`] out of `b_if` through an AF_PACKET socket, so they arrive at
//! `a_if`'s ingress (where the daemon's TC program counts them) at a few microseconds each, far
//! faster than real connection attempts.
//!
//! Every frame carries a TCP checksum that is deliberately wrong, so a's kernel drops each
//! segment after the TC program has counted it and answers none: no RST, no egress flow, no
//! packet leaving the namespaces.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use crate::netns::{VethPair, in_netns};

/// Internet checksum (RFC 1071) of `bytes`, by the daemon's own implementation (unit-tested
/// against kernel-made packets in probe/ping/packet.rs).
fn internet_checksum(bytes: &[u8]) -> u16 {
    network_probe::probe::ping::packet::checksum(&[bytes])
}

/// An Ethernet/IPv4/TCP SYN frame. The IPv4 header checksum is correct; the TCP checksum is
/// the correct one with its lowest bit flipped (a fixed wrong value such as 0 would be right by
/// chance for about one segment in 65536), so the receiving kernel drops every segment after our
/// TC ingress program has counted it, and answers none (no RST, hence no egress flows).
fn syn_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    src_port: u16,
    dst_port: u16,
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(54);
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64; // TTL
    ip[9] = 6; // TCP
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let checksum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&src_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes()); // sequence number
    tcp[12] = 5 << 4; // data offset: 20 bytes
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let pseudo_header = [&src[..], &dst[..], &[0, 6, 0, 20]].concat();
    let checksum = internet_checksum(&[&pseudo_header[..], &tcp[..]].concat()) ^ 1;
    tcp[16..18].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&tcp);
    frame
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|part| u8::from_str_radix(part, 16).expect("hex MAC byte"))
        .collect();
    bytes.try_into().expect("6-byte MAC")
}

/// An AF_PACKET socket in namespace `b` bound to `b_if`, sending SYN frames to `a_if`. The
/// socket belongs to namespace `b` whichever thread uses it, so it can be shared by threads
/// of any namespace.
pub struct FlowInjector {
    socket: OwnedFd,
    address: libc::sockaddr_ll,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    /// a's address: the destination of every frame.
    pub a_addr: [u8; 4],
    /// b's address: the default source of the frames.
    pub b_addr: [u8; 4],
}

// SAFETY: sockaddr_ll is plain data; the socket is used only through sendto, which is safe to
// call from several threads at once.
unsafe impl Send for FlowInjector {}
unsafe impl Sync for FlowInjector {}

impl FlowInjector {
    /// Opens the socket in namespace `b` of `pair`, bound to `b_if`.
    pub fn new(pair: &VethPair) -> FlowInjector {
        let dst_mac = parse_mac(&pair.mac(&pair.a, &pair.a_if));
        let src_mac = parse_mac(&pair.mac(&pair.b, &pair.b_if));
        let b_if = pair.b_if.clone();
        let (socket, address) = in_netns(&pair.b, move || {
            let name = std::ffi::CString::new(b_if.clone()).unwrap();
            // SAFETY: a valid NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert_ne!(ifindex, 0, "no interface {b_if} in namespace b");
            // Protocol 0: this socket only sends, it receives nothing.
            // SAFETY: plain socket creation.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
            // SAFETY: `fd` is a socket we own from here on.
            let socket = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_ll is plain data; zero is a valid start.
            let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_protocol = (libc::ETH_P_IP as u16).to_be();
            address.sll_ifindex = ifindex as i32;
            address.sll_halen = 6;
            address.sll_addr[..6].copy_from_slice(&dst_mac);
            // SAFETY: a valid sockaddr_ll of the given length.
            let rc = unsafe {
                libc::bind(
                    fd,
                    (&address as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "bind to {b_if}: {}", io::Error::last_os_error());
            (socket, address)
        });
        FlowInjector {
            socket,
            address,
            dst_mac,
            src_mac,
            a_addr: pair.a_addr,
            b_addr: pair.b_addr,
        }
    }

    /// Sends one SYN from `src`:`src_port` to a's address, port `dst_port`.
    pub fn syn(&self, src: [u8; 4], src_port: u16, dst_port: u16) -> io::Result<()> {
        let frame = syn_frame(
            self.dst_mac,
            self.src_mac,
            src,
            self.a_addr,
            src_port,
            dst_port,
        );
        // SAFETY: `frame` and `address` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&self.address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if sent as usize != frame.len() {
            return Err(io::Error::other(format!(
                "sent {sent} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }
}
