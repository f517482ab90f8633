//! OPC UA devices (`protocol = "opcua"`): one session per device (async-opcua, pure-Rust
//! crypto), values by subscription: one monitored item per point, sampled and published at the
//! device's `poll`, with the point's `report` deadband as the server-side DataChangeFilter.
//! Each session starts from nothing: namespace URIs resolved against the server's namespace
//! array, `path` points resolved by browsing (node ids may change after a controller
//! download), the subscription and its items created in batches. A lost session (a server
//! restart, a network cut) is not restored: the device is down, and a new session is set up
//! with backoff (decision 0020: the client's own reconnect loses its publishing after a
//! reconnect in 0.19).
//!
//! - `address.rs`: NodeId and browse path syntax (pure); `config.rs`: the device and point keys;
//! - `session.rs`: the client, connecting, trust on first use, resolving, subscribing;
//! - this file: the device's task, and how a DataValue becomes a sample.

pub mod address;
pub mod check;
pub mod config;
pub mod probe;
pub mod robotics;
pub mod session;
pub mod shape;

use crate::backoff::Backoff;
use crate::component::{ComponentId, Kind};
use crate::config::{Config, DeviceConfig, PointType};
use crate::model::catalog::{health_points, HealthIds, Registry};
use crate::model::{now_ns, Quality, Sample, SampleBatch, Value};
use crate::observe::metrics::{DeviceFamily, DeviceMetrics, KindCounters};
use crate::shutdown::Shutdown;
use crate::source::{describe, Source, SourceContext};
use crate::transform::DeviceOutput;
use config::OpcuaDevice;
use opcua::types::{DataValue, Variant};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The results a value can have.
const RESULTS: &[&str] = &["good", "uncertain", "bad", "rejected", "dropped"];
const GOOD: usize = 0;
const UNCERTAIN: usize = 1;
const BAD: usize = 2;
const REJECTED: usize = 3;
const DROPPED: usize = 4;

/// The device metric families of OPC UA devices.
pub static FAMILIES: [DeviceFamily; 1] = [DeviceFamily {
    name: "linetap_opcua_values_total",
    gauge: false,
    label: Some(("result", RESULTS)),
}];

/// Every OPC UA device of a configuration.
pub fn devices(config: &Config) -> impl Iterator<Item = (&DeviceConfig, &OpcuaDevice)> {
    config
        .devices
        .iter()
        .filter_map(|d| Some((d, d.settings::<OpcuaDevice>()?)))
}

/// One node read by a monitored item (a point, or one axis of a robot's point).
#[derive(Debug, Clone)]
pub struct Item {
    pub name: String,
    /// The device it is written to (`Targets`' index).
    pub target: usize,
    /// Its catalog ids, one per element.
    pub ids: Vec<u32>,
    pub kind: PointType,
    pub scale: Option<(f64, f64)>,
    /// The server-side deadband (absolute; 0: none).
    pub deadband: f64,
}

/// One device: where it is, how it is reached.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    pub device: u32,
    pub name: String,
    /// The device as configured: each session works out what it reads from it
    /// (`shape.rs`).
    pub config: Arc<DeviceConfig>,
    pub settings: OpcuaDevice,
    pub poll: Duration,
    pub health: HealthIds,
}

/// The devices a configured device was last seen to write (`Targets::adopt`), by device
/// name, with the fingerprint of its configuration: a reload that registers the line's devices
/// again registers these (an unchanged device's session goes on writing them), not the
/// configured shape.
type Learned = Vec<(
    crate::model::DeviceDescriptor,
    Vec<crate::model::PointDescriptor>,
)>;
static LEARNED: std::sync::Mutex<Option<std::collections::HashMap<String, (u64, Learned)>>> =
    std::sync::Mutex::new(None);

fn learned(device: &str, fingerprint: u64) -> Option<Learned> {
    let map = LEARNED.lock().unwrap_or_else(|e| e.into_inner());
    match map.as_ref()?.get(device) {
        Some((f, l)) if *f == fingerprint => Some(l.clone()),
        _ => None,
    }
}

fn learn(device: &str, fingerprint: u64, shape: Learned) -> Vec<String> {
    let mut map = LEARNED.lock().unwrap_or_else(|e| e.into_inner());
    let names = |l: &Learned| l.iter().map(|(d, _)| d.name.clone()).collect::<Vec<_>>();
    map.get_or_insert_with(Default::default)
        .insert(device.to_string(), (fingerprint, shape))
        .map(|(_, l)| names(&l))
        .unwrap_or_default()
}

