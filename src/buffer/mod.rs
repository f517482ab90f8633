//! Store-and-forward: the durable buffer between the sources and every sink.
//!
//! Every `SampleBatch` is appended to a segmented log on disk (`log.rs`, record format in
//! `record.rs`) by one writer thread (`writer.rs`), with group commit (`sync_interval`). Each
//! sink reads the log from its own cursor (`reader.rs`; cursors saved by `cursors.rs`), named
//! after the sink's table name, and acknowledges what it delivered; a segment is deleted once
//! every configured sink has acknowledged all of it, and only after the cursors are synced.
//! When the disk budget is reached, `when_full` decides: drop the oldest segment, refuse new
//! data, or hold the sources back; every dropped sample is counted by sink and reason.
//!
//! Catalogs: every segment names the catalog version its records refer to. A new version
//! (handed in through `BufferInput::publish_catalog`, in order with the batches) is written to
//! `catalogs/` and synced, and the writer starts a new segment with it, before the first batch
//! that uses it is written (`catalogs.rs`). Old segments keep their version, so data keeps the
//! meaning it was read with.
//!
//! What a crash can lose: a process crash (SIGKILL, panic) loses only batches still in the
//! in-memory queue to the writer thread (written to the OS within milliseconds); a power cut
//! loses at most the last `sync_interval` of data. After either, a sink may deliver again
//! what it had delivered but not yet acknowledged on disk: InfluxDB keys points by series and
//! timestamp, so a replay overwrites with identical values.

pub mod catalogs;
pub mod cursors;
mod input;
pub mod log;
mod payload;
mod reader;
pub mod record;
mod writer;

pub use input::{BufferInput, Durability};
pub use reader::SinkReader;

use crate::config::{BufferConfig, WhenFull};
use crate::model::catalog::Version;
use crate::model::{Catalog, SampleBatch};
use crate::observe::metrics::{Metrics, SinkMetrics};
use catalogs::CatalogStore;
use log::{LogReader, LogWriter, Segment};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Batches waiting for the writer thread.
const QUEUE: usize = 4096;
/// How often the writer thread wakes to write what has been queued …
const TICK: Duration = Duration::from_millis(100);
/// … or as soon as this many entries wait (a fast source must not fill the queue in a tick).
const WAKE_AT: usize = 256;
/// The writer wakes waiting sinks after this many new samples (about a default batch) …
const NOTIFY_SAMPLES: u64 = 4096;
/// … or after this long.
const NOTIFY_EVERY: Duration = Duration::from_millis(250);
/// Samples kept in memory per sink (the newest batches), so a caught-up sink never reads the
/// disk: a sink is woken every `NOTIFY_SAMPLES`, far less than this.
const TAIL_SAMPLES: usize = 32 << 10;
/// A sink this far behind the head reads new data beside its backlog (`live_share`).
const LAG_BYTES: u64 = 1 << 20;

/// A batch just written, kept in memory for the sinks.
#[derive(Clone)]
struct TailItem {
    start: u64,
    end: u64,
    catalog: u64,
    written_ms: u64,
    batch: Arc<SampleBatch>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One sink's newest batches in memory, at most `TAIL_SAMPLES` samples (at least one batch).
#[derive(Default)]
struct Tail {
    items: VecDeque<TailItem>,
    samples: usize,
}

impl Tail {
    fn push(&mut self, item: TailItem) {
        self.samples += item.batch.samples.len();
        self.items.push_back(item);
        while self.samples > TAIL_SAMPLES && self.items.len() > 1 {
            self.pop_front();
        }
    }

    fn front(&self) -> Option<&TailItem> {
        self.items.front()
    }

    fn pop_front(&mut self) -> Option<TailItem> {
        let item = self.items.pop_front()?;
        self.samples -= item.batch.samples.len();
        Some(item)
    }

