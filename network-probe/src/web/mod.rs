//! The HTTP side: binding `--web.listen-address` and one hyper service with the landing page,
//! the telemetry path, `/-/healthy`, `/-/ready`, `/probe`, `/config` and `/-/reload`; in front of it TLS and basic auth
//! from `--web.config.file` (parsed in [`crate::config::web`]) and the request limits (URI, header
//! section, body, concurrent probes).
//!
//! - `listen`: binding, accepting, TLS handshakes, hyper's connection limits.
//! - `connections`: `--web.max-connections`, the write timeout, and their metrics.
//! - `auth`: the TLS acceptor, basic auth with bcrypt, response headers, the probe limit.
//! - `routes`: request limits, authentication and the endpoints, content negotiation.
//! - `probe_route`: `/probe`, the HTTP face of [`crate::probe::handler`].
//! - `scrape`: the telemetry path's shared renders and streamed bodies.
//! - `history`: the ring of recent `/probe` requests; `landing`: the landing page and `/logs`.
//! - `docs`: `/docs/`, the operator documentation embedded in the binary.

mod auth;
mod connections;
mod docs;
mod history;
mod html;
mod landing;
mod listen;
mod probe_route;
mod response;
mod routes;
mod scrape;

use std::sync::{Arc, atomic::AtomicBool};

use prometheus_client::registry::Registry;

pub use self::{
    auth::{WebPolicy, basic_credentials, load_web_config},
    connections::Connections,
    history::ProbeHistory,
    listen::{bind, serve},
    response::wants_openmetrics,
    scrape::{Scrape, ScrapeCoalescer},
};
use crate::{config::reload::ConfigState, probe::Probers};

/// What the service needs to answer requests.
#[derive(Debug)]
pub struct AppState {
    pub registry: Registry,
    /// The flow table, whose series [`crate::flows::exposition`] writes next to the registry.
    pub flows: Arc<crate::flows::tracker::FlowTracker>,
    pub telemetry_path: String,
    /// Set once the datapath is attached; `/-/ready` answers 503 before that.
    pub ready: AtomicBool,
    pub probers: Probers,
    /// The configuration in force (probe modules, `--probe.allow`), reloadable.
    pub config: Arc<ConfigState>,
    /// Basic auth, response headers and the `/probe` concurrency limit.
    pub web: WebPolicy,
    /// Renders of the telemetry path, shared by concurrent scrapes.
    pub scrapes: ScrapeCoalescer,
    /// The slots of `--web.max-connections`, shared by all listeners.
    pub connections: Arc<Connections>,
    /// `--web.enable-lifecycle`: whether `POST /-/reload` is served (else 403).
    pub enable_lifecycle: bool,
    /// The recent `/probe` requests the landing page lists.
    pub history: ProbeHistory,
}
