//! Assembles the Pingora server: our `server:` section translated into Pingora's
//! `ServerConf` (given to `Server::new_with_opt_and_conf`, the only place an `upgrade_sock`
//! is honoured), the public proxy service, the admin service, and our background services
//! (health-check scheduler, ACME certificates, SIGHUP reload, access-log writer, SIGUSR2 binary upgrade,
//! readiness and the outcome of a socket handover: see [`crate::process`] and
//! [`crate::upgrade`]), and every plugin's background services
//! ([`crate::plugins::background_services`]).

use crate::admin::AdminApp;
use crate::app::Shared;
use crate::ctx::Runtime;
use crate::gateway::Gateway;
use crate::upstream::discovery::DiscoveryScheduler;
use crate::upstream::health::HealthScheduler;
use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::sync::Arc;

#[derive(Debug, Default, Clone, Copy)]
pub struct RunOptions {
    pub daemon: bool,
    pub upgrade: bool,
}

/// Binds (and releases) every listen address once before Pingora starts. Pingora binds in
/// its service threads and, when an address is taken, panics there after its retries while
/// the process lives on without serving: systemd would report a running gateway that
/// answers nothing. Checked here, the process exits at once naming the config key. Skipped
/// for `-u`, where the sockets come from the running instance.
pub fn check_listeners(rt: &Runtime) -> std::result::Result<(), String> {
    for (key, addr) in crate::process::listen_addrs(&rt.server, &rt.admin) {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(format!("{key}: cannot listen on {addr}: {e}"));
        }
    }
    Ok(())
}

/// For `-u`: some configured address must be listening already (the running instance whose
/// sockets are taken over). Without one, Pingora would wait on `upgrade_sock` for sockets
/// nobody sends.
pub fn check_takeover(rt: &Runtime) -> std::result::Result<(), String> {
    let addrs = crate::process::listen_addrs(&rt.server, &rt.admin);
    let bound = crate::process::listening_sockets();
    if addrs.iter().any(|(_, a)| bound.contains(a)) {
        return Ok(());
    }
    let list: Vec<String> = addrs.iter().map(|(k, a)| format!("{k} {a}")).collect();
    Err(format!(
        "nothing listens on {}: there is no running instance to take the sockets from (start without -u)",
        list.join(", ")
    ))
}

/// Pingora's `ServerConf` from our config.
pub fn server_conf(shared: &Shared, opts: RunOptions) -> ServerConf {
    let rt = shared.snapshot();
    let s = &rt.server;
    // Pingora keeps one LRU pool for all upstream connections: size it for every
    // upstream's `keepalive` per target.
    let pool: usize = rt
        .upstreams
        .iter()
        .map(|u| u.keepalive * u.targets().targets.len().max(1))
        .sum();
    ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        pid_file: s.pid_file.to_string_lossy().into_owned(),
        upgrade_sock: s.upgrade_sock.to_string_lossy().into_owned(),
        grace_period_seconds: Some(s.grace_period),
        graceful_shutdown_timeout_seconds: Some(5),
        daemon: opts.daemon,
        error_log: if opts.daemon {
            crate::process::daemon_error_log(&rt.server)
        } else {
            None
        },
        upstream_keepalive_pool_size: pool.max(128),
        // Pingora's cap on attempts; our own policy (`retries` per upstream, which a reload
        // may raise) decides below it.
        max_retries: 16,
        ..ServerConf::default()
    }
}