/// Registers a device's points and health points (as its sessions last saw it, when its
/// configuration is unchanged); returns its plan.
pub fn register(d: &DeviceConfig, o: &OpcuaDevice, registry: &mut Registry) -> DevicePlan {
    let health = match learned(&d.id, crate::component::fingerprint(d)) {
        Some(targets) => {
            let mut health = None;
            for (descriptor, points) in targets {
                let base = descriptor.name == d.id;
                let ids = registry.set_device(descriptor, points);
                if base {
                    health = Some((ids.device, health_ids(&ids.points)));
                }
            }
            health
        }
        None => None,
    };
    let (device, health) = match health {
        Some(h) => h,
        None => {
            let ids = registry.set_device(describe::device(d, &o.endpoint, 0), described(d));
            (ids.device, health_ids(&ids.points))
        }
    };
    DevicePlan {
        device,
        name: d.id.clone(),
        config: Arc::new(d.clone()),
        settings: o.clone(),
        poll: d.poll,
        health,
    }
}

/// A device's catalog points: its values, then its health points.
pub(crate) fn described(d: &DeviceConfig) -> Vec<crate::model::PointDescriptor> {
    let mut points = describe::points(d);
    points.extend(health_points());
    points
}

/// The health ids among a device's ids (`described`: the last four).
pub(crate) fn health_ids(ids: &[u32]) -> HealthIds {
    let h = &ids[ids.len().saturating_sub(4)..];
    let at = |i: usize| h.get(i).copied().unwrap_or(0);
    HealthIds {
        up: at(0),
        latency_ms: at(1),
        errors: at(2),
        last_error: at(3),
    }
}

/// The items of a session's reads, with the ids of `targets`' points.
pub(crate) fn items(shape: &shape::Shape, ids: &[Vec<u32>]) -> Vec<Item> {
    shape
        .reads
        .iter()
        .map(|r| {
            let d = &shape.targets[r.target];
            let p = &d.points[r.point];
            let offset: usize = d.points[..r.point].iter().map(|q| q.count as usize).sum();
            let first = offset + r.first as usize;
            let ids = ids[r.target]
                .get(first..first + r.count as usize)
                .map(|s| s.to_vec())
                .unwrap_or_default();
            Item {
                name: p.name.clone(),
                target: r.target,
                ids,
                kind: p.kind,
                scale: p.is_scaled().then_some((p.scale, p.offset)),
                deadband: p.report.as_ref().map_or(0.0, |r| r.deadband),
            }
        })
        .collect()
}

/// The OPC UA source kind's components: one per device (one session each).
pub fn build(config: &Config, registry: &mut Registry) -> Vec<Box<dyn Source>> {
    devices(config)
        .map(|(d, o)| {
            let plan = register(d, o, registry);
            let fingerprint = crate::component::fingerprint(d);
            Box::new(Server {
                id: ComponentId {
                    kind: Kind::Source,
                    name: format!("opcua {}", d.id),
                    fingerprint,
                },
                devices: vec![ComponentId {
                    kind: Kind::Device,
                    name: d.id.clone(),
                    fingerprint,
                }],
                plan,
            }) as Box<dyn Source>
        })
        .collect()
}

/// One OPC UA device's session.
pub struct Server {
    id: ComponentId,
    devices: Vec<ComponentId>,
    plan: DevicePlan,
}

impl Source for Server {
    fn id(&self) -> &ComponentId {
        &self.id
    }
    fn devices(&self) -> Vec<ComponentId> {
        self.devices.clone()
    }
    fn start(self: Box<Self>, ctx: SourceContext) -> JoinHandle<()> {
        let plan = self.plan;
        let out = ctx.output(&plan.name, plan.device);
        let dm = ctx.metrics.devices.add(&plan.name);
        dm.kind_counters(&FAMILIES);
        let pki = session::pki_dir(&ctx.data_dir, &plan.name);
        let first = Target {
            name: plan.name.clone(),
            points: described(&plan.config),
            ids: Vec::new(),
            device: plan.device,
            health: plan.health,
            st: State::new(plan.device),
            out,
            dm,
        };
        let targets = Targets {
            list: vec![first],
            outputs: ctx.outputs(),
            metrics: ctx.metrics.clone(),
            catalogs: ctx.catalogs.clone(),
        };
        let shutdown = ctx.shutdown;
        tokio::spawn(run(plan, targets, shutdown, pki))
    }
}

