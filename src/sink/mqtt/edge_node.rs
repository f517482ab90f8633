//! The MQTT sink as a Sparkplug B 3.0 edge node (shared/reference/sparkplug-b.md, sections 4
//! and 5). The node is the line (`sparkplug = { group, node }`); its devices are the line's
//! devices, their metrics the catalog's points named `measurement/field` (tag values between:
//! `joint/2/position`), aliased by point id, with datatypes from the catalog (the model's codes
//! are Sparkplug's) and an `engUnit` property where the point has a unit; an enum point also
//! publishes its label as the String metric `measurement/field_label`.
//!
//! Per connection (clean session): the will is the NDEATH with this connection's `bdSeq`
//! (+1 per CONNECT); subscribe NCMD; NBIRTH (seq 0, `bdSeq`, `Node Control/Rebirth`) and a
//! DBIRTH per device. Then each flush: DDATA per device by alias with each sample's time;
//! samples older than the session's NBIRTH (the buffer's backlog after an outage) are marked
//! `is_historical`. A device whose health record says down gets a DDEATH, and a DBIRTH when it
//! is back. An NCMD `Node Control/Rebirth` = true republishes every birth. `seq` runs 0–255
//! across the node's messages. Births and data go at QoS 0: a flush is delivered once every
//! message was written to the connected session.
//!
//! The next `bdSeq` is kept in `data_dir/sparkplug/SINK.bdseq`, so it goes on across restarts
//! (as Tahu's edge nodes do). A clean stop (or a reload that stops the sink) publishes the
//! NDEATH itself before disconnecting: a clean DISCONNECT discards the will. With
//! `primary_host`, the node subscribes to `spBv1.0/STATE/HOST` and births only once that host
//! says it is online; when it goes offline, the node publishes its NDEATH and disconnects, and
//! the data stays in the buffer until the host is back (then a rebirth, with a new bdSeq, and
//! the backlog as historical).

use super::config::MqttSinkConfig;
use crate::model::catalog::HEALTH_MEASUREMENT;
use crate::model::{Catalog, SampleBatch, Value};
use crate::mqtt::client::{Event, Publish};
use crate::mqtt::connection::Connection;
use crate::mqtt::sparkplug::{
    bd_seq, datatype, metric, metric_value, property_value, topic, Metric, Payload, PropertySet,
    PropertyValue,
};
use crate::sink::lineproto::Skipped;
use crate::sink::{Outcome, RetryCtl, Sink};
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Catalog versions kept (the sink loop hands an older one again when needed).
const CATALOGS_KEPT: usize = 8;

/// How long a flush waits for the primary host's online STATE before it is retried.
const HOST_WAIT: Duration = Duration::from_secs(5);

/// Label metrics take aliases above every point id.
const LABEL_ALIAS: u64 = 1 << 32;

struct MetricDef {
    device: u32,
    name: String,
    datatype: u32,
    unit: String,
    labels: Vec<(i64, String)>,
    /// The device's health `up` point.
    up: bool,
}

struct Node {
    devices: BTreeMap<u32, String>,
    metrics: BTreeMap<u32, MetricDef>,
}

pub struct SparkplugSink {
    cfg: MqttSinkConfig,
    catalogs: HashMap<u64, Arc<Node>>,
    /// Catalog ids in the order they came (the oldest are let go).
    catalog_order: VecDeque<u64>,
    /// Where the next bdSeq is kept.
    bd_file: PathBuf,
    /// The primary host's last STATE on this connection (true without a primary host).
    host_online: bool,
    /// An NBIRTH went out on this connection.
    birthed: bool,
    /// The flush failed only because the primary host is offline: keep the connection.
    waiting_for_host: bool,
    /// The newest catalog version seen (births describe it).
    newest: Option<u64>,
    pending: Vec<(u64, SampleBatch)>,
    pending_bytes: usize,
    /// The last value of each point (births carry current values).
    last: HashMap<u32, (Value, i64)>,
    connection: Option<Connection>,
    /// The bdSeq of the next CONNECT, and of the current one.
    next_bd: u64,
    current_bd: u64,
    seq: u8,
    /// When the current session's NBIRTH went out (ns): older samples are historical.
    session_ns: i64,
    /// Devices with a DBIRTH in this session, and devices known to be down.
    born: HashSet<u32>,
    down: HashSet<u32>,
    rebirth: bool,
    attempts: super::Attempts,
}

