//! The bus scheduler: polls every device of one bus (a Modbus TCP endpoint, a serial port, or
//! an RTU-over-TCP gateway) over its one `Link`, one request in flight, earliest deadline
//! first across all (device, poll group) pairs. Each group keeps its own interval without
//! drift: a group's next deadline is its previous deadline plus its interval; deadlines that
//! have already passed are skipped and counted, never bunched. After each cycle of its fastest
//! group a device writes its health record.
//!
//! On a shared bus (more than one device) a unit that has not answered for
//! `DEGRADE_AFTER_CYCLES` consecutive polls is degraded: it is only probed every
//! `probe_interval` (one attempt, no retries) until it answers again, so a dead unit costs the
//! healthy ones at most one timeout per probe. Its health record keeps saying why it is down.

use super::decode::decode_field;
use super::link::Link;
use super::link::{ReadError, ReadSpec, Words};
use super::plan::{PollGroup, ReadRequest};
use super::timer::PollTimer;
use crate::model::catalog::HealthIds;
use crate::model::{now_ns, Quality, Sample, SampleBatch, Value};
use crate::observe::liveness::Beat;
use crate::observe::metrics::DeviceMetrics;
use crate::shutdown::Shutdown;
use crate::transform::DeviceOutput;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Consecutive polls without an answer after which a unit on a shared bus is only probed.
pub const DEGRADE_AFTER_CYCLES: u32 = 3;

/// Everything the poller needs to know about one device, fixed at start-up.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    /// Catalog device id.
    pub device: u32,
    pub name: String,
    pub unit: u8,
    pub timeout: Duration,
    /// Extra silence around this unit's frames (RTU).
    pub turnaround: Duration,
    /// Further attempts after a timeout, CRC or framing error.
    pub retries: u8,
    /// How often a degraded unit is probed.
    pub probe_interval: Duration,
    pub groups: Vec<PollGroup>,
    pub health: HealthIds,
}

/// When a group is next due; the schedule arithmetic, kept apart from the I/O.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub next: Instant,
    pub interval: Duration,
}

impl Schedule {
    /// Advances past `now` from the previous deadline, returning how many ticks were skipped.
    pub fn advance(&mut self, now: Instant) -> u64 {
        if self.interval.is_zero() {
            // Back to back: due again at once, never behind.
            self.next = now;
            return 0;
        }
        self.next += self.interval;
        if self.next > now {
            return 0;
        }
        let behind = now - self.next;
        let skipped = (behind.as_nanos() / self.interval.as_nanos()) as u64 + 1;
        self.next += self.interval * skipped as u32;
        skipped
    }
}

/// A unit's answer/no-answer history: when to stop polling it at full rate and when to probe.
#[derive(Debug, Clone)]
pub struct Degrade {
    /// Consecutive polls without an answer.
    pub failed: u32,
    /// Degraded: the next probe is due at this instant.
    pub probe_at: Option<Instant>,
}

/// What to do with a due poll of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Poll normally (with retries).
    Poll,
    /// Degraded and a probe is due: one attempt.
    Probe,
    /// Degraded and no probe is due: skip the I/O.
    Skip,
}

impl Degrade {
    pub fn new() -> Self {
        Degrade {
            failed: 0,
            probe_at: None,
        }
    }
    pub fn due(&self, now: Instant) -> Due {
        match self.probe_at {
            None => Due::Poll,
            Some(at) if now >= at => Due::Probe,
            Some(_) => Due::Skip,
        }
    }
    /// Records a poll's outcome; returns Some(true) when the unit became degraded, Some(false)
    /// when it recovered, None otherwise.
    pub fn record(&mut self, answered: bool, now: Instant, probe_every: Duration) -> Option<bool> {
        if answered {
            self.failed = 0;
            return self.probe_at.take().map(|_| false);
        }
        self.failed = self.failed.saturating_add(1);
        let was = self.probe_at.is_some();
        if was || self.failed >= DEGRADE_AFTER_CYCLES {
            self.probe_at = Some(now + probe_every);
        }
        (!was && self.probe_at.is_some()).then_some(true)
    }
}

impl Default for Degrade {
    fn default() -> Self {
        Self::new()
    }
}

struct Slot {
    device: usize,
    group: usize,
    schedule: Schedule,
    /// The device's fastest group: it writes the health record.
    primary: bool,
}

struct DeviceState {
    seq: u64,
    errors: u64,
    cycle_ok: bool,
    cycle_latency: Duration,
    last_error: Option<String>,
    /// The kind of failure last logged, so a persistent fault is logged once, not every cycle.
    logged: Option<&'static str>,
    degrade: Degrade,
    /// When the last health record was written.
    last_health: Option<Instant>,
}

