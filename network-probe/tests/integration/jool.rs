//! Jool statistics against a real Jool 4.1.9 kernel module: one qemu boot (Debian's stable
//! kernel, jool-dkms modules, busybox; see network_probe_testkit::jool_vm) runs every scenario in order and
//! prints its results on the serial console; the host compares them.
//!
//! The program inside the guest is this test executable itself: [`guest_scrape`] (ignored on
//! the host) builds a registry with only the Jool collector, as the daemon does, reads it once
//! and writes the OpenMetrics text to a file `/init` prints. Every statistic we export is
//! compared with `jool stats display --csv --all` / `jool_siit … stats display --csv --all` run
//! in the same guest right after our read, with no traffic in between.

use std::{collections::BTreeMap, time::Duration};

use clap::Parser;
use network_probe::jool::{
    Flags, JoolCollector,
    codec::{Layout, StatKind},
};
use network_probe_testkit::{isolation, jool_vm as vm};
use prometheus_client::registry::Registry;

/// Set in the guest: the collector flags, space-separated.
const GUEST_FLAGS: &str = "NETWORK_PROBE_JOOL_FLAGS";
/// Set in the guest: where to write the metrics text.
const GUEST_OUT: &str = "NETWORK_PROBE_JOOL_OUT";

#[derive(Parser)]
struct GuestCli {
    #[command(flatten)]
    jool: Flags,
}

/// Guest side: one scrape of the Jool collector, written to `$NETWORK_PROBE_JOOL_OUT`.
#[test]
#[ignore = "runs inside the qemu guest that real_jool_in_qemu boots"]
fn guest_scrape() {
    let flags = std::env::var(GUEST_FLAGS)
        .expect("guest_scrape only runs inside the Jool test guest (NETWORK_PROBE_JOOL_FLAGS)");
    let out = std::env::var(GUEST_OUT).expect("NETWORK_PROBE_JOOL_OUT");
    let cli = GuestCli::try_parse_from(std::iter::once("guest").chain(flags.split_whitespace()))
        .expect("guest flags");
    let mut registry = Registry::default();
    registry.register_collector(Box::new(JoolCollector::new(&cli.jool)));
    let text = network_probe::metrics::render(&registry).expect("rendering");
    std::fs::write(out, text).expect("writing the metrics");
}

/// One `/init` step that scrapes with `flags` as `user` into section `name`.
fn scrape(name: &str, flags: &str, user: Option<&str>) -> String {
    let command = format!(
        "{GUEST_FLAGS}='{flags}' {GUEST_OUT}=/tmp/{name}.prom /bin/guest --exact jool::guest_scrape \
         --ignored -q > /tmp/{name}.log 2>&1"
    );
    let command = match user {
        Some(user) => format!("su -s /bin/sh {user} -c \"{command}\""),
        None => command,
    };
    format!(
        "{command}; rc=$?; echo \"@@BEGIN {name}.rc\"; echo $rc; echo @@END\n\
         echo \"@@BEGIN {name}.log\"; cat /tmp/{name}.log; echo @@END\n\
         echo \"@@BEGIN {name}\"; cat /tmp/{name}.prom; echo @@END\n"
    )
}

/// The guest's whole script.
fn init_script() -> String {
    let both = "--jool.instance nat64:default --jool.instance siit:siit1";
    let mut init = String::from(vm::INIT_PRELUDE);
    init.push_str("chmod 1777 /tmp\n");
    init.push_str(&scrape("module_missing", both, None));
    init.push_str("modprobe jool && modprobe jool_siit || echo @@MODPROBE-FAILED\n");
    init.push_str(&scrape("instance_missing", both, None));
    // Only the first netfilter instance of a namespace sees loopback traffic, so each type
    // gets its traffic and its comparison alone, then both exist for the later steps.
    let traffic = "ping -c 3 -W 1 ::1 > /dev/null\n\
                   ping -c 2 -W 1 127.0.0.1 > /dev/null\n\
                   ping -c 2 -W 1 -I 2001:db8::9 64:ff9b::c000:201 > /dev/null\n";
    init.push_str(
        "ip addr add 192.0.2.9/24 dev lo; ip -6 addr add 2001:db8::9/64 dev lo\n\
         ip -6 route add 64:ff9b::/96 dev lo\n\
         jool instance add --netfilter --pool6 64:ff9b::/96\n",
    );
    init.push_str(traffic);
    init.push_str(&scrape(
        "stats_nat64",
        "--jool.instance nat64:default",
        None,
    ));
    init.push_str("echo '@@BEGIN cli-nat64'; jool stats display --csv --all; echo @@END\n");
    init.push_str(
        "jool instance remove\n\
         jool_siit instance add siit1 --netfilter --pool6 64:ff9b::/96\n",
    );
    init.push_str(traffic);
    init.push_str(&scrape("stats_siit", "--jool.instance siit:siit1", None));
    init.push_str(
        "echo '@@BEGIN cli-siit'; jool_siit -i siit1 stats display --csv --all; echo @@END\n\
         jool instance add --netfilter --pool6 64:ff9b::/96\n",
    );
    init.push_str(&scrape("unprivileged", both, Some("nobody")));
    init.push_str(&scrape(
        "unprivileged_listing",
        "--jool.all-instances",
        Some("nobody"),
    ));
    init.push_str(&scrape("all_instances", "--jool.all-instances", None));
    init.push_str("jool instance remove && rmmod jool || echo @@RMMOD-FAILED\n");
    init.push_str(&scrape("nat64_unloaded", both, None));
    init.push_str(vm::INIT_END);
    init
}

