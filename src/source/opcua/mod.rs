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
pub mod session;

use crate::backoff::Backoff;
use crate::component::{ComponentId, Kind};
use crate::config::{Config, DeviceConfig, PointType};
use crate::model::catalog::{health_points, HealthIds, Registry};
use crate::model::{now_ns, Quality, Sample, SampleBatch, Value};
use crate::observe::metrics::{DeviceFamily, DeviceMetrics, KindCounters};
use crate::shutdown::Shutdown;
use crate::source::{describe, Source, SourceContext};
use crate::transform::DeviceOutput;
use config::{opcua_point, OpcuaDevice, Where};
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

/// One point read by a monitored item.
#[derive(Debug, Clone)]
pub struct Item {
    pub name: String,
    pub at: Where,
    /// Its catalog ids, one per element.
    pub ids: Vec<u32>,
    pub kind: PointType,
    /// `type` was given; else the node's DataType decides when the session starts.
    pub typed: bool,
    pub scale: Option<(f64, f64)>,
    /// The server-side deadband (absolute; 0: none).
    pub deadband: f64,
}

/// One device: where it is, how it is reached, its items.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    pub device: u32,
    pub name: String,
    /// The device as configured: its catalog entry is described again when a node's DataType
    /// gives an untyped point its type.
    pub config: Arc<DeviceConfig>,
    pub settings: OpcuaDevice,
    pub poll: Duration,
    pub items: Vec<Item>,
    pub health: HealthIds,
}

/// Registers a device's points and health points; returns its plan.
pub fn register(d: &DeviceConfig, o: &OpcuaDevice, registry: &mut Registry) -> DevicePlan {
    let mut points = describe::points(d);
    let values = points.len();
    points.extend(health_points());
    let ids = registry.set_device(describe::device(d, &o.endpoint, 0), points);
    let mut items = Vec::new();
    let mut next = 0usize;
    for p in &d.points {
        let first = next;
        next += p.count as usize;
        let Some(op) = opcua_point(p) else {
            continue;
        };
        items.push(Item {
            name: p.name.clone(),
            at: op.at.clone(),
            ids: ids.points[first..first + p.count as usize].to_vec(),
            kind: p.kind,
            typed: op.typed,
            scale: p.is_scaled().then_some((p.scale, p.offset)),
            deadband: if p.report.active {
                p.report.deadband
            } else {
                0.0
            },
        });
    }
    let h = &ids.points[values..];
    DevicePlan {
        device: ids.device,
        name: d.id.clone(),
        config: Arc::new(d.clone()),
        settings: o.clone(),
        poll: d.poll,
        items,
        health: HealthIds {
            up: h[0],
            latency_ms: h[1],
            errors: h[2],
            last_error: h[3],
        },
    }
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
        let out = ctx.output(&self.plan.name, self.plan.device);
        let dm = ctx.metrics.devices.add(&self.plan.name);
        dm.kind_counters(&FAMILIES);
        let pki = session::pki_dir(&ctx.data_dir, &self.plan.name);
        tokio::spawn(run(
            self.plan,
            out,
            dm,
            ctx.shutdown,
            pki,
            ctx.catalogs.clone(),
        ))
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

async fn run(
    plan: DevicePlan,
    mut out: DeviceOutput,
    dm: Arc<DeviceMetrics>,
    mut shutdown: Shutdown,
    pki: PathBuf,
    catalogs: Arc<crate::source::catalogs::Catalogs>,
) {
    let mut st = State::new(plan.device);
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let started = Instant::now();
        let ended = session::run(
            &plan,
            &mut st,
            &mut out,
            &dm,
            &mut shutdown,
            &pki,
            &catalogs,
        )
        .await;
        let Some(why) = ended else {
            return;
        };
        if started.elapsed() > Duration::from_secs(60) {
            // It ran a while: come back quickly.
            backoff.reset();
        }
        st.h.errors += 1;
        if st.h.logged.as_deref() != Some(why.as_str()) {
            tracing::warn!(device = %plan.name, endpoint = %plan.settings.endpoint, "OPC UA device is down: {why}; a new session is set up with backoff");
            st.h.logged = Some(why.clone());
        }
        st.h.last_error = why;
        flush(&plan, &mut st, &mut out, &dm, Some(false)).await;
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.recv() => return,
        }
    }
}

/// A DataValue of item `item` into samples of `st.batch` (each element of an array its own).
pub(crate) fn data_value(
    item: &Item,
    kind: PointType,
    dv: &DataValue,
    st: &mut State,
    kc: &KindCounters,
) {
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
        Variant::LocalizedText(t) if kind == PointType::String => {
            return Some(Value::StringValue(t.text.as_ref().to_string()))
        }
        Variant::DateTime(t) if kind == PointType::String => {
            return Some(Value::StringValue(t.to_string()))
        }
        _ => return None,
    };
    let (scale, offset) = scale.unwrap_or((1.0, 0.0));
    number(n, kind, scale, offset).ok()
}

/// Hands what was gathered to the buffer (one read per batch), with the health record when
/// `up` changed (`Some`) or it is due.
pub(crate) async fn flush(
    plan: &DevicePlan,
    st: &mut State,
    out: &mut DeviceOutput,
    dm: &DeviceMetrics,
    up: Option<bool>,
) {
    let d = crate::source::stream::Device {
        name: &plan.name,
        id: plan.device,
        health: plan.health,
        reads: false,
    };
    crate::source::stream::flush(&d, &mut st.h, &mut st.batch, out, dm, up).await;
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
