//! Web security of the HTTP server, end to end against the daemon running in a namespace this
//! test creates: TLS (certificates made here with the `openssl` CLI, checked with `curl`),
//! client certificates, basic auth (hashes made with Apache's `htpasswd`, not our bcrypt crate),
//! start-up errors of bad `--web.config.file`s, the `/probe` concurrency limit, the request
//! limits (400/413/414/431, never a 5xx for a client's mistake), and the landing page (recent
//! probes escaped, their logs, its links followed, the 100-entry ring).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use network_probe_testkit::{Daemon, VethPair, daemon_path, in_netns, sh};

/// A temporary directory with the test's certificates and configuration files.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("np-web-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }

    fn write(&self, name: &str, text: &str) -> String {
        std::fs::write(self.0.join(name), text).unwrap();
        self.path(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Makes `NAME.key` and `NAME.crt`, signed by `ca` (or self-signed CA when `ca` is None).
fn certificate(dir: &Dir, name: &str, ca: Option<&str>, extensions: &str) {
    let key = dir.path(&format!("{name}.key"));
    let crt = dir.path(&format!("{name}.crt"));
    sh(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ],
    );
    match ca {
        None => {
            sh(
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-key",
                    &key,
                    "-out",
                    &crt,
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={name}"),
                ],
            );
        }
        Some(ca) => {
            let csr = dir.path(&format!("{name}.csr"));
            sh(
                "openssl",
                &[
                    "req",
                    "-new",
                    "-key",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN={name}"),
                ],
            );
            let ext = dir.write(&format!("{name}.ext"), extensions);
            sh(
                "openssl",
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &dir.path(&format!("{ca}.crt")),
                    "-CAkey",
                    &dir.path(&format!("{ca}.key")),
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                ],
            );
        }
    }
}

/// A CA, a server certificate for localhost/127.0.0.1, a client certificate from the CA and
/// one from another CA.
fn pki(dir: &Dir) {
    certificate(dir, "ca", None, "");
    certificate(
        dir,
        "server",
        Some("ca"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n\
         extendedKeyUsage=serverAuth\n",
    );
    certificate(
        dir,
        "client",
        Some("ca"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    certificate(dir, "rogue-ca", None, "");
    certificate(
        dir,
        "rogue",
        Some("rogue-ca"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
}

/// A bcrypt hash of `password` made by htpasswd (cost 5 keeps the test quick).
fn htpasswd(password: &str) -> String {
    let line = sh("htpasswd", &["-nbBC", "5", "", password]);
    line.trim().trim_start_matches(':').to_string()
}

/// `curl` inside `ns`: (HTTP status, 0 if no response, and curl's exit code).
fn curl(ns: &str, args: &[&str]) -> (u16, i32) {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "-o", "/dev/null"])
        .args(["--max-time", "5", "-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("running curl");
    let status = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (status, output.status.code().unwrap_or(-1))
}

/// Starts the daemon in `ns` with `args` and waits until `ready` (a curl check) holds.
fn start(ns: &str, interface: &str, args: &[&str], ready: impl Fn() -> bool) -> Daemon {
    let listen: SocketAddr = "127.0.0.1:9435".parse().unwrap();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            daemon_path(),
            "--web.listen-address",
            "127.0.0.1:9435",
            // Nothing pinned: parallel tests must not share maps.
            "--datapath.pin-path=",
        ])
        .args(["--interface", interface])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the daemon");
    let mut daemon = Daemon {
        child,
        ns: ns.to_string(),
        listen,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            panic!("daemon exited during start-up: {status}");
        }
        assert!(Instant::now() < deadline, "daemon not ready after 20 s");
        thread::sleep(Duration::from_millis(50));
    }
    daemon
}

/// A raw HTTP/1.1 exchange inside `ns`: (status, head in lower case, body). The request is
/// sent as given.
fn raw(ns: &str, request: Vec<u8>) -> std::io::Result<(u16, String, String)> {
    let to: SocketAddr = "127.0.0.1:9435".parse().unwrap();
    in_netns(ns, move || {
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        stream.write_all(&request)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad response {response:?}")))?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        Ok((status, head.to_ascii_lowercase(), body.to_string()))
    })
}

fn get(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n")
        .into_bytes()
}

#[test]
fn tls_serves_https_and_refuses_plain_http() {
    let dir = Dir::new("tls");
    pki(&dir);
    let config = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    );
    let pair = VethPair::new();
    let ca = dir.path("ca.crt");
    let daemon = start(&pair.a, &pair.a_if, &["--web.config.file", &config], || {
        curl(
            &pair.a,
            &["--cacert", &ca, "https://localhost:9435/-/ready"],
        )
        .0 == 200
    });
    // Verified against our CA, by name and by address.
    assert_eq!(
        curl(
            &pair.a,
            &["--cacert", &ca, "https://localhost:9435/metrics"]
        ),
        (200, 0)
    );
    assert_eq!(
        curl(
            &pair.a,
            &["--cacert", &ca, "https://127.0.0.1:9435/metrics"]
        ),
        (200, 0)
    );
    // A client that does not trust the CA refuses the server (curl exit 60).
    assert_eq!(curl(&pair.a, &["https://localhost:9435/metrics"]).1, 60);
    // Plain HTTP to the TLS port gets no HTTP response.
    let (status, code) = curl(&pair.a, &["http://localhost:9435/metrics"]);
    assert_eq!(status, 0);
    assert_ne!(code, 0);
    assert!(daemon.get("/metrics").is_err());
}

#[test]
fn client_certificates_are_required_and_verified() {
    let dir = Dir::new("mtls");
    pki(&dir);
    let config = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
    );
    let pair = VethPair::new();
    let (ca, cert, key) = (
        dir.path("ca.crt"),
        dir.path("client.crt"),
        dir.path("client.key"),
    );
    let with_client = |cert: &str, key: &str| {
        curl(
            &pair.a,
            &[
                "--cacert",
                &ca,
                "--cert",
                cert,
                "--key",
                key,
                "https://localhost:9435/metrics",
            ],
        )
    };
    let _daemon = start(&pair.a, &pair.a_if, &["--web.config.file", &config], || {
        with_client(&cert, &key).0 == 200
    });
    assert_eq!(with_client(&cert, &key), (200, 0));
    // No certificate, or one from another CA: the handshake fails, no HTTP status.
    let (status, code) = curl(
        &pair.a,
        &["--cacert", &ca, "https://localhost:9435/metrics"],
    );
    assert_eq!(status, 0);
    assert_ne!(code, 0);
    let (status, code) = with_client(&dir.path("rogue.crt"), &dir.path("rogue.key"));
    assert_eq!(status, 0);
    assert_ne!(code, 0);
}

