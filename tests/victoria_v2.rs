//! The agent binary against real VictoriaMetrics through the InfluxDB v2 write API: exact
//! values and tags, and the fault behaviour (one of three devices goes silent; the others
//! keep their poll rate; the silent one reports why and is read again once it answers).

mod common;

use common::*;
use linetap::config::Table;
use linetap::sim::Fault;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn line_config(vm: &str, file: &str, addresses: &[String], metrics_port: u16) -> String {
    let mut s = format!(
        "[line]\nid = \"weld-a\"\nsite = \"plant-2\"\n\n\
         [agent]\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\ndata_dir = \"{file}.data\"\nself_interval = \"500ms\"\n\n\
         [sinks.central]\ntype = \"influxdb\"\nurl = \"{vm}\"\napi = \"v2\"\norg = \"plant-2\"\nbucket = \"robots\"\ntoken_env = \"LINETAP_TEST_TOKEN\"\nflush_interval = \"100ms\"\n\n\
         [sinks.local]\ntype = \"file\"\npath = \"{file}\"\nflush_interval = \"100ms\"\n\n"
    );
    for (i, a) in addresses.iter().enumerate() {
        s.push_str(&format!(
            "[[devices]]\nid = \"robot-0{n}\"\nkind = \"robot\"\ncell = \"cell-3\"\naddress = \"{a}\"\nunit = 1\npoll = \"100ms\"\ntimeout = \"300ms\"\n\n\
             [[devices.points]]\nname = \"position\"\nmeasurement = \"joint\"\naddress = 270\ntype = \"i16\"\ncount = 6\nindex_tag = \"axis\"\nscale = 0.001\n\n\
             [[devices.points]]\nname = \"temperature\"\nmeasurement = \"joint\"\naddress = 300\ntype = \"u16\"\ncount = 6\nindex_tag = \"axis\"\n\n\
             [[devices.points]]\nname = \"cycle_count\"\naddress = 400\ntype = \"u32\"\norder = \"CDAB\"\n\n\
             [[devices.points]]\nname = \"protective_stop\"\ntable = \"coil\"\naddress = 261\n\n",
            n = i + 1
        ));
    }
    s
}

struct Setup {
    vm: VictoriaMetrics,
    line: SimulatedLine,
    dir: tempfile::TempDir,
    metrics_url: String,
}

fn setup() -> Setup {
    std::env::set_var("LINETAP_TEST_TOKEN", "secret-token");
    let vm = VictoriaMetrics::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.lp").display().to_string();
    let metrics_port = free_port();
    let names = ["robot-01", "robot-02", "robot-03"];
    let line = SimulatedLine::start(dir.path(), &names, |addrs| {
        line_config(&vm.url, &file, addrs, metrics_port)
    });
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    Setup {
        vm,
        line,
        dir,
        metrics_url,
    }
}

