//! Counters and gauges shared by the components (lock-free atomics). Each device and sink has
//! a slot, added when the component starts and removed when it stops, so the set follows the
//! catalog and a reload; a component keeps an `Arc` to its own slot and never looks it up on
//! the hot path. The demo summary and the Prometheus endpoint read them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

/// Something with a name that has a metrics slot.
pub trait Named: Default {
    fn name(&self) -> &str;
    fn with_name(name: String) -> Self;
}

/// The slots of one kind of component, in the order they were added.
#[derive(Debug, Default)]
pub struct Slots<T> {
    slots: RwLock<Vec<Arc<T>>>,
}

impl<T: Named> Slots<T> {
    /// The slot named `name`, added if there is none (a component restarted by a reload keeps
    /// its counters).
    pub fn add(&self, name: &str) -> Arc<T> {
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.iter().find(|s| s.name() == name) {
            return s.clone();
        }
        let s = Arc::new(T::with_name(name.to_string()));
        slots.push(s.clone());
        s
    }

    /// Removes the slot named `name` (its component is gone).
    pub fn remove(&self, name: &str) {
        self.slots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.name() != name);
    }

    /// The slot named `name`, if any.
    pub fn get(&self, name: &str) -> Option<Arc<T>> {
        self.all().into_iter().find(|s| s.name() == name)
    }

    /// Every slot now.
    pub fn all(&self) -> Vec<Arc<T>> {
        self.slots.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn len(&self) -> usize {
        self.slots.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Default)]
pub struct DeviceMetrics {
    pub name: String,
    pub up: AtomicBool,
    pub requests_ok: AtomicU64,
    pub requests_timeout: AtomicU64,
    pub requests_exception: AtomicU64,
    pub requests_connect_error: AtomicU64,
    pub requests_link_error: AtomicU64,
    /// RTU replies with a bad CRC.
    pub requests_crc_error: AtomicU64,
    /// RTU replies from the wrong unit, with the wrong function, truncated or too long.
    pub requests_frame_error: AtomicU64,
    /// Replies that arrived after their request timed out, discarded before the next request.
    pub late_replies: AtomicU64,
    pub decode_errors: AtomicU64,
    pub samples: AtomicU64,
    pub missed_ticks: AtomicU64,
    pub polls: AtomicU64,
    /// Sum of poll durations, in microseconds (the count is `polls`).
    pub poll_micros: AtomicU64,
    /// Poll-duration histogram: counts of polls at or under each `POLL_BUCKETS` bound.
    pub poll_buckets: [AtomicU64; POLL_BUCKETS.len()],
    /// MQTT devices: messages by result.
    pub mqtt_ok: AtomicU64,
    /// Not JSON / not an object, not UTF-8, not a number for a value point.
    pub mqtt_malformed: AtomicU64,
    /// Messages with values that were not written (wrong type, out of range, bad timestamp).
    pub mqtt_rejected_values: AtomicU64,
    /// Accepted but the buffer refused them (queue full): not acknowledged.
    pub mqtt_dropped: AtomicU64,
    /// Larger than the connection's `max_packet_size` (3.1.1; on MQTT 5 the broker drops them).
    pub mqtt_oversized: AtomicU64,
    /// MQTT devices: a message arrived (Sparkplug: a birth), so the device counts as ready.
    pub mqtt_ready: AtomicBool,
    /// Sparkplug devices: birth metrics beyond `max_metrics`, not taken.
    pub sparkplug_metrics_over_limit: AtomicU64,
    /// The families a source kind adds for its devices (`SourceKind::device_metrics`).
    pub kind: std::sync::OnceLock<KindCounters>,
}

