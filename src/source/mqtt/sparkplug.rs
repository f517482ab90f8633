//! Devices that speak Sparkplug B 3.0 (`format = "sparkplug-b"`): linetap as a host
//! application for the edge nodes and devices a configuration names
//! (shared/reference/sparkplug-b.md, section 6).
//!
//! - STATE: on a broker with Sparkplug devices linetap publishes `spBv1.0/STATE/HOST_ID`,
//!   `{"online":true,"timestamp":T}` (QoS 1, retained) after every CONNACK and its
//!   subscriptions; `{"online":false,"timestamp":T}` is the connection's will and is published
//!   before a clean disconnect. T is the time of the connection's CONNECT.
//! - seq is followed per edge node on everything the node sends: linetap subscribes to the
//!   node's topics (NBIRTH, NDEATH, NDATA and every device's DBIRTH/DDATA/DDEATH), so a device
//!   that no point names advances seq (and is otherwise ignored) instead of looking like a gap.
//! - Births (NBIRTH/DBIRTH) give each metric's name, alias and datatype; an NBIRTH resets the
//!   aliases of every device of the node, and the devices are offline until their DBIRTH.
//!   Data (NDATA/DDATA) arrives by alias; a death (NDEATH with the matching bdSeq, DDEATH)
//!   marks the device down.
//! - A seq gap, a message without seq, data before a birth or an unknown alias asks the node
//!   for a rebirth (NCMD `Node Control/Rebirth`, at most once per `stale_after`).
//! - Wire values are range-checked: a seq above 255 makes the message malformed; a timestamp
//!   that does not fit nanoseconds in an i64 makes its values rejected. No input panics.
//! - A point without `type` takes its birth metric's datatype. A device without points takes
//!   every metric of its births (the catalog grows at run time), at most `max_metrics`; the
//!   metrics beyond are counted (`linetap_sparkplug_metrics_over_limit_total`) and logged once.

use super::health::{self, note, DeviceState, LOG_EVERY};
use super::payload::{from_sparkplug, PointRead};
use super::DevicePlan;
use crate::config::PointType;
use crate::model::{DataType, PointDescriptor, Quality, Sample, SampleBatch, Value};
use crate::mqtt::sparkplug::{datatype, metric, topic, Metric, Payload};
use crate::observe::metrics::DeviceMetrics;
use crate::source::catalogs::Catalogs;
use crate::transform::DeviceOutput;
use prost::Message;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A configured point without `type`: what the catalog says of it, until a birth says more.
pub struct FromBirth {
    /// Its elements' descriptors, as registered.
    pub descriptors: Vec<PointDescriptor>,
    /// Scaled points are written as doubles whatever the datatype.
    pub scaled: bool,
}

/// What a Sparkplug device is and reads.
pub struct SpDevice {
    pub group: String,
    pub node: String,
    pub device: Option<String>,
    /// The measurement of metrics taken from births (the device's kind).
    pub measurement: String,
    /// Points by metric name (configured, or added from births).
    pub by_name: HashMap<String, PointRead>,
    /// No configured points: every birth metric becomes a point.
    pub auto: bool,
    /// Configured points without `type`, by metric name: typed by the birth's datatype.
    pub from_birth: HashMap<String, FromBirth>,
    /// The most metrics a birth may bring (and, without configured points, the most points).
    pub max_metrics: usize,
}

impl SpDevice {
    /// The topics the device's messages (and every other message of its edge node) arrive on.
    pub fn subscriptions(&self) -> Vec<String> {
        node_subscriptions(&self.group, &self.node)
    }

    /// Whether a message of `kind` from node `g`/`n` (device `dev`) concerns this device.
    fn concerns(&self, g: &str, n: &str, kind: &str, dev: Option<&str>) -> bool {
        if self.group != g || self.node != n {
            return false;
        }
        match kind {
            "NBIRTH" | "NDEATH" => true,
            "NDATA" => self.device.is_none(),
            "DBIRTH" | "DDATA" | "DDEATH" => dev.is_some() && self.device.as_deref() == dev,
            _ => false,
        }
    }
}

/// Everything an edge node sends: its own messages and those of every device under it.
pub fn node_subscriptions(g: &str, n: &str) -> Vec<String> {
    vec![
        topic(g, "NBIRTH", n, None),
        topic(g, "NDEATH", n, None),
        topic(g, "NDATA", n, None),
        topic(g, "DBIRTH", n, Some("+")),
        topic(g, "DDATA", n, Some("+")),
        topic(g, "DDEATH", n, Some("+")),
    ]
}

/// `spBv1.0/GROUP/TYPE/NODE[/DEVICE]`.
pub fn parse_topic(t: &str) -> Option<(&str, &str, &str, Option<&str>)> {
    let mut parts = t.split('/');
    if parts.next()? != "spBv1.0" {
        return None;
    }
    let group = parts.next()?;
    let kind = parts.next()?;
    let node = parts.next()?;
    let device = parts.next();
    if parts.next().is_some() {
        return None;
    }
    Some((group, kind, node, device))
}

