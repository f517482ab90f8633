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
        let ids = r.set_device(crate::source::describe::device(&d, "", 1), points);
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

#[test]
fn report_by_exception_deadband_heartbeat_step_and_return() {
    let points = "[[devices.points]]\nname = \"temp\"\naddress = 0\nscale = 0.1\nreport = { deadband = 0.5, max_interval = \"10s\" }\n\
                  [[devices.points]]\nname = \"raw\"\naddress = 1\n";
    let mut rig = Rig::new("kind = \"sensor\"", points, "", None);
    let temp = rig.id("sensor", "temp", None);
    let raw = rig.id("sensor", "raw", None);
    let mut written = Vec::new();
    // 1 Hz: noise within ±0.3 of 40.0 for 25 s, a step to 45.0 at t=25, down at 30..31,
    // back at 32 with an unchanged value.
    for t in 0..34 {
        let v = match t {
            0..=24 => 40.0 + [0.0, 0.3, -0.3, 0.2, -0.1][t % 5],
            _ => 45.0,
        };
        let up = !(30..=31).contains(&t);
        let values = if up {
            vec![(temp, d(v)), (raw, i(7))]
        } else {
            vec![]
        };
        let out = rig.poll(t as f64, &values, up);
        assert_eq!(
            out.iter().filter(|o| o.0 == "sensor.raw").count(),
            usize::from(up),
            "points without report are always written"
        );
        written.extend(
            out.into_iter()
                .filter(|o| o.0 == "sensor.temp")
                .map(|o| (o.1 / S, o.2)),
        );
    }
    // First read, heartbeats at 10 s and 20 s, the step at 25 within the same poll, nothing while
    // unchanged, and the first read after the device was down.
    assert_eq!(
        written,
        vec![
            (0, d(40.0)),
            (10, d(40.0)),
            (20, d(40.0)),
            (25, d(45.0)),
            (32, d(45.0))
        ]
    );
}

#[test]
fn report_on_change_for_enums_and_min_interval() {
    let points = "[[devices.points]]\nname = \"mode\"\naddress = 0\nenum = { 0 = \"a\", 1 = \"b\" }\nreport = { deadband = 5.0, min_interval = \"3s\" }\n";
    let mut rig = Rig::new("kind = \"plc\"", points, "", None);
    let mode = rig.id("plc", "mode", None);
    let mut written = Vec::new();
    for (t, v) in [(0, 0), (1, 1), (2, 0), (3, 1), (4, 1), (5, 0), (9, 0)] {
        let out = rig.poll(t as f64, &[(mode, i(v))], true);
        written.extend(
            out.into_iter()
                .filter(|o| o.0 == "plc.mode")
                .map(|o| (o.1 / S, o.2)),
        );
    }
    // An enum code changes by 1, under the deadband: still written (codes are exact), but not
    // within 3 s of the last written value.
    assert_eq!(written, vec![(0, i(0)), (3, i(1)), (9, i(0))]);
}

