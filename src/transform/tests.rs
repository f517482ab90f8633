//! The device chain over scripted timelines: a configuration's device, its catalog, and batches
//! as the poller makes them (values, then the health record), checked value by value.

use super::*;
use crate::model::catalog::{health_points, Registry};
use crate::model::{Quality, Sample};

const S: i64 = 1_000_000_000;

/// A device of `points` (TOML of [[devices.points]]) with its chain and ids by field name.
pub(crate) struct Rig {
    pub chain: Chain,
    pub view: DeviceView,
}

impl Rig {
    pub fn new(
        device_extra: &str,
        points: &str,
        agent: &str,
        dir: Option<std::path::PathBuf>,
    ) -> Rig {
        let text = format!(
            "[line]\nid = \"l\"\n[agent]\n{agent}\n[[devices]]\nid = \"d\"\naddress = \"127.0.0.1:502\"\n{device_extra}\n{points}"
        );
        let cfg = crate::config::parse("t.toml", &text).unwrap_or_else(|e| panic!("{e}"));
        let d = cfg.devices[0].clone();
        let mut r = Registry::new("l", "", Vec::new(), None);
        let mut points = crate::source::describe::points(&d);
        points.extend(health_points());
        let ids = r.set_device(crate::source::describe::device(&d), points);
        let v = r.version();
        let view = DeviceView::of(&v, ids.device);
        let mut plan = Plan::new(&cfg);
        plan.state_dir = dir;
        let mut chain = plan.chain("d");
        chain.catalog(&view);
        Rig { chain, view }
    }

    /// The id of `measurement.field` (with `tag=value` when given).
    pub fn id(&self, measurement: &str, field: &str, tag: Option<(&str, &str)>) -> u32 {
        self.view
            .points
            .iter()
            .find(|p| {
                p.measurement == measurement
                    && p.name == field
                    && tag.is_none_or(|(k, v)| p.tags.iter().any(|t| t.key == k && t.value == v))
            })
            .unwrap_or_else(|| panic!("no point {measurement}.{field} {tag:?}"))
            .id
    }

    pub fn name(&self, id: u32) -> String {
        let p = self
            .view
            .points
            .iter()
            .find(|p| p.id == id)
            .expect("known id");
        let tags: Vec<String> = p
            .tags
            .iter()
            .map(|t| format!("{}={}", t.key, t.value))
            .collect();
        if tags.is_empty() {
            format!("{}.{}", p.measurement, p.name)
        } else {
            format!("{}.{}[{}]", p.measurement, p.name, tags.join(","))
        }
    }

    /// One poll at `t` seconds: `values` then the health record (`up`).
    pub fn poll(&mut self, t: f64, values: &[(u32, Value)], up: bool) -> Vec<(String, i64, Value)> {
        let ts = (t * S as f64) as i64;
        let mut samples: Vec<Sample> = values
            .iter()
            .map(|(p, v)| Sample {
                point: *p,
                // As the poller stamps them: the batch's time.
                timestamp_ns: 0,
                quality: Quality::Good as i32,
                value: Some(v.clone()),
            })
            .collect();
        samples.push(Sample {
            point: self.id(crate::model::catalog::HEALTH_MEASUREMENT, "up", None),
            timestamp_ns: 0,
            quality: Quality::Good as i32,
            value: Some(Value::BoolValue(up)),
        });
        let mut b = SampleBatch {
            device: 0,
            seq: 0,
            samples,
            timestamp_ns: ts,
        };
        self.chain.apply(&mut b);
        b.samples
            .into_iter()
            .filter(|s| s.point != self.id(crate::model::catalog::HEALTH_MEASUREMENT, "up", None))
            .map(|s| {
                (
                    self.name(s.point),
                    time_of(&s, ts),
                    s.value.unwrap_or(Value::BoolValue(false)),
                )
            })
            .collect()
    }
}

fn d(x: f64) -> Value {
    Value::DoubleValue(x)
}
fn i(x: i64) -> Value {
    Value::IntValue(x)
}