/// A device polled faster than this (back to back, `poll = "0s"`, or a few ms) writes its
/// health record at most this often: four health fields per poll would cost more than the
/// values at thousands of polls per second.
pub const HEALTH_EVERY: Duration = Duration::from_millis(100);

/// A device polled back to back that did not answer is tried again after this long.
pub const BACK_TO_BACK_RETRY: Duration = Duration::from_millis(100);

/// Polls `devices` (with their outputs and metrics slots, in the same order) over `link` until
/// shutdown.
pub async fn run(
    mut link: Link,
    devices: Vec<DevicePlan>,
    mut outputs: Vec<DeviceOutput>,
    metrics: Vec<Arc<DeviceMetrics>>,
    beat: Beat,
    mut shutdown: Shutdown,
) {
    let start = Instant::now();
    // Degradation protects the other units of a bus; a device alone keeps its full rate.
    let shared = devices.len() > 1;
    let mut slots = Vec::new();
    for (d, dev) in devices.iter().enumerate() {
        let fastest = dev.groups.iter().map(|g| g.interval).min();
        for (g, group) in dev.groups.iter().enumerate() {
            slots.push(Slot {
                device: d,
                group: g,
                schedule: Schedule {
                    next: start,
                    interval: group.interval,
                },
                primary: Some(group.interval) == fastest
                    && !slots.iter().any(|s: &Slot| s.device == d && s.primary),
            });
        }
    }
    let mut state: Vec<DeviceState> = devices
        .iter()
        .map(|_| DeviceState {
            seq: 0,
            errors: 0,
            cycle_ok: true,
            cycle_latency: Duration::ZERO,
            last_error: None,
            logged: None,
            degrade: Degrade::new(),
            last_health: None,
        })
        .collect();
    if slots.is_empty() {
        return;
    }
    let mut timer = PollTimer::new();
    loop {
        // Earliest deadline first; on a tie a degraded unit goes last, so a probe that times
        // out delays the others' next polls instead of making them skip this one.
        let Some(i) = (0..slots.len()).min_by_key(|&i| {
            let degraded = state[slots[i].device].degrade.probe_at.is_some();
            (slots[i].schedule.next, degraded)
        }) else {
            return;
        };
        let at = slots[i].schedule.next;
        if at > Instant::now() {
            // The deadline expected next: this slot's following one, or another slot's sooner.
            let then = slots
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, s)| s.schedule.next)
                .filter(|&next| next > at)
                .fold(at + slots[i].schedule.interval, Instant::min);
            tokio::select! {
                _ = timer.until(at, then) => {}
                _ = shutdown.recv() => return,
            }
        } else if shutdown.is_shutdown() {
            return;
        } else {
            // Already due (back to back, or late): no timer. tokio's timer rounds a deadline
            // up to its next millisecond tick, which would cap a device at ~1000 polls/s.
            // Yield once so a device polled back to back never starves the other tasks.
            tokio::task::yield_now().await;
        }
        let slot = &slots[i];
        let slot_device = slot.device;
        let dev = &devices[slot.device];
        let dm = &*metrics[slot.device];
        let group = &dev.groups[slot.group];
        let st = &mut state[slot.device];
        let mut batch = SampleBatch {
            device: dev.device,
            seq: 0,
            samples: Vec::with_capacity(
                group.requests.iter().map(|r| r.fields.len()).sum::<usize>() + 4,
            ),
            timestamp_ns: 0,
        };
        let cycle_start = Instant::now();
        let due = if shared {
            st.degrade.due(cycle_start)
        } else {
            Due::Poll
        };
        let mut cycle_answered = false;
        if due == Due::Skip {
            st.cycle_ok = false;
        } else {
            let attempts = if due == Due::Probe {
                1
            } else {
                1 + dev.retries as u32
            };
            let mut answered = false;
            'requests: for req in &group.requests {
                for attempt in 1..=attempts {
                    let spec = ReadSpec {
                        unit: dev.unit,
                        table: req.table,
                        start: req.start,
                        count: req.count,
                        timeout: dev.timeout,
                        turnaround: dev.turnaround,
                    };
                    // Busy for one request: it is bounded by its timeout.
                    beat.busy();
                    let result = link.read(&spec).await;
                    beat.idle();
                    if let Some(unit) = link.take_late() {
                        if let Some(late) = devices.iter().position(|d| d.unit == unit) {
                            metrics[late].late_replies.fetch_add(1, Relaxed);
                        }
                    }
                    match result {
                        Ok(words) => {
                            answered = true;
                            dm.requests_ok.fetch_add(1, Relaxed);
                            let ts = batch.stamp(now_ns());
                            if let Err(e) = decode_into(req, &words, ts, &mut batch.samples) {
                                st.errors += 1;
                                st.cycle_ok = false;
                                dm.decode_errors.fetch_add(1, Relaxed);
                                note_error(st, "decode_error", &dev.name, e);
                            }
                            break;
                        }
                        Err(e) => {
                            st.errors += 1;
                            count_error(dm, &e);
                            let retry = attempt < attempts
                                && matches!(
                                    e,
                                    ReadError::Timeout | ReadError::Crc | ReadError::Frame(_)
                                );
                            if retry {
                                tracing::debug!(device = %dev.name, error = %e, attempt, "retrying");
                                continue;
                            }
                            st.cycle_ok = false;
                            let reason = format!(
                                "{} {} {}+{}: {e}",
                                link.address(),
                                req.table.as_str(),
                                req.start,
                                req.count
                            );
                            note_error(st, e.result_label(), &dev.name, reason);
                            match e {
                                ReadError::Exception(_) => answered = true,
                                // The unit answered, garbled: the next request may do better.
                                ReadError::Crc | ReadError::Frame(_) => {}
                                // The unit or the link is down; the rest would fail the same way.
                                _ => break 'requests,
                            }
                            break;
                        }
                    }
                }
            }
            cycle_answered = answered;
            dm.observe_poll(cycle_start.elapsed());
            if shared {
                match st
                    .degrade
                    .record(answered, Instant::now(), dev.probe_interval)
                {
                    Some(true) => tracing::warn!(
                        device = %dev.name,
                        bus = %link.address(),
                        probe_every = ?dev.probe_interval,
                        "unit is not answering; probing it only every probe_interval so the bus keeps serving the others"
                    ),
                    Some(false) => {
                        tracing::info!(device = %dev.name, "unit answers again; polling at its full rate")
                    }
                    None => {}
                }
            }
        }
        st.cycle_latency += cycle_start.elapsed();
        let health_due = group.interval >= HEALTH_EVERY
            || st
                .last_health
                .is_none_or(|t| cycle_start.duration_since(t) >= HEALTH_EVERY);
        if slot.primary && !health_due {
            // Not yet: the next record reports the latest cycle's latency, and down if any
            // cycle in between failed.
            st.cycle_latency = Duration::ZERO;
        }
        if slot.primary && health_due {
            st.last_health = Some(cycle_start);
            let ts = batch.stamp(now_ns());
            let h = dev.health;
            let up = st.cycle_ok;
            dm.up.store(up, Relaxed);
            if up && st.logged.take().is_some() {
                tracing::info!(device = %dev.name, "device is answering again");
            }
            let push = |samples: &mut Vec<Sample>, point, value| {
                samples.push(Sample {
                    point,
                    timestamp_ns: ts,
                    quality: Quality::Good as i32,
                    value: Some(value),
                })
            };
            push(&mut batch.samples, h.up, Value::BoolValue(up));
            push(
                &mut batch.samples,
                h.latency_ms,
                Value::DoubleValue(st.cycle_latency.as_secs_f64() * 1000.0),
            );
            push(&mut batch.samples, h.errors, Value::UintValue(st.errors));
            let last = if up {
                st.last_error = None;
                String::new()
            } else {
                // Kept while the unit stays down (a degraded unit is skipped most cycles).
                st.last_error.clone().unwrap_or_default()
            };
            push(&mut batch.samples, h.last_error, Value::StringValue(last));
            st.cycle_ok = true;
            st.cycle_latency = Duration::ZERO;
        }
        dm.samples.fetch_add(batch.samples.len() as u64, Relaxed);
        st.seq += 1;
        batch.seq = st.seq;
        outputs[slot_device].publish(batch).await;
        let skipped = if group.interval.is_zero() && !cycle_answered {
            // Back to back, but the device did not answer (or is down, or its connection is
            // in its reconnect backoff, which fails at once): wait before trying again, or a
            // dead device would spin a core.
            slots[i].schedule.next = Instant::now() + BACK_TO_BACK_RETRY;
            0
        } else {
            slots[i].schedule.advance(Instant::now())
        };
        if skipped > 0 {
            dm.missed_ticks.fetch_add(skipped, Relaxed);
        }
    }
}

