//! Edge derivations (PRODUCT.md): alarm episodes (`linetap_alarm`), time in state and
//! availability (`linetap_state_time`), and cycle time and parts per hour from a cycle
//! counter. They run after derived points and before report by exception, so they see every
//! poll. An alarm active when linetap stops is remembered in the data directory
//! (`derived/DEVICE.alarms`), so that after a restart the same alarm continues its episode
//! instead of starting a new one.

use super::{key_index, numeric, time_of, DeviceView, Transform};
use crate::config::DeviceConfig;
use crate::model::catalog::{point_key, HEALTH_MEASUREMENT};
use crate::model::{Quality, Sample, SampleBatch, Value};
use crate::source::describe::{self, ALARM_MEASUREMENT, STATE_TIME_MEASUREMENT};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NS: f64 = 1e9;

fn sample(point: u32, ts: i64, value: Value) -> Sample {
    Sample {
        point,
        timestamp_ns: ts,
        quality: Quality::Good as i32,
        value: Some(value),
    }
}

struct Alarm {
    input: u32,
    /// `point#element`: what the saved state is keyed by.
    key: String,
    labels: Arc<Vec<(i64, String)>>,
    /// code, code_label, active, duration.
    out: [Option<u32>; 4],
}

struct StateTime {
    input: u32,
    /// Field index of each code.
    codes: Vec<(i64, usize)>,
    /// Point id of each field (seconds per state).
    fields: Vec<Option<u32>>,
    unknown: usize,
    running: Vec<usize>,
    /// Off and unknown: not part of the time availability is computed over.
    excluded: Vec<usize>,
    availability: Option<u32>,
    /// The state now and up to when its time was counted.
    current: Option<(usize, i64)>,
    window_start: i64,
    /// Nanoseconds per field in the current window.
    acc: Vec<i64>,
}

struct Cycle {
    input: u32,
    cycle_time: Option<u32>,
    per_hour: Option<u32>,
    last: Option<(f64, i64)>,
    increments: VecDeque<(i64, f64)>,
    window_start: i64,
}

/// Saves the active alarms of one device, on a blocking thread, the newest state winning.
struct AlarmFile {
    path: PathBuf,
    pending: Arc<Mutex<Option<String>>>,
}

impl AlarmFile {
    fn load(&self) -> HashMap<String, (i64, i64)> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                let key = f.next()?.to_string();
                let code = f.next()?.parse().ok()?;
                let since = f.next()?.parse().ok()?;
                Some((key, (code, since)))
            })
            .collect()
    }

    fn save(&self, active: &HashMap<String, (i64, i64)>) {
        let mut text = String::new();
        for (k, (code, since)) in active {
            text.push_str(&format!("{k}\t{code}\t{since}\n"));
        }
        if let Ok(mut p) = self.pending.lock() {
            *p = Some(text);
        }
        let path = self.path.clone();
        let pending = self.pending.clone();
        let write = move || {
            let Some(text) = pending.lock().ok().and_then(|mut p| p.take()) else {
                return;
            };
            let tmp = path.with_extension("tmp");
            let result = path
                .parent()
                .map(std::fs::create_dir_all)
                .unwrap_or(Ok(()))
                .and_then(|_| std::fs::write(&tmp, text))
                .and_then(|_| std::fs::rename(&tmp, &path));
            if let Err(e) = result {
                tracing::warn!(path = %path.display(), error = %e, "cannot save the active alarms; after a restart they would start new episodes");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(write);
            }
            Err(_) => write(),
        }
    }
}

pub struct Derivations {
    config: Arc<DeviceConfig>,
    window: i64,
    file: Option<AlarmFile>,
    up: Option<u32>,
    alarms: Vec<Alarm>,
    /// Active alarms: key → (code, since ns).
    active: HashMap<String, (i64, i64)>,
    state: Option<StateTime>,
    cycles: Vec<Cycle>,
    added: Vec<Sample>,
}

