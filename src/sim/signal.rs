//! What each simulated point does over time, and how a value is written into registers
//! (the inverse of `source::modbus::decode`).

use crate::config::{PointConfig, PointType, Table, WordOrder};
use std::f64::consts::PI;

/// The shape of a simulated signal, in engineering units (before the inverse of scale/offset).
#[derive(Debug, Clone)]
pub enum Wave {
    /// Joint angle: a smooth back-and-forth trajectory (rad).
    Trajectory {
        amplitude: f64,
        period: f64,
        phase: f64,
    },
    /// The derivative of a trajectory (rad/s).
    Speed {
        amplitude: f64,
        period: f64,
        phase: f64,
    },
    /// Motor current following the motion (A).
    Current {
        base: f64,
        swing: f64,
        period: f64,
        phase: f64,
    },
    /// Warms up from `start` towards `end` over `tau` seconds, with a small ripple (°C).
    Temperature { start: f64, end: f64, tau: f64 },
    /// Cycles through enum codes: codes whose label says "run" hold longest.
    States { codes: Vec<(i64, f64)>, period: f64 },
    /// A counter from `start`: +1 every `every` seconds.
    Counter { start: f64, every: f64 },
    /// On for `duty` of every `period`.
    Toggle { period: f64, phase: f64, duty: f64 },
    /// A fixed value.
    Const(f64),
    /// The point's `simulate` expression over `t`.
    Expr(crate::transform::expr::Bound),
    /// A fixed text.
    Text(String),
    /// Anything else: a slow sine around `mid`.
    Sine {
        mid: f64,
        amplitude: f64,
        period: f64,
        phase: f64,
    },
}

/// One value of the simulated device's register map.
#[derive(Debug, Clone)]
pub struct Signal {
    pub table: Table,
    pub address: u16,
    pub kind: PointType,
    pub order: WordOrder,
    pub bit: Option<u8>,
    /// u8 / i8: the byte it takes; strings: one character per register from this byte.
    pub byte: Option<crate::config::ByteHalf>,
    pub width: u16,
    pub scale: f64,
    pub offset: f64,
    pub wave: Wave,
}

impl Wave {
    /// What element `element` (1-based) of point `p` does: its `simulate` expression, else a
    /// wave chosen from its name (`for_point`).
    pub fn of(p: &PointConfig, element: u16, device_id: &str) -> Wave {
        match p
            .simulate
            .as_ref()
            .and_then(|x| x.bind(element, &mut |_, _, _| None))
        {
            Some(bound) => Wave::Expr(bound),
            None => Wave::for_point(p, element, device_id),
        }
    }

