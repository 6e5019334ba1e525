//! A fleet in miniature, with the real tools (Debian's `prometheus` package): three daemons,
//! each in its own namespace watching its own veth (hosts 1 and 2 in site `east`, host 3 in
//! `west`), scraped over a separate management link by a Prometheus in agent mode
//! (`--enable-feature=agent`), which remote-writes to a second Prometheus started with
//! `--web.enable-remote-write-receiver` and deploy/prometheus/fleet-rules.yml. Both Prometheus
//! servers run in a central namespace the test creates, on their own ports, configs and data
//! directories (never the system service).
//!
//! Shown: the central Prometheus holds every host's series (as many as the host serves), the
//! flow series of each host are within its budget (`(max-series + interfaces) x families`,
//! the default three families only), and the rule's per-site sum equals the sum of the hosts'
//! own interface counters, read from each daemon directly. The deploy/prometheus examples pass
//! `promtool check config` (the agent's with `--agent`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use network_probe_testkit::{VethPair, daemon_path, dotted, get, in_netns, sample, sh};
use serde_json::Value;

/// The hosts' sites, in host order.
const SITES: [&str; 3] = ["east", "east", "west"];
/// The series budget of each host.
const BUDGET: usize = 4;
/// Connection attempts per host (refused; each one a SYN out and a RST in, two label sets
/// with `dst_port` in the labels): more label sets than the budget.
const ATTEMPTS: u16 = 12;
const RECEIVER: &str = "127.0.0.1:9091";
const AGENT: &str = "127.0.0.1:9092";
const DEADLINE: Duration = Duration::from_secs(40);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
        .to_path_buf()
}

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A namespace of the test's own, deleted on drop.
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One host: its namespace pair (the daemon in `a`, watching `a_if`), its daemon, the address
/// the central namespace scrapes it at.
struct Host {
    pair: VethPair,
    _daemon: Process,
    management: IpAddr,
    site: &'static str,
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Waits until `GET path` at `to` in `ns` answers 200, or `child` exits, or 20 s pass.
fn wait_ready(ns: &str, to: SocketAddr, path: &str, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited during start-up: {status}");
        }
        let ns_owned = ns.to_string();
        let up = in_netns(&ns_owned, move || TcpStream::connect(to).is_ok());
        if up && get(ns, to, path, None).0 == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{what} not ready after 20 s");
        thread::sleep(Duration::from_millis(100));
    }
}

/// An instant query against the Prometheus at `to` in `ns`: (labels, value) per series.
fn query(ns: &str, to: SocketAddr, expr: &str) -> Vec<(Value, f64)> {
    let (status, _, body) = get(
        ns,
        to,
        &format!("/api/v1/query?query={}", percent_encode(expr)),
        None,
    );
    assert_eq!(status, 200, "{expr}: {body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    answer["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|series| {
            let value = series["value"][1].as_str().unwrap().parse().unwrap();
            (series["metric"].clone(), value)
        })
        .collect()
}

/// `query` as a map from the values of `label` to the values.
fn by(ns: &str, to: SocketAddr, expr: &str, label: &str) -> BTreeMap<String, f64> {
    query(ns, to, expr)
        .into_iter()
        .map(|(labels, value)| (labels[label].as_str().unwrap_or("").to_string(), value))
        .collect()
}

/// Polls until `check` returns `None` (all good), failing with its last complaint after
/// [`DEADLINE`].
fn eventually(what: &str, mut check: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let Some(complaint) = check() else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "{what}, after {} s: {complaint}",
            DEADLINE.as_secs()
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// The series Prometheus adds per target.
const SYNTHETIC: [&str; 5] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// Series served per metric name (sample lines of a scrape).
fn series_by_name(scrape: &str) -> BTreeMap<String, usize> {
    let mut names = BTreeMap::new();
    for line in scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or("").to_string();
        *names.entry(name).or_default() += 1;
    }
    names
}