#[test]
fn basic_auth_admits_only_the_right_password() {
    let dir = Dir::new("auth");
    pki(&dir);
    let config = dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  alice: {}\n  bob: {}\n\
             http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
            htpasswd("correct horse"),
            htpasswd("battery staple"),
        ),
    );
    let pair = VethPair::new();
    let ca = dir.path("ca.crt");
    let https = |user: Option<&str>| {
        let mut args = vec!["--cacert", ca.as_str(), "https://localhost:9435/metrics"];
        if let Some(user) = user {
            args.extend(["-u", user]);
        }
        curl(&pair.a, &args).0
    };
    let _daemon = start(&pair.a, &pair.a_if, &["--web.config.file", &config], || {
        https(Some("alice:correct horse")) == 200
    });
    assert_eq!(https(Some("alice:correct horse")), 200);
    assert_eq!(https(Some("bob:battery staple")), 200);
    // Repeated: served from the cache of verified credentials, still 200.
    assert_eq!(https(Some("alice:correct horse")), 200);
    assert_eq!(https(Some("alice:battery staple")), 401);
    assert_eq!(https(Some("alice:")), 401);
    assert_eq!(https(Some("mallory:correct horse")), 401);
    assert_eq!(https(None), 401);
    // Every endpoint is protected; the challenge and the configured header are sent.
    let output = sh(
        "ip",
        &[
            "netns",
            "exec",
            &pair.a,
            "curl",
            "-sS",
            "-i",
            "--cacert",
            &ca,
            "https://localhost:9435/-/healthy",
        ],
    );
    let head = output.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 401"), "{output}");
    assert!(head.contains("www-authenticate: basic"), "{output}");
    assert!(head.contains("x-frame-options: deny"), "{output}");
}

/// Runs the daemon with `config` as its web configuration and expects a start-up failure:
/// (exit code, stderr).
fn failed_start(ns: &str, interface: &str, config: &str) -> (i32, String) {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            daemon_path(),
            "--web.listen-address",
            "127.0.0.1:9435",
            "--datapath.pin-path=",
        ])
        .args(["--interface", interface, "--web.config.file", config])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon started with {config}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code().unwrap(), stderr)
}

