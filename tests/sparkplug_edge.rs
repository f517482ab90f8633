//! linetap as a Sparkplug B edge node (the MQTT sink, format sparkplug-b) against a real
//! Mosquitto, with a test client playing the SCADA host: with `primary_host`, the node births
//! only while the host's STATE says online; when the host goes offline it publishes its NDEATH
//! and disconnects, keeps buffering, and when the host is back it births again with the next
//! bdSeq and sends what it held as historical data; the bdSeq goes on across a restart, and a
//! clean stop publishes the NDEATH itself. A line of 200 robots on a linetap-format sink with
//! the default packet size publishes its catalog in parts.

mod common;

use common::mqtt_client::Client;
use common::*;
use linetap::mqtt::sparkplug::{metric, Payload};
use prost::Message;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn state(online: bool) -> String {
    format!(r#"{{"online": {online}, "timestamp": {}}}"#, now_ms())
}

/// The bdSeq metric of an NBIRTH or NDEATH.
fn bd_seq(p: &Payload) -> u64 {
    p.metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("bdSeq"))
        .and_then(|m| match m.value {
            Some(metric::Value::LongValue(v)) => Some(v),
            _ => None,
        })
        .expect("a bdSeq metric")
}

/// Messages received on `topic` after the first `from` messages: (index, payload).
fn on(host: &Client, topic: &str, from: usize) -> Vec<(usize, Payload)> {
    host.received()
        .into_iter()
        .enumerate()
        .skip(from)
        .filter(|(_, (t, _))| t == topic)
        .map(|(i, (_, p))| {
            (
                i,
                Payload::decode(p.as_slice()).expect("a Sparkplug payload"),
            )
        })
        .collect()
}

