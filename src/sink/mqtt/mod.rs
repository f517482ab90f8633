//! The MQTT sink (`type = "mqtt"`): per flush, one message per device — a
//! `linetap.v1.SampleBatch` (format linetap, with the line's `Catalog` kept retained on
//! `catalog_topic`) or a JSON object (format json). With QoS 1 a flush is delivered, and the
//! sink's buffer cursor moves, only once the broker acknowledged every message (PUBACK); if the
//! connection drops first, the whole flush is published again after the reconnect (at least
//! once: a consumer may see a message twice, never miss one).

mod attempts;
pub mod config;
pub mod edge_node;
pub mod json;

use super::lineproto::Skipped;
use super::{Outcome, RetryCtl, Sink};
use crate::model::{Catalog, SampleBatch};
use crate::mqtt::connection::Connection;
pub(crate) use attempts::Attempts;
use config::{MqttSinkConfig, MqttSinkFormat};
use json::json;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What a message needs to know about the points and devices of one catalog version.
struct Names {
    line: String,
    site: String,
    devices: HashMap<u32, DeviceNames>,
    points: HashMap<u32, PointNames>,
}

struct DeviceNames {
    name: String,
    cell: String,
    kind: String,
}

struct PointNames {
    measurement: String,
    field: String,
    tags: Vec<(String, String)>,
    unit: String,
    labels: Vec<(i64, String)>,
}

/// One message of the pending flush.
struct Pending {
    topic: String,
    /// linetap: the device's samples; json: rendered at flush.
    batch: SampleBatch,
    catalog: u64,
}

pub struct MqttSink {
    cfg: MqttSinkConfig,
    names: HashMap<u64, Arc<Names>>,
    catalogs: HashMap<u64, Vec<u8>>,
    /// The catalog version last published retained (format linetap).
    published_catalog: Option<u64>,
    pending: Vec<Pending>,
    /// Device id → index in `pending` for this flush.
    by_device: HashMap<(u64, u32), usize>,
    pending_bytes: usize,
    connection: Option<Connection>,
    attempts: Attempts,
}

pub fn build(cfg: &MqttSinkConfig, _ctx: &super::BuildContext) -> Result<MqttSink, String> {
    // The files a connection needs (password, certificates) are read now, so a missing one
    // stops the start with its reason.
    crate::mqtt::settings::options(&cfg.broker)?;
    Ok(MqttSink {
        cfg: cfg.clone(),
        names: HashMap::new(),
        catalogs: HashMap::new(),
        published_catalog: None,
        pending: Vec::new(),
        by_device: HashMap::new(),
        pending_bytes: 0,
        connection: None,
        attempts: Attempts::new(),
    })
}

impl Sink for MqttSink {
    fn knows(&self, id: u64) -> bool {
        self.names.contains_key(&id)
    }

    fn catalog(&mut self, id: u64, catalog: &Catalog) {
        let names = Names {
            line: catalog.line.clone(),
            site: catalog.site.clone(),
            devices: catalog
                .devices
                .iter()
                .map(|d| {
                    (
                        d.id,
                        DeviceNames {
                            name: d.name.clone(),
                            cell: d.cell.clone(),
                            kind: d.kind.clone(),
                        },
                    )
                })
                .collect(),
            points: catalog
                .points
                .iter()
                .map(|p| {
                    (
                        p.id,
                        PointNames {
                            measurement: p.measurement.clone(),
                            field: p.name.clone(),
                            tags: p
                                .tags
                                .iter()
                                .map(|t| (t.key.clone(), t.value.clone()))
                                .collect(),
                            unit: p.unit.clone(),
                            labels: p
                                .enum_labels
                                .iter()
                                .map(|l| (l.code, l.label.clone()))
                                .collect(),
                        },
                    )
                })
                .collect(),
        };
        self.names.insert(id, Arc::new(names));
        if self.cfg.format == MqttSinkFormat::Linetap {
            self.catalogs.insert(id, catalog.encode_to_vec());
        }
        // Keep the few newest versions (the loop hands an old one again when needed).
        while self.names.len() > 8 {
            let Some(&oldest) = self
                .names
                .keys()
                .find(|k| Some(**k) != self.published_catalog && **k != id)
            else {
                break;
            };
            self.names.remove(&oldest);
            self.catalogs.remove(&oldest);
        }
    }

