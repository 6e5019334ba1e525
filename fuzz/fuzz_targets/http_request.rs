//! Fuzzes what the HTTP server reads from request headers before any prober runs: the
//! `Authorization: Basic` decoder, the `Accept` negotiation and the
//! `X-Prometheus-Scrape-Timeout-Seconds` deadline. Lines of the input are the three header
//! values. Any value must give an answer, never a panic; credentials survive an encode/decode
//! round trip; a bad timeout is a BadRequest naming the value; a deadline never exceeds the
//! module's timeout.
#![no_main]

use std::time::{Duration, Instant};

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use network_probe::{
    web::{basic_credentials, wants_openmetrics},
    probe,
};

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(3, |&byte| byte == b'\n');
    let authorization = lines.next().unwrap_or_default();
    let accept = lines.next().unwrap_or_default();
    let timeout = lines.next().unwrap_or_default();

    if let Some((user, password)) = basic_credentials(authorization) {
        assert!(!user.contains(':'), "{user:?}");
        // What we decoded encodes back to credentials that decode the same.
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        assert_eq!(
            basic_credentials(format!("Basic {encoded}").as_bytes()),
            Some((user, password))
        );
    }

    let accept = std::str::from_utf8(accept).ok();
    let _ = wants_openmetrics(accept);

    if let Ok(header) = std::str::from_utf8(timeout) {
        let now = Instant::now();
        let module_timeout = Duration::from_secs(30);
        match probe::deadline(now, Some(header), module_timeout) {
            Ok(deadline) => {
                assert!(deadline > now);
                assert!(deadline - now <= module_timeout);
            }
            Err(err) => assert!(err.0.contains(&format!("{header:?}")), "{err}"),
        }
    }
});
