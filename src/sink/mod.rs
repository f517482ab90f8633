//! Sinks: where samples go. Every sink runs the same loop (`run`): take batches from its queue,
//! encode them to line protocol, and hand a full batch (or whatever arrived within
//! `flush_interval`) to its `Writer`. On shutdown it drains its queue and keeps trying to
//! deliver until the grace period ends, then reports what it could not deliver.

pub mod file;
pub mod influx;
pub mod lineproto;

use crate::model::Catalog;
use crate::observe::metrics::SinkMetrics;
use crate::pipeline::BatchRx;
use crate::shutdown::Shutdown;
use lineproto::{LineEncoder, Skipped};
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

pub async fn run<W: Writer>(
    mut writer: W,
    settings: SinkLoop,
    catalog: &Catalog,
    mut rx: BatchRx,
    metrics: Arc<SinkMetricsRef>,
    mut shutdown: Shutdown,
) {
    let encoder = LineEncoder::new(catalog);
    let m = metrics.get();
    let mut body: Vec<u8> = Vec::with_capacity(settings.batch_size * 128);
    let mut lines = 0usize;
    let mut skipped = Skipped::default();
    let mut retry = RetryCtl::new(shutdown.clone(), settings.grace);
    let mut ticker = tokio::time::interval(settings.flush_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let closing = tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => {
                    lines += encoder.encode(&batch, &mut body, &mut skipped);
                    account_skipped(m, &mut skipped);
                    if lines < settings.batch_size {
                        continue;
                    }
                    false
                }
                None => true,
            },
            _ = ticker.tick() => {
                if lines == 0 {
                    continue;
                }
                false
            }
            _ = shutdown.recv() => true,
        };
        if closing {
            // Take what is still queued, then deliver it within the grace period.
            rx.close();
            while let Some(batch) = rx.recv().await {
                lines += encoder.encode(&batch, &mut body, &mut skipped);
                if lines >= settings.batch_size {
                    flush(&mut writer, &mut body, &mut lines, m, &mut retry).await;
                }
            }
            account_skipped(m, &mut skipped);
            flush(&mut writer, &mut body, &mut lines, m, &mut retry).await;
            let undelivered = m.dropped_shutdown.load(Relaxed);
            let dropped = m.dropped_total();
            let delivered = m.delivered.load(Relaxed);
            if undelivered > 0 {
                tracing::error!(sink = %m.name, delivered, undelivered, dropped, "stopped with samples that could not be delivered");
            } else if dropped > 0 {
                tracing::warn!(
                    sink = %m.name,
                    delivered,
                    queue_full = m.dropped_queue_full.load(Relaxed),
                    rejected = m.dropped_rejected.load(Relaxed),
                    not_finite = m.dropped_not_finite.load(Relaxed),
                    out_of_range = m.dropped_out_of_range.load(Relaxed),
                    "sink stopped; samples were dropped during the run"
                );
            } else {
                tracing::info!(sink = %m.name, delivered, "sink stopped, everything delivered");
            }
            return;
        }
        flush(&mut writer, &mut body, &mut lines, m, &mut retry).await;
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

async fn flush<W: Writer>(
    writer: &mut W,
    body: &mut Vec<u8>,
    lines: &mut usize,
    m: &SinkMetrics,
    retry: &mut RetryCtl,
) {
    if *lines == 0 {
        return;
    }
    let started = Instant::now();
    let outcome = writer.write(body, *lines, retry).await;
    m.write_micros
        .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
    m.requests.fetch_add(1, Relaxed);
    match outcome {
        Outcome::Delivered => {
            m.delivered.fetch_add(*lines as u64, Relaxed);
            m.bytes_sent.fetch_add(body.len() as u64, Relaxed);
        }
        Outcome::Rejected(reason) => {
            m.dropped_rejected.fetch_add(*lines as u64, Relaxed);
            tracing::error!(sink = %m.name, lines = *lines, %reason, "batch rejected; dropped");
        }
        Outcome::Abandoned(reason) => {
            m.dropped_shutdown.fetch_add(*lines as u64, Relaxed);
            tracing::error!(sink = %m.name, lines = *lines, %reason, "grace period over; batch not delivered");
        }
    }
    body.clear();
    *lines = 0;
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