#[test]
fn cia402_every_state_with_unrelated_bits() {
    let mut rig = Rig::new(
        "kind = \"drive\"\nprofile = \"cia402-statusword\"",
        "[[devices.points]]\nname = \"statusword\"\naddress = 0x6041\n",
        "",
        None,
    );
    let sw = rig.id("drive", "statusword", None);
    // (statusword, code, label): bits 4 (voltage enabled), 9 (remote), 10 (target reached),
    // 11-15 set where the state does not look at them; bit 7 is the warning.
    let cases = [
        (0xFE00, 0, "not_ready_to_switch_on"),
        (0xFE10 | 0x0040, 1, "switch_on_disabled"),
        (0xFE10 | 0x0021, 2, "ready_to_switch_on"),
        (0xFE10 | 0x0023, 3, "switched_on"),
        (0xFE10 | 0x0027, 4, "operation_enabled"),
        (0xFE10 | 0x0007, 5, "quick_stop_active"),
        (0xFE10 | 0x000F, 6, "fault_reaction_active"),
        (0xFE10 | 0x0008, 7, "fault"),
        (0xFE10 | 0x0088, 7, "fault"),
    ];
    for (k, (raw, code, _label)) in cases.iter().enumerate() {
        let out = rig.poll(k as f64, &[(sw, i(*raw))], true);
        let state = out
            .iter()
            .find(|o| o.0 == "drive.state")
            .map(|o| o.2.clone());
        assert_eq!(state, Some(i(*code)), "statusword {raw:#06x}");
        let warning = out
            .iter()
            .find(|o| o.0 == "drive.warning")
            .map(|o| o.2.clone());
        assert_eq!(
            warning,
            Some(Value::BoolValue(raw & 0x80 != 0)),
            "warning of {raw:#06x}"
        );
        assert!(
            !out.iter().any(|o| o.0 == "drive.statusword"),
            "the statusword is hidden"
        );
    }
}

#[test]
fn state_time_and_availability_on_the_clock() {
    let states = "[[devices.points]]\nname = \"state\"\naddress = 0\nenum = { 0 = \"unknown\", 1 = \"off\", 2 = \"idle\", 3 = \"running\", 7 = \"fault\" }\n";
    let mut rig = Rig::new("kind = \"robot\"", states, "state_window = \"10s\"", None);
    let st = rig.id("robot", "state", None);
    let mut records = Vec::new();
    // 1 Hz polls from t=100: running 100..106, idle 106..108, down 108..110, running 110..113,
    // fault 113..115, off 115..120, running from 120.
    for t in 100..=121 {
        let code = match t {
            100..=105 => 3,
            106..=107 => 2,
            108..=109 => -1,
            110..=112 => 3,
            113..=114 => 7,
            115..=119 => 1,
            _ => 3,
        };
        let out = if code < 0 {
            rig.poll(t as f64, &[], false)
        } else {
            rig.poll(t as f64, &[(st, i(code))], true)
        };
        records.extend(
            out.into_iter()
                .filter(|o| o.0.starts_with("linetap_state_time")),
        );
    }
    let get = |field: &str, at: i64| {
        records
            .iter()
            .find(|o| o.0 == format!("linetap_state_time.{field}") && o.1 == at * S)
            .map(|o| o.2.clone())
            .unwrap_or_else(|| panic!("no {field} at {at}: {records:?}"))
    };
    // Window 100..110: running 6 s, idle 2 s, unknown (down) 2 s.
    assert_eq!(get("running_s", 100), d(6.0));
    assert_eq!(get("idle_s", 100), d(2.0));
    assert_eq!(get("unknown_s", 100), d(2.0));
    assert_eq!(get("fault_s", 100), d(0.0));
    assert_eq!(get("availability", 100), d(6.0 / 8.0));
    // Window 110..120: running 3, fault 2, off 5: availability 3 / (10 - 5).
    assert_eq!(get("running_s", 110), d(3.0));
    assert_eq!(get("fault_s", 110), d(2.0));
    assert_eq!(get("off_s", 110), d(5.0));
    assert_eq!(get("availability", 110), d(3.0 / 5.0));
    assert_eq!(
        records
            .iter()
            .filter(|o| o.0 == "linetap_state_time.availability")
            .count(),
        2
    );
}
