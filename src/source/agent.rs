//! The agent as a source of its own readings: every `[agent] self_interval` it turns its
//! counters and gauges (the ones `/metrics` serves) into one batch of measurement
//! `linetap_agent`, so a plant without Prometheus sees the agent's health in Grafana, as
//! Telegraf's internal input does. The records carry the line's tags, plus `device` or `sink`
//! where a metric has one; the agent-wide record has neither.
//!
//! Its catalog entry is a device with an empty name (no `device` tag). When the set of devices
//! or sinks changes (a reload, a device that appears at run time), the next tick re-registers
//! the points before writing them.

use super::{Source, SourceContext};
use crate::component::{ComponentId, Kind};
use crate::model::catalog::Registry;
use crate::model::Value;
use crate::model::{now_ns, DataType, DeviceDescriptor, PointDescriptor, Sample, SampleBatch, Tag};
use crate::observe::metrics::{DeviceMetrics, Metrics, SinkMetrics};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The measurement of the agent's own records.
pub const MEASUREMENT: &str = "linetap_agent";

type Get<T> = fn(&T) -> Value;

fn int(v: &std::sync::atomic::AtomicU64) -> Value {
    Value::IntValue(v.load(Relaxed).min(i64::MAX as u64) as i64)
}

/// Per-device fields (cumulative counters unless said otherwise), besides `poll_latency_ms`.
const DEVICE_FIELDS: &[(&str, DataType, Get<DeviceMetrics>)] = &[
    ("up", DataType::Boolean, |d| {
        Value::BoolValue(d.up.load(Relaxed))
    }),
    ("requests_ok", DataType::Int64, |d| int(&d.requests_ok)),
    ("requests_timeout", DataType::Int64, |d| {
        int(&d.requests_timeout)
    }),
    ("requests_exception", DataType::Int64, |d| {
        int(&d.requests_exception)
    }),
    ("requests_connect_error", DataType::Int64, |d| {
        int(&d.requests_connect_error)
    }),
    ("requests_link_error", DataType::Int64, |d| {
        int(&d.requests_link_error)
    }),
    ("requests_crc_error", DataType::Int64, |d| {
        int(&d.requests_crc_error)
    }),
    ("requests_frame_error", DataType::Int64, |d| {
        int(&d.requests_frame_error)
    }),
    ("late_replies", DataType::Int64, |d| int(&d.late_replies)),
    ("mqtt_messages_ok", DataType::Int64, |d| int(&d.mqtt_ok)),
    ("mqtt_messages_malformed", DataType::Int64, |d| {
        int(&d.mqtt_malformed)
    }),
    ("mqtt_messages_rejected_values", DataType::Int64, |d| {
        int(&d.mqtt_rejected_values)
    }),
    ("mqtt_messages_dropped", DataType::Int64, |d| {
        int(&d.mqtt_dropped)
    }),
    ("mqtt_messages_oversized", DataType::Int64, |d| {
        int(&d.mqtt_oversized)
    }),
    ("decode_errors", DataType::Int64, |d| int(&d.decode_errors)),
    ("samples_collected", DataType::Int64, |d| int(&d.samples)),
    ("polls", DataType::Int64, |d| int(&d.polls)),
    ("missed_ticks", DataType::Int64, |d| int(&d.missed_ticks)),
];

/// Per-sink fields, besides `write_ms`.
const SINK_FIELDS: &[(&str, DataType, Get<SinkMetrics>)] = &[
    ("samples_delivered", DataType::Int64, |s| int(&s.delivered)),
    ("samples_dropped", DataType::Int64, |s| {
        Value::IntValue(s.dropped_total().min(i64::MAX as u64) as i64)
    }),
    ("dropped_queue_full", DataType::Int64, |s| {
        int(&s.dropped_queue_full)
    }),
    ("dropped_not_finite", DataType::Int64, |s| {
        int(&s.dropped_not_finite)
    }),
    ("dropped_out_of_range", DataType::Int64, |s| {
        int(&s.dropped_out_of_range)
    }),
    ("dropped_rejected", DataType::Int64, |s| {
        int(&s.dropped_rejected)
    }),
    ("dropped_shutdown", DataType::Int64, |s| {
        int(&s.dropped_shutdown)
    }),
    ("dropped_buffer_full", DataType::Int64, |s| {
        int(&s.dropped_buffer_full)
    }),
    ("dropped_corrupt", DataType::Int64, |s| {
        int(&s.dropped_corrupt)
    }),
    ("dropped_disk_error", DataType::Int64, |s| {
        int(&s.dropped_disk_error)
    }),
    ("buffer_bytes", DataType::Int64, |s| int(&s.buffer_bytes)),
    ("buffer_oldest_age_s", DataType::Double, |s| {
        Value::DoubleValue(s.buffer_oldest_ms.load(Relaxed) as f64 / 1000.0)
    }),
    ("requests", DataType::Int64, |s| int(&s.requests)),
    ("retries", DataType::Int64, |s| int(&s.retries)),
    ("bytes_sent", DataType::Int64, |s| int(&s.bytes_sent)),
    ("errors", DataType::Int64, |s| {
        Value::IntValue(
            (s.errors_unauthorized.load(Relaxed)
                + s.errors_not_found.load(Relaxed)
                + s.errors_unavailable.load(Relaxed)
                + s.errors_bad_request.load(Relaxed))
            .min(i64::MAX as u64) as i64,
        )
    }),
    ("held", DataType::Boolean, |s| {
        Value::BoolValue(s.held().is_some())
    }),
];

