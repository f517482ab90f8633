//! linetap as a Sparkplug B 3.0 host application against a real Mosquitto: the test plays an
//! edge node (payloads encoded with the Sparkplug schema compiled here, not linetap's types)
//! and a STATE observer.
//!
//! - An edge node with devices A and B, only A configured, and NDATA / DDATA of B in between:
//!   no rebirth request (NCMD) in a 30 s window, A's values arrive exactly, /readyz says ready
//!   once A's birth is in.
//! - linetap's STATE: retained `online:true` while it runs, `online:false` after SIGTERM (the
//!   death it publishes) and after SIGKILL (the will).
//! - An NBIRTH that changes the aliases is followed (the devices' values land on the right
//!   points); a UInt32 metric of a point without `type` and of a device without points is
//!   stored as an integer.

mod common;

use common::mqtt_client::Client;
use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The Sparkplug schema, compiled here from `proto/` (independent of linetap's generated code).
fn pool() -> prost_reflect::DescriptorPool {
    let fds = protox::compile(["sparkplug_b/sparkplug_b.proto"], ["proto"]).unwrap();
    prost_reflect::DescriptorPool::from_file_descriptor_set(fds).unwrap()
}

/// A metric to encode: (name, alias, datatype, value, metric timestamp).
struct M<'a> {
    name: Option<&'a str>,
    alias: Option<u64>,
    datatype: Option<u32>,
    value: serde_json::Value,
    timestamp: Option<u64>,
}

fn m(name: &str, alias: u64, datatype: u32, value: serde_json::Value) -> M<'_> {
    M {
        name: Some(name),
        alias: Some(alias),
        datatype: Some(datatype),
        value,
        timestamp: None,
    }
}

/// A data metric: by alias, no datatype (as Sparkplug says), with its own timestamp.
fn by_alias(alias: u64, value: serde_json::Value, timestamp: u64) -> M<'static> {
    M {
        name: None,
        alias: Some(alias),
        datatype: None,
        value,
        timestamp: Some(timestamp),
    }
}

/// Encodes a Sparkplug payload. Without a datatype a number goes by its JSON kind: a float to
/// double_value, an integer to int_value.
fn payload(pool: &prost_reflect::DescriptorPool, seq: Option<u64>, metrics: &[M]) -> Vec<u8> {
    use prost_reflect::{DynamicMessage, Value as V};
    let payload = pool
        .get_message_by_name("org.eclipse.tahu.protobuf.Payload")
        .unwrap();
    let metric = pool
        .get_message_by_name("org.eclipse.tahu.protobuf.Payload.Metric")
        .unwrap();
    let mut p = DynamicMessage::new(payload);
    p.set_field_by_name("timestamp", V::U64(now_ms()));
    if let Some(s) = seq {
        p.set_field_by_name("seq", V::U64(s));
    }
    let list = metrics
        .iter()
        .map(|x| {
            let mut mm = DynamicMessage::new(metric.clone());
            if let Some(n) = x.name {
                mm.set_field_by_name("name", V::String(n.to_string()));
            }
            if let Some(a) = x.alias {
                mm.set_field_by_name("alias", V::U64(a));
            }
            if let Some(d) = x.datatype {
                mm.set_field_by_name("datatype", V::U32(d));
            }
            if let Some(t) = x.timestamp {
                mm.set_field_by_name("timestamp", V::U64(t));
            }
            match &x.value {
                serde_json::Value::Bool(b) => mm.set_field_by_name("boolean_value", V::Bool(*b)),
                v if x.datatype == Some(4) || x.datatype == Some(8) => {
                    mm.set_field_by_name("long_value", V::U64(v.as_u64().unwrap()))
                }
                v if v.is_f64() || x.datatype == Some(10) => {
                    mm.set_field_by_name("double_value", V::F64(v.as_f64().unwrap()))
                }
                v => mm.set_field_by_name("int_value", V::U32(v.as_u64().unwrap() as u32)),
            }
            V::Message(mm)
        })
        .collect();
    p.set_field_by_name("metrics", V::List(list));
    prost::Message::encode_to_vec(&p)
}

/// Line-protocol records of the file sink: (measurement and tags, field, raw value, ts).
fn records(path: &Path) -> Vec<(String, String, String, i64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        let (Some(series), Some(fields), Some(ts)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(ts) = ts.parse::<i64>() else { continue };
        for f in fields.split(',') {
            if let Some((k, v)) = f.split_once('=') {
                out.push((series.to_string(), k.to_string(), v.to_string(), ts));
            }
        }
    }
    out
}

