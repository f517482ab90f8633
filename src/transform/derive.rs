//! Derived points (PRODUCT.md, "Device profiles"): values computed from other points of the
//! same device — a masked state table over a statusword, one bit of a register, or an
//! expression (the UR joint angle from its two registers) — and hidden points, which are read
//! and used here but never written. Runs first in a device's chain.
//!
//! Every numeric value of the device has a slot holding its last known value; a batch updates
//! the slots of the samples it carries, and each derived point whose inputs were among them is
//! computed (in declaration order, so a derived point may read an earlier one) and added with
//! the newest input's timestamp. Nothing is allocated per batch beyond the added samples.

use super::{key_index, numeric, time_of, DeviceView, Transform};
use crate::config::{Derive, DeviceConfig, PointType, StateRule};
use crate::model::{Quality, Sample, SampleBatch, Value};
use crate::source::describe;
use std::collections::HashMap;
use std::sync::Arc;

enum Calc {
    States { input: usize, rows: Vec<StateRule> },
    Bit { input: usize, bit: u8 },
    Expr(crate::transform::expr::Bound),
}

struct Output {
    id: u32,
    /// Its own slot (later derived points may read it).
    slot: usize,
    kind: PointType,
    calc: Calc,
    /// Slots it reads.
    inputs: Vec<usize>,
}

pub struct Derived {
    config: Arc<DeviceConfig>,
    /// Point id → slot, for the values read.
    slots: HashMap<u32, usize>,
    values: Vec<f64>,
    /// Slots updated by the batch being processed.
    fresh: Vec<bool>,
    outputs: Vec<Output>,
    /// Ids of hidden points (sorted).
    hidden: Vec<u32>,
}

impl Derived {
    /// Whether a device needs this step: it has derived or hidden points.
    pub fn applies(config: &DeviceConfig) -> bool {
        config.points.iter().any(|p| p.hidden || p.derive.is_some())
    }

    /// `None` when the device has neither derived nor hidden points.
    pub fn for_device(config: Arc<DeviceConfig>) -> Option<Derived> {
        if !Self::applies(&config) {
            return None;
        }
        Some(Derived {
            config,
            slots: HashMap::new(),
            values: Vec::new(),
            fresh: Vec::new(),
            outputs: Vec::new(),
            hidden: Vec::new(),
        })
    }
}

impl Transform for Derived {
    fn catalog(&mut self, device: &DeviceView) {
        let index = key_index(device);
        // One slot per element of every point, in declaration order.
        let mut first: Vec<usize> = Vec::new();
        let mut ids: Vec<Option<u32>> = Vec::new();
        for p in &self.config.points {
            first.push(ids.len());
            for d in describe::elements(p) {
                ids.push(index.get(&crate::model::catalog::point_key(&d)).copied());
            }
        }
        self.slots.clear();
        self.hidden.clear();
        self.outputs.clear();
        let points = &self.config.points;
        for (n, p) in points.iter().enumerate() {
            for e in 1..=p.count {
                let slot = first[n] + e as usize - 1;
                let Some(id) = ids[slot] else {
                    continue;
                };
                if p.hidden {
                    self.hidden.push(id);
                }
                let Some(derive) = p.derive.as_deref() else {
                    self.slots.insert(id, slot);
                    continue;
                };
                // The slot of input `name`: element `k` when explicit, else the element
                // being computed (or the only one of a scalar).
                let mut inputs = Vec::new();
                let mut resolve = |name: &str, k: u16, explicit: bool| {
                    let j = points.iter().position(|q| {
                        crate::transform::expr::names(name, &q.measurement, &q.name)
                    })?;
                    let q = &points[j];
                    let k = if !explicit && q.count == 1 { 1 } else { k };
                    if k == 0 || k > q.count {
                        return None;
                    }
                    let s = first[j] + k as usize - 1;
                    inputs.push(s);
                    Some(s)
                };
                let calc = match derive {
                    Derive::States { from, rows } => {
                        resolve(from, e, false).map(|input| Calc::States {
                            input,
                            rows: rows.clone(),
                        })
                    }
                    Derive::Bit { from, bit } => {
                        resolve(from, e, false).map(|input| Calc::Bit { input, bit: *bit })
                    }
                    Derive::Expr(x) => x.bind(e, &mut resolve).map(Calc::Expr),
                };
                // Validation guarantees every input exists; a point the catalog lacks is skipped.
                if let Some(calc) = calc {
                    self.outputs.push(Output {
                        id,
                        slot,
                        kind: p.kind,
                        calc,
                        inputs,
                    });
                }
            }
        }
        self.hidden.sort_unstable();
        self.values = vec![f64::NAN; ids.len()];
        self.fresh = vec![false; ids.len()];
    }

