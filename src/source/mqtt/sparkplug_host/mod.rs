//! Devices that speak Sparkplug B 3.0 (`format = "sparkplug-b"`): linetap as a host
//! application for the edge nodes and devices a configuration names
//! (shared/reference/sparkplug-b.md, section 6).
//!
//! - STATE: on a broker with Sparkplug devices linetap publishes `spBv1.0/STATE/HOST_ID`,
//!   `{"online":true,"timestamp":T}` (QoS 1, retained) after every CONNACK and its
//!   subscriptions; `{"online":false,"timestamp":T}` is the connection's will and is published
//!   before a clean disconnect. T is the time of the connection's CONNECT.
//! - seq is followed per edge node on everything the node sends: linetap subscribes to the
//!   node's topics (NBIRTH, NDEATH, NDATA and every device's DBIRTH/DDATA/DDEATH), so a device
//!   that no point names advances seq (and is otherwise ignored) instead of looking like a gap.
//! - Births (NBIRTH/DBIRTH) give each metric's name, alias and datatype; an NBIRTH resets the
//!   aliases of every device of the node, and the devices are offline until their DBIRTH.
//!   Data (NDATA/DDATA) arrives by alias; a death (NDEATH with the matching bdSeq, DDEATH)
//!   marks the device down.
//! - A seq gap, a message without seq, data before a birth or an unknown alias asks the node
//!   for a rebirth (NCMD `Node Control/Rebirth`, at most once per `stale_after`).
//! - Wire values are range-checked: a seq above 255 makes the message malformed; a timestamp
//!   that does not fit nanoseconds in an i64 makes its values rejected. No input panics.
//! - A point without `type` takes its birth metric's datatype. A device without points takes
//!   every metric of its births (the catalog grows at run time), at most `max_metrics`; the
//!   metrics beyond are counted (`linetap_sparkplug_metrics_over_limit_total`) and logged once.
//!
//! `node.rs` follows each edge node's session and seq and each device's aliases and liveness;
//! `decode.rs` turns births and data into points and samples; `host.rs` is the host the
//! broker task drives (STATE, messages to devices, catalog changes, rebirth requests).

mod decode;
mod host;
mod node;

pub use decode::{decode, ms_to_ns, DeviceOutcome};
pub use host::{state_online, state_payload, Host, HostState, Publish};
pub use node::{
    device_message, may_ask, node_message, rebirth_request, NodeEvent, NodeState, SpState,
};

use crate::model::PointDescriptor;
use crate::mqtt::sparkplug::topic;
use crate::source::mqtt::payload::PointRead;
use std::collections::HashMap;

/// A configured point without `type`: what the catalog says of it, until a birth says more.
pub struct FromBirth {
    /// Its elements' descriptors, as registered.
    pub descriptors: Vec<PointDescriptor>,
    /// Scaled points are written as doubles whatever the datatype.
    pub scaled: bool,
}

/// What a Sparkplug device is and reads.
pub struct SpDevice {
    pub group: String,
    pub node: String,
    pub device: Option<String>,
    /// The measurement of metrics taken from births (the device's kind).
    pub measurement: String,
    /// Points by metric name (configured, or added from births).
    pub by_name: HashMap<String, PointRead>,
    /// No configured points: every birth metric becomes a point.
    pub auto: bool,
    /// Configured points without `type`, by metric name: typed by the birth's datatype.
    pub from_birth: HashMap<String, FromBirth>,
    /// The most metrics a birth may bring (and, without configured points, the most points).
    pub max_metrics: usize,
}

impl SpDevice {
    /// The topics the device's messages (and every other message of its edge node) arrive on.
    pub fn subscriptions(&self) -> Vec<String> {
        node_subscriptions(&self.group, &self.node)
    }

