//! Start-up order, signal handling, shutdown, and the task that follows interfaces as they come
//! and go.
//!
//! Order: check privileges and kernel features, resolve interfaces, bind the listen address
//! and the `--web.probe-listen` addresses (so a port clash fails before anything is attached), load the datapath, subscribe to link
//! events, attach, serve until SIGTERM/SIGINT, then detach everything and return. `--config.file`
//! is read first (its settings, overridden by flags, are what the rest uses) and again on
//! SIGHUP.
//!
//! The configured interfaces (the `--interface` names, or the default-route interfaces found at
//! start) are followed by name: when one disappears the datapath forgets it (its counters are
//! kept), when one with that name appears again it is attached again.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use log::{debug, error, info, warn};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    cli::Cli,
    config::{self, reload::ConfigState},
    error::{Error, Result},
    flows::table::FlowOptions,
    flows::tracker::FlowTracker,
    kernel::datapath::Datapath,
    kernel::drops::{DropsMode, DropsStatus},
    kernel::preflight,
    kernel::privileges,
    kernel::rtnetlink::{self, LinkEvent, LinkSubscription, Received},
    metrics,
    probe::{self, Probers},
    web::{self, AppState},
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

/// Reads `--config.file` (if given): the checked configuration, or a start-up error naming the
/// field. Logs the file settings that flags override.
pub fn load_config(flags: &Cli) -> Result<config::Config> {
    let Some(path) = &flags.config_file else {
        return Ok(config::Config::default());
    };
    let loaded = config::load(path).map_err(|err| Error::Config {
        path: path.display().to_string(),
        reason: err.to_string(),
    })?;
    for overridden in loaded.overridden(flags) {
        info!("--config.file setting {overridden} is overridden by the flag");
    }
    Ok(loaded)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(flags: Cli) -> Result<()> {
    limit_malloc_arenas();
    let loaded = load_config(&flags)?;
    let config_state = Arc::new(ConfigState::new(&flags, loaded));
    // From here on: the settings in force (flags over file over defaults).
    let cli = config_state.start_settings();
    let (web_config, tls) = web::load_web_config(cli.web_config_file.as_deref())?;
    preflight::check_capabilities()?;
    let kernel = preflight::check_kernel()?;
    let interfaces = select_interfaces(&cli.interfaces)?;
    let listener = web::bind(&cli.listen_address)?;
    // `--web.probe-listen`: more listeners, each with its default /probe module.
    let probe_listeners = cli
        .probe_listen
        .iter()
        .map(|extra| Ok((web::bind(&extra.address)?, extra.module)))
        .collect::<Result<Vec<_>>>()?;
    check_descriptor_limit(&cli);
    let allowlist = &config_state.current().allowlist;
    if allowlist.is_empty() {
        info!("no --probe.allow given: /probe may reach any target");
    } else {
        info!("/probe may reach only: {}", allowlist.describe());
    }

    // Before anything resolves a name; the threads themselves start with the first lookups.
    probe::target::set_max_concurrent_lookups(cli.max_concurrent_lookups as usize)
        .map_err(Error::Other)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Other(format!("starting the async runtime: {err}")))?;
    runtime.block_on(async move {
        let mut sigterm = signal(SignalKind::terminate())
            .map_err(|err| Error::Other(format!("installing the SIGTERM handler: {err}")))?;
        let mut sigint = signal(SignalKind::interrupt())
            .map_err(|err| Error::Other(format!("installing the SIGINT handler: {err}")))?;
        let mut sighup = signal(SignalKind::hangup())
            .map_err(|err| Error::Other(format!("installing the SIGHUP handler: {err}")))?;

        let datapath = Arc::new(Datapath::load(cli.datapath_config(kernel.tcx))?);
        if let Some(kernel_log) = datapath.take_kernel_log() {
            tokio::spawn(crate::kernel::events::forward(kernel_log));
        }
        // Subscribe before attaching: a change after the attach is then queued, not missed.
        let link_events = LinkSubscription::new()
            .and_then(|subscription| {
                // SAFETY: the subscription owns its socket and keeps that one descriptor open
                // until it is dropped, which the AsyncFd does.
                Ok(unsafe { AsyncFd::register_with_interest(subscription, Interest::READABLE) }?)
            })
            .map_err(|err| Error::Other(format!("subscribing to link events: {err}")))?;
        for interface in &interfaces {
            datapath.attach(interface)?;
        }
        start_drops(&datapath, cli.drops)?;
        let link_watcher = tokio::spawn(watch_links(
            link_events,
            LinkWatcher {
                datapath: Arc::clone(&datapath),
                configured: interfaces.iter().cloned().collect(),
            },
        ));
        let flows = Arc::new(FlowTracker::new(
            Arc::clone(&datapath),
            FlowOptions {
                labels: cli.flow_labels,
                max_series: cli.flow_max_series,
                idle_timeout: cli.flow_idle_timeout,
                families: cli.flow_families,
                rank_by: cli.flow_rank_by,
                rank_window: cli.flow_rank_window,
            },
            cli.state_file(),
        ));
        // Sweep often enough to see evictions and to remove idle flows without scrapes.
        let sweep_every =
            (cli.flow_idle_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(10));
        let sweeper = Arc::clone(&flows);
        let saver = Arc::clone(&flows);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(sweep_every);
            loop {
                ticker.tick().await;
                // Off the runtime thread: the sweep waits for the flow table behind scrapes and
                // reads the whole map, and probes must not wait with it. (The first tick runs
                // after the capability drop below, so the blocking thread inherits the reduced
                // set.)
                let sweeper = Arc::clone(&sweeper);
                drop(
                    tokio::task::spawn_blocking(move || {
                        drop(sweeper.refresh());
                        // Hand a scrape's freed memory back between scrapes.
                        crate::support::memory::trim_heap();
                    })
                    .await,
                );
            }
        });
        let probers = Probers::new(&cli.ping);
        let connections = web::Connections::new(cli.max_connections as usize);
        let mut registry = metrics::registry(Arc::clone(&flows), &cli.jool, &probers);
        registry.register_collector(config_state.collector());
        registry.register_collector(connections.collector());
        let state = Arc::new(AppState {
            registry,
            flows,
            telemetry_path: cli.telemetry_path.clone(),
            ready: true.into(),
            probers,
            config: Arc::clone(&config_state),
            web: web::WebPolicy::new(&web_config, cli.max_concurrent_probes as usize),
            scrapes: web::ScrapeCoalescer::default(),
            connections,
            enable_lifecycle: cli.enable_lifecycle,
            history: web::ProbeHistory::default(),
        });
        // Everything privileged at start is done: keep only what re-attaching and the probers
        // need (see privileges.rs).
        let dropped = privileges::drop_to_runtime_set()
            .map_err(|err| Error::Other(format!("dropping capabilities: {err}")))?;
        info!(
            "capabilities kept: {} (dropped {} of {}{})",
            privileges::names(dropped.kept).join(", "),
            (dropped.before & !dropped.kept).count_ones(),
            dropped.before.count_ones(),
            if dropped.bounding_reduced {
                "; bounding set reduced too"
            } else {
                "; bounding set left to the service manager"
            }
        );
        // SIGHUP: reload --config.file (the outcome is logged and exported).
        let reloader = Arc::clone(&config_state);
        let hangups = tokio::spawn(async move {
            while sighup.recv().await.is_some() {
                info!("SIGHUP received, reloading the configuration");
                let reloader = Arc::clone(&reloader);
                drop(tokio::task::spawn_blocking(move || reloader.reload()).await);
            }
        });
        let shutdown = async {
            let name = tokio::select! {
                _ = sigterm.recv() => "SIGTERM",
                _ = sigint.recv() => "SIGINT",
            };
            info!("{name} received, shutting down");
        };
        let extra_servers: Vec<_> = probe_listeners
            .into_iter()
            .map(|(listener, module)| {
                let serving = web::serve(
                    listener,
                    Arc::clone(&state),
                    tls.clone(),
                    Some(module),
                    std::future::pending(),
                );
                tokio::spawn(async move {
                    if let Err(err) = serving.await {
                        error!("serving the {module} probe listener: {err}");
                    }
                })
            })
            .collect();
        web::serve(listener, Arc::clone(&state), tls, None, shutdown).await?;
        for server in extra_servers {
            server.abort();
        }
        state.ready.store(false, Ordering::Release);
        link_watcher.abort();
        hangups.abort();
        datapath.detach_all();
        for line in state.probers.shutdown() {
            match line {
                Ok(done) => info!("{done}"),
                Err(failed) => warn!("{failed}"),
            }
        }
        // The pinned maps stay; the state file completes them for the next start.
        saver.save();
        info!("detached from all interfaces; bye");
        Ok(())
    })
}

