//! Load for `bench/mqtt.py`: publishes N messages to a broker as fast as it takes them, each
//! with K values — a JSON object (`{"ts": ms, "v": [..K]}`) or a Sparkplug DDATA by alias
//! (after an NBIRTH and a DBIRTH with K Double metrics). Prints messages/s.
//!
//!     cargo run --release --example mqtt_load -- PORT json|sparkplug MESSAGES K [QOS]

use linetap::mqtt::sparkplug as sp;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: mqtt_load PORT json|sparkplug MESSAGES K [QOS]";
    let port: u16 = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let format = args.get(2).cloned().expect(usage);
    let n: usize = args.get(3).and_then(|a| a.parse().ok()).expect(usage);
    let k: usize = args.get(4).and_then(|a| a.parse().ok()).expect(usage);
    let qos = match args.get(5).map(String::as_str) {
        Some("1") => QoS::AtLeastOnce,
        _ => QoS::AtMostOnce,
    };
    let mut o = MqttOptions::new(
        format!("bench-load-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(1000);
    let (client, mut events) = AsyncClient::new(o, 10_000);
    // Wait for the connection.
    loop {
        if let Ok(Event::Incoming(Packet::ConnAck(_))) = events.poll().await {
            break;
        }
    }
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    let mut messages: Vec<(String, Vec<u8>)> = Vec::with_capacity(n + 2);
    let base = now_ms() - n as u64 - 10_000;
    if format == "sparkplug" {
        let birth = |name: Option<String>, alias: u64| sp::Metric {
            name,
            alias: Some(alias),
            datatype: Some(sp::datatype::DOUBLE),
            value: Some(sp::metric::Value::DoubleValue(0.0)),
            ..Default::default()
        };
        let nbirth = sp::Payload {
            timestamp: Some(now_ms()),
            seq: Some(0),
            metrics: vec![sp::bd_seq(0)],
            ..Default::default()
        };
        messages.push(("spBv1.0/bench/NBIRTH/edge".into(), nbirth.encode_to_vec()));
        let dbirth = sp::Payload {
            timestamp: Some(now_ms()),
            seq: Some(1),
            metrics: (0..k)
                .map(|i| birth(Some(format!("m{i}")), i as u64))
                .collect(),
            ..Default::default()
        };
        messages.push((
            "spBv1.0/bench/DBIRTH/edge/dev".into(),
            dbirth.encode_to_vec(),
        ));
        for m in 0..n {
            let p = sp::Payload {
                timestamp: Some(base + m as u64),
                seq: Some(((m + 2) % 256) as u64),
                metrics: (0..k)
                    .map(|i| sp::Metric {
                        alias: Some(i as u64),
                        timestamp: Some(base + m as u64),
                        value: Some(sp::metric::Value::DoubleValue((m * k + i) as f64 * 0.5)),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            messages.push(("spBv1.0/bench/DDATA/edge/dev".into(), p.encode_to_vec()));
        }
    } else {
        for m in 0..n {
            let values: Vec<String> = (0..k)
                .map(|i| format!("{}", (m * k + i) as f64 * 0.5))
                .collect();
            let body = format!(
                "{{\"ts\":{},\"v\":[{}]}}",
                base + m as u64,
                values.join(",")
            );
            messages.push(("bench/dev/telemetry".into(), body.into_bytes()));
        }
    }
    let total = messages.len();
    let started = Instant::now();
    let sender = client.clone();
    tokio::spawn(async move {
        for (t, p) in messages {
            if sender.publish(t, qos, false, p).await.is_err() {
                return;
            }
        }
    });
    // Until every message was written (QoS 0) or acknowledged (QoS 1).
    let mut done = 0;
    while done < total {
        match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => done += 1,
            Ok(Event::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => done += 1,
            Ok(_) => {}
            Err(e) => {
                eprintln!("mqtt_load: {e}");
                std::process::exit(1);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    println!(
        "{total} messages in {secs:.3} s: {:.0} messages/s",
        total as f64 / secs
    );
}