    pub fn for_point(p: &PointConfig, element: u16, device_id: &str) -> Wave {
        let name = p.name.to_ascii_lowercase();
        let i = element as f64;
        let phase = i * 0.7;
        if !p.enum_labels.is_empty() {
            // Mostly running, sometimes idle, rarely faulted; states like "unknown" or "off"
            // only when the map has nothing better. The running state comes first, so a short
            // demo shows a working cell.
            let weight = |label: &str| {
                let l = label.to_ascii_lowercase();
                if l.contains("run") || l.contains("operation_enabled") || l.contains("auto") {
                    20.0
                } else if l.contains("idle") || l.contains("ready") || l.contains("switched_on") {
                    5.0
                } else if l.contains("fault") && !l.contains("reaction") {
                    2.0
                } else {
                    0.0
                }
            };
            let mut codes: Vec<(i64, f64)> = p
                .enum_labels
                .iter()
                .map(|(c, l)| (*c, weight(l)))
                .filter(|c| c.1 > 0.0)
                .collect();
            if codes.is_empty() {
                codes = p.enum_labels.iter().map(|(c, _)| (*c, 5.0)).collect();
            }
            codes.sort_by(|a, b| b.1.total_cmp(&a.1));
            let period = codes.iter().map(|c| c.1).sum();
            return Wave::States { codes, period };
        }
        let has = |w: &str| name.contains(w);
        match p.kind {
            PointType::Bool => {
                // Stops, faults and alarms are rare; other flags toggle.
                let rare = ["stop", "emergency", "fault", "alarm", "error", "warning"]
                    .iter()
                    .any(|w| has(w));
                let duty = if rare { 0.03 } else { 0.5 };
                return Wave::Toggle {
                    period: 10.0 + 7.0 * i,
                    phase,
                    duty,
                };
            }
            PointType::String => return Wave::Text(format!("{device_id}-program")),
            _ => {}
        }
        let tcp_axis = p.measurement == "tcp" && name.len() <= 2;
        if tcp_axis && (name == "x" || name == "y" || name == "z") {
            Wave::Sine {
                mid: 0.5,
                amplitude: 0.3,
                period: 8.0,
                phase,
            }
        } else if tcp_axis {
            Wave::Sine {
                mid: 0.0,
                amplitude: 0.5,
                period: 8.0,
                phase,
            }
        } else if has("rpm") {
            Wave::Sine {
                mid: 0.0,
                amplitude: 1500.0,
                period: 8.0,
                phase,
            }
        } else if has("counts") {
            Wave::Trajectory {
                amplitude: 200_000.0,
                period: 8.0,
                phase,
            }
        } else if has("position") || has("angle") || name == "q" {
            Wave::Trajectory {
                amplitude: 1.2,
                period: 8.0,
                phase,
            }
        } else if has("override") {
            Wave::Sine {
                mid: 90.0,
                amplitude: 10.0,
                period: 60.0,
                phase,
            }
        } else if has("pct") || has("load") {
            Wave::Current {
                base: 30.0,
                swing: 25.0,
                period: 8.0,
                phase,
            }
        } else if has("speed") || has("velocity") {
            Wave::Speed {
                amplitude: 1.2,
                period: 8.0,
                phase,
            }
        } else if has("current") || has("torque") {
            Wave::Current {
                base: 2.0,
                swing: 1.5,
                period: 8.0,
                phase,
            }
        } else if has("voltage") {
            Wave::Sine {
                mid: 560.0,
                amplitude: 3.0,
                period: 20.0,
                phase,
            }
        } else if has("temp") {
            Wave::Temperature {
                start: 28.0 + i,
                end: 45.0 + i * 2.0,
                tau: 900.0,
            }
        } else if has("alarm") || has("error") || has("code") || has("warning") {
            Wave::Const(0.0)
        } else if has("power_on") || name.ends_with("_s") {
            Wave::Counter {
                start: 86_400.0,
                every: 1.0,
            }
        } else if has("count") || has("cycle") {
            Wave::Counter {
                start: 1_000.0,
                every: 12.0,
            }
        } else {
            Wave::Sine {
                mid: 50.0,
                amplitude: 20.0,
                period: 30.0,
                phase,
            }
        }
    }

    /// The engineering value at `t` seconds since the simulation started.
    pub fn value(&self, t: f64) -> f64 {
        match self {
            Wave::Expr(e) => e.eval(&[], t),
            Wave::Trajectory {
                amplitude,
                period,
                phase,
            } => amplitude * (2.0 * PI * t / period + phase).sin(),
            Wave::Speed {
                amplitude,
                period,
                phase,
            } => amplitude * 2.0 * PI / period * (2.0 * PI * t / period + phase).cos(),
            Wave::Current {
                base,
                swing,
                period,
                phase,
            } => base + swing * (2.0 * PI * t / period + phase).cos().abs(),
            Wave::Temperature { start, end, tau } => {
                start + (end - start) * (1.0 - (-t / tau).exp()) + 0.2 * (t / 7.0).sin()
            }
            Wave::States { codes, period } => {
                let mut at = t.rem_euclid(*period);
                for (code, hold) in codes {
                    if at < *hold {
                        return *code as f64;
                    }
                    at -= hold;
                }
                codes.first().map(|c| c.0 as f64).unwrap_or(0.0)
            }
            Wave::Counter { start, every } => start + (t / every).floor(),
            Wave::Toggle {
                period,
                phase,
                duty,
            } => ((t / period + phase).rem_euclid(1.0) < *duty) as u8 as f64,
            Wave::Const(v) => *v,
            Wave::Text(_) => 0.0,
            Wave::Sine {
                mid,
                amplitude,
                period,
                phase,
            } => mid + amplitude * (2.0 * PI * t / period + phase).sin(),
        }
    }
}