/// Per edge node: its session and sequence.
#[derive(Default)]
pub struct NodeState {
    /// The bdSeq of the current NBIRTH.
    pub bd_seq: Option<u64>,
    /// The seq due next (0–255).
    pub next_seq: Option<u8>,
    /// An NBIRTH was seen and no matching NDEATH since.
    pub born: bool,
    pub last_rebirth: Option<Instant>,
}

/// What a message did to its edge node (the same for every device it concerns).
#[derive(Default, Debug)]
pub struct NodeEvent {
    /// An NBIRTH: every device's aliases reset, offline until its DBIRTH.
    pub born: bool,
    /// The NDEATH of the current session: the node and its devices are down.
    pub died: bool,
    /// A seq gap, a message without seq, or a message before the NBIRTH.
    pub rebirth: bool,
    pub problem: Option<String>,
}

/// Per device: the aliases of its current birth, and whether it is alive.
#[derive(Default)]
pub struct SpState {
    pub aliases: HashMap<u64, (String, u32)>,
    /// Datatypes by metric name (a data message without alias names its metric).
    pub datatypes: HashMap<String, u32>,
    pub online: bool,
    /// The current birth had more metrics than `max_metrics`: an alias it did not record is
    /// not a reason for a rebirth.
    pub overflow: bool,
    /// The metrics over `max_metrics` were logged (once).
    pub limit_logged: bool,
}

/// What a message did to a device.
#[derive(Default)]
pub struct Outcome {
    pub samples: Vec<Sample>,
    /// Metrics to add to the catalog (from a birth), with the point each becomes.
    pub new_points: Vec<(String, PointDescriptor, PointType)>,
    /// Configured points without `type` whose datatype the birth gave: their descriptors now.
    pub retyped: Vec<PointDescriptor>,
    /// Values of those new metrics, by name, until they have ids.
    pub pending: Vec<(String, i64, Value)>,
    /// `Some(up)` when the device came up or went down.
    pub up: Option<bool>,
    /// An unknown alias or data before the device's birth: ask for a rebirth.
    pub rebirth: bool,
    /// Values that could not be read (wrong type, unknown alias, a timestamp out of range).
    pub rejected: u64,
    /// Birth metrics beyond `max_metrics`, not taken.
    pub over_limit: u64,
    pub problem: Option<String>,
}

/// The point type a Sparkplug datatype is written as.
fn point_type(dt: u32) -> Option<(PointType, DataType)> {
    Some(match dt {
        datatype::INT8 => (PointType::I8, DataType::Int8),
        datatype::INT16 => (PointType::I16, DataType::Int16),
        datatype::INT32 => (PointType::I32, DataType::Int32),
        datatype::INT64 | 13 => (PointType::I64, DataType::Int64),
        datatype::UINT8 => (PointType::U8, DataType::Uint8),
        datatype::UINT16 => (PointType::U16, DataType::Uint16),
        datatype::UINT32 => (PointType::U32, DataType::Uint32),
        datatype::UINT64 => (PointType::U64, DataType::Uint64),
        datatype::FLOAT => (PointType::F32, DataType::Float),
        datatype::DOUBLE => (PointType::F64, DataType::Double),
        datatype::BOOLEAN => (PointType::Bool, DataType::Boolean),
        datatype::STRING | 14 | 15 => (PointType::String, DataType::String),
        _ => return None,
    })
}

/// A wire timestamp (ms since the epoch, u64) in nanoseconds; `None` when it does not fit.
pub fn ms_to_ns(ms: u64) -> Option<i64> {
    i64::try_from(ms).ok()?.checked_mul(1_000_000)
}

/// Decodes a payload and checks its seq (0–255; NDEATH and commands carry none that matters).
pub fn decode(kind: &str, bytes: &[u8]) -> Result<Payload, String> {
    let payload = Payload::decode(bytes).map_err(|e| format!("not a Sparkplug payload: {e}"))?;
    if let Some(seq) = payload.seq {
        if seq > 255 && !matches!(kind, "NDEATH" | "NCMD" | "DCMD") {
            return Err(format!("seq {seq} is out of 0..255"));
        }
    }
    Ok(payload)
}

/// The `bdSeq` metric of an NBIRTH or NDEATH (Int64 in long_value; int_value accepted).
fn bd_seq_of(payload: &Payload) -> Option<u64> {
    payload
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("bdSeq"))
        .and_then(|m| match m.value {
            Some(metric::Value::LongValue(v)) => Some(v),
            Some(metric::Value::IntValue(v)) => Some(u64::from(v)),
            _ => None,
        })
}

