//! Fuzzes the ping prober's packet parsers (ICMP echo replies with and without an IPv4 header,
//! TCP segments from raw sockets): any bytes must give a value or `None`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use network_probe::probe::ping::packet;

fuzz_target!(|data: &[u8]| {
    for (v6, with_header) in [(false, true), (false, false), (true, false)] {
        let _ = packet::parse_echo_reply(v6, with_header, data);
    }
    for with_header in [true, false] {
        if let Some(segment) = packet::parse_tcp_segment(with_header, data) {
            let _ = segment.syn_reply();
        }
    }
    let _ = packet::checksum(&[data]);
});
