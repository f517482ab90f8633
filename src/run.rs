//! Wires a validated configuration into a running agent: catalog → read plans → one poller
//! per Modbus endpoint → fan-out → one task per sink. Owns start-up and shutdown order:
//! stop the pollers, let every sink drain its queue within the grace period, report.

use crate::buffer::Buffer;
use crate::config::{Config, Protocol, SinkKind};
use crate::model::catalog::{self, BuiltCatalog};
use crate::observe::metrics::Metrics;
use crate::shutdown::{self, Trigger};
use crate::sink::{self, file::FileWriter, influx::InfluxWriter, SinkLoop, SinkMetricsRef};
use crate::source::modbus::link::Link;
use crate::source::modbus::plan::plan_reads;
use crate::source::modbus::poller::{self, DevicePlan};
use crate::source::modbus::rtu::{RtuLink, RtuTarget};
use crate::source::modbus::tcp::TcpLink;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// A running agent.
pub struct Agent {
    pub metrics: Arc<Metrics>,
    trigger: Trigger,
    /// Stops the sinks, after the pollers have stopped and the buffer has written everything.
    sink_trigger: Trigger,
    pollers: Vec<JoinHandle<()>>,
    sinks: Vec<JoinHandle<()>>,
    buffer: Buffer,
    grace: Duration,
    _lock: std::fs::File,
}

/// The per-device read plans of a configuration (also what `linetap check` prints).
pub fn device_plans(config: &Config, built: &BuiltCatalog) -> Vec<DevicePlan> {
    config
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| DevicePlan {
            device: i as u32,
            name: d.id.clone(),
            unit: d.unit,
            timeout: d.timeout,
            turnaround: d.turnaround,
            retries: d.retries,
            probe_interval: d.probe_interval,
            groups: plan_reads(d, &built.point_ids[i]),
            health: built.health[i],
        })
        .collect()
}

