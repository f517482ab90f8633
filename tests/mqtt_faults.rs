//! MQTT QoS 1 under buffer faults, against a real Mosquitto and VictoriaMetrics: a message is
//! acknowledged only once what it carried is appended and synced. When the buffer refuses
//! (its disk budget full with `drop_newest`, or its file system full), the message stays
//! unacknowledged, the connection is renewed, and the broker delivers it again once the buffer
//! takes data: every message the broker accepted from the publisher ends up in the store
//! exactly once, and none was acknowledged without being stored.

mod common;

use common::mqtt_client::Client;
use common::*;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Values per message (a JSON array), so a few thousand messages fill a small buffer.
const VALUES: usize = 200;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn config(vm: &str, broker: &str, data: &Path, port: u16, buffer: &str) -> String {
    format!(
        "[line]\nid = \"mq\"\n\n[agent]\ndata_dir = \"{}\"\nself_interval = \"0s\"\nmetrics_listen = \"127.0.0.1:{port}\"\nshutdown_grace = \"5s\"\n\n\
         [buffer]\n{buffer}\n\n\
         [brokers.b]\nurl = \"{broker}\"\nclient_id = \"linetap-faults\"\nkeep_alive = \"5s\"\n\n\
         [sinks.vm]\ntype = \"influxdb\"\nurl = \"{vm}\"\napi = \"v1\"\ndatabase = \"mq\"\nflush_interval = \"100ms\"\ntimeout = \"2s\"\n\n\
         [[devices]]\nid = \"press-01\"\nkind = \"sensor\"\nprotocol = \"mqtt\"\nbroker = \"b\"\n\
         topic = \"cell/press-01/data\"\nformat = \"json\"\nqos = 1\ntimestamp = \"/ts\"\ntimestamp_format = \"unix_ms\"\nstale_after = \"60s\"\n\n\
         [[devices.points]]\nname = \"v\"\njson = \"/v\"\ntype = \"f64\"\ncount = {VALUES}\nindex_tag = \"i\"\n",
        data.display()
    )
}

/// Message `k`: stamped `t0 + k` ms, values `k * 1000 + j`.
fn message(t0: i64, k: usize) -> String {
    let values: Vec<String> = (0..VALUES).map(|j| (k * 1000 + j).to_string()).collect();
    format!(
        r#"{{"ts": {}, "v": [{}]}}"#,
        t0 + k as i64,
        values.join(",")
    )
}

