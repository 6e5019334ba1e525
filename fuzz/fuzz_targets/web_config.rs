//! Fuzzes the `--web.config.file` parser (YAML of the exporter-toolkit format): any text must
//! give a configuration or a one-line error, never a panic; relative paths are resolved under
//! the configuration's directory.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use network_probe::config::web as web_config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = Path::new("/etc/network-probe");
    match web_config::parse(text, base) {
        Ok(config) => {
            if let Some(tls) = config.tls {
                assert!(tls.cert_file.is_absolute(), "{tls:?}");
                assert!(tls.key_file.is_absolute(), "{tls:?}");
                assert!(tls.min_version <= tls.max_version, "{tls:?}");
            }
            for (name, value) in &config.headers {
                assert!(
                    !value.bytes().any(|b| b.is_ascii_control()),
                    "{name}: {value:?}"
                );
            }
        }
        Err(err) => assert!(!err.to_string().contains('\n'), "{err}"),
    }
});
