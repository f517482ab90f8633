//! A source kind from outside the crate, in this one file: its own device key (`step`), its
//! own point key (`start`), its own settings, its own source. It reaches the configuration through `config::parse_with`
//! (the built-in kinds plus this one) and the agent through `Agent::start_with`: nothing else
//! in the crate names it (docs/ARCHITECTURE.md, "Adding a kind").

mod common;

use common::*;
use linetap::component::{ComponentId, Kind};
use linetap::config::table::RawTable;
use linetap::config::validate::devices::DeviceDraft;
use linetap::config::validate::points::{PointDraft, PointPart};
use linetap::config::validate::Ctx;
use linetap::config::{self, Config, PointType, Settings};
use linetap::model::catalog::Registry;
use linetap::model::{now_ns, Sample, SampleBatch, Value};
use linetap::observe::metrics::DeviceFamily;
use linetap::run::Agent;
use linetap::source::{describe, Source, SourceContext, SourceKind};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::task::JoinHandle;

/// `protocol = "counter"`: every `poll`, a point with `start = A` reads `n * step + A`.
struct Counter;

/// Its own metric family: reads per device.
static FAMILIES: [DeviceFamily; 1] = [DeviceFamily {
    name: "linetap_counter_reads_total",
    gauge: false,
    label: None,
}];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterKeys {
    step: Option<Spanned<i64>>,
}

#[derive(Debug)]
struct CounterDevice {
    step: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterPointKeys {
    start: Option<Spanned<i64>>,
}

#[derive(Debug)]
struct CounterPoint {
    start: i64,
}

impl SourceKind for Counter {
    fn protocols(&self) -> &'static [&'static str] {
        &["counter"]
    }
    fn title(&self) -> &'static str {
        "counter"
    }
    fn device_keys(&self) -> &'static [&'static str] {
        config::table::fields_of::<CounterKeys>()
    }
    fn device(&self, cx: &mut Ctx, raw: RawTable, _d: &DeviceDraft) -> Option<Settings> {
        let keys: CounterKeys = raw.finish(cx)?;
        let step = match keys.step {
            Some(s) if *s.get_ref() < 1 => {
                cx.err(s.span(), "step must be at least 1");
                1
            }
            Some(s) => *s.get_ref(),
            None => 1,
        };
        Some(Settings::new(CounterDevice { step }))
    }
    fn point_keys(&self) -> &'static [&'static str] {
        config::table::fields_of::<CounterPointKeys>()
    }
    fn point(&self, cx: &mut Ctx, raw: RawTable, p: &PointDraft) -> Option<PointPart> {
        let keys: CounterPointKeys = raw.finish(cx)?;
        if p.derived {
            return Some(PointPart {
                kind: PointType::F64,
                settings: None,
            });
        }
        let Some(start) = keys.start else {
            cx.err(p.span.clone(), format!("point {:?} needs `start`", p.name));
            return None;
        };
        Some(PointPart {
            kind: p.kind.map(|k| *k.get_ref()).unwrap_or(PointType::I64),
            settings: Some(Settings::new(CounterPoint {
                start: *start.get_ref(),
            })),
        })
    }
    fn device_metrics(&self) -> &'static [DeviceFamily] {
        &FAMILIES
    }
    fn build(&self, config: &Config, registry: &mut Registry) -> Vec<Box<dyn Source>> {
        let mut out: Vec<Box<dyn Source>> = Vec::new();
        for d in &config.devices {
            let Some(c) = d.settings::<CounterDevice>() else {
                continue;
            };
            let ids = registry.set_device(describe::device(d, "", 0), describe::points(d));
            out.push(Box::new(CounterSource {
                id: ComponentId {
                    kind: Kind::Source,
                    name: format!("counter {}", d.id),
                    fingerprint: 1,
                },
                name: d.id.clone(),
                device: ids.device,
                points: ids
                    .points
                    .iter()
                    .zip(&d.points)
                    .filter_map(|(id, p)| Some((*id, p.settings::<CounterPoint>()?.start)))
                    .collect(),
                step: c.step,
                poll: d.poll,
            }));
        }
        out
    }
}

