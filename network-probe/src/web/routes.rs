//! Answering one request: the limits hyper leaves to us (URI over 8 KiB: 414, any body: 413),
//! basic auth, the configured response headers, then the endpoints: the landing page and
//! `/logs` (in [`super::landing`]), the telemetry path (rendered by [`super::scrape`]),
//! `/-/healthy`, `/-/ready`, `/config`, `/-/reload`, `/probe` (in [`super::probe_route`]) and
//! the embedded documentation `/docs/` (in [`super::docs`]),
//! answered through [`super::response`].

use std::sync::{Arc, atomic::Ordering};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_LENGTH, HeaderValue, TRANSFER_ENCODING, WWW_AUTHENTICATE},
};

use super::{
    AppState, docs, landing,
    probe_route::handle_probe,
    response::{text, with_type},
    scrape::{Body, telemetry},
};
use crate::config::reload::ReloadError;

/// Longest request URI (path and query) answered; longer ones get 414.
const MAX_URI_BYTES: usize = 8 * 1024;

/// Checks the limits and credentials, routes the request and adds the configured headers.
/// Never fails: every outcome is a response. `default_module` as in [`serve`](super::serve).
pub(super) async fn handle(
    state: &Arc<AppState>,
    default_module: Option<&'static str>,
    request: Request<Incoming>,
) -> Response<Body> {
    let mut response = match refusal(&request) {
        Some(refused) => refused.map(Body::Left),
        None if !state.web.authorized(&request).await => {
            let mut response = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"network-probe\", charset=\"UTF-8\""),
            );
            response.map(Body::Left)
        }
        None => route(state, default_module, request).await,
    };
    for (name, value) in &state.web.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// The 4xx for a request beyond the limits: a URI over [`MAX_URI_BYTES`] (414), or any body
/// (413: no endpoint takes one). hyper itself answers a head over `listen::MAX_HEAD_BYTES` or with
/// more than 100 fields (431) and a malformed head (400).
fn refusal(request: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let uri_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |path| path.as_str().len());
    if uri_bytes > MAX_URI_BYTES {
        return Some(with_type(
            StatusCode::URI_TOO_LONG,
            "text/plain; charset=utf-8",
            format!("the URI has {uri_bytes} bytes; at most {MAX_URI_BYTES} are accepted\n"),
        ));
    }
    let headers = request.headers();
    let declared_body = headers
        .get(CONTENT_LENGTH)
        .is_some_and(|length| length.as_bytes() != b"0")
        || headers.contains_key(TRANSFER_ENCODING);
    if declared_body {
        return Some(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "no endpoint takes a request body\n",
        ));
    }
    None
}

/// Routes one request that passed the limits and authentication.
async fn route(
    state: &Arc<AppState>,
    default_module: Option<&'static str>,
    request: Request<Incoming>,
) -> Response<Body> {
    let readable = request.method() == Method::GET || request.method() == Method::HEAD;
    if readable && request.uri().path() == state.telemetry_path {
        return match state.scrapes.render(state, std::time::Instant::now()).await {
            Some(scrape) => telemetry(&request, scrape),
            None => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
            .map(Body::Left),
        };
    }
    route_text(state, default_module, request)
        .await
        .map(Body::Left)
}

/// Routes a request for anything but the telemetry path.
async fn route_text(
    state: &Arc<AppState>,
    default_module: Option<&'static str>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if request.uri().path() == "/-/reload" {
        return handle_reload(state, &request).await;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let path = request.uri().path();
    if path == "/probe" {
        return handle_probe(state, default_module, &request).await;
    }
    if let Some(document) = docs::route(path) {
        return document;
    }
    match path {
        "/" => with_type(
            StatusCode::OK,
            "text/html; charset=utf-8",
            landing::page(state),
        ),
        "/logs" => match landing::log(state, request.uri().query().unwrap_or("")) {
            Ok(log) => with_type(StatusCode::OK, "text/plain; charset=utf-8", log),
            Err(why) => with_type(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", why),
        },
        "/-/healthy" => text(StatusCode::OK, "Healthy\n"),
        "/config" => with_type(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            state.config.render(),
        ),
        "/-/ready" if state.ready.load(Ordering::Acquire) => text(StatusCode::OK, "Ready\n"),
        "/-/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "Not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "Not Found\n"),
    }
}

/// `POST` (or `PUT`) `/-/reload`: reads `--config.file` again. 200 when the new file is in
/// force (listing what needs a restart), 409 with the error when it is not (the previous
/// configuration stays); other methods get 405. Without `--web.enable-lifecycle` POST and PUT
/// get 403 (as in Prometheus; SIGHUP still reloads).
async fn handle_reload(state: &AppState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::POST && request.method() != Method::PUT {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST /-/reload to reload the configuration\n",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST, PUT"));
        return response;
    }
    if !state.enable_lifecycle {
        return text(
            StatusCode::FORBIDDEN,
            "Lifecycle API is not enabled: start network-probe with --web.enable-lifecycle \
             to reload by POST /-/reload (SIGHUP always reloads)\n",
        );
    }
    // Reading and checking files: off the runtime thread.
    let config = Arc::clone(&state.config);
    let outcome = tokio::task::spawn_blocking(move || config.reload())
        .await
        .unwrap_or_else(|err| {
            Err(ReloadError::Invalid(crate::config::ConfigError {
                path: String::new(),
                reason: format!("the reload task failed: {err}"),
            }))
        });
    match outcome {
        Ok(reloaded) => {
            let mut body = String::from("configuration reloaded\n");
            for line in &reloaded.needs_restart {
                body.push_str(&format!("needs restart: {line}\n"));
            }
            with_type(StatusCode::OK, "text/plain; charset=utf-8", body)
        }
        Err(err) => with_type(
            StatusCode::CONFLICT,
            "text/plain; charset=utf-8",
            format!("{err}\n"),
        ),
    }
}
