//! Universal Robots over RTDE (`protocol = "rtde"`): one connection per robot, an output
//! recipe of every field the device's points name (`timestamp` first), streamed at the
//! device's `frequency` (up to 500 Hz). Each data package becomes one read of the device,
//! stamped with the controller's clock (`clock.rs`); the packages of one batch interval (the
//! device's `poll`, else 100 ms) go to the buffer as one batch, never one per package, and the
//! transform stage sees each package as its own read.
//!
//! - `protocol.rs`: the wire format (pure; proptested), `fields.rs`: the known output fields;
//! - `config.rs`: the device and point keys; `check.rs`: what `linetap check` shows;
//! - `session.rs`: one connection's setup; this file: the device's task (down, backoff,
//!   set up again) and how a package's values become samples.

pub mod check;
pub mod clock;
pub mod config;
pub mod fields;
pub mod probe;
pub mod protocol;
pub mod session;

use crate::backoff::Backoff;
use crate::component::{ComponentId, Kind};
use crate::config::{Config, DeviceConfig, PointType};
use crate::model::catalog::{health_points, HealthIds, Registry};
use crate::model::{now_ns, Quality, Sample, SampleBatch, Value};
use crate::observe::metrics::{DeviceFamily, DeviceMetrics};
use crate::shutdown::Shutdown;
use crate::source::{describe, Source, SourceContext};
use crate::transform::DeviceOutput;
use bytes::Buf;
use config::{rtde_point, RtdeDevice};
use protocol::{FieldType, Raw};
use session::{Conn, Ended};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The device metric families of RTDE devices (`linetap_rtde_*`).
pub static FAMILIES: [DeviceFamily; 4] = [
    DeviceFamily {
        name: "linetap_rtde_packages_total",
        gauge: false,
        label: None,
    },
    DeviceFamily {
        name: "linetap_rtde_packages_skipped_total",
        gauge: false,
        label: None,
    },
    DeviceFamily {
        name: "linetap_rtde_clock_reanchors_total",
        gauge: false,
        label: None,
    },
    DeviceFamily {
        name: "linetap_rtde_rejected_values_total",
        gauge: false,
        label: None,
    },
];
const PACKAGES: usize = 0;
const SKIPPED: usize = 1;
const REANCHORS: usize = 2;
const REJECTED: usize = 3;

/// A device's health record is written at most this often while nothing changes.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Every RTDE device of a configuration.
pub fn devices(config: &Config) -> impl Iterator<Item = (&DeviceConfig, &RtdeDevice)> {
    config
        .devices
        .iter()
        .filter_map(|d| Some((d, d.settings::<RtdeDevice>()?)))
}

/// The output recipe of a device: `timestamp`, then each field its points read, once.
pub fn recipe_fields(d: &DeviceConfig) -> Vec<String> {
    let mut out = vec!["timestamp".to_string()];
    for p in &d.points {
        if let Some(r) = rtde_point(p) {
            if !out.contains(&r.field) {
                out.push(r.field.clone());
            }
        }
    }
    out
}

/// How often a device's packages go to the buffer.
pub fn batch_interval(d: &DeviceConfig, r: &RtdeDevice) -> Duration {
    if r.poll_given {
        d.poll.max(Duration::from_millis(1))
    } else {
        config::DEFAULT_BATCH
    }
}

/// Where one element of a package goes.
#[derive(Debug, Clone)]
struct Target {
    /// The element's index in the field.
    element: u16,
    point: u32,
    kind: PointType,
    bit: Option<u8>,
    scale: Option<(f64, f64)>,
}

/// One field of the recipe and the points it feeds.
#[derive(Debug, Clone)]
struct FieldPlan {
    name: String,
    optional: bool,
    targets: Vec<Target>,
}

/// One device: where it is, its recipe, its catalog ids.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    device: u32,
    name: String,
    address: String,
    frequency: f64,
    timeout: Duration,
    batch: Duration,
    fields: Vec<FieldPlan>,
    health: HealthIds,
}

