//! What the restore from `--datapath.state-file` reports: a damaged file is kept aside as
//! `<file>.corrupt-<unix seconds>` with its bytes (and counted) before a save overwrites it, and
//! a file whose flow part does not fit this run (another `--flows.labels`) restores the
//! interfaces part only, which `network_probe_datapath_state_restored` (every part) and
//! `network_probe_datapath_state_part_restored{part}` say.
//!
//! Each test mounts its own bpffs (pinned maps) and keeps its state file next to it, as
//! tests/restart.rs does.

use std::{fs, path::Path};

use network_probe_testkit::{Bpffs, Daemon, VethPair, sample};

/// (`state_restored`, `part_restored{part="interfaces"}`, `part_restored{part="flows"}`,
/// `state_file_corrupt_total`) of a scrape.
fn restore_report(scrape: &str) -> (f64, f64, f64, f64) {
    let value = |name: &str, labels: &str| {
        sample(scrape, name, labels).unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{scrape}"))
    };
    (
        value("network_probe_datapath_state_restored", ""),
        value(
            "network_probe_datapath_state_part_restored",
            "part=\"interfaces\"",
        ),
        value(
            "network_probe_datapath_state_part_restored",
            "part=\"flows\"",
        ),
        value("network_probe_datapath_state_file_corrupt_total", ""),
    )
}

/// Files in `dir` whose name starts with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(prefix)
        })
        .collect();
    found.sort();
    found
}

#[test]
fn a_damaged_state_file_is_kept_aside_and_counted() {
    let pair = VethPair::new();
    let bpffs = Bpffs::new();
    let state_dir = bpffs.mount.with_extension("state");
    let state_file = state_dir.join("state.json");
    fs::create_dir_all(&state_dir).unwrap();
    let damaged = b"{\"format\":1,\"map_ids\":[[\"IFINDEX_SL".to_vec();
    fs::write(&state_file, &damaged).unwrap();
    let pin_arg = format!("--datapath.pin-path={}", bpffs.pin_path().display());
    let state_arg = format!("--datapath.state-file={}", state_file.display());

    let mut daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if, &pin_arg, &state_arg]);
    assert_eq!(restore_report(&daemon.scrape()), (0.0, 0.0, 0.0, 1.0));
    let aside = named(&state_dir, "state.json.corrupt-");
    assert_eq!(aside.len(), 1, "one copy kept aside: {aside:?}");
    let seconds: u64 = aside[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("state.json.corrupt-")
        .parse()
        .expect("named after a unix timestamp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now - 120 <= seconds && seconds <= now, "{seconds} vs {now}");
    assert_eq!(fs::read(&aside[0]).unwrap(), damaged, "the original bytes");

    // The clean stop writes a fresh file; the copy stays, and the next start restores all.
    assert_eq!(daemon.stop(libc::SIGTERM).code(), Some(0));
    let fresh = fs::read(&state_file).expect("a fresh state file");
    assert_ne!(fresh, damaged);
    let daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if, &pin_arg, &state_arg]);
    assert_eq!(restore_report(&daemon.scrape()), (1.0, 1.0, 1.0, 0.0));
    assert_eq!(named(&state_dir, "state.json.corrupt-"), aside);
    drop(daemon);
    let _ = fs::remove_dir_all(state_dir);
}

#[test]
fn a_flow_part_that_does_not_fit_is_reported_as_not_restored() {
    let pair = VethPair::new();
    let bpffs = Bpffs::new();
    let state_dir = bpffs.mount.with_extension("state");
    let state_file = state_dir.join("state.json");
    let pin_arg = format!("--datapath.pin-path={}", bpffs.pin_path().display());
    let state_arg = format!("--datapath.state-file={}", state_file.display());
    let args = ["--interface", &pair.a_if, &pin_arg, &state_arg];

    let mut first = Daemon::start(&pair.a, &args);
    assert_eq!(
        restore_report(&first.scrape()),
        (0.0, 0.0, 0.0, 0.0),
        "nothing to restore at the first start"
    );
    assert_eq!(first.stop(libc::SIGTERM).code(), Some(0));
    assert!(state_file.exists());

    // Same maps, other flow labels: the interfaces part fits, the flow part does not.
    let mut other_labels = args.to_vec();
    other_labels.extend(["--flows.labels", "interface,src,dst,dst_port"]);
    let mut second = Daemon::start(&pair.a, &other_labels);
    assert_eq!(restore_report(&second.scrape()), (0.0, 1.0, 0.0, 0.0));
    assert_eq!(second.stop(libc::SIGTERM).code(), Some(0));

    // Back to the labels the file now holds (the second run's): everything fits again.
    let third = Daemon::start(&pair.a, &other_labels);
    assert_eq!(restore_report(&third.scrape()), (1.0, 1.0, 1.0, 0.0));
    assert_eq!(
        named(&state_dir, "state.json.corrupt-"),
        Vec::<std::path::PathBuf>::new()
    );
    drop(third);
    let _ = fs::remove_dir_all(state_dir);
}