    /// Whether a message of `kind` from node `g`/`n` (device `dev`) concerns this device.
    fn concerns(&self, g: &str, n: &str, kind: &str, dev: Option<&str>) -> bool {
        if self.group != g || self.node != n {
            return false;
        }
        match kind {
            "NBIRTH" | "NDEATH" => true,
            "NDATA" => self.device.is_none(),
            "DBIRTH" | "DDATA" | "DDEATH" => dev.is_some() && self.device.as_deref() == dev,
            _ => false,
        }
    }
}

/// Everything an edge node sends: its own messages and those of every device under it.
pub fn node_subscriptions(g: &str, n: &str) -> Vec<String> {
    vec![
        topic(g, "NBIRTH", n, None),
        topic(g, "NDEATH", n, None),
        topic(g, "NDATA", n, None),
        topic(g, "DBIRTH", n, Some("+")),
        topic(g, "DDATA", n, Some("+")),
        topic(g, "DDEATH", n, Some("+")),
    ]
}

/// `spBv1.0/GROUP/TYPE/NODE[/DEVICE]`.
pub fn parse_topic(t: &str) -> Option<(&str, &str, &str, Option<&str>)> {
    let mut parts = t.split('/');
    if parts.next()? != "spBv1.0" {
        return None;
    }
    let group = parts.next()?;
    let kind = parts.next()?;
    let node = parts.next()?;
    let device = parts.next();
    if parts.next().is_some() {
        return None;
    }
    Some((group, kind, node, device))
}

/// Handles one message of a node for one device: `node_message` then `device_message` (what
/// the broker loop does, for a node with this one device; used by tests).
pub fn handle(
    dev: &mut SpDevice,
    state: &mut SpState,
    node: &mut NodeState,
    kind: &str,
    bytes: &[u8],
    arrival_ns: i64,
) -> Result<DeviceOutcome, String> {
    let payload = decode(kind, bytes)?;
    let ev = node_message(node, kind, &payload);
    let (g, n) = (dev.group.clone(), dev.node.clone());
    let mut out = if dev.concerns(&g, &n, kind, dev.device.clone().as_deref()) {
        device_message(dev, state, kind, &payload, &ev, arrival_ns)
    } else {
        DeviceOutcome::default()
    };
    out.rebirth |= ev.rebirth;
    if ev.problem.is_some() {
        out.problem = ev.problem;
    }
    Ok(out)
}

