//! Fuzzes the `--config.file` parser and validator (`config::parse`): any text must give a
//! configuration or an error naming what is wrong, never a panic; a parsed configuration must
//! render (`/config`) to a file that parses again with the same modules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use network_probe::{cli::Cli, config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // iperf3 modules check the key file they name by reading it; keep the fuzzer off the file
    // system.
    if text.contains("public_key_file") {
        return;
    }
    match config::parse(text) {
        Err(err) => assert!(!err.to_string().is_empty()),
        Ok(parsed) => {
            let flags = Cli::try_parse_args_from(["network-probe"]).expect("no flags");
            let shown = parsed.render(&flags, &parsed);
            let again = config::parse(&shown)
                .unwrap_or_else(|err| panic!("/config does not parse again: {err}\n{shown}"));
            assert_eq!(
                again.modules.keys().collect::<Vec<_>>(),
                parsed.modules.keys().collect::<Vec<_>>()
            );
            for (name, module) in &parsed.modules {
                assert_eq!(module.options, again.modules[name].options, "{name}");
            }
        }
    }
});