#[test]
fn bad_web_configs_fail_start_up_naming_field_and_value() {
    let dir = Dir::new("bad");
    pki(&dir);
    let pair = VethPair::new();
    let cases = [
        (
            "yaml.yml",
            "tls_server_config: [\n".to_string(),
            "not valid YAML".to_string(),
        ),
        (
            "missing-cert.yml",
            "tls_server_config:\n  cert_file: nowhere.crt\n  key_file: server.key\n".into(),
            format!(
                "tls_server_config.cert_file: cannot read {:?}: No such file or directory",
                dir.path("nowhere.crt")
            ),
        ),
        (
            "key-is-cert.yml",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: ca.crt\n".into(),
            "tls_server_config.key_file:".into(),
        ),
        (
            "wrong-key.yml",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n".into(),
            "does not fit cert_file".into(),
        ),
        (
            "hash.yml",
            "basic_auth_users:\n  alice: plaintext-password\n".into(),
            "basic_auth_users.alice: the value (18 characters) is not a bcrypt hash".into(),
        ),
        (
            "policy.yml",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireSomething\n"
                .into(),
            "tls_server_config.client_auth_type: \"RequireSomething\" is not a policy".into(),
        ),
        (
            "unknown.yml",
            "tls_config:\n  cert_file: server.crt\n".into(),
            "unknown field `tls_config`".into(),
        ),
    ];
    for (name, text, expected) in cases {
        let config = dir.write(name, &text);
        let (code, stderr) = failed_start(&pair.a, &pair.a_if, &config);
        assert_eq!(code, 2, "{name}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: {stderr:?}");
        assert!(
            stderr.starts_with(&format!(
                "network-probe: error: invalid --web.config.file {config:?}: "
            )),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(&expected), "{name}: {stderr}");
        assert!(!stderr.contains("plaintext-password"), "{stderr}");
    }
    let (code, stderr) = failed_start(&pair.a, &pair.a_if, &dir.path("absent.yml"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot read the file"), "{stderr}");
}

#[test]
fn concurrent_probes_beyond_the_limit_get_503_with_retry_after() {
    let pair = VethPair::new();
    let daemon = Daemon::start(
        &pair.a,
        &[
            "--interface",
            &pair.a_if,
            "--web.max-concurrent-probes",
            "2",
        ],
    );
    // A TFTP "server" that never answers: each probe waits for its deadline.
    let silent = in_netns(&pair.a, || UdpSocket::bind("127.0.0.1:0").unwrap());
    let port = silent.local_addr().unwrap().port();
    let probe = get(
        &format!("/probe?module=tftp&target=127.0.0.1:{port}"),
        "X-Prometheus-Scrape-Timeout-Seconds: 3\r\n",
    );
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (ns, probe) = (pair.a.clone(), probe.clone());
            thread::spawn(move || raw(&ns, probe))
        })
        .collect();
    // Both probes are running once their read requests have arrived.
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut senders = std::collections::BTreeSet::new();
    let mut buf = [0u8; 600];
    while senders.len() < 2 {
        let (_, from) = silent.recv_from(&mut buf).expect("RRQ of a held probe");
        senders.insert(from);
    }
    let (status, head, body) = raw(&pair.a, probe.clone()).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("\r\nretry-after: 1"), "{head}");
    assert!(body.contains("--web.max-concurrent-probes"), "{body}");
    // Other endpoints are not limited.
    assert_eq!(daemon.get("/metrics").unwrap().0, 200);
    for probe in held {
        let (status, _, body) = probe.join().unwrap().unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("tftp_probe_success 0"), "{body}");
    }
    // The slots are free again.
    let (status, _, body) = raw(
        &pair.a,
        get(
            &format!("/probe?module=tftp&target=127.0.0.1:{port}"),
            "X-Prometheus-Scrape-Timeout-Seconds: 1\r\n",
        ),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn oversized_and_malformed_requests_get_4xx() {
    let pair = VethPair::new();
    let _daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if]);
    let status = |request: Vec<u8>| raw(&pair.a, request).unwrap().0;

    // URIs: 8 KiB is served, one byte more is 414.
    let padding = |total: usize| "a".repeat(total - "/metrics?x=".len());
    assert_eq!(
        status(get(&format!("/metrics?x={}", padding(8192)), "")),
        200
    );
    assert_eq!(
        status(get(&format!("/metrics?x={}", padding(8193)), "")),
        414
    );
    assert_eq!(
        status(get(&format!("/metrics?x={}", padding(30_000)), "")),
        414
    );
    // Header sections: past 32 KiB, or past 100 fields, 431.
    let big = format!("X-Big: {}\r\n", "b".repeat(40_000));
    assert_eq!(status(get("/metrics", &big)), 431);
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(status(get("/metrics", &many)), 431);
    // Bodies: no endpoint takes one (the bodies are announced, not sent).
    let with = |method: &str, header: &str| {
        format!("{method} /metrics HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n")
            .into_bytes()
    };
    assert_eq!(status(with("GET", "Content-Length: 5000\r\n")), 413);
    assert_eq!(status(with("POST", "Content-Length: 1\r\n")), 413);
    assert_eq!(status(with("POST", "Transfer-Encoding: chunked\r\n")), 413);
    assert_eq!(status(with("POST", "Content-Length: 0\r\n")), 405);
    assert_eq!(status(with("GET", "Content-Length: 0\r\n")), 200);
    // Malformed heads: hyper answers 400.
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /metrics HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: \x01\r\n\r\n",
    ] {
        assert_eq!(
            status(bad.to_vec()),
            400,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Bad probe parameters are the prober's 400, not a 5xx.
    assert_eq!(status(get("/probe?module=nope", "")), 400);
    assert_eq!(status(get("/probe?module=tftp&target=%zz", "")), 400);
}

/// The `href="..."` values of an HTML page.
fn links(page: &str) -> Vec<String> {
    page.split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(link, _)| link.to_string()))
        .collect()
}