    fn add(&mut self, catalog: u64, batch: &SampleBatch, skipped: &mut Skipped) -> usize {
        let Some(names) = self.names.get(&catalog).cloned() else {
            skipped.unknown_point += batch.samples.len() as u64;
            return 0;
        };
        let Some(dev) = names.devices.get(&batch.device) else {
            skipped.unknown_point += batch.samples.len() as u64;
            return 0;
        };
        let key = (catalog, batch.device);
        // One message per device per flush, started anew past this many samples; `render`
        // then splits any message still larger than `max_packet_size`.
        let limit = match self.cfg.format {
            MqttSinkFormat::Json => 2_000,
            _ => 20_000,
        };
        let current = self
            .by_device
            .get(&key)
            .copied()
            .filter(|&i| self.pending[i].batch.samples.len() + batch.samples.len() <= limit);
        let index = match current {
            Some(i) => i,
            None => {
                let topic = self
                    .cfg
                    .topic
                    .replace("{site}", &names.site)
                    .replace("{line}", &names.line)
                    .replace("{cell}", &dev.cell)
                    .replace("{device}", &dev.name)
                    .replace("{kind}", &dev.kind);
                self.pending.push(Pending {
                    topic,
                    batch: SampleBatch {
                        device: batch.device,
                        ..Default::default()
                    },
                    catalog,
                });
                self.by_device.insert(key, self.pending.len() - 1);
                self.pending.len() - 1
            }
        };
        let out = &mut self.pending[index].batch;
        out.seq = batch.seq;
        for s in &batch.samples {
            let mut s = s.clone();
            // Each sample with its own time: the batches of one flush are merged.
            s.timestamp_ns = batch.time_of(&s);
            self.pending_bytes += 24;
            out.samples.push(s);
        }
        // Counted in samples, as every sink counts (batch_size, delivered).
        batch.samples.len()
    }

    async fn flush(&mut self, retry: &mut RetryCtl) -> Outcome {
        if self.pending.is_empty() {
            return Outcome::Delivered;
        }
        let messages = self.render();
        self.pending.clear();
        self.by_device.clear();
        self.pending_bytes = 0;
        let bytes = messages.iter().map(|m| m.1.len()).sum();
        loop {
            let result = self.publish(&messages).await;
            if result.is_err() {
                self.connection = None;
            }
            if let Some(outcome) = self
                .attempts
                .outcome(result.map(|()| bytes), &self.cfg.broker, retry)
                .await
            {
                return outcome;
            }
        }
    }

    fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }
}

impl MqttSink {
    /// The most bytes a payload may have: the connection's `max_packet_size` less the
    /// packet's own header and topic.
    fn payload_limit(&self, topic: &str) -> usize {
        self.cfg
            .broker
            .max_packet_size
            .saturating_sub(topic.len() + 16)
            .max(256)
    }

    /// The flush's messages: (topic, payload, retained). None is larger than
    /// `max_packet_size`: a device's message is split by bytes, and a catalog that does not
    /// fit is published in parts.
    fn render(&mut self) -> Vec<(String, Vec<u8>, bool)> {
        let mut out = Vec::with_capacity(self.pending.len() + 1);
        if self.cfg.format == MqttSinkFormat::Linetap {
            // The newest catalog version this flush uses, retained, before the data.
            if let Some(newest) = self.pending.last().map(|p| p.catalog) {
                if self.published_catalog != Some(newest) {
                    if let (Some(bytes), Some(names)) =
                        (self.catalogs.get(&newest), self.names.get(&newest))
                    {
                        let topic = self
                            .cfg
                            .catalog_topic
                            .replace("{site}", &names.site)
                            .replace("{line}", &names.line);
                        let limit = self.payload_limit(&topic) - 16;
                        if bytes.len() <= limit {
                            out.push((topic, bytes.clone(), true));
                        } else {
                            catalog_parts(&topic, bytes, limit, &mut out);
                        }
                    }
                }
            }
        }
        for p in &self.pending {
            let limit = self.payload_limit(&p.topic);
            let names = self.names.get(&p.catalog).cloned();
            let encode = |batch: &SampleBatch| -> Option<Vec<u8>> {
                match self.cfg.format {
                    MqttSinkFormat::Linetap => Some(batch.encode_to_vec()),
                    MqttSinkFormat::Json => names.as_ref().map(|n| json(n, batch).into_bytes()),
                    // Built as an `edge_node::SparkplugSink`.
                    MqttSinkFormat::SparkplugB => None,
                }
            };
            split_by_bytes(&p.batch, limit, &encode, &mut |payload| {
                out.push((p.topic.clone(), payload, false))
            });
        }
        if self.cfg.format == MqttSinkFormat::Linetap {
            if let Some(newest) = self.pending.last().map(|p| p.catalog) {
                self.published_catalog = Some(newest);
            }
        }
        out
    }

