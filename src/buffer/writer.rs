//! The writer thread: appends queued batches to the log with group commit, starts a segment for
//! each new catalog version, enforces the disk budget, deletes delivered segments, and keeps
//! the buffer gauges current.
//!
//! Every batch taken from the queue gets a ticket (its position in the queue), and every ticket
//! is *settled* in order: durable once its record is appended and synced without error, or
//! refused (dropped by `when_full = "drop_newest"`, or lost to a failed write or sync, each
//! counted as a drop). Publishers that wait for durability (MQTT QoS 1) learn which.
//!
//! Disk faults (ENOSPC, EIO, a read-only file system) never stop collection for good: the
//! failure is counted (`disk_error`), `/readyz` says why, and the writer keeps trying. When
//! the sinks have delivered the whole open segment, its space is given back (the segment is
//! sealed and deleted, or its delivered bytes punched out when not even a new segment fits),
//! so a file system smaller than `max_bytes` does not fill up with delivered data.

use super::input::Entry;
use super::log::{self, LogWriter};
use super::payload::encode_batch;
use super::record;
use super::{cursors, now_ms, Shared, TailItem, NOTIFY_EVERY, NOTIFY_SAMPLES, TICK, WAKE_AT};
use crate::config::{BufferConfig, WhenFull};
use crate::model::catalog::Version;
use crate::model::SampleBatch;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the sinks' read positions are saved (besides before a segment is deleted and at
/// shutdown).
const CURSOR_EVERY: Duration = Duration::from_secs(5);

/// Segments are sealed at `max_bytes / 8`, and at most this size: the space of delivered data
/// is given back at least every MiB, so a file system smaller than `max_bytes` is not filled
/// with it while the sinks keep up.
const MAX_SEGMENT: u64 = 1 << 20;

/// A disk fault is over once writes and syncs have succeeded for this long (a nearly full
/// file system takes some writes and refuses others).
const RECOVERED_AFTER: Duration = Duration::from_secs(5);

/// A disk fault that goes on is logged again this often (a new kind of fault at once).
const LOG_FAULT_EVERY: Duration = Duration::from_secs(60);

/// A record's payload stays below the reader's limit: a larger batch is split.
const MAX_RECORD: usize = record::MAX_PAYLOAD as usize - 4096;

/// What the writer is told from outside: shutdown has begun (stop holding the sources back),
/// and its beat for the watchdog.
pub(super) struct Control {
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    pub beat: crate::observe::liveness::Beat,
}

