//! The host's view of one edge node and its devices, message by message: the node's session
//! (NBIRTH/NDEATH by `bdSeq`) and `seq` (gaps, missing seq, data before the NBIRTH → a
//! rebirth, asked at most once per `stale_after`), and each device's aliases and liveness
//! (reset by an NBIRTH, set by its birth, ended by a death). Pure; what a birth or data
//! message maps to points and samples is `decode.rs`.

use super::decode::{birth, data, ms_to_ns, DeviceOutcome};
use super::{now_ms, SpDevice};
use crate::mqtt::sparkplug::{datatype, metric, topic, Metric, Payload};
use prost::Message;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Per edge node: its session and sequence.
#[derive(Default)]
pub struct NodeState {
    /// The bdSeq of the current NBIRTH.
    pub bd_seq: Option<u64>,
    /// The seq due next (0–255).
    pub next_seq: Option<u8>,
    /// An NBIRTH was seen and no matching NDEATH since.
    pub born: bool,
    pub last_rebirth: Option<Instant>,
}

/// What a message did to its edge node (the same for every device it concerns).
#[derive(Default, Debug)]
pub struct NodeEvent {
    /// An NBIRTH: every device's aliases reset, offline until its DBIRTH.
    pub born: bool,
    /// The NDEATH of the current session: the node and its devices are down.
    pub died: bool,
    /// A seq gap, a message without seq, or a message before the NBIRTH.
    pub rebirth: bool,
    pub problem: Option<String>,
}

/// Per device: the aliases of its current birth, and whether it is alive.
#[derive(Default)]
pub struct SpState {
    pub aliases: HashMap<u64, (String, u32)>,
    /// Datatypes by metric name (a data message without alias names its metric).
    pub datatypes: HashMap<String, u32>,
    pub online: bool,
    /// The current birth had more metrics than `max_metrics`: an alias it did not record is
    /// not a reason for a rebirth.
    pub overflow: bool,
    /// The metrics over `max_metrics` were logged (once).
    pub limit_logged: bool,
}

/// The `bdSeq` metric of an NBIRTH or NDEATH (Int64 in long_value; int_value accepted).
fn bd_seq_of(payload: &Payload) -> Option<u64> {
    payload
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("bdSeq"))
        .and_then(|m| match m.value {
            Some(metric::Value::LongValue(v)) => Some(v),
            Some(metric::Value::IntValue(v)) => Some(u64::from(v)),
            _ => None,
        })
}

/// Follows the node's session and seq through one of its messages (any device's).
pub fn node_message(node: &mut NodeState, kind: &str, payload: &Payload) -> NodeEvent {
    let mut ev = NodeEvent::default();
    let next = |s: u64| u8::try_from(s).ok().map(|s| s.wrapping_add(1));
    match kind {
        "NBIRTH" => {
            node.born = true;
            ev.born = true;
            node.bd_seq = bd_seq_of(payload);
            node.next_seq = payload.seq.and_then(next);
            if payload.seq.is_none() {
                ev.problem = Some("NBIRTH without seq".into());
            }
        }
        "DBIRTH" | "NDATA" | "DDATA" | "DDEATH" => {
            match payload.seq {
                Some(seq) => {
                    if let Some(expected) = node.next_seq {
                        if seq != u64::from(expected) {
                            ev.rebirth = true;
                            ev.problem = Some(format!("seq gap: {seq} where {expected} was due"));
                        }
                    }
                    node.next_seq = next(seq);
                }
                None => {
                    ev.rebirth = true;
                    ev.problem = Some(format!("{kind} without seq"));
                    node.next_seq = None;
                }
            }
            if !node.born {
                ev.rebirth = true;
                ev.problem
                    .get_or_insert_with(|| format!("{kind} before the edge node's NBIRTH"));
            }
        }
        "NDEATH" => {
            // A late will of an older session (another bdSeq) is ignored.
            let bd = bd_seq_of(payload);
            if bd.is_some() && bd == node.bd_seq {
                node.born = false;
                node.next_seq = None;
                ev.died = true;
            }
        }
        // Commands and STATE: not ours to follow.
        _ => {}
    }
    ev
}

/// What one message (already through `node_message`) does to one device it concerns.
pub fn device_message(
    dev: &mut SpDevice,
    state: &mut SpState,
    kind: &str,
    payload: &Payload,
    node: &NodeEvent,
    arrival_ns: i64,
) -> DeviceOutcome {
    let mut out = DeviceOutcome::default();
    // `None`: no payload timestamp; `Some(None)`: one that does not fit.
    let payload_ts = payload.timestamp.map(ms_to_ns);
    match kind {
        "NBIRTH" if dev.device.is_none() => birth(
            dev,
            state,
            &payload.metrics,
            payload_ts,
            arrival_ns,
            &mut out,
        ),
        "NBIRTH" => {
            // The node's new session: the device's aliases are gone, and it is offline until
            // its DBIRTH (the health record says so at the next check if none follows).
            state.aliases.clear();
            state.datatypes.clear();
            state.overflow = false;
            state.online = false;
        }
        "DBIRTH" => birth(
            dev,
            state,
            &payload.metrics,
            payload_ts,
            arrival_ns,
            &mut out,
        ),
        "NDATA" | "DDATA" => {
            if !state.online {
                // Data before a birth: the aliases are unknown.
                out.rebirth = true;
                out.problem = Some(format!("{kind} before the device's birth"));
            }
            data(
                dev,
                state,
                &payload.metrics,
                payload_ts,
                arrival_ns,
                &mut out,
            );
        }
        "NDEATH" if node.died && state.online => {
            state.online = false;
            out.up = Some(false);
            out.problem = Some("the edge node died (NDEATH)".into());
        }
        "DDEATH" if state.online => {
            state.online = false;
            out.up = Some(false);
            out.problem = Some("the device died (DDEATH)".into());
        }
        _ => {}
    }
    out
}

/// The NCMD that asks a node for a rebirth.
pub fn rebirth_request(group: &str, node: &str) -> (String, Vec<u8>) {
    let p = Payload {
        timestamp: Some(now_ms()),
        metrics: vec![Metric {
            name: Some("Node Control/Rebirth".into()),
            datatype: Some(datatype::BOOLEAN),
            value: Some(metric::Value::BooleanValue(true)),
            ..Default::default()
        }],
        ..Default::default()
    };
    (topic(group, "NCMD", node, None), p.encode_to_vec())
}

/// Whether a rebirth may be asked for now (at most once per `every` per node).
pub fn may_ask(node: &mut NodeState, every: Duration) -> bool {
    let now = Instant::now();
    if node
        .last_rebirth
        .is_some_and(|t| now.duration_since(t) < every)
    {
        return false;
    }
    node.last_rebirth = Some(now);
    true
}
