//! Reading the daemon's exposition: samples of a scrape, and `promtool check metrics`.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

/// Value of the sample `name{labels}` in a scrape, where `labels` is the exact label text.
pub fn sample(scrape: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().expect("numeric sample"))
}

/// Flows the daemon holds in the kernel, wherever they are: the IPv4 LRU map plus the slot
/// table (every caller's flows are IPv4); `None` when the scrape lacks either sample.
pub fn flow_entries(scrape: &str) -> Option<f64> {
    let entries = |map: &str| {
        sample(
            scrape,
            "network_probe_datapath_map_entries",
            &format!("map=\"{map}\""),
        )
    };
    Some(entries("FLOWS4")? + entries("FLOW_SLOTS")?)
}

/// Runs `promtool check metrics` on `body`: (exit status success, what it printed on stdout and
/// stderr).
pub fn promtool_check_metrics(body: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}