/// Descriptors the daemon holds besides connections and probe sockets: maps, programs and
/// links of the datapath, netlink sockets, listeners, the runtime's epoll and eventfds, the
/// state file, blocking threads' files. An idle daemon attached to one interface holds about
/// 30 (29 to 30 in tests/integration/hostile_web.rs); twice that leaves room for more
/// interfaces.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Descriptors a probe may hold at once (an iperf3 test: control and data connection).
const DESCRIPTORS_PER_PROBE: u64 = 2;

/// The descriptors `--web.max-connections` and `--web.max-concurrent-probes` can take, with
/// [`RESERVED_DESCRIPTORS`].
fn descriptors_needed(cli: &Cli) -> u64 {
    u64::from(cli.max_connections)
        + DESCRIPTORS_PER_PROBE * u64::from(cli.max_concurrent_probes)
        + RESERVED_DESCRIPTORS
}

/// Warns when RLIMIT_NOFILE is below what the limits can take (accepting would then fail with
/// EMFILE before `--web.max-connections` is reached, and probes with it), and when
/// `--web.max-connections` leaves no room beside `--web.max-concurrent-probes`.
fn check_descriptor_limit(cli: &Cli) {
    let needed = descriptors_needed(cli);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        warn!(
            "reading RLIMIT_NOFILE: {}; cannot check it against --web.max-connections",
            std::io::Error::last_os_error()
        );
    } else if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < needed {
        warn!(
            "the open file limit (RLIMIT_NOFILE) is {}, below the {needed} descriptors that \
             --web.max-connections {} and --web.max-concurrent-probes {} can take (plus \
             {RESERVED_DESCRIPTORS} of the daemon's own): raise it (LimitNOFILE= in the unit, \
             ulimit -n) or lower the limits",
            limit.rlim_cur, cli.max_connections, cli.max_concurrent_probes
        );
    } else {
        debug!(
            "open file limit {} (at most {needed} descriptors needed)",
            limit.rlim_cur
        );
    }
    if cli.max_connections <= cli.max_concurrent_probes {
        warn!(
            "--web.max-connections {} is not above --web.max-concurrent-probes {}: running \
             probes can take every connection slot and keep scrapes out",
            cli.max_connections, cli.max_concurrent_probes
        );
    }
}

