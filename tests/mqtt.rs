//! MQTT both ways against a real Mosquitto: JSON and value devices into VictoriaMetrics with
//! exact values, tags and payload timestamps (and malformed messages counted, never fatal);
//! QoS 1 messages survive a SIGKILL of the agent and a broker restart; the MQTT sink's
//! linetap messages decoded with the published `proto/` through a reflection decoder compiled
//! separately from linetap's own generated code, and its JSON messages parsed.

mod common;

use common::mqtt_client::Client;
use common::*;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn devices_config(vm: &str, broker: &str, data: &str, metrics_port: u16) -> String {
    format!(
        "[line]\nid = \"cell-m\"\nsite = \"plant-m\"\n\n\
         [agent]\ndata_dir = \"{data}\"\nself_interval = \"0s\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\n\
         [brokers.cell3]\nurl = \"{broker}\"\nclient_id = \"linetap-test-cell3\"\nkeep_alive = \"5s\"\n\n\
         [sinks.vm]\ntype = \"influxdb\"\nurl = \"{vm}\"\napi = \"v2\"\norg = \"o\"\nbucket = \"b\"\ntoken_env = \"LINETAP_TEST_TOKEN\"\nflush_interval = \"100ms\"\n\n\
         [[devices]]\nid = \"vision-01\"\nkind = \"sensor\"\ncell = \"c3\"\nprotocol = \"mqtt\"\nbroker = \"cell3\"\n\
         topic = \"cell3/{{device}}/telemetry\"\nformat = \"json\"\nqos = 1\ntimestamp = \"/ts\"\ntimestamp_format = \"unix_ms\"\nstale_after = \"2s\"\ntags = {{ station = \"st-7\" }}\n\n\
         [[devices.points]]\nname = \"temperature\"\njson = \"/sensors/temp\"\ntype = \"f64\"\nunit = \"degC\"\n\n\
         [[devices.points]]\nname = \"offset_mm\"\njson = \"/offsets\"\ntype = \"i16\"\ncount = 3\nindex_tag = \"axis\"\nscale = 0.1\n\n\
         [[devices.points]]\nname = \"ok\"\njson = \"/ok\"\ntype = \"bool\"\n\n\
         [[devices.points]]\nname = \"parts\"\njson = \"/parts\"\ntype = \"u32\"\n\n\
         [[devices]]\nid = \"scale-01\"\nkind = \"sensor\"\nprotocol = \"mqtt\"\nbroker = \"cell3\"\nformat = \"value\"\nqos = 1\n\n\
         [[devices.points]]\nname = \"weight_kg\"\ntopic = \"cell3/scale-01/weight\"\ntype = \"f64\"\n\n\
         [[devices.points]]\nname = \"state\"\ntopic = \"cell3/scale-01/state\"\ntype = \"u8\"\nenum = {{ 0 = \"idle\", 1 = \"weighing\" }}\n"
    )
}

fn series_values(vm: &VictoriaMetrics, selector: &str) -> Vec<(i64, f64)> {
    let mut out: Vec<(i64, f64)> = vm
        .export(selector)
        .into_iter()
        .flat_map(|(_, v, t)| t.into_iter().zip(v))
        .collect();
    out.sort_by_key(|x| x.0);
    out
}

