//! Fuzzes everything the iperf3 prober reads from a server: state bytes, JSON length headers,
//! results documents, SERVER_ERROR payloads, UDP handshake replies and datagram headers. Any
//! bytes must give a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use network_probe::probe::iperf3::protocol::{
    Results, ServerError, State, UdpReceiver, is_udp_connect_reply, json_len, parse_bitrate,
    read_udp_header,
};

fuzz_target!(|data: &[u8]| {
    if let Some(&first) = data.first() {
        if let Some(state) = State::from_byte(first) {
            assert_eq!(state.to_byte(), first);
        }
    }
    if let Some(header) = data.get(..4) {
        let _ = json_len(header.try_into().unwrap());
    }
    if let Ok(results) = Results::parse(data) {
        // What we parsed must survive our own encoder.
        let again = Results::parse(&results.to_json()).expect("re-parse");
        assert_eq!(again.streams.len(), results.streams.len());
    }
    if let Ok(error) = ServerError::parse(data) {
        let _ = error.describe();
    }
    let _ = is_udp_connect_reply(data);
    let mut receiver = UdpReceiver::default();
    for (index, chunk) in data.chunks(12).enumerate() {
        if let Some((sec, usec, packet)) = read_udp_header(chunk) {
            let sent = f64::from(sec) + f64::from(usec) * 1e-6;
            receiver.record(chunk.len(), u64::from(packet), sent, index as f64);
        }
    }
    assert!(receiver.lost <= receiver.packets);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_bitrate(text);
    }
});