/// Samples of an OpenMetrics text: "name{labels}" -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// `JSTAT_NAME,value` rows of the CLI's CSV.
fn cli_rows(csv: &str) -> BTreeMap<String, u64> {
    csv.lines()
        .filter_map(|line| line.split_once(','))
        .filter(|(name, _)| name.starts_with("JSTAT"))
        .map(|(name, value)| (name.to_string(), value.trim().parse().expect("a count")))
        .collect()
}

fn section(boot: &vm::Boot, name: &str) -> String {
    boot.section(name).unwrap_or_else(|| {
        panic!(
            "the guest printed no section {name:?}; console:\n{}",
            boot.console
        )
    })
}

/// The step's metrics, after checking that the guest program succeeded.
fn scraped(boot: &vm::Boot, name: &str) -> BTreeMap<String, f64> {
    let rc = section(boot, &format!("{name}.rc"));
    assert_eq!(
        rc.trim(),
        "0",
        "guest scrape {name} failed:\n{}",
        section(boot, &format!("{name}.log"))
    );
    samples(&section(boot, name))
}

fn up(samples: &BTreeMap<String, f64>, instance: &str, kind: &str) -> Option<f64> {
    samples
        .get(&format!(
            "jool_up{{instance=\"{instance}\",type=\"{kind}\"}}"
        ))
        .copied()
}

/// The one failure reason at 1 for an instance (and that the others are 0).
fn failure(samples: &BTreeMap<String, f64>, instance: &str, kind: &str) -> String {
    let prefix = format!("jool_failure{{instance=\"{instance}\",type=\"{kind}\",reason=\"");
    let rows: Vec<(&str, f64)> = samples
        .iter()
        .filter_map(|(series, value)| {
            Some((series.strip_prefix(&prefix)?.strip_suffix("\"}")?, *value))
        })
        .collect();
    assert_eq!(
        rows.len(),
        5,
        "five reasons for {instance}/{kind}: {rows:?}"
    );
    let set: Vec<&str> = rows
        .iter()
        .filter(|(_, v)| *v == 1.0)
        .map(|(r, _)| *r)
        .collect();
    assert_eq!(
        set.len(),
        1,
        "exactly one reason for {instance}/{kind}: {rows:?}"
    );
    assert!(rows.iter().all(|(_, v)| *v == 0.0 || *v == 1.0));
    set[0].to_string()
}

/// Compares every statistic we exported for one instance with the CLI's CSV.
fn compare_with_cli(
    ours: &BTreeMap<String, f64>,
    cli: &BTreeMap<String, u64>,
    instance: &str,
    kind: &str,
) {
    let layout = Layout::from_last_id(69).expect("the 4.1.9 layout");
    let labels = format!("{{instance=\"{instance}\",type=\"{kind}\"}}");
    let exported: BTreeMap<&str, f64> = ours
        .iter()
        .filter(|(series, _)| series.ends_with(&labels))
        .map(|(series, value)| (&series[..series.len() - labels.len()], *value))
        .filter(|(name, _)| *name != "jool_up")
        .collect();
    assert!(!cli.is_empty(), "the CLI printed no statistics");
    let mut checked = 0;
    for (jool_name, value) in cli {
        let def = (1..=69)
            .filter_map(|id| layout.stat(id))
            .find(|def| def.jool_name == jool_name)
            .unwrap_or_else(|| panic!("the CLI printed {jool_name}, which our table lacks"));
        let metric = def.metric_name();
        let ours = exported
            .get(metric.as_str())
            .unwrap_or_else(|| panic!("we exported no {metric} for {instance}/{kind}"));
        assert_eq!(
            *ours, *value as f64,
            "{metric} ({jool_name}) of {instance}/{kind}"
        );
        assert_eq!(
            metric.ends_with("_total"),
            def.kind == StatKind::Counter,
            "{metric}"
        );
        checked += 1;
    }
    assert_eq!(
        exported.len(),
        checked,
        "we exported statistics the CLI does not show: {exported:?}"
    );
}