/// The raw values of one field of one device, by timestamp (ns).
fn field(path: &Path, device: &str, name: &str) -> BTreeMap<i64, String> {
    records(path)
        .into_iter()
        .filter(|(s, f, _, _)| f == name && s.split(',').any(|t| t == format!("device={device}")))
        .map(|(_, _, v, ts)| (ts, v))
        .collect()
}

fn config(dir: &Path, broker: &str, metrics_port: u16, devices: &str) -> std::path::PathBuf {
    let path = dir.join("line.toml");
    std::fs::write(
        &path,
        format!(
            "[line]\nid = \"cell-h\"\n\n[agent]\ndata_dir = \"{data}\"\nself_interval = \"0s\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\n\
             [brokers.plant]\nurl = \"{broker}\"\nkeep_alive = \"5s\"\n\n\
             [sinks.local]\ntype = \"file\"\npath = \"{out}\"\nflush_interval = \"100ms\"\n\n{devices}",
            data = dir.join("data").display(),
            out = dir.join("out.lp").display(),
        ),
    )
    .unwrap();
    path
}

/// linetap's retained STATE as a new subscriber reads it: (online, timestamp).
fn retained_state(port: u16, topic: &str) -> Option<(bool, u64)> {
    let observer = Client::connect(port, &format!("observer-{}", now_ms()), &[topic]);
    let got = wait_for(Duration::from_secs(5), || {
        observer
            .received_retained()
            .into_iter()
            .find(|(t, _, retain)| t == topic && *retain)
    })?;
    let v: serde_json::Value = serde_json::from_slice(&got.1).expect("STATE is JSON");
    Some((v["online"].as_bool()?, v["timestamp"].as_u64()?))
}

/// Waits until linetap's STATE, read as a new subscriber would, is `online`; returns its
/// timestamp.
fn wait_state(port: u16, topic: &str, online: bool) -> Option<u64> {
    wait_for(Duration::from_secs(15), || {
        retained_state(port, topic).and_then(|(o, t)| (o == online).then_some(t))
    })
}

const A_ONLY: &str = "[[devices]]\nid = \"a\"\nkind = \"robot\"\nprotocol = \"mqtt\"\nbroker = \"plant\"\nformat = \"sparkplug-b\"\nstale_after = \"1s\"\n\
     sparkplug = { group = \"weld\", node = \"edge1\", device = \"A\" }\n\n\
     [[devices.points]]\nname = \"temp\"\nmetric = \"Temp\"\ntype = \"f64\"\n\n\
     [[devices.points]]\nname = \"count\"\nmetric = \"Count\"\n";

