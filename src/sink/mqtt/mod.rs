//! The MQTT sink (`type = "mqtt"`): per flush, one message per device — a
//! `linetap.v1.SampleBatch` (format linetap, with the line's `Catalog` kept retained on
//! `catalog_topic`) or a JSON object (format json). With QoS 1 a flush is delivered, and the
//! sink's buffer cursor moves, only once the broker acknowledged every message (PUBACK); if the
//! connection drops first, the whole flush is published again after the reconnect (at least
//! once: a consumer may see a message twice, never miss one).

pub mod config;
pub mod sparkplug;

use super::lineproto::Skipped;
use super::{Outcome, RetryCtl, Sink};
use crate::backoff::Backoff;
use crate::model::{Catalog, SampleBatch, Value};
use crate::mqtt::client::{self, Client, Event, Publish};
use config::{MqttSinkConfig, MqttSinkFormat};
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

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

/// The connection: a client and the events of its loop (run in its own task).
pub(crate) struct Connection {
    pub(crate) client: Client,
    events: tokio::sync::mpsc::Receiver<Result<Event, String>>,
    pump: tokio::task::JoinHandle<()>,
    /// It has a will: dropped without a DISCONNECT, so the broker publishes it (a clean
    /// DISCONNECT discards the will; `publish_and_close` says goodbye itself).
    will: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if !self.will {
            let _ = self.client.try_disconnect();
        }
        self.pump.abort();
    }
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

/// What both MQTT sinks do after an attempt to deliver a flush: count it, log a failure once
/// per kind (and the recovery), and back off before the next attempt.
pub(crate) struct Attempts {
    backoff: Backoff,
    logged: Option<String>,
}

impl Attempts {
    pub(crate) fn new() -> Self {
        Attempts {
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            logged: None,
        }
    }

    /// `Some(outcome)` when the flush is done (delivered `bytes`, or abandoned at shutdown);
    /// `None`: try again (the wait is over).
    pub(crate) async fn outcome(
        &mut self,
        result: Result<usize, String>,
        broker: &crate::mqtt::connection::BrokerConfig,
        retry: &mut RetryCtl,
    ) -> Option<Outcome> {
        match result {
            Ok(bytes) => {
                self.backoff.reset();
                if self.logged.take().is_some() {
                    tracing::info!(sink = %broker.name, "MQTT sink delivering again");
                }
                retry.metrics.requests.fetch_add(1, Relaxed);
                retry.metrics.bytes_sent.fetch_add(bytes as u64, Relaxed);
                Some(Outcome::Delivered)
            }
            Err(e) => {
                retry.metrics.errors_unavailable.fetch_add(1, Relaxed);
                retry.metrics.retries.fetch_add(1, Relaxed);
                if self.logged.as_deref() != Some(e.as_str()) {
                    tracing::warn!(sink = %broker.name, address = %broker.address(), error = %e, "MQTT sink: not delivered; retrying with backoff (the data stays in the buffer)");
                    self.logged = Some(e);
                }
                if retry.wait(self.backoff.next_delay()).await {
                    None
                } else {
                    Some(Outcome::Abandoned(
                        "the broker did not take the data before the grace period ended".into(),
                    ))
                }
            }
        }
    }
}