pub fn build(
    cfg: &MqttSinkConfig,
    ctx: &crate::sink::BuildContext,
) -> Result<SparkplugSink, String> {
    crate::mqtt::settings::options(&cfg.broker)?;
    let mut cfg = cfg.clone();
    // Sparkplug 3.0: an edge node connects with a clean session.
    cfg.broker.clean_session = true;
    let bd_file = ctx.data_dir.join("sparkplug").join(format!(
        "{}.bdseq",
        crate::buffer::cursors::file_name(ctx.name)
    ));
    // A small file read once at start-up (as the credentials are).
    let next_bd = std::fs::read_to_string(&bd_file)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map(|b| b % 256)
        .unwrap_or(0);
    Ok(SparkplugSink {
        host_online: cfg.primary_host.is_none(),
        cfg,
        catalogs: HashMap::new(),
        catalog_order: VecDeque::new(),
        bd_file,
        birthed: false,
        waiting_for_host: false,
        newest: None,
        pending: Vec::new(),
        pending_bytes: 0,
        last: HashMap::new(),
        connection: None,
        next_bd,
        current_bd: 0,
        seq: 0,
        session_ns: 0,
        born: HashSet::new(),
        down: HashSet::new(),
        rebirth: false,
        attempts: super::Attempts::new(),
    })
}

/// `measurement/field`, with the point's tag values (sorted by key) between.
fn metric_name(measurement: &str, field: &str, tags: &[crate::model::Tag]) -> String {
    let mut tags: Vec<(&str, &str)> = tags
        .iter()
        .map(|t| (t.key.as_str(), t.value.as_str()))
        .collect();
    tags.sort_unstable();
    let mut name = measurement.to_string();
    for (_, v) in tags {
        name.push('/');
        name.push_str(v);
    }
    name.push('/');
    name.push_str(field);
    name
}

impl Sink for SparkplugSink {
    fn knows(&self, id: u64) -> bool {
        self.catalogs.contains_key(&id)
    }

    fn catalog(&mut self, id: u64, catalog: &Catalog) {
        let devices: BTreeMap<u32, String> = catalog
            .devices
            .iter()
            // The agent's own records have no device name: not a Sparkplug device.
            .filter(|d| !d.name.is_empty() && !d.name.contains(['+', '/', '#']))
            .map(|d| (d.id, d.name.clone()))
            .collect();
        let metrics = catalog
            .points
            .iter()
            .filter(|p| devices.contains_key(&p.device))
            .map(|p| {
                (
                    p.id,
                    MetricDef {
                        device: p.device,
                        name: metric_name(&p.measurement, &p.name, &p.tags),
                        datatype: p.data_type as u32,
                        unit: p.unit.clone(),
                        labels: p
                            .enum_labels
                            .iter()
                            .map(|l| (l.code, l.label.clone()))
                            .collect(),
                        up: p.measurement == HEALTH_MEASUREMENT && p.name == "up",
                    },
                )
            })
            .collect();
        self.catalogs
            .insert(id, Arc::new(Node { devices, metrics }));
        self.catalog_order.retain(|c| *c != id);
        self.catalog_order.push_back(id);
        while self.catalog_order.len() > CATALOGS_KEPT {
            if let Some(old) = self.catalog_order.pop_front() {
                self.catalogs.remove(&old);
            }
        }
        self.newest = Some(id);
        if self.connection.is_some() {
            // New devices or metrics: births again (a DBIRTH carries every metric).
            self.born.clear();
        }
    }

