//! The writing side of the buffer: sources (through their devices' transform chains) hand
//! batches to `publish`; a catalog change goes through the same queue, so the writer sees it
//! before the first batch that uses it.

use super::{Shared, WAKE_AT};
use crate::model::catalog::Version;
use crate::model::SampleBatch;
use crate::observe::liveness::Beat;
use crate::shutdown::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering, Ordering::Relaxed};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// What the queue to the writer thread carries.
pub(super) enum Entry {
    Batch(Arc<SampleBatch>),
    /// Batches after this one refer to this catalog version.
    Catalog(Version),
}

/// What became of the batches a publisher queued (see `BufferInput::durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Durable,
    Refused,
    Stopped,
}

#[derive(Clone)]
pub struct BufferInput {
    tx: SyncSender<Entry>,
    block: bool,
    /// Set at shutdown: a source held back by `block` gives up instead of waiting forever.
    stopping: Arc<AtomicBool>,
    shared: Arc<Shared>,
    /// The publishing component's own stop (a reload that stops it) ends a held publish too.
    stop: Option<Shutdown>,
    /// The publishing task's beat: idle while held back (waiting is not being stuck).
    beat: Option<Beat>,
}

impl BufferInput {
    pub(super) fn new(
        tx: SyncSender<Entry>,
        block: bool,
        stopping: Arc<AtomicBool>,
        shared: Arc<Shared>,
    ) -> Self {
        BufferInput {
            tx,
            block,
            stopping,
            shared,
            stop: None,
            beat: None,
        }
    }

    /// This input, for a component whose stop must also end a publish held back by
    /// `when_full = "block"`.
    pub fn until(mut self, stop: Shutdown) -> Self {
        self.stop = Some(stop);
        self
    }

    /// This input, for a task whose beat must read idle while a publish is held back.
    pub fn watched_by(mut self, beat: Beat) -> Self {
        self.beat = Some(beat);
        self
    }

    fn held_back(&self) -> bool {
        self.block
            && !self.stopping.load(Relaxed)
            && !self.stop.as_ref().is_some_and(|s| s.is_shutdown())
    }

    /// Queues a batch for the log. With `when_full = "block"` a full buffer holds the source
    /// back here; otherwise this never waits. Returns whether the batch was accepted (an empty
    /// batch is, trivially).
    pub async fn publish(&self, batch: SampleBatch) -> bool {
        if batch.samples.is_empty() {
            return true;
        }
        // Allocated here, on the runtime thread, and freed there by the sinks.
        let mut entry = Entry::Batch(Arc::new(batch));
        let mut was_busy = None;
        let accepted = loop {
            match self.send(entry) {
                Ok(()) => {
                    // One runtime thread publishes, so tickets follow the queue's order.
                    self.shared.enqueued.fetch_add(1, Ordering::AcqRel);
                    break true;
                }
                Err(TrySendError::Full(e)) if self.held_back() => {
                    entry = e;
                    if was_busy.is_none() {
                        was_busy = Some(self.beat.as_ref().is_some_and(|b| b.is_busy()));
                        if let Some(b) = &self.beat {
                            b.idle();
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(TrySendError::Full(Entry::Batch(b))) if self.block => {
                    // Stopping while the sources are held back: this batch is not accepted.
                    self.shared
                        .drop_for_all(b.samples.len() as u64, |m| &m.dropped_shutdown);
                    break false;
                }
                Err(TrySendError::Full(Entry::Batch(b)))
                | Err(TrySendError::Disconnected(Entry::Batch(b))) => {
                    self.shared
                        .drop_for_all(b.samples.len() as u64, |m| &m.dropped_queue_full);
                    break false;
                }
                Err(_) => break false,
            }
        };
        if was_busy == Some(true) {
            if let Some(b) = &self.beat {
                b.busy();
            }
        }
        accepted
    }

    /// A ticket covering every batch accepted so far: the batches a publisher queued between
    /// two tickets `from` and `to` are the ones `durability(from, to)` reports on.
    pub fn ticket(&self) -> u64 {
        self.shared.enqueued.load(Ordering::Acquire)
    }

    /// Waits until the writer has settled every batch up to ticket `to` (it syncs at once while
    /// someone waits), and says whether those queued after ticket `from` are all durable:
    /// appended and synced without error. `Refused` when the writer dropped any of them (a
    /// full disk budget with `drop_newest`, a failed write or sync); `Stopped` when the buffer
    /// ended first.
    pub async fn durability(&self, from: u64, to: u64) -> Durability {
        let mut rx = self.shared.settled.subscribe();
        if *rx.borrow() < to {
            self.shared.waiting.fetch_add(1, Ordering::AcqRel);
            self.shared.wake_writer();
            let done = rx.wait_for(|d| *d >= to).await.is_ok();
            self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
            if !done {
                return Durability::Stopped;
            }
        }
        let refused = self
            .shared
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .any(from, to);
        if refused {
            Durability::Refused
        } else {
            Durability::Durable
        }
    }

    /// Hands `entry` to the writer's queue. The writer's count of queued entries is raised
    /// before the entry can be seen (and lowered again if the queue is full): the writer may
    /// take the entry, and count it off, before `try_send` has even returned.
    fn send(&self, entry: Entry) -> Result<(), TrySendError<Entry>> {
        let before = self.shared.queued.fetch_add(1, Relaxed);
        match self.tx.try_send(entry) {
            Ok(()) => {
                if before + 1 == WAKE_AT {
                    self.shared.wake_writer();
                }
                Ok(())
            }
            Err(e) => {
                self.shared.queued.fetch_sub(1, Relaxed);
                Err(e)
            }
        }
    }

    /// Queues a new catalog version: batches published after this refer to it. Never dropped:
    /// waits while the queue is full (catalog changes are rare).
    pub async fn publish_catalog(&self, version: Version) {
        let mut entry = Entry::Catalog(version);
        loop {
            match self.send(entry) {
                Ok(()) => return,
                Err(TrySendError::Full(e)) => {
                    // A writer holding the sources back (`block`) lets it through.
                    self.shared.catalog_waiting.store(true, Relaxed);
                    self.shared.wake_writer();
                    entry = e;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}