pub fn build(cfg: &MqttSinkConfig, _ctx: &super::BuildContext) -> Result<MqttSink, String> {
    // The files a connection needs (password, certificates) are read now, so a missing one
    // stops the start with its reason.
    crate::mqtt::connection::options(&cfg.broker)?;
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
                    // Built as a `sparkplug::SparkplugSink`.
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

impl Connection {
    /// Connects (options read on the blocking pool) and waits for the CONNACK; `will` is the
    /// last will for this connection (a Sparkplug NDEATH).
    pub(crate) async fn open(
        broker: &crate::mqtt::connection::BrokerConfig,
        will: Option<(String, Vec<u8>, u8, bool)>,
    ) -> Result<Connection, String> {
        let cfg = broker.clone();
        let has_will = will.is_some();
        let open = client::Open {
            will,
            ..Default::default()
        };
        let (client, mut events) =
            tokio::task::spawn_blocking(move || client::new(&cfg, open, 1024))
                .await
                .map_err(|e| e.to_string())??;
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let pump = tokio::spawn(async move {
            loop {
                let e = events.poll().await;
                let failed = e.is_err();
                if tx.send(e).await.is_err() || failed {
                    return;
                }
            }
        });
        // Wait for the broker's CONNACK.
        let connected = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(e) = rx.recv().await {
                match e {
                    Ok(Event::ConnAck) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Err("the connection closed".to_string())
        })
        .await
        .map_err(|_| "no CONNACK within 10s".to_string());
        let conn = Connection {
            client,
            events: rx,
            pump,
            will: has_will,
        };
        connected??;
        Ok(conn)
    }

    /// Publishes every message (topic, payload, retain) at `qos`; returns once each was
    /// written (QoS 0) or acknowledged (QoS 1). Incoming messages seen meanwhile (commands)
    /// go to `incoming`.
    pub(crate) async fn publish_all(
        &mut self,
        messages: &[(String, Vec<u8>, bool)],
        qos: u8,
        incoming: &mut (dyn FnMut(Publish) + Send),
    ) -> Result<(), String> {
        let mut sent = 0usize;
        let mut waiting: HashSet<u16> = HashSet::new();
        let mut acked = 0usize;
        let mut next = 0usize;
        // Publish while draining events, so a full request channel never deadlocks.
        while acked < messages.len() {
            if next < messages.len() {
                let (topic, payload, retain) = &messages[next];
                tokio::select! {
                    r = self.client.publish(topic.clone(), qos, *retain, payload.clone()) => {
                        r?;
                        next += 1;
                        continue;
                    }
                    e = self.events.recv() => {
                        account(e, qos, &mut sent, &mut waiting, &mut acked, incoming)?;
                    }
                }
            } else {
                let e = tokio::time::timeout(Duration::from_secs(30), self.events.recv())
                    .await
                    .map_err(|_| "no PUBACK within 30s".to_string())?;
                account(e, qos, &mut sent, &mut waiting, &mut acked, incoming)?;
            }
        }
        Ok(())
    }

    /// Publishes one last message (e.g. a Sparkplug NDEATH), waits for it to be written (QoS 0)
    /// or acknowledged (QoS 1), then disconnects cleanly.
    pub(crate) async fn publish_and_close(
        mut self,
        message: (String, Vec<u8>),
        qos: u8,
    ) -> Result<(), String> {
        let (topic, payload) = message;
        let result = tokio::time::timeout(
            Duration::from_secs(2),
            self.publish_all(&[(topic, payload, false)], qos, &mut |_| {}),
        )
        .await
        .map_err(|_| "not acknowledged within 2 s".to_string())
        .and_then(|r| r);
        let _ = self.client.try_disconnect();
        // The disconnect goes out on the event loop: give it a moment before the pump ends.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(e) = self.events.recv().await {
                if matches!(e, Ok(Event::Disconnected) | Err(_)) {
                    break;
                }
            }
        })
        .await;
        self.will = false;
        result
    }

    /// Messages that arrived while no flush ran (commands), without waiting.
    pub(crate) fn drain(
        &mut self,
        incoming: &mut (dyn FnMut(Publish) + Send),
    ) -> Result<(), String> {
        loop {
            match self.events.try_recv() {
                Ok(Ok(Event::Publish(p))) => incoming(p),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return Ok(()),
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    return Err("the connection closed".into())
                }
            }
        }
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