    fn add(&mut self, catalog: u64, batch: &SampleBatch, skipped: &mut Skipped) -> usize {
        let Some(node) = self.catalogs.get(&catalog) else {
            skipped.unknown_point += batch.samples.len() as u64;
            return 0;
        };
        if !node.devices.contains_key(&batch.device) {
            // The agent's own records: not published over Sparkplug (counted as delivered:
            // this sink's job with them is done).
            return batch.samples.len();
        }
        let mut b = SampleBatch {
            device: batch.device,
            seq: batch.seq,
            timestamp_ns: 0,
            samples: Vec::with_capacity(batch.samples.len()),
        };
        for s in &batch.samples {
            let mut s = s.clone();
            s.timestamp_ns = batch.time_of(&s);
            b.samples.push(s);
        }
        self.pending_bytes += b.samples.len() * 24;
        let n = b.samples.len();
        self.pending.push((catalog, b));
        // Counted in samples, as every sink counts (batch_size, delivered).
        n
    }

    async fn flush(&mut self, retry: &mut RetryCtl) -> Outcome {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        loop {
            self.waiting_for_host = false;
            let result = self.deliver(&pending).await;
            if result.is_err() && !self.waiting_for_host {
                self.connection = None;
            }
            if let Some(outcome) = self.attempts.outcome(result, &self.cfg.broker, retry).await {
                return outcome;
            }
        }
    }

    fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// A clean stop: the NDEATH, published by the node itself (a clean DISCONNECT discards
    /// the will), then the disconnect.
    async fn close(&mut self) {
        if let Some(conn) = self.connection.take() {
            if self.birthed {
                let ndeath = self.ndeath();
                if let Err(e) = conn.publish_and_close(ndeath, 1).await {
                    tracing::warn!(sink = %self.cfg.broker.name, error = %e, "Sparkplug: NDEATH not confirmed at the stop (the will stands in)");
                } else {
                    tracing::info!(sink = %self.cfg.broker.name, bd_seq = self.current_bd, "Sparkplug: NDEATH published at the stop");
                }
            }
        }
    }
}

impl SparkplugSink {
    /// The NDEATH of the current connection: topic and payload (its bdSeq).
    fn ndeath(&self) -> (String, Vec<u8>) {
        let payload = Payload {
            timestamp: Some(crate::model::now_ns() as u64 / 1_000_000),
            metrics: vec![bd_seq(self.current_bd)],
            ..Default::default()
        };
        (
            topic(self.group(), "NDEATH", self.node(), None),
            payload.encode_to_vec(),
        )
    }

    fn state_topic(&self) -> Option<String> {
        self.cfg
            .primary_host
            .as_ref()
            .map(|h| format!("spBv1.0/STATE/{h}"))
    }

    /// Looks at a message from the broker: a rebirth command, or the primary host's STATE.
    fn incoming(&mut self, p: &Publish) -> bool {
        if Some(p.topic.as_str()) == self.state_topic().as_deref() {
            match host_state(&p.payload) {
                Some(online) => {
                    if online != self.host_online {
                        tracing::info!(sink = %self.cfg.broker.name, host = self.cfg.primary_host.as_deref().unwrap_or(""), online, "Sparkplug: the primary host's STATE changed");
                    }
                    self.host_online = online;
                }
                None => {
                    tracing::warn!(sink = %self.cfg.broker.name, topic = %p.topic, "Sparkplug: an unreadable STATE message, ignored")
                }
            }
            return false;
        }
        is_rebirth(p)
    }

