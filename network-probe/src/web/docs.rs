//! `/docs/` and `/docs/<name>`: the operator documentation (README.md and docs/*.md) as built
//! into the binary, read-only. The files are embedded at compile time (`include_str!`), so a
//! request reads no file: `/docs/` is an HTML index of the documents (linked from the landing
//! page), `/docs/<name>` one document as `text/plain; charset=utf-8` (its Markdown source), and
//! any other name a 404 that points at the index without echoing the name back. Everything the
//! index shows is escaped. Requests go through the same limits, authentication and headers as
//! every other endpoint (see [`super::routes`]).
//!
//! A unit test checks that every `docs/*.md` of the source tree is in [`DOCUMENTS`] and that
//! each embedded text is the file's.

use std::fmt::Write as _;

use http_body_util::Full;
use hyper::{
    Response, StatusCode,
    body::Bytes,
    header::{CONTENT_TYPE, HeaderValue},
};

use super::{html::escape, response::with_type};

/// Where the documents are served.
pub(super) const DOCS_PATH: &str = "/docs/";

/// Every document: its name under [`DOCS_PATH`] and its text.
pub(super) const DOCUMENTS: &[(&str, &str)] = &[
    ("README.md", include_str!("../../../README.md")),
    (
        "configuration.md",
        include_str!("../../../docs/configuration.md"),
    ),
    (
        "connection-outcomes.md",
        include_str!("../../../docs/connection-outcomes.md"),
    ),
    ("deployment.md", include_str!("../../../docs/deployment.md")),
    ("fleet.md", include_str!("../../../docs/fleet.md")),
    ("fuzzing.md", include_str!("../../../docs/fuzzing.md")),
    ("iperf3.md", include_str!("../../../docs/iperf3.md")),
    ("jool.md", include_str!("../../../docs/jool.md")),
    ("kernels.md", include_str!("../../../docs/kernels.md")),
    ("operations.md", include_str!("../../../docs/operations.md")),
    ("ping.md", include_str!("../../../docs/ping.md")),
    (
        "probe-routing.md",
        include_str!("../../../docs/probe-routing.md"),
    ),
    ("prometheus.md", include_str!("../../../docs/prometheus.md")),
    ("signals.md", include_str!("../../../docs/signals.md")),
    ("soak.md", include_str!("../../../docs/soak.md")),
    ("tftp.md", include_str!("../../../docs/tftp.md")),
    ("web.md", include_str!("../../../docs/web.md")),
];

/// A document's title: its first line without the Markdown heading marks.
fn title(text: &str) -> &str {
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches('#')
        .trim()
}

/// The answer for `path` when it is under `/docs`, else `None`.
pub(super) fn route(path: &str) -> Option<Response<Full<Bytes>>> {
    if path == "/docs" || path == DOCS_PATH {
        return Some(with_type(
            StatusCode::OK,
            "text/html; charset=utf-8",
            index(),
        ));
    }
    let name = path.strip_prefix(DOCS_PATH)?;
    Some(match DOCUMENTS.iter().find(|(known, _)| *known == name) {
        Some((_, text)) => {
            // The embedded text itself, not a copy per request.
            let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        }
        None => with_type(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!(
                "no such document: this binary serves only the {} listed at {DOCS_PATH}\n",
                DOCUMENTS.len()
            ),
        ),
    })
}

/// The HTML index of [`DOCUMENTS`].
pub(super) fn index() -> String {
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>network-probe documentation</title></head><body>\n\
         <h1>Documentation</h1>\n<p>The operator documentation of network-probe {}, as built \
         into this binary (Markdown source, served as plain text).</p>\n<ul>\n",
        escape(env!("CARGO_PKG_VERSION"))
    );
    for (name, text) in DOCUMENTS {
        let name = escape(name);
        let _ = writeln!(
            html,
            "<li><a href=\"{DOCS_PATH}{name}\">{name}</a>: {}</li>",
            escape(title(text))
        );
    }
    html.push_str("</ul>\n<p><a href=\"/\">Back to the landing page</a></p>\n</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_document_of_the_source_tree_is_embedded_as_it_is() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut on_disk = vec!["README.md".to_string()];
        for entry in std::fs::read_dir(root.join("docs")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".md") {
                on_disk.push(name);
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = DOCUMENTS.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(
            embedded, on_disk,
            "add a docs/*.md file to DOCUMENTS in web/docs.rs"
        );
        for (name, text) in DOCUMENTS {
            let path = if *name == "README.md" {
                root.join(name)
            } else {
                root.join("docs").join(name)
            };
            assert_eq!(*text, std::fs::read_to_string(&path).unwrap(), "{name}");
        }
    }

    #[test]
    fn serves_each_document_and_refuses_other_names() {
        let body = |response: Response<Full<Bytes>>| {
            use http_body_util::BodyExt as _;
            let status = response.status();
            let content_type = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_string();
            let bytes = futures_executor(response.into_body().collect());
            (
                status,
                content_type,
                String::from_utf8(bytes.unwrap().to_bytes().to_vec()).unwrap(),
            )
        };
        let (status, content_type, text) = body(route("/docs/operations.md").unwrap());
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "text/plain; charset=utf-8");
        assert!(text.starts_with("# Operations"), "{text}");
        for unknown in [
            "/docs/nope.md",
            "/docs/../Cargo.toml",
            "/docs/README.md/",
            "/docs/<script>",
            "/docs/%2e%2e/README.md",
        ] {
            let (status, _, text) = body(route(unknown).unwrap());
            assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
            assert!(text.starts_with("no such document"), "{unknown}: {text}");
            assert!(!text.contains("script") && !text.contains(".."), "{text}");
        }
        assert!(route("/documents").is_none());
        assert!(route("/").is_none());
        let (status, content_type, html) = body(route("/docs").unwrap());
        assert_eq!(
            (status, content_type.as_str()),
            (StatusCode::OK, "text/html; charset=utf-8")
        );
        assert_eq!(html, index());
    }

    #[test]
    fn the_index_links_every_document_with_its_escaped_title() {
        let html = index();
        for (name, text) in DOCUMENTS {
            assert!(
                html.contains(&format!(
                    "<li><a href=\"/docs/{name}\">{name}</a>: {}</li>",
                    escape(title(text))
                )),
                "{name}: {html}"
            );
        }
        // A backquoted title keeps its text; markup in one would be escaped.
        assert_eq!(title("# `/probe` routing\n"), "`/probe` routing");
        assert_eq!(escape(title("## <b>x</b>")), "&lt;b&gt;x&lt;/b&gt;");
    }

    /// Polls a future that is ready at once (a full body).
    fn futures_executor<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }
}
