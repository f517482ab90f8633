//! Sinks: where samples go. Each sink kind is a folder (`influx/`, `file/`) with its config
//! validation and a `build` that returns a `Sink`; `build` below is the one place that maps a
//! configured kind to its folder. Every sink runs the same loop (`run`): take batches (each with
//! the catalog version it refers to) from its buffer cursor, `add` them to the sink's pending
//! delivery, `flush` a full batch (or whatever arrived within `flush_interval`), and acknowledge
//! what was delivered. On shutdown it keeps trying to deliver until the grace period ends, then
//! reports what stays in the buffer. Line protocol (`lineproto.rs`, `lines.rs`) is the encoder
//! of the InfluxDB and file sinks, not of the loop.

pub mod deadletter;
pub mod file;
pub mod influx;
pub mod lineproto;
pub mod lines;
pub mod mqtt;

use crate::buffer::SinkReader;
use crate::config::table::RawTable;
use crate::config::validate::sinks::SinkDraft;
use crate::config::validate::Ctx;
use crate::config::{Settings, SinkConfig};
use crate::model::{Catalog, SampleBatch};
use crate::observe::liveness::Beat;
use crate::observe::metrics::SinkMetrics;
use crate::shutdown::Shutdown;
use lineproto::Skipped;
use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How a write ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// The destination refused `lines` of the batch for good (e.g. HTTP 400 for a malformed
    /// line): those went to the dead-letter file, the rest was delivered.
    Rejected {
        lines: usize,
        reason: String,
    },
    /// Shutdown came and the grace period ran out before the data could be delivered.
    Abandoned(String),
}

/// Retry control handed to a writer: how to wait between attempts and when to give up.
pub struct RetryCtl {
    shutdown: Shutdown,
    grace: Duration,
    give_up_at: Option<Instant>,
    /// The sink's metrics: writers count errors and report held data through them.
    pub metrics: Arc<SinkMetrics>,
    /// Idle while waiting between attempts (the watchdog).
    beat: Beat,
    /// When refused lines were last logged, and how many were refused since.
    rejected_log: (Option<Instant>, u64),
}

impl RetryCtl {
    pub fn new(shutdown: Shutdown, grace: Duration, metrics: Arc<SinkMetrics>, beat: Beat) -> Self {
        RetryCtl {
            shutdown,
            grace,
            give_up_at: None,
            metrics,
            beat,
            rejected_log: (None, 0),
        }
    }

    /// Whether to log `lines` refused now: at most once a minute (a series the store keeps
    /// refusing is refused at every flush); returns the count since the last log.
    fn log_rejected(&mut self, lines: u64) -> Option<u64> {
        let (at, since) = &mut self.rejected_log;
        *since += lines;
        if at.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return None;
        }
        *at = Some(Instant::now());
        Some(std::mem::take(since))
    }

    /// Waits `delay` before the next attempt; returns false when the writer must give up
    /// (shutdown was requested and the grace period is over).
    pub async fn wait(&mut self, delay: Duration) -> bool {
        self.beat.idle();
        let go_on = self.wait_inner(delay).await;
        self.beat.busy();
        go_on
    }

    async fn wait_inner(&mut self, delay: Duration) -> bool {
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

/// A destination. The loop hands it every batch with the catalog version it refers to (a
/// sink sees each version once, through `catalog`, before the first batch that uses it).
pub trait Sink: Send + 'static {
    /// Whether the sink can encode batches of catalog version `id` now (it may forget old
    /// versions; the loop then hands the version again).
    fn knows(&self, id: u64) -> bool;
    /// Batches written under catalog version `id` are described by `catalog`.
    fn catalog(&mut self, id: u64, catalog: &Catalog);
    /// Adds one batch (of catalog version `catalog`) to what the next `flush` delivers; returns
    /// how many records (lines, messages) it added, and counts what it had to skip.
    fn add(&mut self, catalog: u64, batch: &SampleBatch, skipped: &mut Skipped) -> usize;
    /// Delivers everything added since the last flush, retrying as the destination warrants.
    /// Whatever the outcome, the pending records are cleared.
    fn flush(&mut self, retry: &mut RetryCtl) -> impl std::future::Future<Output = Outcome> + Send;
    /// Bytes pending delivery (for `linetap_sink_bytes_sent`).
    fn pending_bytes(&self) -> usize;
    /// The loop ends (a stop, or a reload that stops this sink): say goodbye where the
    /// destination expects it (a Sparkplug NDEATH). Bounded by the loop (2 s).
    fn close(&mut self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
}

/// One sink kind: its `type`, its own keys of a `[sinks.NAME]` table, and how it is built.
/// The keys every sink has (type, batch_size, flush_interval) are read by shared code
/// (`config/validate/sinks.rs`) before the kind is asked.
pub trait SinkKind: Sync {
    /// Its `type`.
    fn name(&self) -> &'static str;
    /// The keys it reads (`config::table::fields_of` its struct): a key of another kind is
    /// then reported as not one of this kind's.
    fn keys(&self) -> &'static [&'static str];
    /// Reads and checks its keys of one sink (`raw` holds only those), errors at their
    /// locations in `cx`; the settings become `SinkConfig::settings`.
    fn validate(&self, cx: &mut Ctx, raw: RawTable, sink: &SinkDraft) -> Option<Settings>;
    /// The sink, ready to start.
    fn build(&self, settings: &Settings, ctx: &BuildContext) -> Result<Box<dyn Start>, String>;
    /// One line for `linetap check`: where the sink writes.
    fn describe(&self, settings: &Settings) -> String;
    /// The secrets it reads (their content enters its fingerprint; `check` tries them).
    fn secrets<'a>(&self, _settings: &'a Settings) -> Vec<&'a crate::config::Secret> {
        Vec::new()
    }
}

