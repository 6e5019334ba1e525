//! The classic BPF program attached (`SO_ATTACH_FILTER`) to the raw TCP socket of the SYN
//! prober. A raw TCP socket is handed a copy of every TCP segment the host receives, whatever
//! its port, checksum or connection: without a filter, a busy server or a flood (SYN flood, a
//! bulk transfer to any local port) is copied to the daemon segment by segment and parsed in
//! user space only to be thrown away. The program keeps just the segments a SYN probe can be
//! answered with, SYN-ACK (SYN and ACK set) and RST, addressed to the one source port the
//! prober sends from ([`super::tcp_syn`] holds it reserved); the kernel drops every other one
//! before it is queued. The driver still checks each segment fully (port, ACK flag, the
//! acknowledgement number); this is a superset of what it accepts.
//!
//! The program is data built by a pure function: no bytes are parsed here. It is checked by
//! the unit tests below (a tiny interpreter of the instructions it uses) and, attached to a
//! real socket, by `tests/integration/hostile_ping.rs`.

use libc::sock_filter;

/// TCP flags in byte 13 of the header.
const TCP_SYN: u32 = 0x02;
const TCP_RST: u32 = 0x04;
const TCP_ACK: u32 = 0x10;

/// Return value that keeps the whole segment.
const ACCEPT: u32 = u32::MAX;
/// Return value that drops it.
const DROP: u32 = 0;

