//! The simulator's RTDE side: a Universal Robots controller's RTDE server (port 30004) for
//! each `rtde` device of a configuration. It answers the protocol version (2 only), its
//! controller version (5.11 unless told otherwise: a CB3 is major 3, at most 125 Hz), the
//! output setup (types of the fields it knows — linetap's table and the device's points —
//! `NOT_FOUND` for the rest, recipe 0 for a frequency above its maximum), start and pause;
//! then streams data packages at the frequency asked, each stamped with its own clock
//! (`timestamp` = seconds since the simulator started, exactly one period apart; a package
//! that could not be sent on time is sent late, never skipped), after a text message saying
//! so. Values follow the points' `simulate` expressions (or a plausible wave chosen from the point's name); a point reading
//! a `bit` of a field sets that bit. Faults: `silent` pauses the stream (the connection
//! stays), `drop` closes connections, `garbage` sends bytes that are not RTDE, `slow D`
//! delays each package by D.

use super::bank::{Bank, Fault};
use super::server::lock;
use super::signal::Wave;
use crate::config::{DeviceConfig, PointType};
use crate::source::rtde::config::rtde_point;
use crate::source::rtde::fields;
use crate::source::rtde::protocol::{self as wire, ControllerVersion, FieldType, OutputSetup};
use bytes::{Buf, BytesMut};
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How one element of a field moves.
#[derive(Debug, Clone)]
enum Gen {
    /// The controller's clock.
    Time,
    /// A value in the point's unit, with the point's scale and offset undone.
    Wave { wave: Wave, scale: f64, offset: f64 },
    /// Bits set by bool points (`bit`).
    Bits(Vec<(u8, Wave)>),
}

#[derive(Debug, Clone)]
struct SimField {
    kind: FieldType,
    elements: Vec<Option<Gen>>,
}

/// One simulated controller.
#[derive(Debug, Clone)]
pub struct Controller {
    pub version: ControllerVersion,
    fields: HashMap<String, SimField>,
    /// Fields it lacks although linetap knows them.
    lacks: Vec<String>,
}

impl Controller {
    /// A controller serving `d`'s fields (and every field linetap knows, at 0).
    pub fn for_device(d: &DeviceConfig) -> Controller {
        let mut fields: HashMap<String, SimField> = HashMap::new();
        fields.insert(
            "timestamp".into(),
            SimField {
                kind: FieldType::Double,
                elements: vec![Some(Gen::Time)],
            },
        );
        for p in d.points.iter().filter(|p| p.is_read()) {
            // The controller's clock is its own: a point reading it does not move it.
            let Some(r) = rtde_point(p).filter(|r| r.field != "timestamp") else {
                continue;
            };
            let kind = r.known.unwrap_or(match p.kind {
                PointType::Bool => FieldType::Bool,
                PointType::U8 => FieldType::Uint8,
                PointType::U64 => FieldType::Uint64,
                PointType::U16 | PointType::U32 => FieldType::Uint32,
                PointType::I8 | PointType::I16 | PointType::I32 | PointType::I64 => {
                    FieldType::Int32
                }
                _ => FieldType::Double,
            });
            let f = fields.entry(r.field.clone()).or_insert_with(|| SimField {
                kind,
                elements: vec![None; kind.elements() as usize],
            });
            for e in 0..p.count {
                let element = (r.element.unwrap_or(0) + e) as usize;
                let wave = Wave::of(p, element as u16 + 1, &d.id);
                let Some(slot) = f.elements.get_mut(element) else {
                    continue;
                };
                match r.bit {
                    Some(bit) => match slot {
                        Some(Gen::Bits(bits)) => bits.push((bit, wave)),
                        _ => *slot = Some(Gen::Bits(vec![(bit, wave)])),
                    },
                    None => {
                        *slot = Some(Gen::Wave {
                            wave,
                            scale: p.scale,
                            offset: p.offset,
                        })
                    }
                }
            }
        }
        Controller {
            version: ControllerVersion {
                major: 5,
                minor: 11,
                bugfix: 0,
                build: 108_249,
            },
            fields,
            lacks: Vec::new(),
        }
    }

    /// The same controller with another version (a CB3: major 3).
    pub fn with_version(mut self, version: ControllerVersion) -> Controller {
        self.version = version;
        self
    }

    /// The same controller without `field` (an older firmware): it answers `NOT_FOUND`.
    pub fn without(mut self, field: &str) -> Controller {
        self.fields.remove(field);
        self.lacks.push(field.to_string());
        self
    }

    fn kind_of(&self, name: &str) -> Option<FieldType> {
        if self.lacks.iter().any(|l| l == name) {
            return None;
        }
        self.fields
            .get(name)
            .map(|f| f.kind)
            .or_else(|| fields::lookup(name))
    }

    /// One data package of `names` (types `kinds`) at controller time `t`.
    fn package(
        &self,
        recipe: u8,
        names: &[String],
        kinds: &[FieldType],
        t: f64,
        out: &mut Vec<u8>,
    ) {
        let mut p = Vec::with_capacity(256);
        p.push(recipe);
        for (n, k) in names.iter().zip(kinds) {
            let f = self.fields.get(n);
            for e in 0..k.elements() as usize {
                let x = match f.and_then(|f| f.elements.get(e)).and_then(|g| g.as_ref()) {
                    Some(Gen::Time) => t,
                    Some(Gen::Wave {
                        wave,
                        scale,
                        offset,
                    }) => {
                        let v = wave.value(t);
                        if *scale != 0.0 {
                            (v - offset) / scale
                        } else {
                            v
                        }
                    }
                    Some(Gen::Bits(bits)) => bits
                        .iter()
                        .filter(|(_, w)| w.value(t) != 0.0)
                        .fold(0u64, |acc, (b, _)| acc | (1u64 << b))
                        as f64,
                    None => 0.0,
                };
                let x = match k {
                    FieldType::Double | FieldType::Vector3d | FieldType::Vector6d => x,
                    _ => x.round(),
                };
                wire::encode_element(*k, x, &mut p);
            }
        }
        let _ = wire::frame(wire::DATA_PACKAGE, &p, out);
    }
}