    fn apply(&mut self, batch: &mut SampleBatch) {
        let mut ts = 0i64;
        let mut any = false;
        let batch_ts = batch.timestamp_ns;
        for s in &batch.samples {
            if let (Some(&slot), Some(v)) = (self.slots.get(&s.point), &s.value) {
                self.values[slot] = numeric(v);
                self.fresh[slot] = true;
                ts = ts.max(time_of(s, batch_ts));
                any = true;
            }
        }
        if any {
            for o in &self.outputs {
                if !o.inputs.iter().any(|&i| self.fresh[i]) {
                    continue;
                }
                let x = match &o.calc {
                    Calc::States { input, rows } => {
                        let raw = self.values[*input];
                        if raw.is_nan() {
                            f64::NAN
                        } else {
                            let raw = raw as i64;
                            rows.iter()
                                .find(|r| raw & r.mask == r.value)
                                .map(|r| r.code as f64)
                                .unwrap_or(f64::NAN)
                        }
                    }
                    Calc::Bit { input, bit } => {
                        let raw = self.values[*input];
                        if raw.is_nan() {
                            f64::NAN
                        } else {
                            ((raw as i64 >> bit) & 1) as f64
                        }
                    }
                    Calc::Expr(b) => b.eval(&self.values, 0.0),
                };
                self.values[o.slot] = x;
                self.fresh[o.slot] = true;
                if let Some(value) = typed(x, o.kind) {
                    batch.samples.push(Sample {
                        point: o.id,
                        timestamp_ns: ts,
                        quality: Quality::Good as i32,
                        value: Some(value),
                    });
                }
            }
            self.fresh.iter_mut().for_each(|f| *f = false);
        }
        if !self.hidden.is_empty() {
            let hidden = &self.hidden;
            batch
                .samples
                .retain(|s| hidden.binary_search(&s.point).is_err());
        }
    }
}

/// A computed number as a value of the point's type; `None` when it has none (an unknown
/// input, 0/0, or out of the type's range).
fn typed(x: f64, kind: PointType) -> Option<Value> {
    if !x.is_finite() {
        return None;
    }
    let int_in = |lo: f64, hi: f64| {
        let r = x.round();
        (lo..=hi).contains(&r).then_some(Value::IntValue(r as i64))
    };
    match kind {
        PointType::Bool => Some(Value::BoolValue(x != 0.0)),
        PointType::U8 => int_in(0.0, 255.0),
        PointType::I8 => int_in(-128.0, 127.0),
        PointType::U16 => int_in(0.0, 65535.0),
        PointType::I16 => int_in(-32768.0, 32767.0),
        PointType::U32 => int_in(0.0, 4_294_967_295.0),
        PointType::I32 => int_in(-2_147_483_648.0, 2_147_483_647.0),
        PointType::I64 => int_in(-9.2e18, 9.2e18),
        PointType::U64 => {
            let r = x.round();
            (0.0..=1.8e19)
                .contains(&r)
                .then_some(Value::UintValue(r as u64))
        }
        PointType::F16 | PointType::F32 | PointType::F64 => Some(Value::DoubleValue(x)),
        PointType::String => None,
    }
}
