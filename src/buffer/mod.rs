//! Store-and-forward: the durable buffer between the sources and every sink.
//!
//! Every `SampleBatch` is appended to a segmented log on disk (`log.rs`, record format in
//! `record.rs`) by one writer thread, with group commit (`sync_interval`). Each sink reads the
//! log from its own cursor, named after the sink's table name, and acknowledges what it
//! delivered; a segment is deleted once every configured sink has acknowledged all of it, and
//! only after the cursors are synced. When the disk budget is reached, `when_full` decides:
//! drop the oldest segment, refuse new data, or hold the sources back; every dropped sample
//! is counted by sink and reason.
//!
//! What a crash can lose: a process crash (SIGKILL, panic) loses only batches still in the
//! in-memory queue to the writer thread (written to the OS within milliseconds); a power cut
//! loses at most the last `sync_interval` of data. After either, a sink may deliver again
//! what it had delivered but not yet acknowledged on disk: InfluxDB keys points by series and
//! timestamp, so a replay overwrites with identical values.

pub mod log;
pub mod record;

use crate::config::{BufferConfig, WhenFull};
use crate::model::{Catalog, SampleBatch};
use crate::observe::metrics::Metrics;
use log::{Damage, Item, LogReader, LogWriter, Segment};
use prost::Message;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Batches waiting for the writer thread.
const QUEUE: usize = 4096;
/// How often the writer thread wakes to write what has been queued.
const TICK: Duration = Duration::from_millis(20);
/// The writer wakes waiting sinks after this many new bytes (about a default batch) …
const NOTIFY_BYTES: u64 = 96 << 10;
/// … or after this long.
const NOTIFY_EVERY: Duration = Duration::from_millis(250);
/// Batches kept in memory per sink, so a caught-up sink never reads the disk.
const TAIL_ITEMS: usize = 1024;

/// A batch just written, kept in memory for the sinks.
#[derive(Clone)]
struct TailItem {
    start: u64,
    end: u64,
    catalog: u64,
    written_ms: u64,
    batch: Arc<SampleBatch>,
}
/// A sink this far behind the head reads new data beside its backlog (`live_share`).
const LAG_BYTES: u64 = 1 << 20;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The identity of a catalog: the segments written with it refer to its point ids.
pub fn catalog_id(catalog: &Catalog) -> (u64, Vec<u8>) {
    let bytes = catalog.encode_to_vec();
    (
        (crc32fast::hash(&bytes) as u64) << 32 | (bytes.len() as u64 & 0xffff_ffff),
        bytes,
    )
}

struct SinkCursor {
    name: String,
    /// Delivered up to here.
    acked: u64,
    /// `written_ms` of the oldest record not yet acknowledged (0: none pending).
    oldest_ms: u64,
    persisted: u64,
}