/// Caps glibc's malloc arenas at two. Scrapes render on blocking threads and glibc gives each
/// thread its own arena and keeps what it freed there: the soak (16 concurrent scrapers, 100k
/// flows) held about 450 MB that way, and about 100 MB with one arena, at the same latencies.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) } != 1 {
        warn!("mallopt(M_ARENA_MAX) failed: memory may grow with concurrent scrapes");
    }
    if !crate::support::memory::map_large_blocks() {
        warn!("mallopt(M_MMAP_THRESHOLD) failed: memory may grow with large flow tables");
    }
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

/// Attaches the drop program when it is loaded, and says in the log whether drops are counted
/// and if not why (a failed attach stops the start only with `--datapath.drops on`).
fn start_drops(datapath: &Datapath, mode: DropsMode) -> Result<()> {
    let status = match datapath.attach_drops() {
        Ok(()) => datapath.drops_status(),
        Err(err) if mode == DropsMode::On => return Err(err),
        Err(err) => DropsStatus::Unavailable(err.to_string()),
    };
    match status {
        DropsStatus::Counting { reasons: 0 } => info!(
            "drop reasons: counting kernel drops (tp_btf/kfree_skb); this kernel's tracepoint              passes no reason (Linux < 5.17): every drop is reason=\"not_specified\""
        ),
        DropsStatus::Counting { reasons } => info!(
            "drop reasons: counting kernel drops (tp_btf/kfree_skb), {reasons} reasons named              by the kernel's BTF"
        ),
        DropsStatus::Off => info!("drop reasons: off (--datapath.drops off)"),
        DropsStatus::Unavailable(why) => {
            warn!("drop reasons: unavailable ({why}); running without network_probe_drops_total")
        }
    }
    Ok(())
}