    fn clear(&mut self) {
        self.items.clear();
        self.samples = 0;
    }
}

struct SinkCursor {
    name: String,
    metrics: Arc<SinkMetrics>,
    /// Delivered up to here.
    acked: u64,
    /// `written_ms` of the oldest record not yet acknowledged (0: none pending).
    oldest_ms: u64,
    persisted: u64,
    /// False once the sink is removed (a reload): its cursor no longer holds data back, and it
    /// gets nothing more. Indexes never move, so the other sinks' readers stay valid.
    active: bool,
}

struct State {
    /// Per sink: the newest batches, for reading without the disk.
    tails: Vec<Tail>,
    segments: Vec<Segment>,
    head: u64,
    cursors: Vec<SinkCursor>,
}

impl State {
    fn bytes_on_disk(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    catalogs: CatalogStore,
    /// Entries in the queue to the writer (publishers add, the writer subtracts).
    queued: std::sync::atomic::AtomicUsize,
    /// The writer thread, woken early when `WAKE_AT` entries wait.
    writer: std::sync::OnceLock<std::thread::Thread>,
    /// Batches accepted into the queue so far: a publisher's ticket.
    enqueued: std::sync::atomic::AtomicU64,
    /// Batches the writer has settled, in queue order: each one up to here is either durable
    /// (appended and synced without error) or refused (listed in `refused`).
    settled: watch::Sender<u64>,
    /// Which settled tickets were refused (dropped by `when_full`, or lost to a failed write
    /// or sync).
    refused: Mutex<Refused>,
    /// A catalog version waits for room in the queue: a writer holding the sources back
    /// (`when_full = "block"`) takes the queue up to it (a reload must not wait for the store).
    catalog_waiting: std::sync::atomic::AtomicBool,
    /// Publishers waiting for durability: the writer syncs at once rather than every
    /// `sync_interval`.
    waiting: std::sync::atomic::AtomicUsize,
    /// Log bytes a sample takes, in sixteenths, as last written (records and their headers;
    /// a poll's packed readings take ~5, a sample on its own 14 to 24 and more): how many
    /// bytes make a sink's batch (`SinkReader::batch_bytes`).
    bytes_per_sample_16: std::sync::atomic::AtomicU64,
}

/// Tickets the writer refused, as merged inclusive ranges (newest last). Old ranges are
/// forgotten beyond `MAX_RANGES`; a ticket at or below `forgotten` is then reported refused
/// (its publisher long stopped waiting; refusing again only means a redelivery).
#[derive(Default)]
struct Refused {
    ranges: VecDeque<(u64, u64)>,
    forgotten: u64,
}

impl Refused {
    const MAX_RANGES: usize = 4096;

    fn add(&mut self, lo: u64, hi: u64) {
        if lo > hi {
            return;
        }
        if let Some(last) = self.ranges.back_mut() {
            if lo <= last.1.saturating_add(1) && hi >= last.0 {
                last.0 = last.0.min(lo);
                last.1 = last.1.max(hi);
                return;
            }
        }
        self.ranges.push_back((lo, hi));
        while self.ranges.len() > Self::MAX_RANGES {
            if let Some((_, h)) = self.ranges.pop_front() {
                self.forgotten = self.forgotten.max(h);
            }
        }
    }

    /// Whether any ticket in `(from, to]` was refused (none in an empty range).
    fn any(&self, from: u64, to: u64) -> bool {
        if to <= from {
            return false;
        }
        from < self.forgotten || self.ranges.iter().any(|&(lo, hi)| lo <= to && hi > from)
    }
}

impl Shared {
    /// Marks tickets `lo..=hi` as refused (the writer settles them in order with the rest).
    fn refuse(&self, lo: u64, hi: u64) {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(lo, hi);
    }

    /// Wakes the writer thread before its tick.
    fn wake_writer(&self) {
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn segments_dir(&self) -> PathBuf {
        self.dir.join("segments")
    }

    /// Counts `samples` dropped for every sink, for `reason`.
    fn drop_for_all(
        &self,
        samples: u64,
        reason: fn(&SinkMetrics) -> &std::sync::atomic::AtomicU64,
    ) {
        for c in self.lock().cursors.iter().filter(|c| c.active) {
            reason(&c.metrics).fetch_add(samples, Relaxed);
        }
    }
}

/// The durable buffer of one agent.
pub struct Buffer {
    stopping: Arc<std::sync::atomic::AtomicBool>,
    shared: Arc<Shared>,
    head_rx: watch::Receiver<u64>,
    writer: Option<std::thread::JoinHandle<()>>,
    live_share: f64,
}

/// A sink the buffer keeps a cursor for.
pub struct SinkSlot {
    pub name: String,
    pub metrics: Arc<SinkMetrics>,
}

impl Buffer {
    /// The catalog the newest data in the buffer under `dir` was written with, if any: the
    /// registry keeps its point ids, so a restart with the same points keeps them.
    pub fn last_catalog(dir: &Path) -> Option<Catalog> {
        let seg_dir = dir.join("segments");
        let newest = std::fs::read_dir(&seg_dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".seg")?
                    .parse::<u64>()
                    .ok()
            })
            .max()?;
        let mut header = [0u8; record::SEGMENT_HEADER_LEN as usize];
        {
            use std::io::Read;
            std::fs::File::open(log::segment_path(&seg_dir, newest))
                .and_then(|mut f| f.read_exact(&mut header))
                .ok()?;
        }
        let id = record::parse_segment_header(&header)?;
        catalogs::load(&dir.join("catalogs"), id)
    }

