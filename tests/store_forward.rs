//! Store-and-forward against a real VictoriaMetrics and the agent binary: an outage of the
//! store, repeated crashes of the agent (SIGKILL), damaged buffer files, and a full disk
//! budget. Every sample the devices produced must arrive, except what each scenario says may
//! be lost, and that must be counted.

mod common;

use common::*;
use linetap::buffer::record::{self, Scan, SEGMENT_HEADER_LEN};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const POLL_MS: i64 = 100;
/// Values per poll; each poll also writes 4 health fields, one of them a string.
const VALUES: u64 = 10;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

struct Line {
    vm: VictoriaMetrics,
    line: SimulatedLine,
    dir: tempfile::TempDir,
    metrics_url: String,
}

fn text(vm: &str, data_dir: &Path, addrs: &[String], metrics_port: u16, buffer: &str) -> String {
    let mut s = format!(
        "[line]\nid = \"sf\"\n\n[agent]\ndata_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\nshutdown_grace = \"3s\"\n# Exact sample counts below: no linetap_agent records.\nself_interval = \"0s\"\n\n\
         [buffer]\nsync_interval = \"1s\"\n{buffer}\n\n\
         [sinks.central]\ntype = \"influxdb\"\nurl = \"{vm}\"\napi = \"v1\"\ndatabase = \"sf\"\nflush_interval = \"200ms\"\ntimeout = \"2s\"\n\n",
        data_dir.display()
    );
    for (i, a) in addrs.iter().enumerate() {
        s.push_str(&format!(
            "[[devices]]\nid = \"dev-{i}\"\nkind = \"robot\"\naddress = \"{a}\"\npoll = \"{POLL_MS}ms\"\ntimeout = \"300ms\"\n\n\
             [[devices.points]]\nname = \"value\"\nmeasurement = \"m\"\naddress = 0\ntype = \"f32\"\ncount = {VALUES}\nindex_tag = \"i\"\n\n"
        ));
    }
    s
}

fn line(devices: usize, buffer: &str) -> Line {
    let vm = VictoriaMetrics::start();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let port = free_port();
    let names: Vec<String> = (0..devices).map(|i| format!("dev-{i}")).collect();
    let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    let line = SimulatedLine::start(dir.path(), &names, |addrs| {
        text(&vm.url, &data_dir, addrs, port, buffer)
    });
    Line {
        vm,
        line,
        dir,
        metrics_url: format!("http://127.0.0.1:{port}"),
    }
}

