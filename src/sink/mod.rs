//! Sinks: where samples go. Every sink runs the same loop (`run`): take batches from its queue,
//! encode them to line protocol, and hand a full batch (or whatever arrived within
//! `flush_interval`) to its `Writer`. On shutdown it drains its queue and keeps trying to
//! deliver until the grace period ends, then reports what it could not deliver.

pub mod file;
pub mod influx;
pub mod lineproto;

use crate::buffer::SinkReader;
use crate::observe::metrics::SinkMetrics;
use crate::shutdown::Shutdown;
use lineproto::{LineEncoder, Skipped};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How a write ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// The destination refused the data for good (e.g. HTTP 400): dropped and counted.
    Rejected(String),
    /// Shutdown came and the grace period ran out before the data could be delivered.
    Abandoned(String),
}

/// Retry control handed to a writer: how to wait between attempts and when to give up.
pub struct RetryCtl {
    shutdown: Shutdown,
    grace: Duration,
    give_up_at: Option<Instant>,
}

impl RetryCtl {
    pub fn new(shutdown: Shutdown, grace: Duration) -> Self {
        RetryCtl {
            shutdown,
            grace,
            give_up_at: None,
        }
    }

    /// Waits `delay` before the next attempt; returns false when the writer must give up
    /// (shutdown was requested and the grace period is over).
    pub async fn wait(&mut self, delay: Duration) -> bool {
        if self.give_up_at.is_none() && self.shutdown.is_shutdown() {
            self.give_up_at = Some(Instant::now() + self.grace);
        }
        if let Some(at) = self.give_up_at {
            let until = (Instant::now() + delay).min(at);
            tokio::time::sleep_until(until).await;
            return Instant::now() < at;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.shutdown.recv() => {
                self.give_up_at = Some(Instant::now() + self.grace);
                true
            }
        }
    }
}

/// Delivers line-protocol bodies somewhere.
pub trait Writer {
    /// Writes `body` (`lines` complete lines), retrying as the destination warrants.
    fn write(
        &mut self,
        body: &[u8],
        lines: usize,
        retry: &mut RetryCtl,
    ) -> impl std::future::Future<Output = Outcome>;
}

/// The settings of the common sink loop.
pub struct SinkLoop {
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub grace: Duration,
}

/// Encoders by catalog id: records written under an earlier configuration keep their meaning.
struct Encoders {
    by_catalog: HashMap<u64, Option<LineEncoder>>,
}

impl Encoders {
    fn get(&mut self, id: u64, reader: &mut SinkReader) -> Option<&LineEncoder> {
        self.by_catalog
            .entry(id)
            .or_insert_with(|| reader.catalog(id).map(|c| LineEncoder::new(&c)))
            .as_ref()
    }
}