    /// Opens (recovering) the buffer under `dir` with the current catalog version and starts
    /// the writer thread.
    pub fn open(
        dir: &Path,
        cfg: &BufferConfig,
        catalog: &Version,
        sinks: Vec<SinkSlot>,
        metrics: Arc<Metrics>,
    ) -> Result<(Buffer, BufferInput), String> {
        let err = |what: &str, e: std::io::Error| format!("buffer {}: {what}: {e}", dir.display());
        let seg_dir = dir.join("segments");
        let (mut segments, recovery) = log::recover(&seg_dir).map_err(|e| err("recovering", e))?;
        if recovery.truncated_bytes > 0 {
            tracing::warn!(
                bytes = recovery.truncated_bytes,
                "buffer: cut a torn record off the end of the log (a crash interrupted a write)"
            );
        }
        for q in &recovery.quarantined {
            tracing::error!(file = %q.display(), "buffer: damaged segment header; segment set aside and its data counted as lost");
            metrics.buffer_quarantined.fetch_add(1, Relaxed);
            let bytes = std::fs::metadata(q).map(|m| m.len()).unwrap_or(0);
            metrics.buffer_corrupt_bytes.fetch_add(bytes, Relaxed);
        }
        let store = CatalogStore::open(&dir.join("catalogs"), sinks.len())
            .map_err(|e| err("creating catalogs", e))?;
        store
            .store(catalog)
            .map_err(|e| err("writing the catalog", e))?;
        let head = segments.last().map(|s| s.end()).unwrap_or(0);
        // Cursors: a sink seen before resumes where it was; a new sink starts at the head.
        let cur_dir = dir.join("cursors");
        std::fs::create_dir_all(&cur_dir).map_err(|e| err("creating cursors", e))?;
        let cursors = sinks
            .into_iter()
            .map(|s| new_cursor(&cur_dir, &seg_dir, &segments, head, s))
            .collect::<Vec<_>>();
        let writer = LogWriter::create(&seg_dir, head, catalog.id)
            .map_err(|e| err("starting a segment", e))?;
        segments.push(writer.segment);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                tails: (0..cursors.len()).map(|_| Tail::default()).collect(),
                segments,
                head: writer.segment.end(),
                cursors,
            }),
            metrics: metrics.clone(),
            catalogs: store,
            queued: 0.into(),
            writer: std::sync::OnceLock::new(),
            enqueued: 0.into(),
            settled: watch::channel(0).0,
            refused: Mutex::new(Refused::default()),
            waiting: 0.into(),
            catalog_waiting: false.into(),
            bytes_per_sample_16: (24 * 16).into(),
        });
        cursors::persist(&shared);
        writer::update_gauges(&shared);
        let (tx, rx) = sync_channel(QUEUE);
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (head_tx, head_rx) = watch::channel(writer.segment.end());
        let thread_shared = shared.clone();
        let block = cfg.when_full == WhenFull::Block;
        let live_share = cfg.live_share;
        let cfg = cfg.clone();
        let cat_id = catalog.id;
        let writer_stopping = stopping.clone();
        let beat = metrics.liveness.register("buffer writer");
        let handle = std::thread::Builder::new()
            .name("linetap-buffer".into())
            .spawn(move || {
                writer::write_loop(
                    thread_shared,
                    writer,
                    rx,
                    head_tx,
                    cfg,
                    cat_id,
                    writer::Control {
                        stopping: writer_stopping,
                        beat,
                    },
                )
            })
            .map_err(|e| format!("buffer: cannot start the writer thread: {e}"))?;
        let _ = shared.writer.set(handle.thread().clone());
        let input = BufferInput::new(tx, block, stopping.clone(), shared.clone());
        Ok((
            Buffer {
                stopping,
                shared,
                head_rx,
                writer: Some(handle),
                live_share,
            },
            input,
        ))
    }

    /// Adds a sink at run time (a reload), or takes back one removed earlier; returns its
    /// index for `reader`. As at start-up, a sink whose name has a saved position resumes
    /// there (what is still buffered), any other starts at the head: it gets what comes next.
    pub fn add_sink(&self, slot: SinkSlot) -> usize {
        let dir = &self.shared.dir;
        let (cur_dir, seg_dir) = (dir.join("cursors"), self.shared.segments_dir());
        let index = {
            let mut st = self.shared.lock();
            let head = st.head;
            let floor = st.segments.first().map(|s| s.base).unwrap_or(head);
            if let Some(i) = st.cursors.iter().position(|c| c.name == slot.name) {
                let c = &mut st.cursors[i];
                c.acked = c.acked.clamp(floor, head);
                c.metrics = slot.metrics;
                c.oldest_ms = 0;
                c.active = true;
                i
            } else {
                let c = new_cursor(&cur_dir, &seg_dir, &st.segments, head, slot);
                st.cursors.push(c);
                st.tails.push(Tail::default());
                st.cursors.len() - 1
            }
        };
        self.shared.catalogs.set_sinks(self.active_sinks());
        cursors::persist(&self.shared);
        index
    }

    /// Removes a sink (a reload): the buffer no longer keeps data for it. Its saved position
    /// stays on disk, so the same name added again resumes with what is still buffered.
    pub fn remove_sink(&self, name: &str) {
        {
            let mut st = self.shared.lock();
            let Some(i) = st.cursors.iter().position(|c| c.name == name) else {
                return;
            };
            st.cursors[i].active = false;
            st.tails[i].clear();
        }
        self.shared.catalogs.set_sinks(self.active_sinks());
        cursors::persist(&self.shared);
    }

    fn active_sinks(&self) -> usize {
        self.shared
            .lock()
            .cursors
            .iter()
            .filter(|c| c.active)
            .count()
    }

    /// The reader for sink number `index` (in the order given to `open`, then `add_sink`).
    pub fn reader(&self, index: usize) -> SinkReader {
        let (pos, name) = {
            let st = self.shared.lock();
            (st.cursors[index].acked, st.cursors[index].name.clone())
        };
        SinkReader::new(
            index,
            name,
            self.shared.clone(),
            self.head_rx.clone(),
            LogReader::new(&self.shared.segments_dir(), pos),
            self.live_share,
        )
    }

    /// Waits for the writer to finish (once every `BufferInput` is dropped) and syncs.
    pub fn close_writer(&mut self) {
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        cursors::persist(&self.shared);
    }

    /// Shutdown has begun: sources held back by `when_full = "block"` stop waiting.
    pub fn stopping(&self) {
        self.stopping.store(true, Relaxed);
        self.shared.wake_writer();
    }

    /// Saves the read positions now (after the sinks' last deliveries at shutdown).
    pub fn persist(&self) {
        cursors::persist(&self.shared);
    }
}

