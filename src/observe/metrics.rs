//! Counters and gauges shared by the components (lock-free atomics, fixed at start-up: one
//! slot per device and per sink). The demo summary and the Prometheus endpoint read them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

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
    /// Sum and count of poll durations, in microseconds.
    pub poll_micros: AtomicU64,
}

#[derive(Debug, Default)]
pub struct SinkMetrics {
    pub name: String,
    pub delivered: AtomicU64,
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub write_micros: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_not_finite: AtomicU64,
    pub dropped_out_of_range: AtomicU64,
    pub dropped_rejected: AtomicU64,
    pub dropped_shutdown: AtomicU64,
    pub bytes_sent: AtomicU64,
}

impl SinkMetrics {
    pub fn dropped_total(&self) -> u64 {
        self.dropped_queue_full.load(Relaxed)
            + self.dropped_not_finite.load(Relaxed)
            + self.dropped_out_of_range.load(Relaxed)
            + self.dropped_rejected.load(Relaxed)
            + self.dropped_shutdown.load(Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub devices: Vec<DeviceMetrics>,
    pub sinks: Vec<SinkMetrics>,
}

impl Metrics {
    pub fn new(
        devices: impl IntoIterator<Item = String>,
        sinks: impl IntoIterator<Item = String>,
    ) -> Self {
        Metrics {
            devices: devices
                .into_iter()
                .map(|name| DeviceMetrics {
                    name,
                    ..Default::default()
                })
                .collect(),
            sinks: sinks
                .into_iter()
                .map(|name| SinkMetrics {
                    name,
                    ..Default::default()
                })
                .collect(),
        }
    }

    pub fn collected(&self) -> u64 {
        self.devices.iter().map(|d| d.samples.load(Relaxed)).sum()
    }

    /// The Prometheus text exposition of every counter.
    pub fn render_prometheus(&self) -> String {
        let mut o = String::new();
        o.push_str("# TYPE linetap_device_up gauge\n");
        for d in &self.devices {
            let _ = writeln!(
                o,
                "linetap_device_up{{device=\"{}\"}} {}",
                d.name,
                d.up.load(Relaxed) as u8
            );
        }
        o.push_str("# TYPE linetap_modbus_requests_total counter\n");
        for d in &self.devices {
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
                    d.name,
                    v.load(Relaxed)
                );
            }
        }
        o.push_str("# TYPE linetap_modbus_late_replies_total counter\n");
        for d in &self.devices {
            let _ = writeln!(
                o,
                "linetap_modbus_late_replies_total{{device=\"{}\"}} {}",
                d.name,
                d.late_replies.load(Relaxed)
            );
        }
        o.push_str("# TYPE linetap_samples_collected_total counter\n");
        for d in &self.devices {
            let _ = writeln!(
                o,
                "linetap_samples_collected_total{{device=\"{}\"}} {}",
                d.name,
                d.samples.load(Relaxed)
            );
        }
        o.push_str("# TYPE linetap_poll_missed_ticks_total counter\n");
        for d in &self.devices {
            let _ = writeln!(
                o,
                "linetap_poll_missed_ticks_total{{device=\"{}\"}} {}",
                d.name,
                d.missed_ticks.load(Relaxed)
            );
        }
        o.push_str("# TYPE linetap_samples_delivered_total counter\n");
        for s in &self.sinks {
            let _ = writeln!(
                o,
                "linetap_samples_delivered_total{{sink=\"{}\"}} {}",
                s.name,
                s.delivered.load(Relaxed)
            );
        }
        o.push_str("# TYPE linetap_samples_dropped_total counter\n");
        for s in &self.sinks {
            for (reason, v) in [
                ("queue_full", &s.dropped_queue_full),
                ("not_finite", &s.dropped_not_finite),
                ("out_of_range", &s.dropped_out_of_range),
                ("rejected", &s.dropped_rejected),
                ("shutdown", &s.dropped_shutdown),
            ] {
                let _ = writeln!(
                    o,
                    "linetap_samples_dropped_total{{sink=\"{}\",reason=\"{reason}\"}} {}",
                    s.name,
                    v.load(Relaxed)
                );
            }
        }
        o
    }
}
