//! `linetap probe` (PRODUCT.md): reads every point of one device once — a config's device or a
//! profile at an address — and renders a table a person reads at the cabinet: point, raw
//! registers, value, unit, label. The same planner, links, decoder and derived-point transform
//! as the agent, so what probe shows is what the agent will write.

use crate::config::{DeviceConfig, PointConfig};
use crate::model::catalog::Registry;
use crate::model::{SampleBatch, Value};
use crate::source::modbus::link::{ReadSpec, Words};
use crate::source::modbus::{link_for, poller::decode_into, register};
use crate::transform::{DeviceView, Transform};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

/// Reads `d` once. `Ok(table)` when the device answered at least one request; `Err` with the
/// Modbus error when it answered none.
pub async fn probe(d: &DeviceConfig) -> Result<String, String> {
    let mut registry = Registry::new("probe", "", Vec::new(), None);
    let plan = register(d, &mut registry);
    let version = registry.version();
    let view = DeviceView::of(&version, plan.device);
    let mut link = link_for(d, d.timeout);
    let started = Instant::now();
    let mut batch = SampleBatch {
        device: plan.device,
        ..Default::default()
    };
    // Raw registers (hex) or bits of each point id; problems per point id.
    let mut raw: HashMap<u32, String> = HashMap::new();
    let mut failed: HashMap<u32, String> = HashMap::new();
    let mut answered = 0;
    let mut requests = 0;
    let mut first_error = None;
    for group in &plan.groups {
        for req in &group.requests {
            requests += 1;
            let spec = ReadSpec {
                unit: d.unit,
                table: req.table,
                start: req.start,
                count: req.count,
                timeout: d.timeout,
                turnaround: d.turnaround,
            };
            match link.read(&spec).await {
                Ok(words) => {
                    answered += 1;
                    for f in &req.fields {
                        let text = match &words {
                            Words::Registers(r) => r
                                .get(f.offset as usize..(f.offset + f.width) as usize)
                                .map(|w| {
                                    w.iter()
                                        .map(|x| format!("{x:04X}"))
                                        .collect::<Vec<_>>()
                                        .join(" ")
                                })
                                .unwrap_or_default(),
                            Words::Bits(b) => b
                                .get(f.offset as usize)
                                .map(|x| u8::from(*x).to_string())
                                .unwrap_or_default(),
                        };
                        raw.insert(f.point, text);
                    }
                    let ts = crate::model::now_ns();
                    batch.stamp(ts);
                    if let Err(e) = decode_into(req, &words, 0, &mut batch.samples) {
                        for f in &req.fields {
                            failed.insert(f.point, e.clone());
                        }
                    }
                }
                Err(e) => {
                    let reason = format!(
                        "{} unit {} {} {}+{}: {e}",
                        link.address(),
                        d.unit,
                        req.table.as_str(),
                        req.start,
                        req.count
                    );
                    for f in &req.fields {
                        failed.insert(f.point, e.to_string());
                    }
                    first_error.get_or_insert(reason);
                }
            }
        }
    }
    let elapsed = started.elapsed();
    if answered == 0 {
        return Err(first_error.unwrap_or_else(|| "no points to read".into()));
    }
    // Derived points, computed as the agent computes them (hidden ones are shown here too).
    let mut values: HashMap<u32, Value> = batch
        .samples
        .iter()
        .filter_map(|s| Some((s.point, s.value.clone()?)))
        .collect();
    if let Some(mut derived) = crate::transform::derive::Derived::for_device(Arc::new(d.clone())) {
        derived.catalog(&view);
        derived.apply(&mut batch);
        for s in &batch.samples {
            if let Some(v) = &s.value {
                values.entry(s.point).or_insert_with(|| v.clone());
            }
        }
    }

    let mut rows: Vec<[String; 5]> = Vec::new();
    let by_key: HashMap<String, u32> = view
        .points
        .iter()
        .map(|p| (crate::model::catalog::point_key(p), p.id))
        .collect();
    for p in &d.points {
        for (e, desc) in crate::source::describe::elements(p).iter().enumerate() {
            let Some(&id) = by_key.get(&crate::model::catalog::point_key(desc)) else {
                continue;
            };
            let mut name = format!("{}.{}", p.measurement, p.name);
            if p.count > 1 {
                name.push_str(&format!(
                    "[{}={}]",
                    p.index_tag.as_deref().unwrap_or("index"),
                    e + 1
                ));
            }
            if p.hidden {
                name.push_str(" (hidden)");
            }
            let raw_text = if p.is_read() {
                raw.get(&id).cloned().unwrap_or_default()
            } else {
                "derived".to_string()
            };
            let (value, label) = match (values.get(&id), failed.get(&id)) {
                (Some(v), _) => (show(v), label(p, v)),
                (None, Some(err)) => (format!("error: {err}"), String::new()),
                (None, None) => ("-".to_string(), String::new()),
            };
            rows.push([name, raw_text, value, p.unit.clone(), label]);
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "device {:?} at {} unit {}{}: {} of {} requests answered in {} ms",
        d.id,
        link.address(),
        d.unit,
        d.profile
            .as_ref()
            .map(|p| format!(" (profile {p})"))
            .unwrap_or_default(),
        answered,
        requests,
        elapsed.as_millis()
    );
    let header = ["point", "raw", "value", "unit", "label"].map(String::from);
    let mut widths = [0usize; 5];
    for r in std::iter::once(&header).chain(rows.iter()) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (k, (w, c)) in widths.iter().zip(r).enumerate() {
            if k == 4 {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    Ok(out)
}

fn show(v: &Value) -> String {
    match v {
        Value::DoubleValue(x) => format!("{}", (x * 1e9).round() / 1e9),
        Value::IntValue(i) => i.to_string(),
        Value::UintValue(u) => u.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::StringValue(s) => format!("{s:?}"),
    }
}

fn label(p: &PointConfig, v: &Value) -> String {
    let code = match v {
        Value::IntValue(i) => *i,
        Value::UintValue(u) => *u as i64,
        _ => return String::new(),
    };
    p.enum_labels
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, l)| l.clone())
        .unwrap_or_default()
}