struct CounterSource {
    id: ComponentId,
    name: String,
    device: u32,
    points: Vec<(u32, i64)>,
    step: i64,
    poll: Duration,
}

impl Source for CounterSource {
    fn id(&self) -> &ComponentId {
        &self.id
    }
    fn devices(&self) -> Vec<ComponentId> {
        Vec::new()
    }
    fn start(self: Box<Self>, ctx: SourceContext) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut out = ctx.output(&self.name, self.device);
            let dm = ctx.metrics.devices.add(&self.name);
            let mut shutdown = ctx.shutdown;
            let mut n = 0i64;
            loop {
                n += 1;
                let ts = now_ns();
                let samples = self
                    .points
                    .iter()
                    .map(|(id, a)| Sample {
                        point: *id,
                        timestamp_ns: ts,
                        value: Some(Value::IntValue(n * self.step + a)),
                        ..Default::default()
                    })
                    .collect();
                out.publish(SampleBatch {
                    device: self.device,
                    seq: n as u64,
                    samples,
                    timestamp_ns: 0,
                })
                .await;
                dm.kind_counters(&FAMILIES).at(0, 0).fetch_add(1, Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep(self.poll) => {}
                    _ = shutdown.recv() => return,
                }
            }
        })
    }
}

fn kinds() -> Vec<&'static dyn SourceKind> {
    let mut k: Vec<&'static dyn SourceKind> = linetap::source::KINDS.to_vec();
    k.push(&Counter);
    k
}

fn text(dir: &std::path::Path, device_extra: &str) -> String {
    format!(
        "[line]\nid = \"lab\"\n\n[agent]\ndata_dir = \"{data}\"\nshutdown_grace = \"2s\"\nself_interval = \"0s\"\n\n\
         [sinks.local]\ntype = \"file\"\npath = \"{file}\"\nflush_interval = \"100ms\"\n\n\
         [[devices]]\nid = \"c1\"\nprotocol = \"counter\"\npoll = \"20ms\"\n{device_extra}\n\
         [[devices.points]]\nname = \"low\"\nstart = 0\n\
         [[devices.points]]\nname = \"high\"\nstart = 1000\n\
         [[devices.points]]\nname = \"sum\"\nexpr = \"low + high\"\n",
        data = dir.join("data").display(),
        file = dir.join("out.lp").display(),
    )
}

#[test]
fn a_kind_from_outside_reads_its_keys_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let kinds = kinds();
    let cfg = config::parse_with("lab.toml", &text(dir.path(), "step = 5"), &kinds)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.devices[0].protocol, "counter");
    assert_eq!(
        cfg.devices[0].settings::<CounterDevice>().map(|c| c.step),
        Some(5)
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = rt
        .block_on(async { Agent::start_with(&cfg, |r: &mut Registry| Counter.build(&cfg, r)) })
        .expect("agent starts");
    let file = dir.path().join("out.lp");
    // Per timestamp (one read), its fields: high = low + 1000, low a multiple of 5, and the
    // derived sum computed over them by the shared transform stage.
    let reads = wait_for(Duration::from_secs(20), || {
        let mut by_ts: std::collections::BTreeMap<String, Vec<(String, f64)>> = Default::default();
        for l in std::fs::read_to_string(&file).unwrap_or_default().lines() {
            let mut parts = l.split(' ');
            let (Some(series), Some(field), Some(ts)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !series.contains("device=c1") {
                continue;
            }
            let (name, value) = field.split_once('=')?;
            let value: f64 = value.trim_end_matches('i').parse().ok()?;
            by_ts
                .entry(ts.to_string())
                .or_default()
                .push((name.to_string(), value));
        }
        let complete: Vec<Vec<(String, f64)>> =
            by_ts.into_values().filter(|f| f.len() == 3).collect();
        (complete.len() >= 20).then_some(complete)
    })
    .expect("the counter's values reach the file sink");
    // Its own metric family, beside the shared ones.
    let text = agent.metrics.render_prometheus();
    let counted: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("linetap_counter_reads_total{device=\"c1\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no counter family in:\n{text}"));
    assert!(counted >= 20.0, "{counted}");
    assert!(text.contains("# TYPE linetap_counter_reads_total counter"));
    rt.block_on(agent.stop());
    for fields in &reads {
        let get = |n: &str| {
            fields
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("{n} in {fields:?}"))
        };
        let (low, high, sum) = (get("low"), get("high"), get("sum"));
        assert_eq!(low % 5.0, 0.0, "{fields:?}");
        assert_eq!(high, low + 1000.0, "{fields:?}");
        assert_eq!(sum, low + high, "{fields:?}");
    }
}

