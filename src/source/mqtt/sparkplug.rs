//! Devices that speak Sparkplug B 3.0 (`format = "sparkplug-b"`): linetap as a host
//! application for the edge nodes and devices a configuration names
//! (shared/reference/sparkplug-b.md, section 6). Births (NBIRTH/DBIRTH) give each metric's
//! name, alias and datatype; data (NDATA/DDATA) arrives by alias; a death (NDEATH with the
//! matching bdSeq, DDEATH) marks the device down. A seq gap or an unknown alias asks the node
//! for a rebirth (NCMD `Node Control/Rebirth`, at most once per `stale_after`). A device without
//! points takes every metric of its birth: the catalog grows at run time.

use super::payload::{from_sparkplug, PointRead};
use crate::config::PointType;
use crate::model::{DataType, PointDescriptor, Quality, Sample, Value};
use crate::mqtt::sparkplug::{datatype, metric, topic, Metric, Payload};
use prost::Message;
use std::collections::HashMap;
use std::time::{Duration, Instant};

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
}

impl SpDevice {
    /// The topics the device's messages arrive on.
    pub fn subscriptions(&self) -> Vec<String> {
        subscriptions(&self.group, &self.node, self.device.as_deref())
    }
}

/// The topics of an edge node (and of a device under it).
pub fn subscriptions(g: &str, n: &str, device: Option<&str>) -> Vec<String> {
    let mut t = vec![topic(g, "NBIRTH", n, None), topic(g, "NDEATH", n, None)];
    match device {
        Some(d) => {
            for k in ["DBIRTH", "DDATA", "DDEATH"] {
                t.push(topic(g, k, n, Some(d)));
            }
        }
        None => t.push(topic(g, "NDATA", n, None)),
    }
    t
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
    pub bd_seq: Option<u64>,
    pub next_seq: Option<u64>,
    pub last_rebirth: Option<Instant>,
}

/// Per device: the aliases of its current birth, and whether it is alive.
#[derive(Default)]
pub struct SpState {
    pub aliases: HashMap<u64, (String, u32)>,
    /// Datatypes by metric name (a data message without alias names its metric).
    pub datatypes: HashMap<String, u32>,
    pub online: bool,
}

