//! `lb-agent run`: the daemon's start-up (load, adopt or program, attach), its servers and
//! signals, and its shutdown.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::Context as _;
use lb_agent::{
    agent::{
        AgentInfo, ConfigSource, Handle, Node, Writer, auto_scaling, monitor, sweeper, writer,
    },
    api,
    config::Config,
    dataplane::{self, Dataplane, Detach as _, MapReader, Maps as _},
    forwarding, neighbor, node,
    overrides::Overrides,
    pinning::PinDir,
    protocol::{Answer, InterfaceView, Request},
    proxy::{Proxy, metrics::ProxyMetrics, sticky::StickyKey},
    state::{Ids, State},
};

/// The L7 proxy's worker threads (each a single-threaded runtime).
const PROXY_WORKERS: usize = 2;

/// Target groups the maps are sized for beyond those in the config.
const MIN_GROUP_CAPACITY: u32 = 16;

/// `lb-agent run`'s options beside the config.
pub struct RunOptions {
    /// Read again on SIGHUP and `lb-agent reload`.
    pub config_path: PathBuf,
    pub state_file: PathBuf,
    pub ifaces: Vec<String>,
    pub socket: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub detach_on_exit: bool,
}

/// Starts the agent and serves until SIGTERM, ctrl-c or a detach.
pub fn run(file: Config, options: RunOptions) -> anyhow::Result<()> {
    let RunOptions {
        config_path,
        state_file,
        mut ifaces,
        socket,
        pin_dir,
        detach_on_exit,
    } = options;
    // The API's earlier changes apply on top of the file.
    let overrides = Overrides::load(&state_file)?;
    let cfg = writer::with_overrides(&file, &overrides).map_err(anyhow::Error::msg)?;
    if !overrides.is_empty() {
        tracing::info!(state_file = %state_file.display(), overrides = overrides.len(), "applied the control API's earlier changes on top of the config file");
    }
    if ifaces.is_empty() {
        ifaces.extend(cfg.agent.interface.clone());
    }
    let iface = ifaces
        .first()
        .cloned()
        .context("no interface: set agent.interface in the config or pass --iface")?;
    let socket = socket.unwrap_or_else(|| cfg.agent.control_socket.clone());
    // Whatever can fail is checked before anything is pinned (see below).
    for iface in &ifaces {
        check_interface(iface)?;
    }
    let addresses = node::addresses()?;
    let snat = node::snat_addresses(&cfg, &addresses, &iface);
    // The file check covers the addresses the config names; the interface's own are known
    // only here.
    let clashes = cfg.listeners_on_snat_ports(&snat);
    if !clashes.is_empty() {
        anyhow::bail!("refusing to start: {}", clashes.join("; "));
    }
    for ip in &snat {
        // Targets answer the SNAT address: if no interface has it, replies never come back.
        if !addresses.iter().any(|(_, a)| a == ip) {
            tracing::warn!(snat = %ip, "no interface of this node has the full-NAT source address: targets' replies will not reach the load balancer");
        }
    }
    let group_capacity = (cfg.target_groups.len() as u32).max(MIN_GROUP_CAPACITY);
    let api_token = match cfg.agent.api_listen {
        Some(_) => Some(Arc::new(api_token(cfg.agent.api_token_file.as_deref())?)),
        None => None,
    };
    // One agent per pin directory: its lock is held until this process ends, however it ends.
    let pin_dir = pin_dir.unwrap_or_else(|| cfg.agent.pin_dir.clone());
    let pins = PinDir::open(&pin_dir)?;
    // Refuse before touching anything if another agent serves the socket or an address.
    let listener = api::bind(&socket)?;
    let api_tcp = cfg
        .agent
        .api_listen
        .map(|address| bind_tcp(address, "the API"))
        .transpose()?;
    let metrics_tcp = cfg
        .agent
        .metrics_listen
        .map(|address| bind_tcp(address, "/metrics"))
        .transpose()?;
    let mut dataplane = Dataplane::load_pinned(
        cfg.agent.maglev_table_size,
        group_capacity,
        cfg.agent.connection_table_size,
        pins,
    )
    .context("loading the XDP program")?;
    if dataplane.adopted() {
        tracing::info!(pin_dir = %pin_dir.display(), "adopting the data plane an earlier agent left pinned: its connection table is kept");
    }
    let ids_file = Ids::path_beside(&state_file);
    let started = program_and_attach(&cfg, &snat, &ifaces, &ids_file, &mut dataplane);
    let (state, modes) = match started {
        Ok(started) => started,
        Err(e) => {
            // A start that fails leaves nothing pinned that the next start would adopt as if
            // it had served. An adopted data plane was serving before: it stays.
            if !dataplane.adopted() {
                forwarding::lift_block(&ifaces);
                lb_agent::proxy::vip::remove_local_routes_or_warn();
                match dataplane.detach() {
                    Ok(()) => {
                        tracing::info!(pin_dir = %pin_dir.display(), "the start failed: removed what it had pinned")
                    }
                    Err(d) => {
                        tracing::warn!(pin_dir = %pin_dir.display(), error = %d, "the start failed and its pins could not be removed; `lb-agent detach` removes them")
                    }
                }
            }
            return Err(e);
        }
    };
    tracing::info!(
        ifaces = ?ifaces,
        modes = ?modes,
        socket = %socket.display(),
        snat = ?snat,
        listeners = cfg.listeners.len(),
        target_groups = cfg.target_groups.len(),
        "load balancer running"
    );
    let info = AgentInfo {
        started: std::time::SystemTime::now(),
        pin_dir: dataplane.pin_dir().map(|p| p.display().to_string()),
        adopted: dataplane.adopted(),
        interfaces: dataplane
            .attachments()
            .map(|(name, mode)| InterfaceView {
                name: name.to_owned(),
                mode: mode.as_str().to_owned(),
            })
            .collect(),
    };
    let reader: Arc<dyn MapReader + Send + Sync> =
        Arc::new(dataplane.reader().context("opening the maps for readers")?);
    let sweeper = dataplane
        .sweeper()
        .context("opening the connection table for its sweeper")?;
    let (stop_sweeping, sweeper_stop) = std::sync::mpsc::channel::<()>();
    let sweeper_thread = std::thread::Builder::new()
        .name("lb-sweeper".into())
        .spawn(move || sweeper::sweep_until_stopped(sweeper, &sweeper_stop))
        .context("starting the connection-table sweeper")?;
    let mut next_hop_misses = dataplane
        .next_hop_misses()
        .context("opening the map of missed next hops")?;
    let scaling_options = auto_scaling::Options {
        saved: Some(auto_scaling::Saved::path_beside(&config_path)),
        local: lb_agent::scaling::provider::local::LocalConfig {
            state_dir: instances_dir(&config_path),
            lb_namespace: None,
            cgroup_parent: None,
        },
        writer: None,
        in_flight: None,
        proxy_metrics: None,
    };
    let source = ConfigSource {
        path: config_path,
        state_file,
        ids_file,
    };
    let node_iface = iface.clone();
    let node = Node {
        snat_addresses: Box::new(move |config| {
            let addresses = node::addresses().map_err(|e| format!("{e:#}"))?;
            Ok(node::snat_addresses(config, &addresses, &node_iface))
        }),
        resolve_next_hops: Box::new(neighbor::keep_all_resolved_blocking),
    };
    let sticky_key = Arc::new(
        StickyKey::load_or_create(&cookie_key_path(&source.state_file))
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let (writer, snapshots) = Writer::new(state, dataplane, file, Some(source), overrides, node);
    let proxy_snapshots = snapshots.clone();
    let (changes, received) = tokio::sync::mpsc::unbounded_channel();
    // The groups' local instances get the data plane on their veths through the writer.
    let scaling_options = auto_scaling::Options {
        writer: Some(changes.clone()),
        ..scaling_options
    };
    // The one writer: a thread of its own (map writes are system calls), fed in order.
    let writer_thread = std::thread::Builder::new()
        .name("lb-writer".into())
        .spawn(move || writer.run(received))
        .context("starting the writer")?;
    let proxy_metrics = ProxyMetrics::new();
    let agent_proxy_metrics = proxy_metrics.clone();
    let agent =
        Handle::new(changes, snapshots, reader, info).with_proxy_metrics(proxy_metrics.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let (shutdown, mut stopped) = tokio::sync::watch::channel(false);
        let limits = api::ServerLimits::of(&cfg.agent);
        let mut servers = vec![tokio::spawn(api::serve(
            tokio::net::UnixListener::from_std(listener)?,
            agent.clone(),
            api::Access::Local,
            limits,
            shutdown.clone(),
        ))];
        if let Some(tcp) = api_tcp {
            let address = tcp.local_addr()?;
            let tcp = tokio::net::TcpListener::from_std(tcp)?;
            let token = api_token.clone().context("no API token")?;
            tracing::info!(%address, "control API on TCP (bearer token required)");
            if !address.ip().is_loopback() {
                // There is no TLS on this server: the token and every answer cross the
                // network in the clear.
                tracing::warn!(%address, "the control API serves a bearer token over plain HTTP on a non-loopback address: anyone on the path can read the token; bind it to loopback and reach it through an SSH tunnel or a TLS proxy");
            }
            servers.push(tokio::spawn(api::serve(tcp, agent.clone(), api::Access::Token(token), limits, shutdown.clone())));
        }
        if let Some(tcp) = metrics_tcp {
            let address = tcp.local_addr()?;
            let tcp = tokio::net::TcpListener::from_std(tcp)?;
            tracing::info!(%address, "metrics on TCP");
            servers.push(tokio::spawn(api::serve(tcp, agent.clone(), api::Access::MetricsOnly, limits, shutdown.clone())));
        }
        let monitor = tokio::spawn(monitor::run(agent.clone(), shutdown.subscribe()));
        let proxy = Proxy::new(sticky_key, proxy_metrics, PROXY_WORKERS)?;
        let scaling_options = auto_scaling::Options {
            in_flight: Some(proxy.in_flight()),
            proxy_metrics: Some(agent_proxy_metrics.clone()),
            ..scaling_options
        };
        // The groups start once the data plane and the API run: their first registrations go
        // through the writer like any `targets add`.
        let (engine, scaling) = auto_scaling::Engine::start(agent.clone(), scaling_options)
            .await
            .map_err(|e| anyhow::anyhow!("starting the auto scaling groups: {e}"))?;
        agent.serve_scaling(scaling);
        let scaling = tokio::spawn(engine.run(shutdown.subscribe()));
        let proxy = tokio::spawn(run_proxy(
            proxy,
            proxy_snapshots,
            shutdown.subscribe(),
        ));
        let resolver = tokio::spawn(neighbor::resolve_misses(
            move || next_hop_misses.take(),
            shutdown.subscribe(),
        ));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
                _ = stopped.changed() => {}
                _ = hangup.recv() => {
                    match agent.call(Request::Reload, None).await {
                        Ok(Answer::Changes(c)) if c.changes.is_empty() => tracing::info!("SIGHUP: the config is unchanged"),
                        Ok(_) => {}
                        Err(e) => tracing::error!(message = %e, "SIGHUP: reload refused; the running config stays"),
                    }
                    continue;
                }
            }
            break;
        }
        let _ = shutdown.send(true);
        for server in servers {
            let _ = server.await;
        }
        let _ = monitor.await;
        let _ = scaling.await;
        let _ = proxy.await;
        let _ = resolver.await;
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_file(&socket);
    drop(stop_sweeping);
    let _ = sweeper_thread.join();
    // The last handles go with the runtime's tasks: the writer then ends and gives back the
    // data plane.
    drop(agent);
    drop(runtime);
    let mut dataplane = writer_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    if detach_on_exit {
        dataplane.detach()?;
        tracing::info!("detached and unpinned (--detach-on-exit)");
    } else if dataplane.attachments().next().is_some() {
        tracing::info!(pin_dir = %pin_dir.display(), "the data plane keeps serving, pinned; `lb-agent run` adopts it, `lb-agent detach` removes it; the block on kernel forwarding stays with it");
    }
    if dataplane.attachments().next().is_none() {
        forwarding::lift_block(&ifaces);
        // Detached (`lb-agent detach` or --detach-on-exit): the L7 VIPs' routes go with it.
        lb_agent::proxy::vip::remove_local_routes_or_warn();
    }
    Ok(())
}

