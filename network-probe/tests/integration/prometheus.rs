//! Our exposition as real Prometheus tools see it (Debian's `prometheus` package, 2.42):
//! - `promtool check metrics` lints the daemon's `/metrics` (with TCP flow series present) and
//!   the `/probe` answer of every prober, each against a real peer started here (the peer
//!   namespace for ping, tftpd-hpa for tftp, `iperf3 -s` for iperf3);
//! - a Prometheus server, started by the test inside the daemon's namespace on its own port,
//!   config and data directory (never the system service), scrapes `/metrics` and the ping and
//!   tftp probers through the blackbox-style relabelling of docs/prometheus.md, and the iperf3
//!   prober through the iperf3 seed's own relabelling (a `--web.probe-listen iperf3=` listener
//!   in place of the seed's exporter); the test reads back through Prometheus' query API what
//!   it stored and compares it with the daemon's own figures, the file served, the peer
//!   kernel's counters and the iperf3 server's own per-test reports.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use network_probe_testkit::{Daemon, VethPair, dotted, get, in_netns, nstat, sample, sh};
use serde_json::Value;

/// Where the test's Prometheus listens, inside the daemon's namespace.
const PROMETHEUS: &str = "127.0.0.1:9090";
pub(crate) const TFTP_PORT: u16 = 6969;
pub(crate) const IPERF3_PORT: u16 = 5201;
/// The iperf3 listener of the daemon (`--web.probe-listen`), on the seed exporter's port.
pub(crate) const IPERF3_LISTEN: &str = "127.0.0.1:9579";
const TCP_PORT: u16 = 4000;
/// How long Prometheus gets to scrape and store what a test waits for.
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(30);

/// promtool's only complaint we accept: the seed's name `icmp_probe_samples_count` (and its
/// `tcp_` twin) is a gauge ending in `_count`. It stays for compatibility with icmp-exporter's
/// dashboards and alerts (docs/ping.md); any other complaint fails the test.
const ACCEPTED_COMPLAINTS: &[&str] = &[
    "icmp_probe_samples_count non-histogram and non-summary metrics should not have \"_count\" suffix",
    "tcp_probe_samples_count non-histogram and non-summary metrics should not have \"_count\" suffix",
];

/// A scratch directory under /tmp, world-readable (tftpd-hpa serves it as nobody), removed on
/// drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("np-prom-{tag}-{}-{id}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(path)
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop.
pub(crate) struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `ss` in `ns` lists a socket matching `filter` (`-l` listeners, `-u`/`-t`).
fn wait_listening(ns: &str, flags: &str, port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let filter = format!("sport = :{port}");
    while sh("ip", &["netns", "exec", ns, "ss", flags, &filter])
        .trim()
        .is_empty()
    {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("server for port {port} exited during start-up: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "nothing listening on port {port} in {ns} after 10 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// tftpd-hpa in `ns` on 127.0.0.1:TFTP_PORT serving `dir`.
pub(crate) fn tftpd_hpa(ns: &str, dir: &TempDir) -> Process {
    let address = format!("127.0.0.1:{TFTP_PORT}");
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "in.tftpd", "-L", "-s"])
        .arg(&dir.0)
        .args(["-a", &address])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting in.tftpd (apt-get install tftpd-hpa)");
    wait_listening(ns, "-Hlun", TFTP_PORT, &mut child);
    Process(child)
}

/// `iperf3 -s` in `ns` on IPERF3_PORT; with `reports`, it writes one JSON report per test
/// there (`-J --logfile`).
pub(crate) fn iperf3_server(ns: &str, reports: Option<&str>) -> Process {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iperf3", "-s", "-p"])
        .arg(IPERF3_PORT.to_string())
        .args(reports.map_or(vec![], |log| vec!["-J", "--logfile", log]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting iperf3 -s (apt-get install iperf3)");
    wait_listening(ns, "-Hltn", IPERF3_PORT, &mut child);
    Process(child)
}

/// One TCP connection from a to b carrying `bytes`, so the daemon has flow series to export.
fn tcp_traffic(pair: &VethPair, bytes: usize) {
    let server: SocketAddr = (pair.b_addr, TCP_PORT).into();
    let listener = in_netns(&pair.b, move || TcpListener::bind(server).unwrap());
    let receiver = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        received.len()
    });
    in_netns(&pair.a, move || {
        let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(2)).unwrap();
        stream.write_all(&vec![0x42; bytes]).unwrap();
    });
    assert_eq!(receiver.join().unwrap(), bytes);
}

