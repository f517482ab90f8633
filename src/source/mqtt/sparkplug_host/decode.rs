//! How a Sparkplug payload becomes points and samples: the payload decoded and its seq
//! range-checked, a birth's metrics recorded as the device's aliases and datatypes (and, for a
//! device without points, as new points, at most `max_metrics`), data by name or alias read as
//! values with the wire timestamps range-checked. Pure.

use super::node::SpState;
use super::SpDevice;
use crate::config::PointType;
use crate::model::{DataType, PointDescriptor, Quality, Sample, Value};
use crate::mqtt::sparkplug::{datatype, Metric, Payload};
use crate::source::mqtt::payload::{from_sparkplug, PointRead};
use prost::Message;

/// What a message did to a device.
#[derive(Default)]
pub struct DeviceOutcome {
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

pub(super) fn birth(
    dev: &mut SpDevice,
    state: &mut SpState,
    metrics: &[Metric],
    payload_ts: Option<Option<i64>>,
    arrival_ns: i64,
    out: &mut DeviceOutcome,
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

pub(super) fn data(
    dev: &SpDevice,
    state: &SpState,
    metrics: &[Metric],
    payload_ts: Option<Option<i64>>,
    arrival_ns: i64,
    out: &mut DeviceOutcome,
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
                        scaling: None,
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