/// Registers a device's points and health points; returns its plan.
pub fn register(d: &DeviceConfig, r: &RtdeDevice, registry: &mut Registry) -> DevicePlan {
    let mut points = describe::points(d);
    let values = points.len();
    points.extend(health_points());
    let ids = registry.set_device(describe::device(d, &r.address, 0), points);
    let mut fields: Vec<FieldPlan> = recipe_fields(d)
        .into_iter()
        .map(|name| FieldPlan {
            name,
            optional: true,
            targets: Vec::new(),
        })
        .collect();
    let mut next = 0usize;
    for p in &d.points {
        let first = next;
        next += p.count as usize;
        let Some(rp) = rtde_point(p) else {
            continue;
        };
        let Some(f) = fields.iter_mut().find(|f| f.name == rp.field) else {
            continue;
        };
        f.optional &= rp.optional;
        for e in 0..p.count {
            f.targets.push(Target {
                element: rp.element.unwrap_or(0) + e,
                point: ids.points[first + e as usize],
                kind: p.kind,
                bit: rp.bit,
                scale: p.is_scaled().then_some((p.scale, p.offset)),
            });
        }
    }
    // `timestamp` is always asked for (the sample times); it is never optional.
    fields[0].optional = false;
    let h = &ids.points[values..];
    DevicePlan {
        device: ids.device,
        name: d.id.clone(),
        address: r.address.clone(),
        frequency: r.frequency,
        timeout: r.timeout,
        batch: batch_interval(d, r),
        fields,
        health: HealthIds {
            up: h[0],
            latency_ms: h[1],
            errors: h[2],
            last_error: h[3],
        },
    }
}

/// The RTDE source kind's components: one per robot.
pub fn build(config: &Config, registry: &mut Registry) -> Vec<Box<dyn Source>> {
    devices(config)
        .map(|(d, r)| {
            let plan = register(d, r, registry);
            let id = ComponentId {
                kind: Kind::Source,
                name: format!("rtde {}", d.id),
                fingerprint: crate::component::fingerprint(d),
            };
            Box::new(Robot {
                devices: vec![ComponentId {
                    kind: Kind::Device,
                    name: d.id.clone(),
                    fingerprint: id.fingerprint,
                }],
                id,
                plan,
            }) as Box<dyn Source>
        })
        .collect()
}

/// One robot's RTDE connection.
pub struct Robot {
    id: ComponentId,
    devices: Vec<ComponentId>,
    plan: DevicePlan,
}

impl Source for Robot {
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
        tokio::spawn(run(self.plan, out, dm, ctx.shutdown))
    }
}

/// A device's state across sessions.
struct State {
    seq: u64,
    up: Option<bool>,
    errors: u64,
    last_error: String,
    /// The failure last logged (a persistent one is logged once).
    logged: Option<String>,
    last_health: Option<Instant>,
    clock: clock::Clock,
    /// The last package's lateness (arrival minus the controller's time), ms.
    late_ms: f64,
    /// The controller's time of the previous package (s), for skipped packages.
    previous: Option<f64>,
    batch: SampleBatch,
    raws: Vec<Raw>,
}

impl State {
    fn new(device: u32) -> State {
        State {
            seq: 0,
            up: None,
            errors: 0,
            last_error: String::new(),
            logged: None,
            last_health: None,
            clock: clock::Clock::default(),
            late_ms: 0.0,
            previous: None,
            batch: SampleBatch {
                device,
                ..Default::default()
            },
            raws: Vec::new(),
        }
    }
}

async fn run(
    plan: DevicePlan,
    mut out: DeviceOutput,
    dm: std::sync::Arc<DeviceMetrics>,
    mut shutdown: Shutdown,
) {
    let mut st = State::new(plan.device);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let ended = session(&plan, &mut st, &mut out, &dm, &mut shutdown, &mut backoff).await;
        let Some(ended) = ended else {
            return;
        };
        st.errors += 1;
        let why = ended.to_string();
        if st.logged.as_deref() != Some(why.as_str()) {
            match &ended {
                Ended::Refused(_) => tracing::error!(device = %plan.name, "{why}"),
                _ => {
                    tracing::warn!(device = %plan.name, "robot is down: {why}; reconnecting with backoff")
                }
            }
            st.logged = Some(why.clone());
        }
        st.last_error = why;
        flush(&plan, &mut st, &mut out, &dm, Some(false)).await;
        dm.up.store(false, Relaxed);
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.recv() => return,
        }
    }
}

