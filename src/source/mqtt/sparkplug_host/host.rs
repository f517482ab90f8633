//! linetap as the Sparkplug host of one broker connection: its STATE (birth after every
//! CONNACK, death as the will and before a clean disconnect), the edge nodes a configuration
//! names, and each message on a `spBv1.0/` topic handed to the devices it concerns: catalog
//! changes, samples, health, rebirth requests. Driven by the broker task (`source/mqtt/mod.rs`).

use super::decode::decode;
use super::node::{device_message, may_ask, node_message, rebirth_request, NodeState, SpState};
use super::{now_ms, parse_topic};
use crate::model::{PointDescriptor, Quality, Sample, SampleBatch};
use crate::observe::metrics::DeviceMetrics;
use crate::source::catalogs::Catalogs;
use crate::source::mqtt::deadletter::DeadLetters;
use crate::source::mqtt::health::{self, note, DeviceState, LOG_EVERY};
use crate::source::mqtt::payload::PointRead;
use crate::source::mqtt::DevicePlan;
use crate::transform::DeviceOutput;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A STATE payload (Sparkplug 3.0): `{"online":true|false,"timestamp":MS}`.
pub fn state_payload(online: bool, timestamp_ms: u64) -> Vec<u8> {
    format!("{{\"online\":{online},\"timestamp\":{timestamp_ms}}}").into_bytes()
}

/// `online` of a STATE payload; `None` when it is not one.
pub fn state_online(bytes: &[u8]) -> Option<bool> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get("online")?.as_bool()
}

/// linetap's STATE on one broker: its topic, and the timestamp of the current connection
/// (set before each CONNECT; the will and the birth of that connection carry it).
#[derive(Clone)]
pub struct HostState {
    pub topic: String,
    connect_ms: Arc<AtomicU64>,
}

impl HostState {
    pub fn new(host_id: &str) -> HostState {
        HostState {
            topic: format!("spBv1.0/STATE/{host_id}"),
            connect_ms: Arc::new(AtomicU64::new(now_ms())),
        }
    }

    /// For the next CONNECT: a new timestamp, and the will's payload with it (offline).
    pub fn will(&self) -> Vec<u8> {
        let t = now_ms().max(self.connect_ms.load(Relaxed));
        self.connect_ms.store(t, Relaxed);
        state_payload(false, t)
    }

    /// The birth of the current connection (online, the will's timestamp).
    pub fn birth(&self) -> Vec<u8> {
        state_payload(true, self.connect_ms.load(Relaxed))
    }

    /// The death published before a clean disconnect (offline, now).
    pub fn death(&self) -> Vec<u8> {
        state_payload(false, now_ms().max(self.connect_ms.load(Relaxed)))
    }
}

/// A message the host publishes.
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    /// QoS 1 (else 0).
    pub qos1: bool,
    pub retain: bool,
}

/// One edge node a configuration names.
struct Node {
    group: String,
    node: String,
    /// Rebirth requests at most this often (the shortest `stale_after` of its devices).
    every: Duration,
    state: NodeState,
}

/// linetap as the Sparkplug host of one broker connection: the STATE, the edge nodes' sessions
/// and sequences, and each Sparkplug device's birth.
pub struct Host {
    pub state: HostState,
    nodes: Vec<Node>,
    /// Per device plan (unused for other devices).
    devices: Vec<SpState>,
    /// When a problem of a message no configured device takes was last logged.
    logged_at: Option<Instant>,
}

impl Host {
    /// `None` when no device of the broker speaks Sparkplug.
    pub fn new(host_id: &str, plans: &[DevicePlan]) -> Option<Host> {
        let mut nodes: Vec<Node> = Vec::new();
        for plan in plans {
            let Some(sp) = &plan.sp else { continue };
            match nodes
                .iter_mut()
                .find(|n| n.group == sp.group && n.node == sp.node)
            {
                Some(n) => n.every = n.every.min(plan.stale_after),
                None => nodes.push(Node {
                    group: sp.group.clone(),
                    node: sp.node.clone(),
                    every: plan.stale_after,
                    state: NodeState::default(),
                }),
            }
        }
        if nodes.is_empty() {
            return None;
        }
        Some(Host {
            state: HostState::new(host_id),
            nodes,
            devices: plans.iter().map(|_| SpState::default()).collect(),
            logged_at: None,
        })
    }

