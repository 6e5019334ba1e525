//! Fuzzes the `/probe` query string as the probers read it: the percent-decoding parser, the
//! typed accessors and each prober's parameter reader (tftp, iperf3). Any bytes must give a
//! Query or a BadRequest; typed accessors' errors name the parameter; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use network_probe::probe::{Query, iperf3, tftp};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(query) = Query::parse(text) else {
        return;
    };
    let _ = query.get("target");
    if let Err(err) = query.flag("debug", false) {
        assert!(err.0.contains("\"debug\""), "{err}");
    }
    if let Err(err) = query.parse_or("port", 0u16, "a port") {
        assert!(err.0.contains("\"port\""), "{err}");
    }
    let _ = tftp::Params::from_query(&query);
    // iperf3 reads the key file a query names; keep the fuzzer off the file system.
    if query.all("public_key_file").next().is_none() {
        let _ = iperf3::Config::from_query(&query);
    }
});