/// The case: only A of the node's devices is configured. Every message of the node
/// (NDATA, B's DBIRTH and DDATA) carries the node's seq; linetap follows all of them, so B's
/// messages are no gap and cost no rebirth request.
#[test]
fn an_unconfigured_device_costs_no_rebirth_request() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let cfg = config(dir.path(), &broker.url, metrics_port, A_ONLY);
    let agent = AgentProcess::start(&cfg);
    // Subscribed to the node's topics before its STATE birth: the births below are not missed.
    assert!(
        wait_state(broker.port, "spBv1.0/STATE/linetap-cell-h", true).is_some(),
        "no online STATE; log:\n{}",
        agent.stderr()
    );
    let url = format!("http://127.0.0.1:{metrics_port}");
    let ready = request("GET", &format!("{url}/readyz"), None).unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("not polled yet: a"), "{}", ready.body);
    let pool = pool();
    let mut edge = Client::connect(
        broker.port,
        "edge1",
        &["spBv1.0/weld/NCMD/#", "spBv1.0/weld/DCMD/#"],
    );
    let mut seq = 0u64;
    let mut next = || {
        let s = seq;
        seq = (seq + 1) % 256;
        Some(s)
    };
    edge.publish(
        "spBv1.0/weld/NBIRTH/edge1",
        payload(
            &pool,
            next(),
            &[
                m("bdSeq", 0, 4, json!(0)),
                m("Node Control/Rebirth", 0, 11, json!(false)),
                m("Uptime", 1, 8, json!(5)),
            ],
        ),
    );
    edge.publish(
        "spBv1.0/weld/DBIRTH/edge1/A",
        payload(
            &pool,
            next(),
            &[m("Temp", 10, 10, json!(20.5)), m("Count", 11, 7, json!(7))],
        ),
    );
    edge.publish(
        "spBv1.0/weld/DBIRTH/edge1/B",
        payload(&pool, next(), &[m("Speed", 20, 10, json!(1.5))]),
    );
    let ready = wait_for(Duration::from_secs(10), || {
        let r = request("GET", &format!("{url}/readyz"), None).ok()?;
        (r.status == 200).then_some(())
    });
    assert!(
        ready.is_some(),
        "A's birth makes it ready; log:\n{}",
        agent.stderr()
    );
    // A 30 s window (wall clock, as this checks that something does NOT happen): the node
    // sends NDATA, B's DDATA and A's DDATA in turn, 10 rounds a second.
    let t0 = now_ms() - 60_000;
    let rounds = 300u64;
    let started = Instant::now();
    for i in 0..rounds {
        edge.publish(
            "spBv1.0/weld/NDATA/edge1",
            payload(&pool, next(), &[by_alias(1, json!(i), now_ms())]),
        );
        edge.publish(
            "spBv1.0/weld/DDATA/edge1/B",
            payload(
                &pool,
                next(),
                &[by_alias(20, json!(i as f64 + 0.5), now_ms())],
            ),
        );
        edge.publish(
            "spBv1.0/weld/DDATA/edge1/A",
            payload(
                &pool,
                next(),
                &[
                    by_alias(10, json!(i as f64 * 0.25 + 0.125), t0 + i),
                    by_alias(11, json!(1_000 + i), t0 + i),
                ],
            ),
        );
        // Pacing the publisher (not a synchronisation): the window is about 20 s.
        let due = started + Duration::from_millis(100 * (i + 1));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let out = dir.path().join("out.lp");
    let arrived = wait_for(Duration::from_secs(10), || {
        let temp = field(&out, "a", "temp");
        let count = field(&out, "a", "count");
        let want = |ts: u64| (ts * 1_000_000) as i64;
        ((t0..t0 + rounds).all(|t| temp.contains_key(&want(t)) && count.contains_key(&want(t))))
            .then_some((temp, count))
    });
    let ncmds: Vec<String> = edge
        .received_retained()
        .into_iter()
        .filter(|(t, _, _)| t.contains("CMD"))
        .map(|(t, _, _)| t)
        .collect();
    // After the window: a payload that is not Sparkplug on A's topic is counted and kept in
    // A's dead-letter file.
    edge.publish(
        "spBv1.0/weld/DDATA/edge1/A",
        b"not a sparkplug payload".to_vec(),
    );
    let dead_letter = dir.path().join("data/dead-letter/mqtt-a.log");
    let kept = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&dead_letter)
            .ok()
            .filter(|t| t.contains("not a sparkplug payload"))
    });
    let (code, log) = agent.stop();
    let kept = kept.unwrap_or_else(|| panic!("the malformed payload was not kept; log:\n{log}"));
    assert!(kept.contains("malformed"), "{kept}");
    let (temp, count) =
        arrived.unwrap_or_else(|| panic!("A's values did not all arrive; log:\n{log}"));
    for i in 0..rounds {
        let ts = ((t0 + i) * 1_000_000) as i64;
        let t: f64 = temp[&ts].parse().unwrap();
        assert_eq!(t, i as f64 * 0.25 + 0.125, "temp at {ts}");
        // Count has no `type`: the birth says UInt32, so an integer.
        assert_eq!(count[&ts], format!("{}i", 1_000 + i), "count at {ts}");
    }
    assert_eq!(
        ncmds.len(),
        0,
        "rebirth requests in a {:?} window: {ncmds:?}; log:\n{log}",
        started.elapsed()
    );
    assert!(!log.contains("seq gap"), "{log}");
    assert_eq!(code, Some(0), "{log}");
    println!(
        "NCMDs in a {:?} window with B's messages in between: {}",
        started.elapsed(),
        ncmds.len()
    );
}