/// A device's state across sessions: its health and the batch being gathered.
pub(crate) struct State {
    pub(crate) h: crate::source::stream::Health,
    pub(crate) batch: SampleBatch,
}

impl State {
    pub(crate) fn new(device: u32) -> State {
        State {
            h: Default::default(),
            batch: SampleBatch {
                device,
                ..Default::default()
            },
        }
    }
}

/// One device a session writes: the configured one, or one of its motion devices.
pub(crate) struct Target {
    pub(crate) name: String,
    /// Its catalog points as registered.
    pub(crate) points: Vec<crate::model::PointDescriptor>,
    /// Their ids (empty until a session registered them again).
    pub(crate) ids: Vec<u32>,
    pub(crate) device: u32,
    pub(crate) health: HealthIds,
    pub(crate) st: State,
    pub(crate) out: DeviceOutput,
    pub(crate) dm: Arc<DeviceMetrics>,
}

/// The devices a configured OPC UA device writes, across its sessions.
pub(crate) struct Targets {
    pub(crate) list: Vec<Target>,
    outputs: crate::source::Outputs,
    metrics: Arc<crate::observe::metrics::Metrics>,
    catalogs: Arc<crate::source::catalogs::Catalogs>,
}

impl Targets {
    /// Takes the devices of a session's `shape`: registers them again when they differ from
    /// those registered (a node's type, a robot's axes, another number of motion devices);
    /// returns each device's point ids.
    pub(crate) async fn adopt(&mut self, plan: &DevicePlan, shape: &shape::Shape) -> Vec<Vec<u32>> {
        let wanted: Vec<(
            crate::model::DeviceDescriptor,
            Vec<crate::model::PointDescriptor>,
        )> = shape
            .targets
            .iter()
            .map(|d| {
                (
                    describe::device(d, &plan.settings.endpoint, 0),
                    described(d),
                )
            })
            .collect();
        let same = wanted.len() == self.list.len()
            && wanted
                .iter()
                .zip(&self.list)
                .all(|((d, p), t)| d.name == t.name && *p == t.points && !t.ids.is_empty());
        if !same {
            let mut old: std::collections::HashMap<String, Target> =
                self.list.drain(..).map(|t| (t.name.clone(), t)).collect();
            for ((descriptor, points), d) in wanted.iter().zip(&shape.targets) {
                let name = descriptor.name.clone();
                // A device whose points did not change keeps its output (and its chain's
                // state: time in state, report by exception).
                if let Some(t) = old.remove(&name) {
                    if t.points == *points && !t.ids.is_empty() {
                        self.list.push(t);
                        continue;
                    }
                    old.insert(name.clone(), t);
                }
                let (ids, version) = self
                    .catalogs
                    .set_device(descriptor.clone(), points.clone())
                    .await;
                let out = self
                    .outputs
                    .output(Arc::new(d.clone()), ids.device, &version);
                let (mut st, dm) = match old.remove(&name) {
                    Some(t) => (t.st, t.dm),
                    None => {
                        let dm = self.metrics.devices.add(&name);
                        dm.kind_counters(&FAMILIES);
                        (State::new(ids.device), dm)
                    }
                };
                st.batch.device = ids.device;
                self.list.push(Target {
                    name,
                    points: points.clone(),
                    health: health_ids(&ids.points),
                    ids: ids.points,
                    device: ids.device,
                    st,
                    out,
                    dm,
                });
            }
            let before = learn(
                &plan.name,
                crate::component::fingerprint(&*plan.config),
                wanted,
            );
            // Motion devices no longer on the server (this session's or an earlier one's):
            // out of the catalog and the metrics.
            let mut gone: Vec<String> = old.into_keys().collect();
            gone.extend(before);
            gone.sort();
            gone.dedup();
            for name in gone {
                if name == plan.name || self.list.iter().any(|t| t.name == name) {
                    continue;
                }
                tracing::info!(device = %name, "motion device no longer on the server: removed from the catalog");
                self.catalogs.remove_device(&name).await;
                self.metrics.devices.remove(&name);
            }
        }
        self.list.iter().map(|t| t.ids.clone()).collect()
    }

    /// Hands every device's gathered values to the buffer (`flush`).
    pub(crate) async fn flush(&mut self, up: Option<bool>) {
        for t in &mut self.list {
            flush(t, up).await;
        }
    }
}