    /// Whether device `d` is alive (from its birth to its death).
    pub fn online(&self, d: usize) -> bool {
        self.devices.get(d).is_some_and(|s| s.online)
    }

    /// The topics the host subscribes to besides its devices': its own STATE.
    pub fn subscriptions(&self) -> Vec<String> {
        vec![self.state.topic.clone()]
    }

    /// The STATE birth, published after every CONNACK (after the subscriptions).
    pub fn birth(&self) -> Publish {
        Publish {
            topic: self.state.topic.clone(),
            payload: self.state.birth(),
            qos1: true,
            retain: true,
        }
    }

    /// The STATE death, published before a clean disconnect.
    pub fn death(&self) -> Publish {
        Publish {
            topic: self.state.topic.clone(),
            payload: self.state.death(),
            qos1: true,
            retain: true,
        }
    }

    fn log_other(&mut self, problem: &str) {
        if self.logged_at.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::warn!("Sparkplug: {problem} (logged at most once a minute)");
            self.logged_at = Some(Instant::now());
        }
    }

    /// Handles one message on a `spBv1.0/` topic: follows the node, hands the message to the
    /// devices it concerns (catalog changes, samples, health) and returns whether the buffer
    /// took what it carried, and what to publish (a rebirth request, the STATE again).
    #[allow(clippy::too_many_arguments)]
    pub(in crate::source::mqtt) async fn message(
        &mut self,
        topic: &str,
        bytes: &[u8],
        retained: bool,
        arrival_ns: i64,
        plans: &mut [DevicePlan],
        state: &mut [DeviceState],
        metrics: &[Arc<DeviceMetrics>],
        outputs: &mut [DeviceOutput],
        catalogs: &Catalogs,
        dead: &DeadLetters,
    ) -> (bool, Vec<Publish>) {
        let mut sends = Vec::new();
        if topic == self.state.topic {
            // Our own STATE read offline while we are connected: a late will of an older
            // connection. Online again at once (a retained one is older than our birth).
            if !retained && state_online(bytes) == Some(false) {
                tracing::info!(
                    topic,
                    "Sparkplug: our STATE was set offline (a late will); publishing online again"
                );
                sends.push(self.birth());
            }
            return (true, sends);
        }
        let Some((g, kind, n, dev_id)) = parse_topic(topic) else {
            return (true, sends);
        };
        let Some(ni) = self.nodes.iter().position(|x| x.group == g && x.node == n) else {
            return (true, sends);
        };
        if !matches!(
            kind,
            "NBIRTH" | "NDEATH" | "NDATA" | "DBIRTH" | "DDATA" | "DDEATH"
        ) {
            return (true, sends);
        }
        let targets: Vec<usize> = plans
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.sp.as_ref()
                    .is_some_and(|sp| sp.concerns(g, n, kind, dev_id))
            })
            .map(|(d, _)| d)
            .collect();
        let mut rebirth = false;
        let payload = match decode(kind, bytes) {
            Ok(p) => Some(p),
            Err(e) => {
                let problem = format!("malformed message on {topic}: {e}");
                for &d in &targets {
                    metrics[d].mqtt_malformed.fetch_add(1, Relaxed);
                    dead.keep(d, topic, bytes, &format!("malformed: {e}"));
                    note(&plans[d], &mut state[d], problem.clone());
                }
                if targets.is_empty() {
                    self.log_other(&problem);
                }
                // What it carried is lost and its seq unknown: current values come with a
                // rebirth.
                if kind != "NDEATH" {
                    self.nodes[ni].state.next_seq = None;
                    rebirth = true;
                }
                None
            }
        };
        let mut accepted = true;
        if let Some(payload) = payload {
            let ev = node_message(&mut self.nodes[ni].state, kind, &payload);
            rebirth |= ev.rebirth;
            if targets.is_empty() {
                if let Some(p) = &ev.problem {
                    self.log_other(&format!("{p} ({topic})"));
                }
            }
            for d in targets {
                let Some(sp) = plans[d].sp.as_mut() else {
                    continue;
                };
                let dm = &metrics[d];
                let mut out =
                    device_message(sp, &mut self.devices[d], kind, &payload, &ev, arrival_ns);
                rebirth |= out.rebirth;
                if out.rejected > 0 {
                    dm.mqtt_rejected_values.fetch_add(1, Relaxed);
                    let why = format!("rejected values: {} metrics", out.rejected);
                    dead.keep(d, topic, bytes, &why);
                } else {
                    dm.mqtt_ok.fetch_add(1, Relaxed);
                }
                let dev = &mut self.devices[d];
                if dev.online {
                    dm.mqtt_ready.store(true, Relaxed);
                }
                if out.over_limit > 0 {
                    dm.sparkplug_metrics_over_limit
                        .fetch_add(out.over_limit, Relaxed);
                    if !dev.limit_logged {
                        dev.limit_logged = true;
                        tracing::warn!(device = %plans[d].name, max_metrics = sp.max_metrics, over = out.over_limit, "Sparkplug: a birth brought more metrics than max_metrics; those beyond are not taken (counted in linetap_sparkplug_metrics_over_limit_total; logged once)");
                    }
                }
                let problem = match (&ev.problem, out.problem.take()) {
                    (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                    (a, b) => b.or_else(|| a.clone()),
                };
                if let Some(p) = problem {
                    note(&plans[d], &mut state[d], format!("{p} ({topic})"));
                }
                // Catalog changes a birth brought: points typed by it, and new points.
                let mut descriptors: Vec<PointDescriptor> = std::mem::take(&mut out.retyped);
                let retyped = descriptors.len();
                descriptors.extend(out.new_points.iter().map(|p| p.1.clone()));
                if !descriptors.is_empty() {
                    if let Some((ids, version)) =
                        catalogs.add_points(&plans[d].name, descriptors).await
                    {
                        outputs[d].catalog_changed(&version);
                        if let Some(sp) = plans[d].sp.as_mut() {
                            for ((name, _, kind), id) in
                                out.new_points.iter().zip(ids.into_iter().skip(retyped))
                            {
                                sp.by_name.insert(
                                    name.clone(),
                                    PointRead {
                                        ids: vec![id],
                                        pointer: name.clone(),
                                        kind: *kind,
                                        scaling: None,
                                    },
                                );
                            }
                        }
                    }
                }
                if let Some(sp) = &plans[d].sp {
                    for (name, ts, value) in out.pending.drain(..) {
                        if let Some(id) = sp.by_name.get(&name).and_then(|r| r.ids.first()) {
                            out.samples.push(Sample {
                                point: *id,
                                timestamp_ns: ts,
                                quality: Quality::Good as i32,
                                value: Some(value),
                            });
                        }
                    }
                }
                state[d].last_message = Some(Instant::now());
                if let Some(up) = out.up {
                    health::record(&plans[d], &mut state[d], dm, up, &mut outputs[d]).await;
                }
                if !out.samples.is_empty() {
                    let st = &mut state[d];
                    st.seq += 1;
                    dm.samples.fetch_add(out.samples.len() as u64, Relaxed);
                    let batch = SampleBatch {
                        device: plans[d].device,
                        seq: st.seq,
                        timestamp_ns: 0,
                        samples: out.samples,
                    };
                    if !outputs[d].publish(batch).await {
                        dm.mqtt_dropped.fetch_add(1, Relaxed);
                        accepted = false;
                    }
                }
            }
        }
        let node = &mut self.nodes[ni];
        if rebirth && may_ask(&mut node.state, node.every) {
            let (t, payload) = rebirth_request(&node.group, &node.node);
            tracing::info!(group = %node.group, node = %node.node, "Sparkplug: asking the edge node for a rebirth");
            sends.push(Publish {
                topic: t,
                payload,
                qos1: false,
                retain: false,
            });
        }
        (accepted, sends)
    }
}