/// linetap's STATE: online while it runs (retained, read by a new subscriber), offline after
/// SIGTERM (published before the clean disconnect), online again after a restart (a later
/// timestamp), offline after SIGKILL (the will).
#[test]
fn the_host_state_is_online_while_running_and_offline_after_sigterm_and_sigkill() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let devices = format!(
        "{A_ONLY}\n[brokers.other]\nurl = \"{}\"\nsparkplug_host_id = \"scada-b\"\n",
        broker.url
    );
    // The host id of a broker is its own: `plant` takes the default, a second broker would not.
    let cfg = config(dir.path(), &broker.url, free_port(), &devices);
    let topic = "spBv1.0/STATE/linetap-cell-h";
    let agent = AgentProcess::start(&cfg);
    let t1 = wait_state(broker.port, topic, true)
        .unwrap_or_else(|| panic!("no online STATE; log:\n{}", agent.stderr()));
    assert!(t1 <= now_ms() && t1 > now_ms() - 60_000, "timestamp {t1}");
    // A broker without Sparkplug devices publishes no STATE.
    assert_eq!(retained_state(broker.port, "spBv1.0/STATE/scada-b"), None);
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    let t2 = wait_state(broker.port, topic, false)
        .unwrap_or_else(|| panic!("no offline STATE after SIGTERM; log:\n{log}"));
    assert!(t2 >= t1);
    let agent = AgentProcess::start(&cfg);
    let t3 = wait_state(broker.port, topic, true).unwrap_or_else(|| {
        panic!(
            "no online STATE after the restart; log:\n{}",
            agent.stderr()
        )
    });
    assert!(t3 >= t2, "{t3} < {t2}");
    let log = agent.kill();
    let t4 = wait_state(broker.port, topic, false)
        .unwrap_or_else(|| panic!("the will did not set STATE offline; log:\n{log}"));
    assert_eq!(t4, t3, "the will carries the connection's timestamp");
}