#[test]
fn deploy_examples_pass_promtool() {
    let dir = root().join("deploy/prometheus");
    for (file, agent) in [
        ("agent.yml", true),
        ("central.yml", false),
        ("federation.yml", false),
    ] {
        let mut command = Command::new("promtool");
        command.args(["check", "config"]);
        if agent {
            command.arg("--agent");
        }
        let output = command.arg(file).current_dir(&dir).output().unwrap();
        assert!(
            output.status.success(),
            "{file}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output = Command::new("promtool")
        .args(["check", "rules", "fleet-rules.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn an_agent_remote_writes_every_hosts_series_and_the_site_rules_sum_them() {
    let tag = format!("{}", std::process::id() % 100_000);
    let central = Namespace(format!("npf-{tag}-c"));
    sh("ip", &["netns", "add", &central.0]);
    sh(
        "ip",
        &["netns", "exec", &central.0, "ip", "link", "set", "lo", "up"],
    );

    // The hosts: a VethPair each (the daemon in `a` watches `a_if`; b is the peer), and a
    // management veth from `a` to the central namespace that the agent scrapes over, so the
    // scrapes do not move the counters the test compares.
    let mut hosts = Vec::new();
    for (index, site) in SITES.iter().enumerate() {
        let pair = VethPair::new();
        let (host_if, central_if) = (format!("npm{tag}h{index}"), format!("npm{tag}c{index}"));
        let host_addr = [10, 232, index as u8, 1];
        let central_addr = [10, 232, index as u8, 2];
        sh(
            "ip",
            &[
                "link",
                "add",
                &host_if,
                "netns",
                &pair.a,
                "type",
                "veth",
                "peer",
                "name",
                &central_if,
                "netns",
                &central.0,
            ],
        );
        for (ns, ifname, addr) in [
            (&pair.a, &host_if, host_addr),
            (&central.0, &central_if, central_addr),
        ] {
            let cidr = format!("{}/30", dotted(addr));
            sh(
                "ip",
                &[
                    "netns", "exec", ns, "ip", "addr", "add", &cidr, "dev", ifname,
                ],
            );
            sh(
                "ip",
                &["netns", "exec", ns, "ip", "link", "set", ifname, "up"],
            );
        }
        let budget = BUDGET.to_string();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &pair.a, daemon_path()])
            .args([
                "--web.listen-address",
                ":9435",
                "--datapath.pin-path=",
                "--interface",
                &pair.a_if,
                "--flows.labels",
                "interface,src,dst,dst_port",
                "--flows.max-series",
                &budget,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the daemon");
        wait_ready(
            &pair.a,
            "127.0.0.1:9435".parse().unwrap(),
            "/-/ready",
            &mut child,
            "daemon",
        );
        hosts.push(Host {
            pair,
            _daemon: Process(child),
            management: dotted(host_addr).parse().unwrap(),
            site,
        });
    }

    // Traffic on each host's watched veth: refused connections to ports of its peer.
    for host in &hosts {
        let peer: IpAddr = dotted(host.pair.b_addr).parse().unwrap();
        in_netns(&host.pair.a, move || {
            for port in 6000..6000 + ATTEMPTS {
                let to = SocketAddr::new(peer, port);
                let refused = TcpStream::connect_timeout(&to, Duration::from_secs(2));
                assert!(refused.is_err(), "{to}: {refused:?}");
            }
        });
    }

    // The central receiver with the fleet's rules, then the agent.
    let scratch = Scratch(std::env::temp_dir().join(format!("np-fleet-{tag}")));
    std::fs::create_dir_all(&scratch.0).unwrap();
    let rules = root().join("deploy/prometheus/fleet-rules.yml");
    let receiver_config = scratch.0.join("central.yml");
    std::fs::write(
        &receiver_config,
        format!(
            "global:\n  evaluation_interval: 1s\nrule_files:\n  - {}\n",
            rules.display()
        ),
    )
    .unwrap();
    let mut targets = String::new();
    for site in ["east", "west"] {
        let list: Vec<String> = hosts
            .iter()
            .filter(|host| host.site == site)
            .map(|host| format!("'{}:9435'", host.management))
            .collect();
        targets.push_str(&format!(
            "      - targets: [{}]\n        labels:\n          site: {site}\n",
            list.join(", ")
        ));
    }
    let agent_config = scratch.0.join("agent.yml");
    std::fs::write(
        &agent_config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - \
             job_name: network-probe\n    static_configs:\n{targets}remote_write:\n  - url: \
             http://{RECEIVER}/api/v1/write\n    queue_config:\n      batch_send_deadline: \
             200ms\n"
        ),
    )
    .unwrap();
    let check = Command::new("promtool")
        .args(["check", "config", "--agent"])
        .arg(&agent_config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let mut receiver = Command::new("ip")
        .args(["netns", "exec", &central.0, "prometheus"])
        .arg(format!("--config.file={}", receiver_config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            scratch.0.join("central").display()
        ))
        .arg(format!("--web.listen-address={RECEIVER}"))
        .arg("--web.enable-remote-write-receiver")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting prometheus (apt-get install prometheus)");
    let receiver_at: SocketAddr = RECEIVER.parse().unwrap();
    wait_ready(
        &central.0,
        receiver_at,
        "/-/ready",
        &mut receiver,
        "receiver",
    );
    let _receiver = Process(receiver);
    let mut agent = Command::new("ip")
        .args(["netns", "exec", &central.0, "prometheus"])
        .arg("--enable-feature=agent")
        .arg(format!("--config.file={}", agent_config.display()))
        .arg(format!(
            "--storage.agent.path={}",
            scratch.0.join("agent").display()
        ))
        .arg(format!("--web.listen-address={AGENT}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting prometheus in agent mode");
    wait_ready(
        &central.0,
        AGENT.parse().unwrap(),
        "/-/ready",
        &mut agent,
        "agent",
    );
    let _agent = Process(agent);

    // Every host's series in the central store: as many as the host serves (plus the five
    // series Prometheus adds per target: up, scrape_duration_seconds, ...).
    let local = "127.0.0.1:9435".parse().unwrap();
    let scrape_of = |host: &Host| get(&host.pair.a, local, "/metrics", None).2;
    eventually("the central store holds every host's series", || {
        for host in &hosts {
            let instance = format!("{}:9435", host.management);
            let stored = by(
                &central.0,
                receiver_at,
                &format!("count by (__name__) ({{instance=\"{instance}\"}})"),
                "__name__",
            );
            let served = series_by_name(&scrape_of(host));
            // Names of both, without Prometheus' own per-target series and the recording
            // rules' results (`site:...`; a topk keeps the instance label).
            let names: std::collections::BTreeSet<&String> = served
                .keys()
                .chain(stored.keys())
                .filter(|name| !SYNTHETIC.contains(&name.as_str()) && !name.contains(':'))
                .collect();
            let differ: Vec<String> = names
                .into_iter()
                .filter(|name| served.get(*name).copied() != stored.get(*name).map(|v| *v as usize))
                .map(|name| {
                    format!(
                        "{name}: served {:?}, stored {:?}",
                        served.get(name),
                        stored.get(name)
                    )
                })
                .collect();
            if !differ.is_empty() {
                return Some(format!("{instance}: {differ:?}"));
            }
        }
        None
    });

    // Within the budget: flow rows per host = budget + one other row (one interface), in the
    // default three families only.
    let families = by(
        &central.0,
        receiver_at,
        "count by (__name__) ({__name__=~\"network_probe_flow_.*_total\", \
         __name__!~\"network_probe_flow_series.*\"})",
        "__name__",
    );
    let names: Vec<&String> = families.keys().collect();
    assert_eq!(
        names,
        [
            "network_probe_flow_bytes_total",
            "network_probe_flow_packets_total",
            "network_probe_flow_retransmits_total"
        ],
        "{families:?}"
    );
    let per_host = by(
        &central.0,
        receiver_at,
        "count by (instance) ({__name__=~\"network_probe_flow_(packets|bytes|retransmits)_total\"})",
        "instance",
    );
    assert_eq!(per_host.len(), hosts.len(), "{per_host:?}");
    for (instance, count) in &per_host {
        eprintln!("{instance}: {count} flow series");
        assert_eq!(*count as usize, 3 * (BUDGET + 1), "{instance}");
    }
    let total = by(
        &central.0,
        receiver_at,
        "count by (instance) ({job=\"network-probe\"})",
        "instance",
    );
    eprintln!("series per host in the central store: {total:?}");

    // The rule's per-site sum equals the sum of the hosts' own interface counters.
    let mut expected: BTreeMap<(String, String), f64> = BTreeMap::new();
    for host in &hosts {
        let scrape = scrape_of(host);
        for direction in ["ingress", "egress"] {
            let labels = format!("interface=\"{}\",direction=\"{direction}\"", host.pair.a_if);
            let value = sample(&scrape, "network_probe_interface_packets_total", &labels)
                .unwrap_or_else(|| panic!("{labels} in {scrape}"));
            *expected
                .entry((host.site.to_string(), direction.to_string()))
                .or_default() += value;
        }
    }
    // Two SYN-RST exchanges per attempt at least: the counters moved.
    assert!(
        expected[&("east".to_string(), "egress".to_string())] >= 2.0 * f64::from(ATTEMPTS),
        "{expected:?}"
    );
    eventually("the per-site rule equals the hosts' counters", || {
        let rule: BTreeMap<(String, String), f64> = query(
            &central.0,
            receiver_at,
            "site:network_probe_interface_packets:sum",
        )
        .into_iter()
        .map(|(labels, value)| {
            (
                (
                    labels["site"].as_str().unwrap().to_string(),
                    labels["direction"].as_str().unwrap().to_string(),
                ),
                value,
            )
        })
        .collect();
        (rule != expected).then(|| format!("rule {rule:?}, hosts {expected:?}"))
    });
}