fn statement(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The program for a raw TCP socket of IPv6 (`v6`) or IPv4 that passes only SYN-ACK and RST
/// segments to `port`. The filter sees what `recvmsg` returns: on an IPv4 raw socket the IP
/// header (of variable length: the program reads its IHL) and then the segment, on an IPv6 one
/// the segment alone. A segment too short for a load is dropped by the kernel.
pub fn tcp_replies(v6: bool, port: u16) -> Vec<sock_filter> {
    use libc::{
        BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_IMM, BPF_IND, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K,
        BPF_LD, BPF_LDX, BPF_MSH, BPF_RET, BPF_W,
    };
    let header = if v6 {
        // X = 0: the segment starts the packet.
        statement(BPF_LDX | BPF_W | BPF_IMM, 0)
    } else {
        // X = 4 * (byte 0 & 0xf): the IPv4 header length.
        statement(BPF_LDX | BPF_B | BPF_MSH, 0)
    };
    vec![
        /* 0 */ header,
        /* 1 */ statement(BPF_LD | BPF_H | BPF_IND, 2), // destination port
        /* 2 */ jump(BPF_JMP | BPF_JEQ | BPF_K, u32::from(port), 0, 5), // else 8
        /* 3 */ statement(BPF_LD | BPF_B | BPF_IND, 13), // flags
        /* 4 */ jump(BPF_JMP | BPF_JSET | BPF_K, TCP_RST, 2, 0), // RST: 7
        /* 5 */ statement(BPF_ALU | BPF_AND | BPF_K, TCP_SYN | TCP_ACK),
        /* 6 */ jump(BPF_JMP | BPF_JEQ | BPF_K, TCP_SYN | TCP_ACK, 0, 1), // else 8
        /* 7 */ statement(BPF_RET | BPF_K, ACCEPT),
        /* 8 */ statement(BPF_RET | BPF_K, DROP),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ping::packet::{self, Syn};

    /// Runs `program` on `packet` the way the kernel does for the instructions the program
    /// uses (loads out of bounds end it with 0, jumps are relative to the next instruction).
    fn run(program: &[sock_filter], packet: &[u8]) -> u32 {
        use libc::{
            BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_IMM, BPF_IND, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K,
            BPF_LD, BPF_LDX, BPF_MSH, BPF_RET, BPF_W,
        };
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        loop {
            let instruction = program[pc];
            pc += 1;
            let code = u32::from(instruction.code);
            let k = instruction.k;
            let load = |at: u32, size: usize| -> Option<u32> {
                let at = at as usize;
                let bytes = packet.get(at..at + size)?;
                Some(
                    bytes
                        .iter()
                        .fold(0, |value, byte| value << 8 | u32::from(*byte)),
                )
            };
            match code {
                c if c == BPF_LDX | BPF_W | BPF_IMM => x = k,
                c if c == BPF_LDX | BPF_B | BPF_MSH => match load(k, 1) {
                    Some(byte) => x = 4 * (byte & 0xf),
                    None => return 0,
                },
                c if c == BPF_LD | BPF_H | BPF_IND => match load(x + k, 2) {
                    Some(value) => a = value,
                    None => return 0,
                },
                c if c == BPF_LD | BPF_B | BPF_IND => match load(x + k, 1) {
                    Some(value) => a = value,
                    None => return 0,
                },
                c if c == BPF_ALU | BPF_AND | BPF_K => a &= k,
                c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                    pc += usize::from(if a == k {
                        instruction.jt
                    } else {
                        instruction.jf
                    });
                }
                c if c == BPF_JMP | BPF_JSET | BPF_K => {
                    pc += usize::from(if a & k != 0 {
                        instruction.jt
                    } else {
                        instruction.jf
                    });
                }
                c if c == BPF_RET | BPF_K => return k,
                other => panic!("instruction {other:#x} not interpreted"),
            }
        }
    }

    /// A segment from `src_port` to `dst_port` with `flags`, as the socket of `v6` shows it:
    /// behind an IPv4 header with `options` bytes of options, or alone.
    fn segment(v6: bool, options: usize, src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
        let (src, dst) = if v6 {
            ("fd00::2".parse().unwrap(), "fd00::1".parse().unwrap())
        } else {
            ("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap())
        };
        let mut tcp = packet::build_syn(&Syn {
            src,
            dst,
            src_port,
            dst_port,
            isn: 7,
        })
        .to_vec();
        tcp[13] = flags;
        if v6 {
            return tcp;
        }
        let header_len = 20 + options;
        let mut ip = vec![0u8; header_len];
        ip[0] = 0x40 | (header_len / 4) as u8;
        ip[9] = 6;
        ip.extend_from_slice(&tcp);
        ip
    }

    const OUR_PORT: u16 = 40_123;

    #[test]
    fn passes_syn_acks_and_rsts_to_our_port_only() {
        for v6 in [false, true] {
            let program = tcp_replies(v6, OUR_PORT);
            for options in if v6 { vec![0] } else { vec![0, 4, 40] } {
                let verdict = |dst_port, flags| {
                    run(&program, &segment(v6, options, 443, dst_port, flags)) == ACCEPT
                };
                let case = format!("IPv{} with {options} option bytes", if v6 { 6 } else { 4 });
                // What a probe is answered with.
                assert!(verdict(OUR_PORT, 0x12), "SYN-ACK, {case}");
                assert!(verdict(OUR_PORT, 0x14), "RST-ACK, {case}");
                assert!(verdict(OUR_PORT, 0x04), "RST, {case}");
                // Everything else to our port.
                for flags in [0x02, 0x10, 0x18, 0x11, 0x00, 0x01, 0x08] {
                    assert!(!verdict(OUR_PORT, flags), "flags {flags:#x}, {case}");
                }
                // Replies to other ports, the same port in the wrong field included.
                for port in [OUR_PORT - 1, OUR_PORT + 1, 443, 0, u16::MAX] {
                    assert!(!verdict(port, 0x12), "SYN-ACK to {port}, {case}");
                    assert!(!verdict(port, 0x14), "RST to {port}, {case}");
                }
                assert!(
                    run(&program, &segment(v6, options, OUR_PORT, 443, 0x12)) == DROP,
                    "from our port, {case}"
                );
            }
        }
    }

    #[test]
    fn the_ipv4_header_length_is_read_not_assumed() {
        // Read as if the header had no options, a 24-byte header puts the "port" at the
        // segment's sequence number bytes; our port there must not pass.
        let mut packet = segment(false, 4, 443, 80, 0x12);
        packet[24 + 2..24 + 4].copy_from_slice(&80u16.to_be_bytes());
        packet[20 + 2..20 + 4].copy_from_slice(&OUR_PORT.to_be_bytes());
        packet[20 + 13] = 0x12;
        assert_eq!(run(&tcp_replies(false, OUR_PORT), &packet), DROP);
        // The IPv6 program on an IPv4 packet reads the IP header as TCP: no pass.
        let ours = segment(false, 0, 443, OUR_PORT, 0x12);
        assert_eq!(run(&tcp_replies(true, OUR_PORT), &ours), DROP);
    }

    #[test]
    fn truncated_segments_are_dropped() {
        for v6 in [false, true] {
            let program = tcp_replies(v6, OUR_PORT);
            let full = segment(v6, 0, 443, OUR_PORT, 0x12);
            assert_eq!(run(&program, &full), ACCEPT);
            let flags_at = if v6 { 13 } else { 33 };
            for len in [0, 1, 3, flags_at] {
                assert_eq!(run(&program, &full[..len]), DROP, "v6 {v6}: {len} bytes");
            }
        }
    }
}