/// The cursor of a sink: where its saved position says (within what is still buffered), or
/// the head for a sink never seen before.
fn new_cursor(
    cur_dir: &Path,
    seg_dir: &Path,
    segments: &[Segment],
    head: u64,
    s: SinkSlot,
) -> SinkCursor {
    let floor = segments.first().map(|s| s.base).unwrap_or(head);
    let stored = cursors::read(cur_dir, &s.name);
    let acked = stored.map(|p| p.clamp(floor, head)).unwrap_or(head);
    if stored.is_some() && acked < head {
        tracing::info!(sink = %s.name, backlog_bytes = head - acked, "buffer: resuming delivery of stored data");
    }
    SinkCursor {
        name: s.name,
        metrics: s.metrics,
        acked,
        oldest_ms: log::written_at(seg_dir, segments, acked).unwrap_or(0),
        persisted: u64::MAX,
        active: true,
    }
}

#[cfg(test)]
mod tests {
    use super::Refused;

    #[test]
    fn refused_tickets_by_range() {
        let mut r = Refused::default();
        r.add(7, 7);
        r.add(8, 9);
        r.add(12, 12);
        assert_eq!(r.ranges.len(), 2, "adjacent ranges merge: {:?}", r.ranges);
        // (from, to]: a message's tickets.
        assert!(r.any(6, 7));
        assert!(!r.any(9, 11));
        assert!(r.any(9, 12));
        assert!(!r.any(0, 6));
        // A message that queued nothing is never refused.
        assert!(!r.any(7, 7));
        assert!(!r.any(8, 8));
        // Beyond the kept ranges: refused, to be safe (only a redelivery).
        for k in 0..(Refused::MAX_RANGES as u64 + 10) {
            r.add(100 + 2 * k, 100 + 2 * k);
        }
        assert!(r.any(99, 100));
        assert!(!r.any(101, 101));
    }
}