/// Follows the node's session and seq through one of its messages (any device's).
pub fn node_message(node: &mut NodeState, kind: &str, payload: &Payload) -> NodeEvent {
    let mut ev = NodeEvent::default();
    let next = |s: u64| u8::try_from(s).ok().map(|s| s.wrapping_add(1));
    match kind {
        "NBIRTH" => {
            node.born = true;
            ev.born = true;
            node.bd_seq = bd_seq_of(payload);
            node.next_seq = payload.seq.and_then(next);
            if payload.seq.is_none() {
                ev.problem = Some("NBIRTH without seq".into());
            }
        }
        "DBIRTH" | "NDATA" | "DDATA" | "DDEATH" => {
            match payload.seq {
                Some(seq) => {
                    if let Some(expected) = node.next_seq {
                        if seq != u64::from(expected) {
                            ev.rebirth = true;
                            ev.problem = Some(format!("seq gap: {seq} where {expected} was due"));
                        }
                    }
                    node.next_seq = next(seq);
                }
                None => {
                    ev.rebirth = true;
                    ev.problem = Some(format!("{kind} without seq"));
                    node.next_seq = None;
                }
            }
            if !node.born {
                ev.rebirth = true;
                ev.problem
                    .get_or_insert_with(|| format!("{kind} before the edge node's NBIRTH"));
            }
        }
        "NDEATH" => {
            // A late will of an older session (another bdSeq) is ignored.
            let bd = bd_seq_of(payload);
            if bd.is_some() && bd == node.bd_seq {
                node.born = false;
                node.next_seq = None;
                ev.died = true;
            }
        }
        // Commands and STATE: not ours to follow.
        _ => {}
    }
    ev
}

/// What one message (already through `node_message`) does to one device it concerns.
pub fn device_message(
    dev: &mut SpDevice,
    state: &mut SpState,
    kind: &str,
    payload: &Payload,
    node: &NodeEvent,
    arrival_ns: i64,
) -> Outcome {
    let mut out = Outcome::default();
    // `None`: no payload timestamp; `Some(None)`: one that does not fit.
    let payload_ts = payload.timestamp.map(ms_to_ns);
    match kind {
        "NBIRTH" if dev.device.is_none() => birth(
            dev,
            state,
            &payload.metrics,
            payload_ts,
            arrival_ns,
            &mut out,
        ),
        "NBIRTH" => {
            // The node's new session: the device's aliases are gone, and it is offline until
            // its DBIRTH (the health record says so at the next check if none follows).
            state.aliases.clear();
            state.datatypes.clear();
            state.overflow = false;
            state.online = false;
        }
        "DBIRTH" => birth(
            dev,
            state,
            &payload.metrics,
            payload_ts,
            arrival_ns,
            &mut out,
        ),
        "NDATA" | "DDATA" => {
            if !state.online {
                // Data before a birth: the aliases are unknown.
                out.rebirth = true;
                out.problem = Some(format!("{kind} before the device's birth"));
            }
            data(
                dev,
                state,
                &payload.metrics,
                payload_ts,
                arrival_ns,
                &mut out,
            );
        }
        "NDEATH" if node.died && state.online => {
            state.online = false;
            out.up = Some(false);
            out.problem = Some("the edge node died (NDEATH)".into());
        }
        "DDEATH" if state.online => {
            state.online = false;
            out.up = Some(false);
            out.problem = Some("the device died (DDEATH)".into());
        }
        _ => {}
    }
    out
}

/// Handles one message of a node for one device: `node_message` then `device_message` (what
/// the broker loop does, for a node with this one device; used by tests).
pub fn handle(
    dev: &mut SpDevice,
    state: &mut SpState,
    node: &mut NodeState,
    kind: &str,
    bytes: &[u8],
    arrival_ns: i64,
) -> Result<Outcome, String> {
    let payload = decode(kind, bytes)?;
    let ev = node_message(node, kind, &payload);
    let (g, n) = (dev.group.clone(), dev.node.clone());
    let mut out = if dev.concerns(&g, &n, kind, dev.device.clone().as_deref()) {
        device_message(dev, state, kind, &payload, &ev, arrival_ns)
    } else {
        Outcome::default()
    };
    out.rebirth |= ev.rebirth;
    if ev.problem.is_some() {
        out.problem = ev.problem;
    }
    Ok(out)
}

