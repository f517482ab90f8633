//! Device health on a broker: per device what its health record needs, the record itself
//! (`up`, errors, last error), problems noted and logged at most once a minute, and the stale
//! tick: a device whose messages stop for `stale_after` (a Sparkplug device: from its death)
//! is down.

use super::sparkplug_host::Host;
use super::DevicePlan;
use crate::model::{now_ns, Quality, Sample, SampleBatch, Value};
use crate::observe::metrics::DeviceMetrics;
use crate::transform::DeviceOutput;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per device, what the health record needs.
#[derive(Default)]
pub(super) struct DeviceState {
    pub(super) seq: u64,
    pub(super) last_message: Option<Instant>,
    pub(super) up: Option<bool>,
    pub(super) last_health: Option<Instant>,
    pub(super) errors: u64,
    pub(super) last_error: String,
    /// When a malformed message was last logged (at most once a minute per device).
    pub(super) logged_at: Option<Instant>,
}

/// How often a malformed message of one device is logged.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(60);

/// How often the devices' health is checked: a quarter of the shortest `stale_after`, within
/// 25 ms..1 s.
pub(super) fn interval(plans: &[DevicePlan]) -> tokio::time::Interval {
    let check_every = plans
        .iter()
        .map(|p| p.stale_after / 4)
        .min()
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_millis(25), Duration::from_secs(1));
    let mut tick = tokio::time::interval(check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// One check of every device: a health record when a device came up or went down, every
/// `stale_after` while it stays as it is, and the first once it had its chance to publish
/// (`started` is when the broker task started).
pub(super) async fn tick(
    plans: &[DevicePlan],
    state: &mut [DeviceState],
    host: Option<&Host>,
    metrics: &[Arc<DeviceMetrics>],
    outputs: &mut [DeviceOutput],
    started: Instant,
) {
    let now = Instant::now();
    for (d, plan) in plans.iter().enumerate() {
        let st = &mut state[d];
        // Sparkplug devices report by exception: alive from birth to death.
        let fresh = match &plan.sp {
            Some(_) => host.is_some_and(|h| h.online(d)),
            None => st
                .last_message
                .is_some_and(|t| now.duration_since(t) < plan.stale_after),
        };
        let due = st
            .last_health
            .is_none_or(|t| now.duration_since(t) >= plan.stale_after);
        // The first record once a device had its chance to publish.
        let first_due = st.up.is_none() && now.duration_since(started) >= plan.stale_after;
        if st.up.is_some_and(|u| u != fresh) || (st.up.is_some() && due) || first_due {
            if !fresh && st.up != Some(false) {
                st.last_error = match &plan.sp {
                    Some(_) => "no birth from the edge node yet".to_string(),
                    None => format!(
                        "no message for {:?} on {}",
                        plan.stale_after,
                        plan.topics().join(", ")
                    ),
                };
                tracing::warn!(device = %plan.name, "{}", st.last_error);
            }
            record(plan, st, &metrics[d], fresh, &mut outputs[d]).await;
        }
    }
}

/// Keeps a problem for the health record, logged at most once a minute per device.
pub(super) fn note(plan: &DevicePlan, st: &mut DeviceState, problem: String) {
    st.errors += 1;
    if st.logged_at.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
        tracing::warn!(device = %plan.name, "{problem} (logged at most once a minute per device)");
        st.logged_at = Some(Instant::now());
    }
    st.last_error = problem;
}

/// Writes the device's health record (and its `up` gauge).
pub(super) async fn record(
    plan: &DevicePlan,
    st: &mut DeviceState,
    dm: &DeviceMetrics,
    up: bool,
    output: &mut DeviceOutput,
) {
    let now = Instant::now();
    if up && st.up == Some(false) {
        tracing::info!(device = %plan.name, "device is publishing again");
    }
    st.up = Some(up);
    st.last_health = Some(now);
    dm.up.store(up, Relaxed);
    let ts = now_ns();
    let h = plan.health;
    let sample = |point, value| Sample {
        point,
        timestamp_ns: ts,
        quality: Quality::Good as i32,
        value: Some(value),
    };
    let last = if up && st.last_error.starts_with("no message") {
        String::new()
    } else {
        st.last_error.clone()
    };
    st.seq += 1;
    let batch = SampleBatch {
        device: plan.device,
        seq: st.seq,
        timestamp_ns: 0,
        samples: vec![
            sample(h.up, Value::BoolValue(up)),
            sample(h.errors, Value::UintValue(st.errors)),
            sample(h.last_error, Value::StringValue(last)),
        ],
    };
    dm.samples.fetch_add(batch.samples.len() as u64, Relaxed);
    output.publish(batch).await;
}