/// The errors of `t` read with `kinds`, and all of them as text (for failure messages).
fn mistakes(t: &str, kinds: &[&dyn SourceKind]) -> (Vec<config::ConfigError>, String) {
    let errors = config::parse_with("lab.toml", t, kinds)
        .map(|_| ())
        .expect_err("a mistake")
        .0;
    let all = errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    (errors, all)
}

#[test]
fn its_errors_are_located_and_other_kinds_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let kinds = kinds();
    let t = text(dir.path(), "step = 0\nunit = 3\nsteps = 2");
    // Where the value of `needle` ("KEY = VALUE") is in `t`.
    let at = |t: &str, needle: &str| {
        let off = t.find(needle).unwrap() + needle.find('=').unwrap() + 2;
        let line = t[..off].matches('\n').count() + 1;
        let col = off - t[..off].rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        (line, col)
    };
    let (errors, all) = mistakes(&t, &kinds);
    // `steps` is no kind's key: the TOML reader refuses it, and only such errors are reported.
    assert_eq!(errors.len(), 1, "{all}");
    assert!(errors[0].message.contains("unknown field `steps`"), "{all}");
    let t = text(dir.path(), "step = 0\nunit = 3");
    let (errors, all) = mistakes(&t, &kinds);
    assert_eq!(errors.len(), 2, "{all}");
    assert_eq!(
        (errors[0].line, errors[0].column),
        at(&t, "step = 0"),
        "{all}"
    );
    assert_eq!(errors[0].message, "step must be at least 1");
    assert_eq!(
        (errors[1].line, errors[1].column),
        at(&t, "unit = 3"),
        "{all}"
    );
    assert!(
        errors[1]
            .message
            .contains("`unit` belongs to Modbus devices"),
        "{all}"
    );
    // A point key of another kind, and a point without the kind's own key.
    let t = text(dir.path(), "").replace("start = 1000", "address = 7");
    let (errors, all) = mistakes(&t, &kinds);
    // (and, as a consequence, the derived `sum` reads a point that is not there)
    assert_eq!(errors.len(), 3, "{all}");
    assert!(
        errors[2].message.contains("point \"sum\" reads \"high\""),
        "{all}"
    );
    let foreign = errors
        .iter()
        .find(|e| {
            e.message
                .contains("`address` belongs to points of Modbus devices")
        })
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(
        (foreign.line, foreign.column),
        at(&t, "address = 7"),
        "{all}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.message == "point \"high\" needs `start`"),
        "{all}"
    );
    // The other way round: the kind's point key on a Modbus device is named as the kind's.
    let t = text(dir.path(), "")
        .replace("protocol = \"counter\"", "address = \"127.0.0.1:502\"")
        .replace("start = 0", "address = 0\nstart = 0")
        .replace("start = 1000", "address = 2")
        .replace(
            "[[devices.points]]\nname = \"sum\"\nexpr = \"low + high\"\n",
            "",
        );
    let (errors, all) = mistakes(&t, &kinds);
    assert_eq!(errors.len(), 1, "{all}");
    assert_eq!(
        (errors[0].line, errors[0].column),
        at(&t, "start = 0"),
        "{all}"
    );
    assert!(
        errors[0]
            .message
            .contains("`start` belongs to points of counter devices"),
        "{all}"
    );
    // Without the kind, the protocol is unknown, named with the kinds there are.
    let t = text(dir.path(), "");
    let errors = config::parse("lab.toml", &t)
        .expect_err("unknown protocol")
        .0;
    assert!(
        errors[0].message.contains("unknown protocol \"counter\""),
        "{errors:?}"
    );
}