#[test]
fn an_edge_node_follows_its_primary_host_offline_and_back_and_keeps_its_bdseq() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let mut host = Client::connect(broker.port, "scada-host", &["spBv1.0/plant-p/#"]);
    host.publish_retained("spBv1.0/STATE/scada", state(true));
    host.wait_acked();
    let line = SimulatedLine::start(dir.path(), &["robot-1"], |a| {
        format!(
            "[line]\nid = \"weld-p\"\nsite = \"plant-p\"\n\n[agent]\ndata_dir = \"{data}\"\nself_interval = \"0s\"\nshutdown_grace = \"5s\"\n\n\
             [sinks.scada]\ntype = \"mqtt\"\nurl = \"{}\"\nformat = \"sparkplug-b\"\nprimary_host = \"scada\"\nflush_interval = \"200ms\"\n\n\
             [[devices]]\nid = \"robot-1\"\nkind = \"robot\"\naddress = \"{}\"\npoll = \"100ms\"\n\n\
             [[devices.points]]\nname = \"value\"\naddress = 0\ntype = \"u16\"\n",
            broker.url, a[0]
        )
    });
    let (nbirth, ndeath, dbirth, ddata) = (
        "spBv1.0/plant-p/NBIRTH/weld-p",
        "spBv1.0/plant-p/NDEATH/weld-p",
        "spBv1.0/plant-p/DBIRTH/weld-p/robot-1",
        "spBv1.0/plant-p/DDATA/weld-p/robot-1",
    );
    let agent = AgentProcess::start(&line.config);
    let births = wait_for(Duration::from_secs(20), || {
        let b = on(&host, nbirth, 0);
        (!b.is_empty() && on(&host, ddata, 0).len() >= 5).then_some(b)
    })
    .unwrap_or_else(|| panic!("no birth and data:\n{}", agent.stderr()));
    let bd0 = bd_seq(&births[0].1);
    let alias = on(&host, dbirth, 0)[0]
        .1
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("robot/value"))
        .and_then(|m| m.alias)
        .expect("robot/value in the DBIRTH");

    // The host goes offline: the node's NDEATH (its bdSeq) within a second, then silence.
    let mark = host.received().len();
    let off = Instant::now();
    host.publish_retained("spBv1.0/STATE/scada", state(false));
    let death = wait_for(Duration::from_secs(5), || {
        on(&host, ndeath, mark).into_iter().next()
    })
    .unwrap_or_else(|| panic!("no NDEATH after the host went offline:\n{}", agent.stderr()));
    let took = off.elapsed();
    eprintln!("NDEATH {took:?} after the host's offline STATE");
    assert!(took < Duration::from_secs(1), "NDEATH after {took:?}");
    assert_eq!(bd_seq(&death.1), bd0);
    // A wall-clock window of buffering: the node must stay silent while the host is away.
    std::thread::sleep(Duration::from_secs(3));
    let after_death = host.received().len();
    assert!(
        on(&host, ddata, death.0 + 1).is_empty() && on(&host, nbirth, death.0 + 1).is_empty(),
        "the node published while its primary host was offline"
    );

    // Back online: a new birth with the next bdSeq, and the held data as historical.
    let back = now_ms();
    host.publish_retained("spBv1.0/STATE/scada", state(true));
    let rebirth = wait_for(Duration::from_secs(20), || {
        on(&host, nbirth, after_death).into_iter().next()
    })
    .unwrap_or_else(|| panic!("no rebirth after the host came back:\n{}", agent.stderr()));
    assert_eq!(bd_seq(&rebirth.1), (bd0 + 1) % 256);
    wait_for(Duration::from_secs(20), || {
        on(&host, ddata, rebirth.0)
            .iter()
            .flat_map(|(_, p)| p.metrics.iter())
            .any(|m| m.timestamp.is_some_and(|t| t > back))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no live data after the rebirth:\n{}", agent.stderr()));

    // Restart: a clean stop publishes the NDEATH (the same bdSeq); the next start goes on.
    let mark = host.received().len();
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    let stop_death = wait_for(Duration::from_secs(5), || {
        on(&host, ndeath, mark).into_iter().next()
    })
    .unwrap_or_else(|| panic!("no NDEATH at the clean stop:\n{log}"));
    assert_eq!(bd_seq(&stop_death.1), (bd0 + 1) % 256);

    // Every poll arrived, the held ones marked historical: the value's timestamps from the
    // first to the last have no gap longer than a few polls.
    let mut live = Vec::new();
    let mut historical = 0;
    for (_, p) in on(&host, ddata, 0) {
        for m in p.metrics.iter().filter(|m| m.alias == Some(alias)) {
            let t = m.timestamp.expect("a metric timestamp");
            if m.is_historical == Some(true) {
                historical += 1;
            }
            live.push(t);
        }
    }
    live.sort_unstable();
    live.dedup();
    let gaps: Vec<u64> = live
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|g| *g > 400)
        .collect();
    eprintln!(
        "{} polls delivered, {historical} of them historical (held while the host was offline)",
        live.len()
    );
    assert!(gaps.is_empty(), "gaps in the data (ms): {gaps:?}");
    assert!(historical >= 20, "only {historical} historical values");

    let mark = host.received().len();
    let agent = AgentProcess::start(&line.config);
    let next = wait_for(Duration::from_secs(20), || {
        on(&host, nbirth, mark).into_iter().next()
    })
    .unwrap_or_else(|| panic!("no birth after the restart:\n{}", agent.stderr()));
    assert_eq!(
        bd_seq(&next.1),
        (bd0 + 2) % 256,
        "the bdSeq goes on across a restart"
    );
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// 200 UR robots (each with 32 more general-purpose registers: 105 points a robot) on a
/// linetap-format MQTT sink with the default packet size (1 MiB): the catalog (1.3 MB) is
/// published in retained parts that each fit, and data is delivered.
#[test]
fn a_catalog_larger_than_a_packet_is_published_in_parts() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    // Everything the sink publishes (no metrics port: 200 simulated robots take many
    // ephemeral ports, and a port picked beforehand could be one of them).
    let consumer = Client::connect(broker.port, "consumer", &["linetap/big/#"]);
    let names: Vec<String> = (0..200).map(|i| format!("ur-{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    let line = SimulatedLine::start(dir.path(), &refs, |a| {
        let mut s = format!(
            "[line]\nid = \"big\"\n\n[agent]\ndata_dir = \"{data}\"\nself_interval = \"0s\"\n\n\
             [sinks.bus]\ntype = \"mqtt\"\nurl = \"{}\"\nformat = \"linetap\"\nflush_interval = \"500ms\"\n\n",
            broker.url
        );
        for (i, addr) in a.iter().enumerate() {
            s.push_str(&format!(
                "[[devices]]\nid = \"ur-{i:03}\"\nprofile = \"ur\"\naddress = \"{addr}\"\npoll = \"2s\"\n\n\
                 [[devices.points]]\nname = \"gp\"\nmeasurement = \"integrator\"\naddress = 128\ntype = \"u16\"\ncount = 32\nindex_tag = \"n\"\n\n"
            ));
        }
        s
    });
    let agent = AgentProcess::start(&line.config);
    // Data delivered: the robots' messages arrive, decodable.
    let data = wait_for(Duration::from_secs(60), || {
        consumer
            .received()
            .into_iter()
            .find(|(t, _)| t.starts_with("linetap/big/ur-"))
    })
    .unwrap_or_else(|| panic!("nothing delivered:\n{}", agent.stderr()));
    let batch = linetap::model::SampleBatch::decode(data.1.as_slice()).unwrap();
    assert!(!batch.samples.is_empty());
    let header = wait_for(Duration::from_secs(20), || {
        consumer
            .received()
            .into_iter()
            .find(|(t, _)| t == "linetap/big/catalog")
    })
    .unwrap_or_else(|| panic!("no catalog:\n{}", agent.stderr()));
    let header_len = header.1.len();
    let header = linetap::model::Catalog::decode(header.1.as_slice()).unwrap();
    eprintln!(
        "catalog topic: {header_len} bytes, {} devices, {} points, parts {}",
        header.devices.len(),
        header.points.len(),
        header.parts
    );
    assert!(
        header.parts >= 2,
        "a catalog of 200 robots in parts: {}",
        header.parts
    );
    assert!(header.devices.is_empty() && header.points.is_empty());
    let got = consumer.received();
    let mut devices = std::collections::BTreeSet::new();
    let mut points = std::collections::BTreeSet::new();
    let mut largest = 0;
    for k in 0..header.parts {
        let (_, bytes) = got
            .iter()
            .find(|(t, _)| *t == format!("linetap/big/catalog/{k}"))
            .unwrap_or_else(|| panic!("part {k} missing"));
        largest = largest.max(bytes.len());
        let part = linetap::model::Catalog::decode(bytes.as_slice()).unwrap();
        devices.extend(part.devices.iter().map(|d| d.name.clone()));
        points.extend(part.points.iter().map(|p| p.id));
    }
    eprintln!(
        "catalog in {} parts, the largest {largest} bytes; {} devices, {} points",
        header.parts,
        devices.len(),
        points.len()
    );
    assert!(largest <= 1 << 20);
    assert_eq!(devices.len(), 200);
    assert!(points.len() >= 200 * 50, "{} points", points.len());
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
}