/// Every sink kind: a new kind is its folder and one line here.
pub static KINDS: &[&dyn SinkKind] = &[
    &influx::config::Kind,
    &file::config::Kind,
    &mqtt::config::Kind,
];

/// The kind named `name` (a `SinkConfig::kind`).
pub fn kind(name: &str) -> Option<&'static dyn SinkKind> {
    KINDS.iter().find(|k| k.name() == name).copied()
}

/// The kind's settings as `T`, or an error naming the sink (a kind handed another's settings).
pub(crate) fn settings_of<'a, T: std::any::Any>(
    settings: &'a Settings,
    kind: &str,
) -> Result<&'a T, String> {
    settings
        .get()
        .ok_or_else(|| format!("{kind} sink: settings of another kind"))
}

/// Builds the sink a configuration names, through its kind.
pub fn build(cfg: &SinkConfig, data_dir: &std::path::Path) -> Result<Box<dyn Start>, String> {
    let ctx = BuildContext {
        name: &cfg.name,
        data_dir,
    };
    let kind = kind(cfg.kind).ok_or_else(|| format!("unknown sink type {:?}", cfg.kind))?;
    kind.build(&cfg.settings, &ctx)
}

/// What a sink kind's `build` may use besides its own configuration.
pub struct BuildContext<'a> {
    /// The sink's name (its table name).
    pub name: &'a str,
    /// The agent's data directory (for a dead-letter file).
    pub data_dir: &'a std::path::Path,
}

/// A built sink, ready to run its loop.
pub trait Start: Send {
    fn start(self: Box<Self>, ctx: SinkContext) -> tokio::task::JoinHandle<()>;
}

impl<S: Sink> Start for S {
    fn start(self: Box<Self>, ctx: SinkContext) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run(*self, ctx))
    }
}

/// What a running sink is given.
pub struct SinkContext {
    pub settings: SinkLoop,
    pub reader: SinkReader,
    pub metrics: Arc<SinkMetrics>,
    pub shutdown: Shutdown,
    /// Busy while reading, encoding and writing; idle while waiting (the watchdog).
    pub beat: Beat,
}

/// The settings of the common sink loop.
pub struct SinkLoop {
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub grace: Duration,
}