async fn run(plan: DevicePlan, mut targets: Targets, mut shutdown: Shutdown, pki: PathBuf) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let started = Instant::now();
        let ended = session::run(&plan, &mut targets, &mut shutdown, &pki).await;
        let Some(why) = ended else {
            return;
        };
        if started.elapsed() > Duration::from_secs(60) {
            // It ran a while: come back quickly.
            backoff.reset();
        }
        for t in &mut targets.list {
            let h = &mut t.st.h;
            h.errors += 1;
            if t.name == plan.name && h.logged.as_deref() != Some(why.as_str()) {
                tracing::warn!(device = %plan.name, endpoint = %plan.settings.endpoint, "OPC UA device is down: {why}; a new session is set up with backoff");
            }
            h.logged = Some(why.clone());
            h.last_error = why.clone();
        }
        targets.flush(Some(false)).await;
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.recv() => return,
        }
    }
}

/// A DataValue of item `item` into samples of `st.batch` (each element of an array its own).
pub(crate) fn data_value(item: &Item, dv: &DataValue, st: &mut State, kc: &KindCounters) {
    let kind = item.kind;
    let status = dv.status();
    if status.is_bad() {
        kc.at(0, BAD).fetch_add(item.ids.len() as u64, Relaxed);
        return;
    }
    let quality = if status.is_uncertain() {
        kc.at(0, UNCERTAIN)
            .fetch_add(item.ids.len() as u64, Relaxed);
        Quality::Uncertain
    } else {
        kc.at(0, GOOD).fetch_add(item.ids.len() as u64, Relaxed);
        Quality::Good
    };
    let ts = dv
        .source_timestamp
        .as_ref()
        .or(dv.server_timestamp.as_ref())
        .map(unix_ns)
        .filter(|t| *t > 0)
        .unwrap_or_else(now_ns);
    let Some(v) = &dv.value else {
        kc.at(0, REJECTED).fetch_add(item.ids.len() as u64, Relaxed);
        return;
    };
    let mut push = |id: u32, v: &Variant| match value(v, kind, item.scale) {
        Some(value) => st.batch.samples.push(Sample {
            point: id,
            timestamp_ns: ts,
            quality: quality as i32,
            value: Some(value),
        }),
        None => {
            kc.at(0, REJECTED).fetch_add(1, Relaxed);
        }
    };
    match v {
        Variant::Array(a) => {
            for (id, e) in item.ids.iter().zip(&a.values) {
                push(*id, e);
            }
            let missing = item.ids.len().saturating_sub(a.values.len());
            if missing > 0 {
                kc.at(0, REJECTED).fetch_add(missing as u64, Relaxed);
            }
        }
        scalar if item.ids.len() == 1 => push(item.ids[0], scalar),
        _ => {
            kc.at(0, REJECTED).fetch_add(item.ids.len() as u64, Relaxed);
        }
    }
}

/// Counts values the session could not queue (its channel full).
pub(crate) fn dropped(kc: &KindCounters, n: u64) {
    kc.at(0, DROPPED).fetch_add(n, Relaxed);
}

/// An OPC UA DateTime as Unix nanoseconds.
fn unix_ns(t: &opcua::types::DateTime) -> i64 {
    // Ticks of 100 ns since 1601-01-01.
    const UNIX_EPOCH_TICKS: i64 = 116_444_736_000_000_000;
    t.checked_ticks()
        .saturating_sub(UNIX_EPOCH_TICKS)
        .saturating_mul(100)
}

/// A variant as a value of a point of `kind` (`None`: it does not fit).
pub fn value(v: &Variant, kind: PointType, scale: Option<(f64, f64)>) -> Option<Value> {
    use crate::source::number::{number, Num};
    let n = match v {
        Variant::Boolean(b) => Num::U(u64::from(*b)),
        Variant::SByte(x) => Num::I(*x as i64),
        Variant::Byte(x) => Num::U(*x as u64),
        Variant::Int16(x) => Num::I(*x as i64),
        Variant::UInt16(x) => Num::U(*x as u64),
        Variant::Int32(x) => Num::I(*x as i64),
        Variant::UInt32(x) => Num::U(*x as u64),
        Variant::Int64(x) => Num::I(*x),
        Variant::UInt64(x) => Num::U(*x),
        Variant::Float(x) => Num::F(*x as f64),
        Variant::Double(x) => Num::F(*x),
        Variant::StatusCode(s) => Num::U(s.bits() as u64),
        Variant::String(s) if kind == PointType::String => {
            return Some(Value::StringValue(s.as_ref().to_string()))
        }
        // A DurationString (OPC 40010's TotalPowerOnTime, "P12DT3H25M7S") into a number:
        // seconds.
        Variant::String(s) => Num::F(iso_duration(s.as_ref())?),
        Variant::LocalizedText(t) if kind == PointType::String => {
            return Some(Value::StringValue(t.text.as_ref().to_string()))
        }
        Variant::DateTime(t) if kind == PointType::String => {
            return Some(Value::StringValue(t.to_string()))
        }
        _ => return None,
    };
    number(n, kind, scale).ok()
}