/// Agent-wide fields.
const AGENT_FIELDS: &[(&str, DataType, &str)] = &[
    ("devices", DataType::Int64, ""),
    ("devices_up", DataType::Int64, ""),
    ("sinks_held", DataType::Int64, ""),
    ("uptime_s", DataType::Double, "s"),
    ("memory_rss_bytes", DataType::Int64, "B"),
    ("buffer_written_bytes", DataType::Int64, "B"),
    ("buffer_corrupt_bytes", DataType::Int64, "B"),
];

fn point(name: &str, dt: DataType, unit: &str, tag: Option<(&str, &str)>) -> PointDescriptor {
    PointDescriptor {
        measurement: MEASUREMENT.to_string(),
        name: name.to_string(),
        unit: unit.to_string(),
        data_type: dt as i32,
        tags: tag
            .map(|(k, v)| {
                vec![Tag {
                    key: k.to_string(),
                    value: v.to_string(),
                }]
            })
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// Which devices and sinks the registered points cover.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Shape {
    devices: Vec<String>,
    sinks: Vec<String>,
}

impl Shape {
    /// The shape for these devices and sinks, whatever order they come in (so that the order
    /// of the metrics slots never counts as a change of the catalog).
    fn new(mut devices: Vec<String>, mut sinks: Vec<String>) -> Shape {
        devices.retain(|d| !d.is_empty());
        devices.sort_unstable();
        sinks.sort_unstable();
        Shape { devices, sinks }
    }

    /// The points of this shape, in the order `Ticker::emit` writes them.
    fn points(&self) -> Vec<PointDescriptor> {
        let mut p: Vec<PointDescriptor> = AGENT_FIELDS
            .iter()
            .map(|(n, dt, unit)| point(n, *dt, unit, None))
            .collect();
        for d in &self.devices {
            let tag = Some(("device", d.as_str()));
            p.extend(
                DEVICE_FIELDS
                    .iter()
                    .map(|(n, dt, _)| point(n, *dt, "", tag)),
            );
            p.push(point("poll_latency_ms", DataType::Double, "ms", tag));
        }
        for s in &self.sinks {
            let tag = Some(("sink", s.as_str()));
            p.extend(SINK_FIELDS.iter().map(|(n, dt, _)| point(n, *dt, "", tag)));
            p.push(point("write_ms", DataType::Double, "ms", tag));
        }
        p
    }
}

fn descriptor() -> DeviceDescriptor {
    DeviceDescriptor {
        name: String::new(),
        kind: String::new(),
        protocol: "agent".to_string(),
        ..Default::default()
    }
}

/// The source: built when `[agent] self_interval` is not zero.
pub struct AgentSource {
    id: ComponentId,
    interval: Duration,
    device: u32,
    ids: Vec<u32>,
    shape: Shape,
}

/// How many points `build` registers for a configuration's devices and sinks (none when
/// `self_interval` is zero): what the registry reserves room for up front.
pub fn point_count(config: &crate::config::Config) -> usize {
    if config.agent.self_interval.is_zero() {
        return 0;
    }
    AGENT_FIELDS.len()
        + config.devices.len() * (DEVICE_FIELDS.len() + 1)
        + config.sinks.len() * (SINK_FIELDS.len() + 1)
}

/// Registers the agent's points for the devices registered so far and the configured sinks.
pub fn build(
    interval: Duration,
    sinks: Vec<String>,
    registry: &mut Registry,
) -> Option<AgentSource> {
    if interval.is_zero() {
        return None;
    }
    let shape = Shape::new(registry.device_names().map(str::to_string).collect(), sinks);
    let ids = registry.set_device(descriptor(), shape.points());
    Some(AgentSource {
        id: ComponentId {
            kind: Kind::Agent,
            name: MEASUREMENT.to_string(),
            fingerprint: interval.as_nanos() as u64,
        },
        interval,
        device: ids.device,
        ids: ids.points,
        shape,
    })
}

impl Source for AgentSource {
    fn id(&self) -> &ComponentId {
        &self.id
    }

    fn devices(&self) -> Vec<ComponentId> {
        Vec::new()
    }

    fn start(self: Box<Self>, ctx: SourceContext) -> JoinHandle<()> {
        let mut out = ctx.output("", self.device);
        let SourceContext {
            catalogs,
            metrics,
            mut shutdown,
            ..
        } = ctx;
        let mut t = Ticker {
            device: self.device,
            ids: self.ids,
            shape: self.shape,
            started: Instant::now(),
            previous: HashMap::new(),
            seq: 0,
        };
        let interval = self.interval;
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.recv() => return,
                }
                let mut devices = metrics.devices.all();
                let mut sinks = metrics.sinks.all();
                devices.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                sinks.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                let shape = Shape::new(
                    devices.iter().map(|d| d.name.clone()).collect(),
                    sinks.iter().map(|s| s.name.clone()).collect(),
                );
                if shape != t.shape {
                    let (ids, version) = catalogs.set_device(descriptor(), shape.points()).await;
                    out.catalog_changed(&version);
                    t.ids = ids.points;
                    t.shape = shape;
                }
                // A file read (procfs, but still): on the blocking pool.
                let rss = tokio::task::spawn_blocking(rss_bytes).await.unwrap_or(0);
                let batch = t.emit(&metrics, &devices, &sinks, rss);
                metrics
                    .self_samples
                    .fetch_add(batch.samples.len() as u64, Relaxed);
                out.publish(batch).await;
            }
        })
    }
}

