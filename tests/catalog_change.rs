//! The catalog changes while the agent runs: a test-only source adds a point to its device
//! half-way, the sinks receive the new point without a restart, and data buffered under the
//! old catalog keeps its meaning after a restart with a different catalog.
//!
//! The agent runs in-process (`Agent::start_with`), because the test source is not a kind the
//! configuration file can name.

mod common;

use common::*;
use linetap::component::{ComponentId, Kind};
use linetap::config;
use linetap::model::catalog::Registry;
use linetap::model::{
    now_ns, DataType, DeviceDescriptor, PointDescriptor, Sample, SampleBatch, Value,
};
use linetap::run::Agent;
use linetap::source::{Source, SourceContext};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

fn point(name: &str) -> PointDescriptor {
    PointDescriptor {
        measurement: "probe".into(),
        name: name.into(),
        data_type: DataType::Int64 as i32,
        ..Default::default()
    }
}

/// Emits `a = n` every 5 ms; after `grow_after` batches it adds point `b` to its device and
/// from then on emits `b = 10 n` beside `a`.
struct GrowingSource {
    id: ComponentId,
    device: u32,
    a: u32,
    grow_after: u64,
    /// Batches emitted so far (`n` of the last one).
    emitted: Arc<AtomicU64>,
}

impl GrowingSource {
    fn register(registry: &mut Registry, grow_after: u64, emitted: Arc<AtomicU64>) -> Self {
        let ids = registry.set_device(
            DeviceDescriptor {
                name: "probe-1".into(),
                kind: "sensor".into(),
                protocol: "test".into(),
                ..Default::default()
            },
            vec![point("a")],
        );
        GrowingSource {
            id: ComponentId {
                kind: Kind::Source,
                name: "test".into(),
                fingerprint: 1,
            },
            device: ids.device,
            a: ids.points[0],
            grow_after,
            emitted,
        }
    }
}

impl Source for GrowingSource {
    fn id(&self) -> &ComponentId {
        &self.id
    }
    fn devices(&self) -> Vec<ComponentId> {
        Vec::new()
    }
    fn start(self: Box<Self>, ctx: SourceContext) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut out = ctx.output("probe-1", self.device);
            // Keep nothing of the start-up catalog: the change below must restore it from the
            // buffer's catalogs/ once the sinks have let go of it.
            let SourceContext {
                catalogs,
                mut shutdown,
                ..
            } = ctx;
            let mut b: Option<u32> = None;
            let mut n = self.emitted.load(Relaxed);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                    _ = shutdown.recv() => return,
                }
                n += 1;
                if b.is_none() && n > self.grow_after {
                    let (ids, version) = catalogs
                        .add_points("probe-1", vec![point("b")])
                        .await
                        .expect("the device is registered");
                    out.catalog_changed(&version);
                    b = Some(ids[0]);
                }
                let ts = now_ns();
                let mut samples = vec![Sample {
                    point: self.a,
                    timestamp_ns: ts,
                    value: Some(Value::IntValue(n as i64)),
                    ..Default::default()
                }];
                if let Some(b) = b {
                    samples.push(Sample {
                        point: b,
                        timestamp_ns: ts,
                        value: Some(Value::IntValue(10 * n as i64)),
                        ..Default::default()
                    });
                }
                out.publish(SampleBatch {
                    device: self.device,
                    seq: n,
                    samples,
                    timestamp_ns: 0,
                })
                .await;
                self.emitted.store(n, Relaxed);
            }
        })
    }
}

/// A source that registers devices and points in another order (so the catalog and the ids
/// differ from the first run's) and emits nothing.
struct Quiet(ComponentId);

impl Quiet {
    fn register(registry: &mut Registry) -> Self {
        registry.set_device(
            DeviceDescriptor {
                name: "aaa-new".into(),
                kind: "sensor".into(),
                ..Default::default()
            },
            vec![point("x"), point("y"), point("z")],
        );
        registry.set_device(
            DeviceDescriptor {
                name: "probe-1".into(),
                kind: "sensor".into(),
                ..Default::default()
            },
            vec![point("c")],
        );
        Quiet(ComponentId {
            kind: Kind::Source,
            name: "quiet".into(),
            fingerprint: 2,
        })
    }
}

impl Source for Quiet {
    fn id(&self) -> &ComponentId {
        &self.0
    }
    fn devices(&self) -> Vec<ComponentId> {
        Vec::new()
    }
    fn start(self: Box<Self>, ctx: SourceContext) -> JoinHandle<()> {
        let mut shutdown = ctx.shutdown;
        tokio::spawn(async move { shutdown.recv().await })
    }
}

