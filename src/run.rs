//! Wires a validated configuration into a running agent: catalog → read plans → one poller
//! per Modbus endpoint → fan-out → one task per sink. Owns start-up and shutdown order:
//! stop the pollers, let every sink drain its queue within the grace period, report.

use crate::config::{Config, Protocol, SinkKind};
use crate::model::catalog::{self, BuiltCatalog};
use crate::observe::metrics::Metrics;
use crate::pipeline::Fanout;
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

/// Batches a sink's queue holds before a slow sink starts losing data for itself only.
const SINK_QUEUE_BATCHES: usize = 4096;

/// A running agent.
pub struct Agent {
    pub metrics: Arc<Metrics>,
    pub catalog: Arc<BuiltCatalog>,
    trigger: Trigger,
    pollers: Vec<JoinHandle<()>>,
    sinks: Vec<JoinHandle<()>>,
    grace: Duration,
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
        let built = Arc::new(catalog::build(config));
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
        let (fanout, rxs) = Fanout::new(metrics.clone(), SINK_QUEUE_BATCHES);
        let mut sinks = Vec::new();
        for (index, ((s, w), rx)) in config.sinks.iter().zip(writers).zip(rxs).enumerate() {
            let settings = SinkLoop {
                batch_size: s.batch_size,
                flush_interval: s.flush_interval,
                grace,
            };
            let mref = Arc::new(SinkMetricsRef {
                metrics: metrics.clone(),
                index,
            });
            let cat = built.clone();
            let sd = trigger.subscribe();
            sinks.push(match w {
                AnyWriter::Influx(w) => {
                    tokio::spawn(
                        async move { sink::run(w, settings, &cat.catalog, rx, mref, sd).await },
                    )
                }
                AnyWriter::File(w) => {
                    tokio::spawn(
                        async move { sink::run(w, settings, &cat.catalog, rx, mref, sd).await },
                    )
                }
            });
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
                fanout.clone(),
                metrics.clone(),
                trigger.subscribe(),
            )));
        }
        Ok(Agent {
            metrics,
            catalog: built,
            trigger,
            pollers,
            sinks,
            grace,
        })
    }

    /// Stops polling, lets the sinks deliver what they hold within the grace period, and
    /// returns the number of samples that could not be delivered.
    pub async fn stop(self) -> u64 {
        self.trigger.fire();
        for p in self.pollers {
            let _ = p.await;
        }
        let deadline = tokio::time::Instant::now() + self.grace + Duration::from_secs(2);
        for s in self.sinks {
            let _ = tokio::time::timeout_at(deadline, s).await;
        }
        self.metrics
            .sinks
            .iter()
            .map(|s| {
                s.dropped_shutdown
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
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
