//! Scrape cost of the Jool collector against the CLI jool-exporter forks on every scrape
//! (`jool stats display --csv --all`), measured in the same qemu guest as tests/integration/jool.rs (a real
//! Jool 4.1.9 module exists only there). Prints a markdown section with the ratio.
//!
//! On the host this program boots the guest with itself as `/bin/guest`; inside, with
//! NETWORK_PROBE_JOOL_BENCH set, it measures and prints the figures between markers. Absolute
//! times are inflated by TCG emulation; the ratio is the figure to compare.
// Cargo gives this target every dependency of the package; it uses the library's API only.
#![allow(unused_crate_dependencies)]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use clap::Parser;
use network_probe::jool::{Flags, JoolCollector};
use network_probe_testkit::jool_vm as vm;
use prometheus_client::registry::Registry;

/// Set inside the guest.
const GUEST: &str = "NETWORK_PROBE_JOOL_BENCH";
/// Set for one child run of this program in the guest: read the statistics once, print them,
/// exit (our collector as a process, measured the way the CLI is).
const ONCE: &str = "NETWORK_PROBE_JOOL_BENCH_ONCE";
/// Scrapes of our collector timed.
const OUR_SCRAPES: u32 = 500;
/// Runs of the CLI timed.
const CLI_RUNS: u32 = 20;

#[derive(Parser)]
struct GuestCli {
    #[command(flatten)]
    jool: Flags,
}

/// A registry holding the Jool collector of the guest's instance.
fn registry() -> Registry {
    let cli = GuestCli::try_parse_from(["guest", "--jool.instance", "nat64:default"]).unwrap();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(JoolCollector::new(&cli.jool)));
    registry
}

/// Guest side: prints `ours_ns ours_process_ns cli_ns stats` per scrape.
fn measure() {
    let registry = registry();
    let first = network_probe::metrics::render(&registry).unwrap();
    assert!(
        first.contains("jool_up{instance=\"default\",type=\"nat64\"} 1"),
        "{first}"
    );
    let stats = first
        .lines()
        .filter(|l| {
            l.starts_with("jool_") && !l.starts_with("jool_up") && !l.starts_with("jool_failure")
        })
        .count();
    let started = Instant::now();
    for _ in 0..OUR_SCRAPES {
        std::hint::black_box(network_probe::metrics::render(&registry).unwrap());
    }
    let ours = started.elapsed() / OUR_SCRAPES;
    let started = Instant::now();
    for _ in 0..CLI_RUNS {
        let output = Command::new("/usr/bin/jool")
            .args(["stats", "display", "--csv", "--all"])
            .output()
            .unwrap();
        assert!(output.status.success());
        std::hint::black_box(output.stdout);
    }
    let cli = started.elapsed() / CLI_RUNS;
    // Ours the CLI's way: a process started for each read (this program with ONCE set: one
    // netlink round trip and the rendering, printed to a pipe), as many runs as the CLI's.
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    for _ in 0..CLI_RUNS {
        let output = Command::new(&exe).env(ONCE, "1").output().unwrap();
        assert!(output.status.success());
        std::hint::black_box(output.stdout);
    }
    let ours_process = started.elapsed() / CLI_RUNS;
    println!("@@BEGIN bench");
    println!(
        "{} {} {} {stats}",
        ours.as_nanos(),
        ours_process.as_nanos(),
        cli.as_nanos()
    );
    println!("@@END");
}

fn main() {
    if std::env::var_os(ONCE).is_some() {
        print!("{}", network_probe::metrics::render(&registry()).unwrap());
        return;
    }
    if std::env::var_os(GUEST).is_some() {
        measure();
        return;
    }
    let init = format!(
        "{}modprobe jool\njool instance add --netfilter --pool6 64:ff9b::/96\nping -c 2 -W 1 ::1 \
         > /dev/null\n{GUEST}=1 /bin/guest\n{}",
        vm::INIT_PRELUDE,
        vm::INIT_END
    );
    let guest = std::env::current_exe().unwrap();
    let boot = vm::boot(&init, &guest, Duration::from_secs(300));
    let Some(figures) = boot.section("bench") else {
        panic!("the guest printed no figures; console:\n{}", boot.console);
    };
    let figures: Vec<u128> = figures
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let (ours, ours_process, cli, stats) = (figures[0], figures[1], figures[2], figures[3]);
    println!("## Jool statistics: netlink collector vs `jool stats display`\n");
    println!(
        "Measured inside a qemu TCG guest (Debian 6.1 kernel, Jool 4.1.9, NAT64 instance \
         \"default\", {stats} statistics); emulation inflates both absolute figures alike. The \
         ratio compares like with like: both sides started as a process for every read ({CLI_RUNS} \
         runs each). The daemon does not start a process per scrape: its in-process figure is \
         what a scrape costs it, not a side of the ratio.\n"
    );
    println!("| per read | time |");
    println!("|---|---|");
    println!(
        "| `jool stats display --csv --all`, a process per read (jool-exporter's way) | {:.1} µs |",
        cli as f64 / 1e3
    );
    println!(
        "| our collector, a process per read (spawn, one netlink round trip, rendering) | {:.1} µs |",
        ours_process as f64 / 1e3
    );
    println!(
        "| ratio, both as processes (CLI / ours) | **{:.2}×** |",
        cli as f64 / ours_process.max(1) as f64
    );
    println!(
        "| our collector in the daemon: one netlink round trip + rendering, in process ({OUR_SCRAPES} scrapes) | {:.1} µs |",
        ours as f64 / 1e3
    );
    println!(
        "\nGuest boot and measurement took {:.1} s.",
        boot.wall.as_secs_f64()
    );
}