    async fn connect(&mut self) -> Result<(), String> {
        if self.connection.is_none() {
            let conn = Connection::open(&self.cfg.broker, None).await?;
            tracing::info!(sink = %self.cfg.broker.name, address = %self.cfg.broker.address(), "MQTT sink connected");
            self.connection = Some(conn);
        }
        Ok(())
    }

    /// Publishes every message; with QoS 1 returns once each has its PUBACK.
    async fn publish(&mut self, messages: &[(String, Vec<u8>, bool)]) -> Result<(), String> {
        self.connect().await?;
        let qos = self.cfg.qos;
        let Some(conn) = self.connection.as_mut() else {
            return Err("not connected".into());
        };
        conn.publish_all(messages, qos, &mut |_| {}).await
    }
}

/// Encodes `batch` as one payload, or, when that is larger than `limit`, its samples in halves
/// (recursively); a single sample still too large is left out (logged).
fn split_by_bytes(
    batch: &SampleBatch,
    limit: usize,
    encode: &dyn Fn(&SampleBatch) -> Option<Vec<u8>>,
    out: &mut dyn FnMut(Vec<u8>),
) {
    let Some(payload) = encode(batch) else {
        return;
    };
    if payload.len() <= limit {
        out(payload);
        return;
    }
    if batch.samples.len() < 2 {
        tracing::error!(
            bytes = payload.len(),
            limit,
            "MQTT sink: one sample is larger than max_packet_size; not published"
        );
        return;
    }
    let mid = batch.samples.len() / 2;
    for half in [&batch.samples[..mid], &batch.samples[mid..]] {
        let part = SampleBatch {
            device: batch.device,
            seq: batch.seq,
            timestamp_ns: batch.timestamp_ns,
            samples: half.to_vec(),
        };
        split_by_bytes(&part, limit, encode, out);
    }
}