/// The loop every sink runs: read from its buffer cursor, encode, flush by size or interval,
/// acknowledge what was delivered. A sink that cannot deliver keeps retrying its batch while
/// the buffer holds everything after it on disk.
pub async fn run<S: Sink>(mut sink: S, ctx: SinkContext) {
    let SinkContext {
        settings,
        mut reader,
        metrics,
        mut shutdown,
        beat,
    } = ctx;
    let m = &*metrics;
    // Catalog versions missing from the buffer (their data is lost), so each is looked up once.
    let mut missing: HashSet<u64> = HashSet::new();
    let mut lines = 0usize;
    let mut skipped = Skipped::default();
    let mut retry = RetryCtl::new(
        shutdown.clone(),
        settings.grace,
        metrics.clone(),
        beat.clone(),
    );
    let mut next_flush = Instant::now() + settings.flush_interval;

    let mut closing_deadline: Option<Instant> = None;
    'outer: loop {
        if closing_deadline.is_none() && shutdown.is_shutdown() {
            closing_deadline = Some(Instant::now() + settings.grace);
        }
        let closing = closing_deadline.is_some();
        // Wait for the flush interval or a full batch, whichever comes first. The writer
        // publishes at most one new head per tick, so this wakes at most 50 times a second.
        let mut stop = false;
        beat.idle();
        // About how many buffer bytes make a full batch: with that much waiting, do not wait.
        let batch_bytes = reader.batch_bytes(settings.batch_size);
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
        beat.busy();
        next_flush = Instant::now() + settings.flush_interval;
        // Deliver everything readable now, a full batch at a time.
        while reader.has_data() {
            let items = reader.read(settings.batch_size - lines).await;
            if items.is_empty() {
                break;
            }
            for item in &items {
                if !sink.knows(item.catalog) && !missing.contains(&item.catalog) {
                    match reader.catalog(item.catalog).await {
                        Some(c) => sink.catalog(item.catalog, &c),
                        None => {
                            tracing::error!(sink = %m.name, catalog = item.catalog, "buffered data refers to a catalog that is missing; its samples are dropped");
                            missing.insert(item.catalog);
                        }
                    }
                }
                if sink.knows(item.catalog) {
                    lines += sink.add(item.catalog, &item.batch, &mut skipped);
                } else {
                    m.dropped_corrupt
                        .fetch_add(item.batch.samples.len() as u64, Relaxed);
                }
            }
            account_skipped(m, &mut skipped);
            if lines >= settings.batch_size {
                if !flush(&mut sink, &mut lines, m, &mut retry).await {
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
        if lines > 0 && !flush(&mut sink, &mut lines, m, &mut retry).await {
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
    if tokio::time::timeout(Duration::from_secs(2), sink.close())
        .await
        .is_err()
    {
        tracing::warn!(sink = %m.name, "the sink's goodbye (close) took longer than 2 s; given up");
    }
    beat.idle();
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
    if skipped.out_of_range > 0 && m.dropped_out_of_range.load(Relaxed) == 0 {
        tracing::warn!(sink = %m.name, "a u64 value above 9223372036854775807 cannot be written to this store (it has no unsigned integer type): such values are not written and are counted in linetap_samples_dropped_total{{reason=\"out_of_range\"}}");
    }
    if skipped.total() > 0 {
        m.dropped_not_finite.fetch_add(skipped.not_finite, Relaxed);
        m.dropped_out_of_range
            .fetch_add(skipped.out_of_range + skipped.unknown_point, Relaxed);
        *skipped = Skipped::default();
    }
}

/// Writes the pending body. Returns whether it may be acknowledged in the buffer: delivered,
/// or rejected for good (dropped and counted); false when shutdown ended the retries.
async fn flush<S: Sink>(
    sink: &mut S,
    lines: &mut usize,
    m: &SinkMetrics,
    retry: &mut RetryCtl,
) -> bool {
    if *lines == 0 {
        return true;
    }
    let started = Instant::now();
    let bytes = sink.pending_bytes();
    let outcome = sink.flush(retry).await;
    m.write_micros
        .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
    m.requests.fetch_add(1, Relaxed);
    let acknowledge = match outcome {
        Outcome::Delivered => {
            m.delivered.fetch_add(*lines as u64, Relaxed);
            m.bytes_sent.fetch_add(bytes as u64, Relaxed);
            true
        }
        Outcome::Rejected {
            lines: rejected,
            reason,
        } => {
            let rejected = rejected.min(*lines);
            m.delivered.fetch_add((*lines - rejected) as u64, Relaxed);
            m.bytes_sent.fetch_add(bytes as u64, Relaxed);
            m.dropped_rejected.fetch_add(rejected as u64, Relaxed);
            if let Some(since) = retry.log_rejected(rejected as u64) {
                tracing::error!(sink = %m.name, lines = *lines, rejected, rejected_since_last_log = since, %reason, "the store refused some lines for good; they are in the dead-letter file, the rest was delivered (logged at most once a minute; counted in linetap_samples_dropped_total{{reason=\"rejected\"}})");
            }
            true
        }
        Outcome::Abandoned(reason) => {
            tracing::warn!(sink = %m.name, lines = *lines, %reason, "grace period over; the batch stays in the buffer");
            false
        }
    };
    *lines = 0;
    acknowledge
}
