//! Where a broker's messages go: the topics subscribed after every connect, the devices and
//! decoders each topic routes to, and a JSON or single-value message decoded into each of its
//! devices' samples (Sparkplug messages go to the host, `sparkplug_host/`).

use super::deadletter::DeadLetters;
use super::health::{self, DeviceState, LOG_EVERY};
use super::payload::{decode_json, decode_value, Rejected};
use super::{sparkplug_host, Decode, DevicePlan};
use crate::model::{Quality, Sample, SampleBatch};
use crate::mqtt::client::Publish;
use crate::observe::metrics::DeviceMetrics;
use crate::transform::DeviceOutput;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// Topic → (device, decoder) pairs: indexes into the plans and into a plan's `topics`.
pub(super) type Routes = HashMap<String, Vec<(usize, usize)>>;

pub(super) fn routes(plans: &[DevicePlan]) -> Routes {
    let mut routes: Routes = HashMap::new();
    for (d, plan) in plans.iter().enumerate() {
        for (k, (topic, _)) in plan.topics.iter().enumerate() {
            routes.entry(topic.clone()).or_default().push((d, k));
        }
    }
    routes
}

/// The topics to subscribe to, each at the highest QoS a device asks for it.
pub(super) fn subscriptions(
    host: Option<&sparkplug_host::Host>,
    plans: &[DevicePlan],
) -> Vec<(String, u8)> {
    let mut v: Vec<(String, u8)> = Vec::new();
    // The host's own STATE (a late will of an older connection is answered).
    if let Some(h) = host {
        v.extend(h.subscriptions().into_iter().map(|t| (t, 1)));
    }
    for plan in plans {
        for t in &plan.topics() {
            match v.iter_mut().find(|(x, _)| x == t) {
                Some((_, q)) => *q = (*q).max(plan.qos),
                None => v.push((t.clone(), plan.qos)),
            }
        }
    }
    v
}

/// The devices a message on `topic` is for: those that subscribed to it, or, on a Sparkplug
/// topic, the devices of that edge node.
pub(super) fn targets_of(topic: &str, routes: &Routes, plans: &[DevicePlan]) -> Vec<usize> {
    if let Some(t) = routes.get(topic) {
        let mut v: Vec<usize> = t.iter().map(|(d, _)| *d).collect();
        v.dedup();
        return v;
    }
    match sparkplug_host::parse_topic(topic) {
        Some((g, _, n, _)) => plans
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.sp.as_ref()
                    .is_some_and(|sp| sp.group == g && sp.node == n)
            })
            .map(|(d, _)| d)
            .collect(),
        None => Vec::new(),
    }
}

/// A JSON or single-value message (arrived at `arrival`) decoded by each device and decoder
/// its topic routes to, and handed to the device's output; problems counted, dead-lettered
/// and noted. False when the buffer did not take a batch it carried.
#[allow(clippy::too_many_arguments)]
pub(super) async fn deliver(
    p: &Publish,
    arrival: i64,
    routes: &Routes,
    plans: &[DevicePlan],
    state: &mut [DeviceState],
    metrics: &[Arc<DeviceMetrics>],
    outputs: &mut [DeviceOutput],
    dead: &DeadLetters,
) -> bool {
    let mut accepted = true;
    if let Some(targets) = routes.get(&p.topic) {
        for &(d, k) in targets {
            let plan = &plans[d];
            let st = &mut state[d];
            let dm = &metrics[d];
            let mut batch = SampleBatch {
                device: plan.device,
                ..Default::default()
            };
            let mut rejected = Rejected::default();
            let result = match &plan.topics[k].1 {
                Decode::Json(j) => {
                    decode_json(&p.payload, j, arrival, &mut batch.samples, &mut rejected)
                }
                Decode::Value(r) => decode_value(&p.payload, r).map(|value| {
                    for &id in &r.ids {
                        batch.samples.push(Sample {
                            point: id,
                            timestamp_ns: arrival,
                            quality: Quality::Good as i32,
                            value: Some(value.clone()),
                        });
                    }
                }),
            };
            let problem = match result {
                Err(e) => {
                    dm.mqtt_malformed.fetch_add(1, Relaxed);
                    dead.keep(d, &p.topic, &p.payload, &format!("malformed: {e}"));
                    Some(format!("malformed message on {}: {e}", p.topic))
                }
                Ok(()) if rejected.total() > 0 => {
                    dm.mqtt_rejected_values.fetch_add(1, Relaxed);
                    let why = format!(
                        "{} of the wrong type, {} out of range, {} bad timestamps",
                        rejected.wrong_type, rejected.out_of_range, rejected.bad_timestamp
                    );
                    dead.keep(d, &p.topic, &p.payload, &format!("rejected values: {why}"));
                    Some(format!("values not written from {}: {why}", p.topic))
                }
                Ok(()) => {
                    dm.mqtt_ok.fetch_add(1, Relaxed);
                    None
                }
            };
            if let Some(problem) = problem {
                st.errors += 1;
                if st.logged_at.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    tracing::warn!(device = %plan.name, "{problem} (logged at most once a minute per device; counted in linetap_mqtt_messages_total)");
                    st.logged_at = Some(Instant::now());
                }
                st.last_error = problem;
            }
            st.last_message = Some(Instant::now());
            dm.mqtt_ready.store(true, Relaxed);
            if st.up != Some(true) {
                health::record(plan, st, dm, true, &mut outputs[d]).await;
            }
            dm.samples.fetch_add(batch.samples.len() as u64, Relaxed);
            st.seq += 1;
            batch.seq = st.seq;
            if !outputs[d].publish(batch).await {
                dm.mqtt_dropped.fetch_add(1, Relaxed);
                accepted = false;
            }
        }
    }
    accepted
}