/// Serves `controller` on `listener` until aborted; `bank` holds the device's fault.
pub async fn serve(
    listener: TcpListener,
    controller: Controller,
    bank: Arc<Mutex<Bank>>,
    started: Instant,
) {
    let controller = Arc::new(controller);
    // The connections end with the server (a stopped simulator is a controller switched off).
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        {
            let mut b = lock(&bank);
            b.connections += 1;
            if b.fault == Fault::Drop {
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            controller.clone(),
            bank.clone(),
            started,
        ));
    }
}

/// What a connection set up.
struct Streaming {
    names: Vec<String>,
    kinds: Vec<FieldType>,
    period: f64,
    running: bool,
}

async fn connection(
    mut stream: TcpStream,
    c: Arc<Controller>,
    bank: Arc<Mutex<Bank>>,
    started: Instant,
) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(64 * 1024);
    let mut setup: Option<Streaming> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let mut next_n: u64 = 0;
    loop {
        let streaming = setup.as_ref().is_some_and(|s| s.running);
        tokio::select! {
            r = stream.read_buf(&mut buf) => {
                match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                loop {
                    let (kind, payload, n) = match wire::next_package(&buf) {
                        Ok(Some((k, p, n))) => (k, p.to_vec(), n),
                        Ok(None) => break,
                        Err(_) => return,
                    };
                    buf.advance(n);
                    out.clear();
                    match kind {
                        wire::REQUEST_PROTOCOL_VERSION => {
                            let ok = payload.len() == 2 && u16::from_be_bytes([payload[0], payload[1]]) == wire::PROTOCOL_VERSION;
                            let _ = wire::frame(kind, &[u8::from(ok)], &mut out);
                        }
                        wire::GET_URCONTROL_VERSION => {
                            let _ = wire::frame(kind, &c.version.encode(), &mut out);
                        }
                        wire::SETUP_OUTPUTS => {
                            let Ok((frequency, names)) = wire::decode_setup_outputs_request(&payload) else {
                                return;
                            };
                            let kinds: Vec<Option<FieldType>> = names.iter().map(|n| c.kind_of(n)).collect();
                            let types: Vec<String> = kinds
                                .iter()
                                .map(|k| k.map(|k| k.name()).unwrap_or("NOT_FOUND").to_string())
                                .collect();
                            let ok = frequency > 0.0
                                && frequency <= c.version.max_frequency()
                                && kinds.iter().all(|k| k.is_some());
                            let reply = OutputSetup { recipe: u8::from(ok), types };
                            let _ = wire::frame(kind, &wire::encode_setup_outputs_reply(&reply), &mut out);
                            if ok {
                                setup = Some(Streaming {
                                    names,
                                    kinds: kinds.into_iter().flatten().collect(),
                                    period: 1.0 / frequency,
                                    running: false,
                                });
                            }
                        }
                        wire::SETUP_INPUTS => {
                            let reply = OutputSetup { recipe: 0, types: vec!["NOT_FOUND".into()] };
                            let _ = wire::frame(kind, &wire::encode_setup_outputs_reply(&reply), &mut out);
                        }
                        wire::START => {
                            let ok = match setup.as_mut() {
                                Some(s) => {
                                    s.running = true;
                                    tick = tokio::time::interval(Duration::from_secs_f64(s.period));
                                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                                    // The controller's clock, on the period's grid.
                                    next_n = (started.elapsed().as_secs_f64() / s.period).ceil() as u64;
                                    true
                                }
                                None => false,
                            };
                            let _ = wire::frame(kind, &[u8::from(ok)], &mut out);
                            if let Some(s) = setup.as_ref().filter(|_| ok) {
                                // As a controller's log says what a client set up.
                                let text = wire::Text {
                                    message: format!(
                                        "RTDE client streaming {} fields at {} Hz",
                                        s.names.len(),
                                        (1.0 / s.period).round()
                                    ),
                                    source: "linetap simulator".into(),
                                    level: 3,
                                };
                                let _ = wire::frame(wire::TEXT_MESSAGE, &wire::encode_text(&text), &mut out);
                            }
                        }
                        wire::PAUSE => {
                            if let Some(s) = setup.as_mut() {
                                s.running = false;
                            }
                            let _ = wire::frame(kind, &[1], &mut out);
                        }
                        _ => {}
                    }
                    if !out.is_empty() && stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
            }
            _ = tick.tick(), if streaming => {
                let Some(s) = setup.as_ref() else { continue };
                let fault = lock(&bank).fault.clone();
                out.clear();
                match fault {
                    Fault::Drop => return,
                    Fault::Silent => {
                        next_n += 1;
                        continue;
                    }
                    Fault::Garbage => {
                        let mut rng = rand::rng();
                        let n = rng.random_range(1..64);
                        out.extend((0..n).map(|_| rng.random::<u8>()));
                    }
                    Fault::Slow(d) => {
                        tokio::time::sleep(d).await;
                        c.package(1, &s.names, &s.kinds, next_n as f64 * s.period, &mut out);
                    }
                    _ => c.package(1, &s.names, &s.kinds, next_n as f64 * s.period, &mut out),
                }
                next_n += 1;
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    }
}