/// Feeds the proxy every snapshot the writer publishes, until shutdown.
async fn run_proxy(
    mut proxy: Proxy,
    mut snapshots: tokio::sync::watch::Receiver<Arc<lb_agent::agent::Snapshot>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        proxy.update(&snapshot.config, &snapshot.state.serving_targets());
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    proxy.shutdown();
}

/// Where the `local` provider keeps its instances' records, user data and logs: `NAME.instances/`
/// beside `NAME.toml`.
fn instances_dir(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map_or_else(|| "lb-agent".into(), |s| s.to_string_lossy().into_owned());
    config.with_file_name(format!("{stem}.instances"))
}

/// The stickiness cookies' key: beside the state file, so cookies outlive a restart.
fn cookie_key_path(state_file: &Path) -> PathBuf {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".cookie-key");
    PathBuf::from(name)
}

/// Programs the data plane for `cfg` and attaches it to `ifaces`: the steps of a start after
/// loading, any of which may fail. Returns the state and the attach modes.
fn program_and_attach(
    cfg: &Config,
    snat: &[std::net::IpAddr],
    ifaces: &[String],
    ids_file: &Path,
    dataplane: &mut Dataplane,
) -> anyhow::Result<(State, Vec<dataplane::AttachMode>)> {
    // Adopted maps carry the earlier agent's ids in their flows and counters.
    let ids = if dataplane.adopted() {
        Ids::load(ids_file)?
    } else {
        Ids::default()
    };
    let state = State::apply(cfg, snat, dataplane, &ids, Instant::now())
        .context("programming the data plane")?;
    // Once per address: a target on many ports, or in many groups, has one next hop.
    neighbor::keep_all_resolved_blocking(cfg.target_addresses());
    // Before forwarding goes on, so the node is never a router by accident, not even briefly.
    if cfg.agent.kernel_forwarding {
        let unblocked = forwarding::unblock_kernel_forwarding(ifaces)
            .context("removing the agent's block on kernel forwarding")?;
        tracing::info!(ifaces = ?ifaces, unblocked = ?unblocked, "agent.kernel_forwarding: the kernel routes packets that arrive on these NICs and are not the load balancer's");
    } else {
        forwarding::block_kernel_forwarding(ifaces)
            .context("keeping the kernel from routing packets that arrive on the agent's NICs")?;
        tracing::info!(ifaces = ?ifaces, table = forwarding::NFT_TABLE, "the kernel does not route packets that arrive on these NICs (nftables table inet lb_agent); the load balancer's own are unaffected");
    }
    let mut modes = Vec::new();
    for iface in ifaces {
        let changed = forwarding::enable_for_fib_lookup(iface)
            .with_context(|| format!("enabling forwarding on {iface} (bpf_fib_lookup needs it)"))?;
        if !changed.is_empty() {
            tracing::info!(sysctls = ?changed, "enabled forwarding: the XDP program routes through the kernel's FIB (accept_ra 2 keeps router advertisements, and the default route they give, working)");
        }
        let (mode, taken_over) = dataplane.attach(iface)?;
        if taken_over {
            tracing::info!(
                iface,
                "took over the pinned attachment: the new program replaced the old one without a gap"
            );
        }
        modes.push(mode);
        if dataplane::interface_driver(iface).as_deref() == Some("veth") {
            // Senders on veth hand over checksums still to be computed (TX checksum offload,
            // on by default); XDP forwards them so, and the targets drop every packet.
            tracing::warn!(
                iface,
                "a veth: with TX checksum offload on (the default) on the senders' veths, every balanced connection fails silently (SYNs forwarded, no replies); on each client's and target's veth run `ethtool -K DEV tx off` (the peers of this one included); real NICs are not affected"
            );
        }
    }
    let dropped = dataplane.drop_other_links(ifaces)?;
    for iface in &dropped {
        tracing::info!(iface, "detached from an interface this run does not serve");
    }
    forwarding::lift_block(&dropped);
    Ok((state, modes))
}