/// The ping flags: probes every 50 ms so Prometheus' second scrape already sees replies.
const PING_FLAGS: [&str; 4] = ["--ping.interval", "50ms", "--ping.timeout", "500ms"];

pub(crate) fn start_daemon(pair: &VethPair, extra: &[&str]) -> Daemon {
    let mut args = vec!["--interface", pair.a_if.as_str()];
    args.extend_from_slice(&PING_FLAGS);
    args.extend_from_slice(extra);
    Daemon::start(&pair.a, &args)
}

/// The sum of the samples of `name` (a flow series family) on `interface` in a scrape.
fn flow_sum(scrape: &str, name: &str, interface: &str) -> f64 {
    let prefix = format!("{name}{{interface=\"{interface}\",");
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|rest| rest.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// What `promtool check metrics` says about `body`, one complaint per line, minus
/// [`ACCEPTED_COMPLAINTS`]. Empty means clean (and then promtool must have exited 0).
fn promtool_complaints(body: &str) -> Vec<String> {
    let (success, text) = network_probe_testkit::promtool_check_metrics(body);
    let all: Vec<String> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(str::to_string)
        .collect();
    if all.is_empty() {
        assert!(success, "promtool failed silently");
    }
    all.into_iter()
        .filter(|line| !ACCEPTED_COMPLAINTS.contains(&line.as_str()))
        .collect()
}

/// GET a daemon path in the classic text format (no Accept header, as curl or promtool users
/// send) and assert promtool finds nothing to complain about.
fn assert_clean(daemon: &Daemon, path: &str) -> String {
    let (status, content_type, body) = get(&daemon.ns, daemon.listen, path, None);
    assert_eq!(status, 200, "{path}: {body}");
    assert_eq!(
        content_type, "text/plain; version=0.0.4; charset=utf-8",
        "{path}"
    );
    let complaints = promtool_complaints(&body);
    assert!(
        complaints.is_empty(),
        "promtool on {path}:\n{}\n\nbody:\n{body}",
        complaints.join("\n")
    );
    body
}

#[test]
fn promtool_finds_nothing_to_complain_about() {
    let pair = VethPair::new();
    let daemon = start_daemon(&pair, &[]);
    tcp_traffic(&pair, 100_000);

    let metrics = assert_clean(&daemon, "/metrics");
    let flow_packets = flow_sum(&metrics, "network_probe_flow_packets_total", &pair.a_if);
    assert!(flow_packets > 0.0, "no flow series in\n{metrics}");

    // promtool reads only the classic format: the OpenMetrics form, which Prometheus asks for,
    // is what it cannot read (a counter family `x` with samples `x_total`), which is why the
    // daemon negotiates.
    let (status, content_type, openmetrics) = get(
        &daemon.ns,
        daemon.listen,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    assert!(openmetrics.ends_with("# EOF\n"));
    assert!(
        promtool_complaints(&openmetrics)
            .iter()
            .any(|line| line == "network_probe_interface_packets_total no help text"),
        "promtool accepted OpenMetrics counters: the negotiation may no longer be needed"
    );

    // Ping: the first request starts probing, the second has replies.
    let b4 = dotted(pair.b_addr);
    for query in [
        format!("target={b4}"),
        format!("target={b4}&tcp_port={IPERF3_PORT}"),
    ] {
        let path = format!("/probe?module=ping&{query}");
        assert_clean(&daemon, &path);
        thread::sleep(Duration::from_millis(500));
        let body = assert_clean(&daemon, &path);
        assert_eq!(sample(&body, "ping_probe_success", ""), Some(1.0), "{body}");
    }

    // TFTP, a success and a failure (the failure family with a reason set).
    let dir = TempDir::new("tftp");
    std::fs::write(dir.path("boot.bin"), vec![7u8; 3000]).unwrap();
    std::fs::set_permissions(dir.path("boot.bin"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let _tftpd = tftpd_hpa(&pair.a, &dir);
    let body = assert_clean(
        &daemon,
        &format!("/probe?module=tftp&target=127.0.0.1:{TFTP_PORT}&tftp_filename=boot.bin"),
    );
    assert_eq!(sample(&body, "tftp_probe_success", ""), Some(1.0), "{body}");
    let body = assert_clean(
        &daemon,
        &format!("/probe?module=tftp&target=127.0.0.1:{TFTP_PORT}&tftp_filename=missing"),
    );
    assert_eq!(sample(&body, "tftp_probe_success", ""), Some(0.0), "{body}");

    // iperf3: TCP (retransmits), UDP (loss, jitter), and a failure.
    let _iperf3 = iperf3_server(&pair.b, None);
    for extra in ["", "&udp_mode=true&bitrate=10M", "&reverse_mode=true"] {
        let body = assert_clean(
            &daemon,
            &format!("/probe?module=iperf3&target={b4}&port={IPERF3_PORT}&period=1{extra}"),
        );
        assert_eq!(sample(&body, "iperf3_up", ""), Some(1.0), "{extra}: {body}");
    }
    let body = assert_clean(&daemon, &format!("/probe?module=iperf3&target={b4}&port=1"));
    assert_eq!(sample(&body, "iperf3_up", ""), Some(0.0), "{body}");
}

/// A Prometheus server in a namespace, with its own config and data directory; killed and
/// removed on drop.
pub(crate) struct Prometheus {
    process: Process,
    _dir: TempDir,
    ns: String,
    listen: SocketAddr,
}

impl Prometheus {
    pub(crate) fn start(ns: &str, config: &str) -> Prometheus {
        let dir = TempDir::new("server");
        std::fs::write(dir.path("prometheus.yml"), config).unwrap();
        let check = Command::new("promtool")
            .args(["check", "config", &dir.path("prometheus.yml")])
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "promtool check config: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "prometheus"])
            .arg(format!("--config.file={}", dir.path("prometheus.yml")))
            .arg(format!("--storage.tsdb.path={}", dir.path("data")))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus (apt-get install prometheus)");
        let mut prometheus = Prometheus {
            process: Process(child),
            _dir: dir,
            ns: ns.to_string(),
            listen: PROMETHEUS.parse().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = prometheus.process.0.try_wait().unwrap() {
                panic!("prometheus exited during start-up: {status}");
            }
            let ns = prometheus.ns.clone();
            let listen = prometheus.listen;
            let ready = in_netns(&ns, move || TcpStream::connect(listen).is_ok())
                && get(&prometheus.ns, prometheus.listen, "/-/ready", None).0 == 200;
            if ready {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "prometheus not ready after 20 s");
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// An API call's `data`, asserting `status: success`.
    pub(crate) fn api(&self, path: &str) -> Value {
        let (status, _, body) = get(&self.ns, self.listen, path, None);
        assert_eq!(status, 200, "{path}: {body}");
        let reply: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(reply["status"], "success", "{path}: {body}");
        reply["data"].clone()
    }

    /// The instant-query result vector for `query`: (labels, value) per series.
    fn query(&self, query: &str) -> Vec<(Value, f64)> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encode(query)));
        assert_eq!(data["resultType"], "vector", "{data}");
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (series["metric"].clone(), value)
            })
            .collect()
    }

    /// The values of the metrics `selector` matches (`count` series, by metric name) from
    /// their latest scrape: the raw samples of the last 30 s with their own timestamps, at the
    /// newest timestamp every series has (a scrape's samples share one). Polls until there is
    /// one.
    fn one_scrape(&self, selector: &str, count: usize) -> BTreeMap<String, f64> {
        let deadline = Instant::now() + PROMETHEUS_DEADLINE;
        loop {
            let query = format!("{selector}[30s]");
            let data = self.api(&format!("/api/v1/query?query={}", percent_encode(&query)));
            assert_eq!(data["resultType"], "matrix", "{data}");
            // Per series: its name and its samples as (timestamp in ms, value).
            let series: Vec<(String, BTreeMap<i64, f64>)> = data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|series| {
                    let name = series["metric"]["__name__"].as_str().unwrap().to_string();
                    let samples = series["values"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|sample| {
                            let stamp = (sample[0].as_f64().unwrap() * 1000.0).round() as i64;
                            (stamp, sample[1].as_str().unwrap().parse().unwrap())
                        })
                        .collect();
                    (name, samples)
                })
                .collect();
            let common = series.first().and_then(|(_, first)| {
                first.keys().rev().find(|stamp| {
                    series
                        .iter()
                        .all(|(_, samples)| samples.contains_key(stamp))
                })
            });
            if let (true, Some(stamp)) = (series.len() == count, common) {
                return series
                    .iter()
                    .map(|(name, samples)| (name.clone(), samples[stamp]))
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "{query}: last result {data:#} after {PROMETHEUS_DEADLINE:?}"
            );
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Polls `query` until it returns exactly one series whose value satisfies `accept`, and
    /// returns that value; fails after [`PROMETHEUS_DEADLINE`] with the last result and the
    /// targets' scrape state.
    pub(crate) fn wait_for(&self, query: &str, accept: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + PROMETHEUS_DEADLINE;
        loop {
            let result = self.query(query);
            if let [(_, value)] = result.as_slice()
                && accept(*value)
            {
                return *value;
            }
            if Instant::now() > deadline {
                let targets = self.api("/api/v1/targets");
                panic!(
                    "{query}: last result {result:?} after {PROMETHEUS_DEADLINE:?}; targets: \
                     {targets:#}"
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The iperf3 server's report (from its `-J --logfile` at `log`) of the test in which it
/// received exactly `received_bytes`; waits up to 5 s for the server to write it.
fn iperf3_report_with(log: &str, received_bytes: f64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let reports: Vec<Value> = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .collect();
        if let Some(report) = reports
            .iter()
            .find(|report| report["end"]["sum_received"]["bytes"].as_f64() == Some(received_bytes))
        {
            return report.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no iperf3 server report received {received_bytes} bytes; received: {:?}",
            reports
                .iter()
                .map(|report| report["end"]["sum_received"]["bytes"].clone())
                .collect::<Vec<_>>()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The scrape configuration of docs/prometheus.md, pointed at the test's daemon and peers, and
/// the iperf3 seed's job: its relabelling (target = address + `:5201`, instance = the node's
/// host name, a `hostname` label standing in for its Docker Swarm metadata), scraping the
/// daemon's iperf3 listener; scrape interval and timeout shortened from the seed's 30m / 5m.
pub(crate) fn prometheus_config(
    daemon: SocketAddr,
    ping_target: &str,
    tftp_target: &str,
) -> String {
    format!(
        "\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: network-probe
    static_configs:
      - targets: ['{daemon}']
  - job_name: ping
    metrics_path: /probe
    params:
      module: [ping]
    static_configs:
      - targets: ['{ping_target}']
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: '{daemon}'
  - job_name: tftp
    metrics_path: /probe
    params:
      module: [tftp]
      tftp_filename: [boot.bin]
    static_configs:
      - targets: ['{tftp_target}']
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: '{daemon}'
  - job_name: iperf3-bandwidth
    metrics_path: /probe
    scrape_interval: 5s
    scrape_timeout: 4s
    static_configs:
      - targets: ['{ping_target}']
        labels:
          __hostname: {IPERF3_INSTANCE}
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
        replacement: $1:{IPERF3_PORT}
      - source_labels: [__hostname]
        target_label: instance
      - target_label: __address__
        replacement: {IPERF3_LISTEN}
"
    )
}

/// The `instance` of the iperf3 job (the seed relabels the node's host name into it).
pub(crate) const IPERF3_INSTANCE: &str = "peer-b";

#[test]
fn a_real_prometheus_scrapes_metrics_and_probes() {
    let pair = VethPair::new();
    let daemon = start_daemon(
        &pair,
        &["--web.probe-listen", &format!("iperf3={IPERF3_LISTEN}")],
    );
    tcp_traffic(&pair, 50_000);
    let dir = TempDir::new("tftp");
    let size = 123_456;
    std::fs::write(dir.path("boot.bin"), vec![9u8; size]).unwrap();
    std::fs::set_permissions(dir.path("boot.bin"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let _tftpd = tftpd_hpa(&pair.a, &dir);
    let iperf3_reports = dir.path("iperf3.json");
    let _iperf3 = iperf3_server(&pair.b, Some(&iperf3_reports));

    let b4 = dotted(pair.b_addr);
    let tftp_target = format!("127.0.0.1:{TFTP_PORT}");
    let interface = format!(
        "network_probe_interface_packets_total{{job=\"network-probe\",interface=\"{}\",\
         direction=\"egress\"}}",
        pair.a_if
    );
    let labels = format!("interface=\"{}\",direction=\"egress\"", pair.a_if);
    let before = sample(
        &daemon.scrape(),
        "network_probe_interface_packets_total",
        &labels,
    )
    .expect("egress packets");
    assert!(before > 0.0);

    let prometheus = Prometheus::start(
        &pair.a,
        &prometheus_config(daemon.listen, &b4, &tftp_target),
    );

    // Every job is up, with the probed target as its instance.
    let daemon_instance = daemon.listen.to_string();
    for (job, instance) in [
        ("network-probe", daemon_instance.as_str()),
        ("ping", b4.as_str()),
        ("tftp", tftp_target.as_str()),
        ("iperf3-bandwidth", IPERF3_INSTANCE),
    ] {
        let up = prometheus.wait_for(
            &format!("up{{job=\"{job}\",instance=\"{instance}\"}}"),
            |_| true,
        );
        assert_eq!(
            up,
            1.0,
            "job {job}: {:#}",
            prometheus.api("/api/v1/targets")
        );
    }

    // The interface counter Prometheus stored lies between the daemon's own readings before
    // Prometheus started and after it has the sample (the ping probes keep it growing).
    let stored = prometheus.wait_for(&interface, |_| true);
    let after = sample(
        &daemon.scrape(),
        "network_probe_interface_packets_total",
        &labels,
    )
    .expect("egress packets");
    assert!(
        before <= stored && stored <= after,
        "daemon said {before} then {after}, Prometheus stored {stored}"
    );
    // Later scrapes only see it grow.
    let later = prometheus.wait_for(&interface, |value| value > stored);
    assert!(
        later
            <= sample(
                &daemon.scrape(),
                "network_probe_interface_packets_total",
                &labels
            )
            .unwrap()
    );
    // The flow series of the TCP connection (whichever rows hold it: the sum per interface
    // never changes when flows are folded), as the daemon counted them.
    let flow_bytes = flow_sum(
        &daemon.scrape(),
        "network_probe_flow_bytes_total",
        &pair.a_if,
    );
    assert!(flow_bytes > 50_000.0, "{flow_bytes}");
    let stored_flow = prometheus.wait_for(
        &format!(
            "sum(network_probe_flow_bytes_total{{job=\"network-probe\",interface=\"{}\"}})",
            pair.a_if
        ),
        |_| true,
    );
    assert_eq!(stored_flow, flow_bytes);

    // Prometheus asked for OpenMetrics and got it: the metadata of the counter is filed under
    // its OpenMetrics family name (without `_total`), typed counter.
    let metadata = prometheus.api("/api/v1/metadata?metric=network_probe_interface_packets");
    assert_eq!(
        metadata["network_probe_interface_packets"][0]["type"], "counter",
        "{metadata:#}"
    );

    // The TFTP probe: success, and the size of the file on disk.
    let success = prometheus.wait_for(
        &format!("tftp_probe_success{{job=\"tftp\",instance=\"{tftp_target}\"}}"),
        |_| true,
    );
    assert_eq!(success, 1.0);
    let length = prometheus.wait_for(
        &format!("tftp_probe_content_length_bytes{{job=\"tftp\",instance=\"{tftp_target}\"}}"),
        |_| true,
    );
    assert_eq!(length, size as f64);

    // The ping probe: replies arrive, never more than the peer's kernel answered.
    let received = prometheus.wait_for(
        &format!("icmp_probe_packets_recv_total{{job=\"ping\",instance=\"{b4}\",ip=\"{b4}\"}}"),
        |value| value > 0.0,
    );
    let answered = nstat(&pair.b, "IcmpOutEchoReps") as f64;
    assert!(
        received <= answered,
        "Prometheus stored {received} replies, b sent {answered}"
    );
    let success = prometheus.wait_for(
        &format!("ping_probe_success{{job=\"ping\",instance=\"{b4}\"}}"),
        |_| true,
    );
    assert_eq!(success, 1.0);

    // iperf3, through the seed's relabelling: the daemon was asked for the node's address with
    // port 5201, and what Prometheus stored of one test equals the server's own report of it.
    let targets = prometheus.api("/api/v1/targets");
    let scrape_url = targets["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|target| target["labels"]["job"] == "iperf3-bandwidth")
        .and_then(|target| target["scrapeUrl"].as_str())
        .unwrap_or_else(|| panic!("no iperf3 target in {targets:#}"))
        .to_string();
    assert_eq!(
        scrape_url,
        format!("http://{IPERF3_LISTEN}/probe?target={b4}%3A{IPERF3_PORT}")
    );
    let up = prometheus.wait_for(
        &format!("iperf3_up{{job=\"iperf3-bandwidth\",instance=\"{IPERF3_INSTANCE}\"}}"),
        |_| true,
    );
    assert_eq!(up, 1.0);
    let stored = prometheus.one_scrape(
        &format!(
            "{{job=\"iperf3-bandwidth\",instance=\"{IPERF3_INSTANCE}\",\
             __name__=~\"iperf3_up|iperf3_(sent|received)_(bytes|seconds)\"}}"
        ),
        5,
    );
    assert_eq!(stored["iperf3_up"], 1.0, "{stored:?}");
    let report = iperf3_report_with(&iperf3_reports, stored["iperf3_received_bytes"]);
    // Forward test: the server is the receiver, its report is the reference for what arrived
    // and for how long it received; we sent at least that.
    let server_seconds = report["end"]["sum_received"]["seconds"].as_f64().unwrap();
    assert!(
        (stored["iperf3_received_seconds"] - server_seconds).abs() < 1e-3,
        "stored {stored:?}, server {server_seconds} s"
    );
    assert!(
        stored["iperf3_sent_bytes"] >= stored["iperf3_received_bytes"],
        "{stored:?}"
    );
    assert!(stored["iperf3_received_bytes"] > 0.0, "{stored:?}");
    assert_eq!(report["start"]["test_start"]["reverse"], 0, "{report}");

    // Every target's last scrape was clean.
    let targets = prometheus.api("/api/v1/targets");
    for target in targets["activeTargets"].as_array().unwrap() {
        assert_eq!(target["health"], "up", "{target:#}");
        assert_eq!(target["lastError"], "", "{target:#}");
    }
}
