//! `/probe` against hostile callers, with real peers in namespaces this test creates: the
//! module request policy (a pinned `tcp_port`, parameters a request may not set), the port
//! allowlist (`--probe.allow 10.x.y.z/32:443`), the iperf3 cost bounds (period, streams), the
//! banner of a non-iperf3 service never echoed, and secrets (`password`, `public_key_file`)
//! never shown in `/config` or `?debug=true`. "Nothing was sent" is the peer's own kernel's
//! word: an nftables counter in the peer's namespace.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use network_probe_testkit::{Daemon, VethPair, daemon_path, dotted, in_netns, sample, sh};

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let path = PathBuf::from(format!("/tmp/np-hostile-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `iperf3 -s -J` in `ns` on `port`, killed on drop.
struct Iperf3Server {
    child: Child,
    log: String,
    _dir: Scratch,
}

impl Iperf3Server {
    fn start(ns: &str, port: u16) -> Iperf3Server {
        let dir = Scratch::new(&format!("iperf3-{ns}"));
        let log = dir.0.join("server.json").to_str().unwrap().to_string();
        let port_text = port.to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "iperf3", "-s", "-p", &port_text])
            .args(["-J", "--logfile", &log])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting iperf3 -s");
        let deadline = Instant::now() + Duration::from_secs(10);
        let filter = format!("sport = :{port}");
        while sh("ip", &["netns", "exec", ns, "ss", "-Hltn", &filter])
            .trim()
            .is_empty()
        {
            assert!(Instant::now() < deadline, "iperf3 -s not listening");
            thread::sleep(Duration::from_millis(20));
        }
        Iperf3Server {
            child,
            log,
            _dir: dir,
        }
    }

    /// The server's JSON reports so far.
    fn reports(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        serde_json::Deserializer::from_str(&text)
            .into_iter::<serde_json::Value>()
            .map_while(Result::ok)
            .collect()
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts every IPv4 packet from `from` that reaches b's input hook.
fn count_packets_from(pair: &VethPair, from: &str) {
    for command in [
        "add table inet hostile".to_string(),
        "add chain inet hostile in { type filter hook input priority -5 ; }".to_string(),
        format!("add rule inet hostile in ip saddr {from} counter"),
    ] {
        let args: Vec<&str> = command.split(' ').collect();
        pair.exec(&pair.b, "nft", &args);
    }
}

/// The packets the counter of [`count_packets_from`] has seen.
fn packets_counted(pair: &VethPair) -> u64 {
    let ruleset = pair.exec(&pair.b, "nft", &["list", "table", "inet", "hostile"]);
    let line = ruleset
        .lines()
        .find(|line| line.contains("counter packets"))
        .unwrap_or_else(|| panic!("no counter in\n{ruleset}"));
    line.split("counter packets ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

fn get(daemon: &Daemon, path: &str) -> (u16, String) {
    daemon.get(path).expect("request")
}

fn get_with_header(daemon: &Daemon, path: &str, header: &str) -> (u16, String) {
    let output = Command::new("ip")
        .args(["netns", "exec", &daemon.ns, "curl", "-s", "-m", "30"])
        .args(["-H", header, "-w", "\n%{http_code}"])
        .arg(format!("http://{}{path}", daemon.listen))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn the_port_scan_is_refused_before_any_packet() {
    let pair = VethPair::new();
    let (a4, b4) = (dotted(pair.a_addr), dotted(pair.b_addr));
    count_packets_from(&pair, &a4);
    let scratch = Scratch::new("portscan");
    let config = scratch.file(
        "network-probe.yml",
        "modules:\n  https:\n    prober: ping\n    ping:\n      tcp_port: 443\n    policy:\n      \
         pin: [tcp_port]\n",
    );
    let allow = format!("{b4}/32:443");
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--config.file",
            &config,
            "--probe.allow",
            &allow,
            "--ping.interval",
            "20ms",
            "--ping.timeout",
            "500ms",
        ],
    );

    // The module pins tcp_port: 400 naming the parameter and the module.
    let (status, body) = get(
        &daemon,
        &format!("/probe?module=https&target={b4}&tcp_port=22&tcp_port=23"),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.starts_with("parameter \"tcp_port\" is pinned by module \"https\""),
        "{body}"
    );
    // The built-in ping lets a request set tcp_port, but the allowlist names port 443 only:
    // 403 naming the port refused.
    let (status, body) = get(
        &daemon,
        &format!("/probe?module=ping&target={b4}&tcp_port=22&tcp_port=23"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("port 22 is not allowed"), "{body}");
    let (status, body) = get(
        &daemon,
        &format!("/probe?module=ping&target={b4}&tcp_port=443&tcp_port=23"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("port 23 is not allowed"), "{body}");
    // An ICMP ping has no port: the port entry does not allow it.
    let (status, body) = get(&daemon, &format!("/probe?module=ping&target={b4}"));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("without a port"), "{body}");
    // The iperf3 banner request of another port: 403 as well.
    let (status, body) = get(
        &daemon,
        &format!("/probe?module=iperf3&target={b4}:22&debug=true"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("port 22"), "{body}");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(packets_counted(&pair), 0, "a refused request sent packets");

    // The module's own port goes out (b's kernel answers with RST): the counter works.
    let (status, body) = get(&daemon, &format!("/probe?module=https&target={b4}"));
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while packets_counted(&pair) == 0 {
        assert!(Instant::now() < deadline, "the allowed probe sent nothing");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_builtin_modules_take_the_seed_parameters() {
    let pair = VethPair::new();
    let b4 = dotted(pair.b_addr);
    const IPERF3_PORT: u16 = 5311;
    let _server = Iperf3Server::start(&pair.b, IPERF3_PORT);
    // A one-file TFTP server in a: answers each read request with 3 bytes.
    let tftp = in_netns(&pair.a, || UdpSocket::bind("127.0.0.1:0").unwrap());
    let tftp_port = tftp.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut buffer = [0u8; 600];
        while let Ok((_, from)) = tftp.recv_from(&mut buffer) {
            if buffer[..2] == [0, 1] {
                let _ = tftp.send_to(&[0, 3, 0, 1, b'a', b'b', b'c'], from);
            }
        }
    });
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--ping.interval",
            "20ms",
            "--ping.timeout",
            "500ms",
        ],
    );
    // tftp: target, tftp_filename, tftp_port.
    let (status, body) = get(
        &daemon,
        &format!(
            "/probe?module=tftp&target=127.0.0.1&tftp_filename=pxelinux.0&tftp_port={tftp_port}"
        ),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(sample(&body, "tftp_probe_success", ""), Some(1.0), "{body}");
    // ping: target, ip_version, tcp_port (b's kernel answers RST: reachable).
    let path = format!("/probe?module=ping&target={b4}&ip_version=4&tcp_port={IPERF3_PORT}");
    get(&daemon, &path);
    thread::sleep(Duration::from_millis(600));
    let (status, body) = get(&daemon, &path);
    assert_eq!(status, 200, "{body}");
    assert_eq!(sample(&body, "ping_probe_success", ""), Some(1.0), "{body}");
    // iperf3: target, port, period, reverse_mode, udp_mode, bitrate.
    for extra in [
        "&reverse_mode=true",
        "&udp_mode=true&bitrate=10M",
        "&reverse_mode=false&udp_mode=false&bitrate=100M",
    ] {
        let (status, body) = get(
            &daemon,
            &format!("/probe?module=iperf3&target={b4}&port={IPERF3_PORT}&period=1{extra}"),
        );
        assert_eq!(status, 200, "{extra}: {body}");
        assert_eq!(sample(&body, "iperf3_up", ""), Some(1.0), "{extra}: {body}");
    }
    // The others are the module's: 400 naming parameter and module.
    for extra in ["parallel=4", "bind=127.0.0.1", "username=u", "password=p"] {
        let (status, body) = get(
            &daemon,
            &format!("/probe?module=iperf3&target={b4}&port={IPERF3_PORT}&{extra}"),
        );
        let name = extra.split('=').next().unwrap();
        assert_eq!(status, 400, "{extra}: {body}");
        assert!(
            body.starts_with(&format!(
                "parameter {name:?} may not be set by a request to module \"iperf3\""
            )),
            "{body}"
        );
    }
}

/// A TCP listener in `ns` that greets every connection with an SSH banner (any non-iperf3
/// service) and reads what it is sent.
fn banner_listener(ns: &str) -> u16 {
    let listener = in_netns(ns, || TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let _ = stream.write_all(b"SSH-2.0-x\r\n");
                let mut buffer = [0u8; 256];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                while matches!(stream.read(&mut buffer), Ok(n) if n > 0) {}
            });
        }
    });
    port
}