impl Agent {
    /// Starts every task. Fails (before polling anything) when a sink cannot be set up,
    /// e.g. its token file is missing.
    pub fn start(config: &Config) -> Result<Agent, String> {
        let mut built = catalog::build(config);
        let metrics = Arc::new(Metrics::new(
            config.devices.iter().map(|d| d.id.clone()),
            config.sinks.iter().map(|s| s.name.clone()),
        ));
        let (trigger, _) = shutdown::channel();
        let grace = config.agent.shutdown_grace;

        // Sinks first, so nothing is polled for a sink that cannot start.
        enum AnyWriter {
            Influx(InfluxWriter),
            File(FileWriter),
        }
        let mut writers = Vec::new();
        for s in &config.sinks {
            let w = match &s.kind {
                SinkKind::Influx(c) => AnyWriter::Influx(
                    InfluxWriter::new(c).map_err(|e| format!("sink {:?}: {e}", s.name))?,
                ),
                SinkKind::File(c) => {
                    sink::file::check_writable(c).map_err(|e| format!("sink {:?}: {e}", s.name))?;
                    AnyWriter::File(FileWriter::new(c.clone()))
                }
            };
            writers.push(w);
        }
        if config.sinks.is_empty() {
            tracing::warn!(
                "no [sinks] configured: readings are polled and counted but delivered nowhere"
            );
        }
        let lock = lock_data_dir(&config.agent.data_dir)?;
        let sink_names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
        let (buffer, input) = Buffer::open(
            &config.agent.data_dir.join("buffer"),
            &config.buffer,
            // The buffer (and through it the sinks) owns the catalog from here on.
            Arc::new(std::mem::take(&mut built.catalog)),
            &sink_names,
            metrics.clone(),
        )?;
        let (sink_trigger, _) = shutdown::channel();
        let mut sinks = Vec::new();
        for (index, (s, w)) in config.sinks.iter().zip(writers).enumerate() {
            let settings = SinkLoop {
                batch_size: s.batch_size,
                flush_interval: s.flush_interval,
                grace,
            };
            let mref = Arc::new(SinkMetricsRef {
                metrics: metrics.clone(),
                index,
            });
            let reader = buffer.reader(index);
            let sd = sink_trigger.subscribe();
            sinks.push(match w {
                AnyWriter::Influx(w) => tokio::spawn(sink::run(w, settings, reader, mref, sd)),
                AnyWriter::File(w) => tokio::spawn(sink::run(w, settings, reader, mref, sd)),
            });
        }

        if let Some(address) = &config.agent.metrics_listen {
            let listener = crate::observe::http::bind(address)?;
            tokio::spawn(crate::observe::http::serve(
                listener,
                metrics.clone(),
                trigger.subscribe(),
            ));
            tracing::info!(%address, "serving /metrics, /healthz, /readyz");
        }

        // One scheduler per bus: devices on the same serial port or at the same address share
        // one connection, one request in flight.
        let mut buses: BTreeMap<String, (Link, Vec<DevicePlan>)> = BTreeMap::new();
        for (plan, d) in device_plans(config, &built)
            .into_iter()
            .zip(&config.devices)
        {
            let (_, plans) = buses.entry(d.bus()).or_insert_with(|| {
                let connect_timeout = config
                    .devices
                    .iter()
                    .filter(|o| o.bus() == d.bus())
                    .map(|o| o.timeout)
                    .max()
                    .unwrap_or(Duration::from_millis(500));
                let link = match (&d.protocol, &d.serial) {
                    (Protocol::ModbusRtu, Some(s)) => {
                        Link::Rtu(RtuLink::new(RtuTarget::Serial(s.clone()), connect_timeout))
                    }
                    (Protocol::ModbusRtuOverTcp, _) => Link::Rtu(RtuLink::new(
                        RtuTarget::Tcp(d.address.clone()),
                        connect_timeout,
                    )),
                    _ => Link::Tcp(TcpLink::new(d.address.clone(), connect_timeout)),
                };
                (link, Vec::new())
            });
            plans.push(plan);
        }
        let mut pollers = Vec::new();
        for (_, (link, plans)) in buses {
            pollers.push(tokio::spawn(poller::run(
                link,
                plans,
                input.clone(),
                metrics.clone(),
                trigger.subscribe(),
            )));
        }
        drop(input);
        Ok(Agent {
            metrics,
            trigger,
            sink_trigger,
            pollers,
            sinks,
            buffer,
            grace,
            _lock: lock,
        })
    }

    /// Stops polling, lets the buffer write everything, lets the sinks deliver what they can
    /// within the grace period, and returns how many buffered bytes stay on disk undelivered.
    pub async fn stop(self) -> u64 {
        self.trigger.fire();
        self.buffer.stopping();
        for p in self.pollers {
            let _ = p.await;
        }
        // The pollers held the last handles to the buffer's input: the writer drains and ends.
        let mut buffer = self.buffer;
        let buffer = match tokio::task::spawn_blocking(move || {
            buffer.close_writer();
            buffer
        })
        .await
        {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!(error = %e, "buffer writer did not stop cleanly");
                None
            }
        };
        self.sink_trigger.fire();
        let deadline = tokio::time::Instant::now() + self.grace + Duration::from_secs(2);
        for s in self.sinks {
            let _ = tokio::time::timeout_at(deadline, s).await;
        }
        // The sinks' last deliveries: save their positions, or the next start re-sends them.
        if let Some(buffer) = buffer {
            let _ = tokio::task::spawn_blocking(move || buffer.persist()).await;
        }
        // Bytes still to deliver: the largest backlog of any sink (the data they share is on disk once).
        self.metrics
            .sinks
            .iter()
            .map(|s| s.buffer_bytes.load(std::sync::atomic::Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }
}

/// Takes the data directory for this process: two agents writing one buffer would corrupt it.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("data_dir {}: {e}", dir.display()))?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "data_dir {} is in use by another linetap process",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
