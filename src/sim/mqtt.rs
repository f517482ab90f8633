//! The simulator's MQTT side: the devices of a configuration that publish (`protocol =
//! "mqtt"`, formats json and value) publish plausible values to their broker, every quarter of
//! their `stale_after` (at most every second). Faults apply as for Modbus devices where they
//! mean something: `silent` stops the messages, `garbage` sends payloads that are not JSON (or
//! not a number), `none` goes back to normal.

use super::bank::{Bank, Fault};
use super::server::lock;
use super::signal::Wave;
use crate::config::{DeviceConfig, MqttFormat, PointType, TimestampFormat};
use crate::mqtt::settings::BrokerConfig;
use crate::mqtt::sparkplug as sp;
use prost::Message;
use rumqttc::{AsyncClient, QoS};
use serde_json::Value as J;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One published value: its point and how it moves.
struct Published {
    point: crate::config::PointConfig,
    waves: Vec<Wave>,
}

/// A simulated MQTT device and the bank that holds its fault.
pub type Publisher = (DeviceConfig, Arc<Mutex<Bank>>);

/// One device's publishing plan: the device, its fault, its values, how often.
struct Plan {
    device: DeviceConfig,
    bank: Arc<Mutex<Bank>>,
    points: Vec<Published>,
    every: Duration,
}