fn birth(
    dev: &mut SpDevice,
    state: &mut SpState,
    metrics: &[Metric],
    payload_ts: Option<Option<i64>>,
    arrival_ns: i64,
    out: &mut Outcome,
) {
    state.aliases.clear();
    state.datatypes.clear();
    state.overflow = false;
    for m in metrics {
        let Some(name) = m.name.as_deref() else {
            continue;
        };
        if name == "bdSeq" || name.starts_with("Node Control/") {
            continue;
        }
        let point = dev.by_name.contains_key(name) || out.new_points.iter().any(|p| p.0 == name);
        // Bounded: what a birth may bring, and (without configured points) what it may add.
        if !point
            && (state.datatypes.len() >= dev.max_metrics
                || (dev.auto && dev.by_name.len() + out.new_points.len() >= dev.max_metrics))
        {
            out.over_limit += 1;
            state.overflow = true;
            continue;
        }
        let dt = m.datatype.unwrap_or(0);
        if let Some(a) = m.alias {
            state.aliases.insert(a, (name.to_string(), dt));
        }
        state.datatypes.insert(name.to_string(), dt);
        // A configured point without `type`: the birth's datatype, in the catalog too.
        if let (Some(fb), Some((kind, data_type))) = (dev.from_birth.get_mut(name), point_type(dt))
        {
            let data_type = if fb.scaled {
                DataType::Double
            } else {
                data_type
            } as i32;
            if let Some(p) = dev.by_name.get_mut(name) {
                p.kind = kind;
            }
            if fb.descriptors.iter().any(|d| d.data_type != data_type) {
                for d in &mut fb.descriptors {
                    d.data_type = data_type;
                }
                out.retyped.extend(fb.descriptors.iter().cloned());
            }
        }
        if dev.auto && !point {
            if let Some((kind, data_type)) = point_type(dt) {
                out.new_points.push((
                    name.to_string(),
                    PointDescriptor {
                        measurement: dev.measurement.clone(),
                        name: name.to_string(),
                        data_type: data_type as i32,
                        unit: unit_of(m),
                        ..Default::default()
                    },
                    kind,
                ));
            }
        }
    }
    if !state.online {
        state.online = true;
        out.up = Some(true);
    }
    // The birth's values are current values: written once the new points have ids.
    data(dev, state, metrics, payload_ts, arrival_ns, out);
}