/// One event of the connection during a flush: counts publishes written and PUBACKs received.
fn account(
    e: Option<Result<Event, String>>,
    qos: u8,
    sent: &mut usize,
    waiting: &mut HashSet<u16>,
    acked: &mut usize,
    incoming: &mut (dyn FnMut(Publish) + Send),
) -> Result<(), String> {
    match e {
        None => Err("the connection closed".into()),
        Some(Err(e)) => Err(e),
        Some(Ok(Event::Sent(pkid))) => {
            *sent += 1;
            if qos == 0 {
                // QoS 0: delivered once written.
                *acked += 1;
            } else {
                waiting.insert(pkid);
            }
            Ok(())
        }
        Some(Ok(Event::PubAck(pkid))) => {
            if waiting.remove(&pkid) {
                *acked += 1;
            }
            Ok(())
        }
        Some(Ok(Event::BrokerDisconnected)) => Err("the broker disconnected".into()),
        Some(Ok(Event::Publish(p))) => {
            incoming(p);
            Ok(())
        }
        Some(Ok(_)) => Ok(()),
    }
}

/// A device's samples as the JSON object PRODUCT.md describes.
fn json(names: &Names, batch: &SampleBatch) -> String {
    let dev = names.devices.get(&batch.device);
    let mut o = String::with_capacity(128 + batch.samples.len() * 120);
    o.push('{');
    let field = |o: &mut String, k: &str, v: &str| {
        let _ = write!(o, "{}:{},", quote(k), quote(v));
    };
    if !names.site.is_empty() {
        field(&mut o, "site", &names.site);
    }
    field(&mut o, "line", &names.line);
    if let Some(d) = dev {
        if !d.cell.is_empty() {
            field(&mut o, "cell", &d.cell);
        }
        field(&mut o, "device", &d.name);
        field(&mut o, "kind", &d.kind);
    }
    o.push_str("\"samples\":[");
    let mut first = true;
    for s in &batch.samples {
        let (Some(p), Some(v)) = (names.points.get(&s.point), &s.value) else {
            continue;
        };
        let value = match v {
            Value::DoubleValue(x) if x.is_finite() => format!("{x}"),
            Value::DoubleValue(_) => continue,
            Value::IntValue(i) => i.to_string(),
            Value::UintValue(u) => u.to_string(),
            Value::BoolValue(b) => b.to_string(),
            Value::StringValue(t) => quote(t),
        };
        if !first {
            o.push(',');
        }
        first = false;
        let tags: BTreeMap<&str, &str> = p
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let _ = write!(
            o,
            "{{\"measurement\":{},\"field\":{},\"tags\":{{",
            quote(&p.measurement),
            quote(&p.field)
        );
        for (i, (k, v)) in tags.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            let _ = write!(o, "{}:{}", quote(k), quote(v));
        }
        let _ = write!(o, "}},\"value\":{value}");
        let code = match v {
            Value::IntValue(i) => Some(*i),
            Value::UintValue(u) => i64::try_from(*u).ok(),
            _ => None,
        };
        if let (Some(code), false) = (code, p.labels.is_empty()) {
            let label = p
                .labels
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, l)| l.as_str())
                .unwrap_or("unknown");
            let _ = write!(o, ",\"label\":{}", quote(label));
        }
        if !p.unit.is_empty() {
            let _ = write!(o, ",\"unit\":{}", quote(&p.unit));
        }
        let _ = write!(o, ",\"ts\":\"{}\"}}", rfc3339_ns(s.timestamp_ns));
    }
    o.push_str("]}");
    o
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Unix nanoseconds as RFC 3339 UTC with nanoseconds: `2023-11-14T22:13:20.123456789Z`.
pub fn rfc3339_ns(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceDescriptor, PointDescriptor, Sample};

    fn sink(format: MqttSinkFormat) -> MqttSink {
        let cfg = MqttSinkConfig {
            broker: crate::mqtt::connection::BrokerConfig {
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

    #[test]
    fn timestamps_round_trip_through_rfc3339() {
        for ns in [
            0i64,
            1_700_000_000_123_456_789,
            951_825_600_000_000_000,
            4_102_444_800_000_000_001,
        ] {
            let text = rfc3339_ns(ns);
            assert_eq!(
                crate::source::mqtt::payload::rfc3339(&text),
                Some(ns),
                "{text}"
            );
        }
        assert_eq!(rfc3339_ns(0), "1970-01-01T00:00:00.000000000Z");
    }
}