/// Splits a big-endian byte string into registers in `order` (the inverse of `decode::combine`).
pub fn words_for(bytes: &[u8], order: WordOrder, out: &mut [u16]) {
    let n = bytes.len() / 2;
    for (i, slot) in out.iter_mut().enumerate().take(n) {
        let src = match order {
            WordOrder::ABCD | WordOrder::BADC => i,
            WordOrder::CDAB | WordOrder::DCBA => n - 1 - i,
        };
        let w = u16::from_be_bytes([bytes[2 * src], bytes[2 * src + 1]]);
        *slot = match order {
            WordOrder::BADC | WordOrder::DCBA => w.swap_bytes(),
            _ => w,
        };
    }
}

impl Signal {
    /// Writes the raw registers for engineering value `v` into `regs` (which starts at the
    /// signal's own address).
    pub fn encode(&self, v: f64, regs: &mut [u16]) {
        let raw = (v - self.offset) / self.scale;
        let mut buf = [0u8; 8];
        let bytes: &[u8] = match self.kind {
            PointType::U8 | PointType::I8 => {
                let b = if self.kind == PointType::U8 {
                    raw.round().clamp(0.0, 255.0) as u8
                } else {
                    raw.round().clamp(-128.0, 127.0) as i8 as u8
                };
                // The other byte belongs to another point: keep it.
                if let Some(r) = regs.first_mut() {
                    *r = match self.byte {
                        Some(crate::config::ByteHalf::High) => (*r & 0x00ff) | (b as u16) << 8,
                        _ => (*r & 0xff00) | b as u16,
                    };
                }
                return;
            }
            PointType::F16 => {
                buf[..2].copy_from_slice(&half::f16::from_f64(raw).to_bits().to_be_bytes());
                &buf[..2]
            }
            PointType::U16 => {
                buf[..2].copy_from_slice(
                    &(raw.round().clamp(0.0, u16::MAX as f64) as u16).to_be_bytes(),
                );
                &buf[..2]
            }
            PointType::I16 => {
                buf[..2].copy_from_slice(
                    &(raw.round().clamp(i16::MIN as f64, i16::MAX as f64) as i16).to_be_bytes(),
                );
                &buf[..2]
            }
            PointType::U32 => {
                buf[..4].copy_from_slice(
                    &(raw.round().clamp(0.0, u32::MAX as f64) as u32).to_be_bytes(),
                );
                &buf[..4]
            }
            PointType::I32 => {
                buf[..4].copy_from_slice(&(raw.round() as i32).to_be_bytes());
                &buf[..4]
            }
            PointType::F32 => {
                buf[..4].copy_from_slice(&(raw as f32).to_be_bytes());
                &buf[..4]
            }
            PointType::U64 => {
                buf.copy_from_slice(&(raw.round().max(0.0) as u64).to_be_bytes());
                &buf
            }
            PointType::I64 => {
                buf.copy_from_slice(&(raw.round() as i64).to_be_bytes());
                &buf
            }
            PointType::F64 => {
                buf.copy_from_slice(&raw.to_be_bytes());
                &buf
            }
            PointType::Bool => {
                if let (Some(bit), Some(r)) = (self.bit, regs.first_mut()) {
                    if v != 0.0 {
                        *r |= 1 << bit;
                    } else {
                        *r &= !(1 << bit);
                    }
                }
                return;
            }
            PointType::String => {
                if let Wave::Text(text) = &self.wave {
                    let mut bytes = text.as_bytes().to_vec();
                    if let Some(b) = self.byte {
                        // One character per register, in the chosen byte.
                        bytes.resize(regs.len(), 0);
                        for (r, c) in regs.iter_mut().zip(bytes) {
                            *r = match b {
                                crate::config::ByteHalf::High => (c as u16) << 8,
                                crate::config::ByteHalf::Low => c as u16,
                            };
                        }
                    } else {
                        bytes.resize(regs.len() * 2, 0);
                        // ABCD: high byte first; BADC: low byte first.
                        words_for(&bytes, self.order, regs);
                    }
                }
                return;
            }
        };
        let order = if bytes.len() == 2 {
            WordOrder::ABCD
        } else {
            self.order
        };
        words_for(bytes, order, regs);
        if bytes.len() == 2 && matches!(self.order, WordOrder::BADC | WordOrder::DCBA) {
            if let Some(r) = regs.first_mut() {
                *r = r.swap_bytes();
            }
        }
    }
}