#[test]
fn json_and_value_devices_arrive_exactly_and_bad_messages_are_counted() {
    std::env::set_var("LINETAP_TEST_TOKEN", "t");
    let vm = VictoriaMetrics::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let metrics_port = free_port();
    let config = dir.path().join("line.toml");
    std::fs::write(
        &config,
        devices_config(&vm.url, &broker.url, &data, metrics_port),
    )
    .unwrap();
    let agent = AgentProcess::start(&config);
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let connected = wait_for(Duration::from_secs(20), || {
        (metric(&metrics_url, "linetap_mqtt_connected{broker=\"cell3\"}") == Some(1.0))
            .then_some(())
    });
    assert!(
        connected.is_some(),
        "agent did not connect; log:\n{}",
        agent.stderr()
    );
    // Subscriptions follow the CONNACK; give the SUBACK a moment by publishing until it lands.
    let mut publisher = Client::connect(broker.port, "test-publisher", &[]);
    let t0 = now_ms() - 5_000;
    let first = format!(
        r#"{{"ts": {t0}, "sensors": {{"temp": 41.25}}, "offsets": [12, -7, 300], "ok": true, "parts": 4000000000}}"#
    );
    let landed = wait_for(Duration::from_secs(20), || {
        publisher.publish("cell3/vision-01/telemetry", first.clone());
        let got = series_values(
            &vm,
            "{__name__=\"sensor_temperature\",device=\"vision-01\"}",
        );
        (!got.is_empty()).then_some(())
    });
    assert!(
        landed.is_some(),
        "nothing arrived; agent log:\n{}",
        agent.stderr()
    );
    // A batch of two (payload timestamps), then mistakes: not JSON, a string for a number,
    // an out-of-range value, a wrong value payload.
    let batch = format!(
        r#"[{{"ts": {}, "sensors": {{"temp": 42.5}}}}, {{"ts": {}, "sensors": {{"temp": 43.75}}, "ok": false}}]"#,
        t0 + 100,
        t0 + 200
    );
    publisher.publish("cell3/vision-01/telemetry", batch);
    publisher.publish("cell3/vision-01/telemetry", "{not json");
    publisher.publish(
        "cell3/vision-01/telemetry",
        format!(r#"{{"ts": {}, "sensors": {{"temp": "hot"}}}}"#, t0 + 300),
    );
    publisher.publish(
        "cell3/vision-01/telemetry",
        format!(r#"{{"ts": {}, "parts": -1}}"#, t0 + 400),
    );
    publisher.publish("cell3/scale-01/weight", "12.625");
    publisher.publish("cell3/scale-01/state", "1");
    publisher.publish("cell3/scale-01/weight", "heavy");

    let temps = wait_for(Duration::from_secs(20), || {
        let v = series_values(
            &vm,
            "{__name__=\"sensor_temperature\",device=\"vision-01\"}",
        );
        let ts: HashSet<i64> = v.iter().map(|x| x.0).collect();
        (ts.contains(&(t0 + 200))).then_some(v)
    })
    .unwrap_or_else(|| panic!("batch not in the store; log:\n{}", agent.stderr()));
    let by_ts: BTreeMap<i64, f64> = temps.into_iter().collect();
    assert_eq!(by_ts.get(&t0), Some(&41.25));
    assert_eq!(by_ts.get(&(t0 + 100)), Some(&42.5));
    assert_eq!(by_ts.get(&(t0 + 200)), Some(&43.75));
    assert!(
        !by_ts.contains_key(&(t0 + 300)),
        "a string for a number is not written"
    );
    // Arrays with their index tag, scaled; a u32 above i32::MAX; tags of line, device, point.
    for (axis, want) in [("1", 1.2), ("2", -0.7), ("3", 30.0)] {
        let v = series_values(
            &vm,
            &format!("{{__name__=\"sensor_offset_mm\",device=\"vision-01\",axis=\"{axis}\",station=\"st-7\",cell=\"c3\",line=\"cell-m\",site=\"plant-m\",kind=\"sensor\"}}"),
        );
        assert_eq!(v, vec![(t0, want)], "axis {axis}");
    }
    assert_eq!(
        series_values(&vm, "{__name__=\"sensor_parts\",device=\"vision-01\"}"),
        vec![(t0, 4_000_000_000.0)],
        "-1 for a u32 is out of range and not written"
    );
    let ok = wait_for(Duration::from_secs(10), || {
        let v = series_values(&vm, "{__name__=\"sensor_ok\",device=\"vision-01\"}");
        (v.len() == 2).then_some(v)
    });
    assert_eq!(ok, Some(vec![(t0, 1.0), (t0 + 200, 0.0)]));
    let weight = wait_for(Duration::from_secs(10), || {
        let v = series_values(&vm, "{__name__=\"sensor_weight_kg\",device=\"scale-01\"}");
        (!v.is_empty()).then_some(v)
    })
    .expect("the value device's weight");
    assert_eq!(weight.len(), 1);
    assert_eq!(weight[0].1, 12.625);
    let state = wait_for(Duration::from_secs(10), || {
        let v = series_values(&vm, "{__name__=\"sensor_state\",device=\"scale-01\"}");
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(state.map(|v| v[0].1), Some(1.0));
    // Counted by device and result.
    let counted = wait_for(Duration::from_secs(10), || {
        let m = |d: &str, r: &str| {
            metric(
                &metrics_url,
                &format!("linetap_mqtt_messages_total{{device=\"{d}\",result=\"{r}\"}}"),
            )
        };
        (m("vision-01", "malformed") == Some(1.0)
            && m("vision-01", "rejected_values") == Some(2.0)
            && m("scale-01", "malformed") == Some(1.0))
        .then_some(())
    });
    assert!(
        counted.is_some(),
        "metrics:\n{}",
        http::request("GET", &format!("{metrics_url}/metrics"), None)
            .map(|r| r.body)
            .unwrap_or_default()
    );
    // The device health: up while publishing, down after stale_after without a message.
    let down = wait_for(Duration::from_secs(15), || {
        let v = series_values(&vm, "{__name__=\"linetap_device_up\",device=\"vision-01\"}");
        let down = v.last().is_some_and(|x| x.1 == 0.0);
        down.then_some(v)
    });
    let down =
        down.unwrap_or_else(|| panic!("vision-01 never went down; log:\n{}", agent.stderr()));
    assert!(down.iter().any(|x| x.1 == 1.0), "it was up first: {down:?}");
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("malformed message on cell3/vision-01/telemetry"),
        "{log}"
    );
}

/// QoS 1 in: every message published while the agent is SIGKILLed and while the broker
/// restarts arrives in the store exactly (by its payload timestamp).
#[test]
fn qos1_messages_survive_sigkill_and_a_broker_restart() {
    std::env::set_var("LINETAP_TEST_TOKEN", "t");
    let vm = VictoriaMetrics::start();
    let mut broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let metrics_port = free_port();
    let config = dir.path().join("line.toml");
    std::fs::write(
        &config,
        devices_config(&vm.url, &broker.url, &data, metrics_port),
    )
    .unwrap();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let connected = |agent: &AgentProcess| {
        let ok = wait_for(Duration::from_secs(20), || {
            (metric(&metrics_url, "linetap_mqtt_connected{broker=\"cell3\"}") == Some(1.0))
                .then_some(())
        });
        assert!(ok.is_some(), "not connected; log:\n{}", agent.stderr());
    };
    let agent = AgentProcess::start(&config);
    connected(&agent);
    let t0 = now_ms() - 60_000;
    let mut publisher = Client::connect(broker.port, "test-publisher-2", &[]);
    // The persistent session exists once the agent subscribed: wait for a first message.
    let first = format!(r#"{{"ts": {t0}, "sensors": {{"temp": 0}}}}"#);
    let ok = wait_for(Duration::from_secs(20), || {
        publisher.publish("cell3/vision-01/telemetry", first.clone());
        (!series_values(
            &vm,
            "{__name__=\"sensor_temperature\",device=\"vision-01\"}",
        )
        .is_empty())
        .then_some(())
    });
    assert!(ok.is_some());
    let n = 3000i64;
    let msg = |k: i64| format!(r#"{{"ts": {}, "sensors": {{"temp": {k}}}}}"#, t0 + 1 + k);
    for k in 0..1000 {
        publisher.publish("cell3/vision-01/telemetry", msg(k));
    }
    // SIGKILL the agent under load; publish while it is away; start it again.
    let log = agent.kill();
    for k in 1000..2000 {
        publisher.publish("cell3/vision-01/telemetry", msg(k));
    }
    let agent = AgentProcess::start(&config);
    connected(&agent);
    // Restart the broker (SIGTERM: it saves sessions and queued messages) under load.
    for k in 2000..2500 {
        publisher.publish("cell3/vision-01/telemetry", msg(k));
    }
    // The broker has them (it acknowledged them); now it restarts.
    publisher.wait_acked();
    broker.restart();
    drop(publisher);
    publisher = Client::connect(broker.port, "test-publisher-3", &[]);
    for k in 2500..n {
        publisher.publish("cell3/vision-01/telemetry", msg(k));
    }
    let all = wait_for(Duration::from_secs(60), || {
        let v = series_values(
            &vm,
            "{__name__=\"sensor_temperature\",device=\"vision-01\"}",
        );
        let ts: HashSet<i64> = v.iter().map(|x| x.0).filter(|t| *t > t0).collect();
        (ts.len() as i64 == n).then_some(v)
    });
    let (code, log2) = agent.stop();
    let all = all.unwrap_or_else(|| {
        let v = series_values(&vm, "{__name__=\"sensor_temperature\",device=\"vision-01\"}");
        let ts: HashSet<i64> = v.iter().map(|x| x.0).collect();
        let missing: Vec<i64> = (0..n).filter(|k| !ts.contains(&(t0 + 1 + k))).take(20).collect();
        let blog = broker.log();
        let _ = std::fs::write(std::env::temp_dir().join("linetap-mqtt-broker.log"), &blog);
        let mut tail: Vec<String> = Vec::new();
        let mut last = String::new();
        let mut n = 0;
        for l in blog.lines() {
            // Runs of similar lines (PUBLISH / PUBACK) collapsed with their count.
            let kind: String = l.split_whitespace().skip(1).take(4).collect::<Vec<_>>().join(" ");
            if kind == last {
                n += 1;
                continue;
            }
            if n > 0 {
                tail.push(format!("    ... and {n} more like it"));
            }
            n = 0;
            last = kind;
            tail.push(l.to_string());
        }
        panic!("{} of {n} arrived; first missing k: {missing:?}\nfirst agent:\n{log}\nsecond agent:\n{log2}\nbroker (no PUBLISH/PUBACK lines):\n{}", ts.len() - 1, tail.join("\n"))
    });
    for (t, v) in all.iter().filter(|x| x.0 > t0) {
        assert_eq!(*v, (t - t0 - 1) as f64, "value of the message stamped {t}");
    }
    assert_eq!(code, Some(0), "{log2}");
}

/// The MQTT sink: linetap messages decoded from `proto/` by reflection (not linetap's generated
/// types) with the retained catalog, and JSON messages, both with the values the simulator
/// served; QoS 1.
#[test]
fn the_mqtt_sink_publishes_decodable_batches_and_json() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let subscriber = Client::connect(broker.port, "test-sub", &["uplink/#", "json/#"]);
    let line = SimulatedLine::start(dir.path(), &["robot-9"], |a| {
        format!(
            "[line]\nid = \"weld-z\"\nsite = \"plant-z\"\n\n[agent]\ndata_dir = \"{data}\"\nself_interval = \"0s\"\n\n\
             [sinks.uplink]\ntype = \"mqtt\"\nurl = \"{}\"\nformat = \"linetap\"\ntopic = \"uplink/{{line}}/{{device}}\"\ncatalog_topic = \"uplink/{{line}}/catalog\"\nqos = 1\nflush_interval = \"200ms\"\n\n\
             [sinks.json]\ntype = \"mqtt\"\nurl = \"{}\"\nformat = \"json\"\ntopic = \"json/{{line}}/{{device}}\"\nflush_interval = \"200ms\"\n\n\
             [[devices]]\nid = \"robot-9\"\nkind = \"robot\"\naddress = \"{}\"\npoll = \"100ms\"\n\n\
             [[devices.points]]\nname = \"temperature\"\nmeasurement = \"joint\"\naddress = 0\ntype = \"i16\"\ncount = 2\nindex_tag = \"axis\"\nscale = 0.1\nunit = \"degC\"\n\n\
             [[devices.points]]\nname = \"state\"\naddress = 2\nenum = {{ 3 = \"running\" }}\n",
            broker.url, broker.url, a[0]
        )
    });
    line.sim
        .set_registers(
            "robot-9",
            linetap::config::Table::Holding,
            0,
            &[415, (-20i16) as u16, 3],
        )
        .unwrap();
    let agent = AgentProcess::start(&line.config);
    let got = wait_for(Duration::from_secs(20), || {
        let r = subscriber.received();
        let cat = r.iter().any(|(t, _)| t == "uplink/weld-z/catalog");
        let data = r
            .iter()
            .filter(|(t, _)| t == "uplink/weld-z/robot-9")
            .count();
        let json = r.iter().filter(|(t, _)| t == "json/weld-z/robot-9").count();
        (cat && data >= 3 && json >= 3).then_some(r)
    });
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    let got = got.unwrap_or_else(|| {
        panic!(
            "messages: {:?}\nlog:\n{log}",
            subscriber
                .received()
                .iter()
                .map(|m| &m.0)
                .collect::<Vec<_>>()
        )
    });

    // Decode with the published schema, compiled here.
    let pool = {
        let fds = protox::compile(["linetap/v1/model.proto"], ["proto"]).expect("proto/ compiles");
        prost_reflect::DescriptorPool::from_file_descriptor_set(fds).expect("descriptor pool")
    };
    let catalog_desc = pool
        .get_message_by_name("linetap.v1.Catalog")
        .expect("Catalog");
    let batch_desc = pool
        .get_message_by_name("linetap.v1.SampleBatch")
        .expect("SampleBatch");
    let catalog_bytes = &got
        .iter()
        .find(|(t, _)| t == "uplink/weld-z/catalog")
        .unwrap()
        .1;
    let catalog = prost_reflect::DynamicMessage::decode(catalog_desc, catalog_bytes.as_slice())
        .expect("a Catalog");
    let catalog: serde_json::Value = serde_json::to_value(&catalog).expect("catalog as JSON");
    assert_eq!(catalog["line"], "weld-z");
    let points = catalog["points"].as_array().expect("points");
    let id_of = |field: &str, axis: Option<&str>| -> u64 {
        points
            .iter()
            .find(|p| {
                p["name"] == field
                    && axis.is_none_or(|a| {
                        p["tags"].as_array().is_some_and(|t| {
                            t.iter().any(|t| t["key"] == "axis" && t["value"] == a)
                        })
                    })
            })
            .and_then(|p| p["id"].as_u64().or(Some(0)))
            .unwrap_or_else(|| panic!("no point {field} {axis:?} in {catalog}"))
    };
    let (t1, t2, st) = (
        id_of("temperature", Some("1")),
        id_of("temperature", Some("2")),
        id_of("state", None),
    );
    let mut seen = BTreeMap::new();
    for (_, payload) in got.iter().filter(|(t, _)| t == "uplink/weld-z/robot-9") {
        let b = prost_reflect::DynamicMessage::decode(batch_desc.clone(), payload.as_slice())
            .expect("a SampleBatch");
        let b: serde_json::Value = serde_json::to_value(&b).unwrap();
        for s in b["samples"].as_array().into_iter().flatten() {
            let point = s["point"].as_u64().unwrap_or(0);
            let value = s.get("doubleValue").and_then(|v| v.as_f64()).or_else(|| {
                s.get("intValue")
                    .and_then(|v| v.as_str().and_then(|x| x.parse().ok()).or(v.as_f64()))
            });
            assert!(
                s.get("timestampNs").is_some(),
                "every sample carries its own time: {s}"
            );
            if let Some(v) = value {
                seen.insert(point, v);
            }
        }
    }
    assert_eq!(seen.get(&t1), Some(&41.5), "{seen:?}");
    assert_eq!(seen.get(&t2), Some(&-2.0), "{seen:?}");
    assert_eq!(seen.get(&st), Some(&3.0), "{seen:?}");

    let (_, json) = got
        .iter()
        .find(|(t, _)| t == "json/weld-z/robot-9")
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(json).expect("JSON");
    assert_eq!(j["site"], "plant-z");
    assert_eq!(j["line"], "weld-z");
    assert_eq!(j["device"], "robot-9");
    assert_eq!(j["kind"], "robot");
    let samples = j["samples"].as_array().expect("samples");
    let temp1 = samples
        .iter()
        .find(|s| s["field"] == "temperature" && s["tags"]["axis"] == "1")
        .expect("temperature axis 1");
    assert_eq!(temp1["measurement"], "joint");
    assert_eq!(temp1["value"], 41.5);
    assert_eq!(temp1["unit"], "degC");
    assert!(
        temp1["ts"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 30),
        "{temp1}"
    );
    let state = samples
        .iter()
        .find(|s| s["field"] == "state")
        .expect("state");
    assert_eq!(state["value"], 3);
    assert_eq!(state["label"], "running");
}

/// The MQTT sink as a Sparkplug B edge node, decoded with the Sparkplug schema compiled here by
/// reflection: NBIRTH (seq 0, bdSeq, Node Control/Rebirth), DBIRTH (names, aliases, datatypes,
/// engUnit), DDATA by alias, seq +1 per message, a rebirth on NCMD with the same bdSeq, and the
/// NDEATH will with that bdSeq when the agent dies.
#[test]
fn the_sparkplug_edge_node_births_data_rebirth_and_death() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let mut host = Client::connect(broker.port, "test-host", &["spBv1.0/#"]);
    let line = SimulatedLine::start(dir.path(), &["robot-9"], |a| {
        format!(
            "[line]\nid = \"weld-z\"\nsite = \"plant-z\"\n\n[agent]\ndata_dir = \"{data}\"\nself_interval = \"0s\"\n\n\
             [sinks.scada]\ntype = \"mqtt\"\nurl = \"{}\"\nformat = \"sparkplug-b\"\nsparkplug = {{ group = \"plant-z\", node = \"weld-z\" }}\nkeep_alive = \"5s\"\nflush_interval = \"200ms\"\n\n\
             [[devices]]\nid = \"robot-9\"\nkind = \"robot\"\naddress = \"{}\"\npoll = \"100ms\"\n\n\
             [[devices.points]]\nname = \"temperature\"\nmeasurement = \"joint\"\naddress = 0\ntype = \"i16\"\ncount = 2\nindex_tag = \"axis\"\nscale = 0.1\nunit = \"degC\"\n\n\
             [[devices.points]]\nname = \"state\"\naddress = 2\nenum = {{ 3 = \"running\" }}\n",
            broker.url, a[0]
        )
    });
    line.sim
        .set_registers(
            "robot-9",
            linetap::config::Table::Holding,
            0,
            &[415, (-20i16) as u16, 3],
        )
        .unwrap();
    let agent = AgentProcess::start(&line.config);
    let pool = {
        let fds = protox::compile(["sparkplug_b/sparkplug_b.proto"], ["proto"])
            .expect("the Sparkplug schema compiles");
        prost_reflect::DescriptorPool::from_file_descriptor_set(fds).expect("descriptor pool")
    };
    let desc = pool
        .get_message_by_name("org.eclipse.tahu.protobuf.Payload")
        .expect("Payload");
    let decode = |bytes: &[u8]| -> serde_json::Value {
        let m = prost_reflect::DynamicMessage::decode(desc.clone(), bytes)
            .expect("a Sparkplug payload");
        serde_json::to_value(&m).expect("as JSON")
    };
    let num = |v: &serde_json::Value| -> Option<f64> {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    let ddata = "spBv1.0/plant-z/DDATA/weld-z/robot-9";
    let got = wait_for(Duration::from_secs(20), || {
        let r = host.received();
        (r.iter().filter(|(t, _)| t == ddata).count() >= 3).then_some(r)
    })
    .unwrap_or_else(|| panic!("no DDATA; log:\n{}", agent.stderr()));
    // The session's first messages, in order, with seq 0, 1, 2, ...
    let (t0, nbirth) = &got[0];
    assert_eq!(t0, "spBv1.0/plant-z/NBIRTH/weld-z");
    let nbirth = decode(nbirth);
    assert_eq!(num(&nbirth["seq"]).unwrap_or(0.0), 0.0, "{nbirth}");
    let metrics = nbirth["metrics"].as_array().expect("metrics");
    let bd = metrics
        .iter()
        .find(|m| m["name"] == "bdSeq")
        .expect("bdSeq in NBIRTH");
    assert_eq!(num(&bd["datatype"]), Some(4.0));
    let bd_value = num(&bd["longValue"]).unwrap_or(0.0);
    let rebirth = metrics
        .iter()
        .find(|m| m["name"] == "Node Control/Rebirth")
        .expect("Node Control/Rebirth");
    assert_eq!(rebirth["booleanValue"], false);
    assert!(
        rebirth.get("alias").is_none(),
        "no alias on Node Control/Rebirth"
    );
    let (t1, dbirth) = &got[1];
    assert_eq!(t1, "spBv1.0/plant-z/DBIRTH/weld-z/robot-9");
    let dbirth = decode(dbirth);
    assert_eq!(num(&dbirth["seq"]), Some(1.0));
    let dm = dbirth["metrics"].as_array().expect("metrics");
    let by_name = |n: &str| {
        dm.iter()
            .find(|m| m["name"] == n)
            .unwrap_or_else(|| panic!("no {n} in {dbirth}"))
    };
    let t1m = by_name("joint/1/temperature");
    assert_eq!(num(&t1m["datatype"]), Some(10.0), "scaled: Double");
    assert_eq!(t1m["properties"]["keys"][0], "engUnit");
    assert_eq!(t1m["properties"]["values"][0]["stringValue"], "degC");
    let state = by_name("robot/state");
    assert_eq!(num(&state["datatype"]), Some(6.0), "u16: UInt16");
    assert_eq!(num(&by_name("robot/state_label")["datatype"]), Some(12.0));
    let alias = |m: &serde_json::Value| num(&m["alias"]).unwrap_or(0.0) as u64;
    let (a_t1, a_t2, a_state) = (
        alias(t1m),
        alias(by_name("joint/2/temperature")),
        alias(state),
    );
    let mut aliases: Vec<u64> = dm.iter().map(alias).collect();
    aliases.sort();
    aliases.dedup();
    assert_eq!(aliases.len(), dm.len(), "aliases are unique");
    // Data by alias, without names; seq +1 per message (mod 256).
    let mut expect_seq = 2.0;
    let mut values: BTreeMap<u64, f64> = BTreeMap::new();
    for (t, p) in got.iter().skip(2) {
        let p = decode(p);
        assert_eq!(num(&p["seq"]), Some(expect_seq), "{t}: {p}");
        expect_seq = (expect_seq + 1.0) % 256.0;
        if t == ddata {
            for m in p["metrics"].as_array().into_iter().flatten() {
                assert!(m.get("name").is_none(), "DDATA by alias only: {m}");
                let v = num(&m["doubleValue"]).or_else(|| num(&m["intValue"]));
                if let Some(v) = v {
                    values.insert(alias(m), v);
                }
            }
        }
    }
    assert_eq!(values.get(&a_t1), Some(&41.5));
    assert_eq!(values.get(&a_t2), Some(&-2.0));
    assert_eq!(values.get(&a_state), Some(&3.0));

    // A rebirth request: NBIRTH again with the same bdSeq.
    let before = host.received().len();
    let ncmd = {
        let mut m = prost_reflect::DynamicMessage::new(desc.clone());
        let metric_desc = pool
            .get_message_by_name("org.eclipse.tahu.protobuf.Payload.Metric")
            .unwrap();
        let mut metric = prost_reflect::DynamicMessage::new(metric_desc);
        metric.set_field_by_name(
            "name",
            prost_reflect::Value::String("Node Control/Rebirth".into()),
        );
        metric.set_field_by_name("datatype", prost_reflect::Value::U32(11));
        metric.set_field_by_name("boolean_value", prost_reflect::Value::Bool(true));
        m.set_field_by_name(
            "metrics",
            prost_reflect::Value::List(vec![prost_reflect::Value::Message(metric)]),
        );
        prost::Message::encode_to_vec(&m)
    };
    host.publish("spBv1.0/plant-z/NCMD/weld-z", ncmd);
    let reborn = wait_for(Duration::from_secs(10), || {
        host.received()
            .into_iter()
            .skip(before)
            .find(|(t, _)| t == "spBv1.0/plant-z/NBIRTH/weld-z")
    })
    .unwrap_or_else(|| panic!("no rebirth; log:\n{}", agent.stderr()));
    let reborn = decode(&reborn.1);
    let bd2 = reborn["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "bdSeq")
        .map(|m| num(&m["longValue"]).unwrap_or(0.0));
    assert_eq!(bd2, Some(bd_value), "a rebirth keeps the bdSeq");

    // The agent dies: the broker publishes the NDEATH will with the session's bdSeq.
    let log = agent.kill();
    let death = wait_for(Duration::from_secs(15), || {
        host.received()
            .into_iter()
            .find(|(t, _)| t == "spBv1.0/plant-z/NDEATH/weld-z")
    })
    .unwrap_or_else(|| panic!("no NDEATH; log:\n{log}"));
    let death = decode(&death.1);
    assert!(death.get("seq").is_none(), "NDEATH carries no seq: {death}");
    let bd3 = death["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "bdSeq")
        .map(|m| num(&m["longValue"]).unwrap_or(0.0));
    assert_eq!(bd3, Some(bd_value), "NDEATH matches the NBIRTH's bdSeq");
}

/// A metric to encode: (name, alias, datatype, value as JSON).
type SpMetric<'a> = (Option<&'a str>, Option<u64>, Option<u32>, serde_json::Value);

/// Encodes a Sparkplug payload with the schema compiled here (not linetap's types).
fn sparkplug_payload(
    pool: &prost_reflect::DescriptorPool,
    seq: Option<u64>,
    metrics: &[SpMetric],
) -> Vec<u8> {
    use prost_reflect::{DynamicMessage, Value as V};
    let payload = pool
        .get_message_by_name("org.eclipse.tahu.protobuf.Payload")
        .unwrap();
    let metric = pool
        .get_message_by_name("org.eclipse.tahu.protobuf.Payload.Metric")
        .unwrap();
    let mut p = DynamicMessage::new(payload);
    p.set_field_by_name("timestamp", V::U64(now_ms() as u64));
    if let Some(s) = seq {
        p.set_field_by_name("seq", V::U64(s));
    }
    let list = metrics
        .iter()
        .map(|(name, alias, dt, value)| {
            let mut m = DynamicMessage::new(metric.clone());
            if let Some(n) = name {
                m.set_field_by_name("name", V::String(n.to_string()));
            }
            if let Some(a) = alias {
                m.set_field_by_name("alias", V::U64(*a));
            }
            if let Some(d) = dt {
                m.set_field_by_name("datatype", V::U32(*d));
            }
            match value {
                serde_json::Value::Bool(b) => m.set_field_by_name("boolean_value", V::Bool(*b)),
                serde_json::Value::String(s) => {
                    m.set_field_by_name("string_value", V::String(s.clone()))
                }
                v if dt == &Some(10) => {
                    m.set_field_by_name("double_value", V::F64(v.as_f64().unwrap()))
                }
                v if dt == &Some(4) || dt == &Some(8) => {
                    m.set_field_by_name("long_value", V::U64(v.as_i64().unwrap() as u64))
                }
                v => m.set_field_by_name("int_value", V::U32(v.as_i64().unwrap() as i32 as u32)),
            }
            V::Message(m)
        })
        .collect();
    p.set_field_by_name("metrics", V::List(list));
    prost::Message::encode_to_vec(&p)
}

/// Sparkplug B devices: a device with listed points and one that takes every metric of its
/// birth; data by alias with metric timestamps; a seq gap asks for a rebirth (NCMD) and the
/// values continue after it; NDEATH with the matching bdSeq marks the devices down.
#[test]
fn sparkplug_devices_births_aliases_gaps_and_deaths() {
    std::env::set_var("LINETAP_TEST_TOKEN", "t");
    let vm = VictoriaMetrics::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let metrics_port = free_port();
    let config = dir.path().join("line.toml");
    std::fs::write(
        &config,
        format!(
            "[line]\nid = \"cell-s\"\n\n[agent]\ndata_dir = \"{data}\"\nself_interval = \"0s\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\n\
             [brokers.plant]\nurl = \"{}\"\n\n\
             [sinks.vm]\ntype = \"influxdb\"\nurl = \"{}\"\napi = \"v2\"\norg = \"o\"\nbucket = \"b\"\ntoken_env = \"LINETAP_TEST_TOKEN\"\nflush_interval = \"100ms\"\n\n\
             [[devices]]\nid = \"r7\"\nkind = \"robot\"\nprotocol = \"mqtt\"\nbroker = \"plant\"\nformat = \"sparkplug-b\"\nstale_after = \"1s\"\n\
             sparkplug = {{ group = \"weld\", node = \"cell3-edge\", device = \"R7\" }}\n\n\
             [[devices.points]]\nname = \"temperature\"\nmeasurement = \"joint\"\nmetric = \"Joint/1/Temperature\"\ntype = \"f64\"\n\n\
             [[devices.points]]\nname = \"state\"\nmetric = \"State\"\ntype = \"u8\"\n\n\
             [[devices]]\nid = \"plc\"\nkind = \"plc\"\nprotocol = \"mqtt\"\nbroker = \"plant\"\nformat = \"sparkplug-b\"\n\
             sparkplug = {{ group = \"weld\", node = \"cell3-edge\", device = \"PLC\" }}\n",
            broker.url, vm.url
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(&config);
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let connected = wait_for(Duration::from_secs(20), || {
        (metric(&metrics_url, "linetap_mqtt_connected{broker=\"plant\"}") == Some(1.0))
            .then_some(())
    });
    assert!(connected.is_some(), "log:\n{}", agent.stderr());
    let pool = {
        let fds = protox::compile(["sparkplug_b/sparkplug_b.proto"], ["proto"]).unwrap();
        prost_reflect::DescriptorPool::from_file_descriptor_set(fds).unwrap()
    };
    let mut edge = Client::connect(broker.port, "test-edge", &["spBv1.0/weld/NCMD/#"]);
    use serde_json::json;
    // The subscription follows the CONNACK: send births until the device is up.
    let births = |edge: &mut Client| {
        edge.publish(
            "spBv1.0/weld/NBIRTH/cell3-edge",
            sparkplug_payload(
                &pool,
                Some(0),
                &[
                    (Some("bdSeq"), None, Some(4), json!(5)),
                    (Some("Node Control/Rebirth"), None, Some(11), json!(false)),
                ],
            ),
        );
        edge.publish(
            "spBv1.0/weld/DBIRTH/cell3-edge/R7",
            sparkplug_payload(
                &pool,
                Some(1),
                &[
                    (Some("Joint/1/Temperature"), Some(10), Some(10), json!(40.5)),
                    (Some("State"), Some(11), Some(5), json!(3)),
                    (Some("Ignored/Metric"), Some(12), Some(3), json!(-4)),
                ],
            ),
        );
        edge.publish(
            "spBv1.0/weld/DBIRTH/cell3-edge/PLC",
            sparkplug_payload(
                &pool,
                Some(2),
                &[
                    (Some("Conveyor/Speed"), Some(20), Some(10), json!(1.25)),
                    (Some("Parts"), Some(21), Some(7), json!(4000000000u64)),
                    (Some("Offset"), Some(22), Some(2), json!(-3)),
                ],
            ),
        );
    };
    let up = wait_for(Duration::from_secs(20), || {
        births(&mut edge);
        (!series_values(&vm, "{__name__=\"plc_Conveyor/Speed\",device=\"plc\"}").is_empty()
            || !series_values(&vm, "{__name__=\"joint_temperature\",device=\"r7\"}").is_empty())
        .then_some(())
    });
    assert!(
        up.is_some(),
        "births did not land; log:\n{}",
        agent.stderr()
    );
    // Data by alias, with a metric timestamp; seq continues from the last birth (2).
    let t1 = now_ms() - 3_000;
    let ddata = |edge: &mut Client, seq: u64, temp: f64| {
        let pool = &pool;
        let bytes = {
            use prost_reflect::{DynamicMessage, Value as V};
            let payload = pool
                .get_message_by_name("org.eclipse.tahu.protobuf.Payload")
                .unwrap();
            let metric = pool
                .get_message_by_name("org.eclipse.tahu.protobuf.Payload.Metric")
                .unwrap();
            let mut p = DynamicMessage::new(payload);
            p.set_field_by_name("seq", V::U64(seq));
            let mut m = DynamicMessage::new(metric);
            m.set_field_by_name("alias", V::U64(10));
            m.set_field_by_name("timestamp", V::U64(t1 as u64 + seq));
            m.set_field_by_name("double_value", V::F64(temp));
            p.set_field_by_name("metrics", V::List(vec![V::Message(m)]));
            prost::Message::encode_to_vec(&p)
        };
        edge.publish("spBv1.0/weld/DDATA/cell3-edge/R7", bytes);
    };
    ddata(&mut edge, 3, 41.0);
    let landed = wait_for(Duration::from_secs(10), || {
        series_values(&vm, "{__name__=\"joint_temperature\",device=\"r7\"}")
            .into_iter()
            .find(|x| x.0 == t1 + 3)
    });
    assert_eq!(landed, Some((t1 + 3, 41.0)), "log:\n{}", agent.stderr());
    // The PLC took every metric of its birth, with the birth's datatypes.
    let plc_parts = wait_for(Duration::from_secs(10), || {
        let v = series_values(&vm, "{__name__=\"plc_Parts\",device=\"plc\"}");
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(plc_parts.map(|v| v[0].1), Some(4_000_000_000.0));
    let offset = series_values(&vm, "{__name__=\"plc_Offset\",device=\"plc\"}");
    assert_eq!(
        offset.first().map(|x| x.1),
        Some(-3.0),
        "Int16 sign-extended in int_value"
    );
    // A seq gap (5 after 3): a rebirth request on NCMD; the value is still taken.
    let before = edge.received().len();
    ddata(&mut edge, 5, 42.0);
    let ncmd = wait_for(Duration::from_secs(10), || {
        edge.received()
            .into_iter()
            .skip(before)
            .find(|(t, _)| t == "spBv1.0/weld/NCMD/cell3-edge")
    })
    .unwrap_or_else(|| panic!("no rebirth request; log:\n{}", agent.stderr()));
    let desc = pool
        .get_message_by_name("org.eclipse.tahu.protobuf.Payload")
        .unwrap();
    let ncmd = prost_reflect::DynamicMessage::decode(desc, ncmd.1.as_slice()).unwrap();
    let ncmd: serde_json::Value = serde_json::to_value(&ncmd).unwrap();
    assert_eq!(ncmd["metrics"][0]["name"], "Node Control/Rebirth");
    assert_eq!(ncmd["metrics"][0]["booleanValue"], true);
    let continued = wait_for(Duration::from_secs(10), || {
        series_values(&vm, "{__name__=\"joint_temperature\",device=\"r7\"}")
            .into_iter()
            .find(|x| x.0 == t1 + 5)
    });
    assert_eq!(continued, Some((t1 + 5, 42.0)));
    // DDEATH: that device is down, the other one of the node is not.
    edge.publish(
        "spBv1.0/weld/DDEATH/cell3-edge/R7",
        sparkplug_payload(&pool, Some(6), &[]),
    );
    let r7_down = wait_for(Duration::from_secs(10), || {
        let r = series_values(&vm, "{__name__=\"linetap_device_up\",device=\"r7\"}");
        let p = series_values(&vm, "{__name__=\"linetap_device_up\",device=\"plc\"}");
        (r.last().is_some_and(|x| x.1 == 0.0) && p.last().is_some_and(|x| x.1 == 1.0)).then_some(())
    });
    assert!(r7_down.is_some(), "DDEATH; log:\n{}", agent.stderr());
    // An NDEATH of another session (bdSeq 4) is ignored; the matching one (5) marks both down.
    edge.publish(
        "spBv1.0/weld/NDEATH/cell3-edge",
        sparkplug_payload(&pool, None, &[(Some("bdSeq"), None, Some(4), json!(4))]),
    );
    edge.publish(
        "spBv1.0/weld/NDEATH/cell3-edge",
        sparkplug_payload(&pool, None, &[(Some("bdSeq"), None, Some(4), json!(5))]),
    );
    let down = wait_for(Duration::from_secs(10), || {
        let r = series_values(&vm, "{__name__=\"linetap_device_up\",device=\"r7\"}");
        let p = series_values(&vm, "{__name__=\"linetap_device_up\",device=\"plc\"}");
        (r.last().is_some_and(|x| x.1 == 0.0) && p.last().is_some_and(|x| x.1 == 0.0)).then_some(())
    });
    let (code, log) = agent.stop();
    assert!(down.is_some(), "devices not down after NDEATH; log:\n{log}");
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("seq gap: 5 where 4 was due"), "{log}");
}

/// QoS 1 out: the MQTT sink under load while the agent is SIGKILLed and the broker restarts;
/// every sample the agent's file sink wrote (the same buffer) also reached the subscriber.
#[test]
fn the_mqtt_sink_loses_nothing_across_sigkill_and_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let file = dir.path().join("out.lp").display().to_string();
    let subscriber = Client::connect_persistent(broker.port, "test-sub-persistent", &["json/#"]);
    let line = SimulatedLine::start(dir.path(), &["robot-9"], |a| {
        format!(
            "[line]\nid = \"weld-z\"\n\n[agent]\ndata_dir = \"{data}\"\nself_interval = \"0s\"\n\n\
             [sinks.uplink]\ntype = \"mqtt\"\nurl = \"{}\"\nformat = \"json\"\ntopic = \"json/{{line}}/{{device}}\"\nqos = 1\nflush_interval = \"100ms\"\n\n\
             [sinks.local]\ntype = \"file\"\npath = \"{file}\"\nflush_interval = \"100ms\"\n\n\
             [[devices]]\nid = \"robot-9\"\nkind = \"robot\"\naddress = \"{}\"\npoll = \"50ms\"\n\n\
             [[devices.points]]\nname = \"temperature\"\nmeasurement = \"joint\"\naddress = 0\ntype = \"i16\"\ncount = 2\nindex_tag = \"axis\"\nscale = 0.1\n",
            broker.url, a[0]
        )
    });
    let received = |n: usize| {
        let got = wait_for(Duration::from_secs(30), || {
            (subscriber.received().len() >= n).then_some(())
        });
        assert!(
            got.is_some(),
            "{} of {n} messages",
            subscriber.received().len()
        );
    };
    let agent = AgentProcess::start(&line.config);
    received(10);
    let first = agent.kill();
    let agent = AgentProcess::start(&line.config);
    let n = subscriber.received().len();
    received(n + 10);
    broker.restart();
    let n = subscriber.received().len();
    received(n + 10);
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("everything delivered"), "{log}");
    // (axis, timestamp ns) of every temperature sample, both ways.
    let mut sent: HashSet<(String, i64)> = HashSet::new();
    for (_, payload) in subscriber.received() {
        let j: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
        for s in j["samples"].as_array().into_iter().flatten() {
            if s["field"] == "temperature" {
                let ts =
                    linetap::source::mqtt::payload::rfc3339(s["ts"].as_str().unwrap()).unwrap();
                sent.insert((s["tags"]["axis"].as_str().unwrap().to_string(), ts));
            }
        }
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let mut written = 0;
    for l in text
        .lines()
        .filter(|l| l.starts_with("joint,") && l.contains(" temperature="))
    {
        let ts: i64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        let axis = l
            .split(',')
            .find_map(|kv| kv.strip_prefix("axis="))
            .unwrap()
            .to_string();
        written += 1;
        assert!(
            sent.contains(&(axis.clone(), ts)),
            "axis {axis} at {ts} is in the file but never reached the broker's subscriber\nfirst agent:\n{first}\nsecond agent:\n{log}"
        );
    }
    assert!(written >= 60, "{written} samples written");
}

/// TLS through rustls: the broker's certificate checked against the plant CA (`ca_file`) and a
/// client certificate (`cert_file`, `key_file`) the broker requires.
#[test]
fn a_tls_broker_with_a_plant_ca_and_a_client_certificate() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "plant CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params = rcgen::CertificateParams::new(vec!["gateway-7".to_string()]).unwrap();
    client_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gateway-7");
    let client = client_params.signed_by(&client_key, &issuer).unwrap();
    let certs = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let p = certs.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ca_file = write("ca.pem", ca_cert.pem());
    let client_cert = write("gw.pem", client.pem());
    let client_key = write("gw.key", client_key.serialize_pem());
    let (server_pem, server_key_pem, ca_pem) =
        (server.pem(), server_key.serialize_pem(), ca_cert.pem());
    let tls_port = free_port();
    let broker = Mosquitto::start_with(|dir, _| {
        std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
        std::fs::write(dir.join("server.pem"), &server_pem).unwrap();
        std::fs::write(dir.join("server.key"), &server_key_pem).unwrap();
        format!(
            "listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nrequire_certificate true\n",
            d = dir.display()
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.lp");
    let config = dir.path().join("line.toml");
    std::fs::write(
        &config,
        format!(
            "[line]\nid = \"tls\"\n\n[agent]\ndata_dir = \"{}\"\nself_interval = \"0s\"\n\n\
             [brokers.secure]\nurl = \"mqtts://localhost:{tls_port}\"\nca_file = \"{ca_file}\"\ncert_file = \"{client_cert}\"\nkey_file = \"{client_key}\"\n\n\
             [sinks.f]\ntype = \"file\"\npath = \"{}\"\nflush_interval = \"100ms\"\n\n\
             [[devices]]\nid = \"scale-9\"\nkind = \"sensor\"\nprotocol = \"mqtt\"\nbroker = \"secure\"\nformat = \"value\"\n\n\
             [[devices.points]]\nname = \"weight\"\ntopic = \"secure/scale-9/weight\"\n",
            dir.path().join("data").display(),
            out.display()
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(&config);
    // The test publishes on the plain listener; the agent reads over TLS.
    let mut publisher = Client::connect(broker.port, "test-plain", &[]);
    let got = wait_for(Duration::from_secs(20), || {
        publisher.publish("secure/scale-9/weight", "7.125");
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        text.lines()
            .any(|l| l.contains("weight=7.125"))
            .then_some(())
    });
    let (code, log) = agent.stop();
    assert!(
        got.is_some(),
        "nothing arrived over TLS; agent log:\n{log}\nbroker log:\n{}",
        broker.log()
    );
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("MQTT connected"), "{log}");
}

/// A JSON device into InfluxDB 1.x (v1 write API): values, tags and the payload
/// timestamp as they are in the message.
#[test]
fn mqtt_devices_arrive_in_influxdb_1x() {
    let influx = Influx1::start();
    influx.create_database("mq");
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("line.toml");
    std::fs::write(
        &config,
        format!(
            "[line]\nid = \"cell-i\"\n\n[agent]\ndata_dir = \"{}\"\nself_interval = \"0s\"\n\n\
             [brokers.b]\nurl = \"{}\"\n\n\
             [sinks.db]\ntype = \"influxdb\"\napi = \"v1\"\nurl = \"{}\"\ndatabase = \"mq\"\nflush_interval = \"100ms\"\n\n\
             [[devices]]\nid = \"cam-2\"\nkind = \"sensor\"\nprotocol = \"mqtt\"\nbroker = \"b\"\ntopic = \"cell-i/cam-2\"\ntimestamp = \"/t\"\ntimestamp_format = \"rfc3339\"\n\n\
             [[devices.points]]\nname = \"gap_mm\"\njson = \"/gap\"\ntype = \"f64\"\n\n\
             [[devices.points]]\nname = \"count\"\njson = \"/n\"\ntype = \"u16\"\n",
            dir.path().join("data").display(),
            broker.url,
            influx.url
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(&config);
    let mut publisher = Client::connect(broker.port, "test-influx-pub", &[]);
    let got = wait_for(Duration::from_secs(20), || {
        publisher.publish(
            "cell-i/cam-2",
            r#"{"t": "2026-11-30T08:00:00.123456789Z", "gap": 0.35, "n": 17}"#,
        );
        let r = influx.query("mq", "SELECT gap_mm, \"count\", device FROM sensor");
        r["results"][0]["series"][0]["values"]
            .as_array()
            .filter(|v| !v.is_empty())
            .cloned()
    });
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    let rows = got.unwrap_or_else(|| panic!("nothing in InfluxDB 1.x; log:\n{log}"));
    // Every message has the same payload time: one point, exactly that time.
    let want = linetap::source::mqtt::payload::rfc3339("2026-11-30T08:00:00.123456789Z").unwrap();
    assert_eq!(rows[0][0].as_i64(), Some(want), "{rows:?}");
    assert_eq!(rows[0][1], 0.35);
    assert_eq!(rows[0][2], 17);
    assert_eq!(rows[0][3], "cam-2");
}

/// After a broker outage the Sparkplug edge node rebirths (bdSeq + 1) and sends what the buffer
/// held meanwhile as historical metrics with their original times.
#[test]
fn the_sparkplug_edge_node_sends_the_backlog_as_historical_after_an_outage() {
    let mut broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let host = Client::connect_persistent(broker.port, "test-host-persistent", &["spBv1.0/#"]);
    let line = SimulatedLine::start(dir.path(), &["robot-9"], |a| {
        format!(
            "[line]\nid = \"weld-z\"\nsite = \"plant-z\"\n\n[agent]\ndata_dir = \"{data}\"\nself_interval = \"0s\"\n\n\
             [sinks.scada]\ntype = \"mqtt\"\nurl = \"{}\"\nformat = \"sparkplug-b\"\nflush_interval = \"100ms\"\n\n\
             [[devices]]\nid = \"robot-9\"\nkind = \"robot\"\naddress = \"{}\"\npoll = \"100ms\"\n\n\
             [[devices.points]]\nname = \"temperature\"\nmeasurement = \"joint\"\naddress = 0\ntype = \"i16\"\nscale = 0.1\n",
            broker.url, a[0]
        )
    });
    let agent = AgentProcess::start(&line.config);
    let pool = {
        let fds = protox::compile(["sparkplug_b/sparkplug_b.proto"], ["proto"]).unwrap();
        prost_reflect::DescriptorPool::from_file_descriptor_set(fds).unwrap()
    };
    let desc = pool
        .get_message_by_name("org.eclipse.tahu.protobuf.Payload")
        .unwrap();
    let decode = |bytes: &[u8]| -> serde_json::Value {
        serde_json::to_value(prost_reflect::DynamicMessage::decode(desc.clone(), bytes).unwrap())
            .unwrap()
    };
    let num = |v: &serde_json::Value| -> Option<f64> {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    let nbirths = |host: &Client| -> Vec<serde_json::Value> {
        host.received()
            .iter()
            .filter(|(t, _)| t == "spBv1.0/plant-z/NBIRTH/weld-z")
            .map(|(_, p)| decode(p))
            .collect()
    };
    let first = wait_for(Duration::from_secs(20), || {
        let b = nbirths(&host);
        let data = host
            .received()
            .iter()
            .filter(|(t, _)| t.contains("/DDATA/"))
            .count();
        (b.len() == 1 && data >= 3).then_some(b)
    })
    .unwrap_or_else(|| panic!("no first session; log:\n{}", agent.stderr()));
    let bd = |b: &serde_json::Value| {
        b["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "bdSeq")
            .and_then(|m| num(&m["longValue"]).or(Some(0.0)))
    };
    let bd1 = bd(&first[0]);
    // An outage of ~1.5 s while the device is polled every 100 ms.
    broker.stop();
    let down_at = now_ms();
    std::thread::sleep(Duration::from_millis(1500));
    broker.restart();
    let second = wait_for(Duration::from_secs(30), || {
        let b = nbirths(&host);
        (b.len() >= 2).then(|| b[b.len() - 1].clone())
    })
    .unwrap_or_else(|| panic!("no rebirth after the outage; log:\n{}", agent.stderr()));
    assert_eq!(
        bd(&second).map(|x| x as u64),
        bd1.map(|x| x as u64 + 1),
        "a new CONNECT: bdSeq + 1"
    );
    let birth_ms = num(&second["timestamp"]).unwrap() as i64;
    let historical = wait_for(Duration::from_secs(20), || {
        let h: Vec<i64> = host
            .received()
            .iter()
            .filter(|(t, _)| t.contains("/DDATA/"))
            .flat_map(|(_, p)| decode(p)["metrics"].as_array().cloned().unwrap_or_default())
            .filter(|m| m["isHistorical"] == true)
            .filter_map(|m| num(&m["timestamp"]).map(|t| t as i64))
            .collect();
        // Retried flushes from just before the outage come first: wait for the outage's own.
        h.iter().any(|t| *t >= down_at).then_some(h)
    });
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    let historical = historical.unwrap_or_else(|| panic!("no historical metrics; log:\n{log}"));
    assert!(
        historical.iter().all(|t| *t < birth_ms),
        "historical metrics are older than the new session's NBIRTH"
    );
    assert!(
        historical.iter().any(|t| *t >= down_at),
        "readings taken during the outage are among them: {historical:?} (outage from {down_at})"
    );
}
