//! A file system that fills up under the buffer, against a real VictoriaMetrics and the agent
//! binary: `data_dir` on a small tmpfs (the tests run as root), a `max_bytes` far larger than
//! the file system, the store down until the disk is full, then space freed and the store back.
//! Nothing that was accepted may be lost or delivered twice, what could not be written must be
//! counted as `disk_error`, `/readyz` must say why while it lasts, and collection must resume by
//! itself, without a restart.

mod common;

use common::*;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const VALUES: u64 = 100;
/// A health record's fields (`linetap_device`: up, latency_ms, errors, last_error).
const HEALTH_FIELDS: u64 = 4;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn config(vm: &str, data_dir: &Path, port: u16, addrs: &[String]) -> String {
    let mut s = format!(
        "[line]\nid = \"disk\"\n\n[agent]\ndata_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:{port}\"\nshutdown_grace = \"10s\"\nself_interval = \"0s\"\n\n\
         [buffer]\nmax_bytes = \"64MiB\"\nsync_interval = \"1s\"\n\n\
         [sinks.central]\ntype = \"influxdb\"\nurl = \"{vm}\"\napi = \"v1\"\ndatabase = \"disk\"\nflush_interval = \"200ms\"\ntimeout = \"2s\"\n\n",
        data_dir.display()
    );
    for (i, a) in addrs.iter().enumerate() {
        s.push_str(&format!(
            "[[devices]]\nid = \"dev-{i}\"\nkind = \"drive\"\naddress = \"{a}\"\npoll = \"50ms\"\ntimeout = \"300ms\"\n\n\
             [[devices.points]]\nname = \"value\"\nmeasurement = \"m\"\naddress = 0\ntype = \"f32\"\ncount = {VALUES}\nindex_tag = \"i\"\n\n"
        ));
    }
    s
}

#[test]
fn a_full_file_system_costs_only_what_could_not_be_written_and_collection_resumes() {
    let mut vm = VictoriaMetrics::start();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let _fs = Tmpfs::mount(&mnt, "4m");
    // Ballast: the disk fills sooner; deleting it later is "space freed".
    let ballast = mnt.join("ballast");
    std::fs::write(&ballast, vec![0u8; 2 << 20]).unwrap();
    let data_dir = mnt.join("data");
    let port = free_port();
    let names: Vec<String> = (0..5).map(|i| format!("dev-{i}")).collect();
    let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    let line = SimulatedLine::start(dir.path(), &names, |a| config(&vm.url, &data_dir, port, a));
    let url = format!("http://127.0.0.1:{port}");
    let agent = AgentProcess::start(&line.config);
    let dropped = |u: &str| {
        metric(
            u,
            "linetap_samples_dropped_total{sink=\"central\",reason=\"disk_error\"}",
        )
    };
    wait_for(Duration::from_secs(20), || {
        metric(&url, "linetap_samples_delivered_total{sink=\"central\"}").filter(|n| *n > 0.0)
    })
    .unwrap_or_else(|| panic!("nothing delivered:\n{}", agent.stderr()));

    // The store goes down: the buffer grows until the file system is full.
    vm.stop();
    wait_for(Duration::from_secs(90), || {
        dropped(&url).filter(|n| *n > 0.0)
    })
    .unwrap_or_else(|| panic!("the disk never filled:\n{}", agent.stderr()));
    let ready = request("GET", &format!("{url}/readyz"), None).unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("buffer: cannot write the log"),
        "{}",
        ready.body
    );
    assert_eq!(metric(&url, "linetap_buffer_disk_error"), Some(1.0));
    // Full for a while: every poll is refused and counted.
    let at_full = dropped(&url).unwrap_or(0.0);
    wait_for(Duration::from_secs(30), || {
        dropped(&url).filter(|n| *n >= at_full + 20.0 * 5.0 * VALUES as f64)
    })
    .expect("drops stopped while the disk was full");

    // Space freed and the store back: collection resumes by itself.
    std::fs::remove_file(&ballast).unwrap();
    vm.restart();
    wait_for(Duration::from_secs(60), || {
        (metric(&url, "linetap_buffer_disk_error") == Some(0.0)
            && metric(&url, "linetap_buffer_bytes{sink=\"central\"}").is_some_and(|b| b < 256e3))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("the buffer did not recover:\n{}", agent.stderr()));
    // Then more than the disk holds goes through it (delivered segments give their space
    // back), with nothing more dropped.
    let resumed_drops = dropped(&url).unwrap_or(0.0);
    let resumed_at = now_ms();
    let written = |u: &str| metric(u, "linetap_buffer_written_bytes_total");
    let written_then = written(&url).unwrap_or(0.0);
    wait_for(Duration::from_secs(120), || {
        written(&url).filter(|n| *n - written_then > 5.0 * 1024.0 * 1024.0)
    })
    .unwrap_or_else(|| panic!("delivery stalled after recovery:\n{}", agent.stderr()));
    assert_eq!(
        dropped(&url),
        Some(resumed_drops),
        "samples dropped after the disk had room again"
    );
    let ready = request("GET", &format!("{url}/readyz"), None).unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    let stop_at = now_ms();
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    let collected = stopped_field(&log, "collected");
    let delivered = stopped_field(&log, "delivered");
    let lost = resumed_drops as u64;
    eprintln!("collected {collected}, dropped for disk_error {lost}, delivered {delivered}");
    assert!(lost > 0);
    assert_eq!(
        delivered,
        collected - lost,
        "every accepted sample delivered exactly once"
    );
    // In the store: exactly the accepted samples (the values, and the health records' four
    // fields each), none twice, and every device's newest seconds (collection resumed).
    let count = |selector: &str| -> u64 {
        vm.export(selector)
            .iter()
            .map(|(_, v, _)| v.len() as u64)
            .sum()
    };
    let stored = || {
        count(r#"{__name__="m_value"}"#)
            + HEALTH_FIELDS * count(r#"{__name__="linetap_device_up"}"#)
    };
    wait_for(Duration::from_secs(15), || {
        (stored() == delivered).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the store holds {} samples, {delivered} were accepted",
            stored()
        )
    });
    let series = vm.export(r#"{__name__="m_value"}"#);
    let mut newest: HashMap<String, i64> = HashMap::new();
    for (labels, _, ts) in &series {
        let mut sorted = ts.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ts.len(), "a value stored twice: {labels:?}");
        let dev = labels["device"].as_str().unwrap().to_string();
        let last = *sorted.last().unwrap();
        let e = newest.entry(dev).or_insert(last);
        *e = (*e).max(last);
    }
    assert_eq!(newest.len(), 5);
    for (dev, last) in newest {
        assert!(
            last > resumed_at && stop_at - last < 3_000,
            "{dev}: newest value at {last}, stop at {stop_at}"
        );
    }
    // Nothing on disk that cannot be read back.
    let quarantined = std::fs::read_dir(data_dir.join("buffer").join("segments"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with("quarantined"))
        })
        .count();
    assert_eq!(quarantined, 0);
    assert!(!log.contains("damaged"), "{log}");
}