struct State {
    /// Per sink: the newest batches, for reading without the disk.
    tails: Vec<VecDeque<TailItem>>,
    segments: Vec<Segment>,
    head: u64,
    cursors: Vec<SinkCursor>,
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    /// The current catalog, until every sink has built its encoder from it (then released:
    /// on a large line it is megabytes).
    current: Mutex<Option<(u64, Arc<Catalog>, usize)>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writing side: sources hand batches to `publish`.
#[derive(Clone)]
pub struct BufferInput {
    tx: SyncSender<Arc<SampleBatch>>,
    block: bool,
    /// Set at shutdown: a source held back by `block` gives up instead of waiting forever.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<Metrics>,
}

impl BufferInput {
    /// Queues a batch for the log. With `when_full = "block"` a full buffer holds the source
    /// back here; otherwise this never waits.
    pub async fn publish(&self, batch: SampleBatch) {
        if batch.samples.is_empty() {
            return;
        }
        // Allocated here, on the runtime thread, and freed there by the sinks.
        let mut batch = Arc::new(batch);
        loop {
            match self.tx.try_send(batch) {
                Ok(()) => return,
                Err(TrySendError::Full(b)) if self.block && !self.stopping.load(Relaxed) => {
                    batch = b;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(TrySendError::Full(b)) if self.block => {
                    // Stopping while the sources are held back: this batch is not accepted.
                    for s in &self.metrics.sinks {
                        s.dropped_shutdown
                            .fetch_add(b.samples.len() as u64, Relaxed);
                    }
                    return;
                }
                Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => {
                    for s in &self.metrics.sinks {
                        s.dropped_queue_full
                            .fetch_add(b.samples.len() as u64, Relaxed);
                    }
                    return;
                }
            }
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

impl Buffer {
    /// Opens (recovering) the buffer under `dir` and starts the writer thread.
    pub fn open(
        dir: &Path,
        cfg: &BufferConfig,
        catalog: Arc<Catalog>,
        sinks: &[String],
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
        let (cat_id, cat_bytes) = catalog_id(&catalog);
        let cat_dir = dir.join("catalogs");
        std::fs::create_dir_all(&cat_dir).map_err(|e| err("creating catalogs", e))?;
        let cat_path = cat_dir.join(format!("{cat_id:016x}.pb"));
        if !cat_path.exists() {
            let tmp = cat_path.with_extension("tmp");
            std::fs::write(&tmp, &cat_bytes)
                .and_then(|_| std::fs::rename(&tmp, &cat_path))
                .map_err(|e| err("writing the catalog", e))?;
        }
        let head = segments.last().map(|s| s.end()).unwrap_or(0);
        let floor = segments.first().map(|s| s.base).unwrap_or(head);
        // Cursors: a sink seen before resumes where it was; a new sink starts at the head.
        let cur_dir = dir.join("cursors");
        std::fs::create_dir_all(&cur_dir).map_err(|e| err("creating cursors", e))?;
        let cursors = sinks
            .iter()
            .map(|name| {
                let stored = read_cursor(&cur_dir, name);
                let acked = stored.map(|p| p.clamp(floor, head)).unwrap_or(head);
                if stored.is_some() && acked < head {
                    tracing::info!(sink = %name, backlog_bytes = head - acked, "buffer: resuming delivery of stored data");
                }
SinkCursor { name: name.clone(), acked, oldest_ms: log::written_at(&seg_dir, &segments, acked).unwrap_or(0), persisted: u64::MAX }
            })
            .collect();
        let writer =
            LogWriter::create(&seg_dir, head, cat_id).map_err(|e| err("starting a segment", e))?;
        segments.push(writer.segment);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                tails: vec![VecDeque::new(); sinks.len()],
                segments,
                head: writer.segment.end(),
                cursors,
            }),
            metrics: metrics.clone(),
            current: Mutex::new(Some((cat_id, catalog, sinks.len()))),
        });
        persist_cursors(&shared);
        update_gauges(&shared);
        let (tx, rx) = sync_channel(QUEUE);
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (head_tx, head_rx) = watch::channel(writer.segment.end());
        let segment_bytes = (cfg.max_bytes / 8).clamp(64 << 10, 64 << 20);
        let thread_shared = shared.clone();
        let block = cfg.when_full == WhenFull::Block;
        let live_share = cfg.live_share;
        let cfg = cfg.clone();
        let handle = std::thread::Builder::new()
            .name("linetap-buffer".into())
            .spawn(move || {
                write_loop(
                    thread_shared,
                    writer,
                    rx,
                    head_tx,
                    cfg,
                    cat_id,
                    segment_bytes,
                )
            })
            .map_err(|e| format!("buffer: cannot start the writer thread: {e}"))?;
        let input = BufferInput {
            tx,
            block,
            stopping: stopping.clone(),
            metrics,
        };
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

    /// The reader for sink number `index` (in the order given to `open`).
    pub fn reader(&self, index: usize) -> SinkReader {
        let (pos, name) = {
            let st = self.shared.lock();
            (st.cursors[index].acked, st.cursors[index].name.clone())
        };
        let seg_dir = self.shared.dir.join("segments");
        SinkReader {
            index,
            name,
            shared: self.shared.clone(),
            head_rx: self.head_rx.clone(),
            main: Some(LogReader::new(&seg_dir, pos)),
            live: None,
            backlog_end: 0,
            live_share: self.live_share,
            pending_main: pos,
            pending_live: 0,
        }
    }

    /// Waits for the writer to finish (once every `BufferInput` is dropped) and syncs.
    pub fn close_writer(&mut self) {
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        persist_cursors(&self.shared);
    }

    /// Shutdown has begun: sources held back by `when_full = "block"` stop waiting.
    pub fn stopping(&self) {
        self.stopping.store(true, Relaxed);
    }

    /// Saves the read positions now (after the sinks' last deliveries at shutdown).
    pub fn persist(&self) {
        persist_cursors(&self.shared);
    }
}

fn cursor_path(dir: &Path, sink: &str) -> PathBuf {
    // Sink names are TOML keys; keep the file name safe whatever they contain.
    let safe: String = sink
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}.pos"))
}

fn read_cursor(dir: &Path, sink: &str) -> Option<u64> {
    let text = std::fs::read_to_string(cursor_path(dir, sink)).ok()?;
    let (pos, crc) = text.trim().split_once(' ')?;
    (crc32fast::hash(pos.as_bytes()).to_string() == crc)
        .then(|| pos.parse().ok())
        .flatten()
}

/// Writes every changed cursor durably (temp file, fsync, rename, fsync the directory). The
/// state lock is held only to copy the positions, never across an fsync: sinks and sources
/// must not wait for the disk.
fn persist_cursors(shared: &Shared) {
    let todo: Vec<(usize, String, u64)> = {
        let st = shared.lock();
        st.cursors
            .iter()
            .enumerate()
            .filter(|(_, c)| c.acked != c.persisted)
            .map(|(i, c)| (i, c.name.clone(), c.acked))
            .collect()
    };
    if todo.is_empty() {
        return;
    }
    let cur_dir = shared.dir.join("cursors");
    let mut done = Vec::new();
    for (i, name, pos) in todo {
        let path = cursor_path(&cur_dir, &name);
        let tmp = path.with_extension("tmp");
        let text = pos.to_string();
        let body = format!("{text} {}\n", crc32fast::hash(text.as_bytes()));
        let ok = std::fs::File::create(&tmp)
            .and_then(|mut f| {
                use std::io::Write;
                f.write_all(body.as_bytes())?;
                f.sync_all()
            })
            .and_then(|_| std::fs::rename(&tmp, &path));
        match ok {
            Ok(()) => done.push((i, pos)),
            Err(e) => {
                tracing::warn!(sink = %name, error = %e, "buffer: cannot save the read position")
            }
        }
    }
    log::sync_dir(&cur_dir);
    let mut st = shared.lock();
    for (i, pos) in done {
        st.cursors[i].persisted = pos;
    }
}

/// The writer thread. It wakes every `TICK` (never once per batch: a source's `publish`
/// costs no wake-up), appends everything queued as one write, hands the batches to the sinks'
/// in-memory tails, and syncs every `sync_interval`.
fn write_loop(
    shared: Arc<Shared>,
    mut writer: LogWriter,
    rx: Receiver<Arc<SampleBatch>>,
    head_tx: watch::Sender<u64>,
    cfg: BufferConfig,
    cat_id: u64,
    segment_bytes: u64,
) {
    let seg_dir = shared.dir.join("segments");
    let mut pending: Vec<u8> = Vec::with_capacity(256 << 10);
    let mut scratch: Vec<u8> = Vec::with_capacity(8 << 10);
    let mut fresh: Vec<TailItem> = Vec::new();
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    let mut refused_logged = false;
    let mut disconnected = false;
    let mut last_notified = writer.segment.end();
    let mut last_notify = Instant::now();
    while !disconnected {
        std::thread::sleep(TICK);
        let mut pending_samples = 0u64;
        let base = writer.segment.end();
        loop {
            let batch = match rx.try_recv() {
                Ok(b) => b,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            };
            // The disk budget, before accepting more.
            let mut over = shared.lock().bytes_on_disk() + pending.len() as u64 >= cfg.max_bytes;
            if over && cfg.when_full == WhenFull::Block {
                // Hold the sources back (the queue fills, `publish` waits) until sinks deliver.
                if !refused_logged {
                    tracing::warn!(
                        "buffer full (max_bytes): holding the sources back (when_full = block)"
                    );
                    refused_logged = true;
                }
                while over {
                    std::thread::sleep(Duration::from_millis(50));
                    enforce_budget(&shared, &seg_dir, &cfg);
                    over = shared.lock().bytes_on_disk() + pending.len() as u64 >= cfg.max_bytes;
                }
            }
            if over && cfg.when_full == WhenFull::DropNewest {
                for s in &shared.metrics.sinks {
                    s.dropped_buffer_full
                        .fetch_add(batch.samples.len() as u64, Relaxed);
                }
                if !refused_logged {
                    tracing::warn!(
                        "buffer full (max_bytes): refusing new data (when_full = drop_newest)"
                    );
                    refused_logged = true;
                }
                continue;
            }
            refused_logged = false;
            scratch.clear();
            if batch.encode(&mut scratch).is_err() {
                continue;
            }
            let start = base + pending.len() as u64;
            let written_ms = now_ms();
            pending_samples += batch.samples.len() as u64;
            record::append_record(
                &mut pending,
                &scratch,
                batch.samples.len() as u32,
                written_ms,
            );
            let end = base + pending.len() as u64;
            fresh.push(TailItem {
                start,
                end,
                catalog: cat_id,
                written_ms,
                batch,
            });
            if pending.len() >= 1 << 20 {
                break;
            }
        }
        if !pending.is_empty() {
            match writer.append(&pending) {
                Ok(()) => {
                    unsynced = true;
                    shared
                        .metrics
                        .buffer_bytes_written
                        .fetch_add(pending.len() as u64, Relaxed);
                    let head = writer.segment.end();
                    let mut st = shared.lock();
                    if let Some(last) = st.segments.last_mut() {
                        *last = writer.segment;
                    }
                    st.head = head;
                    // Sinks that are caught up take these from memory instead of the disk.
                    for tail in &mut st.tails {
                        for item in &fresh {
                            if tail.len() >= TAIL_ITEMS {
                                tail.pop_front();
                            }
                            tail.push_back(item.clone());
                        }
                    }
                    drop(st);
                    // Wake waiting sinks when enough has accumulated for a batch, or every
                    // quarter second; not at every tick (each wake-up costs CPU).
                    if head - last_notified >= NOTIFY_BYTES || last_notify.elapsed() >= NOTIFY_EVERY
                    {
                        let _ = head_tx.send(head);
                        last_notified = head;
                        last_notify = Instant::now();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "buffer: write failed; these samples are lost");
                    for s in &shared.metrics.sinks {
                        s.dropped_disk_error.fetch_add(pending_samples, Relaxed);
                    }
                }
            }
            pending.clear();
            fresh.clear();
        }
        let now = Instant::now();
        if unsynced && now.duration_since(last_sync) >= cfg.sync_interval {
            if let Err(e) = writer.sync() {
                tracing::error!(error = %e, "buffer: sync failed");
            }
            unsynced = false;
            last_sync = now;
            persist_cursors(&shared);
        }
        if writer.segment.len >= segment_bytes {
            match writer.roll(cat_id) {
                Ok(_) => {
                    let mut st = shared.lock();
                    st.segments.push(writer.segment);
                }
                Err(e) => tracing::error!(error = %e, "buffer: cannot start a new segment"),
            }
        }
        enforce_budget(&shared, &seg_dir, &cfg);
        update_gauges(&shared);
    }
    let _ = writer.sync();
    persist_cursors(&shared);
}

/// `linetap_buffer_bytes` and `linetap_buffer_oldest_age_seconds` for every sink, kept current
/// by the writer thread (a sink stuck retrying cannot update its own).
fn update_gauges(shared: &Shared) {
    let st = shared.lock();
    let now = now_ms();
    for (c, m) in st.cursors.iter().zip(&shared.metrics.sinks) {
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

impl State {
    fn bytes_on_disk(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
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
            let min_acked = st.cursors.iter().map(|c| c.acked).min().unwrap_or(st.head);
            let fully_acked = min_acked >= oldest.end();
            let may_drop =
                st.bytes_on_disk() > cfg.max_bytes && cfg.when_full == WhenFull::DropOldest;
            if !fully_acked && !may_drop {
                return;
            }
            // Sinks that had not delivered this segment lose the rest of it.
            let mut moved = Vec::new();
            for (i, c) in st.cursors.iter_mut().enumerate() {
                if c.acked < oldest.end() {
                    moved.push((i, c.name.clone(), c.acked));
                    c.acked = oldest.end();
                    c.oldest_ms = 0;
                }
            }
            (oldest, moved)
        };
        for (i, name, from) in moved {
            let lost = log::count_samples(seg_dir, oldest, from, oldest.end());
            if let Some(m) = shared.metrics.sinks.get(i) {
                m.dropped_buffer_full.fetch_add(lost, Relaxed);
            }
            tracing::warn!(sink = %name, samples = lost, "buffer full (max_bytes): dropped the oldest undelivered data");
        }
        // Cursors first, then the data: a crash in between re-reads nothing that is gone.
        persist_cursors(shared);
        shared.lock().segments.retain(|s| s.base != oldest.base);
        if let Err(e) = std::fs::remove_file(log::segment_path(seg_dir, oldest.base)) {
            tracing::warn!(error = %e, "buffer: cannot remove a delivered segment");
        }
    }
}

/// One sink's view of the buffer.
pub struct SinkReader {
    index: usize,
    pub name: String,
    shared: Arc<Shared>,
    head_rx: watch::Receiver<u64>,
    /// Reads the backlog (or everything, when not lagging). `None` only while a read is running.
    main: Option<LogReader>,
    /// While lagging: reads new data from where the lag was noticed, beside the backlog.
    live: Option<LogReader>,
    /// While lagging: where the backlog ends and `live` began.
    backlog_end: u64,
    live_share: f64,
    /// Read but not yet acknowledged up to here.
    pending_main: u64,
    pending_live: u64,
}

impl SinkReader {
    /// How far the log is written (read from the shared state: the writer wakes the sinks
    /// only when about a batch has accumulated, not at every tick).
    fn limit(&self) -> u64 {
        self.shared.lock().head
    }

    /// Whether there is anything to read now.
    pub fn has_data(&self) -> bool {
        let head = self.limit();
        self.main.as_ref().is_some_and(|m| {
            m.pos
                < if self.live.is_some() {
                    self.backlog_end
                } else {
                    head
                }
        }) || self.live.as_ref().is_some_and(|l| l.pos < head)
    }

    /// Waits until the writer has written more (cancel-safe).
    pub async fn changed(&mut self) {
        if self.head_rx.changed().await.is_err() {
            // The writer has stopped: nothing more will come.
            std::future::pending::<()>().await;
        }
    }

    /// Bytes written but not read yet.
    pub fn pending_bytes(&self) -> u64 {
        let head = self.limit();
        let main_limit = if self.live.is_some() {
            self.backlog_end
        } else {
            head
        };
        let main = self
            .main
            .as_ref()
            .map(|m| main_limit.saturating_sub(m.pos))
            .unwrap_or(0);
        let live = self
            .live
            .as_ref()
            .map(|l| head.saturating_sub(l.pos))
            .unwrap_or(0);
        main + live
    }

    /// Reads up to `max_samples` samples: while lagging, `live_share` of them from new data and
    /// the rest from the backlog, both in order. The file reads run on the blocking pool.
    pub async fn read(&mut self, max_samples: usize) -> Vec<Item> {
        if let Some(read) = self.read_from_memory(max_samples) {
            return read;
        }
        let head = self.limit();
        let segments = self.shared.lock().segments.clone();
        // Fell far behind (the sink was down)? Start reading new data beside the backlog.
        if self.live.is_none() {
            if let Some(m) = &self.main {
                if head.saturating_sub(m.pos) > LAG_BYTES && self.live_share > 0.0 {
                    self.backlog_end = head;
                    self.live = Some(LogReader::new(&self.shared.dir.join("segments"), head));
                    self.pending_live = head;
                    tracing::info!(sink = %self.name, backlog_bytes = head - m.pos, "replaying stored data beside live data");
                }
            }
        }
        let live_quota = if self.live.is_some() {
            ((max_samples as f64) * self.live_share).ceil() as usize
        } else {
            0
        };
        let mut main = self.main.take();
        let mut live = self.live.take();
        let main_limit = if live.is_some() {
            self.backlog_end
        } else {
            head
        };
        let joined = tokio::task::spawn_blocking(move || {
            let mut items = Vec::new();
            let mut damage = Damage::default();
            let mut tags = Vec::new();
            if let Some(l) = live.as_mut() {
                if let Err(e) = l.read(&segments, head, live_quota, &mut items, &mut damage) {
                    tracing::warn!(error = %e, "buffer: read failed");
                }
                tags.resize(items.len(), true);
            }
            if let Some(m) = main.as_mut() {
                let taken: usize = items.iter().map(|i| i.batch.samples.len()).sum();
                if let Err(e) = m.read(
                    &segments,
                    main_limit,
                    max_samples.saturating_sub(taken).max(1),
                    &mut items,
                    &mut damage,
                ) {
                    tracing::warn!(error = %e, "buffer: read failed");
                }
                tags.resize(items.len(), false);
            }
            (main, live, items, tags, damage)
        })
        .await;
        let (main, live, items, tags, damage) = match joined {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "buffer: reader task failed");
                (
                    Some(LogReader::new(
                        &self.shared.dir.join("segments"),
                        self.pending_main,
                    )),
                    None,
                    Vec::new(),
                    Vec::new(),
                    Damage::default(),
                )
            }
        };
        self.main = main;
        self.live = live;
        for (item, from_live) in items.iter().zip(&tags) {
            if *from_live {
                self.pending_live = item.end;
            } else {
                self.pending_main = item.end;
            }
        }
        if let Some(first) = items.first() {
            let mut st = self.shared.lock();
            let c = &mut st.cursors[self.index];
            if c.oldest_ms == 0 {
                c.oldest_ms = first.written_ms;
            }
        }
        if damage.samples > 0 || damage.bytes > 0 {
            if let Some(m) = self.shared.metrics.sinks.get(self.index) {
                m.dropped_corrupt.fetch_add(damage.samples, Relaxed);
            }
            self.shared
                .metrics
                .buffer_corrupt_bytes
                .fetch_add(damage.bytes, Relaxed);
            tracing::error!(sink = %self.name, samples = damage.samples, bytes = damage.bytes, "buffer: damaged data skipped");
        }
        // Items in log order per reader; the sink encodes them in this order.
        items
    }