#[test]
fn real_jool_in_qemu() {
    // The TCG guest keeps both cores busy for minutes under a 240 s limit: it runs with no
    // other test beside it (see network_probe_testkit::isolation).
    let _alone = isolation::exclusive();
    let guest = std::env::current_exe().unwrap();
    let boot = vm::boot(&init_script(), &guest, Duration::from_secs(240));
    eprintln!("jool guest boot took {:.1} s", boot.wall.as_secs_f64());
    let boot = ConsoleOnFailure(boot);
    let boot = &boot.0;
    assert!(
        boot.console.contains("@@DONE"),
        "the guest did not finish; console:\n{}",
        boot.console
    );
    assert!(
        !boot.console.contains("@@MODPROBE-FAILED"),
        "{}",
        boot.console
    );
    assert!(!boot.console.contains("@@RMMOD-FAILED"), "{}", boot.console);

    // Before modprobe: the family does not exist.
    let before = scraped(boot, "module_missing");
    for (instance, kind) in [("default", "nat64"), ("siit1", "siit")] {
        assert_eq!(up(&before, instance, kind), Some(0.0));
        assert_eq!(failure(&before, instance, kind), "module_missing");
    }
    // Modules loaded, no instances yet.
    let empty = scraped(boot, "instance_missing");
    for (instance, kind) in [("default", "nat64"), ("siit1", "siit")] {
        assert_eq!(up(&empty, instance, kind), Some(0.0));
        assert_eq!(failure(&empty, instance, kind), "instance_missing");
    }

    // Every value against the CLI, each type after its own traffic.
    let nat64 = scraped(boot, "stats_nat64");
    let cli_nat64 = cli_rows(&section(boot, "cli-nat64"));
    assert_eq!(up(&nat64, "default", "nat64"), Some(1.0));
    assert_eq!(failure_or_none(&nat64, "default", "nat64"), "none");
    compare_with_cli(&nat64, &cli_nat64, "default", "nat64");
    let siit = scraped(boot, "stats_siit");
    let cli_siit = cli_rows(&section(boot, "cli-siit"));
    assert_eq!(up(&siit, "siit1", "siit"), Some(1.0));
    assert_eq!(failure_or_none(&siit, "siit1", "siit"), "none");
    compare_with_cli(&siit, &cli_siit, "siit1", "siit");
    // The pings reached both translators: the comparisons are not between zeros.
    for cli in [&cli_nat64, &cli_siit] {
        assert!(cli["JSTAT_RECEIVED6"] >= 5, "{cli:?}");
        assert!(cli["JSTAT_RECEIVED4"] >= 2, "{cli:?}");
    }
    assert!(cli_nat64["JSTAT_POOL6_MISMATCH"] >= 3, "{cli_nat64:?}");
    assert!(cli_siit["JSTAT64_SRC"] >= 2, "{cli_siit:?}");

    // Statistics need no capability since Jool 4.1.5.
    let unprivileged = scraped(boot, "unprivileged");
    assert_eq!(up(&unprivileged, "default", "nat64"), Some(1.0));
    assert_eq!(up(&unprivileged, "siit1", "siit"), Some(1.0));
    assert!(
        unprivileged["jool_received6_total{instance=\"siit1\",type=\"siit\"}"]
            >= cli_siit["JSTAT_RECEIVED6"] as f64
    );
    // Listing does.
    let listing = scraped(boot, "unprivileged_listing");
    for kind in ["nat64", "siit"] {
        assert_eq!(up(&listing, "", kind), Some(0.0), "{listing:?}");
        assert_eq!(failure(&listing, "", kind), "permission_denied");
    }

    // As root, listing finds both instances.
    let all = scraped(boot, "all_instances");
    assert_eq!(up(&all, "default", "nat64"), Some(1.0), "{all:?}");
    assert_eq!(up(&all, "siit1", "siit"), Some(1.0), "{all:?}");
    assert_eq!(up(&all, "", "nat64"), None, "{all:?}");

    // NAT64 module gone, SIIT still read.
    let unloaded = scraped(boot, "nat64_unloaded");
    assert_eq!(up(&unloaded, "default", "nat64"), Some(0.0));
    assert_eq!(failure(&unloaded, "default", "nat64"), "module_missing");
    assert_eq!(up(&unloaded, "siit1", "siit"), Some(1.0));
}

/// "none" when no reason is set (the instance is up), else the reason.
fn failure_or_none(samples: &BTreeMap<String, f64>, instance: &str, kind: &str) -> String {
    let prefix = format!("jool_failure{{instance=\"{instance}\",type=\"{kind}\",reason=\"");
    let set: Vec<&String> = samples
        .iter()
        .filter(|(series, value)| series.starts_with(&prefix) && **value == 1.0)
        .map(|(series, _)| series)
        .collect();
    if set.is_empty() {
        "none".into()
    } else {
        set[0].clone()
    }
}

/// Prints the guest's console when the test fails, for diagnosis.
struct ConsoleOnFailure(vm::Boot);

impl Drop for ConsoleOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- guest console ---\n{}\n--- end ---", self.0.console);
        }
    }
}