/// A metric family a source kind's devices have besides the shared ones: one counter or gauge
/// per device, or one per value of a label (`result="ok"`, ...).
#[derive(Debug)]
pub struct DeviceFamily {
    pub name: &'static str,
    pub gauge: bool,
    /// The label and its values, each its own series.
    pub label: Option<(&'static str, &'static [&'static str])>,
}

impl DeviceFamily {
    fn series(&self) -> usize {
        self.label.map(|(_, v)| v.len()).unwrap_or(1)
    }
}

/// One device's values of its kind's families.
#[derive(Debug)]
pub struct KindCounters {
    families: &'static [DeviceFamily],
    values: Box<[AtomicU64]>,
}

impl KindCounters {
    fn new(families: &'static [DeviceFamily]) -> KindCounters {
        let n = families.iter().map(|f| f.series()).sum();
        KindCounters {
            families,
            values: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The value of family `family`, label value `label` (0 without a label).
    pub fn at(&self, family: usize, label: usize) -> &AtomicU64 {
        let before: usize = self.families[..family.min(self.families.len())]
            .iter()
            .map(|f| f.series())
            .sum();
        self.values
            .get(before + label)
            .or(self.values.last())
            .unwrap_or(&NOWHERE)
    }
}

/// What `KindCounters::at` returns for a family no kind declared (never read).
static NOWHERE: AtomicU64 = AtomicU64::new(0);

impl DeviceMetrics {
    /// The counters of the device's kind, made on first use from its families.
    pub fn kind_counters(&self, families: &'static [DeviceFamily]) -> &KindCounters {
        self.kind.get_or_init(|| KindCounters::new(families))
    }
}

/// One MQTT connection (a broker of devices, or an MQTT sink).
#[derive(Debug, Default)]
pub struct BrokerMetrics {
    pub name: String,
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub connection_errors: AtomicU64,
    /// QoS 1 messages left unacknowledged because the buffer refused their data (the
    /// connection is then renewed, so the broker delivers them again).
    pub unacked_refused: AtomicU64,
}

impl Named for BrokerMetrics {
    fn name(&self) -> &str {
        &self.name
    }
    fn with_name(name: String) -> Self {
        BrokerMetrics {
            name,
            ..Default::default()
        }
    }
}

/// Upper bounds (seconds) of the poll-duration histogram buckets.
pub const POLL_BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

impl Named for DeviceMetrics {
    fn name(&self) -> &str {
        &self.name
    }
    fn with_name(name: String) -> Self {
        DeviceMetrics {
            name,
            ..Default::default()
        }
    }
}

impl Named for SinkMetrics {
    fn name(&self) -> &str {
        &self.name
    }
    fn with_name(name: String) -> Self {
        SinkMetrics {
            name,
            ..Default::default()
        }
    }
}

impl DeviceMetrics {
    /// Records one poll cycle's duration.
    pub fn observe_poll(&self, d: std::time::Duration) {
        self.polls.fetch_add(1, Relaxed);
        self.poll_micros.fetch_add(d.as_micros() as u64, Relaxed);
        let secs = d.as_secs_f64();
        for (bound, b) in POLL_BUCKETS.iter().zip(&self.poll_buckets) {
            if secs <= *bound {
                b.fetch_add(1, Relaxed);
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct SinkMetrics {
    pub name: String,
    pub delivered: AtomicU64,
    pub requests: AtomicU64,
    /// HTTP write requests (InfluxDB sinks): retries and isolation requests included.
    pub write_requests: AtomicU64,
    pub retries: AtomicU64,
    pub write_micros: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_not_finite: AtomicU64,
    pub dropped_out_of_range: AtomicU64,
    pub dropped_rejected: AtomicU64,
    pub dropped_shutdown: AtomicU64,
    /// Dropped by the disk budget (`buffer.max_bytes` with drop_oldest or drop_newest).
    pub dropped_buffer_full: AtomicU64,
    /// Lost to damaged buffer records.
    pub dropped_corrupt: AtomicU64,
    /// Lost because the buffer could not write them to disk.
    pub dropped_disk_error: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Buffered bytes this sink has not delivered yet.
    pub buffer_bytes: AtomicU64,
    /// Age of the oldest undelivered buffered record, in ms.
    pub buffer_oldest_ms: AtomicU64,
    /// Failed delivery attempts by reason (`linetap_sink_errors_total{reason}`).
    pub errors_unauthorized: AtomicU64,
    pub errors_not_found: AtomicU64,
    pub errors_unavailable: AtomicU64,
    pub errors_bad_request: AtomicU64,
    /// Why the sink holds its data now (a store error a person has to fix), or empty; makes
    /// `/readyz` fail.
    pub held: std::sync::Mutex<String>,
}

impl SinkMetrics {
    /// The sink cannot deliver until someone fixes `why` (or, with an empty `why`, it can again).
    pub fn set_held(&self, why: &str) {
        let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if h.as_str() != why {
            h.clear();
            h.push_str(why);
        }
    }

    pub fn held(&self) -> Option<String> {
        let h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        (!h.is_empty()).then(|| h.clone())
    }
}

impl SinkMetrics {
    pub fn dropped_total(&self) -> u64 {
        self.dropped_queue_full.load(Relaxed)
            + self.dropped_not_finite.load(Relaxed)
            + self.dropped_out_of_range.load(Relaxed)
            + self.dropped_rejected.load(Relaxed)
            + self.dropped_shutdown.load(Relaxed)
            + self.dropped_buffer_full.load(Relaxed)
            + self.dropped_corrupt.load(Relaxed)
            + self.dropped_disk_error.load(Relaxed)
    }
}

/// A Prometheus label value: backslash, double quote and line feed escaped.
fn esc(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub devices: Slots<DeviceMetrics>,
    pub sinks: Slots<SinkMetrics>,
    pub brokers: Slots<BrokerMetrics>,
    /// Bytes the buffer has written to disk (records and their headers).
    pub buffer_bytes_written: AtomicU64,
    /// Bytes of damaged buffer data skipped.
    pub buffer_corrupt_bytes: AtomicU64,
    /// Segments set aside because their header was damaged.
    pub buffer_quarantined: AtomicU64,
    /// Why the buffer cannot write or sync its log now (empty: it can). Set and cleared by the
    /// writer thread; `/readyz` fails while it is set.
    pub buffer_disk_error: std::sync::Mutex<String>,
    /// Configuration reloads applied, and refused (invalid file, a sink that cannot start).
    pub config_reloads_ok: AtomicU64,
    pub config_reloads_error: AtomicU64,
    /// Samples the agent wrote about itself (`linetap_agent`).
    pub self_samples: AtomicU64,
    /// The log position of the newest buffered byte.
    pub buffer_head: AtomicU64,
    /// Which tasks are busy, and since when (the systemd watchdog).
    pub liveness: super::liveness::Liveness,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Samples accepted from every source: the devices' and the agent's own.
    pub fn collected(&self) -> u64 {
        self.devices
            .all()
            .iter()
            .map(|d| d.samples.load(Relaxed))
            .sum::<u64>()
            + self.self_samples.load(Relaxed)
    }

    /// Records why the buffer cannot write now, or (with `""`) that it can again.
    pub fn set_disk_error(&self, why: &str) {
        let mut e = self
            .buffer_disk_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if e.as_str() != why {
            e.clear();
            e.push_str(why);
        }
    }

    pub fn disk_error(&self) -> Option<String> {
        let e = self
            .buffer_disk_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        (!e.is_empty()).then(|| e.clone())
    }

    /// The Prometheus text exposition of every counter.
    pub fn render_prometheus(&self) -> String {
        let devices = self.devices.all();
        let sinks = self.sinks.all();
        let mut o = String::new();
        o.push_str("# TYPE linetap_device_up gauge\n");
        for d in &devices {
            let _ = writeln!(
                o,
                "linetap_device_up{{device=\"{}\"}} {}",
                esc(&d.name),
                d.up.load(Relaxed) as u8
            );
        }
        o.push_str("# TYPE linetap_modbus_requests_total counter\n");
        for d in &devices {
            for (result, v) in [
                ("ok", &d.requests_ok),
                ("timeout", &d.requests_timeout),
                ("exception", &d.requests_exception),
                ("connect_error", &d.requests_connect_error),
                ("link_error", &d.requests_link_error),
                ("crc_error", &d.requests_crc_error),
                ("frame_error", &d.requests_frame_error),
            ] {
                let _ = writeln!(
                    o,
                    "linetap_modbus_requests_total{{device=\"{}\",result=\"{result}\"}} {}",
                    esc(&d.name),
                    v.load(Relaxed)
                );
            }
        }
        o.push_str("# TYPE linetap_mqtt_messages_total counter\n");
        for d in devices.iter().filter(|d| {
            d.mqtt_ok.load(Relaxed)
                + d.mqtt_malformed.load(Relaxed)
                + d.mqtt_rejected_values.load(Relaxed)
                + d.mqtt_dropped.load(Relaxed)
                + d.mqtt_oversized.load(Relaxed)
                > 0
        }) {
            for (result, v) in [
                ("ok", &d.mqtt_ok),
                ("malformed", &d.mqtt_malformed),
                ("rejected_values", &d.mqtt_rejected_values),
                ("dropped", &d.mqtt_dropped),
                ("oversized", &d.mqtt_oversized),
            ] {
                let _ = writeln!(
                    o,
                    "linetap_mqtt_messages_total{{device=\"{}\",result=\"{result}\"}} {}",
                    esc(&d.name),
                    v.load(Relaxed)
                );
            }
        }
        o.push_str("# TYPE linetap_sparkplug_metrics_over_limit_total counter\n");
        for d in devices
            .iter()
            .filter(|d| d.sparkplug_metrics_over_limit.load(Relaxed) > 0)
        {
            let _ = writeln!(
                o,
                "linetap_sparkplug_metrics_over_limit_total{{device=\"{}\"}} {}",
                esc(&d.name),
                d.sparkplug_metrics_over_limit.load(Relaxed)
            );
        }
        let brokers = self.brokers.all();
        // One family each, its TYPE line before its samples.
        type Family = (&'static str, &'static str, fn(&BrokerMetrics) -> u64);
        let broker_families: [Family; 4] = [
            ("linetap_mqtt_connected", "gauge", |b| {
                b.connected.load(Relaxed) as u64
            }),
            ("linetap_mqtt_connects_total", "counter", |b| {
                b.connects.load(Relaxed)
            }),
            ("linetap_mqtt_connection_errors_total", "counter", |b| {
                b.connection_errors.load(Relaxed)
            }),
            ("linetap_mqtt_unacked_refused_total", "counter", |b| {
                b.unacked_refused.load(Relaxed)
            }),
        ];
        for (family, kind, get) in broker_families {
            let _ = writeln!(o, "# TYPE {family} {kind}");
            for b in &brokers {
                let _ = writeln!(o, "{family}{{broker=\"{}\"}} {}", esc(&b.name), get(b));
            }
        }
        o.push_str("# TYPE linetap_poll_duration_seconds histogram\n");
        for d in &devices {
            for (bound, b) in POLL_BUCKETS.iter().zip(&d.poll_buckets) {
                let _ = writeln!(
                    o,
                    "linetap_poll_duration_seconds_bucket{{device=\"{}\",le=\"{bound}\"}} {}",
                    esc(&d.name),
                    b.load(Relaxed)
                );
            }
            let polls = d.polls.load(Relaxed);
            let _ = writeln!(
                o,
                "linetap_poll_duration_seconds_bucket{{device=\"{}\",le=\"+Inf\"}} {polls}",
                esc(&d.name)
            );
            let _ = writeln!(
                o,
                "linetap_poll_duration_seconds_sum{{device=\"{}\"}} {}",
                esc(&d.name),
                d.poll_micros.load(Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                o,
                "linetap_poll_duration_seconds_count{{device=\"{}\"}} {polls}",
                esc(&d.name)
            );
        }
        o.push_str("# TYPE linetap_modbus_late_replies_total counter\n");
        for d in &devices {
            let _ = writeln!(
                o,
                "linetap_modbus_late_replies_total{{device=\"{}\"}} {}",
                esc(&d.name),
                d.late_replies.load(Relaxed)
            );
        }
        o.push_str("# TYPE linetap_samples_collected_total counter\n");
        for d in &devices {
            let _ = writeln!(
                o,
                "linetap_samples_collected_total{{device=\"{}\"}} {}",
                esc(&d.name),
                d.samples.load(Relaxed)
            );
        }
        o.push_str("# TYPE linetap_poll_missed_ticks_total counter\n");
        for d in &devices {
            let _ = writeln!(
                o,
                "linetap_poll_missed_ticks_total{{device=\"{}\"}} {}",
                esc(&d.name),
                d.missed_ticks.load(Relaxed)
            );
        }
        // Each source kind's own families, in the order devices declared them.
        let mut families: Vec<&'static DeviceFamily> = Vec::new();
        for d in &devices {
            if let Some(k) = d.kind.get() {
                for f in k.families {
                    if !families.iter().any(|g| g.name == f.name) {
                        families.push(f);
                    }
                }
            }
        }
        for f in families {
            let _ = writeln!(
                o,
                "# TYPE {} {}",
                f.name,
                if f.gauge { "gauge" } else { "counter" }
            );
            for d in &devices {
                let Some(k) = d.kind.get() else { continue };
                let Some(i) = k.families.iter().position(|g| g.name == f.name) else {
                    continue;
                };
                let values: &[&str] = match f.label {
                    Some((_, v)) => v,
                    None => &[""],
                };
                for (j, value) in values.iter().enumerate() {
                    let label = match f.label {
                        Some((key, _)) => format!(",{key}=\"{}\"", esc(value)),
                        None => String::new(),
                    };
                    let _ = writeln!(
                        o,
                        "{}{{device=\"{}\"{label}}} {}",
                        f.name,
                        esc(&d.name),
                        k.at(i, j).load(Relaxed)
                    );
                }
            }
        }
        o.push_str("# TYPE linetap_samples_delivered_total counter\n");
        for s in &sinks {
            let _ = writeln!(
                o,
                "linetap_samples_delivered_total{{sink=\"{}\"}} {}",
                esc(&s.name),
                s.delivered.load(Relaxed)
            );
        }
        o.push_str("# TYPE linetap_sink_write_duration_seconds summary\n");
        for s in &sinks {
            let _ = writeln!(
                o,
                "linetap_sink_write_duration_seconds_sum{{sink=\"{}\"}} {}",
                esc(&s.name),
                s.write_micros.load(Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                o,
                "linetap_sink_write_duration_seconds_count{{sink=\"{}\"}} {}",
                esc(&s.name),
                s.requests.load(Relaxed)
            );
        }
        o.push_str("# TYPE linetap_sink_requests_total counter\n");
        for s in &sinks {
            let _ = writeln!(
                o,
                "linetap_sink_requests_total{{sink=\"{}\"}} {}",
                esc(&s.name),
                s.write_requests.load(Relaxed)
            );
        }
        o.push_str("# TYPE linetap_samples_dropped_total counter\n");
        for s in &sinks {
            for (reason, v) in [
                ("queue_full", &s.dropped_queue_full),
                ("not_finite", &s.dropped_not_finite),
                ("out_of_range", &s.dropped_out_of_range),
                ("rejected", &s.dropped_rejected),
                ("shutdown", &s.dropped_shutdown),
                ("buffer_full", &s.dropped_buffer_full),
                ("corrupt", &s.dropped_corrupt),
                ("disk_error", &s.dropped_disk_error),
            ] {
                let _ = writeln!(
                    o,
                    "linetap_samples_dropped_total{{sink=\"{}\",reason=\"{reason}\"}} {}",
                    esc(&s.name),
                    v.load(Relaxed)
                );
            }
        }
        o.push_str("# TYPE linetap_sink_errors_total counter\n");
        for s in &sinks {
            for (reason, v) in [
                ("unauthorized", &s.errors_unauthorized),
                ("not_found", &s.errors_not_found),
                ("unavailable", &s.errors_unavailable),
                ("bad_request", &s.errors_bad_request),
            ] {
                let _ = writeln!(
                    o,
                    "linetap_sink_errors_total{{sink=\"{}\",reason=\"{reason}\"}} {}",
                    esc(&s.name),
                    v.load(Relaxed)
                );
            }
        }
        o.push_str("# TYPE linetap_sink_held gauge\n");
        for s in &sinks {
            let _ = writeln!(
                o,
                "linetap_sink_held{{sink=\"{}\"}} {}",
                esc(&s.name),
                s.held().is_some() as u8
            );
        }
        o.push_str("# TYPE linetap_buffer_bytes gauge\n");
        for s in &sinks {
            let _ = writeln!(
                o,
                "linetap_buffer_bytes{{sink=\"{}\"}} {}",
                esc(&s.name),
                s.buffer_bytes.load(Relaxed)
            );
        }
        o.push_str("# TYPE linetap_buffer_oldest_age_seconds gauge\n");
        for s in &sinks {
            let _ = writeln!(
                o,
                "linetap_buffer_oldest_age_seconds{{sink=\"{}\"}} {}",
                esc(&s.name),
                s.buffer_oldest_ms.load(Relaxed) as f64 / 1000.0
            );
        }
        let _ = writeln!(o, "# TYPE linetap_buffer_written_bytes_total counter\nlinetap_buffer_written_bytes_total {}", self.buffer_bytes_written.load(Relaxed));
        let _ = writeln!(o, "# TYPE linetap_buffer_corrupt_bytes_total counter\nlinetap_buffer_corrupt_bytes_total {}", self.buffer_corrupt_bytes.load(Relaxed));
        let _ = writeln!(
            o,
            "# TYPE linetap_config_reloads_total counter\nlinetap_config_reloads_total{{result=\"ok\"}} {}\nlinetap_config_reloads_total{{result=\"error\"}} {}",
            self.config_reloads_ok.load(Relaxed),
            self.config_reloads_error.load(Relaxed)
        );
        let _ = writeln!(o, "# TYPE linetap_buffer_quarantined_segments_total counter\nlinetap_buffer_quarantined_segments_total {}", self.buffer_quarantined.load(Relaxed));
        let _ = writeln!(
            o,
            "# TYPE linetap_buffer_disk_error gauge\nlinetap_buffer_disk_error {}",
            self.disk_error().is_some() as u8
        );
        o
    }
}
