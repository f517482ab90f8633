//! Poison messages against a real Mosquitto, over MQTT 3.1.1 and MQTT 5: three devices on one
//! broker connection (persistent session, QoS 1, `max_packet_size = "1MiB"`), and on one
//! device's topic a 2 MB message and a burst of malformed ones among the normal traffic. The
//! other devices' values arrive exactly, the connection is never dropped for it (one connect),
//! and the bad messages are counted and kept in the device's dead-letter file. On 3.1.1 the
//! oversized message reaches linetap, which refuses it itself (counted `oversized`,
//! acknowledged, kept); on MQTT 5 linetap announced its maximum packet size, so the broker
//! never sends it.

mod common;

use common::mqtt_client::Client;
use common::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn config(vm: &str, broker: &str, data: &str, port: u16, version: &str) -> String {
    let mut s = format!(
        "[line]\nid = \"poison\"\n\n[agent]\ndata_dir = \"{data}\"\nself_interval = \"0s\"\nmetrics_listen = \"127.0.0.1:{port}\"\n\n\
         [brokers.cell]\nurl = \"{broker}\"\nclient_id = \"linetap-poison\"\nkeep_alive = \"5s\"\nmax_packet_size = \"1MiB\"\nmqtt_version = \"{version}\"\n\n\
         [sinks.vm]\ntype = \"influxdb\"\nurl = \"{vm}\"\napi = \"v1\"\ndatabase = \"p\"\nflush_interval = \"100ms\"\n\n"
    );
    for d in ["a", "b", "c"] {
        s.push_str(&format!(
            "[[devices]]\nid = \"dev-{d}\"\nkind = \"sensor\"\nprotocol = \"mqtt\"\nbroker = \"cell\"\n\
             topic = \"cell/dev-{d}\"\nformat = \"json\"\nqos = 1\ntimestamp = \"/ts\"\nstale_after = \"60s\"\n\n\
             [[devices.points]]\nname = \"v\"\njson = \"/v\"\ntype = \"f64\"\n\n"
        ));
    }
    s
}

fn run(version: &str) {
    let vm = VictoriaMetrics::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let path = dir.path().join("line.toml");
    std::fs::write(
        &path,
        config(
            &vm.url,
            &broker.url,
            &data.display().to_string(),
            port,
            version,
        ),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let agent = AgentProcess::start(&path);
    wait_for(Duration::from_secs(20), || {
        (metric(&url, "linetap_mqtt_connected{broker=\"cell\"}") == Some(1.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("not connected:\n{}", agent.stderr()));
    let mut publisher = Client::connect(broker.port, "poison-pub", &[]);
    let t0 = now_ms() - 600_000;
    let msg = |k: i64| format!(r#"{{"ts": {}, "v": {k}}}"#, t0 + k);
    // Normal traffic on all three; on dev-b, after message 100, the 2 MB message and 20
    // malformed ones, then more normal traffic.
    let n = 300i64;
    for k in 0..n {
        for d in ["a", "b", "c"] {
            publisher.publish(&format!("cell/dev-{d}"), msg(k));
        }
        if k == 100 {
            let big = format!(
                r#"{{"ts": {}, "v": 1, "pad": "{}"}}"#,
                t0,
                "x".repeat(2 << 20)
            );
            publisher.publish("cell/dev-b", big);
            for j in 0..20 {
                publisher.publish("cell/dev-b", format!("not json {j}"));
            }
        }
    }
    publisher.wait_acked();
    let count = |dev: &str| -> usize {
        vm.export(&format!(r#"{{__name__="sensor_v",device="{dev}"}}"#))
            .iter()
            .map(|(_, v, _)| v.len())
            .sum()
    };
    wait_for(Duration::from_secs(30), || {
        (count("dev-a") == n as usize
            && count("dev-c") == n as usize
            && count("dev-b") == n as usize)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "stored a={} b={} c={} of {n}:\n{}",
            count("dev-a"),
            count("dev-b"),
            count("dev-c"),
            agent.stderr()
        )
    });
    // Exact values, each once.
    for dev in ["dev-a", "dev-b", "dev-c"] {
        let mut got: Vec<(i64, f64)> = vm
            .export(&format!(r#"{{__name__="sensor_v",device="{dev}"}}"#))
            .into_iter()
            .flat_map(|(_, v, t)| t.into_iter().zip(v))
            .collect();
        got.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let want: Vec<(i64, f64)> = (0..n).map(|k| (t0 + k, k as f64)).collect();
        assert_eq!(got, want, "{dev}");
    }
    let m = |result: &str| {
        metric(
            &url,
            &format!("linetap_mqtt_messages_total{{device=\"dev-b\",result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(m("malformed"), 20.0);
    let connects = metric(&url, "linetap_mqtt_connects_total{broker=\"cell\"}");
    assert_eq!(
        connects,
        Some(1.0),
        "the connection was dropped:\n{}",
        agent.stderr()
    );
    let dead = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(data.join("dead-letter").join("mqtt-dev-b.log"))
            .ok()
            .filter(|t| t.matches("malformed").count() >= 20)
    })
    .unwrap_or_else(|| panic!("no dead-letter file:\n{}", agent.stderr()));
    assert!(dead.contains("not json 19"), "{dead}");
    match version {
        "3.1.1" => {
            assert_eq!(m("oversized"), 1.0, "{}", agent.stderr());
            assert!(dead.contains("oversized"), "{dead}");
            assert!(dead.contains("the first 4 KiB kept"), "{dead}");
            assert!(dead.len() < 200 << 10, "only 4 KiB of the big message kept");
        }
        _ => {
            // The broker never sent it to linetap (it is over the announced maximum).
            assert_eq!(m("oversized"), 0.0);
            let log = broker.log();
            assert!(
                log.contains("Dropping too large outgoing PUBLISH for linetap-poison"),
                "the broker did not drop it for linetap"
            );
        }
    }
    for dev in ["dev-a", "dev-c"] {
        assert!(
            !data
                .join("dead-letter")
                .join(format!("mqtt-{dev}.log"))
                .exists(),
            "{dev} has nothing bad"
        );
    }
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    eprintln!(
        "MQTT {version}: 3 × {n} values exact, 1 connect, dev-b: 20 malformed and {} oversized counted and kept",
        if version == "3.1.1" { 1 } else { 0 }
    );
}

#[test]
fn poison_messages_over_mqtt_3_1_1() {
    run("3.1.1");
}

#[test]
fn poison_messages_over_mqtt_5() {
    run("5");
}
