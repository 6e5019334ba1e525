//! Start-up order, signal handling and shutdown of the daemon.
//!
//! Order: check privileges and kernel features, resolve interfaces, bind the listen address
//! (so a port clash fails before anything is attached), load and attach the datapath, serve
//! until SIGTERM/SIGINT, then detach everything and return.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use log::info;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::Cli,
    datapath::{Datapath, DatapathConfig},
    error::{Error, Result},
    flow_tracker::FlowTracker,
    flows::FlowOptions,
    http::{self, AppState},
    metrics, preflight, rtnetlink,
};

/// Sets up env_logger at `--log.level`.
pub fn init_logging(cli: &Cli) -> Result<()> {
    let level = cli.log_level.filter();
    env_logger::Builder::new()
        .filter_level(level)
        // aya narrates every relocation at debug level; show it only when tracing.
        .filter_module("aya", level.min(log::LevelFilter::Info))
        .filter_module("aya_obj", level.min(log::LevelFilter::Info))
        .format_target(false)
        .try_init()
        .map_err(|err| Error::Other(format!("initialising logging: {err}")))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(cli: Cli) -> Result<()> {
    preflight::check_capabilities()?;
    preflight::check_kernel()?;
    let interfaces = select_interfaces(&cli.interfaces)?;
    let listener = http::bind(&cli.listen_address)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Other(format!("starting the async runtime: {err}")))?;
    runtime.block_on(async move {
        let mut sigterm = signal(SignalKind::terminate())
            .map_err(|err| Error::Other(format!("installing the SIGTERM handler: {err}")))?;
        let mut sigint = signal(SignalKind::interrupt())
            .map_err(|err| Error::Other(format!("installing the SIGINT handler: {err}")))?;

        let datapath = Arc::new(Datapath::load(DatapathConfig {
            ingress: cli.ingress,
            flow_map_entries: cli.flow_map_entries,
        })?);
        for interface in &interfaces {
            datapath.attach(interface)?;
        }
        let flows = Arc::new(FlowTracker::new(
            Arc::clone(&datapath),
            FlowOptions {
                labels: cli.flow_labels,
                max_series: cli.flow_max_series,
                idle_timeout: cli.flow_idle_timeout,
            },
        ));
        // Sweep often enough to see evictions and to remove idle flows without scrapes.
        let sweep_every =
            (cli.flow_idle_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(10));
        let sweeper = Arc::clone(&flows);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(sweep_every);
            loop {
                ticker.tick().await;
                drop(sweeper.refresh());
            }
        });
        let state = Arc::new(AppState {
            registry: metrics::registry(flows),
            telemetry_path: cli.telemetry_path.clone(),
            ready: true.into(),
        });
        let shutdown = async {
            let name = tokio::select! {
                _ = sigterm.recv() => "SIGTERM",
                _ = sigint.recv() => "SIGINT",
            };
            info!("{name} received, shutting down");
        };
        http::serve(listener, Arc::clone(&state), shutdown).await?;
        state.ready.store(false, Ordering::Release);
        datapath.detach_all();
        info!("detached from all interfaces; bye");
        Ok(())
    })
}

/// The interfaces to attach to: the `--interface` flags (each must exist), or else those of the
/// default routes.
pub fn select_interfaces(requested: &[String]) -> Result<Vec<String>> {
    let mut interfaces = if requested.is_empty() {
        let found = rtnetlink::default_route_interfaces()?;
        info!(
            "no --interface given; using the default-route interfaces: {}",
            found.join(", ")
        );
        found
    } else {
        requested.to_vec()
    };
    interfaces.sort();
    interfaces.dedup();
    for interface in &interfaces {
        rtnetlink::interface_index(interface)?;
    }
    Ok(interfaces)
}