/// One connection, from connect to its end; `None` when linetap is stopping.
async fn session(
    plan: &DevicePlan,
    st: &mut State,
    out: &mut DeviceOutput,
    dm: &DeviceMetrics,
    shutdown: &mut Shutdown,
    backoff: &mut Backoff,
) -> Option<Ended> {
    let setup = async {
        let mut conn = Conn::connect(&plan.address, plan.timeout, &plan.name).await?;
        let recipe = conn.start(plan.frequency, &asked(plan)).await?;
        Ok::<_, Ended>((conn, recipe))
    };
    let (mut conn, recipe) = tokio::select! {
        r = setup => match r {
            Ok(x) => x,
            Err(e) => return Some(e),
        },
        _ = shutdown.recv() => return None,
    };
    for m in &recipe.missing {
        tracing::info!(device = %plan.name, field = %m, controller = %recipe.version, "optional RTDE field not on this controller: its points are not written");
    }
    tracing::info!(device = %plan.name, controller = %recipe.version, fields = recipe.fields.len(), frequency = plan.frequency, "streaming over RTDE");
    let layout = layout(plan, &recipe);
    let types: Vec<FieldType> = layout.iter().map(|(_, t)| *t).collect();
    st.clock.reset();
    st.previous = None;
    st.logged = None;
    // The backoff starts over once a package decodes (a controller that accepts the recipe
    // and then drops the connection is not hammered).
    let mut decoded = false;
    let kc = dm.kind_counters(&FAMILIES);
    let period = 1.0 / plan.frequency;
    let mut last_package = Instant::now();
    let mut tick = tokio::time::interval(plan.batch);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut up_written = false;
    loop {
        tokio::select! {
            r = conn.fill() => {
                if let Err(e) = r {
                    return Some(e);
                }
            }
            _ = tick.tick() => {
                if !up_written {
                    up_written = true;
                    st.last_error.clear();
                    flush(plan, st, out, dm, Some(true)).await;
                } else {
                    flush(plan, st, out, dm, None).await;
                }
                if last_package.elapsed() > plan.timeout {
                    return Some(Ended::Silent(plan.timeout));
                }
                continue;
            }
            _ = shutdown.recv() => {
                flush(plan, st, out, dm, None).await;
                return None;
            }
        }
        loop {
            let n = match protocol::next_package(&conn.buf) {
                Ok(Some((kind, payload, n))) => {
                    match kind {
                        protocol::DATA_PACKAGE => {
                            if let Err(e) =
                                protocol::decode_data(payload, recipe.id, &types, &mut st.raws)
                            {
                                dm.decode_errors.fetch_add(1, Relaxed);
                                st.errors += 1;
                                st.last_error = format!("unreadable data package: {e}");
                                if st.logged.is_none() {
                                    tracing::warn!(device = %plan.name, "{}", st.last_error);
                                    st.logged = Some(st.last_error.clone());
                                }
                            } else {
                                // Only a package that decodes keeps the robot up (a stream of
                                // unreadable ones is down after `timeout`, like silence).
                                last_package = Instant::now();
                                if !decoded {
                                    decoded = true;
                                    backoff.reset();
                                }
                                let c = package(&layout, st, period);
                                kc.at(PACKAGES, 0).fetch_add(1, Relaxed);
                                for (family, n) in [
                                    (SKIPPED, c.skipped),
                                    (REANCHORS, c.reanchors),
                                    (REJECTED, c.rejected),
                                ] {
                                    if n > 0 {
                                        kc.at(family, 0).fetch_add(n, Relaxed);
                                    }
                                }
                            }
                        }
                        protocol::TEXT_MESSAGE => session::log_text(&plan.name, payload),
                        _ => {}
                    }
                    n
                }
                Ok(None) => break,
                Err(e) => return Some(Ended::Garbage(format!("not an RTDE stream: {e}"))),
            };
            conn.buf.advance(n);
        }
    }
}

/// The plan's fields in the recipe's order, with the types the controller gave (optional
/// fields the controller lacks are gone).
fn layout<'a>(plan: &'a DevicePlan, recipe: &session::Recipe) -> Vec<(&'a FieldPlan, FieldType)> {
    recipe
        .fields
        .iter()
        .filter_map(|(n, t)| Some((plan.fields.iter().find(|f| &f.name == n)?, *t)))
        .collect()
}

/// The fields asked of the controller, each with whether it is optional.
fn asked(plan: &DevicePlan) -> Vec<(&str, bool)> {
    plan.fields
        .iter()
        .map(|f| (f.name.as_str(), f.optional))
        .collect()
}

/// What one package counted.
#[derive(Debug, Default)]
struct Counts {
    /// Packages the controller skipped before it (by its clock).
    skipped: u64,
    /// 1 when the clock's anchor moved.
    reanchors: u64,
    /// Values out of their point's range.
    rejected: u64,
}

/// One decoded package (`st.raws`) into samples of `st.batch`.
fn package(layout: &[(&FieldPlan, FieldType)], st: &mut State, period: f64) -> Counts {
    let mut c = Counts::default();
    let controller = st.raws.first().map(|r| r.as_f64()).unwrap_or(0.0);
    if let Some(prev) = st.previous {
        let gap = ((controller - prev) / period).round();
        if gap > 1.0 && gap < 1e9 {
            c.skipped = gap as u64 - 1;
        }
    }
    st.previous = Some(controller);
    let before = st.clock.reanchors;
    let (ts, late) = st.clock.stamp(controller, now_ns());
    c.reanchors = st.clock.reanchors - before;
    st.late_ms = late.max(0) as f64 / 1e6;
    let mut at = 0usize;
    for (f, t) in layout {
        let n = t.elements() as usize;
        for target in &f.targets {
            let Some(raw) = st.raws.get(at + target.element as usize) else {
                continue;
            };
            if target.element as usize >= n {
                continue;
            }
            match value(*raw, target) {
                Some(v) => st.batch.samples.push(Sample {
                    point: target.point,
                    timestamp_ns: ts,
                    quality: Quality::Good as i32,
                    value: Some(v),
                }),
                None => c.rejected += 1,
            }
        }
        at += n;
    }
    c
}