#[test]
fn exact_values_and_tags_arrive_in_victoriametrics_v2() {
    let s = setup();
    for n in 1..=3u16 {
        let dev = format!("robot-0{n}");
        let pos: Vec<u16> = (0..6)
            .map(|i| ((i as i16 - 3) * 1000 + n as i16) as u16)
            .collect();
        s.line
            .sim
            .set_registers(&dev, Table::Holding, 270, &pos)
            .unwrap();
        s.line
            .sim
            .set_registers(&dev, Table::Holding, 300, &[40, 41, 42, 43, 44, 45])
            .unwrap();
        // 70000 + n in CDAB: low word first.
        let c = 70_000u32 + n as u32;
        s.line
            .sim
            .set_registers(
                &dev,
                Table::Holding,
                400,
                &[(c & 0xffff) as u16, (c >> 16) as u16],
            )
            .unwrap();
        s.line
            .sim
            .set_bits(&dev, Table::Coil, 261, &[n == 2])
            .unwrap();
    }
    let agent = AgentProcess::start(&s.line.config);
    let ok = wait_for(Duration::from_secs(30), || {
        let series = s.vm.export(r#"{__name__="robot_protective_stop"}"#);
        (series.len() == 3).then_some(())
    });
    assert!(
        ok.is_some(),
        "data did not arrive; agent log:\n{}",
        agent.stderr()
    );
    // The self-metrics agree with what arrived.
    let m = request("GET", &format!("{}/metrics", s.metrics_url), None).unwrap();
    assert_eq!(m.status, 200);
    assert!(
        m.body.contains("linetap_device_up{device=\"robot-02\"} 1"),
        "{}",
        m.body
    );
    let delivered: u64 = m
        .body
        .lines()
        .find(|l| l.starts_with("linetap_samples_delivered_total{sink=\"central\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("delivered counter");
    assert!(delivered >= 3 * 14, "delivered {delivered}");
    assert!(m
        .body
        .contains("linetap_poll_duration_seconds_count{device=\"robot-01\"}"));
    assert_eq!(
        request("GET", &format!("{}/readyz", s.metrics_url), None)
            .unwrap()
            .status,
        200
    );
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");

    let positions = s.vm.export(r#"{__name__="joint_position"}"#);
    assert_eq!(positions.len(), 18, "3 devices x 6 axes");
    for (labels, values, _) in &positions {
        let dev = labels["device"].as_str().unwrap();
        let n: i64 = dev.trim_start_matches("robot-0").parse().unwrap();
        let axis: i64 = labels["axis"].as_str().unwrap().parse().unwrap();
        let want = ((axis - 1 - 3) * 1000 + n) as f64 / 1000.0;
        assert!(
            values.iter().all(|v| *v == want),
            "{dev} axis {axis}: {values:?} != {want}"
        );
        assert_eq!(labels["line"], "weld-a");
        assert_eq!(labels["site"], "plant-2");
        assert_eq!(labels["cell"], "cell-3");
        assert_eq!(labels["kind"], "robot");
    }
    let temps = s.vm.export(r#"{__name__="joint_temperature",axis="4"}"#);
    assert_eq!(temps.len(), 3);
    assert!(temps.iter().all(|(_, v, _)| v.iter().all(|x| *x == 43.0)));
    for (labels, values, _) in s.vm.export(r#"{__name__="robot_cycle_count"}"#) {
        let n: f64 = labels["device"]
            .as_str()
            .unwrap()
            .trim_start_matches("robot-0")
            .parse()
            .unwrap();
        assert!(values.iter().all(|v| *v == 70_000.0 + n), "{values:?}");
    }
    for (labels, values, _) in s.vm.export(r#"{__name__="robot_protective_stop"}"#) {
        let want = if labels["device"] == "robot-02" {
            1.0
        } else {
            0.0
        };
        assert!(values.iter().all(|v| *v == want));
    }
    let up = s.vm.export(r#"{__name__="linetap_device_up"}"#);
    assert_eq!(up.len(), 3);
    assert!(up
        .iter()
        .all(|(_, v, _)| !v.is_empty() && v.iter().all(|x| *x == 1.0)));
    drop(s.dir);
}

#[test]
fn a_silent_device_does_not_slow_the_others_and_recovers() {
    let s = setup();
    let agent = AgentProcess::start(&s.line.config);
    assert!(
        wait_for(Duration::from_secs(30), || (s
            .vm
            .export(r#"{__name__="linetap_device_up"}"#)
            .len()
            == 3)
            .then_some(()))
        .is_some(),
        "no health records; log:\n{}",
        agent.stderr()
    );
    let fault_start = now_ms();
    s.line.sim.set_fault("robot-02", Fault::Silent).unwrap();
    // A wall-clock window: the fault lasts 5 s, the others' poll rate is measured in it.
    std::thread::sleep(Duration::from_secs(5));
    let fault_end = now_ms();
    s.line.sim.set_fault("robot-02", Fault::None).unwrap();
    // Until robot-02 is stored up again.
    let _ = wait_for(Duration::from_secs(20), || {
        s.vm.export(r#"{__name__="linetap_device_up",device="robot-02"}"#)
            .into_iter()
            .flat_map(|(_, v, t)| t.into_iter().zip(v))
            .any(|(t, v)| t >= fault_end && v == 1.0)
            .then_some(())
    });
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");

    let up = s.vm.export(r#"{__name__="linetap_device_up"}"#);
    let series = |dev: &str| {
        up.iter()
            .find(|(l, _, _)| l["device"] == dev)
            .cloned()
            .unwrap_or_else(|| panic!("no health for {dev}"))
    };
    // The healthy devices: one health record per 100 ms poll throughout the fault window.
    let (w0, w1) = (fault_start + 500, fault_end - 500);
    let expected = (w1 - w0) as f64 / 100.0;
    for dev in ["robot-01", "robot-03"] {
        let (_, values, ts) = series(dev);
        let n = ts.iter().filter(|t| **t >= w0 && **t < w1).count() as f64;
        // At most the configured rate (never a burst), and at least 90 % of it: the machine
        // is shared, so a poll may be late, but the silent device must not cost the others.
        assert!(
            n <= expected * 1.05 + 1.0 && n >= expected * 0.9,
            "{dev}: {n} polls in the window, configured {expected}"
        );
        assert!(values.iter().all(|v| *v == 1.0), "{dev} was reported down");
    }
    // The silent device: down during the fault, up again soon after it answers.
    let (_, values, ts) = series("robot-02");
    let during: Vec<f64> = ts
        .iter()
        .zip(&values)
        .filter(|(t, _)| **t >= fault_start + 400 && **t < fault_end)
        .map(|(_, v)| *v)
        .collect();
    assert!(
        !during.is_empty() && during.iter().all(|v| *v == 0.0),
        "robot-02 during the fault: {during:?}"
    );
    let back = ts
        .iter()
        .zip(&values)
        .find(|(t, v)| **t >= fault_end && **v == 1.0)
        .map(|(t, _)| *t);
    let back = back.expect("robot-02 never came back up");
    assert!(
        back - fault_end < 1000,
        "robot-02 came back {} ms after it answered again",
        back - fault_end
    );
    // The reason is in the health record (strings do not reach VictoriaMetrics; the file sink has them).
    let lp = std::fs::read_to_string(s.dir.path().join("out.lp")).unwrap();
    assert!(
        lp.lines().any(|l| l.starts_with("linetap_device,")
            && l.contains("device=robot-02")
            && l.contains("last_error=\"")
            && l.contains("timeout")),
        "no last_error with the reason for robot-02"
    );
    assert!(
        log.contains("robot-02") && log.contains("timeout"),
        "the fault is logged:\n{log}"
    );

    // The agent's own records (`linetap_agent`, every 500 ms) tell the same story.
    let agent_up =
        s.vm.export(r#"{__name__="linetap_agent_up",device="robot-02"}"#);
    assert_eq!(agent_up.len(), 1, "{agent_up:?}");
    let (labels, values, ts) = &agent_up[0];
    assert_eq!(labels["line"], "weld-a");
    assert_eq!(labels["site"], "plant-2");
    let during: Vec<f64> = ts
        .iter()
        .zip(values)
        .filter(|(t, _)| **t >= fault_start + 1000 && **t < fault_end)
        .map(|(_, v)| *v)
        .collect();
    assert!(
        !during.is_empty() && during.iter().all(|v| *v == 0.0),
        "linetap_agent up of robot-02 during the fault: {during:?}"
    );
    assert_eq!(values.last(), Some(&1.0), "up again at the end: {values:?}");
    // The agent-wide record has neither a device nor a sink tag.
    let devices_up = s.vm.export(r#"{__name__="linetap_agent_devices_up"}"#);
    assert_eq!(devices_up.len(), 1, "{devices_up:?}");
    let (labels, values, _) = &devices_up[0];
    assert!(labels.get("device").is_none() && labels.get("sink").is_none());
    assert!(values.contains(&2.0) && values.contains(&3.0), "{values:?}");
    assert!(s
        .vm
        .export(r#"{__name__="linetap_agent_devices"}"#)
        .iter()
        .all(|(_, v, _)| v.iter().all(|x| *x == 3.0)));
    // Delivered counts per sink only grow, and the last one the store holds is no more than
    // the agent reported at the end.
    let delivered =
        s.vm.export(r#"{__name__="linetap_agent_samples_delivered",sink="central"}"#);
    assert_eq!(delivered.len(), 1);
    let d = &delivered[0].1;
    assert!(
        d.len() >= 10 && d.windows(2).all(|w| w[0] <= w[1]) && d[d.len() - 1] > d[0],
        "{d:?}"
    );
    assert!(*d.last().unwrap() as u64 <= stopped_per_sink(&log, "delivered")["central"]);
    assert!(s
        .vm
        .export(r#"{__name__="linetap_agent_poll_latency_ms",device="robot-01"}"#)
        .iter()
        .all(|(_, v, _)| !v.is_empty() && v.iter().all(|x| *x > 0.0 && *x < 100.0)));
}

#[test]
fn garbage_replies_are_counted_and_never_stored_or_fatal() {
    let s = setup();
    // Exact registers for robot-02: any value that is not one of these came from garbage.
    let pos: Vec<u16> = (0..6).map(|i| (i * 100 + 7) as u16).collect();
    s.line
        .sim
        .set_registers("robot-02", Table::Holding, 270, &pos)
        .unwrap();
    let agent = AgentProcess::start(&s.line.config);
    wait_for(Duration::from_secs(30), || {
        (s.vm.export(r#"{__name__="linetap_device_up"}"#).len() == 3).then_some(())
    })
    .unwrap_or_else(|| panic!("no health records; log:\n{}", agent.stderr()));
    let fault_start = now_ms();
    s.line.sim.set_fault("robot-02", Fault::Garbage).unwrap();
    // A wall-clock window by design: 4 s of garbage replies, none of which may be stored.
    std::thread::sleep(Duration::from_secs(4));
    let fault_end = now_ms();
    s.line.sim.set_fault("robot-02", Fault::None).unwrap();
    // Back up, and polled again after the fault.
    let up_again = wait_for(Duration::from_secs(10), || {
        s.vm.export(r#"{__name__="linetap_device_up",device="robot-02"}"#)
            .into_iter()
            .flat_map(|(_, v, t)| t.into_iter().zip(v))
            .any(|(t, v)| t > fault_end + 500 && v == 1.0)
            .then_some(())
    });
    let failed: f64 = ["timeout", "link_error", "frame_error"]
        .iter()
        .filter_map(|r| {
            metric(
                &s.metrics_url,
                &format!("linetap_modbus_requests_total{{device=\"robot-02\",result=\"{r}\"}}"),
            )
        })
        .sum();
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "the agent survived the garbage: {log}");
    assert!(
        failed >= 3.0,
        "garbage replies counted as failed requests: {failed}"
    );
    assert!(up_again.is_some(), "robot-02 did not recover: {log}");
    // Down during the fault, for a reason a person can read.
    let lp = std::fs::read_to_string(s.dir.path().join("out.lp")).unwrap();
    let reasons: Vec<&str> = lp
        .lines()
        .filter(|l| {
            l.starts_with("linetap_device,")
                && l.contains("device=robot-02")
                && l.contains("last_error=\"")
                && !l.contains("last_error=\"\"")
        })
        .collect();
    assert!(!reasons.is_empty(), "robot-02 never reported an error");
    // Every stored position of robot-02 is one it really holds: no garbage got through.
    let positions =
        s.vm.export(r#"{__name__="joint_position",device="robot-02"}"#);
    assert_eq!(positions.len(), 6, "robot-02's six axes were stored");
    for (labels, values, ts) in positions {
        let axis: usize = labels["axis"].as_str().unwrap().parse().unwrap();
        let want = pos[axis - 1] as i16 as f64 * 0.001;
        for (v, t) in values.iter().zip(&ts) {
            assert!(
                (v - want).abs() < 1e-9,
                "axis {axis} at {t} (fault {fault_start}..{fault_end}): {v} != {want}"
            );
        }
    }
    // The others were not disturbed: up all along.
    for dev in ["robot-01", "robot-03"] {
        let ups: Vec<f64> =
            s.vm.export(&format!(
                "{{__name__=\"linetap_device_up\",device=\"{dev}\"}}"
            ))
            .into_iter()
            .flat_map(|(_, v, _)| v)
            .collect();
        assert!(
            !ups.is_empty() && ups.iter().all(|v| *v == 1.0),
            "{dev}: {ups:?}"
        );
    }
}