/// What the store holds for element `i`: (timestamp, value) pairs.
fn stored(vm: &VictoriaMetrics, i: usize) -> Vec<(i64, f64)> {
    let mut out: Vec<(i64, f64)> = vm
        .export(&format!(r#"{{__name__="sensor_v",i="{i}"}}"#))
        .into_iter()
        .flat_map(|(_, v, t)| t.into_iter().zip(v))
        .collect();
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

/// Every message `0..n` exactly once, with its values, in the first and the last element
/// (`index_tag` counts from 1).
fn assert_exactly_once(vm: &VictoriaMetrics, t0: i64, n: usize) {
    for i in [1, VALUES] {
        let got = stored(vm, i);
        let mut seen: HashMap<i64, usize> = HashMap::new();
        for (t, v) in &got {
            *seen.entry(*t).or_default() += 1;
            let k = (t - t0) as usize;
            assert_eq!(*v, (k * 1000 + i - 1) as f64, "element {i} of message {k}");
        }
        let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
        assert!(
            twice.is_empty(),
            "stored twice (timestamp, times): {twice:?}"
        );
        let missing: Vec<usize> = (0..n)
            .filter(|k| !seen.contains_key(&(t0 + *k as i64)))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "element {i}: {} of {n} messages stored; first missing: {missing:?}",
            seen.len()
        );
    }
}

fn count_stored(vm: &VictoriaMetrics) -> usize {
    stored(vm, VALUES).len()
}

/// A running line: the store, the broker, the agent (connected) and a publisher whose first
/// message is stored (so the agent's persistent session exists).
struct Setup {
    vm: VictoriaMetrics,
    broker: Mosquitto,
    /// Unmounted before `dir` is removed (fields drop in order).
    fs: Option<Tmpfs>,
    dir: tempfile::TempDir,
    config_path: std::path::PathBuf,
    url: String,
    agent: AgentProcess,
    publisher: Client,
    t0: i64,
}

/// `buffer`: the `[buffer]` keys; `tmpfs`: `data_dir` on a tmpfs of that size.
fn setup(buffer: &str, tmpfs: Option<&str>) -> Setup {
    let vm = VictoriaMetrics::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let fs = tmpfs.map(|size| Tmpfs::mount(&mnt, size));
    let data = match fs {
        Some(_) => mnt.join("data"),
        None => dir.path().join("data"),
    };
    let port = free_port();
    let config_path = dir.path().join("line.toml");
    std::fs::write(
        &config_path,
        config(&vm.url, &broker.url, &data, port, buffer),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let agent = AgentProcess::start(&config_path);
    wait_for(Duration::from_secs(20), || {
        (metric(&url, "linetap_mqtt_connected{broker=\"b\"}") == Some(1.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("not connected:\n{}", agent.stderr()));
    let t0 = now_ms() - 3_600_000;
    let mut publisher = Client::connect(broker.port, "press-01-pub", &[]);
    publisher.publish("cell/press-01/data", message(t0, 0));
    wait_for(Duration::from_secs(20), || {
        (count_stored(&vm) == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("the first message did not arrive:\n{}", agent.stderr()));
    Setup {
        vm,
        broker,
        fs,
        dir,
        config_path,
        url,
        agent,
        publisher,
        t0,
    }
}

/// The buffer refuses (a full budget with `drop_newest` and the store down), then accepts
/// again: the refused messages are delivered again by the broker and arrive, with those
/// published after them, soon after the buffer has room.
#[test]
fn refused_qos1_messages_arrive_once_the_buffer_takes_data_again() {
    let Setup {
        mut vm,
        broker: _broker,
        fs: _fs,
        dir: _dir,
        config_path: _config,
        url,
        agent,
        mut publisher,
        t0,
    } = setup("max_bytes = \"1MiB\"\nwhen_full = \"drop_newest\"", None);

    // The store goes down; messages fill the buffer's budget until it refuses.
    vm.stop();
    let mut k = 1;
    let refused = |u: &str| {
        metric(
            u,
            "linetap_samples_dropped_total{sink=\"vm\",reason=\"buffer_full\"}",
        )
        .unwrap_or(0.0)
    };
    while refused(&url) == 0.0 {
        for _ in 0..100 {
            publisher.publish("cell/press-01/data", message(t0, k));
            k += 1;
        }
        publisher.wait_acked();
        assert!(k < 20_000, "the buffer never refused:\n{}", agent.stderr());
    }
    // 30 messages while it refuses, then 100 more.
    for _ in 0..130 {
        publisher.publish("cell/press-01/data", message(t0, k));
        k += 1;
    }
    publisher.wait_acked();
    let n = k;
    wait_for(Duration::from_secs(20), || {
        metric(&url, "linetap_mqtt_unacked_refused_total{broker=\"b\"}").filter(|n| *n > 0.0)
    })
    .unwrap_or_else(|| panic!("no refused message counted:\n{}", agent.stderr()));

    // The store comes back: the backlog drains, the budget has room again, and the broker
    // delivers what linetap left unacknowledged.
    vm.restart();
    let room = wait_for(Duration::from_secs(60), || {
        metric(&url, "linetap_buffer_bytes{sink=\"vm\"}")
            .filter(|b| *b < 512.0 * 1024.0)
            .map(|_| Instant::now())
    })
    .unwrap_or_else(|| panic!("the backlog did not drain:\n{}", agent.stderr()));
    wait_for(Duration::from_secs(30), || {
        (count_stored(&vm) == n).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{} of {n} messages stored:\n{}",
            count_stored(&vm),
            agent.stderr()
        )
    });
    let took = room.elapsed();
    eprintln!(
        "{n} messages, {} refused (left unacknowledged); all stored {took:?} after the buffer had room",
        metric(&url, "linetap_mqtt_unacked_refused_total{broker=\"b\"}").unwrap_or(0.0)
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_exactly_once(&vm, t0, n);
}

/// `data_dir` on a small tmpfs that fills under QoS 1 load with the store down: after the disk
/// has room again (the store back) and a restart of the agent, every message the broker
/// accepted is in the store exactly once.
#[test]
fn a_full_file_system_loses_no_acknowledged_qos1_message() {
    let Setup {
        mut vm,
        broker: _broker,
        fs: _fs,
        dir: _dir,
        config_path,
        url,
        agent,
        mut publisher,
        t0,
    } = setup("max_bytes = \"64MiB\"", Some("3m"));

    vm.stop();
    let disk_error = |u: &str| {
        metric(
            u,
            "linetap_samples_dropped_total{sink=\"vm\",reason=\"disk_error\"}",
        )
        .unwrap_or(0.0)
    };
    let mut k = 1;
    while disk_error(&url) == 0.0 {
        for _ in 0..100 {
            publisher.publish("cell/press-01/data", message(t0, k));
            k += 1;
        }
        publisher.wait_acked();
        assert!(k < 20_000, "the disk never filled:\n{}", agent.stderr());
    }
    for _ in 0..200 {
        publisher.publish("cell/press-01/data", message(t0, k));
        k += 1;
    }
    publisher.wait_acked();
    let n = k;
    let ready = request("GET", &format!("{url}/readyz"), None).unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("buffer:"), "{}", ready.body);

    // The store back, then a restart of the agent once the backlog is out.
    vm.restart();
    wait_for(Duration::from_secs(60), || {
        metric(&url, "linetap_buffer_bytes{sink=\"vm\"}").filter(|b| *b < 256.0 * 1024.0)
    })
    .unwrap_or_else(|| panic!("the backlog did not drain:\n{}", agent.stderr()));
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let agent = AgentProcess::start(&config_path);
    wait_for(Duration::from_secs(60), || {
        (count_stored(&vm) == n).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{} of {n} messages stored:\nfirst run:\n{log}\nsecond run:\n{}",
            count_stored(&vm),
            agent.stderr()
        )
    });
    let (code, log2) = agent.stop();
    assert_eq!(code, Some(0), "{log2}");
    eprintln!(
        "{n} messages published and acknowledged by the broker; {} samples refused for disk_error in the first run; all {n} stored once",
        log.lines()
            .rev()
            .find(|l| l.contains("stopped"))
            .unwrap_or("")
    );
    assert_exactly_once(&vm, t0, n);
}
