//! The simulator's MQTT side: the devices of a configuration that publish (`protocol =
//! "mqtt"`, formats json and value) publish plausible values to their broker, every quarter of
//! their `stale_after` (at most every second). Faults apply as for Modbus devices where they
//! mean something: `silent` stops the messages, `garbage` sends payloads that are not JSON (or
//! not a number), `none` goes back to normal.

use super::bank::{Bank, Fault};
use super::server::lock;
use super::signal::Wave;
use crate::config::{DeviceConfig, MqttFormat, PointType, TimestampFormat};
use crate::mqtt::connection::BrokerConfig;
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
    let options = match tokio::task::spawn_blocking(move || crate::mqtt::connection::options(&cfg))
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
                .mqtt
                .as_ref()
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
        let Some(m) = &d.mqtt else { continue };
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
                        let Some(ptr) = &p.point.json else { continue };
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
                        if p.point.topic.is_none() {
                            set(&mut doc, ptr, v);
                        }
                    }
                    serde_json::to_vec(&doc).unwrap_or_default()
                };
                let _ = client.publish(m.topic.clone(), qos, false, payload).await;
            }
            MqttFormat::Value => {
                for p in points.iter() {
                    let Some(topic) = &p.point.topic else {
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
        TimestampFormat::Rfc3339 => J::String(crate::sink::mqtt::rfc3339_ns(ns)),
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
