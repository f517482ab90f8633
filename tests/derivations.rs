//! The edge derivations and report by exception end to end: the simulator plays a scripted
//! timeline (`simulate` expressions over its clock), the agent polls it every 100 ms over TCP,
//! and the line protocol it writes is checked against the script, to the poll interval.

mod common;

use common::*;
use linetap::sim::Fault;
use std::collections::HashMap;
use std::time::Duration;

/// One line of line protocol: measurement, tags, fields (raw text), timestamp.
struct Line {
    measurement: String,
    tags: HashMap<String, String>,
    fields: HashMap<String, String>,
    ts: i64,
}

/// Line protocol, one record per series and timestamp (linetap writes each field on its own
/// line; the fields of one record share series and time).
fn parse(text: &str) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    let mut at: HashMap<(String, i64), usize> = HashMap::new();
    for l in text.lines() {
        let mut parts = l.rsplitn(2, ' ');
        let (Some(ts), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(ts) = ts.parse::<i64>() else { continue };
        // No spaces or commas inside our tag values and fields here.
        let Some((series, fields)) = rest.split_once(' ') else {
            continue;
        };
        let i = *at.entry((series.to_string(), ts)).or_insert_with(|| {
            let mut s = series.split(',');
            let measurement = s.next().unwrap_or("").to_string();
            let tags = s
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            out.push(Line {
                measurement,
                tags,
                fields: HashMap::new(),
                ts,
            });
            out.len() - 1
        });
        for (k, v) in fields.split(',').filter_map(|kv| kv.split_once('=')) {
            out[i].fields.insert(k.to_string(), v.to_string());
        }
    }
    out
}

fn num(s: &str) -> f64 {
    s.trim_end_matches(['i', 'u']).parse().unwrap_or(f64::NAN)
}

fn config(address: &str, data: &str, out: &str) -> String {
    format!(
        "[line]\nid = \"t\"\n\n[agent]\ndata_dir = \"{data}\"\nself_interval = \"0s\"\nstate_window = \"4s\"\n\n\
         [sinks.f]\ntype = \"file\"\npath = \"{out}\"\nflush_interval = \"100ms\"\n\n\
         [[devices]]\nid = \"r1\"\nkind = \"robot\"\naddress = \"{address}\"\npoll = \"100ms\"\ntimeout = \"200ms\"\n\n\
         [[devices.points]]\nname = \"state\"\naddress = 0\nenum = {{ 0 = \"unknown\", 1 = \"off\", 2 = \"idle\", 3 = \"running\", 7 = \"fault\" }}\n\
         simulate = \"seq(2, 3, 3, 2, 7)\"\n\n\
         [[devices.points]]\nname = \"alarm_code\"\naddress = 1\nalarm = true\nenum = {{ 0 = \"none\", 17 = \"overheat\" }}\n\
         simulate = \"seq(2, 0, 0, 0, 17)\"\n\n\
         [[devices.points]]\nname = \"cycle_count\"\naddress = 2\ntype = \"u32\"\ncounter = \"cycles\"\nsimulate = \"floor(t / 1.5)\"\n\n\
         [[devices.points]]\nname = \"temperature\"\naddress = 4\nscale = 0.01\nreport = {{ deadband = 0.5, max_interval = \"2s\" }}\n\
         simulate = \"t < 9 ? 40 + 0.2 * sin(2 * pi * t / 0.7) : 45\"\n"
    )
}

