//! What `linetap check` shows of RTDE devices: the controller, the recipe (the fields asked
//! for, at what frequency), each point, and what the line's totals gain.

use super::config::{rtde_point, RtdeDevice};
use crate::check::{describe_derived, describe_extras, Plan};
use crate::config::{Config, PointConfig};
use std::fmt::Write;

/// The RTDE part of `linetap check`'s plan.
pub fn render(config: &Config, plan: &mut Plan) {
    for d in &config.devices {
        let Some(r) = d.settings::<RtdeDevice>() else {
            continue;
        };
        let recipe = super::recipe_fields(d);
        let values: usize = d
            .points
            .iter()
            .filter(|p| p.is_read())
            .map(|p| p.count as usize)
            .sum();
        let o = &mut plan.text;
        let _ = writeln!(
            o,
            "\ndevice {:?} ({}, rtde {}): {} Hz, {} field{} per package, into the buffer every {:?}, down after {:?} without a package",
            d.id,
            d.kind.as_str(),
            r.address,
            r.frequency,
            recipe.len(),
            crate::check::plural(recipe.len()),
            super::batch_interval(d, r),
            r.timeout,
        );
        let _ = writeln!(o, "  recipe {}", recipe.join(","));
        for p in &d.points {
            let _ = writeln!(o, "  point {:<24} {}", p.name, describe(p));
        }
        plan.values_per_s += values as f64 * r.frequency;
        plan.health_per_s += 4.0 / super::batch_interval(d, r).as_secs_f64().max(1.0);
    }
}

fn describe(p: &PointConfig) -> String {
    if let Some(d) = describe_derived(p) {
        return d;
    }
    let Some(r) = rtde_point(p) else {
        return String::new();
    };
    let mut d = format!("rtde {}", r.field);
    if let Some(e) = r.element {
        d.push_str(&format!("[{}]", e + 1));
    }
    if let Some(b) = r.bit {
        d.push_str(&format!(" bit {b}"));
    }
    d.push_str(&format!(" {}", p.kind.as_str()));
    if p.count > 1 {
        d.push_str(&format!(" x{} array", p.count));
    }
    if r.optional {
        d.push_str(" (optional)");
    }
    if p.scale != 1.0 {
        d.push_str(&format!(" scale {}", p.scale));
    }
    if p.offset != 0.0 {
        d.push_str(&format!(" offset {}", p.offset));
    }
    if p.as_float {
        d.push_str(" as float");
    }
    d.push_str(&format!(" -> {}", p.measurement));
    describe_extras(p, d)
}