impl Derivations {
    /// Whether a device needs this step: alarm points, cycle counters or a state point.
    pub fn applies(config: &DeviceConfig) -> bool {
        config.points.iter().any(|p| p.alarm || p.cycles) || describe::state_point(config).is_some()
    }

    /// `None` when the device has nothing to derive. `dir`: where active alarms are kept.
    pub fn for_device(
        config: Arc<DeviceConfig>,
        dir: Option<PathBuf>,
        window: Duration,
    ) -> Option<Derivations> {
        if !Self::applies(&config) {
            return None;
        }
        let file = dir.map(|d| AlarmFile {
            path: d.join(format!("{}.alarms", sanitize(&config.id))),
            pending: Arc::new(Mutex::new(None)),
        });
        let active = file.as_ref().map(|f| f.load()).unwrap_or_default();
        Some(Derivations {
            config,
            window: window.as_nanos().min(i64::MAX as u128) as i64,
            file,
            up: None,
            alarms: Vec::new(),
            active,
            state: None,
            cycles: Vec::new(),
            added: Vec::new(),
        })
    }
}

/// A device id as a file name.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Transform for Derivations {
    fn catalog(&mut self, device: &DeviceView) {
        let index = key_index(device);
        let id = |d: &crate::model::PointDescriptor| index.get(&point_key(d)).copied();
        let outputs = describe::derived_outputs(&self.config);
        let find = |m: &str, name: &str, tags: &[crate::model::Tag]| {
            outputs
                .iter()
                .find(|d| d.measurement == m && d.name == name && d.tags == tags)
                .and_then(&id)
        };
        self.up = device
            .points
            .iter()
            .find(|p| p.measurement == HEALTH_MEASUREMENT && p.name == "up")
            .map(|p| p.id);

        self.alarms.clear();
        for p in self.config.points.iter().filter(|p| p.alarm) {
            let labels = Arc::new(p.enum_labels.clone());
            for (e, d) in describe::elements(p).iter().enumerate() {
                let Some(input) = id(d) else { continue };
                let mut tags = describe::element_tags(p, e as u16 + 1);
                tags.push(crate::model::Tag {
                    key: "point".into(),
                    value: p.name.clone(),
                });
                let out =
                    describe::alarm_fields().map(|(f, _, _)| find(ALARM_MEASUREMENT, f, &tags));
                self.alarms.push(Alarm {
                    input,
                    key: format!("{}#{}", p.name, e + 1),
                    labels: labels.clone(),
                    out,
                });
            }
        }

        let previous = self.state.take();
        self.state = describe::state_point(&self.config).and_then(|p| {
            let input = id(&describe::elements(p)[0])?;
            let names = describe::state_fields(p);
            let field = |label: &str| {
                names
                    .iter()
                    .position(|n| *n == describe::state_field(label))
            };
            let unknown = field("unknown")?;
            let codes = p
                .enum_labels
                .iter()
                .filter_map(|(c, l)| Some((*c, field(l)?)))
                .collect();
            let running = ["running", "operation_enabled"]
                .iter()
                .filter_map(|l| field(l))
                .collect();
            let mut excluded: Vec<usize> = ["off"].iter().filter_map(|l| field(l)).collect();
            excluded.push(unknown);
            let fields = names
                .iter()
                .map(|n| find(STATE_TIME_MEASUREMENT, n, &[]))
                .collect();
            let mut s = StateTime {
                input,
                codes,
                fields,
                unknown,
                running,
                excluded,
                availability: find(STATE_TIME_MEASUREMENT, "availability", &[]),
                current: None,
                window_start: 0,
                acc: vec![0; names.len()],
            };
            // Same fields as before a catalog change: keep counting.
            if let Some(prev) = previous {
                if prev.acc.len() == s.acc.len() {
                    s.current = prev.current;
                    s.window_start = prev.window_start;
                    s.acc = prev.acc;
                }
            }
            Some(s)
        });

        let mut previous: HashMap<u32, Cycle> =
            self.cycles.drain(..).map(|c| (c.input, c)).collect();
        for p in self.config.points.iter().filter(|p| p.cycles) {
            for (e, d) in describe::elements(p).iter().enumerate() {
                let Some(input) = id(d) else { continue };
                let tags = describe::element_tags(p, e as u16 + 1);
                let mut c = previous.remove(&input).unwrap_or(Cycle {
                    input,
                    cycle_time: None,
                    per_hour: None,
                    last: None,
                    increments: VecDeque::new(),
                    window_start: 0,
                });
                c.cycle_time = find(&p.measurement, "cycle_time", &tags);
                c.per_hour = find(&p.measurement, "parts_per_hour", &tags);
                self.cycles.push(c);
            }
        }
    }

    fn apply(&mut self, batch: &mut SampleBatch) {
        let mut out = std::mem::take(&mut self.added);
        let mut alarms_changed = false;
        let window = self.window;
        let batch_ts = batch.timestamp_ns;
        for s in &batch.samples {
            let Some(v) = &s.value else { continue };
            let ts = time_of(s, batch_ts);
            if Some(s.point) == self.up && *v == Value::BoolValue(false) {
                if let Some(st) = &mut self.state {
                    let f = st.unknown;
                    st.set(f, ts, window, &mut out);
                }
                continue;
            }
            for a in self.alarms.iter().filter(|a| a.input == s.point) {
                let code = numeric(v);
                if code.is_nan() {
                    continue;
                }
                alarms_changed |= alarm(a, code as i64, ts, &mut self.active, &mut out);
            }
            if let Some(st) = &mut self.state {
                if st.input == s.point {
                    let code = numeric(v) as i64;
                    let f = st
                        .codes
                        .iter()
                        .find(|(c, _)| *c == code)
                        .map(|(_, f)| *f)
                        .unwrap_or(st.unknown);
                    st.set(f, ts, window, &mut out);
                }
            }
            for c in self.cycles.iter_mut().filter(|c| c.input == s.point) {
                c.sample(numeric(v), ts, window, &mut out);
            }
        }
        // Windows end on the clock, whatever the batch carried (health records come every poll).
        if let (Some(st), Some(ts)) = (
            &mut self.state,
            batch.samples.iter().map(|s| time_of(s, batch_ts)).max(),
        ) {
            if st.current.is_some() {
                let f = st.current.map(|c| c.0).unwrap_or(st.unknown);
                st.set(f, ts, window, &mut out);
            }
        }
        if alarms_changed {
            if let Some(f) = &self.file {
                f.save(&self.active);
            }
        }
        batch.samples.append(&mut out);
        self.added = out;
    }
}