#[test]
fn alarm_episodes_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("linetap-alarms-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let points = "[[devices.points]]\nname = \"alarm_code\"\naddress = 0\nalarm = true\nenum = { 0 = \"none\", 17 = \"overheat\", 18 = \"overload\" }\n";
    let episodes = |rig: &mut Rig, script: &[(i64, i64)]| {
        let id = rig.id("robot", "alarm_code", None);
        let mut out = Vec::new();
        for (t, code) in script {
            for o in rig.poll(*t as f64, &[(id, i(*code))], true) {
                if o.0.starts_with("linetap_alarm") {
                    out.push((o.0.replace("[point=alarm_code]", ""), o.1, o.2));
                }
            }
        }
        out
    };
    let mut rig = Rig::new("kind = \"robot\"", points, "", Some(dir.clone()));
    let out = episodes(
        &mut rig,
        &[(10, 0), (11, 17), (12, 17), (15, 18), (16, 0), (20, 17)],
    );
    let e = |f: &str, t: i64, v: Value| (format!("linetap_alarm.{f}"), t, v);
    assert_eq!(
        out,
        vec![
            e("code", 11 * S, i(17)),
            e("code_label", 11 * S, Value::StringValue("overheat".into())),
            e("active", 11 * S, Value::BoolValue(true)),
            // 17 changes straight to 18: its end 1 ns before the new start.
            e("code", 15 * S - 1, i(17)),
            e(
                "code_label",
                15 * S - 1,
                Value::StringValue("overheat".into())
            ),
            e("active", 15 * S - 1, Value::BoolValue(false)),
            e("duration", 15 * S - 1, d((4 * S - 1) as f64 / 1e9)),
            e("code", 15 * S, i(18)),
            e("code_label", 15 * S, Value::StringValue("overload".into())),
            e("active", 15 * S, Value::BoolValue(true)),
            e("code", 16 * S, i(18)),
            e("code_label", 16 * S, Value::StringValue("overload".into())),
            e("active", 16 * S, Value::BoolValue(false)),
            e("duration", 16 * S, d(1.0)),
            e("code", 20 * S, i(17)),
            e("code_label", 20 * S, Value::StringValue("overheat".into())),
            e("active", 20 * S, Value::BoolValue(true)),
        ]
    );
    // The save runs on a blocking thread when there is a runtime; here it ran inline.
    drop(rig);
    // A restart while 17 is active: reading 17 again is the same episode; its end counts from 20.
    let mut rig = Rig::new("kind = \"robot\"", points, "", Some(dir.clone()));
    let out = episodes(&mut rig, &[(40, 17), (41, 17), (45, 0)]);
    assert_eq!(
        out,
        vec![
            e("code", 45 * S, i(17)),
            e("code_label", 45 * S, Value::StringValue("overheat".into())),
            e("active", 45 * S, Value::BoolValue(false)),
            e("duration", 45 * S, d(25.0)),
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cycle_time_and_parts_per_hour() {
    let points = "[[devices.points]]\nname = \"cycle_count\"\naddress = 0\ntype = \"u32\"\ncounter = \"cycles\"\n";
    let mut rig = Rig::new("kind = \"robot\"", points, "state_window = \"60s\"", None);
    let c = rig.id("robot", "cycle_count", None);
    let mut out = Vec::new();
    // Counter 100 at t=0, +1 at 12, 24, 36, +2 at 60 (two parts in one poll), reset to 0 at 70,
    // +1 at 80.
    for (t, n) in [
        (0, 100),
        (6, 100),
        (12, 101),
        (24, 102),
        (36, 103),
        (60, 105),
        (70, 0),
        (80, 1),
    ] {
        for o in rig.poll(t as f64, &[(c, i(n))], true) {
            if o.0 == "robot.cycle_time" || o.0 == "robot.parts_per_hour" {
                out.push((o.0, o.1 / S, o.2));
            }
        }
    }
    let r = |f: &str, t: i64, v: f64| (format!("robot.{f}"), t, d(v));
    assert_eq!(
        out,
        vec![
            r("cycle_time", 12, 12.0),
            r("parts_per_hour", 12, 60.0),
            r("cycle_time", 24, 12.0),
            r("parts_per_hour", 24, 120.0),
            r("cycle_time", 36, 12.0),
            r("parts_per_hour", 36, 180.0),
            // Two parts in 24 s: 12 s each; the window (0..60] holds 12, 24, 36 and 60 (2).
            r("cycle_time", 60, 12.0),
            r("parts_per_hour", 60, 5.0 * 60.0),
            // The reset at 70 starts over without a cycle time; 80 after 10 s. The window
            // (20..80] holds 24, 36, 60 (2) and 80: 5 parts a minute.
            r("cycle_time", 80, 10.0),
            r("parts_per_hour", 80, 5.0 * 60.0),
        ]
    );
}

/// The UR profile: each `robot.state` rule, and joint angles through the revolution counter.
#[test]
fn ur_state_rules_and_joint_angles() {
    let mut rig = Rig::new("profile = \"ur\"", "", "", None);
    let vm = rig.id("robot", "vendor_mode", None);
    let sm = rig.id("robot", "safety_mode", None);
    let es = rig.id("robot", "emergency_stop", None);
    let b = |x: bool| Value::BoolValue(x);
    // (robot mode, safety mode, e-stop) → state
    let rules = [
        (7, 1, true, 6),
        (7, 6, false, 6),
        (7, 7, false, 6),
        (7, 8, false, 7),
        (7, 9, false, 7),
        (7, 3, false, 5),
        (7, 5, false, 5),
        (7, 1, false, 3),
        (6, 1, false, 4),
        (4, 1, false, 2),
        (5, 2, false, 2),
        (1, 1, false, 1),
        (2, 1, false, 1),
        (3, 1, false, 1),
        (8, 1, false, 1),
        (0, 1, false, 0),
        (-1, 1, false, 0),
    ];
    for (k, (mode, safety, estop, state)) in rules.iter().enumerate() {
        let out = rig.poll(
            k as f64,
            &[(vm, i(*mode)), (sm, i(*safety)), (es, b(*estop))],
            true,
        );
        let got = out
            .iter()
            .find(|o| o.0 == "robot.state")
            .map(|o| o.2.clone());
        assert_eq!(
            got,
            Some(i(*state)),
            "robot mode {mode}, safety mode {safety}, e-stop {estop}"
        );
    }
    let angle = |axis: &str| rig.id("joint", "angle_in_revolution", Some(("axis", axis)));
    let revs = |axis: &str| rig.id("joint", "revolutions", Some(("axis", axis)));
    let values = vec![
        (angle("1"), i(1234)),
        (revs("1"), i(0)),
        (angle("2"), i(6000)),
        (revs("2"), i(-1)),
        (angle("6"), i(500)),
        (revs("6"), i(-2)),
    ];
    let out = rig.poll(100.0, &values, true);
    let pos = |axis: &str| {
        out.iter()
            .find(|o| o.0 == format!("joint.position[axis={axis}]"))
            .map(|o| o.2.clone())
    };
    let tau = 2.0 * std::f64::consts::PI;
    assert_eq!(pos("1"), Some(d(1.234)));
    assert_eq!(pos("2"), Some(d(6.0 - tau)));
    assert_eq!(pos("6"), Some(d(0.5 - 2.0 * tau)));
    assert!(!out
        .iter()
        .any(|o| o.0.contains("angle_in_revolution") || o.0.contains("revolutions")));
}

/// A batch of several reads (a streaming source's packages): the chain sees each read on its
/// own, so a derived point is computed per read at its time, and report by exception compares
/// each read with the one before it, inside the batch too.
#[test]
fn a_batch_of_several_reads_is_applied_read_by_read() {
    let mut rig = Rig::new(
        "kind = \"robot\"",
        "[[devices.points]]\nname = \"a\"\naddress = 0\n\
         [[devices.points]]\nname = \"b\"\naddress = 1\nreport = { deadband = 0.5 }\n\
         [[devices.points]]\nname = \"sum\"\nexpr = \"a + b\"\n",
        "",
        None,
    );
    let (a, b) = (rig.id("robot", "a", None), rig.id("robot", "b", None));
    let sample = |point, t: i64, v: i64| Sample {
        point,
        timestamp_ns: t * S,
        quality: Quality::Good as i32,
        value: Some(i(v)),
    };
    let mut batch = SampleBatch {
        device: 0,
        seq: 1,
        timestamp_ns: 0,
        samples: vec![
            sample(a, 1, 1),
            sample(b, 1, 10),
            sample(a, 2, 2),
            sample(b, 2, 10),
            sample(a, 3, 3),
            sample(b, 3, 12),
        ],
    };
    rig.chain.apply_reads(&mut batch);
    let got: Vec<(String, i64, Value)> = batch
        .samples
        .iter()
        .map(|s| {
            (
                rig.name(s.point),
                s.timestamp_ns / S,
                s.value.clone().unwrap_or(Value::BoolValue(false)),
            )
        })
        .collect();
    let want: Vec<(String, i64, Value)> = [
        ("robot.a", 1, i(1)),
        ("robot.b", 1, i(10)),
        ("robot.sum", 1, d(11.0)),
        ("robot.a", 2, i(2)),
        // b unchanged at 2: held back by its deadband.
        ("robot.sum", 2, d(12.0)),
        ("robot.a", 3, i(3)),
        ("robot.b", 3, i(12)),
        ("robot.sum", 3, d(15.0)),
    ]
    .into_iter()
    .map(|(n, t, v)| (n.to_string(), t, v))
    .collect();
    assert_eq!(got, want);
}