/// One element as its point's value (`None`: out of the point's range).
fn value(raw: Raw, t: &Target) -> Option<Value> {
    if let Some(bit) = t.bit {
        let bits = match raw {
            Raw::Uint(u) => u,
            Raw::Int(i) => i as u64,
            Raw::Bool(b) => u64::from(b),
            Raw::Double(_) => return None,
        };
        return Some(Value::BoolValue((bits >> bit) & 1 == 1));
    }
    if let Some((scale, offset)) = t.scale {
        return Some(Value::DoubleValue(raw.as_f64() * scale + offset));
    }
    let int = |lo: i64, hi: i64| -> Option<Value> {
        let i = match raw {
            Raw::Int(i) => i,
            Raw::Uint(u) => i64::try_from(u).ok()?,
            Raw::Bool(b) => i64::from(b),
            Raw::Double(x) if x.fract() == 0.0 && x.abs() < 9.2e18 => x as i64,
            Raw::Double(_) => return None,
        };
        (lo..=hi).contains(&i).then_some(Value::IntValue(i))
    };
    match t.kind {
        PointType::Bool => Some(Value::BoolValue(raw.as_f64() != 0.0)),
        PointType::U8 => int(0, u8::MAX as i64),
        PointType::I8 => int(i8::MIN as i64, i8::MAX as i64),
        PointType::U16 => int(0, u16::MAX as i64),
        PointType::I16 => int(i16::MIN as i64, i16::MAX as i64),
        PointType::U32 => int(0, u32::MAX as i64),
        PointType::I32 => int(i32::MIN as i64, i32::MAX as i64),
        PointType::I64 => int(i64::MIN, i64::MAX),
        PointType::U64 => match raw {
            Raw::Uint(u) => Some(Value::UintValue(u)),
            Raw::Int(i) => u64::try_from(i).ok().map(Value::UintValue),
            Raw::Bool(b) => Some(Value::UintValue(u64::from(b))),
            Raw::Double(x) if x >= 0.0 && x.fract() == 0.0 && x < 1.8e19 => {
                Some(Value::UintValue(x as u64))
            }
            Raw::Double(_) => None,
        },
        PointType::F16 | PointType::F32 | PointType::F64 => Some(Value::DoubleValue(raw.as_f64())),
        PointType::String => None,
    }
}

/// Hands the packages gathered to the buffer, with the health record when `up` changed
/// (`Some`) or it is due.
async fn flush(
    plan: &DevicePlan,
    st: &mut State,
    out: &mut DeviceOutput,
    dm: &DeviceMetrics,
    up: Option<bool>,
) {
    let now = Instant::now();
    let changed = up.is_some_and(|u| st.up != Some(u));
    let due = st.up.is_some()
        && st
            .last_health
            .is_none_or(|t| now.duration_since(t) >= HEALTH_EVERY);
    if changed || due {
        let up = up.or(st.up).unwrap_or(false);
        if up && st.up == Some(false) {
            tracing::info!(device = %plan.name, "robot is streaming again");
        }
        st.up = Some(up);
        dm.up.store(up, Relaxed);
        st.last_health = Some(now);
        let ts = now_ns();
        let h = plan.health;
        let last = if up {
            String::new()
        } else {
            st.last_error.clone()
        };
        for (point, value) in [
            (h.up, Value::BoolValue(up)),
            (h.latency_ms, Value::DoubleValue(st.late_ms)),
            (h.errors, Value::UintValue(st.errors)),
            (h.last_error, Value::StringValue(last)),
        ] {
            st.batch.samples.push(Sample {
                point,
                timestamp_ns: ts,
                quality: Quality::Good as i32,
                value: Some(value),
            });
        }
    }
    if st.batch.samples.is_empty() {
        return;
    }
    let n = st.batch.samples.len();
    let batch = std::mem::replace(
        &mut st.batch,
        SampleBatch {
            device: plan.device,
            samples: Vec::with_capacity(n),
            ..Default::default()
        },
    );
    let mut batch = batch;
    st.seq += 1;
    batch.seq = st.seq;
    dm.samples.fetch_add(n as u64, Relaxed);
    out.publish_reads(batch).await;
}
