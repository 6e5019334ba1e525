//! Building responses: plain-text answers, and a metrics exposition in the format the client's
//! Accept header asks for (OpenMetrics for Prometheus, the text format 0.0.4 for curl, promtool
//! and other clients that do not know OpenMetrics). Shared by the routes, the telemetry path and
//! `/probe`.

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ACCEPT, CONTENT_TYPE},
};

use crate::metrics;

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_004_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A 200 with `openmetrics` as OpenMetrics when the client's Accept header asks for it at
/// least as much as for plain text (Prometheus does), else in the Prometheus text format 0.0.4
/// (curl, promtool and other clients that do not know OpenMetrics).
pub(super) fn exposition(request: &Request<Incoming>, openmetrics: &str) -> Response<Full<Bytes>> {
    match negotiate(request) {
        (true, content_type) => with_type(StatusCode::OK, content_type, openmetrics.to_string()),
        (false, content_type) => with_type(
            StatusCode::OK,
            content_type,
            metrics::openmetrics_to_text_004(openmetrics),
        ),
    }
}

/// Whether `request` gets OpenMetrics (see [`wants_openmetrics`]), and the content type of
/// the answer: shared by [`exposition`] and the telemetry path.
pub(super) fn negotiate(request: &Request<Incoming>) -> (bool, &'static str) {
    let accept = request
        .headers()
        .get(ACCEPT)
        .and_then(|value| value.to_str().ok());
    if wants_openmetrics(accept) {
        (true, OPENMETRICS_CONTENT_TYPE)
    } else {
        (false, TEXT_004_CONTENT_TYPE)
    }
}

/// Whether an Accept header gives `application/openmetrics-text` a quality above 0 and at
/// least that of plain text (`text/plain`, `text/*`, `*/*`).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let (mut openmetrics, mut plain) = (0.0f32, 0.0f32);
    for range in accept.unwrap_or("").split(',') {
        let range = range.to_ascii_lowercase();
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let quality = parts
            .find_map(|parameter| parameter.strip_prefix("q="))
            .map_or(Some(1.0), |q| q.parse::<f32>().ok())
            .unwrap_or(0.0);
        match media {
            "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
            "text/plain" | "text/*" | "*/*" => plain = plain.max(quality),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= plain
}

pub(super) fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body.to_string())
}

pub(super) fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for() {
        // What Prometheus 2.42 sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,\
            application/openmetrics-text;version=0.0.1;q=0.75,\
            text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
        for other in [
            None,
            Some(""),
            Some("*/*"),
            Some("text/plain"),
            Some("text/plain;version=0.0.4,application/openmetrics-text;q=0.5"),
            Some("application/openmetrics-text;q=0"),
            Some("application/openmetrics-text;q=bad"),
        ] {
            assert!(!wants_openmetrics(other), "{other:?}");
        }
    }
}
