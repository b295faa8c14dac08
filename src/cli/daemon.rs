//! `vduse-net run` once its devices exist: the stats socket and `/metrics`,
//! systemd's READY/STATUS/WATCHDOG, SIGHUP reloads, the operator's log
//! lines (link changes, threads that died), and the teardown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::LevelFilter;
use vduse_net::dataplane::RunningDevice;
use vduse_net::net::config::VIRTIO_NET_S_LINK_UP;
use vduse_net::ops::systemd::{Liveness, Notifier};
use vduse_net::ops::Registry;
use vduse_net::uapi::virtio::status;

use super::plan::RunPlan;
use super::run::RunArgs;
use super::stats::OpsServers;
use super::{CliError, CliResult};

const TICK: Duration = Duration::from_millis(100);

/// One line for `systemctl status`: every device and whether a driver uses it.
fn status_line(reg: &Registry, dead: &[String]) -> String {
    let parts: Vec<String> = reg
        .sources()
        .iter()
        .map(|s| {
            let c = s.control.load();
            let state = if dead.iter().any(|d| d == s.name()) {
                "THREADS ENDED".to_string()
            } else if c.status & status::DRIVER_OK != 0 {
                format!("driver ok, {}/{} pairs", c.active_pairs, s.layout.pairs)
            } else if c.status & status::DEVICE_NEEDS_RESET != 0 {
                "needs reset".to_string()
            } else {
                "waiting for a driver".to_string()
            };
            format!("{} {state}", s.name())
        })
        .collect();
    format!("serving {} device(s): {}", parts.len(), parts.join("; "))
}

pub fn serve(
    running: Vec<RunningDevice>,
    mut plan: RunPlan,
    cli: &RunArgs,
    m: &clap::ArgMatches,
    stop: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
) -> CliResult {
    let instance = plan.process.instance.clone();
    let reg = Registry::new("run", &instance);
    reg.set_config(plan.process.config.as_ref().map(|p| p.display().to_string()));
    for (r, d) in running.iter().zip(&plan.devices) {
        reg.add(r.stats_source(), &d.port_description(&plan.devices));
    }
    let mut servers = plan.process.stats.start(&reg, &instance)?;
    reg.set_state("running");
    let mut notify = Notifier::from_env();
    let mut dead: Vec<String> = Vec::new();
    notify.ready(&status_line(&reg, &dead));
    log::info!(
        "{} device(s) up: {}{}",
        running.len(),
        reg.device_names().join(", "),
        notify.watchdog().map(|w| format!("; systemd watchdog every {:.1} s", w.as_secs_f64())).unwrap_or_default()
    );
    let watchdog = notify.watchdog();
    let mut live = Liveness::new(watchdog.map_or(Duration::from_secs(5), |w| (w / 2).max(Duration::from_secs(1))));
    let mut last_feed = Instant::now();
    let mut last_status = Instant::now();
    let mut links: Vec<Option<bool>> = vec![None; running.len()];
    if watchdog.is_some() {
        live.check(&reg.sources(), Instant::now());
        notify.feed();
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        if hup.swap(false, Ordering::Relaxed) {
            reload(&mut plan, cli, m, &mut servers, &reg, &mut notify, &dead);
        }
        if let Some(w) = watchdog {
            if last_feed.elapsed() >= w / 4 {
                last_feed = Instant::now();
                if live.check(&reg.sources(), Instant::now()).is_empty() {
                    notify.feed();
                }
            }
        }
        if last_status.elapsed() >= Duration::from_secs(1) {
            last_status = Instant::now();
            for (i, r) in running.iter().enumerate() {
                let src = r.stats_source();
                let up = src.control.load().link_status & VIRTIO_NET_S_LINK_UP != 0;
                if links[i].is_some_and(|was| was != up) {
                    log::info!("{}: link {}", src.name(), if up { "up" } else { "down" });
                }
                links[i] = Some(up);
                if r.is_finished() && !dead.contains(&src.name().to_string()) {
                    log::error!("{}: the device's threads ended; its queues are no longer served", src.name());
                    dead.push(src.name().to_string());
                }
            }
            notify.status(&status_line(&reg, &dead));
        }
    }
    eprintln!("vduse-net: stopping");
    notify.stopping();
    reg.set_state("stopping");
    let mut result = Ok(());
    for (r, d) in running.into_iter().zip(&plan.devices) {
        let name = r.layout().name.clone();
        let keep = d.args.keep_device;
        match if keep { r.keep() } else { r.stop() } {
            Ok(stats) => {
                eprintln!("vduse-net: {name}: {}", serde_json::to_string(&stats).unwrap_or_default());
                if keep {
                    eprintln!("vduse-net: {name}: device and state log kept for the next process (--keep-device)");
                } else {
                    log::info!("device {name} destroyed");
                }
            }
            Err(e) => {
                eprintln!("vduse-net: {name}: {e}");
                result = Err(CliError(format!("destroying {name}: {e}")));
            }
        }
    }
    drop(servers);
    result
}