struct Ticker {
    device: u32,
    ids: Vec<u32>,
    shape: Shape,
    started: Instant,
    /// Per device or sink: (count, sum in µs) at the last tick, for the means over the interval.
    previous: HashMap<(bool, String), (u64, u64)>,
    seq: u64,
}

impl Ticker {
    /// One batch with every point of the shape, in `Shape::points` order (`devices` and
    /// `sinks` are the slots the shape was made from).
    fn emit(
        &mut self,
        metrics: &Metrics,
        devices: &[Arc<DeviceMetrics>],
        sinks: &[Arc<SinkMetrics>],
        rss: u64,
    ) -> SampleBatch {
        self.seq += 1;
        let mut batch = SampleBatch {
            device: self.device,
            seq: self.seq,
            samples: Vec::with_capacity(self.ids.len()),
            timestamp_ns: now_ns(),
        };
        let mut ids = self.ids.iter().copied();
        let mut push = |v: Option<Value>| {
            if let (Some(point), Some(value)) = (ids.next(), v) {
                batch.samples.push(Sample {
                    point,
                    value: Some(value),
                    ..Default::default()
                });
            }
        };
        let up = devices.iter().filter(|d| d.up.load(Relaxed)).count();
        let held = sinks.iter().filter(|s| s.held().is_some()).count();
        for v in [
            Value::IntValue(devices.len() as i64),
            Value::IntValue(up as i64),
            Value::IntValue(held as i64),
            Value::DoubleValue(self.started.elapsed().as_secs_f64()),
            Value::IntValue(rss as i64),
            int(&metrics.buffer_bytes_written),
            int(&metrics.buffer_corrupt_bytes),
        ] {
            push(Some(v));
        }
        for d in devices {
            for (_, _, get) in DEVICE_FIELDS {
                push(Some(get(d)));
            }
            let now = (d.polls.load(Relaxed), d.poll_micros.load(Relaxed));
            push(mean_ms(&mut self.previous, (false, &d.name), now));
        }
        for s in sinks {
            for (_, _, get) in SINK_FIELDS {
                push(Some(get(s)));
            }
            let now = (s.requests.load(Relaxed), s.write_micros.load(Relaxed));
            push(mean_ms(&mut self.previous, (true, &s.name), now));
        }
        batch
    }
}

/// The mean in ms of what was counted since the last tick (`now` = (count, sum in µs)), or
/// nothing when nothing was.
fn mean_ms(
    previous: &mut HashMap<(bool, String), (u64, u64)>,
    key: (bool, &str),
    now: (u64, u64),
) -> Option<Value> {
    let before = previous
        .insert((key.0, key.1.to_string()), now)
        .unwrap_or((0, 0));
    let count = now.0.saturating_sub(before.0);
    let sum = now.1.saturating_sub(before.1);
    (count > 0).then(|| Value::DoubleValue(sum as f64 / count as f64 / 1000.0))
}

/// The resident set size of this process, from /proc (0 where there is none).
fn rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