/// An NBIRTH whose DBIRTHs give the aliases other metrics: the values that follow land on the
/// right points. A device without points takes its births' metrics, a UInt32 as an integer,
/// at most `max_metrics` (the others counted).
#[test]
fn an_nbirth_that_changes_aliases_is_followed_and_uint32_stays_an_integer() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let devices = "[[devices]]\nid = \"a\"\nkind = \"robot\"\nprotocol = \"mqtt\"\nbroker = \"plant\"\nformat = \"sparkplug-b\"\n\
         sparkplug = { group = \"weld\", node = \"edge2\", device = \"A\" }\n\n\
         [[devices.points]]\nname = \"x\"\nmetric = \"X\"\ntype = \"f64\"\n\n\
         [[devices.points]]\nname = \"y\"\nmetric = \"Y\"\ntype = \"f64\"\n\n\
         [[devices]]\nid = \"p\"\nkind = \"plc\"\nprotocol = \"mqtt\"\nbroker = \"plant\"\nformat = \"sparkplug-b\"\n\
         sparkplug = { group = \"weld\", node = \"edge2\", device = \"P\" }\nmax_metrics = 1\n";
    let metrics_port = free_port();
    let cfg = config(dir.path(), &broker.url, metrics_port, devices);
    let agent = AgentProcess::start(&cfg);
    assert!(
        wait_state(broker.port, "spBv1.0/STATE/linetap-cell-h", true).is_some(),
        "log:\n{}",
        agent.stderr()
    );
    let pool = pool();
    let mut edge = Client::connect(broker.port, "edge2", &["spBv1.0/weld/NCMD/#"]);
    let t0 = now_ms() - 60_000;
    // Session 1: X = alias 1, Y = alias 2.
    let mut session = |bd: u64, x: u64, y: u64, base: u64| {
        edge.publish(
            "spBv1.0/weld/NBIRTH/edge2",
            payload(&pool, Some(0), &[m("bdSeq", 0, 4, json!(bd))]),
        );
        edge.publish(
            "spBv1.0/weld/DBIRTH/edge2/A",
            payload(
                &pool,
                Some(1),
                &[m("X", x, 10, json!(0.5)), m("Y", y, 10, json!(0.75))],
            ),
        );
        edge.publish(
            "spBv1.0/weld/DBIRTH/edge2/P",
            payload(
                &pool,
                Some(2),
                &[
                    m("Parts", 30, 7, json!(4_000_000_000u64)),
                    m("Rate", 31, 10, json!(2.5)),
                ],
            ),
        );
        for i in 0..5u64 {
            edge.publish(
                "spBv1.0/weld/DDATA/edge2/A",
                payload(
                    &pool,
                    Some(3 + 2 * i),
                    &[
                        by_alias(1, json!(100.0 + i as f64), base + i),
                        by_alias(2, json!(200.0 + i as f64), base + i),
                    ],
                ),
            );
            edge.publish(
                "spBv1.0/weld/DDATA/edge2/P",
                payload(
                    &pool,
                    Some(4 + 2 * i),
                    &[by_alias(30, json!(3_000_000_000u64 + i), base + i)],
                ),
            );
        }
    };
    session(1, 1, 2, t0);
    // Session 2 (a new connection of the node): the aliases swapped.
    session(2, 2, 1, t0 + 100);
    let out = dir.path().join("out.lp");
    let ns = |ms: u64| (ms * 1_000_000) as i64;
    let done = wait_for(Duration::from_secs(15), || {
        let x = field(&out, "a", "x");
        let parts = field(&out, "p", "Parts");
        ((0..5).all(|i| x.contains_key(&ns(t0 + 100 + i)))
            && (0..5).all(|i| parts.contains_key(&ns(t0 + 100 + i))))
        .then_some(())
    });
    let ncmds = edge.received_retained().len();
    // P may have one metric: Rate, in both births, is over the limit.
    let over = metric(
        &format!("http://127.0.0.1:{metrics_port}"),
        "linetap_sparkplug_metrics_over_limit_total{device=\"p\"}",
    );
    let (code, log) = agent.stop();
    assert!(done.is_some(), "log:\n{log}");
    assert_eq!(over, Some(2.0), "log:\n{log}");
    assert_eq!(
        log.matches("more metrics than max_metrics").count(),
        1,
        "logged once:\n{log}"
    );
    let (x, y) = (field(&out, "a", "x"), field(&out, "a", "y"));
    let f = |v: &str| -> f64 { v.parse().unwrap_or_else(|_| panic!("not a float: {v}")) };
    for i in 0..5u64 {
        let (x1, y1) = (100.0 + i as f64, 200.0 + i as f64);
        // Session 1: alias 1 is X.
        assert_eq!(f(&x[&ns(t0 + i)]), x1, "{x:?}");
        assert_eq!(f(&y[&ns(t0 + i)]), y1, "{y:?}");
        // Session 2: alias 1 is Y.
        assert_eq!(f(&x[&ns(t0 + 100 + i)]), y1, "{x:?}");
        assert_eq!(f(&y[&ns(t0 + 100 + i)]), x1, "{y:?}");
    }
    // P has no points: Parts (UInt32) is an integer; Rate was beyond max_metrics.
    let parts = field(&out, "p", "Parts");
    for i in 0..5u64 {
        assert_eq!(parts[&ns(t0 + i)], format!("{}i", 3_000_000_000u64 + i));
        assert_eq!(
            parts[&ns(t0 + 100 + i)],
            format!("{}i", 3_000_000_000u64 + i)
        );
    }
    assert!(
        parts.values().any(|v| v == "4000000000i"),
        "the birth's value, an integer: {parts:?}"
    );
    assert!(field(&out, "p", "Rate").is_empty(), "{log}");
    assert_eq!(ncmds, 0, "no rebirth request; log:\n{log}");
    assert_eq!(code, Some(0), "{log}");
}

/// A reload that stops the broker component (here: a new `sparkplug_host_id` restarts it)
/// publishes the old host's death before its clean disconnect; the new host id is online.
#[test]
fn a_reload_that_stops_the_broker_publishes_the_state_death() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &broker.url, free_port(), A_ONLY);
    let agent = AgentProcess::start(&cfg);
    let t1 = wait_state(broker.port, "spBv1.0/STATE/linetap-cell-h", true)
        .unwrap_or_else(|| panic!("no online STATE; log:\n{}", agent.stderr()));
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "keep_alive = \"5s\"\n",
        "keep_alive = \"5s\"\nsparkplug_host_id = \"scada-2\"\n",
    );
    std::fs::write(&cfg, text).unwrap();
    agent.signal("HUP");
    let old = wait_state(broker.port, "spBv1.0/STATE/linetap-cell-h", false);
    let new = wait_state(broker.port, "spBv1.0/STATE/scada-2", true);
    let (code, log) = agent.stop();
    assert!(
        old.is_some_and(|t| t >= t1),
        "the old host id is not offline after the reload; log:\n{log}"
    );
    assert!(new.is_some(), "the new host id is not online; log:\n{log}");
    assert_eq!(code, Some(0), "{log}");
}