fn config(dir: &std::path::Path, vm: &str) -> config::Config {
    let text = format!(
        "[line]\nid = \"lab\"\n\n[agent]\ndata_dir = \"{data}\"\nshutdown_grace = \"2s\"\n\n\
         [sinks.central]\ntype = \"influxdb\"\nurl = \"{vm}\"\napi = \"v2\"\norg = \"o\"\nbucket = \"b\"\ntoken_env = \"LINETAP_TEST_TOKEN\"\nflush_interval = \"100ms\"\n\n\
         [sinks.local]\ntype = \"file\"\npath = \"{file}\"\nflush_interval = \"100ms\"\n\n\
         [[devices]]\nid = \"unused\"\naddress = \"127.0.0.1:1\"\n[[devices.points]]\nname = \"x\"\naddress = 0\n",
        data = dir.join("data").display(),
        file = dir.join("out.lp").display(),
    );
    let mut cfg = config::parse("catalog.toml", &text).expect("valid config");
    // Only the test's sources: no Modbus device.
    cfg.devices.clear();
    cfg
}

/// `probe` field values by timestamp, from the line-protocol file.
fn file_values(path: &std::path::Path) -> BTreeMap<i64, BTreeMap<String, i64>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut by_ts: BTreeMap<i64, BTreeMap<String, i64>> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("probe,")) {
        let mut parts = line.split(' ');
        let (_series, field, ts) = (parts.next(), parts.next(), parts.next());
        let (Some(field), Some(ts)) = (field, ts) else {
            continue;
        };
        let (name, value) = field.split_once('=').expect("field=value");
        by_ts.entry(ts.parse().unwrap()).or_default().insert(
            name.to_string(),
            value.trim_end_matches('i').parse().unwrap(),
        );
    }
    by_ts
}

#[test]
fn a_point_added_at_run_time_reaches_the_sinks_and_old_data_keeps_its_meaning() {
    std::env::set_var("LINETAP_TEST_TOKEN", "t");
    let mut vm = VictoriaMetrics::start();
    // The store is down for the first run: everything stays in the buffer for `central`.
    vm.stop();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &vm.url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emitted = Arc::new(AtomicU64::new(0));

    // Run 1: point `b` appears after 100 batches; the file sink must receive it.
    let agent = rt
        .block_on(async {
            let e = emitted.clone();
            Agent::start_with(&cfg, move |r: &mut Registry| {
                vec![Box::new(GrowingSource::register(r, 100, e)) as Box<dyn Source>]
            })
        })
        .expect("agent starts");
    let file = dir.path().join("out.lp");
    let grown = wait_for(Duration::from_secs(30), || {
        let v = file_values(&file);
        (v.values().filter(|f| f.contains_key("b")).count() >= 50).then_some(v)
    })
    .expect("the file sink receives the new point b without a restart");
    // Before the change only `a`; after it `a` and `b = 10 a`, in the same line of time.
    for (ts, fields) in &grown {
        let a = fields["a"];
        match fields.get("b") {
            Some(b) => {
                assert!(a > 100, "b appeared at n={a}, before the change");
                assert_eq!(*b, 10 * a, "at {ts}");
            }
            None => assert!(a <= 100, "a={a} without b after the change"),
        }
    }
    assert!(
        grown.values().any(|f| !f.contains_key("b")),
        "data from before the change"
    );
    rt.block_on(agent.stop());
    let last = emitted.load(Relaxed);
    assert!(last > 150);

    // Run 2: a different catalog (a new device first; probe-1 has only `c` now), and the store
    // is back. The first run's backlog must arrive under its own names: `a` and `b`.
    vm.restart();
    let agent = rt
        .block_on(async {
            Agent::start_with(&cfg, |r: &mut Registry| {
                vec![Box::new(Quiet::register(r)) as Box<dyn Source>]
            })
        })
        .expect("agent restarts");
    let series = |name: &str| -> BTreeMap<i64, f64> {
        vm.export(&format!("{{__name__=\"probe_{name}\",device=\"probe-1\"}}"))
            .into_iter()
            .flat_map(|(_, values, ts)| ts.into_iter().zip(values))
            .collect()
    };
    let delivered = wait_for(Duration::from_secs(60), || {
        let a = series("a");
        (a.len() as u64 >= last).then_some(a)
    });
    rt.block_on(agent.stop());
    let a = delivered.unwrap_or_else(|| {
        panic!(
            "the backlog written under the old catalog did not arrive: {} of {last} values of a",
            series("a").len()
        )
    });
    let b = series("b");
    // Every value of the first run, exactly: a = 1..=last, b = 10 a from the change on.
    let mut av: Vec<i64> = a.values().map(|v| *v as i64).collect();
    av.sort_unstable();
    assert_eq!(av, (1..=last as i64).collect::<Vec<_>>());
    assert_eq!(b.len() as u64, last - 100, "every b after the change");
    for (ts, bv) in &b {
        assert_eq!(*bv, 10.0 * a[ts], "b = 10 a at {ts}");
    }
    // Nothing of the first run was written under the new catalog's names.
    assert!(series("c").is_empty());
}
