//! `linetap demo`: the simulator, the agent and a local line-protocol file in one process,
//! with a live one-line summary. Adds an InfluxDB sink when `INFLUX_URL` is set
//! (v2: `INFLUX_ORG`, `INFLUX_BUCKET`, `INFLUX_TOKEN`; v1: `INFLUX_DATABASE`).

use super::Simulator;
use crate::config::{self, Config, InfluxApi, InfluxConfig, Secret, SinkConfig, SinkKind};
use crate::run::{stop_signal, Agent};
use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// The embedded demo configuration.
pub const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");

/// The demo config with sinks from the environment added.
pub fn demo_config() -> Result<Config, String> {
    let mut cfg =
        config::parse("configs/demo.toml (embedded)", DEMO_CONFIG).map_err(|e| e.to_string())?;
    if let Ok(url) = std::env::var("INFLUX_URL") {
        let v1_db = std::env::var("INFLUX_DATABASE").ok();
        if v1_db.is_none() {
            let missing: Vec<&str> = ["INFLUX_ORG", "INFLUX_BUCKET", "INFLUX_TOKEN"]
                .into_iter()
                .filter(|v| std::env::var_os(v).is_none())
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "INFLUX_URL is set, so the demo also writes to InfluxDB, but {} not set (for InfluxDB 2.x set INFLUX_ORG, INFLUX_BUCKET and INFLUX_TOKEN; for 1.x set INFLUX_DATABASE)",
                    if missing.len() == 1 { format!("{} is", missing[0]) } else { format!("{} are", missing.join(", ")) }
                ));
            }
        }
        cfg.sinks.push(SinkConfig {
            name: "influx".into(),
            kind: SinkKind::Influx(InfluxConfig {
                url: url.trim_end_matches('/').to_string(),
                api: if v1_db.is_some() {
                    InfluxApi::V1
                } else {
                    InfluxApi::V2
                },
                org: std::env::var("INFLUX_ORG").unwrap_or_default(),
                bucket: std::env::var("INFLUX_BUCKET").unwrap_or_else(|_| "linetap".into()),
                token: std::env::var("INFLUX_TOKEN")
                    .ok()
                    .map(|_| Secret::Env("INFLUX_TOKEN".into())),
                database: v1_db.unwrap_or_default(),
                retention_policy: None,
                username: None,
                password: None,
                timeout: Duration::from_secs(10),
                gzip: !config::is_loopback_url(&url),
            }),
            batch_size: 5000,
            flush_interval: Duration::from_secs(1),
        });
    }
    Ok(cfg)
}

/// Runs the demo until Ctrl-C (or `duration`, when given). Returns the process exit code.
pub async fn run(duration: Option<Duration>) -> i32 {
    let mut cfg = match demo_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    // Each demo run starts a fresh output file.
    for s in &cfg.sinks {
        if let SinkKind::File(f) = &s.kind {
            let _ = std::fs::remove_file(&f.path);
        }
    }
    let sim = match Simulator::start(&cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("linetap demo: cannot start the simulator: {e}");
            return 1;
        }
    };
    // The simulator picked free ports; point the agent at them.
    for d in &mut cfg.devices {
        if let Some(a) = sim.addresses.get(&d.id) {
            d.address = a.to_string();
        }
    }
    let agent = match Agent::start(&cfg) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("linetap demo: {e}");
            return 1;
        }
    };
    let targets: Vec<String> = cfg
        .sinks
        .iter()
        .map(|s| match &s.kind {
            SinkKind::File(f) => f.path.display().to_string(),
            SinkKind::Influx(i) => i.url.clone(),
            SinkKind::Mqtt(m) => format!("mqtt {}", m.broker.address()),
        })
        .collect();
    eprintln!(
        "linetap demo: simulating {} devices of line {:?} on loopback; writing to {}. Ctrl-C stops.",
        cfg.devices.len(),
        cfg.line.id,
        targets.join(" and ")
    );
    let metrics = agent.metrics.clone();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let summary = async {
        let mut last = 0u64;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let collected = metrics.collected();
            let up = metrics
                .devices
                .all()
                .iter()
                .filter(|d| d.up.load(Relaxed))
                .count();
            let errors: u64 = metrics
                .devices
                .all()
                .iter()
                .map(|d| {
                    d.requests_timeout.load(Relaxed)
                        + d.requests_exception.load(Relaxed)
                        + d.requests_connect_error.load(Relaxed)
                        + d.requests_link_error.load(Relaxed)
                })
                .sum();
            let delivered: u64 = metrics
                .sinks
                .all()
                .iter()
                .map(|s| s.delivered.load(Relaxed))
                .sum();
            let dropped: u64 = metrics.sinks.all().iter().map(|s| s.dropped_total()).sum();
            let line = format!(
                "{} samples/s | devices up {}/{} | errors {} | delivered {} dropped {} -> {}",
                collected - last,
                up,
                metrics.devices.len(),
                errors,
                delivered,
                dropped,
                targets.join(", ")
            );
            last = collected;
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
        }
    };
    let stop = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => stop_signal().await,
        }
    };
    tokio::select! {
        _ = summary => {}
        _ = stop => {}
    }
    if tty {
        eprintln!();
    }
    let undelivered = agent.stop().await;
    sim.stop();
    let delivered: u64 = metrics
        .sinks
        .all()
        .iter()
        .map(|s| s.delivered.load(Relaxed))
        .sum();
    if undelivered > 0 {
        eprintln!("linetap demo: stopped; {delivered} samples delivered, {undelivered} bytes kept in the buffer for the next run");
    } else {
        eprintln!("linetap demo: stopped; {delivered} samples delivered, nothing left undelivered");
    }
    0
}
