//! Polls the devices behind one Modbus endpoint over one `TcpLink`. Each device's poll groups
//! keep their own interval without drift: a group's next deadline is its previous deadline
//! plus its interval; deadlines that have already passed are skipped and counted, never
//! bunched. After each cycle of its fastest group a device writes its health record.

use super::decode::decode_field;
use super::plan::{PollGroup, ReadRequest};
use super::tcp::{ReadError, TcpLink, Words};
use crate::buffer::BufferInput;
use crate::model::catalog::HealthIds;
use crate::model::{now_ns, Quality, Sample, SampleBatch, Value};
use crate::observe::metrics::{DeviceMetrics, Metrics};
use crate::shutdown::Shutdown;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Everything the poller needs to know about one device, fixed at start-up.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    /// Catalog device id (also the index into `Metrics::devices`).
    pub device: u32,
    pub name: String,
    pub unit: u8,
    pub timeout: Duration,
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
}

pub async fn run(
    mut link: TcpLink,
    devices: Vec<DevicePlan>,
    input: BufferInput,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) {
    let start = Instant::now();
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
        })
        .collect();
    if slots.is_empty() {
        return;
    }
    loop {
        let Some(i) = (0..slots.len()).min_by_key(|&i| slots[i].schedule.next) else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(slots[i].schedule.next) => {}
            _ = shutdown.recv() => return,
        }
        let slot = &slots[i];
        let dev = &devices[slot.device];
        let dm = &metrics.devices[dev.device as usize];
        let group = &dev.groups[slot.group];
        let st = &mut state[slot.device];
        let mut batch = SampleBatch {
            device: dev.device,
            seq: 0,
            samples: Vec::with_capacity(
                group.requests.iter().map(|r| r.fields.len()).sum::<usize>() + 4,
            ),
        };
        let cycle_start = Instant::now();
        for req in &group.requests {
            match link
                .read(dev.unit, req.table, req.start, req.count, dev.timeout)
                .await
            {
                Ok(words) => {
                    dm.requests_ok.fetch_add(1, Relaxed);
                    let ts = now_ns();
                    if let Err(e) = decode_into(req, &words, ts, &mut batch.samples) {
                        st.errors += 1;
                        st.cycle_ok = false;
                        dm.decode_errors.fetch_add(1, Relaxed);
                        note_error(st, "decode_error", &dev.name, e);
                    }
                }
                Err(e) => {
                    st.errors += 1;
                    st.cycle_ok = false;
                    count_error(dm, &e);
                    let reason = format!(
                        "{} {} {}+{}: {e}",
                        link.address(),
                        req.table.as_str(),
                        req.start,
                        req.count
                    );
                    note_error(st, e.result_label(), &dev.name, reason);
                    if !matches!(e, ReadError::Exception(_)) {
                        // The link is down; the rest of this group would fail the same way.
                        break;
                    }
                }
            }
        }
        st.cycle_latency += cycle_start.elapsed();
        dm.observe_poll(cycle_start.elapsed());
        if slot.primary {
            let ts = now_ns();
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
                String::new()
            } else {
                st.last_error.take().unwrap_or_default()
            };
            push(&mut batch.samples, h.last_error, Value::StringValue(last));
            st.cycle_ok = true;
            st.cycle_latency = Duration::ZERO;
        }
        dm.samples.fetch_add(batch.samples.len() as u64, Relaxed);
        st.seq += 1;
        batch.seq = st.seq;
        input.publish(batch).await;
        let skipped = slots[i].schedule.advance(Instant::now());
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
fn decode_into(
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
}