/// A catalog larger than one message: a header on `topic` (no devices, `parts = n`) and the
/// catalog's devices and points in `n` retained parts on `topic/0` … `topic/(n-1)`, each at
/// most `limit` bytes (a device's descriptor repeats in each part that holds its points).
fn catalog_parts(topic: &str, bytes: &[u8], limit: usize, out: &mut Vec<(String, Vec<u8>, bool)>) {
    let Ok(catalog) = Catalog::decode(bytes) else {
        return;
    };
    let empty = Catalog {
        line: catalog.line.clone(),
        site: catalog.site.clone(),
        tags: catalog.tags.clone(),
        ..Default::default()
    };
    // Each element costs its encoding plus a tag byte and a length of at most 5 bytes.
    let cost = |len: usize| len + 6;
    let mut parts: Vec<Catalog> = Vec::new();
    let mut current = empty.clone();
    let mut size = empty.encoded_len();
    let mut points_of: BTreeMap<u32, Vec<&crate::model::PointDescriptor>> = BTreeMap::new();
    for p in &catalog.points {
        points_of.entry(p.device).or_default().push(p);
    }
    for d in &catalog.devices {
        let dcost = cost(d.encoded_len());
        let mut device_in_part = false;
        for p in points_of.get(&d.id).map(|v| v.as_slice()).unwrap_or(&[]) {
            let pcost = cost(p.encoded_len());
            let need = pcost + if device_in_part { 0 } else { dcost };
            if size + need > limit && (!current.devices.is_empty() || !current.points.is_empty()) {
                parts.push(std::mem::replace(&mut current, empty.clone()));
                size = empty.encoded_len();
                device_in_part = false;
            }
            if !device_in_part {
                current.devices.push(d.clone());
                size += dcost;
                device_in_part = true;
            }
            current.points.push((*p).clone());
            size += pcost;
        }
        if !device_in_part {
            if size + dcost > limit && !current.devices.is_empty() {
                parts.push(std::mem::replace(&mut current, empty.clone()));
                size = empty.encoded_len();
            }
            current.devices.push(d.clone());
            size += dcost;
        }
    }
    if !current.devices.is_empty() || !current.points.is_empty() {
        parts.push(current);
    }
    // The parts first, then the header that names them: a reader that sees the header finds
    // every part already retained.
    let n = parts.len();
    for (k, part) in parts.into_iter().enumerate() {
        out.push((format!("{topic}/{k}"), part.encode_to_vec(), true));
    }
    let header = Catalog {
        parts: n as u32,
        ..empty
    };
    out.push((topic.to_string(), header.encode_to_vec(), true));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceDescriptor, PointDescriptor, Sample, Value};
    use std::time::Duration;

    fn sink(format: MqttSinkFormat) -> MqttSink {
        let cfg = MqttSinkConfig {
            broker: crate::mqtt::settings::BrokerConfig {
                name: "up".into(),
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false,
                client_id: "t".into(),
                username: None,
                password: None,
                ca_file: None,
                cert_file: None,
                key_file: None,
                clean_session: false,
                keep_alive: Duration::from_secs(30),
                max_packet_size: 1 << 20,
                mqtt_version: Default::default(),
            },
            format,
            topic: "out/{line}/{device}".into(),
            catalog_topic: "out/{line}/catalog".into(),
            qos: 1,
            sparkplug: (String::new(), String::new()),
            primary_host: None,
        };
        build(
            &cfg,
            &super::super::BuildContext {
                name: "up",
                data_dir: std::path::Path::new("."),
            },
        )
        .unwrap()
    }

    /// A busy device's samples of one flush: counted in samples, split into messages that stay
    /// far below the packet limit.
    #[test]
    fn a_flush_counts_samples_and_splits_big_messages() {
        for (format, per_message) in [
            (MqttSinkFormat::Json, 2_000),
            (MqttSinkFormat::Linetap, 20_000),
        ] {
            let mut s = sink(format);
            let catalog = Catalog {
                line: "l".into(),
                devices: vec![DeviceDescriptor {
                    id: 1,
                    name: "d".into(),
                    ..Default::default()
                }],
                points: vec![PointDescriptor {
                    id: 5,
                    device: 1,
                    measurement: "m".into(),
                    name: "v".into(),
                    data_type: crate::model::DataType::Double as i32,
                    ..Default::default()
                }],
                ..Default::default()
            };
            s.catalog(9, &catalog);
            let batch = |n: usize| SampleBatch {
                device: 1,
                seq: 1,
                timestamp_ns: 1_000,
                samples: (0..n)
                    .map(|i| Sample {
                        point: 5,
                        timestamp_ns: 1_000 + i as i64,
                        quality: 0,
                        value: Some(Value::DoubleValue(i as f64)),
                    })
                    .collect(),
            };
            let mut skipped = Skipped::default();
            let mut added = 0;
            for _ in 0..50 {
                added += s.add(9, &batch(1_000), &mut skipped);
            }
            assert_eq!(added, 50_000);
            let messages = s.render();
            let data: Vec<_> = messages.iter().filter(|m| !m.2).collect();
            assert_eq!(data.len(), 50_000usize.div_ceil(per_message), "{format:?}");
            assert!(
                data.iter().all(|m| m.1.len() < 512 << 10),
                "{format:?}: a message over 512 KiB"
            );
        }
    }
}
