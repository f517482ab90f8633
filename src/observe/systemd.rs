//! The systemd notification protocol (sd_notify(3)), spoken directly: one datagram per
//! message to `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). READY=1 once
//! the agent runs, STATUS= with devices up and the backlog, WATCHDOG=1 every half
//! `$WATCHDOG_USEC` while no task is stuck (`liveness.rs`), STOPPING=1 at shutdown. Without
//! `$NOTIFY_SOCKET` every call does nothing. Decision 0009 says why no crate.

use super::metrics::Metrics;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// A task busy this long is stuck (the default of `[agent] stuck_after`). Every piece of work is
/// bounded far below it: a Modbus request by its timeout, an HTTP attempt by the sink's timeout,
/// a buffer tick by its 1 MiB.
pub const STUCK_AFTER: Duration = Duration::from_secs(60);

pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// Half the watchdog interval systemd expects, when it expects one.
    pub watchdog_every: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let addr = if let Some(name) = path.strip_prefix('@') {
                #[cfg(target_os = "linux")]
                {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
                }
                #[cfg(not(target_os = "linux"))]
                {
                    let _ = name;
                    return None;
                }
            } else {
                std::os::unix::net::SocketAddr::from_pathname(&path).ok()?
            };
            let s = UnixDatagram::unbound().ok()?;
            s.set_nonblocking(true).ok()?;
            Some((s, addr))
        });
        let pid_ok = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && pid_ok)
            .map(|u| Duration::from_micros(u / 2));
        Notifier {
            socket,
            watchdog_every,
        }
    }

    /// Sends one notification (newline-separated `KEY=value` lines). Never blocks.
    pub fn notify(&self, msg: &str) {
        if let Some((s, addr)) = &self.socket {
            if let Err(e) = s.send_to_addr(msg.as_bytes(), addr) {
                tracing::debug!(error = %e, "sd_notify failed");
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }
}

/// The STATUS= line: devices up, and the largest backlog of any sink.
pub fn status(metrics: &Metrics) -> String {
    let devices = metrics.devices.all();
    let up = devices.iter().filter(|d| d.up.load(Relaxed)).count();
    let sinks = metrics.sinks.all();
    let backlog = sinks
        .iter()
        .map(|s| s.buffer_bytes.load(Relaxed))
        .max()
        .unwrap_or(0);
    let held: Vec<&str> = sinks
        .iter()
        .filter(|s| s.held().is_some())
        .map(|s| s.name.as_str())
        .collect();
    let mut line = format!(
        "{up}/{} devices up, backlog {} KiB",
        devices.len(),
        backlog / 1024
    );
    if !held.is_empty() {
        line.push_str(&format!(", holding data for sink(s) {}", held.join(", ")));
    }
    line
}

/// Feeds the watchdog and updates STATUS= until `stop` resolves.
pub async fn run(
    notifier: &Notifier,
    metrics: &Metrics,
    stuck_after: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    if !notifier.enabled() {
        stop.await;
        return;
    }
    let every = notifier
        .watchdog_every
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    tokio::pin!(stop);
    let mut reported_stuck = false;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let stuck = metrics.liveness.stuck(stuck_after);
        let mut msg = format!("STATUS={}", status(metrics));
        if stuck.is_empty() {
            if notifier.watchdog_every.is_some() {
                msg.push_str("\nWATCHDOG=1");
            }
            reported_stuck = false;
        } else if !reported_stuck {
            let names: Vec<String> = stuck
                .iter()
                .map(|(n, d)| format!("{n} (busy {}s)", d.as_secs()))
                .collect();
            tracing::error!(tasks = %names.join(", "), "the pipeline is stuck; the watchdog is no longer fed (systemd restarts the agent if WatchdogSec is set)");
            reported_stuck = true;
        }
        notifier.notify(&msg);
    }
}