#[test]
fn derivations_and_report_by_exception_follow_a_scripted_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.lp");
    let data = dir.path().join("data");
    let (out_s, data_s) = (out.display().to_string(), data.display().to_string());
    let line = SimulatedLine::start(dir.path(), &["r1"], |a| config(&a[0], &data_s, &out_s));
    let agent = AgentProcess::start(&line.config);
    // Two whole 8 s cycles of the script and more.
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    let enough = wait_for(Duration::from_secs(40), || {
        let lines = parse(&read());
        let windows = lines
            .iter()
            .filter(|l| {
                l.measurement == "linetap_state_time" && l.fields.contains_key("availability")
            })
            .count();
        let episodes = lines
            .iter()
            .filter(|l| l.measurement == "linetap_alarm" && l.fields.contains_key("duration"))
            .count();
        (windows >= 4 && episodes >= 2).then_some(())
    });
    assert!(
        enough.is_some(),
        "no state windows; agent log:\n{}",
        agent.stderr()
    );
    // The device goes silent for 1.5 s and comes back: its temperature (unchanged, 45) is
    // written on the first read after.
    line.sim.set_fault("r1", Fault::Silent).unwrap();
    let down = wait_for(Duration::from_secs(10), || {
        parse(&read())
            .iter()
            .find(|l| {
                l.measurement == "linetap_device"
                    && l.fields.get("up").map(String::as_str) == Some("false")
            })
            .map(|l| l.ts)
    })
    .expect("the device went down");
    std::thread::sleep(Duration::from_millis(1500));
    line.sim.set_fault("r1", Fault::None).unwrap();
    let back = wait_for(Duration::from_secs(10), || {
        parse(&read())
            .iter()
            .find(|l| l.ts > down && l.fields.contains_key("temperature"))
            .map(|l| l.ts)
    });
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        back.is_some(),
        "temperature written after the device came back; log:\n{log}"
    );
    let lines = parse(&read());
    let poll = 0.1;

    // Alarm episodes: code 17 for 2 s of every 8.
    let alarm: Vec<&Line> = lines
        .iter()
        .filter(|l| l.measurement == "linetap_alarm")
        .collect();
    let ends: Vec<f64> = alarm
        .iter()
        .filter(|l| l.fields.get("active").map(String::as_str) == Some("false") && l.ts < down)
        .map(|l| num(&l.fields["duration"]))
        .collect();
    assert!(ends.len() >= 2, "two whole episodes: {ends:?}");
    for d in &ends {
        assert!(
            (d - 2.0).abs() <= poll + 0.05,
            "episode of {d} s, scripted 2 s"
        );
    }
    let starts = alarm
        .iter()
        .filter(|l| l.fields.get("active").map(String::as_str) == Some("true") && l.ts < down)
        .count();
    assert!(starts >= ends.len(), "every end has a start");
    assert!(alarm
        .iter()
        .all(|l| l.tags.get("point").map(String::as_str) == Some("alarm_code")));
    assert!(alarm
        .iter()
        .filter(|l| l.fields.contains_key("code_label"))
        .all(|l| l.fields["code_label"] == "\"overheat\""));

    // Time in state: whole 4 s windows sum to 4 s; over whole 8 s cycles running is half,
    // idle and fault a quarter each.
    let windows: Vec<&Line> = lines
        .iter()
        // Windows that ended before the device went silent.
        .filter(|l| l.measurement == "linetap_state_time" && l.ts + 4_000_000_000 <= down)
        .collect();
    let mut by_ts: HashMap<i64, HashMap<String, f64>> = HashMap::new();
    for w in &windows {
        for (k, v) in &w.fields {
            by_ts.entry(w.ts).or_default().insert(k.clone(), num(v));
        }
    }
    let mut ts: Vec<i64> = by_ts.keys().copied().collect();
    ts.sort();
    // The first window is partial (it starts at the first poll).
    let mut whole: Vec<&HashMap<String, f64>> = ts.iter().skip(1).map(|t| &by_ts[t]).collect();
    assert!(whole.len() >= 2, "{by_ts:?}");
    // Two 4 s windows are one 8 s cycle of the script, wherever it starts.
    whole.truncate(whole.len() / 2 * 2);
    let (mut run, mut idle, mut fault, mut total) = (0.0, 0.0, 0.0, 0.0);
    for w in &whole {
        let sum: f64 = ["running_s", "idle_s", "fault_s", "off_s", "unknown_s"]
            .iter()
            .map(|k| w.get(*k).copied().unwrap_or(0.0))
            .sum();
        assert!((sum - 4.0).abs() < 1e-6, "a whole window is 4 s: {w:?}");
        let a = w["availability"];
        let expect = w["running_s"] / (4.0 - w["off_s"] - w["unknown_s"]);
        assert!((a - expect).abs() < 1e-9, "availability {a} of {w:?}");
        run += w["running_s"];
        idle += w["idle_s"];
        fault += w["fault_s"];
        total += sum;
    }
    // Each state change is seen within one poll: per window at most one poll off per change.
    let slack = poll * 2.0 * whole.len() as f64;
    assert!(
        (run - total / 2.0).abs() <= slack,
        "running {run} of {total}"
    );
    assert!(
        (idle - total / 4.0).abs() <= slack,
        "idle {idle} of {total}"
    );
    assert!(
        (fault - total / 4.0).abs() <= slack,
        "fault {fault} of {total}"
    );

    // Cycle time: +1 every 1.5 s.
    let cycles: Vec<f64> = lines
        .iter()
        .filter(|l| l.ts < down)
        .filter_map(|l| l.fields.get("cycle_time").map(|v| num(v)))
        .collect();
    assert!(cycles.len() >= 5, "{cycles:?}");
    for c in &cycles {
        assert!(
            (c - 1.5).abs() <= poll + 0.05,
            "cycle time {c}, scripted 1.5 s"
        );
    }
    let pph: Vec<f64> = lines
        .iter()
        // After the first two windows, so the 4 s rate window is full of increments.
        .filter(|l| l.ts < down && l.ts > ts[2])
        .filter_map(|l| l.fields.get("parts_per_hour").map(|v| num(v)))
        .collect();
    assert!(
        pph.iter().all(|p| (p - 2400.0).abs() <= 900.0 + 1e-9),
        "about 2400/h: {pph:?}"
    );

    // Report by exception: the noisy temperature (±0.2 around 40, deadband 0.5) writes only
    // heartbeats (every 2 s) until the step to 45 at t = 9 s, which is written within one poll.
    let temps: Vec<(i64, f64)> = lines
        .iter()
        .filter_map(|l| l.fields.get("temperature").map(|v| (l.ts, num(v))))
        .collect();
    let polls = lines
        .iter()
        .filter(|l| l.measurement == "linetap_device" && l.fields.contains_key("up"))
        .count();
    assert!(
        temps.len() * 5 < polls,
        "{} temperatures for {polls} polls",
        temps.len()
    );
    let noisy: Vec<&(i64, f64)> = temps.iter().filter(|(_, v)| *v < 42.0).collect();
    for pair in noisy.windows(2) {
        let gap = (pair[1].0 - pair[0].0) as f64 / 1e9;
        assert!((gap - 2.0).abs() <= poll + 0.05, "heartbeat gap {gap} s");
    }
    let step = temps
        .iter()
        .find(|(_, v)| *v >= 44.0)
        .expect("the step was written");
    let last_noisy = noisy.last().expect("noisy values");
    assert!(step.0 > last_noisy.0);
    let after_back: Vec<&(i64, f64)> = temps.iter().filter(|(t, _)| *t > down).collect();
    assert_eq!(
        after_back.first().map(|x| x.1),
        Some(45.0),
        "first read after the device came back"
    );
}