/// What a message did to a device.
#[derive(Default)]
pub struct Outcome {
    pub samples: Vec<Sample>,
    /// Metrics to add to the catalog (from a birth), with the point each becomes.
    pub new_points: Vec<(String, PointDescriptor, PointType)>,
    /// Values of those new metrics, by name, until they have ids.
    pub pending: Vec<(String, i64, Value)>,
    /// `Some(up)` when the device came up or went down.
    pub up: Option<bool>,
    /// A seq gap or an unknown alias: ask for a rebirth.
    pub rebirth: bool,
    /// Values that could not be read (wrong type, unknown alias).
    pub rejected: u64,
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

/// Handles one message on a topic of `dev`; `kind` is the message type.
pub fn handle(
    dev: &SpDevice,
    state: &mut SpState,
    node: &mut NodeState,
    kind: &str,
    bytes: &[u8],
    arrival_ns: i64,
) -> Result<Outcome, String> {
    let payload = Payload::decode(bytes).map_err(|e| format!("not a Sparkplug payload: {e}"))?;
    let mut out = Outcome::default();
    let seq_check = |node: &mut NodeState, out: &mut Outcome| match payload.seq {
        Some(seq) => {
            if let Some(expected) = node.next_seq {
                if seq != expected {
                    out.rebirth = true;
                    out.problem = Some(format!("seq gap: {seq} where {expected} was due"));
                }
            }
            node.next_seq = Some((seq + 1) % 256);
        }
        None => {
            out.rebirth = true;
            out.problem = Some(format!("{kind} without seq"));
        }
    };
    let payload_ts = payload.timestamp.map(|t| t as i64 * 1_000_000);
    match kind {
        "NBIRTH" => {
            node.bd_seq = payload
                .metrics
                .iter()
                .find(|m| m.name.as_deref() == Some("bdSeq"))
                .and_then(|m| match m.value {
                    Some(metric::Value::LongValue(v)) => Some(v),
                    Some(metric::Value::IntValue(v)) => Some(v as u64),
                    _ => None,
                });
            node.next_seq = payload.seq.map(|s| (s + 1) % 256);
            if dev.device.is_none() {
                birth(
                    dev,
                    state,
                    &payload.metrics,
                    payload_ts,
                    arrival_ns,
                    &mut out,
                );
            }
        }
        "DBIRTH" => {
            seq_check(node, &mut out);
            birth(
                dev,
                state,
                &payload.metrics,
                payload_ts,
                arrival_ns,
                &mut out,
            );
        }
        "NDATA" | "DDATA" => {
            seq_check(node, &mut out);
            if !state.online {
                // Data before a birth: the aliases are unknown.
                out.rebirth = true;
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
        "NDEATH" => {
            let bd = payload
                .metrics
                .iter()
                .find(|m| m.name.as_deref() == Some("bdSeq"))
                .and_then(|m| match m.value {
                    Some(metric::Value::LongValue(v)) => Some(v),
                    Some(metric::Value::IntValue(v)) => Some(v as u64),
                    _ => None,
                });
            // A late will of an older session is ignored.
            if bd.is_some() && bd == node.bd_seq {
                node.next_seq = None;
                if state.online {
                    state.online = false;
                    out.up = Some(false);
                    out.problem = Some("the edge node died (NDEATH)".into());
                }
            }
        }
        "DDEATH" => {
            seq_check(node, &mut out);
            if state.online {
                state.online = false;
                out.up = Some(false);
                out.problem = Some("the device died (DDEATH)".into());
            }
        }
        // Commands and STATE: not ours to read.
        _ => {}
    }
    Ok(out)
}

fn birth(
    dev: &SpDevice,
    state: &mut SpState,
    metrics: &[Metric],
    payload_ts: Option<i64>,
    arrival_ns: i64,
    out: &mut Outcome,
) {
    state.aliases.clear();
    state.datatypes.clear();
    for m in metrics {
        let Some(name) = m.name.as_deref() else {
            continue;
        };
        if name == "bdSeq" || name.starts_with("Node Control/") {
            continue;
        }
        let dt = m.datatype.unwrap_or(0);
        if let Some(a) = m.alias {
            state.aliases.insert(a, (name.to_string(), dt));
        }
        state.datatypes.insert(name.to_string(), dt);
        if dev.auto
            && !dev.by_name.contains_key(name)
            && !out.new_points.iter().any(|p| p.0 == name)
        {
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
    payload_ts: Option<i64>,
    arrival_ns: i64,
    out: &mut Outcome,
) {
    for m in metrics {
        let (name, dt) = match (&m.name, m.alias) {
            (Some(n), _) => (
                n.clone(),
                m.datatype
                    .or_else(|| state.datatypes.get(n).copied())
                    .unwrap_or(0),
            ),
            (None, Some(a)) => match state.aliases.get(&a) {
                Some((n, dt)) => (n.clone(), *dt),
                None => {
                    out.rejected += 1;
                    out.rebirth = true;
                    out.problem = Some(format!("unknown alias {a}"));
                    continue;
                }
            },
            (None, None) => {
                out.rejected += 1;
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
        let ts = m
            .timestamp
            .map(|t| t as i64 * 1_000_000)
            .or(payload_ts)
            .unwrap_or(arrival_ns);
        let (point, new) = match dev.by_name.get(&name) {
            Some(p) => (p.clone(), false),
            None => match out.new_points.iter().find(|p| p.0 == name) {
                Some((_, _, kind)) => (
                    PointRead {
                        ids: Vec::new(),
                        pointer: name.clone(),
                        kind: *kind,
                        scale: 1.0,
                        offset: 0.0,
                    },
                    true,
                ),
                // Not a point of this device.
                None => continue,
            },
        };
        match from_sparkplug(value, dt, &point) {
            Ok(v) if new => out.pending.push((name.clone(), ts, v)),
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

/// The NCMD that asks a node for a rebirth.
pub fn rebirth_request(group: &str, node: &str) -> (String, Vec<u8>) {
    let p = Payload {
        timestamp: Some(crate::model::now_ns() as u64 / 1_000_000),
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
    }

    #[test]
    fn a_birth_then_data_by_alias_and_a_gap() {
        let dev = device(true);
        let (mut st, mut node) = (SpState::default(), NodeState::default());
        let birth = Payload {
            seq: Some(1),
            timestamp: Some(1000),
            metrics: vec![Metric {
                name: Some("Temp".into()),
                alias: Some(7),
                datatype: Some(datatype::DOUBLE),
                value: Some(metric::Value::DoubleValue(20.5)),
                ..Default::default()
            }],
            ..Default::default()
        };
        node.next_seq = Some(1);
        let out = handle(
            &dev,
            &mut st,
            &mut node,
            "DBIRTH",
            &birth.encode_to_vec(),
            5,
        )
        .unwrap();
        assert_eq!(out.up, Some(true));
        assert_eq!(out.new_points.len(), 1);
        assert_eq!(out.pending.len(), 1);
        assert!(!out.rebirth);
        let data = Payload {
            seq: Some(3),
            metrics: vec![Metric {
                alias: Some(9),
                value: Some(metric::Value::DoubleValue(1.0)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let out = handle(&dev, &mut st, &mut node, "DDATA", &data.encode_to_vec(), 5).unwrap();
        // seq 3 where 2 was due, and an unknown alias.
        assert!(out.rebirth);
        assert_eq!(out.rejected, 1);
    }

    proptest! {
        /// Random bytes on every Sparkplug topic: an error or an outcome, never a panic.
        #[test]
        fn random_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let dev = device(true);
            let (mut st, mut node) = (SpState::default(), NodeState::default());
            for kind in ["NBIRTH", "DBIRTH", "NDATA", "DDATA", "NDEATH", "DDEATH", "NCMD"] {
                let _ = handle(&dev, &mut st, &mut node, kind, &bytes, 1);
            }
        }
    }
}
