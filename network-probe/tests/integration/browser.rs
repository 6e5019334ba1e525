//! The landing page (`/`) as an operator sees it: loaded in a real headless browser (Debian's
//! chromium), drawn to `target/test-artefacts/browser/landing.png`, read back from the
//! browser's DOM (recent probes, modules, the datapath's interfaces with their attach mode, the
//! docs), and every link on it followed: in the browser, and over HTTP for its status and
//! content type; the documentation's links (`/docs/`, one per document) give each document of
//! the source tree as it is.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, UdpSocket},
    time::Duration,
};

use network_probe_testkit::{
    Daemon, VethPair,
    browser::{Chromium, artefacts},
    dotted, get, in_netns,
};

/// The `href="..."` values of a document.
fn links(document: &str) -> Vec<String> {
    document
        .split("href=\"")
        .skip(1)
        .filter_map(|rest| {
            rest.split_once('"')
                .map(|(link, _)| link.replace("&amp;", "&"))
        })
        .collect()
}

/// Text as the browser's DOM serialises it.
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The operator documents of the source tree, as the daemon embeds them: README.md and
/// docs/*.md, with their text.
fn documents() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut documents = vec![(
        "README.md".to_string(),
        std::fs::read_to_string(root.join("README.md")).unwrap(),
    )];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "md") {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            documents.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
    documents
}

#[test]
fn landing_page_in_headless_chromium() {
    let chromium = Chromium::new();
    let pair = VethPair::new();
    let daemon = Daemon::start(&pair.a, &["--interface", &pair.a_if]);
    let base = format!("http://{}", daemon.listen);

    // Two probes: a ping that succeeds (the peer namespace) and a TFTP probe of a "server"
    // that never answers.
    let peer = dotted(pair.b_addr);
    let (status, body) = daemon
        .get(&format!("/probe?module=ping&target={peer}"))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("probe_success 1"), "{body}");
    let silent = in_netns(&pair.a, || UdpSocket::bind("127.0.0.1:0").unwrap());
    let port = silent.local_addr().unwrap().port();
    // With a 1 s scrape timeout, as Prometheus would send it: the probe fails after ~1 s.
    let listen = daemon.listen;
    let response = in_netns(&pair.a, move || {
        let mut stream = TcpStream::connect(listen).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET /probe?module=tftp&target=127.0.0.1:{port} HTTP/1.1\r\nHost: {listen}\r\n\
             X-Prometheus-Scrape-Timeout-Seconds: 1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    });
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");

    let png = artefacts("browser").join("landing.png");
    chromium.screenshot(&pair.a, &format!("{base}/"), &png, (1280, 1100));
    eprintln!("landing page screenshot: {}", png.display());

    let dom = chromium.dom(&pair.a, &format!("{base}/"));
    assert!(dom.contains("<h1>network-probe</h1>"), "{dom}");
    // The recent probes, newest first, each with its result and a link to its log.
    let rows: Vec<&str> = dom
        .lines()
        .filter(|line| line.contains("/logs?id="))
        .collect();
    assert_eq!(rows.len(), 2, "{dom}");
    assert!(
        rows[0].contains(&format!(
            "<td>tftp</td><td>127.0.0.1:{port}</td><td>failure</td>"
        )) && rows[0].contains("href=\"/logs?id=2\""),
        "{}",
        rows[0]
    );
    assert!(
        rows[1].contains(&format!("<td>ping</td><td>{peer}</td><td>success</td>"))
            && rows[1].contains("href=\"/logs?id=1\""),
        "{}",
        rows[1]
    );
    // The configured modules.
    for module in ["ping", "tftp", "iperf3"] {
        assert!(
            dom.contains(&format!(
                "<tr><td>{module}</td><td>{module}</td><td>enabled</td></tr>"
            )),
            "{module}: {dom}"
        );
    }
    // The datapath's programs on the test's interface with their attach mode.
    for program in ["tc_ingress", "tc_egress"] {
        let row = |mode: &str| {
            format!(
                "<tr><td>{}</td><td>{program}</td><td>{mode}</td></tr>",
                pair.a_if
            )
        };
        assert!(
            dom.contains(&row("tcx")) || dom.contains(&row("netlink")),
            "{program}: {dom}"
        );
    }
    // Where the documentation is.
    assert!(
        dom.contains("/usr/share/doc/network-probe/") && dom.contains("man network-probe"),
        "{dom}"
    );

    // Every link: in the browser (its text shown), and over HTTP (200, its content type).
    let found = links(&dom);
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
    // The documentation: the index, and each document of the source tree (README.md and
    // docs/*.md) linked from the page and from the index.
    let documents = documents();
    let index = chromium.dom(&pair.a, &format!("{base}/docs/"));
    assert!(index.contains("<h1>Documentation</h1>"), "{index}");
    let indexed = links(&index);
    for (name, _) in &documents {
        let link = format!("/docs/{name}");
        assert!(found.contains(&link), "{link} missing on /: {found:?}");
        assert!(
            indexed.contains(&link),
            "{link} missing on /docs/: {indexed:?}"
        );
    }
    assert!(
        found.iter().any(|l| l == "/docs/"),
        "/docs/ missing: {found:?}"
    );
    for link in &found {
        assert!(link.starts_with('/'), "{link}: a link off the daemon");
        let (status, content_type, body) = get(&pair.a, daemon.listen, link, None);
        assert_eq!(status, 200, "{link}: {body}");
        if link == "/docs/" {
            assert_eq!(content_type, "text/html; charset=utf-8", "{link}");
            assert!(body.contains("<h1>Documentation</h1>"), "{body}");
            continue;
        }
        let expected = if link == "/metrics" {
            "text/plain; version=0.0.4; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        };
        assert_eq!(content_type, expected, "{link}");
        if let Some(name) = link.strip_prefix("/docs/") {
            let (_, text) = documents
                .iter()
                .find(|(known, _)| known == name)
                .unwrap_or_else(|| panic!("{link}: not a document of the source tree"));
            assert!(body == *text, "{link}: not the file's content");
        }
        let shown = chromium.dom(&pair.a, &format!("{base}{link}"));
        let first_line = body.lines().next().unwrap_or_default();
        assert!(
            !first_line.is_empty() && shown.contains(&escaped(first_line)),
            "{link}: the browser shows no {first_line:?}: {shown}"
        );
    }
    let (_, log) = daemon.get("/logs?id=1").unwrap();
    assert!(
        log.starts_with(&format!("Probe 1: module ping, target {peer}, success")),
        "{log}"
    );
}