    /// The fast path of a caught-up sink: the batches the writer just wrote, from memory.
    fn read_from_memory(&mut self, max_samples: usize) -> Option<Vec<Item>> {
        if self.live.is_some() {
            return None;
        }
        let pos = self.main.as_ref()?.pos;
        let mut st = self.shared.lock();
        let tail = &mut st.tails[self.index];
        while tail.front().is_some_and(|t| t.end <= pos) {
            tail.pop_front();
        }
        if tail.front()?.start != pos {
            return None;
        }
        let mut items = Vec::new();
        let mut samples = 0;
        let mut at = pos;
        while samples < max_samples {
            let Some(t) = tail.front() else { break };
            if t.start != at {
                break;
            }
            let t = tail.pop_front()?;
            samples += t.batch.samples.len();
            at = t.end;
            items.push(Item {
                batch: t.batch,
                catalog: t.catalog,
                end: t.end,
                written_ms: t.written_ms,
            });
        }
        let c = &mut st.cursors[self.index];
        if c.oldest_ms == 0 {
            c.oldest_ms = items.first().map(|i| i.written_ms).unwrap_or(0);
        }
        drop(st);
        if let Some(m) = self.main.as_mut() {
            m.seek(at);
        }
        self.pending_main = at;
        Some(items)
    }