/// The writer thread. It wakes every `TICK`, or early when `WAKE_AT` entries wait (never once
/// per batch: a source's `publish` costs no wake-up), appends everything queued as one write,
/// hands the batches to the sinks' in-memory tails, and syncs every `sync_interval` (at once
/// while a publisher waits for durability).
pub(super) fn write_loop(
    shared: Arc<Shared>,
    writer: LogWriter,
    rx: Receiver<Entry>,
    head_tx: watch::Sender<u64>,
    cfg: BufferConfig,
    cat_id: u64,
    ctl: Control,
) {
    let Control { stopping, beat } = ctl;
    let mut w = Writer {
        segment_bytes: (cfg.max_bytes / 8).clamp(64 << 10, MAX_SEGMENT),
        seg_dir: shared.segments_dir(),
        head: Head {
            tx: head_tx,
            samples: 0,
            at: Instant::now(),
        },
        base: writer.segment.end(),
        shared,
        writer,
        cfg,
        cat_id,
        waiting_catalog: None,
        pending: Vec::with_capacity(256 << 10),
        pending_samples: 0,
        scratch: Vec::with_capacity(8 << 10),
        fresh: Vec::new(),
        taken: 0,
        appended: 0,
        synced: 0,
        unsynced: false,
        last_sync: Instant::now(),
        full_logged: false,
        disk_error: None,
        fault_at: Instant::now(),
        fault_logged: None,
    };
    let mut last_persist = Instant::now();
    let mut disconnected = false;
    while !disconnected {
        beat.idle();
        if w.shared.queued.load(Relaxed) < WAKE_AT {
            std::thread::park_timeout(TICK);
        }
        beat.busy();
        if w.waiting_catalog.is_some() {
            w.switch_catalog();
        }
        w.base = w.writer.segment.end();
        loop {
            let received = rx.try_recv();
            if received.is_ok() {
                // Counted before it was sent (`BufferInput::send`): never below zero.
                let before = w.shared.queued.fetch_sub(1, Relaxed);
                debug_assert!(before > 0, "an entry taken before it was counted");
            }
            match received {
                Ok(Entry::Batch(b)) => {
                    if w.take(b, &stopping, &beat) {
                        break;
                    }
                }
                Ok(Entry::Catalog(v)) => {
                    // What is pending was read under the previous version: write it, then
                    // store the new version and start its segment, before any batch uses it.
                    w.append();
                    if v.id != w.cat_id || w.waiting_catalog.is_some() {
                        w.waiting_catalog = Some(v);
                        w.switch_catalog();
                    }
                    w.base = w.writer.segment.end();
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        w.append();
        let now = Instant::now();
        // Someone waits for durability (MQTT QoS 1 acknowledgements): sync now.
        let waited = w.shared.waiting.load(Relaxed) > 0;
        if waited || now.duration_since(w.last_sync) >= w.cfg.sync_interval {
            w.sync();
        }
        // The sinks' positions: less often than the log (each save is an fsync per sink, and a
        // position saved late only means a crash re-delivers a few seconds, idempotently).
        // Deleting a segment saves them first, whatever the time.
        if now.duration_since(last_persist) >= CURSOR_EVERY {
            cursors::persist(&w.shared);
            last_persist = now;
        }
        if w.writer.segment.len >= w.segment_bytes {
            w.roll(w.cat_id);
        }
        enforce_budget(&w.shared, &w.seg_dir, &w.cfg);
        update_gauges(&w.shared);
    }
    w.sync();
    cursors::persist(&w.shared);
    beat.idle();
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    writer: LogWriter,
    cfg: BufferConfig,
    segment_bytes: u64,
    seg_dir: PathBuf,
    /// The catalog version of the open segment.
    cat_id: u64,
    /// A new version that could not be stored or given its segment yet (a disk fault): batches
    /// that refer to it are refused until it is.
    waiting_catalog: Option<Version>,
    head: Head,
    /// Records not yet appended, from log position `base`.
    pending: Vec<u8>,
    pending_samples: u64,
    base: u64,
    scratch: Vec<u8>,
    /// The batches of `pending`, for the sinks' memory tails.
    fresh: Vec<TailItem>,
    /// Tickets taken from the queue …
    taken: u64,
    /// … every one up to here appended or refused …
    appended: u64,
    /// … and every one up to here settled (synced or refused).
    synced: u64,
    /// Records were appended since the last sync.
    unsynced: bool,
    last_sync: Instant,
    full_logged: bool,
    /// The last disk fault, until writes and syncs have succeeded for `RECOVERED_AFTER`.
    disk_error: Option<String>,
    fault_at: Instant,
    fault_logged: Option<Instant>,
}

impl Writer {
    /// Takes one batch: refused, held back or added to `pending`. True when `pending` is large
    /// enough to write now.
    fn take(
        &mut self,
        batch: Arc<SampleBatch>,
        stopping: &std::sync::atomic::AtomicBool,
        beat: &crate::observe::liveness::Beat,
    ) -> bool {
        self.taken += 1;
        let samples = batch.samples.len() as u64;
        if self.waiting_catalog.is_some() {
            // Its catalog version is not stored: written now, it could never be read.
            self.refuse(self.taken, samples);
            return false;
        }
        // The disk budget, before accepting more.
        let mut over =
            self.shared.lock().bytes_on_disk() + self.pending.len() as u64 >= self.cfg.max_bytes;
        if over && self.cfg.when_full == WhenFull::Block && !stopping.load(Relaxed) {
            self.hold(stopping, beat);
            over = false;
        }
        if over && self.cfg.when_full == WhenFull::DropNewest {
            self.shared
                .drop_for_all(samples, |m| &m.dropped_buffer_full);
            self.shared.refuse(self.taken, self.taken);
            if !self.full_logged {
                tracing::warn!(
                    "buffer full (max_bytes): refusing new data (when_full = drop_newest)"
                );
                self.full_logged = true;
            }
            return false;
        }
        self.full_logged = false;
        self.scratch.clear();
        encode_batch(&batch, &mut self.scratch);
        if self.scratch.len() > MAX_RECORD {
            // Far larger than any poll: split it so the reader's limit holds.
            let parts = self.scratch.len().div_ceil(MAX_RECORD);
            let per = batch.samples.len().div_ceil(parts).max(1);
            for chunk in batch.samples.chunks(per) {
                let part = SampleBatch {
                    samples: chunk.to_vec(),
                    ..(*batch).clone()
                };
                self.scratch.clear();
                encode_batch(&part, &mut self.scratch);
                if self.scratch.len() > MAX_RECORD {
                    tracing::error!(
                        samples = chunk.len(),
                        "buffer: samples too large for one record are not written"
                    );
                    self.shared
                        .drop_for_all(chunk.len() as u64, |m| &m.dropped_disk_error);
                    self.shared.refuse(self.taken, self.taken);
                    continue;
                }
                self.push_record(Arc::new(part));
            }
        } else {
            self.push_record(batch);
        }
        self.pending.len() >= 1 << 20
    }

    /// Adds the encoded batch in `scratch` to `pending`.
    fn push_record(&mut self, batch: Arc<SampleBatch>) {
        let start = self.base + self.pending.len() as u64;
        let written_ms = now_ms();
        self.pending_samples += batch.samples.len() as u64;
        record::append_record(
            &mut self.pending,
            &self.scratch,
            batch.samples.len() as u32,
            written_ms,
        );
        self.fresh.push(TailItem {
            start,
            end: self.base + self.pending.len() as u64,
            catalog: self.cat_id,
            written_ms,
            batch,
        });
    }

    /// Ticket `ticket` is refused and its samples counted as lost to the disk.
    fn refuse(&self, ticket: u64, samples: u64) {
        self.shared.drop_for_all(samples, |m| &m.dropped_disk_error);
        self.shared.refuse(ticket, ticket);
    }

    /// `when_full = "block"` and over budget: holds the sources back (the queue fills,
    /// `publish` waits) until the sinks deliver, the agent stops, or a catalog version waits
    /// behind the queue (a reload): what is queued then was accepted, and is written even over
    /// the budget (at most the queue).
    fn hold(
        &mut self,
        stopping: &std::sync::atomic::AtomicBool,
        beat: &crate::observe::liveness::Beat,
    ) {
        // First make what was accepted so far durable: it must not wait in memory. The batch
        // being taken is not appended yet: settle only those before it.
        let current = self.taken;
        self.taken -= 1;
        self.append();
        self.sync();
        self.taken = current;
        cursors::persist(&self.shared);
        // Seal the current segment, so the sinks' deliveries can free all of it: the last
        // segment is never deleted, and a full one would keep the log over budget for good.
        if self.writer.segment.len > record::SEGMENT_HEADER_LEN {
            self.roll(self.cat_id);
        }
        self.base = self.writer.segment.end();
        if !self.full_logged {
            tracing::warn!("buffer full (max_bytes): holding the sources back (when_full = block)");
            self.full_logged = true;
        }
        beat.idle();
        let mut over = true;
        while over && !stopping.load(Relaxed) && !self.shared.catalog_waiting.swap(false, Relaxed) {
            std::thread::park_timeout(Duration::from_millis(50));
            enforce_budget(&self.shared, &self.seg_dir, &self.cfg);
            update_gauges(&self.shared);
            over = self.shared.lock().bytes_on_disk() >= self.cfg.max_bytes;
        }
        beat.busy();
    }

    /// Appends what is pending as one write and hands the batches to the sinks' memory tails.
    /// On a disk fault, gives back the space of delivered data and tries once more; what still
    /// cannot be written is refused and counted.
    fn append(&mut self) {
        if self.pending.is_empty() {
            self.appended = self.taken;
            return;
        }
        let mut result = self.writer.append(&self.pending);
        if result.is_err() && self.make_room() {
            // The records were laid out from the old segment's end; in the new segment they
            // follow its header.
            let shift = self.writer.segment.end() - self.base;
            for item in self.fresh.iter_mut() {
                item.start += shift;
                item.end += shift;
            }
            result = self.writer.append(&self.pending);
        }
        match result {
            Ok(()) => {
                self.shared
                    .metrics
                    .buffer_bytes_written
                    .fetch_add(self.pending.len() as u64, Relaxed);
                if let Some(per) =
                    (self.pending.len() as u64 * 16).checked_div(self.pending_samples)
                {
                    self.shared.bytes_per_sample_16.store(per.max(1), Relaxed);
                }
                self.head.samples += self.pending_samples;
                self.unsynced = true;
                self.publish_tail();
            }
            Err(e) => {
                self.disk_fault(&format!("cannot write the log: {e}"));
                self.shared
                    .drop_for_all(self.pending_samples, |m| &m.dropped_disk_error);
                self.shared.refuse(self.appended + 1, self.taken);
            }
        }
        self.appended = self.taken;
        self.pending.clear();
        self.pending_samples = 0;
        self.fresh.clear();
        self.base = self.writer.segment.end();
    }

    /// The new head and the batches just written, for the sinks.
    fn publish_tail(&mut self) {
        let head = self.writer.segment.end();
        let mut st = self.shared.lock();
        if let Some(last) = st.segments.last_mut() {
            *last = self.writer.segment;
        }
        st.head = head;
        // Sinks that are caught up take these from memory instead of the disk.
        let state = &mut *st;
        let active = state.cursors.iter().map(|c| c.active);
        for (tail, _) in state.tails.iter_mut().zip(active).filter(|(_, a)| *a) {
            for item in self.fresh.iter() {
                tail.push(item.clone());
            }
        }
        drop(st);
        // Wake waiting sinks when enough has accumulated for a batch, or every quarter
        // second; not at every tick (each wake-up costs CPU).
        let n = &mut self.head;
        if n.samples >= NOTIFY_SAMPLES || n.at.elapsed() >= NOTIFY_EVERY {
            let _ = n.tx.send(head);
            n.samples = 0;
            n.at = Instant::now();
        }
    }

    /// Makes what was appended durable and settles the tickets: durable when the sync
    /// succeeded, refused (and counted) when it failed.
    fn sync(&mut self) {
        if self.unsynced {
            self.unsynced = false;
            match self.writer.sync() {
                Ok(()) => {
                    let quiet = self.fault_at.elapsed() >= RECOVERED_AFTER;
                    if quiet && self.waiting_catalog.is_none() && self.disk_error.take().is_some() {
                        tracing::info!("buffer: writing to disk again");
                        self.shared.metrics.set_disk_error("");
                        self.fault_logged = None;
                    }
                }
                Err(e) => {
                    // Whether those bytes reached the disk is unknown: none of them counts as
                    // durable (a publisher that waits for them has them delivered again).
                    self.disk_fault(&format!("cannot sync the log: {e}"));
                    self.shared.refuse(self.synced + 1, self.appended);
                }
            }
            self.last_sync = Instant::now();
        }
        self.synced = self.appended;
        if *self.shared.settled.borrow() != self.synced {
            self.shared.settled.send_replace(self.synced);
        }
    }

    /// Records a disk fault: logged when it is new, and `/readyz` fails until it clears.
    fn disk_fault(&mut self, why: &str) {
        self.fault_at = Instant::now();
        let again = self
            .fault_logged
            .is_some_and(|t| t.elapsed() < LOG_FAULT_EVERY);
        if self.disk_error.as_deref() != Some(why) || !again {
            self.fault_logged = Some(Instant::now());
            tracing::error!(
                error = why,
                "buffer: disk fault; new data is counted as dropped (disk_error) until the disk takes writes again"
            );
        }
        self.shared.metrics.set_disk_error(why);
        self.disk_error = Some(why.to_string());
    }

    /// Whether every sink has delivered the whole open segment.
    fn delivered(&self) -> bool {
        let end = self.writer.segment.end();
        let st = self.shared.lock();
        st.cursors
            .iter()
            .filter(|c| c.active)
            .all(|c| c.acked >= end)
    }

    /// After a failed write: when every sink has delivered the open segment, seal it (so it is
    /// deleted) and start a new one; when even a new segment does not fit, punch the delivered
    /// bytes out first. True when a new segment was started.
    fn make_room(&mut self) -> bool {
        if self.writer.segment.len <= record::SEGMENT_HEADER_LEN || !self.delivered() {
            return false;
        }
        if self.roll(self.cat_id) {
            enforce_budget(&self.shared, &self.seg_dir, &self.cfg);
            return true;
        }
        if self.writer.release_delivered().is_err() {
            return false;
        }
        let rolled = self.roll(self.cat_id);
        enforce_budget(&self.shared, &self.seg_dir, &self.cfg);
        rolled
    }

    /// Seals the open segment and starts the next one, for catalog version `catalog`.
    fn roll(&mut self, catalog: u64) -> bool {
        match self.writer.roll(catalog) {
            Ok(_) => {
                self.shared.lock().segments.push(self.writer.segment);
                true
            }
            Err(e) => {
                self.disk_fault(&format!("cannot start a new segment: {e}"));
                false
            }
        }
    }

    /// Stores the waiting catalog version and starts its segment; until both succeed, batches
    /// are refused (they would refer to a version nobody could read).
    fn switch_catalog(&mut self) {
        let Some(v) = self.waiting_catalog.take() else {
            return;
        };
        if v.id == self.cat_id {
            return;
        }
        if let Err(e) = self.shared.catalogs.store(&v) {
            self.disk_fault(&format!("cannot store a new catalog version: {e}"));
            self.waiting_catalog = Some(v);
            return;
        }
        // The open segment needs a sync for what it holds before it is sealed.
        self.sync();
        if !self.roll(v.id) {
            self.waiting_catalog = Some(v);
            return;
        }
        self.cat_id = v.id;
        tracing::debug!(
            catalog = format_args!("{:016x}", v.id),
            points = v.catalog.points.len(),
            "buffer: catalog version stored"
        );
    }
}

/// Where the sinks were last woken.
struct Head {
    tx: watch::Sender<u64>,
    /// Samples appended since the sinks were last woken.
    samples: u64,
    at: Instant,
}

/// `linetap_buffer_bytes` and `linetap_buffer_oldest_age_seconds` for every sink, kept current
/// by the writer thread (a sink stuck retrying cannot update its own).
pub(super) fn update_gauges(shared: &Shared) {
    let st = shared.lock();
    let now = now_ms();
    for c in st.cursors.iter().filter(|c| c.active) {
        let m = &c.metrics;
        m.buffer_bytes
            .store(st.head.saturating_sub(c.acked), Relaxed);
        let age = if c.oldest_ms == 0 || c.acked >= st.head {
            0
        } else {
            now.saturating_sub(c.oldest_ms)
        };
        m.buffer_oldest_ms.store(age, Relaxed);
    }
}

/// Deletes sealed segments every sink has delivered; with `drop_oldest`, also the oldest
/// segment while the log is over budget, counting what each sink loses.
fn enforce_budget(shared: &Shared, seg_dir: &Path, cfg: &BufferConfig) {
    loop {
        let (oldest, moved) = {
            let mut st = shared.lock();
            if st.segments.len() < 2 {
                return;
            }
            let oldest = st.segments[0];
            let min_acked = st
                .cursors
                .iter()
                .filter(|c| c.active)
                .map(|c| c.acked)
                .min()
                .unwrap_or(st.head);
            let fully_acked = min_acked >= oldest.end();
            let may_drop =
                st.bytes_on_disk() > cfg.max_bytes && cfg.when_full == WhenFull::DropOldest;
            if !fully_acked && !may_drop {
                return;
            }
            // Sinks that had not delivered this segment lose the rest of it.
            let mut moved = Vec::new();
            for (i, c) in st.cursors.iter_mut().enumerate() {
                if !c.active {
                    // Nothing is kept for a removed sink; it resumes at what is left.
                    c.acked = c.acked.max(oldest.end());
                } else if c.acked < oldest.end() {
                    moved.push((i, c.name.clone(), c.acked));
                    c.acked = oldest.end();
                    c.oldest_ms = 0;
                }
            }
            (oldest, moved)
        };
        for (i, name, from) in moved {
            let lost = log::count_samples(seg_dir, oldest, from, oldest.end());
            if let Some(c) = shared.lock().cursors.get(i) {
                c.metrics.dropped_buffer_full.fetch_add(lost, Relaxed);
            }
            tracing::warn!(sink = %name, samples = lost, "buffer full (max_bytes): dropped the oldest undelivered data");
        }
        // Cursors first, then the data: a crash in between re-reads nothing that is gone.
        cursors::persist(shared);
        let referenced: Vec<u64> = {
            let mut st = shared.lock();
            st.segments.retain(|s| s.base != oldest.base);
            st.segments.iter().map(|s| s.catalog).collect()
        };
        if let Err(e) = std::fs::remove_file(log::segment_path(seg_dir, oldest.base)) {
            tracing::warn!(error = %e, "buffer: cannot remove a delivered segment");
        }
        // A catalog version no segment refers to any more is of no use.
        if !referenced.contains(&oldest.catalog) {
            shared.catalogs.prune(&referenced);
        }
    }
}