#[test]
fn a_non_iperf3_banner_is_never_echoed() {
    let pair = VethPair::new();
    let port = banner_listener(&pair.a);
    let daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if]);
    let (status, body) = get(
        &daemon,
        &format!("/probe?module=iperf3&target=127.0.0.1:{port}&debug=true"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("not an iperf3 server"), "{body}");
    assert!(
        body.contains("iperf3_failure{reason=\"protocol_error\"} 1"),
        "{body}"
    );
    for echoed in ["SSH", "0x53"] {
        assert!(!body.contains(echoed), "{echoed:?} in {body}");
    }
    // The debug log too: the one-shot command with --log.level=debug prints it to stderr.
    let output = Command::new("ip")
        .args(["netns", "exec", &pair.a, daemon_path(), "--log.level=debug"])
        .args([
            "probe",
            "iperf3",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "5s",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("not an iperf3 server"), "{log}");
    assert!(!log.contains("SSH") && !log.contains("0x53"), "{log}");
}

#[test]
fn iperf3_runs_within_the_module_limits() {
    let pair = VethPair::new();
    let b4 = dotted(pair.b_addr);
    const PORT: u16 = 5312;
    let server = Iperf3Server::start(&pair.b, PORT);
    let scratch = Scratch::new("limits");
    let config = scratch.file(
        "network-probe.yml",
        "modules:\n  wide:\n    prober: iperf3\n    policy:\n      allow_params: [target, port, \
         period, parallel, bitrate]\n      limits:\n        period: {max: 2s}\n        parallel: \
         {max: 2}\n        bitrate: {max: 100M}\n    iperf3:\n      period: 1\n      bitrate: 50M\n",
    );
    let daemon = Daemon::start(
        &pair.a,
        &["--interface", &pair.a_if, "--config.file", &config],
    );
    let base = format!("/probe?module=wide&target={b4}&port={PORT}");
    let started = Instant::now();
    let (status, body) = get_with_header(
        &daemon,
        &format!("{base}&period=600&parallel=128&bitrate=0"),
        "X-Prometheus-Scrape-Timeout-Seconds: 601",
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.starts_with(
            "parameter \"period\": \"600\" is above the maximum 2s of module \"wide\""
        ),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    for (extra, said) in [
        (
            "&parallel=128",
            "parameter \"parallel\": \"128\" is above the maximum 2",
        ),
        (
            "&bitrate=0",
            "parameter \"bitrate\": \"0\" is above the maximum 100000000 bit/s",
        ),
    ] {
        let (status, body) = get(&daemon, &format!("{base}&period=1{extra}"));
        assert_eq!(status, 400, "{body}");
        assert!(body.starts_with(said), "{body}");
    }
    // The built-in module: 60 s at most, no streams from a request.
    let (status, body) = get(
        &daemon,
        &format!("/probe?module=iperf3&target={b4}&port={PORT}&period=600"),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("above the maximum 60s of module \"iperf3\""),
        "{body}"
    );
    assert!(
        server.reports().is_empty(),
        "a refused request started a test"
    );

    // At the limits, the test runs; the server's own report shows them.
    let (status, body) = get_with_header(
        &daemon,
        &format!("{base}&period=2&parallel=2"),
        "X-Prometheus-Scrape-Timeout-Seconds: 601",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(sample(&body, "iperf3_up", ""), Some(1.0), "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let report = loop {
        if let Some(report) = server.reports().pop() {
            break report;
        }
        assert!(Instant::now() < deadline, "no server report");
        thread::sleep(Duration::from_millis(50));
    };
    let test = &report["start"]["test_start"];
    assert_eq!(test["num_streams"], 2, "{report}");
    assert_eq!(test["duration"], 2, "{report}");
    let rate = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    assert!(
        rate < 2.0 * 50e6 * 1.1,
        "{rate} bit/s with 2 streams of 50M"
    );
}

#[test]
fn secrets_stay_secret() {
    let pair = VethPair::new();
    let scratch = Scratch::new("secrets");
    let private = scratch.0.join("private.pem");
    let public = scratch.0.join("public.pem");
    sh(
        "openssl",
        &["genrsa", "-out", private.to_str().unwrap(), "2048"],
    );
    sh(
        "openssl",
        &[
            "rsa",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    );
    let public = public.to_str().unwrap().to_string();
    let config = scratch.file(
        "network-probe.yml",
        &format!(
            "modules:\n  auth:\n    prober: iperf3\n    timeout: 3s\n    iperf3:\n      \
             username: mary\n      password: sw0rdf1sh\n      public_key_file: {public}\n"
        ),
    );
    let daemon = Daemon::start(
        &pair.a,
        &["--interface", &pair.a_if, "--config.file", &config],
    );
    let (status, shown) = get(&daemon, "/config");
    assert_eq!(status, 200, "{shown}");
    let (status, debug) = get(&daemon, "/probe?module=auth&target=127.0.0.1:1&debug=true");
    assert_eq!(status, 200, "{debug}");
    for text in [&shown, &debug] {
        assert!(text.contains("password: <secret>"), "{text}");
        assert!(text.contains("public_key_file: <secret>"), "{text}");
        assert!(!text.contains("sw0rdf1sh"), "{text}");
        assert!(!text.contains(&public), "{text}");
        assert!(!text.contains("np-hostile-secrets"), "{text}");
    }
    // A key file named by a request: 400, for the module and the built-in one alike, without
    // the file being looked at (a path that does not exist is refused the same way).
    for module in ["auth", "iperf3"] {
        for path in [public.as_str(), "/nonexistent/key.pem"] {
            let (status, body) = get(
                &daemon,
                &format!("/probe?module={module}&target=127.0.0.1:1&public_key_file={path}"),
            );
            assert_eq!(status, 400, "{body}");
            assert!(
                body.starts_with("parameter \"public_key_file\" cannot be set by a request"),
                "{body}"
            );
            assert!(!body.contains(path), "{body}");
        }
    }
    // The key was read at load time: removing the file does not break the module.
    std::fs::remove_file(&public).unwrap();
    let (status, body) = get(&daemon, "/probe?module=auth&target=127.0.0.1:1");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("iperf3_failure{reason=\"connect_failed\"} 1"),
        "{body}"
    );
}