/// SIGHUP: re-read the config file; apply what needs no device reset (log
/// level, stats socket, metrics endpoint) and say what needs a restart.
fn reload(
    plan: &mut RunPlan,
    cli: &RunArgs,
    m: &clap::ArgMatches,
    servers: &mut OpsServers,
    reg: &Arc<Registry>,
    notify: &mut Notifier,
    dead: &[String],
) {
    let Some(path) = plan.process.config.clone() else {
        log::info!("SIGHUP: started without --config, nothing to re-read");
        return;
    };
    notify.reloading();
    reg.set_state("reloading");
    log::info!("SIGHUP: re-reading {}", path.display());
    match super::config::load(&path) {
        Err(e) => log::error!("reload: {e}; keeping the running configuration"),
        Ok(f) => {
            let mut new = f.plan;
            super::config::apply_cli_overrides(&mut new.process, cli, m);
            let (old_p, new_p) = (&plan.process, &new.process);
            let mut applied = Vec::new();
            let mut restart = Vec::new();
            if old_p.log_level != new_p.log_level {
                let level = new_p.log_level.unwrap_or(LevelFilter::Info);
                if vduse_net::ops::log::set_level(level) {
                    applied.push(format!("log level {level}"));
                } else {
                    log::warn!("reload: RUST_LOG is set and decides the log level; log-level ignored");
                }
            }
            let instance = &old_p.instance;
            if old_p.stats.socket_path(instance) != new_p.stats.socket_path(instance) {
                servers.socket = None;
                let s = super::stats::StatsArgs { metrics: None, ..new_p.stats.clone() };
                match s.start(reg, instance) {
                    Ok(o) => servers.socket = o.socket,
                    Err(e) => log::error!("reload: stats socket: {e}"),
                }
                applied.push(match new_p.stats.socket_path(instance) {
                    Some(p) => format!("stats socket {}", p.display()),
                    None => "no stats socket".into(),
                });
            }
            if old_p.stats.metrics != new_p.stats.metrics {
                servers.metrics = None;
                if let Some(addr) = &new_p.stats.metrics {
                    match vduse_net::ops::http::MetricsServer::start(addr, reg.clone()) {
                        Ok(s) => servers.metrics = Some(s),
                        Err(e) => log::error!("reload: {e}"),
                    }
                }
                applied.push(format!("metrics {}", new_p.stats.metrics.as_deref().unwrap_or("off")));
            }
            if old_p.kernel_model.map(|k| format!("{k:?}")) != new_p.kernel_model.map(|k| format!("{k:?}")) {
                restart.push("kernel-model".to_string());
            }
            for d in &plan.devices {
                match new.devices.iter().find(|n| n.name == d.name) {
                    None => restart.push(format!("device {} removed", d.name)),
                    Some(n) => {
                        let keys: std::collections::BTreeSet<&String> = d.keys.keys().chain(n.keys.keys()).collect();
                        for k in keys {
                            let (a, b) = (d.keys.get(k), n.keys.get(k));
                            if a != b {
                                restart.push(format!(
                                    "device {}: `{k}` {} -> {}",
                                    d.name,
                                    a.map_or("(unset)", |s| s.as_str()),
                                    b.map_or("(unset)", |s| s.as_str())
                                ));
                            }
                        }
                    }
                }
            }
            for n in &new.devices {
                if !plan.devices.iter().any(|d| d.name == n.name) {
                    restart.push(format!("device {} added", n.name));
                }
            }
            for r in &restart {
                log::warn!("reload: {r}: needs a restart (systemctl restart vduse-net@{instance}); not applied");
            }
            log::info!(
                "reload done: applied {}; {} change(s) need a restart",
                if applied.is_empty() { "nothing".to_string() } else { applied.join(", ") },
                restart.len()
            );
            plan.process = new.process;
        }
    }
    reg.set_state("running");
    notify.reloaded(&status_line(reg, dead));
}