/// One reading of an alarm point; returns whether the active alarm changed.
fn alarm(
    a: &Alarm,
    code: i64,
    ts: i64,
    active: &mut HashMap<String, (i64, i64)>,
    out: &mut Vec<Sample>,
) -> bool {
    let now = active.get(&a.key).copied();
    let label = |c: i64| {
        a.labels
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, l)| l.clone())
    };
    let record = |out: &mut Vec<Sample>, c: i64, at: i64, on: bool, duration: Option<f64>| {
        if let Some(id) = a.out[0] {
            out.push(sample(id, at, Value::IntValue(c)));
        }
        if let (Some(id), Some(l)) = (a.out[1], label(c)) {
            out.push(sample(id, at, Value::StringValue(l)));
        }
        if let Some(id) = a.out[2] {
            out.push(sample(id, at, Value::BoolValue(on)));
        }
        if let (Some(id), Some(d)) = (a.out[3], duration) {
            out.push(sample(id, at, Value::DoubleValue(d)));
        }
    };
    match now {
        Some((c, _)) if c == code => false,
        None if code == 0 => false,
        _ => {
            let mut start_at = ts;
            if let Some((c, since)) = now {
                // When one code changes straight to another, the end is stamped 1 ns before
                // the start, so the store keeps both records.
                let end_at = if code != 0 { ts - 1 } else { ts };
                record(
                    out,
                    c,
                    end_at,
                    false,
                    Some((end_at - since).max(0) as f64 / NS),
                );
                start_at = ts;
            }
            if code != 0 {
                record(out, code, start_at, true, None);
                active.insert(a.key.clone(), (code, start_at));
            } else {
                active.remove(&a.key);
            }
            true
        }
    }
}

