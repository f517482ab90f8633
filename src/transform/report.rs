//! Report by exception (PRODUCT.md): a point with a `report` setting (from `[report]`, its
//! device or itself) is written when it changed — a number when it moved more than its
//! deadband since the last written value — never more often than `min_interval`, and at least
//! every `max_interval` (a heartbeat, checked at each poll). Every point is written on its
//! first read after start-up and after its device was down. Health records and derivation
//! records pass untouched. Runs last in a device's chain, so unchanged values cost neither
//! disk nor network.

use super::{key_index, numeric, time_of, DeviceView, Transform};
use crate::config::{DeviceConfig, Report};
use crate::model::catalog::{point_key, HEALTH_MEASUREMENT};
use crate::model::{SampleBatch, Value};
use crate::source::describe;
use std::collections::HashMap;
use std::sync::Arc;

struct Rule {
    report: Report,
    /// Bools, strings and enum codes are written on change only (no deadband).
    exact: bool,
    /// The last written value and its time.
    last: Option<(Value, i64)>,
}

pub struct ReportByException {
    config: Arc<DeviceConfig>,
    rules: HashMap<u32, Rule>,
    /// The device's health `up` point.
    up: Option<u32>,
}

impl ReportByException {
    /// Whether a device needs this step: a visible point reported by exception.
    pub fn applies(config: &DeviceConfig) -> bool {
        config
            .points
            .iter()
            .any(|p| p.report.is_some() && !p.hidden)
    }

    /// `None` when no point of the device has a report setting.
    pub fn for_device(config: Arc<DeviceConfig>) -> Option<ReportByException> {
        if !Self::applies(&config) {
            return None;
        }
        Some(ReportByException {
            config,
            rules: HashMap::new(),
            up: None,
        })
    }
}

impl Transform for ReportByException {
    fn catalog(&mut self, device: &DeviceView) {
        let index = key_index(device);
        let mut rules = HashMap::new();
        for p in self.config.points.iter().filter(|p| p.report.is_some()) {
            for d in describe::elements(p) {
                if let Some(&id) = index.get(&point_key(&d)) {
                    // Keep what was last written across a catalog change.
                    let last = self.rules.remove(&id).and_then(|r: Rule| r.last);
                    rules.insert(
                        id,
                        Rule {
                            report: p.report(),
                            exact: !p.enum_labels.is_empty(),
                            last,
                        },
                    );
                }
            }
        }
        self.rules = rules;
        self.up = device
            .points
            .iter()
            .find(|p| p.measurement == HEALTH_MEASUREMENT && p.name == "up")
            .map(|p| p.id);
    }

    fn apply(&mut self, batch: &mut SampleBatch) {
        // Down: forget what was written, so the first read once it answers is written.
        if let Some(up) = self.up {
            let down = batch
                .samples
                .iter()
                .any(|s| s.point == up && s.value == Some(Value::BoolValue(false)));
            if down {
                self.rules.values_mut().for_each(|r| r.last = None);
            }
        }
        let rules = &mut self.rules;
        let batch_ts = batch.timestamp_ns;
        batch.samples.retain(|s| {
            let ts = time_of(s, batch_ts);
            let Some(rule) = rules.get_mut(&s.point) else {
                return true;
            };
            let Some(value) = &s.value else {
                return true;
            };
            let keep = match &rule.last {
                None => true,
                Some((last, at)) => {
                    let since = ts.saturating_sub(*at).max(0) as u128;
                    let r = &rule.report;
                    if since < r.min_interval.as_nanos() {
                        false
                    } else if !r.max_interval.is_zero() && since >= r.max_interval.as_nanos() {
                        true
                    } else {
                        changed(last, value, rule.exact, r)
                    }
                }
            };
            if keep {
                rule.last = Some((value.clone(), ts));
            }
            keep
        });
    }
}

/// Whether `now` differs enough from the last written value.
fn changed(last: &Value, now: &Value, exact: bool, r: &Report) -> bool {
    let numbers = !matches!(now, Value::BoolValue(_) | Value::StringValue(_));
    if exact || !numbers || (r.deadband == 0.0 && r.deadband_pct == 0.0) {
        return last != now;
    }
    let (a, b) = (numeric(last), numeric(now));
    if a.is_nan() != b.is_nan() {
        return true;
    }
    let moved = (b - a).abs();
    (r.deadband > 0.0 && moved > r.deadband)
        || (r.deadband_pct > 0.0 && moved > r.deadband_pct / 100.0 * a.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(deadband: f64, pct: f64) -> Report {
        Report {
            active: true,
            deadband,
            deadband_pct: pct,
            ..Default::default()
        }
    }

    #[test]
    fn deadbands() {
        let d = |a: f64, b: f64, r: &Report| {
            changed(&Value::DoubleValue(a), &Value::DoubleValue(b), false, r)
        };
        let r = report(0.5, 0.0);
        assert!(!d(10.0, 10.5, &r));
        assert!(d(10.0, 10.51, &r));
        assert!(d(10.0, 9.4, &r));
        let r = report(0.0, 10.0);
        assert!(!d(100.0, 109.0, &r));
        assert!(d(100.0, 111.0, &r));
        let r = report(0.0, 0.0);
        assert!(!d(1.0, 1.0, &r));
        assert!(d(1.0, 1.0000001, &r));
        // Enum codes and bools: on change only.
        assert!(!changed(
            &Value::IntValue(3),
            &Value::IntValue(3),
            true,
            &report(5.0, 0.0)
        ));
        assert!(changed(
            &Value::IntValue(3),
            &Value::IntValue(4),
            true,
            &report(5.0, 0.0)
        ));
        assert!(changed(
            &Value::BoolValue(true),
            &Value::BoolValue(false),
            false,
            &report(5.0, 0.0)
        ));
    }
}