/// An ISO 8601 duration (`P[nY][nM][nW][nD][T[nH][nM][n[.f]S]]`, a year 365 days, a month
/// 30) in seconds; `None` when it is not one.
pub fn iso_duration(text: &str) -> Option<f64> {
    let t = text.trim();
    let (negative, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    let rest = t.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut total = 0.0;
    let mut any = false;
    let mut add = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut number = String::new();
        let mut next = 0;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' || c == ',' {
                number.push(if c == ',' { '.' } else { c });
                continue;
            }
            // Units in order, each once.
            let at = units[next..].iter().position(|(u, _)| *u == c)? + next;
            let n: f64 = number.parse().ok()?;
            total += n * units[at].1;
            number.clear();
            next = at + 1;
            any = true;
        }
        number.is_empty().then_some(())
    };
    const DAY: f64 = 86_400.0;
    add(
        date,
        &[
            ('Y', 365.0 * DAY),
            ('M', 30.0 * DAY),
            ('W', 7.0 * DAY),
            ('D', DAY),
        ],
    )?;
    if let Some(time) = time {
        add(time, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    (any && total.is_finite()).then_some(if negative { -total } else { total })
}

/// Hands what `t` gathered to the buffer (one read per batch), with the health record when
/// `up` changed (`Some`) or it is due.
pub(crate) async fn flush(t: &mut Target, up: Option<bool>) {
    let d = crate::source::stream::Device {
        name: &t.name,
        id: t.device,
        health: t.health,
        reads: false,
    };
    crate::source::stream::flush(&d, &mut t.st.h, &mut t.st.batch, &mut t.out, &t.dm, up).await;
}

/// The point type of a node's DataType (a standard one, ns=0), if linetap has one for it.
pub fn point_type(data_type: &opcua::types::NodeId) -> Option<PointType> {
    use opcua::types::Identifier;
    if data_type.namespace != 0 {
        return None;
    }
    let Identifier::Numeric(i) = data_type.identifier else {
        return None;
    };
    Some(match i {
        1 => PointType::Bool,
        2 => PointType::I8,
        3 => PointType::U8,
        4 => PointType::I16,
        5 => PointType::U16,
        6 => PointType::I32,
        7 => PointType::U32,
        8 => PointType::I64,
        9 => PointType::U64,
        10 => PointType::F32,
        11 => PointType::F64,
        // String, DateTime, LocalizedText: as text.
        12 | 13 | 21 => PointType::String,
        // Enumeration and its subtypes travel as Int32.
        29 => PointType::I32,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_8601_durations_in_seconds() {
        assert_eq!(
            iso_duration("P12DT3H25M7S"),
            Some(12.0 * 86_400.0 + 3.0 * 3600.0 + 25.0 * 60.0 + 7.0)
        );
        assert_eq!(iso_duration("PT0.5S"), Some(0.5));
        assert_eq!(iso_duration("PT1,5S"), Some(1.5));
        assert_eq!(iso_duration("P1W"), Some(7.0 * 86_400.0));
        assert_eq!(iso_duration("P1M"), Some(30.0 * 86_400.0));
        assert_eq!(iso_duration("PT1M"), Some(60.0));
        assert_eq!(iso_duration("-PT2H"), Some(-7200.0));
        for bad in [
            "", "P", "PT", "12", "P1H", "PT1D", "P1DT", "PT5", "P1S2", "PT1M1H", "P1D1D",
            "PT1.2.3S",
        ] {
            assert_eq!(iso_duration(bad), None, "{bad:?}");
        }
        assert_eq!(
            value(&Variant::from("P1DT1S"), PointType::F64, None),
            Some(Value::DoubleValue(86_401.0))
        );
        assert_eq!(value(&Variant::from("twelve"), PointType::F64, None), None);
    }
}