impl StateTime {
    /// Counts the time since the last call to the current state, closing every window that
    /// ended meanwhile, then makes `field` the current state.
    fn set(&mut self, field: usize, ts: i64, window: i64, out: &mut Vec<Sample>) {
        let align = |t: i64| t - t.rem_euclid(window);
        let Some((f, mut t)) = self.current else {
            self.window_start = align(ts);
            self.current = Some((field, ts));
            return;
        };
        if ts < t {
            // A clock step backwards: start counting again from here.
            self.current = Some((field, ts));
            return;
        }
        let mut closed = 0;
        while ts >= self.window_start + window {
            let end = self.window_start + window;
            self.acc[f] += (end - t.max(self.window_start)).max(0);
            self.emit(out);
            self.window_start = end;
            t = end;
            closed += 1;
            if closed > 1440 {
                // A long gap: skip to the window of `ts`.
                self.window_start = align(ts);
                t = self.window_start;
                break;
            }
        }
        self.acc[f] += (ts - t.max(self.window_start)).max(0);
        self.current = Some((field, ts));
    }

    fn emit(&mut self, out: &mut Vec<Sample>) {
        let total: i64 = self.acc.iter().sum();
        if total > 0 {
            let at = self.window_start;
            for (i, id) in self.fields.iter().enumerate() {
                if let Some(id) = id {
                    out.push(sample(*id, at, Value::DoubleValue(self.acc[i] as f64 / NS)));
                }
            }
            let running: i64 = self.running.iter().map(|&i| self.acc[i]).sum();
            let excluded: i64 = self.excluded.iter().map(|&i| self.acc[i]).sum();
            if let (Some(id), true) = (self.availability, total > excluded) {
                out.push(sample(
                    id,
                    at,
                    Value::DoubleValue(running as f64 / (total - excluded) as f64),
                ));
            }
        }
        self.acc.iter_mut().for_each(|a| *a = 0);
    }
}

impl Cycle {
    fn sample(&mut self, n: f64, ts: i64, window: i64, out: &mut Vec<Sample>) {
        if n.is_nan() {
            return;
        }
        let mut rate_due = false;
        if self.window_start == 0 {
            self.window_start = ts - ts.rem_euclid(window);
        } else if ts >= self.window_start + window {
            self.window_start = ts - ts.rem_euclid(window);
            rate_due = true;
        }
        match self.last {
            Some((m, t0)) if n > m => {
                let inc = n - m;
                if let Some(id) = self.cycle_time {
                    out.push(sample(
                        id,
                        ts,
                        Value::DoubleValue((ts - t0) as f64 / NS / inc),
                    ));
                }
                self.increments.push_back((ts, inc));
                self.last = Some((n, ts));
                rate_due = true;
            }
            Some((m, _)) if n == m => {}
            // The first reading, or the counter was reset: a new baseline.
            _ => self.last = Some((n, ts)),
        }
        while self
            .increments
            .front()
            .is_some_and(|(t, _)| *t <= ts - window)
        {
            self.increments.pop_front();
        }
        if let (true, Some(id)) = (rate_due, self.per_hour) {
            let parts = self.increments.iter().fold(0.0, |a, (_, n)| a + n);
            out.push(sample(
                id,
                ts,
                Value::DoubleValue(parts * 3600.0 * NS / window as f64),
            ));
        }
    }
}