    /// Keeps the next bdSeq on disk (on the blocking pool); a failure is logged, not fatal.
    async fn persist_bd(&self) {
        let (path, next) = (self.bd_file.clone(), self.next_bd);
        let r = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("bdseq.tmp");
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(format!("{next}\n").as_bytes())?;
                f.sync_data()?;
            }
            std::fs::rename(&tmp, &path)
        })
        .await;
        if let Ok(Err(e)) | Err(e) = r.map_err(std::io::Error::other) {
            tracing::warn!(sink = %self.cfg.broker.name, file = %self.bd_file.display(), error = %e, "Sparkplug: cannot keep the next bdSeq; after a restart it may repeat");
        }
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        s as u64
    }

    fn group(&self) -> &str {
        &self.cfg.sparkplug.0
    }

    fn node(&self) -> &str {
        &self.cfg.sparkplug.1
    }

    /// Connects with the NDEATH will and subscribes to NCMD (a new bdSeq per CONNECT).
    async fn connect(&mut self) -> Result<(), String> {
        if self.connection.is_some() {
            return Ok(());
        }
        let bd = self.next_bd;
        let will = Payload {
            timestamp: Some(crate::model::now_ns() as u64 / 1_000_000),
            metrics: vec![bd_seq(bd)],
            ..Default::default()
        };
        let will = (
            topic(self.group(), "NDEATH", self.node(), None),
            will.encode_to_vec(),
            1,
            false,
        );
        let conn = Connection::open(&self.cfg.broker, Some(will)).await?;
        self.next_bd = (bd + 1) % 256;
        self.persist_bd().await;
        conn.client
            .subscribe(topic(self.group(), "NCMD", self.node(), None), 1)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(state) = self.state_topic() {
            conn.client
                .subscribe(state, 1)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.host_online = self.cfg.primary_host.is_none();
        self.birthed = false;
        tracing::info!(sink = %self.cfg.broker.name, address = %self.cfg.broker.address(), group = self.group(), node = self.node(), bd_seq = bd, "Sparkplug edge node connected");
        self.connection = Some(conn);
        self.current_bd = bd;
        self.born.clear();
        self.rebirth = true;
        Ok(())
    }

    /// One flush: births where needed, then the data; returns the bytes written.
    async fn deliver(&mut self, pending: &[(u64, SampleBatch)]) -> Result<usize, String> {
        self.connect().await?;
        // Commands (and the primary host's STATE) that arrived since the last flush.
        let mut seen: Vec<Publish> = Vec::new();
        if let Some(c) = self.connection.as_mut() {
            c.drain(&mut |p| seen.push(p))?;
        }
        let mut rebirth = false;
        for p in &seen {
            rebirth |= self.incoming(p);
        }
        if !self.host_online {
            self.wait_for_host().await?;
        }
        if rebirth {
            tracing::info!(sink = %self.cfg.broker.name, "Sparkplug: rebirth requested (NCMD Node Control/Rebirth)");
            self.rebirth = true;
        }
        let mut messages: Vec<(String, Vec<u8>, bool)> = Vec::new();
        if self.rebirth {
            self.births(&mut messages);
            self.rebirth = false;
        }
        // Data per device, in the order the batches came.
        for (catalog, batch) in pending {
            let Some(node) = self.catalogs.get(catalog).cloned() else {
                continue;
            };
            let device = batch.device;
            let Some(name) = node.devices.get(&device).cloned() else {
                continue;
            };
            // The device's health in this batch (down: a DDEATH after its data).
            let up = batch.samples.iter().find_map(|s| {
                let is_up = node.metrics.get(&s.point).is_some_and(|m| m.up);
                match (is_up, &s.value) {
                    (true, Some(Value::BoolValue(b))) => Some(*b),
                    _ => None,
                }
            });
            if up == Some(true) && self.down.remove(&device) {
                self.born.remove(&device);
            }
            if !self.born.contains(&device) && !self.down.contains(&device) {
                self.dbirth(&node, device, &name, &mut messages);
            }
            let mut metrics = Vec::with_capacity(batch.samples.len());
            for s in &batch.samples {
                let (Some(def), Some(v)) = (node.metrics.get(&s.point), &s.value) else {
                    continue;
                };
                self.last.insert(s.point, (v.clone(), s.timestamp_ns));
                let historical = s.timestamp_ns < self.session_ns;
                let ts = (s.timestamp_ns.max(0) / 1_000_000) as u64;
                if let Some(value) = metric_value(def.datatype, v) {
                    metrics.push(Metric {
                        alias: Some(s.point as u64),
                        timestamp: Some(ts),
                        is_historical: historical.then_some(true),
                        value: Some(value),
                        ..Default::default()
                    });
                }
                if let (false, Some(code)) = (def.labels.is_empty(), code_of(v)) {
                    metrics.push(Metric {
                        alias: Some(LABEL_ALIAS | s.point as u64),
                        timestamp: Some(ts),
                        is_historical: historical.then_some(true),
                        value: Some(metric::Value::StringValue(label(&def.labels, code))),
                        ..Default::default()
                    });
                }
            }
            if !metrics.is_empty() && !self.down.contains(&device) {
                let payload = Payload {
                    timestamp: Some(crate::model::now_ns() as u64 / 1_000_000),
                    seq: Some(self.next_seq()),
                    metrics,
                    ..Default::default()
                };
                messages.push((
                    topic(self.group(), "DDATA", self.node(), Some(&name)),
                    payload.encode_to_vec(),
                    false,
                ));
            }
            if up == Some(false) && !self.down.contains(&device) {
                let payload = Payload {
                    timestamp: Some(crate::model::now_ns() as u64 / 1_000_000),
                    seq: Some(self.next_seq()),
                    ..Default::default()
                };
                messages.push((
                    topic(self.group(), "DDEATH", self.node(), Some(&name)),
                    payload.encode_to_vec(),
                    false,
                ));
                self.down.insert(device);
            }
        }
        let bytes = messages.iter().map(|m| m.1.len()).sum();
        let Some(conn) = self.connection.as_mut() else {
            return Err("not connected".into());
        };
        let mut seen: Vec<Publish> = Vec::new();
        conn.publish_all(&messages, 0, &mut |p| seen.push(p))
            .await?;
        for p in &seen {
            if self.incoming(p) {
                self.rebirth = true;
            }
        }
        Ok(bytes)
    }

    /// The primary host is not online: after births on this connection, the NDEATH and a
    /// disconnect (the data stays in the buffer); before, wait a little for its online STATE
    /// (a retained one comes at once). An error either way unless it came online.
    async fn wait_for_host(&mut self) -> Result<(), String> {
        let host = self.cfg.primary_host.clone().unwrap_or_default();
        if self.birthed {
            let ndeath = self.ndeath();
            if let Some(conn) = self.connection.take() {
                let _ = conn.publish_and_close(ndeath, 1).await;
            }
            tracing::warn!(sink = %self.cfg.broker.name, host = %host, bd_seq = self.current_bd, "Sparkplug: the primary host went offline: NDEATH published and disconnected; the data stays in the buffer until it is back");
            return Err(format!("primary host {host} is offline"));
        }
        let deadline = tokio::time::Instant::now() + HOST_WAIT;
        while !self.host_online {
            let Some(conn) = self.connection.as_mut() else {
                return Err("not connected".into());
            };
            let event = match tokio::time::timeout_at(deadline, conn.recv()).await {
                Ok(e) => e,
                Err(_) => {
                    self.waiting_for_host = true;
                    return Err(format!("waiting for the primary host {host} to be online"));
                }
            };
            match event {
                Some(Ok(Event::Publish(p))) => {
                    if self.incoming(&p) {
                        self.rebirth = true;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err("the connection closed".into()),
            }
        }
        // Online: births first.
        self.rebirth = true;
        Ok(())
    }

    /// NBIRTH (seq 0, bdSeq, Node Control/Rebirth) and a DBIRTH for every device not down.
    fn births(&mut self, out: &mut Vec<(String, Vec<u8>, bool)>) {
        let now_ms = crate::model::now_ns() as u64 / 1_000_000;
        self.session_ns = crate::model::now_ns();
        self.birthed = true;
        self.seq = 0;
        let nbirth = Payload {
            timestamp: Some(now_ms),
            seq: Some(self.next_seq()),
            metrics: vec![
                bd_seq(self.current_bd),
                Metric {
                    name: Some("Node Control/Rebirth".into()),
                    datatype: Some(datatype::BOOLEAN),
                    value: Some(metric::Value::BooleanValue(false)),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        out.push((
            topic(self.group(), "NBIRTH", self.node(), None),
            nbirth.encode_to_vec(),
            false,
        ));
        self.born.clear();
        let Some(node) = self.newest.and_then(|n| self.catalogs.get(&n)).cloned() else {
            return;
        };
        for (id, name) in &node.devices {
            if !self.down.contains(id) {
                self.dbirth(&node, *id, name, out);
            }
        }
    }

    /// A device's birth: every metric with name, alias, datatype, unit and current value.
    fn dbirth(
        &mut self,
        node: &Node,
        device: u32,
        name: &str,
        out: &mut Vec<(String, Vec<u8>, bool)>,
    ) {
        let now_ms = crate::model::now_ns() as u64 / 1_000_000;
        let mut metrics = Vec::new();
        for (id, def) in node.metrics.iter().filter(|(_, d)| d.device == device) {
            let current = self.last.get(id);
            let properties = (!def.unit.is_empty()).then(|| PropertySet {
                keys: vec!["engUnit".into()],
                values: vec![PropertyValue {
                    r#type: Some(datatype::STRING),
                    value: Some(property_value::Value::StringValue(def.unit.clone())),
                    ..Default::default()
                }],
            });
            let value = current.and_then(|(v, _)| metric_value(def.datatype, v));
            metrics.push(Metric {
                name: Some(def.name.clone()),
                alias: Some(*id as u64),
                timestamp: Some(
                    current
                        .map(|c| (c.1.max(0) / 1_000_000) as u64)
                        .unwrap_or(now_ms),
                ),
                datatype: Some(def.datatype),
                is_null: value.is_none().then_some(true),
                properties,
                value,
                ..Default::default()
            });
            if !def.labels.is_empty() {
                let label_value = current
                    .and_then(|(v, _)| code_of(v))
                    .map(|c| metric::Value::StringValue(label(&def.labels, c)));
                metrics.push(Metric {
                    name: Some(format!("{}_label", def.name)),
                    alias: Some(LABEL_ALIAS | *id as u64),
                    timestamp: Some(now_ms),
                    datatype: Some(datatype::STRING),
                    is_null: label_value.is_none().then_some(true),
                    value: label_value,
                    ..Default::default()
                });
            }
        }
        let payload = Payload {
            timestamp: Some(now_ms),
            seq: Some(self.next_seq()),
            metrics,
            ..Default::default()
        };
        out.push((
            topic(self.group(), "DBIRTH", self.node(), Some(name)),
            payload.encode_to_vec(),
            false,
        ));
        self.born.insert(device);
    }
}

fn code_of(v: &Value) -> Option<i64> {
    match v {
        Value::IntValue(i) => Some(*i),
        Value::UintValue(u) => i64::try_from(*u).ok(),
        _ => None,
    }
}

fn label(labels: &[(i64, String)], code: i64) -> String {
    labels
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, l)| l.clone())
        .unwrap_or_else(|| "unknown".into())
}

/// A STATE payload: Sparkplug 3.0 JSON (`{"online": true, "timestamp": …}`), or 2.2's plain
/// `ONLINE` / `OFFLINE`.
fn host_state(payload: &[u8]) -> Option<bool> {
    match payload {
        b"ONLINE" => return Some(true),
        b"OFFLINE" => return Some(false),
        _ => {}
    }
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get("online")?.as_bool()
}

/// An NCMD asking for `Node Control/Rebirth` = true.
fn is_rebirth(p: &Publish) -> bool {
    if !p.topic.contains("/NCMD/") {
        return false;
    }
    match Payload::decode(p.payload.as_ref()) {
        Ok(payload) => payload.metrics.iter().any(|m| {
            m.name.as_deref() == Some("Node Control/Rebirth")
                && m.value == Some(metric::Value::BooleanValue(true))
        }),
        Err(_) => false,
    }
}