fn now_ms() -> u64 {
    u64::try_from(crate::model::now_ns() / 1_000_000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PointType;
    use crate::model::{DataType, Value};
    use crate::mqtt::sparkplug::{datatype, metric, Metric, Payload};
    use proptest::prelude::*;
    use prost::Message;

    fn device(auto: bool) -> SpDevice {
        SpDevice {
            group: "g".into(),
            node: "n".into(),
            device: Some("d".into()),
            measurement: "robot".into(),
            by_name: HashMap::new(),
            auto,
            from_birth: HashMap::new(),
            max_metrics: 2_000,
        }
    }

    fn m(name: Option<&str>, alias: Option<u64>, dt: Option<u32>, v: metric::Value) -> Metric {
        Metric {
            name: name.map(Into::into),
            alias,
            datatype: dt,
            value: Some(v),
            ..Default::default()
        }
    }

    fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            seq,
            timestamp: Some(1_000),
            metrics,
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn point(id: u32, kind: PointType) -> PointRead {
        PointRead {
            ids: vec![id],
            pointer: String::new(),
            kind,
            scaling: None,
        }
    }

    #[test]
    fn topics() {
        assert_eq!(
            parse_topic("spBv1.0/g/DDATA/n/d"),
            Some(("g", "DDATA", "n", Some("d")))
        );
        assert_eq!(
            parse_topic("spBv1.0/g/NBIRTH/n"),
            Some(("g", "NBIRTH", "n", None))
        );
        assert_eq!(parse_topic("spBv1.0/g/DDATA/n/d/x"), None);
        assert_eq!(parse_topic("other/g/DDATA/n"), None);
        assert_eq!(parse_topic("spBv1.0/STATE/h"), None);
        assert!(node_subscriptions("g", "n").contains(&"spBv1.0/g/DDATA/n/+".to_string()));
    }

    #[test]
    fn a_birth_then_data_by_alias_and_a_gap() {
        let mut dev = device(true);
        let (mut st, mut node) = (SpState::default(), NodeState::default());
        let nbirth = payload(Some(0), vec![]);
        handle(&mut dev, &mut st, &mut node, "NBIRTH", &nbirth, 5).unwrap();
        let birth = payload(
            Some(1),
            vec![m(
                Some("Temp"),
                Some(7),
                Some(datatype::DOUBLE),
                metric::Value::DoubleValue(20.5),
            )],
        );
        let out = handle(&mut dev, &mut st, &mut node, "DBIRTH", &birth, 5).unwrap();
        assert_eq!(out.up, Some(true));
        assert_eq!(out.new_points.len(), 1);
        assert_eq!(out.pending.len(), 1);
        assert!(!out.rebirth);
        let data = payload(
            Some(3),
            vec![m(None, Some(9), None, metric::Value::DoubleValue(1.0))],
        );
        let out = handle(&mut dev, &mut st, &mut node, "DDATA", &data, 5).unwrap();
        // seq 3 where 2 was due, and an unknown alias.
        assert!(out.rebirth);
        assert_eq!(out.rejected, 1);
    }

    /// The issue's case: devices A and B under one node, only A configured. B's births and
    /// data, and the node's NDATA, advance seq: no gap, no rebirth.
    #[test]
    fn messages_of_other_devices_advance_seq() {
        let mut a = device(false);
        a.by_name.insert("T".into(), point(1, PointType::F64));
        let (mut st, mut node) = (SpState::default(), NodeState::default());
        let t = |v| {
            vec![m(
                Some("T"),
                Some(1),
                Some(datatype::DOUBLE),
                metric::Value::DoubleValue(v),
            )]
        };
        let mut seq = 0u64;
        let mut next = || {
            let s = seq;
            seq = (seq + 1) % 256;
            Some(s)
        };
        let out = handle(
            &mut a,
            &mut st,
            &mut node,
            "NBIRTH",
            &payload(next(), vec![]),
            1,
        )
        .unwrap();
        assert!(!out.rebirth);
        let out = handle(
            &mut a,
            &mut st,
            &mut node,
            "DBIRTH",
            &payload(next(), t(1.0)),
            1,
        )
        .unwrap();
        assert!(!out.rebirth && out.samples.len() == 1);
        for i in 0..600 {
            // B (not configured) and the node's own data: only the node follows them.
            let kind = if i % 3 == 0 { "NDATA" } else { "DDATA" };
            let ev = node_message(
                &mut node,
                kind,
                &decode(kind, &payload(next(), vec![])).unwrap(),
            );
            assert!(!ev.rebirth, "{:?}", ev.problem);
            let out = handle(
                &mut a,
                &mut st,
                &mut node,
                "DDATA",
                &payload(next(), t(i as f64)),
                1,
            )
            .unwrap();
            assert!(!out.rebirth, "{:?}", out.problem);
            assert_eq!(out.samples[0].value, Some(Value::DoubleValue(i as f64)));
        }
    }

    #[test]
    fn an_nbirth_resets_aliases_and_devices_wait_for_their_dbirth() {
        let mut dev = device(false);
        dev.by_name.insert("X".into(), point(1, PointType::F64));
        dev.by_name.insert("Y".into(), point(2, PointType::F64));
        let (mut st, mut node) = (SpState::default(), NodeState::default());
        let birth = |seq, x_alias, y_alias| {
            payload(
                Some(seq),
                vec![
                    m(
                        Some("X"),
                        Some(x_alias),
                        Some(datatype::DOUBLE),
                        metric::Value::DoubleValue(0.0),
                    ),
                    m(
                        Some("Y"),
                        Some(y_alias),
                        Some(datatype::DOUBLE),
                        metric::Value::DoubleValue(0.0),
                    ),
                ],
            )
        };
        let by_alias = |seq, alias, v| {
            payload(
                Some(seq),
                vec![m(None, Some(alias), None, metric::Value::DoubleValue(v))],
            )
        };
        handle(
            &mut dev,
            &mut st,
            &mut node,
            "NBIRTH",
            &payload(Some(0), vec![]),
            1,
        )
        .unwrap();
        handle(&mut dev, &mut st, &mut node, "DBIRTH", &birth(1, 10, 11), 1).unwrap();
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "DDATA",
            &by_alias(2, 10, 5.0),
            1,
        )
        .unwrap();
        assert_eq!(out.samples[0].point, 1);
        // A new session: aliases swapped. Until the DBIRTH the device is offline and its
        // aliases unknown.
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "NBIRTH",
            &payload(Some(0), vec![]),
            1,
        )
        .unwrap();
        assert!(!st.online && st.aliases.is_empty() && out.up.is_none());
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "DDATA",
            &by_alias(1, 10, 6.0),
            1,
        )
        .unwrap();
        assert!(out.rebirth && out.samples.is_empty() && out.rejected == 1);
        let out = handle(&mut dev, &mut st, &mut node, "DBIRTH", &birth(2, 11, 10), 1).unwrap();
        assert_eq!(out.up, Some(true));
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "DDATA",
            &by_alias(3, 10, 7.0),
            1,
        )
        .unwrap();
        assert!(!out.rebirth);
        assert_eq!(out.samples[0].point, 2, "alias 10 is Y now");
        assert_eq!(out.samples[0].value, Some(Value::DoubleValue(7.0)));
    }

    #[test]
    fn a_point_without_type_takes_the_birth_datatype() {
        let mut dev = device(false);
        dev.by_name.insert("Parts".into(), point(4, PointType::F64));
        dev.from_birth.insert(
            "Parts".into(),
            FromBirth {
                descriptors: vec![PointDescriptor {
                    id: 4,
                    name: "parts".into(),
                    data_type: DataType::Double as i32,
                    ..Default::default()
                }],
                scaled: false,
            },
        );
        let (mut st, mut node) = (SpState::default(), NodeState::default());
        // Data before any birth: the datatype is unknown, the value not written as a double.
        let early = payload(
            None,
            vec![m(Some("Parts"), None, None, metric::Value::IntValue(1))],
        );
        let out = handle(&mut dev, &mut st, &mut node, "DDATA", &early, 1).unwrap();
        assert!(out.samples.is_empty() && out.rejected == 1);
        let birth = payload(
            Some(0),
            vec![m(
                Some("Parts"),
                Some(3),
                Some(datatype::UINT32),
                metric::Value::IntValue(4_000_000_000),
            )],
        );
        let out = handle(&mut dev, &mut st, &mut node, "DBIRTH", &birth, 1).unwrap();
        assert_eq!(out.retyped.len(), 1);
        assert_eq!(out.retyped[0].data_type, DataType::Uint32 as i32);
        assert_eq!(out.samples[0].value, Some(Value::IntValue(4_000_000_000)));
        let data = payload(
            Some(1),
            vec![m(None, Some(3), None, metric::Value::IntValue(7))],
        );
        let out = handle(&mut dev, &mut st, &mut node, "DDATA", &data, 1).unwrap();
        assert_eq!(out.samples[0].value, Some(Value::IntValue(7)));
        // The next birth with the same datatype changes nothing in the catalog.
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "DBIRTH",
            &payload(
                Some(2),
                vec![m(
                    Some("Parts"),
                    Some(3),
                    Some(datatype::UINT32),
                    metric::Value::IntValue(8),
                )],
            ),
            1,
        )
        .unwrap();
        assert!(out.retyped.is_empty());
    }

    #[test]
    fn births_bring_at_most_max_metrics() {
        let mut dev = device(true);
        dev.max_metrics = 3;
        let (mut st, mut node) = (SpState::default(), NodeState::default());
        node.born = true;
        let metrics: Vec<Metric> = (0..5)
            .map(|i| {
                m(
                    Some(&format!("M{i}")),
                    Some(i),
                    Some(datatype::DOUBLE),
                    metric::Value::DoubleValue(i as f64),
                )
            })
            .collect();
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "DBIRTH",
            &payload(Some(0), metrics),
            1,
        )
        .unwrap();
        assert_eq!(out.new_points.len(), 3);
        assert_eq!(out.over_limit, 2);
        assert_eq!(out.pending.len(), 3);
        // Data of a metric beyond the limit: not taken, and no reason for a rebirth.
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "DDATA",
            &payload(
                Some(1),
                vec![m(None, Some(4), None, metric::Value::DoubleValue(1.0))],
            ),
            1,
        )
        .unwrap();
        assert!(!out.rebirth && out.rejected == 0 && out.samples.is_empty());
    }

    #[test]
    fn wire_values_out_of_range() {
        assert!(decode("DDATA", &payload(Some(256), vec![])).is_err());
        assert!(decode("DDATA", &payload(Some(u64::MAX), vec![])).is_err());
        assert!(decode("NDEATH", &payload(Some(u64::MAX), vec![])).is_ok());
        let mut node = NodeState::default();
        node_message(
            &mut node,
            "NBIRTH",
            &decode("NBIRTH", &payload(Some(255), vec![])).unwrap(),
        );
        assert_eq!(node.next_seq, Some(0));
        assert_eq!(ms_to_ns(u64::MAX), None);
        assert_eq!(
            ms_to_ns(i64::MAX as u64 / 1_000_000),
            Some(i64::MAX / 1_000_000 * 1_000_000)
        );
        assert_eq!(ms_to_ns(i64::MAX as u64 / 1_000_000 + 1), None);
        let mut dev = device(true);
        let (mut st, mut node) = (SpState::default(), NodeState::default());
        let mut late = m(
            Some("A"),
            Some(1),
            Some(datatype::DOUBLE),
            metric::Value::DoubleValue(1.0),
        );
        late.timestamp = Some(u64::MAX);
        let out = handle(
            &mut dev,
            &mut st,
            &mut node,
            "DBIRTH",
            &payload(Some(0), vec![late]),
            1,
        )
        .unwrap();
        assert_eq!(out.rejected, 1);
        assert!(out.pending.is_empty());
        // (The broker loop adds the new point to the catalog.)
        dev.by_name.insert("A".into(), point(1, PointType::F64));
        let p = Payload {
            seq: Some(1),
            timestamp: Some(u64::MAX),
            metrics: vec![m(None, Some(1), None, metric::Value::DoubleValue(2.0))],
            ..Default::default()
        };
        let out = handle(&mut dev, &mut st, &mut node, "DDATA", &p.encode_to_vec(), 1).unwrap();
        assert_eq!(out.rejected, 1);
    }

    #[test]
    fn state_payloads() {
        assert_eq!(
            state_payload(true, 5),
            br#"{"online":true,"timestamp":5}"#.to_vec()
        );
        assert_eq!(
            state_online(br#"{"online":false,"timestamp":1}"#),
            Some(false)
        );
        assert_eq!(state_online(b"OFFLINE"), None);
        let s = HostState::new("h");
        assert_eq!(s.topic, "spBv1.0/STATE/h");
        let will = s.will();
        let birth = s.birth();
        let t = |b: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(b).unwrap()["timestamp"].as_u64()
        };
        assert_eq!(
            t(&will),
            t(&birth),
            "the will and the birth of a connection share T"
        );
    }

    fn any_value() -> impl Strategy<Value = metric::Value> {
        prop_oneof![
            any::<u32>().prop_map(metric::Value::IntValue),
            any::<u64>().prop_map(metric::Value::LongValue),
            any::<f32>().prop_map(metric::Value::FloatValue),
            any::<f64>().prop_map(metric::Value::DoubleValue),
            any::<bool>().prop_map(metric::Value::BooleanValue),
            ".{0,4}".prop_map(metric::Value::StringValue),
            proptest::collection::vec(any::<u8>(), 0..4).prop_map(metric::Value::BytesValue),
        ]
    }

    fn edge(max: u64) -> impl Strategy<Value = u64> {
        prop_oneof![
            0..=max,
            Just(u64::MAX),
            Just(u64::MAX - 1),
            Just(255u64),
            Just(256u64),
            Just(i64::MAX as u64),
            any::<u64>()
        ]
    }

    fn any_metric() -> impl Strategy<Value = Metric> {
        (
            proptest::option::of(prop_oneof![
                Just("bdSeq".to_string()),
                Just("A".to_string()),
                Just("B".to_string()),
                "[a-c]{1,2}"
            ]),
            proptest::option::of(edge(8)),
            proptest::option::of(prop_oneof![0u32..=20, any::<u32>()]),
            proptest::option::of(edge(2_000_000_000_000)),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any_value()),
        )
            .prop_map(
                |(name, alias, datatype, timestamp, is_null, value)| Metric {
                    name,
                    alias,
                    datatype,
                    timestamp,
                    is_null,
                    value,
                    ..Default::default()
                },
            )
    }

    fn any_message() -> impl Strategy<Value = (usize, bool, Option<u64>, Option<u64>, Vec<Metric>)>
    {
        (
            0usize..7,
            any::<bool>(),
            proptest::option::of(edge(300)),
            proptest::option::of(edge(2_000_000_000_000)),
            proptest::collection::vec(any_metric(), 0..6),
        )
    }

    proptest! {
        /// Random bytes on every Sparkplug topic: an error or an outcome, never a panic.
        #[test]
        fn random_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut dev = device(true);
            let (mut st, mut node) = (SpState::default(), NodeState::default());
            for kind in ["NBIRTH", "DBIRTH", "NDATA", "DDATA", "NDEATH", "DDEATH", "NCMD"] {
                let _ = handle(&mut dev, &mut st, &mut node, kind, &bytes, 1);
            }
        }

        /// Sequences of well-formed payloads with any seq, bdSeq, alias, datatype, value and
        /// timestamp (up to u64::MAX), for the device or another device of its node: never a
        /// panic, seq always 0–255, samples only with times that fit.
        #[test]
        fn host_handling_never_panics(
            messages in proptest::collection::vec(any_message(), 1..25),
            max_metrics in 1usize..4,
            auto in any::<bool>(),
        ) {
            let mut dev = device(auto);
            dev.max_metrics = max_metrics;
            if !auto {
                dev.by_name.insert("A".into(), point(1, PointType::F64));
                dev.by_name.insert("B".into(), point(2, PointType::U32));
                dev.from_birth.insert("A".into(), FromBirth { descriptors: vec![PointDescriptor::default()], scaled: false });
            }
            let (mut st, mut node) = (SpState::default(), NodeState::default());
            let kinds = ["NBIRTH", "DBIRTH", "NDATA", "DDATA", "NDEATH", "DDEATH", "NCMD"];
            for (k, other, seq, ts, metrics) in messages {
                let kind = kinds[k];
                let bytes = Payload { seq, timestamp: ts, metrics, ..Default::default() }.encode_to_vec();
                if other {
                    // Another device of the node: only the node follows it.
                    if let Ok(p) = decode(kind, &bytes) {
                        node_message(&mut node, kind, &p);
                    }
                } else if let Ok(out) = handle(&mut dev, &mut st, &mut node, kind, &bytes, 7) {
                    for s in &out.samples {
                        prop_assert!(s.timestamp_ns >= 0);
                    }
                    prop_assert!(out.new_points.len() <= max_metrics);
                    // What the broker loop does once the catalog gave them ids.
                    for (i, (name, _, kind)) in out.new_points.iter().enumerate() {
                        dev.by_name.insert(name.clone(), point(100 + i as u32, *kind));
                    }
                }
                prop_assert!(!auto || dev.by_name.len() <= max_metrics);
                prop_assert!(st.aliases.len() <= max_metrics + 2);
            }
        }
    }
}