/// Publishes the MQTT devices of one broker until aborted.
pub async fn run(broker: BrokerConfig, devices: Vec<Publisher>, started: Instant) {
    let mut cfg = broker.clone();
    cfg.client_id = format!("linetap-sim-{}", broker.name);
    cfg.clean_session = true;
    let options = match tokio::task::spawn_blocking(move || crate::mqtt::settings::options(&cfg))
        .await
    {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            tracing::error!(broker = %broker.name, error = %e, "simulator: cannot connect to the broker");
            return;
        }
        Err(e) => {
            tracing::error!(broker = %broker.name, error = %e, "simulator: setup failed");
            return;
        }
    };
    let (client, mut events) = AsyncClient::new(options, 4096);
    tokio::spawn(async move {
        loop {
            if events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let plans: Vec<Plan> = devices
        .into_iter()
        .map(|(d, bank)| {
            let every = d
                .settings::<crate::config::MqttDevice>()
                .map(|m| m.stale_after / 4)
                .unwrap_or(Duration::from_secs(1))
                .clamp(Duration::from_millis(50), Duration::from_secs(1));
            let points = d
                .points
                .iter()
                .filter(|p| p.is_read())
                .map(|p| Published {
                    point: p.clone(),
                    waves: (1..=p.count)
                        .map(|e| {
                            match p
                                .simulate
                                .as_ref()
                                .and_then(|x| x.bind(e, &mut |_, _, _| None))
                            {
                                Some(b) => Wave::Expr(b),
                                None => Wave::for_point(p, e, &d.id),
                            }
                        })
                        .collect(),
                })
                .collect();
            Plan {
                device: d,
                bank,
                points,
                every,
            }
        })
        .collect();
    let mut next: Vec<Instant> = plans.iter().map(|_| Instant::now()).collect();
    // Sparkplug: per edge node its seq, and the nodes and devices born so far.
    let mut seqs: std::collections::HashMap<(String, String), u8> = Default::default();
    let mut born: std::collections::HashSet<String> = Default::default();
    loop {
        let Some((i, at)) = next.iter().copied().enumerate().min_by_key(|(_, t)| *t) else {
            return;
        };
        tokio::time::sleep_until(at.into()).await;
        let Plan {
            device: d,
            bank,
            points,
            every,
        } = &plans[i];
        next[i] = at + *every;
        let Some(m) = d.settings::<crate::config::MqttDevice>() else {
            continue;
        };
        let fault = lock(bank).fault.clone();
        if fault == Fault::Silent {
            continue;
        }
        let t = started.elapsed().as_secs_f64();
        let qos = if m.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        match m.format {
            MqttFormat::Json => {
                let payload = if fault == Fault::Garbage {
                    b"{\"garbage\": [1, 2,".to_vec()
                } else {
                    let mut doc = J::Object(Default::default());
                    if let Some(ptr) = &m.timestamp {
                        set(&mut doc, ptr, timestamp(m.timestamp_format));
                    }
                    for p in points.iter() {
                        let Some(ptr) = &crate::source::mqtt::config::mqtt_point(&p.point).json
                        else {
                            continue;
                        };
                        let values: Vec<J> = p
                            .waves
                            .iter()
                            .map(|w| json_value(&p.point, w.value(t)))
                            .collect();
                        let v = if p.point.count > 1 {
                            J::Array(values)
                        } else {
                            values.into_iter().next().unwrap_or(J::Null)
                        };
                        if crate::source::mqtt::config::mqtt_point(&p.point)
                            .topic
                            .is_none()
                        {
                            set(&mut doc, ptr, v);
                        }
                    }
                    serde_json::to_vec(&doc).unwrap_or_default()
                };
                let _ = client.publish(m.topic.clone(), qos, false, payload).await;
            }
            MqttFormat::SparkplugB => {
                let Some((g, n, dev)) = &m.sparkplug else {
                    continue;
                };
                let key = (g.clone(), n.clone());
                let node_born = born.contains(&format!("{g}/{n}"));
                let mut out: Vec<(String, Vec<u8>)> = Vec::new();
                if !node_born {
                    seqs.insert(key.clone(), 0);
                    let p = sp::Payload {
                        timestamp: Some(crate::model::now_ns() as u64 / 1_000_000),
                        seq: Some(0),
                        metrics: vec![sp::bd_seq(0)],
                        ..Default::default()
                    };
                    out.push((sp::topic(g, "NBIRTH", n, None), p.encode_to_vec()));
                    born.insert(format!("{g}/{n}"));
                }
                let device_key = format!("{g}/{n}/{}", dev.as_deref().unwrap_or(""));
                let birth = !born.contains(&device_key);
                let metrics: Vec<sp::Metric> = points
                    .iter()
                    .enumerate()
                    .filter_map(|(k, p)| {
                        let name = crate::source::mqtt::config::mqtt_point(&p.point)
                            .metric
                            .clone()?;
                        let dt = sim_datatype(p.point.kind);
                        let value = sp::metric_value(dt, &typed(&p.point, p.waves[0].value(t)))?;
                        Some(sp::Metric {
                            name: birth.then_some(name),
                            alias: Some(k as u64 + 1),
                            datatype: birth.then_some(dt),
                            timestamp: Some(crate::model::now_ns() as u64 / 1_000_000),
                            value: Some(value),
                            ..Default::default()
                        })
                    })
                    .collect();
                let seq = seqs.entry(key).or_insert(0);
                *seq = seq.wrapping_add(1);
                let p = sp::Payload {
                    timestamp: Some(crate::model::now_ns() as u64 / 1_000_000),
                    seq: Some(*seq as u64),
                    metrics,
                    ..Default::default()
                };
                let kind = match (birth, dev.is_some()) {
                    (true, true) => "DBIRTH",
                    (false, true) => "DDATA",
                    (_, false) => "NDATA",
                };
                if fault == Fault::Garbage {
                    out.push((
                        sp::topic(g, kind, n, dev.as_deref()),
                        b"\x08\xff\xff".to_vec(),
                    ));
                } else {
                    out.push((sp::topic(g, kind, n, dev.as_deref()), p.encode_to_vec()));
                }
                if dev.is_some() {
                    born.insert(device_key);
                }
                for (topic, payload) in out {
                    let _ = client.publish(topic, QoS::AtMostOnce, false, payload).await;
                }
            }
            MqttFormat::Value => {
                for p in points.iter() {
                    let Some(topic) = &crate::source::mqtt::config::mqtt_point(&p.point).topic
                    else {
                        continue;
                    };
                    let payload = if fault == Fault::Garbage {
                        "not-a-value".to_string()
                    } else {
                        match json_value(&p.point, p.waves[0].value(t)) {
                            J::String(s) => s,
                            other => other.to_string(),
                        }
                    };
                    let _ = client.publish(topic.clone(), qos, false, payload).await;
                }
            }
        }
    }
}

/// The Sparkplug datatype a simulated point is published as.
fn sim_datatype(kind: PointType) -> u32 {
    use sp::datatype::*;
    match kind {
        PointType::Bool => BOOLEAN,
        PointType::U8 => UINT8,
        PointType::I8 => INT8,
        PointType::U16 => UINT16,
        PointType::I16 => INT16,
        PointType::U32 => UINT32,
        PointType::I32 => INT32,
        PointType::U64 => UINT64,
        PointType::I64 => INT64,
        PointType::F16 | PointType::F32 => FLOAT,
        PointType::F64 => DOUBLE,
        PointType::String => STRING,
    }
}

/// A simulated engineering value as a model value of the point's type.
fn typed(p: &crate::config::PointConfig, v: f64) -> crate::model::Value {
    use crate::model::Value;
    match json_value(p, v) {
        J::Bool(b) => Value::BoolValue(b),
        J::String(s) => Value::StringValue(s),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::IntValue(i),
            (None, Some(x)) => Value::DoubleValue(x),
            _ => Value::DoubleValue(0.0),
        },
        _ => Value::DoubleValue(0.0),
    }
}

/// A simulated engineering value as the JSON a device would send for the point's type.
fn json_value(p: &crate::config::PointConfig, v: f64) -> J {
    match p.kind {
        PointType::Bool => J::Bool(v != 0.0),
        PointType::String => J::String(format!("{}-sim", p.name)),
        PointType::F16 | PointType::F32 | PointType::F64 => {
            let raw = (v - p.offset) / p.scale;
            serde_json::Number::from_f64((raw * 1000.0).round() / 1000.0)
                .map(J::Number)
                .unwrap_or(J::Null)
        }
        _ => J::from(((v - p.offset) / p.scale).round() as i64),
    }
}

fn timestamp(format: TimestampFormat) -> J {
    let ns = crate::model::now_ns();
    match format {
        TimestampFormat::Unix => J::from(ns / 1_000_000_000),
        TimestampFormat::UnixMs => J::from(ns / 1_000_000),
        TimestampFormat::UnixUs => J::from(ns / 1_000),
        TimestampFormat::UnixNs => J::from(ns),
        TimestampFormat::Rfc3339 => J::String(crate::sink::mqtt::json::rfc3339_ns(ns)),
    }
}

/// Sets the value at an RFC 6901 pointer, creating objects on the way.
fn set(doc: &mut J, pointer: &str, value: J) {
    if pointer.is_empty() {
        *doc = value;
        return;
    }
    let mut at = doc;
    let parts: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    for (k, part) in parts.iter().enumerate() {
        if !at.is_object() {
            *at = J::Object(Default::default());
        }
        let J::Object(map) = at else { return };
        if k + 1 == parts.len() {
            map.insert(part.clone(), value);
            return;
        }
        at = map
            .entry(part.clone())
            .or_insert_with(|| J::Object(Default::default()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_build_nested_objects() {
        let mut doc = J::Object(Default::default());
        set(&mut doc, "/sensors/temp", J::from(41.5));
        set(&mut doc, "/sensors/hum", J::from(40));
        set(&mut doc, "/a~1b", J::from(true));
        assert_eq!(
            doc.to_string(),
            r#"{"a/b":true,"sensors":{"hum":40,"temp":41.5}}"#
        );
    }
}
