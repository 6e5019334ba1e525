//! Fuzzes the control-message parser of the ping prober (SCM_TIMESTAMPING, sock_extended_err):
//! any buffer must parse to some (possibly empty) result without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use network_probe::probe::ping::timestamps;

fuzz_target!(|data: &[u8]| {
    let parsed = timestamps::parse_control(data);
    let _ = parsed.error.and_then(|error| error.tx_stamp_key());
    let _ = timestamps::round_trip(&parsed, &parsed);
});
