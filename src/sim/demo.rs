//! `linetap demo`: the simulator, the agent and a local line-protocol file in one process,
//! with a live view (`view.rs`: each device's state, the latest alarm episodes and
//! availability, read back from the file the agent writes): redrawn in place on a terminal,
//! one line a second into a pipe. Adds an InfluxDB sink when `INFLUX_URL` is set
//! (v2: `INFLUX_ORG`, `INFLUX_BUCKET`, `INFLUX_TOKEN`; v1: `INFLUX_DATABASE`).

use super::view::View;
use super::Simulator;
use crate::config::{
    self, Config, FileSinkConfig, InfluxApi, InfluxConfig, Secret, Settings, SinkConfig,
};
use crate::run::{stop_signal, Agent};
use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// The embedded demo configuration.
pub const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");
/// The embedded demo line whose robots are read over RTDE (`linetap demo --rtde`).
pub const DEMO_RTDE_CONFIG: &str = include_str!("../../configs/demo-rtde.toml");
/// The embedded demo line of OPC UA robot controllers (`linetap demo --opcua`).
pub const DEMO_OPCUA_CONFIG: &str = include_str!("../../configs/demo-opcua.toml");

/// Which demo line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DemoLine {
    /// The robot cell over Modbus (`configs/demo.toml`).
    #[default]
    Modbus,
    /// Its robots over RTDE.
    Rtde,
    /// OPC 40010 robot controllers over OPC UA.
    Opcua,
}

/// The demo config of `line`, with sinks from the environment added.
pub fn demo_config(line: DemoLine) -> Result<Config, String> {
    let (name, text) = match line {
        DemoLine::Rtde => ("configs/demo-rtde.toml (embedded)", DEMO_RTDE_CONFIG),
        DemoLine::Opcua => ("configs/demo-opcua.toml (embedded)", DEMO_OPCUA_CONFIG),
        DemoLine::Modbus => ("configs/demo.toml (embedded)", DEMO_CONFIG),
    };
    let mut cfg = config::parse(name, text).map_err(|e| e.to_string())?;
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
            kind: "influxdb",
            settings: Settings::new(InfluxConfig {
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
pub async fn run(duration: Option<Duration>, line: DemoLine) -> i32 {
    let mut cfg = match demo_config(line) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    // Each demo run starts a fresh output file.
    for s in &cfg.sinks {
        if let Some(f) = s.settings::<FileSinkConfig>() {
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
    sim.rewire(&mut cfg);
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
        .map(|s| {
            crate::sink::kind(s.kind)
                .map(|k| k.describe(&s.settings))
                .unwrap_or_default()
        })
        .collect();
    let file = cfg
        .sinks
        .iter()
        .find_map(|s| s.settings::<FileSinkConfig>().map(|f| f.path.clone()));
    let devices = cfg.devices.len();
    println!(
        "linetap demo: simulating {devices} device{} of line {:?} on loopback; writing to {} (buffered in {}). Ctrl-C stops.",
        if devices == 1 { "" } else { "s" },
        cfg.line.id,
        targets.join(" and "),
        cfg.agent.data_dir.display()
    );
    let metrics = agent.metrics.clone();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let summary = async {
        let mut last = 0u64;
        let mut view = View::default();
        view.stateless = cfg
            .devices
            .iter()
            .filter(|d| !d.points.iter().any(|p| p.name == "state"))
            .map(|d| d.id.clone())
            .collect();
        let mut tail = file.map(Tail::new);
        let mut drawn = 0usize;
        let started = std::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Some(t) = tail.as_mut() {
                view.feed(&t.read_new());
            }
            let collected = metrics.collected();
            let all = metrics.devices.all();
            // In the configuration's order.
            let up: Vec<(String, bool)> = cfg
                .devices
                .iter()
                .map(|c| {
                    let up = all
                        .iter()
                        .find(|d| d.name == c.id)
                        .is_some_and(|d| d.up.load(Relaxed));
                    (c.id.clone(), up)
                })
                .collect();
            let errors: u64 = all
                .iter()
                .map(|d| {
                    d.requests_timeout.load(Relaxed)
                        + d.requests_exception.load(Relaxed)
                        + d.requests_connect_error.load(Relaxed)
                        + d.requests_link_error.load(Relaxed)
                })
                .sum();
            let dropped: u64 = metrics.sinks.all().iter().map(|s| s.dropped_total()).sum();
            let figures = format!(
                "{} s | {} samples/s | devices up {}/{} | errors {} | delivered: {} | dropped {}",
                started.elapsed().as_secs(),
                collected - last,
                up.iter().filter(|(_, u)| *u).count(),
                up.len(),
                errors,
                per_sink(&metrics),
                dropped,
            );
            last = collected;
            let mut stdout = std::io::stdout().lock();
            if tty {
                let text = format!("{figures}\n\n{}", view.screen(&up, crate::model::now_ns()));
                // Back over what was drawn last time, then clear to the end of the screen.
                if drawn > 0 {
                    let _ = write!(stdout, "\x1b[{drawn}A\r\x1b[J");
                }
                let _ = write!(stdout, "{text}");
                drawn = text.lines().count();
            } else {
                let _ = writeln!(stdout, "{figures} | {}", view.line(&up));
            }
            let _ = stdout.flush();
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
    let undelivered = agent.stop().await;
    sim.stop();
    if undelivered > 0 {
        println!(
            "linetap demo: stopped; delivered: {}; {undelivered} bytes kept in the buffer for the next run",
            per_sink(&metrics)
        );
    } else {
        println!(
            "linetap demo: stopped; delivered: {}; nothing left undelivered",
            per_sink(&metrics)
        );
    }
    0
}

/// Samples delivered, per sink: `local=2679 influx=2679`.
fn per_sink(metrics: &crate::observe::metrics::Metrics) -> String {
    metrics
        .sinks
        .all()
        .iter()
        .map(|s| format!("{}={}", s.name, s.delivered.load(Relaxed)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What was appended to a file since the last read (from the start again when the file was
/// replaced by a shorter one).
struct Tail {
    path: std::path::PathBuf,
    offset: u64,
}

impl Tail {
    fn new(path: std::path::PathBuf) -> Tail {
        Tail { path, offset: 0 }
    }

    fn read_new(&mut self) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            self.offset = 0;
        }
        let mut bytes = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err()
            || f.take(len - self.offset).read_to_end(&mut bytes).is_err()
        {
            return String::new();
        }
        self.offset += bytes.len() as u64;
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
