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
    h: crate::source::stream::Health,
    clock: clock::Clock,
    /// The controller's time of the previous package (s), for skipped packages.
    previous: Option<f64>,
    batch: SampleBatch,
    raws: Vec<Raw>,
}

impl State {
    fn new(device: u32) -> State {
        State {
            h: Default::default(),
            clock: clock::Clock::default(),
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
        st.h.errors += 1;
        let why = ended.to_string();
        if st.h.logged.as_deref() != Some(why.as_str()) {
            match &ended {
                Ended::Refused(_) => tracing::error!(device = %plan.name, "{why}"),
                _ => {
                    tracing::warn!(device = %plan.name, "robot is down: {why}; reconnecting with backoff")
                }
            }
            st.h.logged = Some(why.clone());
        }
        st.h.last_error = why;
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
    st.h.logged = None;
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
                // Up once a package decoded (a recipe accepted is not data yet).
                if !up_written && decoded {
                    up_written = true;
                    st.h.last_error.clear();
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
                                st.h.errors += 1;
                                st.h.last_error = format!("unreadable data package: {e}");
                                if st.h.logged.is_none() {
                                    tracing::warn!(device = %plan.name, "{}", st.h.last_error);
                                    st.h.logged = Some(st.h.last_error.clone());
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
    st.h.latency_ms = late.max(0) as f64 / 1e6;
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
    use crate::source::number::{number, Num};
    if let Some(bit) = t.bit {
        let bits = match raw {
            Raw::Uint(u) => u,
            Raw::Int(i) => i as u64,
            Raw::Bool(b) => u64::from(b),
            Raw::Double(_) => return None,
        };
        return Some(Value::BoolValue((bits >> bit) & 1 == 1));
    }
    let n = match raw {
        Raw::Bool(b) => Num::U(u64::from(b)),
        Raw::Uint(u) => Num::U(u),
        Raw::Int(i) => Num::I(i),
        Raw::Double(x) => Num::F(x),
    };
    number(n, t.kind, t.scale).ok()
}

/// Hands the packages gathered to the buffer (several reads per batch), with the health
/// record when `up` changed (`Some`) or it is due.
async fn flush(
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
        reads: true,
    };
    crate::source::stream::flush(&d, &mut st.h, &mut st.batch, out, dm, up).await;
}
