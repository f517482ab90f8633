//! What a device read by a streaming source keeps across its sessions (RTDE packages, OPC UA
//! subscriptions): the batch being gathered and its health record — written when the device
//! goes up or down and every second while it streams — handed to the buffer together.

use crate::model::catalog::HealthIds;
use crate::model::{now_ns, Quality, Sample, SampleBatch, Value};
use crate::observe::metrics::DeviceMetrics;
use crate::transform::DeviceOutput;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// A device's health record is written at most this often while nothing changes.
pub const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// A streaming device's health across its sessions.
#[derive(Debug, Default)]
pub struct Health {
    pub seq: u64,
    pub up: Option<bool>,
    pub errors: u64,
    /// Why it is down.
    pub last_error: String,
    /// While up: what is wrong anyway (points not read); the health record says it.
    pub problems: String,
    /// The failure last logged (a persistent one is logged once).
    pub logged: Option<String>,
    pub last_health: Option<Instant>,
    /// The health record's `latency_ms`.
    pub latency_ms: f64,
}

/// One device's output as a streaming source sees it.
pub struct Device<'a> {
    pub name: &'a str,
    pub id: u32,
    pub health: HealthIds,
    /// Its batches hold several reads (`DeviceOutput::publish_reads`).
    pub reads: bool,
}

/// Hands what was gathered in `batch` to the buffer, with the health record when `up` changed
/// (`Some`) or it is due.
pub async fn flush(
    d: &Device<'_>,
    h: &mut Health,
    batch: &mut SampleBatch,
    out: &mut DeviceOutput,
    dm: &DeviceMetrics,
    up: Option<bool>,
) {
    let now = Instant::now();
    let changed = up.is_some_and(|u| h.up != Some(u));
    let due = h.up.is_some()
        && h.last_health
            .is_none_or(|t| now.duration_since(t) >= HEALTH_EVERY);
    if changed || due {
        let up = up.or(h.up).unwrap_or(false);
        if up && h.up == Some(false) {
            tracing::info!(device = %d.name, "device is delivering again");
        }
        if up {
            h.logged = None;
        }
        h.up = Some(up);
        dm.up.store(up, Relaxed);
        h.last_health = Some(now);
        let ts = now_ns();
        let last = if up {
            h.problems.clone()
        } else {
            h.last_error.clone()
        };
        for (point, value) in [
            (d.health.up, Value::BoolValue(up)),
            (d.health.latency_ms, Value::DoubleValue(h.latency_ms)),
            (d.health.errors, Value::UintValue(h.errors)),
            (d.health.last_error, Value::StringValue(last)),
        ] {
            batch.samples.push(Sample {
                point,
                timestamp_ns: ts,
                quality: Quality::Good as i32,
                value: Some(value),
            });
        }
    }
    if batch.samples.is_empty() {
        return;
    }
    let n = batch.samples.len();
    let mut full = std::mem::replace(
        batch,
        SampleBatch {
            device: d.id,
            samples: Vec::with_capacity(n),
            ..Default::default()
        },
    );
    h.seq += 1;
    full.seq = h.seq;
    dm.samples.fetch_add(n as u64, Relaxed);
    if d.reads {
        out.publish_reads(full).await;
    } else {
        out.publish(full).await;
    }
}