/// The loop every sink runs: read from its buffer cursor, encode, flush by size or interval,
/// acknowledge what was delivered. A sink that cannot deliver keeps retrying its batch while
/// the buffer holds everything after it on disk.
pub async fn run<W: Writer>(
    mut writer: W,
    settings: SinkLoop,
    mut reader: SinkReader,
    metrics: Arc<SinkMetricsRef>,
    mut shutdown: Shutdown,
) {
    let m = metrics.get();
    let mut encoders = Encoders {
        by_catalog: HashMap::new(),
    };
    let mut body: Vec<u8> = Vec::with_capacity(settings.batch_size * 128);
    let mut lines = 0usize;
    let mut skipped = Skipped::default();
    let mut retry = RetryCtl::new(shutdown.clone(), settings.grace);
    let mut next_flush = Instant::now() + settings.flush_interval;
    // About how many buffer bytes make a full batch: with that much waiting, do not wait.
    let batch_bytes = settings.batch_size as u64 * 24;
    let mut closing_deadline: Option<Instant> = None;
    'outer: loop {
        if closing_deadline.is_none() && shutdown.is_shutdown() {
            closing_deadline = Some(Instant::now() + settings.grace);
        }
        let closing = closing_deadline.is_some();
        // Wait for the flush interval or a full batch, whichever comes first. The writer
        // publishes at most one new head per tick, so this wakes at most 50 times a second.
        let mut stop = false;
        while !closing && reader.pending_bytes() < batch_bytes {
            tokio::select! {
                _ = tokio::time::sleep_until(next_flush) => break,
                _ = reader.changed() => {}
                _ = shutdown.recv() => {
                    stop = true;
                    break;
                }
            }
        }
        if stop {
            continue;
        }
        next_flush = Instant::now() + settings.flush_interval;
        // Deliver everything readable now, a full batch at a time.
        while reader.has_data() {
            let items = reader.read(settings.batch_size - lines).await;
            if items.is_empty() {
                break;
            }
            for item in &items {
                match encoders.get(item.catalog, &mut reader) {
                    Some(enc) => lines += enc.encode(&item.batch, &mut body, &mut skipped),
                    None => {
                        m.dropped_corrupt
                            .fetch_add(item.batch.samples.len() as u64, Relaxed);
                        tracing::error!(sink = %m.name, catalog = item.catalog, "buffered data refers to a catalog that is missing; dropped");
                    }
                }
            }
            account_skipped(m, &mut skipped);
            if lines >= settings.batch_size {
                if !flush(&mut writer, &mut body, &mut lines, m, &mut retry).await {
                    break 'outer;
                }
                reader.ack();
                reader.observe();
            }
            if closing_deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        // Not delivered before the grace period ended: it stays in the buffer.
        if lines > 0 && !flush(&mut writer, &mut body, &mut lines, m, &mut retry).await {
            break;
        }
        // Rejected-and-dropped or delivered: either way, done with what was read.
        reader.ack();
        reader.observe();
        if closing && (!reader.has_data() || closing_deadline.is_some_and(|d| Instant::now() >= d))
        {
            break;
        }
    }
    reader.observe();
    let kept = m.buffer_bytes.load(Relaxed);
    let dropped = m.dropped_total();
    let delivered = m.delivered.load(Relaxed);
    if kept > 0 {
        let (head, read, acked) = reader.positions();
        tracing::warn!(sink = %m.name, delivered, kept_bytes = kept, head, read, acked, "sink stopped; undelivered data stays in the buffer for the next start");
    } else if dropped > 0 {
        tracing::warn!(
            sink = %m.name,
            delivered,
            queue_full = m.dropped_queue_full.load(Relaxed),
            rejected = m.dropped_rejected.load(Relaxed),
            not_finite = m.dropped_not_finite.load(Relaxed),
            out_of_range = m.dropped_out_of_range.load(Relaxed),
            buffer_full = m.dropped_buffer_full.load(Relaxed),
            corrupt = m.dropped_corrupt.load(Relaxed),
            "sink stopped; samples were dropped during the run"
        );
    } else {
        tracing::info!(sink = %m.name, delivered, "sink stopped, everything delivered");
    }
}

fn account_skipped(m: &SinkMetrics, skipped: &mut Skipped) {
    if skipped.total() > 0 {
        m.dropped_not_finite.fetch_add(skipped.not_finite, Relaxed);
        m.dropped_out_of_range
            .fetch_add(skipped.out_of_range + skipped.unknown_point, Relaxed);
        *skipped = Skipped::default();
    }
}

/// Writes the pending body. Returns whether it may be acknowledged in the buffer: delivered,
/// or rejected for good (dropped and counted); false when shutdown ended the retries.
async fn flush<W: Writer>(
    writer: &mut W,
    body: &mut Vec<u8>,
    lines: &mut usize,
    m: &SinkMetrics,
    retry: &mut RetryCtl,
) -> bool {
    if *lines == 0 {
        return true;
    }
    let started = Instant::now();
    let outcome = writer.write(body, *lines, retry).await;
    m.write_micros
        .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
    m.requests.fetch_add(1, Relaxed);
    let acknowledge = match outcome {
        Outcome::Delivered => {
            m.delivered.fetch_add(*lines as u64, Relaxed);
            m.bytes_sent.fetch_add(body.len() as u64, Relaxed);
            true
        }
        Outcome::Rejected(reason) => {
            m.dropped_rejected.fetch_add(*lines as u64, Relaxed);
            tracing::error!(sink = %m.name, lines = *lines, %reason, "batch rejected; dropped");
            true
        }
        Outcome::Abandoned(reason) => {
            tracing::warn!(sink = %m.name, lines = *lines, %reason, "grace period over; the batch stays in the buffer");
            false
        }
    };
    body.clear();
    *lines = 0;
    acknowledge
}

/// A handle to one sink's slot in the shared metrics.
pub struct SinkMetricsRef {
    pub metrics: Arc<crate::observe::metrics::Metrics>,
    pub index: usize,
}

impl SinkMetricsRef {
    fn get(&self) -> &SinkMetrics {
        &self.metrics.sinks[self.index]
    }
}