fn count_error(dm: &DeviceMetrics, e: &ReadError) {
    let c = match e {
        ReadError::Connect(_) => &dm.requests_connect_error,
        ReadError::Timeout => &dm.requests_timeout,
        ReadError::Exception(_) => &dm.requests_exception,
        ReadError::Link(_) => &dm.requests_link_error,
        ReadError::Crc => &dm.requests_crc_error,
        ReadError::Frame(_) => &dm.requests_frame_error,
    };
    c.fetch_add(1, Relaxed);
}

/// Keeps the reason for the health record. Logs a warning when a device starts failing (and
/// when the kind of failure changes), not on every failed request: a dead device would
/// otherwise fill the journal. Recovery is logged once by the health step.
fn note_error(st: &mut DeviceState, kind: &'static str, device: &str, reason: String) {
    if st.logged != Some(kind) {
        tracing::warn!(device, error = %reason, "poll failed; logged again when the device answers or fails differently");
        st.logged = Some(kind);
    } else {
        tracing::debug!(device, error = %reason, "poll failed");
    }
    st.last_error = Some(reason);
}

/// Decodes every field of one response into samples stamped `ts`.
pub(crate) fn decode_into(
    req: &ReadRequest,
    words: &Words,
    ts: i64,
    out: &mut Vec<Sample>,
) -> Result<(), String> {
    let short = |got: usize| {
        format!(
            "{} {}+{}: short response ({got} of {})",
            req.table.as_str(),
            req.start,
            req.count,
            req.count
        )
    };
    match words {
        Words::Registers(regs) => {
            if regs.len() < req.count as usize {
                return Err(short(regs.len()));
            }
            for f in &req.fields {
                let value = decode_field(regs, f).ok_or_else(|| short(regs.len()))?;
                out.push(Sample {
                    point: f.point,
                    timestamp_ns: ts,
                    quality: Quality::Good as i32,
                    value: Some(value),
                });
            }
        }
        Words::Bits(bits) => {
            if bits.len() < req.count as usize {
                return Err(short(bits.len()));
            }
            for f in &req.fields {
                out.push(Sample {
                    point: f.point,
                    timestamp_ns: ts,
                    quality: Quality::Good as i32,
                    value: Some(Value::BoolValue(
                        bits.get(f.offset as usize).copied().unwrap_or(false),
                    )),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_skips_missed_ticks_without_drift() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Schedule {
            next: t0,
            interval: ms(100),
        };
        // On time: the next deadline is exactly one interval on.
        assert_eq!(s.advance(t0 + ms(5)), 0);
        assert_eq!(s.next, t0 + ms(100));
        // 350 ms late: deadlines 200 and 300 and 400 passed... skip to 500 and count the skipped.
        s.next = t0 + ms(100);
        assert_eq!(s.advance(t0 + ms(450)), 3);
        assert_eq!(s.next, t0 + ms(500));
        // Exactly on a deadline counts it as missed (it can no longer be served on time).
        let mut s = Schedule {
            next: t0,
            interval: ms(100),
        };
        assert_eq!(s.advance(t0 + ms(100)), 1);
        assert_eq!(s.next, t0 + ms(200));
    }

    #[test]
    fn back_to_back_is_due_again_at_once_and_never_behind() {
        let t0 = Instant::now();
        let mut s = Schedule {
            next: t0,
            interval: Duration::ZERO,
        };
        let later = t0 + Duration::from_millis(3);
        assert_eq!(s.advance(later), 0);
        assert_eq!(s.next, later);
    }

    #[test]
    fn a_unit_is_degraded_after_n_silent_polls_and_probed_until_it_answers() {
        let t0 = Instant::now();
        let every = Duration::from_secs(5);
        let mut d = Degrade::new();
        assert_eq!(d.due(t0), Due::Poll);
        for n in 1..DEGRADE_AFTER_CYCLES {
            assert_eq!(d.record(false, t0, every), None, "poll {n}");
            assert_eq!(d.due(t0), Due::Poll);
        }
        assert_eq!(d.record(false, t0, every), Some(true));
        assert_eq!(d.due(t0 + Duration::from_secs(1)), Due::Skip);
        assert_eq!(d.due(t0 + every), Due::Probe);
        // A failed probe: the next one an interval later.
        let t1 = t0 + every;
        assert_eq!(d.record(false, t1, every), None);
        assert_eq!(d.due(t1 + Duration::from_secs(4)), Due::Skip);
        assert_eq!(d.due(t1 + every), Due::Probe);
        // It answers: full rate again.
        assert_eq!(d.record(true, t1 + every, every), Some(false));
        assert_eq!(d.due(t1 + every), Due::Poll);
        assert_eq!(d.failed, 0);
    }
}