/// Timestamps (ms) of every stored `m_value` sample of element 1, per device.
fn stored(vm: &VictoriaMetrics) -> Vec<(String, Vec<i64>)> {
    let mut out: Vec<(String, Vec<i64>)> = vm
        .export(r#"{__name__="m_value",i="1"}"#)
        .into_iter()
        .map(|(labels, _, mut ts)| {
            ts.sort_unstable();
            (labels["device"].as_str().unwrap().to_string(), ts)
        })
        .collect();
    out.sort();
    out
}

/// Every stored m_value sample, all elements and devices, once the store has made the last
/// writes searchable (VictoriaMetrics takes up to a few seconds even after a forced flush):
/// waits up to 10 s for the count to reach `expected`, then returns what it has.
fn stored_values_settled(vm: &VictoriaMetrics, expected: u64) -> u64 {
    wait_for(Duration::from_secs(10), || {
        (stored_values(vm) == expected).then_some(expected)
    })
    .unwrap_or_else(|| stored_values(vm))
}

/// Every stored m_value sample, all elements and devices.
fn stored_values(vm: &VictoriaMetrics) -> u64 {
    vm.export(r#"{__name__="m_value"}"#)
        .iter()
        .map(|(_, v, _)| v.len() as u64)
        .sum()
}

/// Whether the sink has caught up: under live load the buffer never stays at exactly 0 bytes
/// (new data arrives every tick, acknowledgements come every flush), so "caught up" is less
/// than one flush interval's worth of data, none of it older than 2 s.
fn caught_up(url: &str) -> bool {
    metric(url, "linetap_buffer_bytes{sink=\"central\"}").is_some_and(|b| b < 64.0 * 1024.0)
        && metric(url, "linetap_buffer_oldest_age_seconds{sink=\"central\"}")
            .is_some_and(|a| a < 2.0)
}

/// Samples this agent process has delivered to the store.
fn delivered(url: &str) -> f64 {
    metric(url, "linetap_samples_delivered_total{sink=\"central\"}").unwrap_or(0.0)
}

/// Waits (up to 30 s) until the agent delivers to the store.
fn wait_delivering(url: &str, agent: &AgentProcess) {
    wait_for(Duration::from_secs(30), || {
        (delivered(url) > 0.0).then_some(())
    })
    .unwrap_or_else(|| panic!("nothing was delivered; log:\n{}", agent.stderr()));
}

fn wait_drained(url: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    let ok = wait_for(timeout, || caught_up(url).then_some(()));
    assert!(ok.is_some(), "the backlog did not drain within {timeout:?}");
    start.elapsed()
}

#[test]
fn an_outage_of_the_store_loses_nothing() {
    let outage = std::env::var("LINETAP_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60u64);
    let mut l = line(4, "");
    let agent_start = now_ms();
    let agent = AgentProcess::start(&l.line.config);
    wait_delivering(&l.metrics_url, &agent);
    let outage_start = now_ms();
    l.vm.stop();
    // A wall-clock window by design: the store is down for `outage` seconds.
    std::thread::sleep(Duration::from_secs(outage));
    eprintln!("outage from {outage_start} to {}", now_ms());
    let backlog = metric(&l.metrics_url, "linetap_buffer_bytes{sink=\"central\"}").unwrap_or(0.0);
    assert!(backlog > 0.0, "nothing was buffered during the outage");
    l.vm.restart();
    let drained_in = wait_drained(&l.metrics_url, Duration::from_secs(120));
    eprintln!("outage {outage}s: {backlog} buffered bytes drained in {drained_in:?} while live data kept flowing");
    let stop_at = now_ms();
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    for (dev, ts) in stored(&l.vm) {
        eprintln!(
            "{dev}: {} samples from +{} to +{} (stop at +{})",
            ts.len(),
            ts[0] - agent_start,
            ts[ts.len() - 1] - agent_start,
            stop_at - agent_start
        );
    }
    let collected = stopped_field(&log, "collected");
    let delivered = stopped_field(&log, "delivered");
    assert_eq!(delivered, collected, "{log}");
    // And no poll is missing in time: one sample per 100 ms per device, across the outage.
    for (dev, ts) in stored(&l.vm) {
        let gaps: Vec<(i64, i64)> = ts
            .windows(2)
            .filter(|w| w[1] - w[0] > 3 * POLL_MS)
            .map(|w| (w[0], w[1]))
            .collect();
        assert!(gaps.is_empty(), "{dev}: gaps {gaps:?}");
    }
    // Every poll's 10 values arrived: 14 samples per poll (10 values + 4 health fields).
    assert_eq!(collected % (VALUES + 4), 0);
    assert_eq!(
        stored_values_settled(&l.vm, collected / (VALUES + 4) * VALUES),
        collected / (VALUES + 4) * VALUES,
        "stored values != produced values"
    );
    drop(l.dir);
}

#[test]
fn sigkill_under_load_loses_at_most_the_last_sync_interval() {
    let l = line(3, "");
    let mut kills = Vec::new();
    for _ in 0..3 {
        let agent = AgentProcess::start(&l.line.config);
        wait_delivering(&l.metrics_url, &agent);
        // A wall-clock window by design: killed under load, two sync intervals (1 s) in.
        std::thread::sleep(Duration::from_secs(2));
        let killed_at = now_ms();
        agent.kill();
        let restarted_at = now_ms();
        kills.push((killed_at, restarted_at));
    }
    let agent = AgentProcess::start(&l.line.config);
    // Delivering again, and caught up with the backlog of the three lives.
    let drained = wait_for(Duration::from_secs(60), || {
        (delivered(&l.metrics_url) > 0.0 && caught_up(&l.metrics_url)).then_some(())
    });
    assert!(
        drained.is_some(),
        "did not drain: buffer_bytes {:?}; log:\n{}",
        metric(&l.metrics_url, "linetap_buffer_bytes{sink=\"central\"}"),
        agent.stderr()
    );
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    let sync_ms = 1000;
    for (dev, ts) in stored(&l.vm) {
        for w in ts.windows(2) {
            if w[1] - w[0] <= 3 * POLL_MS {
                continue;
            }
            // A gap is allowed only from (kill - sync interval) to shortly after the restart.
            let explained = kills
                .iter()
                .any(|(k, r)| w[0] >= k - sync_ms - 2 * POLL_MS && w[1] <= r + 3000);
            assert!(
                explained,
                "{dev}: samples between {} and {} are missing (kills at {kills:?})",
                w[0], w[1]
            );
        }
        for (k, _) in &kills {
            assert!(
                ts.iter()
                    .any(|t| *t >= k - sync_ms - 2 * POLL_MS && *t < *k),
                "{dev}: nothing from the second before the kill at {k}"
            );
        }
    }
}

/// (position, samples, payload range) of each record in a segment file.
fn records(bytes: &[u8]) -> Vec<(usize, u32, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER_LEN as usize;
    while let Scan::Record(h, r) = record::scan(bytes, at) {
        out.push((at, h.samples, r.clone()));
        at = r.end;
    }
    out
}

fn segments(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data.join("buffer/segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn damaged_buffer_files_are_cut_and_counted_and_the_rest_delivered() {
    let mut l = line(3, "");
    l.vm.stop();
    let agent = AgentProcess::start(&l.line.config);
    // Until the buffer holds 10 polls of each device (30 records of a poll's 14 samples).
    let data = l.dir.path().join("data");
    let polls_buffered = || {
        if !data.join("buffer/segments").exists() {
            return 0;
        }
        segments(&data)
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .flat_map(|b| records(&b))
            .filter(|(_, samples, _)| *samples as u64 == VALUES + 4)
            .count()
    };
    let _ = wait_for(Duration::from_secs(30), || {
        (polls_buffered() >= 30).then_some(())
    });
    l.line.sim.stop();
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    // Damage: flip a byte inside the payload of one record, and tear the last record in two.
    let segs = segments(&data);
    let mut with_values = 0u64;
    let mut lost_values = 0u64;
    let mut last_file = None;
    for path in &segs {
        let bytes = std::fs::read(path).unwrap();
        for (_, samples, _) in records(&bytes) {
            if samples as u64 == VALUES + 4 {
                with_values += 1;
            }
        }
        if !records(&bytes).is_empty() {
            last_file = Some(path.clone());
        }
    }
    let path = last_file.expect("buffered records");
    let mut bytes = std::fs::read(&path).unwrap();
    let recs = records(&bytes);
    assert!(recs.len() > 10, "too few records to damage: {}", recs.len());
    let (_, samples, payload) = recs[3].clone();
    bytes[payload.start + payload.len() / 2] ^= 0x40;
    assert_eq!(
        samples as u64,
        VALUES + 4,
        "the damaged record holds one poll"
    );
    lost_values += VALUES;
    let (tail_at, tail_samples, tail_payload) = recs[recs.len() - 1].clone();
    bytes.truncate(tail_at + (tail_payload.end - tail_at) / 2);
    if tail_samples as u64 == VALUES + 4 {
        lost_values += VALUES;
    }
    std::fs::write(&path, &bytes).unwrap();

    l.vm.restart();
    let agent = AgentProcess::start(&l.line.config);
    let ok = wait_for(Duration::from_secs(60), || {
        (caught_up(&l.metrics_url)
            && metric(
                &l.metrics_url,
                "linetap_samples_dropped_total{sink=\"central\",reason=\"corrupt\"}",
            )
            .unwrap_or(0.0)
                > 0.0)
            .then_some(())
    });
    assert!(ok.is_some(), "did not drain; log:\n{}", agent.stderr());
    let corrupt = metric(
        &l.metrics_url,
        "linetap_samples_dropped_total{sink=\"central\",reason=\"corrupt\"}",
    )
    .unwrap();
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("torn record"),
        "the torn tail is reported:\n{log}"
    );
    assert_eq!(
        corrupt,
        (VALUES + 4) as f64,
        "the damaged record's samples are counted"
    );
    assert_eq!(
        stored_values_settled(&l.vm, (with_values * VALUES) - lost_values),
        (with_values * VALUES) - lost_values,
        "every intact value is delivered"
    );
}

#[test]
fn a_full_disk_budget_drops_the_oldest_and_counts_exactly() {
    // 20 devices x 14 samples at 10 Hz: about 60 KB/s of buffer, so 1 MiB fills in ~20 s.
    let mut l = line(20, "max_bytes = \"1MiB\"\nwhen_full = \"drop_oldest\"");
    l.vm.stop();
    let started = now_ms();
    let agent = AgentProcess::start(&l.line.config);
    let dropped = || {
        metric(
            &l.metrics_url,
            "linetap_samples_dropped_total{sink=\"central\",reason=\"buffer_full\"}",
        )
        .unwrap_or(0.0)
    };
    let filled = wait_for(Duration::from_secs(240), || {
        let d = dropped();
        (d > 0.0).then_some(d)
    });
    let first_drop = filled.expect("the budget was never reached");
    // Until the budget has dropped a second time (the next oldest segment, 1/8 of it).
    let _ = wait_for(Duration::from_secs(60), || {
        (dropped() > first_drop).then_some(())
    });
    // Stop the agent while every poll still succeeds (each poll is one record of 14 samples),
    // then the devices, so the second run adds no values.
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    l.line.sim.stop();
    let collected = stopped_field(&log, "collected");
    let dropped = stopped_field(&log, "buffer_full");
    assert!(dropped > 0);
    assert_eq!(dropped % (VALUES + 4), 0, "whole polls are dropped");
    let disk: u64 = segments(&l.dir.path().join("data"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        disk <= 1 << 20,
        "buffer uses {disk} bytes, over the 1 MiB budget"
    );

    l.vm.restart();
    deliver_the_rest(&l, collected - dropped, Duration::from_secs(60));
    // Oldest first: what survives is the newest, without holes.
    for (dev, ts) in stored(&l.vm) {
        assert!(
            ts[0] > started + 2000,
            "{dev}: the oldest data should have been dropped"
        );
        let gaps: Vec<_> = ts
            .windows(2)
            .filter(|w| w[1] - w[0] > 3 * POLL_MS)
            .collect();
        assert!(gaps.is_empty(), "{dev}: holes in the kept data: {gaps:?}");
    }
}

/// Starts the agent again (the devices stopped, the store up), waits until it has delivered
/// its backlog, stops it, and checks that the store holds exactly the values of `kept` samples
/// (whole polls: `VALUES` values and 4 health fields each).
fn deliver_the_rest(l: &Line, kept: u64, timeout: Duration) {
    let agent = AgentProcess::start(&l.line.config);
    let ok = wait_for(timeout, || caught_up(&l.metrics_url).then_some(()));
    assert!(ok.is_some(), "did not drain; log:\n{}", agent.stderr());
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    let polls_kept = kept / (VALUES + 4);
    assert_eq!(
        stored_values_settled(&l.vm, polls_kept * VALUES),
        polls_kept * VALUES,
        "stored values != accepted (collected - dropped), exactly"
    );
}

/// Waits until `collected()` grows (`grows`) or stands still for 2 s (`!grows`).
fn wait_collection(collected: &dyn Fn() -> f64, grows: bool, timeout: Duration) -> bool {
    wait_for(timeout, || {
        let before = collected();
        // A wall-clock window: growth is measured over 1 s, standing still over 2 s.
        std::thread::sleep(Duration::from_secs(if grows { 1 } else { 2 }));
        ((collected() > before) == grows).then_some(())
    })
    .is_some()
}

#[test]
fn block_holds_the_sources_back_keeps_what_it_accepted_and_lets_the_agent_stop() {
    // 20 devices at 10 Hz fill 1 MiB in ~20 s; then polls wait instead of data being dropped.
    let mut l = line(20, "max_bytes = \"1MiB\"\nwhen_full = \"block\"");
    l.vm.stop();
    let agent = AgentProcess::start(&l.line.config);
    let held = wait_for(Duration::from_secs(240), || {
        agent
            .stderr()
            .contains("holding the sources back")
            .then_some(())
    });
    assert!(
        held.is_some(),
        "the budget was never reached:\n{}",
        agent.stderr()
    );
    // Held back: once the queue to the writer is full too, polls wait and no sample is
    // collected any more.
    let collected = || {
        metric(
            &l.metrics_url,
            "linetap_samples_collected_total{device=\"dev-0\"}",
        )
        .unwrap_or(0.0)
    };
    assert!(
        wait_collection(&collected, false, Duration::from_secs(60)),
        "polls were not held back"
    );
    // The store comes back: the sinks deliver, the budget frees, polling resumes.
    l.vm.restart();
    assert!(
        wait_collection(&collected, true, Duration::from_secs(60)),
        "polling did not resume once the store was back:\n{}",
        agent.stderr()
    );
    // And is held back again when the store goes away again.
    l.vm.stop();
    assert!(
        wait_collection(&collected, false, Duration::from_secs(120)),
        "polls were not held back the second time"
    );
    // After a hold the queue is full: the writer takes all of it at once. The store comes back
    // once more, and polling must resume again (a segment filled to the budget by that burst
    // could never be deleted).
    l.vm.restart();
    assert!(
        wait_collection(&collected, true, Duration::from_secs(60)),
        "polling did not resume the second time:\n{}",
        agent.stderr()
    );
    l.vm.stop();
    // A stop while held back ends within the grace period (3 s) and a margin.
    let asked = Instant::now();
    let (code, log) = agent.stop();
    let took = asked.elapsed();
    assert_eq!(
        code,
        Some(0),
        "the agent did not stop cleanly in {took:?}:\n{log}"
    );
    assert!(took < Duration::from_secs(15), "stopping took {took:?}");
    l.line.sim.stop();
    let collected = stopped_field(&log, "collected");
    let dropped = stopped_field(&log, "dropped");
    assert_eq!(
        stopped_field(&log, "buffer_full"),
        0,
        "block never drops: {log}"
    );
    assert_eq!(
        dropped % (VALUES + 4),
        0,
        "only whole polls, at the stop: {log}"
    );

    // Everything accepted is delivered after a restart with the store back.
    l.vm.restart();
    deliver_the_rest(&l, collected - dropped, Duration::from_secs(120));
}
