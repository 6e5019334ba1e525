//! The operator artefacts under deploy/, checked with the tools that consume them:
//! - deploy/prometheus/alerts.yml: `promtool check rules`, and `promtool test rules` on
//!   alerts.test.yml (every alert shown to fire on synthetic series and stay silent otherwise);
//! - deploy/grafana/network-probe.json: parsed as JSON; every panel query is a valid PromQL
//!   expression (`promtool check rules` on the queries as recording rules, Grafana's variables
//!   substituted) and uses the Prometheus datasource variable;
//! - deploy/kubernetes/*.yaml: parsed with PyYAML (Debian's python3-yaml; no kubectl cluster
//!   here), their security settings checked against the systemd unit's capabilities, and the
//!   DaemonSet's command line run: the daemon started with its args as uid 0 holding only the
//!   DaemonSet's capabilities, its readiness and liveness paths answering 200.
//!
//! Every metric name the alerts and the dashboard use must appear in README.md's metric tables
//! (so a renamed metric breaks this test, not the operator's dashboard).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use network_probe_testkit::{Bpffs, VethPair, daemon_path, http};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

/// Runs a tool and returns (success, stdout + stderr).
fn tool(program: &str, args: &[&str], dir: &Path) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|err| panic!("starting {program}: {err}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Every YAML document of a file, as JSON (via PyYAML's safe loader).
fn yaml_documents(relative: &str) -> Vec<Value> {
    let path = root().join(relative);
    let (ok, text) = tool(
        "/usr/bin/python3",
        &[
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            path.to_str().unwrap(),
        ],
        &root(),
    );
    assert!(ok, "PyYAML cannot parse {relative}: {text}");
    let Value::Array(documents) = serde_json::from_str(&text).expect("JSON from python") else {
        panic!("not a list: {text}")
    };
    documents
}

/// Metric names in backticks in the rows of README.md's tables (`name` or `name{labels}`).
fn readme_metric_names() -> BTreeSet<String> {
    let readme = read("README.md");
    let mut names = BTreeSet::new();
    for line in readme.lines().filter(|line| line.starts_with('|')) {
        for (index, quoted) in line.split('`').enumerate() {
            if index % 2 == 0 {
                continue;
            }
            let name = quoted.split('{').next().unwrap_or_default();
            if name.starts_with(|c: char| c.is_ascii_lowercase())
                && name.contains('_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// Prefixes of our metric families; other identifiers in PromQL (functions, labels, `up`) are
/// not ours to check.
const OUR_PREFIXES: &[&str] = &[
    "network_probe_",
    "icmp_",
    "tcp_probe_",
    "tcp_active_",
    "tcp_packets_",
    "tftp_",
    "iperf3_",
    "jool_",
];

/// Our metric names used in a PromQL expression (string literals skipped).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut unquoted = String::new();
    let mut in_string = false;
    for c in expr.chars() {
        if c == '"' {
            in_string = !in_string;
            unquoted.push(' ');
        } else if !in_string {
            unquoted.push(c);
        }
    }
    for token in unquoted.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if OUR_PREFIXES.iter().any(|prefix| token.starts_with(prefix)) {
            names.insert(token.to_string());
        }
    }
    names
}

/// Names not documented in README: histogram series (`_bucket`, `_sum`, `_count`) count as
/// their family; `tcp_probe_X` counts if `icmp_probe_X` is documented (README: "Every `icmp_`
/// metric has a `tcp_` twin").
fn undocumented(used: &BTreeSet<String>, readme: &BTreeSet<String>) -> Vec<String> {
    let documented = |name: &str| {
        readme.contains(name)
            || name
                .strip_prefix("tcp_probe_")
                .is_some_and(|rest| readme.contains(&format!("icmp_probe_{rest}")))
    };
    used.iter()
        .filter(|name| {
            !documented(name)
                && !["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix).is_some_and(documented))
        })
        .cloned()
        .collect()
}

#[test]
fn readme_metric_tables_are_found() {
    // The name check below is only as good as this list: spot-check it.
    let names = readme_metric_names();
    for name in [
        "network_probe_interface_tcp_retransmits_total",
        "network_probe_flow_bytes_total",
        "icmp_probe_rtt_seconds",
        "tftp_probe_success",
        "iperf3_received_bytes_per_second",
        "jool_up",
        "jool_received6_total",
    ] {
        assert!(names.contains(name), "{name} not found in README tables");
    }
    assert!(!names.contains("interface"), "labels are not metric names");
    let used = metric_names(
        r#"rate(icmp_probe_rtt_seconds_bucket{ip="tcp_probe_x"}[5m]) + tcp_probe_loss_ratio + network_probe_nonexistent_total"#,
    );
    assert_eq!(
        used.iter().map(String::as_str).collect::<Vec<_>>(),
        [
            "icmp_probe_rtt_seconds_bucket",
            "network_probe_nonexistent_total",
            "tcp_probe_loss_ratio"
        ]
    );
    assert_eq!(
        undocumented(&used, &names),
        ["network_probe_nonexistent_total"]
    );
}

#[test]
fn alert_rules_pass_promtool_and_fire_as_described() {
    let dir = root().join("deploy/prometheus");
    let (ok, text) = tool("promtool", &["check", "rules", "alerts.yml"], &dir);
    assert!(ok, "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
    let (ok, text) = tool("promtool", &["test", "rules", "alerts.test.yml"], &dir);
    assert!(ok, "{text}");

    let documents = yaml_documents("deploy/prometheus/alerts.yml");
    let mut alerts = BTreeSet::new();
    let mut used = BTreeSet::new();
    for group in documents[0]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            alerts.insert(rule["alert"].as_str().expect("alerting rules").to_string());
            used.extend(metric_names(rule["expr"].as_str().expect("expr")));
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{rule} has no summary"
            );
        }
    }
    assert_eq!(
        undocumented(&used, &readme_metric_names()),
        Vec::<String>::new(),
        "alerts.yml uses metrics README.md does not list"
    );
    // Every alert has a test case in which it fires.
    let tests = yaml_documents("deploy/prometheus/alerts.test.yml");
    let fired: BTreeSet<String> = tests[0]["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|test| test["alert_rule_test"].as_array().expect("alert_rule_test"))
        .filter(|case| case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .map(|case| case["alertname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(fired, alerts, "alerts without a firing test case");
    // The brief's situations are all covered.
    for metric in [
        "network_probe_datapath_programs_attached",
        "network_probe_flows_evicted_total",
        "network_probe_interface_tcp_retransmits_total",
        "network_probe_drops_total",
        "network_probe_flow_connection_attempts_total",
        "icmp_probe_loss_ratio",
        "tftp_probe_success",
        "iperf3_up",
        "jool_up",
    ] {
        assert!(used.contains(metric), "no alert on {metric}");
    }
}

/// The `map` label values an expression selects (`map="X"` or `map=~"X|Y"`), each of which
/// must be a map the daemon reports on.
fn unknown_maps(expr: &str) -> Vec<String> {
    use network_probe_common::{
        DEVICE_STATS_MAP, FLOW_SLOTS_MAP, FLOWS4_MAP, FLOWS6_MAP, IFINDEX_SLOTS_MAP,
    };
    let known = [
        FLOWS4_MAP,
        FLOWS6_MAP,
        FLOW_SLOTS_MAP,
        DEVICE_STATS_MAP,
        IFINDEX_SLOTS_MAP,
    ];
    let mut unknown = Vec::new();
    for part in expr.split("map=").skip(1) {
        let part = part.trim_start_matches('~');
        let Some(quoted) = part
            .strip_prefix('"')
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        for name in quoted.split('|') {
            if !known.contains(&name) {
                unknown.push(name.to_string());
            }
        }
    }
    unknown
}

#[test]
fn map_selectors_are_checked_against_the_daemons_maps() {
    assert_eq!(
        unknown_maps(r#"a{map=~"FLOWS4|FLOWS6"} / b{map="FLOWS"}"#),
        ["FLOWS"]
    );
    assert_eq!(unknown_maps(r#"a{map="FLOW_SLOTS"}"#), Vec::<String>::new());
    for (path, text) in [
        ("alerts.yml", read("deploy/prometheus/alerts.yml")),
        (
            "network-probe.json",
            read("deploy/grafana/network-probe.json").replace("\\\"", "\""),
        ),
    ] {
        assert_eq!(
            unknown_maps(&text),
            Vec::<String>::new(),
            "{path} selects maps the daemon does not report"
        );
    }
}

/// Every `expr` of every panel (rows' nested panels included) with its panel.
fn dashboard_queries(dashboard: &Value) -> Vec<(Value, String)> {
    fn walk(panels: &Value, out: &mut Vec<(Value, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("targets have an expr");
                out.push((panel.clone(), expr.to_string()));
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

#[test]
fn grafana_dashboard_is_valid_and_uses_documented_metrics() {
    let text = read("deploy/grafana/network-probe.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus datasource variable"
    );
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut ids = BTreeSet::new();
    let mut all_panels = Vec::new();
    fn collect(panels: &Value, out: &mut Vec<Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel.clone());
            collect(&panel["panels"], out);
        }
    }
    collect(&dashboard["panels"], &mut all_panels);
    for panel in &all_panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "duplicate id in {panel}"
        );
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
            for target in panel["targets"].as_array().expect("targets") {
                assert_eq!(target["datasource"]["uid"], "${datasource}");
            }
        }
    }

    let mut used = BTreeSet::new();
    for (_, expr) in &queries {
        used.extend(metric_names(expr));
    }
    assert_eq!(
        undocumented(&used, &readme_metric_names()),
        Vec::<String>::new(),
        "the dashboard uses metrics README.md does not list"
    );
    for metric in [
        "network_probe_interface_tcp_retransmits_total",
        "network_probe_interface_tcp_rst_total",
        "network_probe_interface_tcp_zero_window_total",
        "network_probe_flow_bytes_total",
        "network_probe_drops_total",
        "network_probe_flow_connection_attempts_total",
        "network_probe_tcp_connection_attempts_total",
        "icmp_probe_rtt_seconds_bucket",
        "icmp_probe_packets_sent_total",
        "tftp_probe_success",
        "tftp_probe_duration_seconds",
        "tftp_probe_download_speed_bytes_per_second",
        "iperf3_received_bytes_per_second",
        "iperf3_retransmits",
        "jool_up",
    ] {
        assert!(used.contains(metric), "no panel uses {metric}");
    }

    // PromQL validity: each query as a recording rule, Grafana's variables replaced by what
    // Grafana would send.
    let scratch = std::env::temp_dir().join(format!("network-probe-dash-{}", std::process::id()));
    fs::create_dir_all(&scratch).unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, (_, expr)) in queries.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "6h")
            .replace("$instance", ".*");
        assert!(!expr.contains('$'), "unknown variable in {expr}");
        let expr = serde_json::to_string(&expr).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query{index}\n        expr: {expr}\n"
        ));
    }
    fs::write(scratch.join("dashboard.yml"), &rules).unwrap();
    let (ok, text) = tool("promtool", &["check", "rules", "dashboard.yml"], &scratch);
    let _ = fs::remove_dir_all(&scratch);
    assert!(ok, "a dashboard query is not valid PromQL: {text}\n{rules}");
}

/// The systemd unit's `AmbientCapabilities`, without the `CAP_` prefix.
fn unit_capabilities() -> BTreeSet<String> {
    read("systemd/network-probe.service")
        .lines()
        .find_map(|line| line.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities")
        .split_whitespace()
        .map(|cap| cap.strip_prefix("CAP_").expect("CAP_ prefix").to_string())
        .collect()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kubernetes_manifests_parse_and_their_settings_run() {
    let documents = yaml_documents("deploy/kubernetes/daemonset.yaml");
    let daemonset = documents
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    assert_eq!(daemonset["apiVersion"], "apps/v1");
    let template = &daemonset["spec"]["template"];
    let pod = &template["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(
        daemonset["spec"]["selector"]["matchLabels"],
        template["metadata"]["labels"]
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let security = &container["securityContext"];
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added: BTreeSet<String> = security["capabilities"]["add"]
        .as_array()
        .expect("added capabilities")
        .iter()
        .map(|cap| cap.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        added,
        unit_capabilities(),
        "the DaemonSet and the unit disagree"
    );
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["privileged"], false);

    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|arg| arg.as_str().unwrap().to_string())
        .collect();
    let port = container["ports"][0]["containerPort"]
        .as_u64()
        .expect("a port");
    assert!(
        args.contains(&format!("--web.listen-address=:{port}")),
        "{args:?}"
    );
    // The host's bpffs and state directory: counters survive pod restarts.
    let mounts: Vec<(&str, &str)> = container["volumeMounts"]
        .as_array()
        .expect("volume mounts")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    let host_path = |name: &str| {
        template["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .map(str::to_string)
    };
    for path in ["/sys/fs/bpf", "/var/lib/network-probe"] {
        let (name, _) = mounts
            .iter()
            .find(|(_, mount)| *mount == path)
            .unwrap_or_else(|| panic!("{path} is not mounted: {mounts:?}"));
        assert_eq!(host_path(name).as_deref(), Some(path));
    }
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let port_name = container["ports"][0]["name"].as_str().unwrap();
    let readiness = container["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap();
    let liveness = container["livenessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap();
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], port_name);

    let monitors = yaml_documents("deploy/kubernetes/podmonitor.yaml");
    let monitor = &monitors[0];
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "PodMonitor");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        template["metadata"]["labels"]
    );
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"][0],
        daemonset["metadata"]["namespace"]
    );
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], port_name);
    assert_eq!(endpoint["path"], "/metrics");

    // The container's process as the kernel would see it: uid 0, bounding set = the added
    // capabilities, no_new_privs (allowPrivilegeEscalation: false), the DaemonSet's args. The
    // test namespace has no default route, so the interface is named.
    let pair = VethPair::new();
    // A private bpffs stands in for the host's /sys/fs/bpf volume.
    let bpffs = Bpffs::new();
    let pin_path = format!("--datapath.pin-path={}", bpffs.pin_path().display());
    let caps: String = added
        .iter()
        .map(|cap| format!(",+{}", cap.to_ascii_lowercase()))
        .collect();
    let child = Command::new("ip")
        .args(["netns", "exec", &pair.a, "setpriv"])
        .args([
            &format!("--bounding-set=-all{caps}"),
            &format!("--inh-caps=-all{caps}"),
            "--no-new-privs",
            daemon_path(),
        ])
        .args(&args)
        .args(["--interface", &pair.a_if, &pin_path])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the daemon");
    let mut daemon = Killed(child);
    let listen = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = http(&pair.a, listen, "GET", readiness) {
            break;
        }
        if let Some(status) = daemon.0.try_wait().unwrap() {
            panic!("the daemon exited with the DaemonSet's settings: {status}");
        }
        assert!(Instant::now() < deadline, "{readiness} not 200 after 20 s");
        thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = http(&pair.a, listen, "GET", liveness).expect("liveness");
    assert_eq!(status, 200, "{liveness}");
    let status_file = fs::read_to_string(format!("/proc/{}/status", daemon.0.id())).unwrap();
    let bounding = status_file
        .lines()
        .find_map(|line| line.strip_prefix("CapBnd:"))
        .unwrap()
        .trim();
    // CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_PERFMON 38, CAP_BPF 39.
    let expected: u64 = (1 << 12) | (1 << 13) | (1 << 38) | (1 << 39);
    assert_eq!(
        u64::from_str_radix(bounding, 16).unwrap(),
        expected,
        "{status_file}"
    );
}

/// Every metric family the daemon serves on `/metrics` (text format: counters as `name_total`)
/// has a row in a README table.
#[test]
fn every_served_metric_is_documented_in_the_readme() {
    let pair = VethPair::new();
    // Every flow family, not only the default three.
    let daemon = network_probe_testkit::Daemon::start(
        &pair.a,
        &["--interface", &pair.a_if, "--flows.families", "all"],
    );
    let scrape = daemon.scrape();
    let served: BTreeSet<String> = scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(served.len() > 20, "{served:?}");
    let documented = readme_metric_names();
    let missing: Vec<&String> = served
        .iter()
        .filter(|name| !documented.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "served but not in README.md: {missing:?}"
    );
}
