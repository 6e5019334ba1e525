//! Fuzzes the control-message parser of the ping prober (SCM_TIMESTAMPING, sock_extended_err):
//! any buffer must parse to some (possibly empty) result without panicking, and stamps written
//! with our own `write_cmsg` must read back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use network_probe::probe::ping::timestamps::{self, SCM_TIMESTAMPING};

fuzz_target!(|data: &[u8]| {
    let parsed = timestamps::parse_control(data);
    let _ = parsed.error.and_then(|error| error.tx_stamp_key());
    if let Some((rtt, _)) = timestamps::round_trip(&parsed, &parsed) {
        assert!(rtt.is_zero());
    }

    // Round trip: the first 48 bytes as three timespecs (seconds, nanoseconds) in one
    // SCM_TIMESTAMPING message; slot 0 is the software stamp, slot 2 the hardware stamp.
    let Some(payload) = data.get(..48) else {
        return;
    };
    let mut buffer = [0u8; timestamps::cmsg_space(48)];
    timestamps::write_cmsg(&mut buffer, libc::SOL_SOCKET, SCM_TIMESTAMPING, payload);
    let again = timestamps::parse_control(&buffer);
    let stamp = |slot: usize| {
        let field = |at: usize| i64::from_ne_bytes(payload[at..at + 8].try_into().unwrap());
        let (seconds, nanos) = (field(slot * 16), field(slot * 16 + 8));
        ((seconds, nanos) != (0, 0) && seconds >= 0 && (0..1_000_000_000).contains(&nanos))
            .then(|| std::time::Duration::new(seconds as u64, nanos as u32))
    };
    assert_eq!(again.software, stamp(0));
    assert_eq!(again.hardware, stamp(2));
    assert_eq!(again.error, None);
});
