//! One sink's view of the buffer: reads from its cursor (the memory tail when caught up, the
//! log on the blocking pool otherwise, new data beside the backlog when far behind),
//! acknowledges what was delivered, and hands out the catalog each record refers to.

use super::log::{Damage, Item, LogReader};
use super::{now_ms, Shared, LAG_BYTES};
use crate::model::Catalog;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::watch;

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
    pub(super) fn new(
        index: usize,
        name: String,
        shared: Arc<Shared>,
        head_rx: watch::Receiver<u64>,
        main: LogReader,
        live_share: f64,
    ) -> Self {
        let pos = main.pos;
        SinkReader {
            index,
            name,
            shared,
            head_rx,
            main: Some(main),
            live: None,
            backlog_end: 0,
            live_share,
            pending_main: pos,
            pending_live: 0,
        }
    }

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

    /// About how many log bytes `samples` samples take, as the writer last wrote them (a poll's
    /// packed readings take a fifth of what samples on their own do).
    pub fn batch_bytes(&self, samples: usize) -> u64 {
        let per_16 = self
            .shared
            .bytes_per_sample_16
            .load(std::sync::atomic::Ordering::Relaxed);
        (samples as u64).saturating_mul(per_16) / 16
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
                    self.live = Some(LogReader::new(&self.shared.segments_dir(), head));
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
                        &self.shared.segments_dir(),
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
            if let Some(c) = self.shared.lock().cursors.get(self.index) {
                c.metrics.dropped_corrupt.fetch_add(damage.samples, Relaxed);
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
        c.metrics
            .buffer_bytes
            .store(head.saturating_sub(c.acked), Relaxed);
    }

    /// The catalog version a record refers to (from memory while it is new, else from the
    /// buffer directory), or `None` when it is missing.
    pub async fn catalog(&mut self, id: u64) -> Option<Arc<Catalog>> {
        if let Some(c) = self.shared.catalogs.take_fresh(id) {
            return Some(c);
        }
        // An older version: read and decode it on the blocking pool.
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.catalogs.load(id))
            .await
            .ok()
            .flatten()
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
        let m = &c.metrics;
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