/// Refuses an interface this network namespace does not have, by that name.
fn check_interface(iface: &str) -> anyhow::Result<()> {
    let exists = std::ffi::CString::new(iface)
        // SAFETY: a NUL-terminated string.
        .is_ok_and(|name| unsafe { libc::if_nametoindex(name.as_ptr()) } != 0);
    anyhow::ensure!(
        exists,
        "interface {iface} does not exist (in this network namespace); `ip link` lists those that do"
    );
    Ok(())
}

/// Binds a TCP server's address now, before anything is pinned, so that a taken address
/// fails the start cleanly.
fn bind_tcp(address: std::net::SocketAddr, what: &str) -> anyhow::Result<std::net::TcpListener> {
    let tcp = std::net::TcpListener::bind(address)
        .with_context(|| format!("binding {what} to {address}"))?;
    tcp.set_nonblocking(true)
        .with_context(|| format!("binding {what} to {address}"))?;
    Ok(tcp)
}

/// The TCP API's bearer token: `LB_AGENT_API_TOKEN`, else the token file; never the command
/// line (where `ps` shows it).
fn api_token(file: Option<&Path>) -> anyhow::Result<String> {
    let token = match (std::env::var("LB_AGENT_API_TOKEN"), file) {
        (Ok(token), _) => token,
        (Err(_), Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the API token file {}", file.display()))?,
        (Err(_), None) => anyhow::bail!(
            "agent.api_listen needs a token: set agent.api_token_file or LB_AGENT_API_TOKEN"
        ),
    };
    let token = token.trim().to_owned();
    anyhow::ensure!(
        token.len() >= 16 && token.bytes().all(|b| b.is_ascii_graphic()),
        "the API token must be at least 16 printable characters, without spaces"
    );
    Ok(token)
}