#[test]
fn landing_page_lists_recent_probes_escaped_with_their_logs() {
    let pair = VethPair::new();
    let daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if]);
    let (status, page) = daemon.get("/").unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("No <code>/probe</code> request yet"),
        "{page}"
    );
    for module in ["ping", "tftp", "iperf3"] {
        assert!(
            page.contains(&format!(
                "<tr><td>{module}</td><td>{module}</td><td>enabled</td></tr>"
            )),
            "{page}"
        );
    }
    // The datapath's programs on the test's interface, with their attach mode.
    let tc_row = |mode: &str| {
        format!(
            "<tr><td>{}</td><td>tc_ingress</td><td>{mode}</td>",
            pair.a_if
        )
    };
    assert!(
        page.contains(&tc_row("tcx")) || page.contains(&tc_row("netlink")),
        "{page}"
    );
    assert!(
        !page.contains("<script") && !page.contains("src="),
        "{page}"
    );

    // A probe that runs and fails (a TFTP "server" that never answers), and one whose target
    // is markup.
    let silent = in_netns(&pair.a, || UdpSocket::bind("127.0.0.1:0").unwrap());
    let port = silent.local_addr().unwrap().port();
    let (status, _, body) = raw(
        &pair.a,
        get(
            &format!("/probe?module=tftp&target=127.0.0.1:{port}"),
            "X-Prometheus-Scrape-Timeout-Seconds: 1\r\n",
        ),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = daemon
        .get("/probe?module=tftp&target=%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        .unwrap();
    assert_ne!(status, 500, "{body}");
    let (status, page) = daemon.get("/").unwrap();
    assert_eq!(status, 200);
    assert!(!page.contains("<script"), "{page}");
    assert!(
        page.contains("<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>"),
        "{page}"
    );
    let row = page
        .lines()
        .find(|line| line.contains(&format!("<td>127.0.0.1:{port}</td>")))
        .unwrap_or_else(|| panic!("no row for the TFTP probe: {page}"));
    assert!(
        row.contains("<td>tftp</td>") && row.contains("<td>failure</td>"),
        "{row}"
    );
    // Every link on the page answers, the probe's log among them.
    let found = links(&page);
    for link in [
        "/metrics",
        "/config",
        "/-/healthy",
        "/-/ready",
        "/logs?id=1",
        "/logs?id=2",
    ] {
        assert!(found.iter().any(|l| l == link), "{link} missing: {found:?}");
    }
    for link in &found {
        assert_eq!(daemon.get(link).unwrap().0, 200, "{link}");
    }
    let (_, log) = daemon.get("/logs?id=1").unwrap();
    assert!(
        log.starts_with(&format!(
            "Probe 1: module tftp, target 127.0.0.1:{port}, failure"
        )) && log.contains("Logs for the probe:")
            && log.contains("tftp_probe_success 0"),
        "{log}"
    );

    // The ring keeps the last 100 requests (unknown modules are recorded too).
    for _ in 0..100 {
        assert_eq!(daemon.get("/probe?module=nope&target=x").unwrap().0, 400);
    }
    let (_, page) = daemon.get("/").unwrap();
    assert_eq!(page.matches("/logs?id=").count(), 100, "{page}");
    assert!(page.contains("href=\"/logs?id=102\"") && !page.contains("href=\"/logs?id=2\""));
    let (status, body) = daemon.get("/logs?id=2").unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not among the last 100"), "{body}");
    let (_, log) = daemon.get("/logs?id=102").unwrap();
    assert!(
        log.contains("bad request") && log.contains("unknown module \"nope\""),
        "{log}"
    );
}