    /// Everything read so far has been delivered (or deliberately dropped).
    pub fn ack(&mut self) {
        let mut st = self.shared.lock();
        let head = st.head;
        let c = &mut st.cursors[self.index];
        if self.live.is_some() && self.pending_main >= self.backlog_end {
            // The backlog is done: the live reader becomes the only one.
            self.main = self.live.take();
            self.pending_main = self.pending_live;
            tracing::info!(sink = %self.name, "stored data replayed; back to live delivery");
        }
        c.acked = c.acked.max(self.pending_main);
        c.oldest_ms = 0;
        self.shared.metrics.sinks[self.index]
            .buffer_bytes
            .store(head.saturating_sub(c.acked), Relaxed);
    }

    /// The catalog a record refers to (loaded from the buffer directory when it is not the
    /// current one), or `None` when it is missing.
    pub fn catalog(&mut self, id: u64) -> Option<Arc<Catalog>> {
        {
            let mut current = self
                .shared
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some((cur_id, cat, users)) = current.as_mut() {
                if *cur_id == id {
                    let cat = cat.clone();
                    *users = users.saturating_sub(1);
                    if *users == 0 {
                        *current = None;
                    }
                    return Some(cat);
                }
            }
        }
        let bytes = std::fs::read(
            self.shared
                .dir
                .join("catalogs")
                .join(format!("{id:016x}.pb")),
        )
        .ok()?;
        Catalog::decode(bytes.as_slice()).ok().map(Arc::new)
    }

    /// (head seen, read position, acknowledged position), for diagnostics.
    pub fn positions(&self) -> (u64, u64, u64) {
        let acked = self.shared.lock().cursors[self.index].acked;
        (
            self.limit(),
            self.main.as_ref().map(|m| m.pos).unwrap_or(0),
            acked,
        )
    }

    /// Metrics: bytes not yet delivered, and the age of the oldest of them.
    pub fn observe(&self) {
        let st = self.shared.lock();
        let c = &st.cursors[self.index];
        let m = &self.shared.metrics.sinks[self.index];
        m.buffer_bytes
            .store(st.head.saturating_sub(c.acked), Relaxed);
        let age = if c.oldest_ms == 0 {
            0
        } else {
            now_ms().saturating_sub(c.oldest_ms)
        };
        m.buffer_oldest_ms.store(age, Relaxed);
    }
}
