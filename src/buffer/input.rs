//! The writing side of the buffer: sources (through their devices' transform chains) hand
//! batches to `publish`; a catalog change goes through the same queue, so the writer sees it
//! before the first batch that uses it.

use super::Shared;
use crate::model::catalog::Version;
use crate::model::SampleBatch;
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

#[derive(Clone)]
pub struct BufferInput {
    tx: SyncSender<Entry>,
    block: bool,
    /// Set at shutdown: a source held back by `block` gives up instead of waiting forever.
    stopping: Arc<AtomicBool>,
    shared: Arc<Shared>,
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
        }
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
        loop {
            match self.tx.try_send(entry) {
                Ok(()) => {
                    // One runtime thread publishes, so tickets follow the queue's order.
                    self.shared.enqueued.fetch_add(1, Ordering::AcqRel);
                    self.shared.queued_one();
                    return true;
                }
                Err(TrySendError::Full(e)) if self.block && !self.stopping.load(Relaxed) => {
                    entry = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(TrySendError::Full(Entry::Batch(b))) if self.block => {
                    // Stopping while the sources are held back: this batch is not accepted.
                    self.shared
                        .drop_for_all(b.samples.len() as u64, |m| &m.dropped_shutdown);
                    return false;
                }
                Err(TrySendError::Full(Entry::Batch(b)))
                | Err(TrySendError::Disconnected(Entry::Batch(b))) => {
                    self.shared
                        .drop_for_all(b.samples.len() as u64, |m| &m.dropped_queue_full);
                    return false;
                }
                Err(_) => return false,
            }
        }
    }

    /// A ticket covering every batch accepted so far (see `durable`).
    pub fn ticket(&self) -> u64 {
        self.shared.enqueued.load(Ordering::Acquire)
    }

    /// Waits until every batch up to `ticket` is on disk and synced (the writer syncs at once
    /// while someone waits). False when the buffer stopped first.
    pub async fn durable(&self, ticket: u64) -> bool {
        let mut rx = self.shared.durable.subscribe();
        if *rx.borrow() >= ticket {
            return true;
        }
        self.shared.waiting.fetch_add(1, Ordering::AcqRel);
        self.shared.wake_writer();
        let done = rx.wait_for(|d| *d >= ticket).await.is_ok();
        self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
        done
    }

    /// Queues a new catalog version: batches published after this refer to it. Never dropped:
    /// waits while the queue is full (catalog changes are rare).
    pub async fn publish_catalog(&self, version: Version) {
        let mut entry = Entry::Catalog(version);
        loop {
            match self.tx.try_send(entry) {
                Ok(()) => {
                    self.shared.queued_one();
                    return;
                }
                Err(TrySendError::Full(e)) => {
                    entry = e;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}