/// Builds the whole server; the caller runs it.
pub fn build(shared: Arc<Shared>, opts: RunOptions) -> Result<Server> {
    crate::signals::ignore_sighup_until_running();
    crate::observe::access_log::install_reopen_signal();
    crate::upgrade::ignore_sigusr2_until_running();
    // The accept path's counters (the app registered everyone else's at load).
    crate::edge::register_metrics();
    let conf = server_conf(&shared, opts);
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // Subscribed before anything runs: the handover outcome is read from these phases.
    let phases = server.watch_execution_phase();
    server.bootstrap();
    let rt = shared.snapshot();

    // The proxy app wrapped to count open connections (`http_active_connections`).
    let mut app = pingora::proxy::http_proxy(
        &server.configuration,
        Gateway::new(shared.live(), shared.acme.clone()),
    );
    let limit = rt.server.max_requests_per_connection;
    let mut options = pingora::apps::HttpServerOptions::default();
    // Pingora counts reuses: N requests per connection are N - 1 reuses.
    options.keepalive_request_limit = (limit > 0).then(|| limit - 1);
    // HTTP/2 prior knowledge on plain listeners (TLS listeners negotiate h2 by ALPN).
    options.h2c = rt.server.h2c;
    app.server_options = Some(options);
    // HTTPS listeners are TCP listeners whose handshake EdgeGuard runs with our own rustls
    // policy (versions, cipher suites): see crate::tls for why not Pingora's TLS listener.
    let tls = rt
        .server
        .tls
        .as_ref()
        .map(|t| crate::tls::Terminator::new(t, shared.certs.clone()))
        .transpose()
        .map_err(|e| Error::explain(ErrorType::InternalError, format!("server.tls: {e}")))?;
    let mut proxy = Service::new(
        "gatehouse proxy".to_string(),
        crate::edge::EdgeGuard::new(app, shared.clone()).with_tls(tls),
    );
    // No L4 read buffer: Pingora's default is a 64 KB buffer per connection, allocated zeroed
    // at accept, which a connection that sends nothing holds (and, with recycled memory, has
    // touched) for its whole life. Request heads are read into their own 4 KB buffer and
    // bodies into Pingora's, so the reads it would save are few (loadtest/RESULTS.md,
    // "Memory per connection"). The 1460-byte write buffer stays: it coalesces a small
    // response head and body into one send. It is allocated on the connection's first write,
    // so a connection that never gets an answer holds none.
    let l4 = pingora::listeners::L4BufferSettings::new(0, 1460);
    let tls_listen = rt.server.tls.iter().flat_map(|t| t.listen.iter());
    for addr in rt.server.listen.iter().chain(tls_listen) {
        proxy.add_listener(pingora::listeners::ListenerConfig::tcp(addr.to_string()).l4_buffer(l4));
    }
    server.add_service(proxy);

    let mut admin = Service::new("gatehouse admin".to_string(), AdminApp::new(shared.clone()));
    admin.add_tcp(&rt.admin.listen.to_string());
    // One thread is plenty for the admin API and keeps it off the proxy's runtime.
    admin.threads = Some(1);
    server.add_service(admin);

    server.add_service(background_service(
        "health checks",
        HealthScheduler::new(shared.clone()),
    ));
    server.add_service(background_service(
        "dns discovery",
        DiscoveryScheduler::new(shared.clone()),
    ));
    server.add_service(background_service(
        "acme",
        crate::acme::service::AcmeService::new(shared.clone()),
    ));
    server.add_service(background_service(
        "access log",
        crate::observe::access_log::Writer::new({
            let shared = shared.clone();
            move || shared.snapshot().server.access_log.clone()
        }),
    ));
    server.add_service(background_service(
        "binary upgrade signal",
        crate::upgrade::UpgradeOnSigusr2::new(rt.server.upgrade_sock.clone()),
    ));
    server.add_service(background_service(
        "handover outcome",
        crate::upgrade::HandoverOutcome::new(phases),
    ));
    server.add_service(background_service(
        "readiness",
        crate::process::Readiness::new(&rt.server, &rt.admin, opts.daemon),
    ));
    // The plugins' own services (JWKS refreshers, the cache purge subscriber, ...).
    for service in crate::plugins::background_services(&shared.live(), &shared.registry) {
        server.add_boxed_service(service);
    }
    server.add_service(background_service(
        "config reload signal",
        ReloadOnSighup { shared },
    ));
    Ok(server)
}

/// Reloads the config on SIGHUP (`systemctl reload`). Pingora has no SIGHUP handler and the
/// default action would kill the process.
struct ReloadOnSighup {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for ReloadOnSighup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP: {e}; reload with POST /reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    let shared = self.shared.clone();
                    match tokio::task::spawn_blocking(move || shared.reload()).await {
                        Ok(Ok(r)) if r.unchanged => tracing::info!(version = r.version, "SIGHUP: config unchanged"),
                        Ok(Ok(r)) => {
                            tracing::info!(version = r.version, hash = %r.hash, needs_upgrade = r.needs_upgrade, changes = %r.changes, "SIGHUP: config reloaded");
                        }
                        Ok(Err(errs)) => tracing::error!("SIGHUP: config rejected, still serving the previous one:\n{errs}"),
                        Err(e) => tracing::error!("SIGHUP: reload task failed: {e}"),
                    }
                }
            }
        }
    }
}