/// Reads link events as they arrive and keeps the datapath attached to the configured
/// interfaces. After a receive error the interface list is re-read, at most once a second.
async fn watch_links(mut events: AsyncFd<LinkSubscription>, watcher: LinkWatcher) {
    loop {
        let mut ready = match events.readable_mut().await {
            Ok(ready) => ready,
            Err(err) => {
                error!(
                    "waiting for link events: {err}; interfaces that appear or disappear from \
                     now on are not followed"
                );
                return;
            }
        };
        let mut failed = false;
        // Drain what is queued; try_io clears the readiness when the socket would block.
        while let Ok(received) = ready.try_io(|fd| fd.get_mut().receive()) {
            match received {
                Ok(Received::Events(events)) => {
                    for event in &events {
                        watcher.apply(plan_event(
                            &watcher.datapath.interface_names(),
                            &watcher.configured,
                            event,
                        ));
                    }
                }
                Ok(Received::Lost) => {
                    warn!("link events were lost (socket buffer overflow); re-reading interfaces");
                    watcher.resync();
                }
                Err(err) => {
                    warn!("receiving link events: {err}; re-reading interfaces");
                    watcher.resync();
                    failed = true;
                    break;
                }
            }
        }
        drop(ready);
        if failed {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// What the link watcher acts on.
#[derive(Debug)]
struct LinkWatcher {
    datapath: Arc<Datapath>,
    /// Names of the interfaces to be attached whenever they exist.
    configured: BTreeSet<String>,
}

/// One step of the link watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LinkAction {
    /// Forget the interface attached at this index; `why` ends the log line.
    Forget { index: u32, why: String },
    /// Attach the interface with this name.
    Attach { name: String },
}

impl LinkWatcher {
    /// Re-reads the interface list and brings the attachments in line with it.
    fn resync(&self) {
        match rtnetlink::links() {
            Ok(links) => self.apply(plan_resync(
                &self.datapath.interface_names(),
                &self.configured,
                &links,
            )),
            Err(err) => warn!("re-reading interfaces over rtnetlink: {err}"),
        }
    }

    fn apply(&self, actions: Vec<LinkAction>) {
        for action in actions {
            match action {
                LinkAction::Forget { index, why } => {
                    if let Some(name) = self.datapath.forget(index) {
                        info!("forgot {name} (ifindex {index}): {why}; its counters are kept");
                    }
                }
                LinkAction::Attach { name } => match self.datapath.attach(&name) {
                    Ok(()) => {}
                    // Gone again before we got to it; its removal event follows.
                    Err(Error::NoSuchInterface { .. }) => {
                        debug!("{name} disappeared before it could be attached")
                    }
                    Err(err) => warn!("attaching to {name}, which appeared: {err}"),
                },
            }
        }
    }
}

/// What `event` calls for, given the interfaces attached now (index to name) and the configured
/// names. A new-link event also reports any change of a known interface, so most call for
/// nothing; one that gives a known index another name is a rename.
fn plan_event(
    attached: &BTreeMap<u32, String>,
    configured: &BTreeSet<String>,
    event: &LinkEvent,
) -> Vec<LinkAction> {
    let mut actions = Vec::new();
    match event {
        LinkEvent::Deleted { index } => {
            if attached.contains_key(index) {
                actions.push(LinkAction::Forget {
                    index: *index,
                    why: "its link is gone".into(),
                });
            }
        }
        LinkEvent::New { index, name } => {
            match attached.get(index) {
                Some(current) if current == name => return actions,
                Some(_) => actions.push(LinkAction::Forget {
                    index: *index,
                    why: format!("renamed to {name}"),
                }),
                None => {}
            }
            // A name is unique at any moment: an attachment under it at another index belongs
            // to a device whose removal we have not seen.
            for (&other, _) in attached.iter().filter(|(i, n)| *n == name && *i != index) {
                actions.push(LinkAction::Forget {
                    index: other,
                    why: format!("the name now belongs to ifindex {index}"),
                });
            }
            if configured.contains(name) {
                actions.push(LinkAction::Attach { name: name.clone() });
            }
        }
    }
    actions
}

/// The steps that bring the attachments in line with `links`, the interfaces that exist now
/// (index, name), after events were lost: forget what is gone or renamed, then attach every
/// configured interface that exists and is not attached.
fn plan_resync(
    attached: &BTreeMap<u32, String>,
    configured: &BTreeSet<String>,
    links: &[(u32, String)],
) -> Vec<LinkAction> {
    let exists = |index: u32, name: &str| links.iter().any(|(i, n)| *i == index && n == name);
    let mut actions: Vec<LinkAction> = attached
        .iter()
        .filter(|(index, name)| !exists(**index, name))
        .map(|(index, _)| LinkAction::Forget {
            index: *index,
            why: "its link is gone".into(),
        })
        .collect();
    for (index, name) in links {
        if configured.contains(name) && attached.get(index) != Some(name) {
            actions.push(LinkAction::Attach { name: name.clone() });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached(entries: &[(u32, &str)]) -> BTreeMap<u32, String> {
        entries.iter().map(|(i, n)| (*i, n.to_string())).collect()
    }

    fn names(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn new(index: u32, name: &str) -> LinkEvent {
        LinkEvent::New {
            index,
            name: name.into(),
        }
    }

    fn forget(index: u32, why: &str) -> LinkAction {
        LinkAction::Forget {
            index,
            why: why.into(),
        }
    }

    fn attach(name: &str) -> LinkAction {
        LinkAction::Attach { name: name.into() }
    }

    #[test]
    fn a_deleted_attached_link_is_forgotten_and_others_are_ignored() {
        let now = attached(&[(5, "eth0")]);
        let configured = names(&["eth0"]);
        assert_eq!(
            plan_event(&now, &configured, &LinkEvent::Deleted { index: 5 }),
            [forget(5, "its link is gone")]
        );
        assert!(plan_event(&now, &configured, &LinkEvent::Deleted { index: 6 }).is_empty());
    }

    #[test]
    fn a_configured_name_that_appears_is_attached_whatever_its_index() {
        let configured = names(&["eth0"]);
        assert_eq!(
            plan_event(&attached(&[]), &configured, &new(9, "eth0")),
            [attach("eth0")]
        );
        assert!(plan_event(&attached(&[]), &configured, &new(9, "eth1")).is_empty());
        // Its old device's removal not seen yet: forget that one first.
        assert_eq!(
            plan_event(&attached(&[(5, "eth0")]), &configured, &new(9, "eth0")),
            [
                forget(5, "the name now belongs to ifindex 9"),
                attach("eth0")
            ]
        );
    }

    #[test]
    fn state_changes_of_attached_links_change_nothing() {
        let now = attached(&[(5, "eth0")]);
        assert!(plan_event(&now, &names(&["eth0"]), &new(5, "eth0")).is_empty());
    }

    #[test]
    fn renames_follow_the_name() {
        let configured = names(&["eth0", "wan0"]);
        // Renamed away from a configured name: forgotten.
        assert_eq!(
            plan_event(&attached(&[(5, "eth0")]), &configured, &new(5, "eth9")),
            [forget(5, "renamed to eth9")]
        );
        // Renamed to another configured name: forgotten under the old name, attached under
        // the new one.
        assert_eq!(
            plan_event(&attached(&[(5, "eth0")]), &configured, &new(5, "wan0")),
            [forget(5, "renamed to wan0"), attach("wan0")]
        );
    }

    #[test]
    fn resync_forgets_what_is_gone_and_attaches_what_is_back() {
        let configured = names(&["eth0", "eth1", "eth2"]);
        let now = attached(&[(5, "eth0"), (6, "eth1")]);
        let links = [
            (1, "lo".to_string()),
            (6, "eth1".to_string()),
            (7, "eth0".to_string()),
            (8, "eth2".to_string()),
        ];
        assert_eq!(
            plan_resync(&now, &configured, &links),
            [
                forget(5, "its link is gone"),
                attach("eth0"),
                attach("eth2")
            ]
        );
        assert!(plan_resync(&attached(&[(6, "eth1")]), &configured, &links[..2]).is_empty());
    }
}