fn unit_of(m: &Metric) -> String {
    let Some(props) = &m.properties else {
        return String::new();
    };
    props
        .keys
        .iter()
        .zip(&props.values)
        .find(|(k, _)| k.as_str() == "engUnit")
        .and_then(|(_, v)| match &v.value {
            Some(crate::mqtt::sparkplug::property_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn data(
    dev: &SpDevice,
    state: &SpState,
    metrics: &[Metric],
    payload_ts: Option<Option<i64>>,
    arrival_ns: i64,
    out: &mut Outcome,
) {
    for m in metrics {
        let (name, dt) = match (&m.name, m.alias) {
            (Some(n), _) => (
                n.as_str(),
                m.datatype
                    .or_else(|| state.datatypes.get(n).copied())
                    .unwrap_or(0),
            ),
            (None, Some(a)) => match state.aliases.get(&a) {
                Some((n, dt)) => (n.as_str(), *dt),
                // A metric of a birth over `max_metrics`: not taken, not a reason to rebirth.
                None if state.overflow => continue,
                None => {
                    out.rejected += 1;
                    out.rebirth = true;
                    out.problem = Some(format!("unknown alias {a}"));
                    continue;
                }
            },
            (None, None) => {
                out.rejected += 1;
                out.problem = Some("a metric without name or alias".into());
                continue;
            }
        };
        if name == "bdSeq" || name.starts_with("Node Control/") {
            continue;
        }
        if m.is_null == Some(true) {
            continue;
        }
        let Some(value) = &m.value else { continue };
        // A point of the device, or one this birth adds (read with the kind the birth gives
        // it, its value kept until it has an id).
        let added;
        let (point, new) = match dev.by_name.get(name) {
            Some(p) => (p, false),
            None => match out.new_points.iter().find(|p| p.0 == name).map(|p| p.2) {
                Some(kind) => {
                    added = PointRead {
                        ids: Vec::new(),
                        pointer: name.to_string(),
                        kind,
                        scale: 1.0,
                        offset: 0.0,
                    };
                    (&added, true)
                }
                // Not a point of this device.
                None => continue,
            },
        };
        if dev.from_birth.contains_key(name) && !state.datatypes.contains_key(name) {
            out.rejected += 1;
            out.problem = Some(format!(
                "metric {name:?}: no birth yet, so the datatype of this point without `type` is unknown"
            ));
            continue;
        }
        let ts = match timestamp(m, payload_ts, arrival_ns) {
            Ok(ts) => ts,
            Err(e) => {
                out.rejected += 1;
                out.problem = Some(format!("metric {name:?}: {e}"));
                continue;
            }
        };
        match from_sparkplug(value, dt, point) {
            Ok(v) if new => out.pending.push((name.to_string(), ts, v)),
            Ok(v) => {
                for &id in &point.ids {
                    out.samples.push(Sample {
                        point: id,
                        timestamp_ns: ts,
                        quality: Quality::Good as i32,
                        value: Some(v.clone()),
                    });
                }
            }
            Err(e) => {
                out.rejected += 1;
                out.problem = Some(format!("metric {name:?}: {e}"));
            }
        }
    }
}

/// A value's time: the metric's timestamp, else the payload's, else the arrival time; an error
/// when the one that applies does not fit.
fn timestamp(m: &Metric, payload_ts: Option<Option<i64>>, arrival_ns: i64) -> Result<i64, String> {
    match m.timestamp {
        Some(t) => ms_to_ns(t).ok_or_else(|| format!("timestamp {t} ms is out of range")),
        None => match payload_ts {
            None => Ok(arrival_ns),
            Some(Some(ns)) => Ok(ns),
            Some(None) => Err("the payload timestamp is out of range".into()),
        },
    }
}

/// The NCMD that asks a node for a rebirth.
pub fn rebirth_request(group: &str, node: &str) -> (String, Vec<u8>) {
    let p = Payload {
        timestamp: Some(now_ms()),
        metrics: vec![Metric {
            name: Some("Node Control/Rebirth".into()),
            datatype: Some(datatype::BOOLEAN),
            value: Some(metric::Value::BooleanValue(true)),
            ..Default::default()
        }],
        ..Default::default()
    };
    (topic(group, "NCMD", node, None), p.encode_to_vec())
}

/// Whether a rebirth may be asked for now (at most once per `every` per node).
pub fn may_ask(node: &mut NodeState, every: Duration) -> bool {
    let now = Instant::now();
    if node
        .last_rebirth
        .is_some_and(|t| now.duration_since(t) < every)
    {
        return false;
    }
    node.last_rebirth = Some(now);
    true
}

fn now_ms() -> u64 {
    u64::try_from(crate::model::now_ns() / 1_000_000).unwrap_or(0)
}

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
    pub(super) async fn message(
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
        dead: &super::deadletter::DeadLetters,
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
                                        scale: 1.0,
                                        offset: 0.0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn device(auto: bool) -> SpDevice {
        SpDevice {
            group: "g".into(),
            node: "n".into(),
            device: Some("d".into()),
            measurement: "robot".into(),
            by_name: HashMap::new(),
            auto,
            from_birth: HashMap::new(),
            max_metrics: 2_000,
        }
    }

    fn m(name: Option<&str>, alias: Option<u64>, dt: Option<u32>, v: metric::Value) -> Metric {
        Metric {
            name: name.map(Into::into),
            alias,
            datatype: dt,
            value: Some(v),
            ..Default::default()
        }
    }

    fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            seq,
            timestamp: Some(1_000),
            metrics,
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn point(id: u32, kind: PointType) -> PointRead {
        PointRead {
            ids: vec![id],
            pointer: String::new(),
            kind,
            scale: 1.0,
            offset: 0.0,
        }
    }

    #[test]
    fn topics() {
        assert_eq!(
            parse_topic("spBv1.0/g/DDATA/n/d"),
            Some(("g", "DDATA", "n", Some("d")))
        );
        assert_eq!(
            parse_topic("spBv1.0/g/NBIRTH/n"),
            Some(("g", "NBIRTH", "n", None))
        );
        assert_eq!(parse_topic("spBv1.0/g/DDATA/n/d/x"), None);
        assert_eq!(parse_topic("other/g/DDATA/n"), None);
        assert_eq!(parse_topic("spBv1.0/STATE/h"), None);
        assert!(node_subscriptions("g", "n").contains(&"spBv1.0/g/DDATA/n/+".to_string()));
    }

    #[test]
    fn a_birth_then_data_by_alias_and_a_gap() {
        let mut dev = device(true);
        let (mut st, mut node) = (SpState::default(), NodeState::default());
        let nbirth = payload(Some(0), vec![]);
        handle(&mut dev, &mut st, &mut node, "NBIRTH", &nbirth, 5).unwrap();
        let birth = payload(
            Some(1),
            vec![m(
                Some("Temp"),
                Some(7),
                Some(datatype::DOUBLE),
                metric::Value::DoubleValue(20.5),
            )],
        );
        let out = handle(&mut dev, &mut st, &mut node, "DBIRTH", &birth, 5).unwrap();
        assert_eq!(out.up, Some(true));
        assert_eq!(out.new_points.len(), 1);
        assert_eq!(out.pending.len(), 1);
        assert!(!out.rebirth);
        let data = payload(
            Some(3),
            vec![m(None, Some(9), None, metric::Value::DoubleValue(1.0))],
        );
        let out = handle(&mut dev, &mut st, &mut node, "DDATA", &data, 5).unwrap();
        // seq 3 where 2 was due, and an unknown alias.
        assert!(out.rebirth);
        assert_eq!(out.rejected, 1);
    }

    /// The issue's case: devices A and B under one node, only A configured. B's births and
    /// data, and the node's NDATA, advance seq: no gap, no rebirth.
    #[test]
    fn messages_of_other_devices_advance_seq() {
        let mut a = device(false);
        a.by_name.insert("T".into(), point(1, PointType::F64));
        let (mut st, mut node) = (SpState::default(), NodeState::default());
        let t = |v| {
            vec![m(
                Some("T"),
                Some(1),
                Some(datatype::DOUBLE),
                metric::Value::DoubleValue(v),
            )]
        };
        let mut seq = 0u64;
        let mut next = || {
            let s = seq;
            seq = (seq + 1) % 256;
            Some(s)
        };
        let out = handle(
            &mut a,
            &mut st,
            &mut node,
            "NBIRTH",
            &payload(next(), vec![]),
            1,
        )
        .unwrap();
        assert!(!out.rebirth);
        let out = handle(
            &mut a,
            &mut st,
            &mut node,
            "DBIRTH",
            &payload(next(), t(1.0)),
            1,
        )
        .unwrap();
        assert!(!out.rebirth && out.samples.len() == 1);
        for i in 0..600 {
            // B (not configured) and the node's own data: only the node follows them.
            let kind = if i % 3 == 0 { "NDATA" } else { "DDATA" };
            let ev = node_message(
                &mut node,
                kind,
                &decode(kind, &payload(next(), vec![])).unwrap(),
            );
            assert!(!ev.rebirth, "{:?}", ev.problem);
            let out = handle(
                &mut a,
                &mut st,
                &mut node,
                "DDATA",
                &payload(next(), t(i as f64)),
                1,
            )
            .unwrap();
            assert!(!out.rebirth, "{:?}", out.problem);
            assert_eq!(out.samples[0].value, Some(Value::DoubleValue(i as f64)));
        }
    }

    #[test]
    fn an_nbirth_resets_aliases_and_devices_wait_for_their_dbirth() {
        let mut dev = device(false);
        dev.by_name.insert("X".into(), point(1, PointType::F64));
        dev.by_name.insert("Y".into(), point(2, PointType::F64));
        let (mut st, mut node) = (SpState::default(), NodeState::default());
        let birth = |seq, x_alias, y_alias| {
            payload(
                Some(seq),
                vec![
                    m(
                        Some("X"),
                        Some(x_alias),
                        Some(datatype::DOUBLE),
                        metric::Value::DoubleValue(0.0),
                    ),
                    m(
                        Some("Y"),
                        Some(y_alias),
                        Some(datatype::DOUBLE),
                        metric::Value::DoubleValue(0.0),
                    ),
                ],
            )
        };
        let by_alias = |seq, alias, v| {
            payload(
                Some(seq),
                vec![m(None, Some(alias), None, metric::Value::DoubleValue(v))],
            )
        };
        handle(
            &mut dev,
            &mut st,
            &mut node,
            "NBIRTH",
            &payload(Some(0), vec![]),
            1,
        )
        .unwrap();
        handle(&mut dev, &mut st, &mut node, "DBIRTH", &birth(1, 10, 11), 1).unwrap();
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "DDATA",
            &by_alias(2, 10, 5.0),
            1,
        )
        .unwrap();
        assert_eq!(out.samples[0].point, 1);
        // A new session: aliases swapped. Until the DBIRTH the device is offline and its
        // aliases unknown.
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "NBIRTH",
            &payload(Some(0), vec![]),
            1,
        )
        .unwrap();
        assert!(!st.online && st.aliases.is_empty() && out.up.is_none());
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "DDATA",
            &by_alias(1, 10, 6.0),
            1,
        )
        .unwrap();
        assert!(out.rebirth && out.samples.is_empty() && out.rejected == 1);
        let out = handle(&mut dev, &mut st, &mut node, "DBIRTH", &birth(2, 11, 10), 1).unwrap();
        assert_eq!(out.up, Some(true));
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "DDATA",
            &by_alias(3, 10, 7.0),
            1,
        )
        .unwrap();
        assert!(!out.rebirth);
        assert_eq!(out.samples[0].point, 2, "alias 10 is Y now");
        assert_eq!(out.samples[0].value, Some(Value::DoubleValue(7.0)));
    }

    #[test]
    fn a_point_without_type_takes_the_birth_datatype() {
        let mut dev = device(false);
        dev.by_name.insert("Parts".into(), point(4, PointType::F64));
        dev.from_birth.insert(
            "Parts".into(),
            FromBirth {
                descriptors: vec![PointDescriptor {
                    id: 4,
                    name: "parts".into(),
                    data_type: DataType::Double as i32,
                    ..Default::default()
                }],
                scaled: false,
            },
        );
        let (mut st, mut node) = (SpState::default(), NodeState::default());
        // Data before any birth: the datatype is unknown, the value not written as a double.
        let early = payload(
            None,
            vec![m(Some("Parts"), None, None, metric::Value::IntValue(1))],
        );
        let out = handle(&mut dev, &mut st, &mut node, "DDATA", &early, 1).unwrap();
        assert!(out.samples.is_empty() && out.rejected == 1);
        let birth = payload(
            Some(0),
            vec![m(
                Some("Parts"),
                Some(3),
                Some(datatype::UINT32),
                metric::Value::IntValue(4_000_000_000),
            )],
        );
        let out = handle(&mut dev, &mut st, &mut node, "DBIRTH", &birth, 1).unwrap();
        assert_eq!(out.retyped.len(), 1);
        assert_eq!(out.retyped[0].data_type, DataType::Uint32 as i32);
        assert_eq!(out.samples[0].value, Some(Value::IntValue(4_000_000_000)));
        let data = payload(
            Some(1),
            vec![m(None, Some(3), None, metric::Value::IntValue(7))],
        );
        let out = handle(&mut dev, &mut st, &mut node, "DDATA", &data, 1).unwrap();
        assert_eq!(out.samples[0].value, Some(Value::IntValue(7)));
        // The next birth with the same datatype changes nothing in the catalog.
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "DBIRTH",
            &payload(
                Some(2),
                vec![m(
                    Some("Parts"),
                    Some(3),
                    Some(datatype::UINT32),
                    metric::Value::IntValue(8),
                )],
            ),
            1,
        )
        .unwrap();
        assert!(out.retyped.is_empty());
    }

    #[test]
    fn births_bring_at_most_max_metrics() {
        let mut dev = device(true);
        dev.max_metrics = 3;
        let (mut st, mut node) = (SpState::default(), NodeState::default());
        node.born = true;
        let metrics: Vec<Metric> = (0..5)
            .map(|i| {
                m(
                    Some(&format!("M{i}")),
                    Some(i),
                    Some(datatype::DOUBLE),
                    metric::Value::DoubleValue(i as f64),
                )
            })
            .collect();
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "DBIRTH",
            &payload(Some(0), metrics),
            1,
        )
        .unwrap();
        assert_eq!(out.new_points.len(), 3);
        assert_eq!(out.over_limit, 2);
        assert_eq!(out.pending.len(), 3);
        // Data of a metric beyond the limit: not taken, and no reason for a rebirth.
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "DDATA",
            &payload(
                Some(1),
                vec![m(None, Some(4), None, metric::Value::DoubleValue(1.0))],
            ),
            1,
        )
        .unwrap();
        assert!(!out.rebirth && out.rejected == 0 && out.samples.is_empty());
    }

    #[test]
    fn wire_values_out_of_range() {
        assert!(decode("DDATA", &payload(Some(256), vec![])).is_err());
        assert!(decode("DDATA", &payload(Some(u64::MAX), vec![])).is_err());
        assert!(decode("NDEATH", &payload(Some(u64::MAX), vec![])).is_ok());
        let mut node = NodeState::default();
        node_message(
            &mut node,
            "NBIRTH",
            &decode("NBIRTH", &payload(Some(255), vec![])).unwrap(),
        );
        assert_eq!(node.next_seq, Some(0));
        assert_eq!(ms_to_ns(u64::MAX), None);
        assert_eq!(
            ms_to_ns(i64::MAX as u64 / 1_000_000),
            Some(i64::MAX / 1_000_000 * 1_000_000)
        );
        assert_eq!(ms_to_ns(i64::MAX as u64 / 1_000_000 + 1), None);
        let mut dev = device(true);
        let (mut st, mut node) = (SpState::default(), NodeState::default());
        let mut late = m(
            Some("A"),
            Some(1),
            Some(datatype::DOUBLE),
            metric::Value::DoubleValue(1.0),
        );
        late.timestamp = Some(u64::MAX);
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "DBIRTH",
            &payload(Some(0), vec![late]),
            1,
        )
        .unwrap();
        assert_eq!(out.rejected, 1);
        assert!(out.pending.is_empty());
        // (The broker loop adds the new point to the catalog.)
        dev.by_name.insert("A".into(), point(1, PointType::F64));
        let p = Payload {
            seq: Some(1),
            timestamp: Some(u64::MAX),
            metrics: vec![m(None, Some(1), None, metric::Value::DoubleValue(2.0))],
            ..Default::default()
        };
        let out = handle(&mut dev, &mut st, &mut node, "DDATA", &p.encode_to_vec(), 1).unwrap();
        assert_eq!(out.rejected, 1);
    }

    #[test]
    fn state_payloads() {
        assert_eq!(
            state_payload(true, 5),
            br#"{"online":true,"timestamp":5}"#.to_vec()
        );
        assert_eq!(
            state_online(br#"{"online":false,"timestamp":1}"#),
            Some(false)
        );
        assert_eq!(state_online(b"OFFLINE"), None);
        let s = HostState::new("h");
        assert_eq!(s.topic, "spBv1.0/STATE/h");
        let will = s.will();
        let birth = s.birth();
        let t = |b: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(b).unwrap()["timestamp"].as_u64()
        };
        assert_eq!(
            t(&will),
            t(&birth),
            "the will and the birth of a connection share T"
        );
    }

    fn any_value() -> impl Strategy<Value = metric::Value> {
        prop_oneof![
            any::<u32>().prop_map(metric::Value::IntValue),
            any::<u64>().prop_map(metric::Value::LongValue),
            any::<f32>().prop_map(metric::Value::FloatValue),
            any::<f64>().prop_map(metric::Value::DoubleValue),
            any::<bool>().prop_map(metric::Value::BooleanValue),
            ".{0,4}".prop_map(metric::Value::StringValue),
            proptest::collection::vec(any::<u8>(), 0..4).prop_map(metric::Value::BytesValue),
        ]
    }

    fn edge(max: u64) -> impl Strategy<Value = u64> {
        prop_oneof![
            0..=max,
            Just(u64::MAX),
            Just(u64::MAX - 1),
            Just(255u64),
            Just(256u64),
            Just(i64::MAX as u64),
            any::<u64>()
        ]
    }

    fn any_metric() -> impl Strategy<Value = Metric> {
        (
            proptest::option::of(prop_oneof![
                Just("bdSeq".to_string()),
                Just("A".to_string()),
                Just("B".to_string()),
                "[a-c]{1,2}"
            ]),
            proptest::option::of(edge(8)),
            proptest::option::of(prop_oneof![0u32..=20, any::<u32>()]),
            proptest::option::of(edge(2_000_000_000_000)),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any_value()),
        )
            .prop_map(
                |(name, alias, datatype, timestamp, is_null, value)| Metric {
                    name,
                    alias,
                    datatype,
                    timestamp,
                    is_null,
                    value,
                    ..Default::default()
                },
            )
    }

    fn any_message() -> impl Strategy<Value = (usize, bool, Option<u64>, Option<u64>, Vec<Metric>)>
    {
        (
            0usize..7,
            any::<bool>(),
            proptest::option::of(edge(300)),
            proptest::option::of(edge(2_000_000_000_000)),
            proptest::collection::vec(any_metric(), 0..6),
        )
    }

    proptest! {
        /// Random bytes on every Sparkplug topic: an error or an outcome, never a panic.
        #[test]
        fn random_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut dev = device(true);
            let (mut st, mut node) = (SpState::default(), NodeState::default());
            for kind in ["NBIRTH", "DBIRTH", "NDATA", "DDATA", "NDEATH", "DDEATH", "NCMD"] {
                let _ = handle(&mut dev, &mut st, &mut node, kind, &bytes, 1);
            }
        }

        /// Sequences of well-formed payloads with any seq, bdSeq, alias, datatype, value and
        /// timestamp (up to u64::MAX), for the device or another device of its node: never a
        /// panic, seq always 0–255, samples only with times that fit.
        #[test]
        fn host_handling_never_panics(
            messages in proptest::collection::vec(any_message(), 1..25),
            max_metrics in 1usize..4,
            auto in any::<bool>(),
        ) {
            let mut dev = device(auto);
            dev.max_metrics = max_metrics;
            if !auto {
                dev.by_name.insert("A".into(), point(1, PointType::F64));
                dev.by_name.insert("B".into(), point(2, PointType::U32));
                dev.from_birth.insert("A".into(), FromBirth { descriptors: vec![PointDescriptor::default()], scaled: false });
            }
            let (mut st, mut node) = (SpState::default(), NodeState::default());
            let kinds = ["NBIRTH", "DBIRTH", "NDATA", "DDATA", "NDEATH", "DDEATH", "NCMD"];
            for (k, other, seq, ts, metrics) in messages {
                let kind = kinds[k];
                let bytes = Payload { seq, timestamp: ts, metrics, ..Default::default() }.encode_to_vec();
                if other {
                    // Another device of the node: only the node follows it.
                    if let Ok(p) = decode(kind, &bytes) {
                        node_message(&mut node, kind, &p);
                    }
                } else if let Ok(out) = handle(&mut dev, &mut st, &mut node, kind, &bytes, 7) {
                    for s in &out.samples {
                        prop_assert!(s.timestamp_ns >= 0);
                    }
                    prop_assert!(out.new_points.len() <= max_metrics);
                    // What the broker loop does once the catalog gave them ids.
                    for (i, (name, _, kind)) in out.new_points.iter().enumerate() {
                        dev.by_name.insert(name.clone(), point(100 + i as u32, *kind));
                    }
                }
                prop_assert!(!auto || dev.by_name.len() <= max_metrics);
                prop_assert!(st.aliases.len() <= max_metrics + 2);
            }
        }
    }
}
