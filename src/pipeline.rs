//! The hand-off from sources to sinks: every `SampleBatch` goes to every sink's queue.
//! A full queue (a sink that is down or slow) never blocks a source: the batch is dropped for
//! that sink only and counted as `linetap_samples_dropped_total{reason="queue_full"}`.
//! (The durable disk buffer of the store-and-forward issue takes this place.)

use crate::model::SampleBatch;
use crate::observe::metrics::Metrics;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::mpsc;

pub type BatchRx = mpsc::Receiver<Arc<SampleBatch>>;

#[derive(Clone)]
pub struct Fanout {
    sinks: Arc<[mpsc::Sender<Arc<SampleBatch>>]>,
    metrics: Arc<Metrics>,
}

impl Fanout {
    /// One queue of `capacity` batches per sink, in `metrics.sinks` order.
    pub fn new(metrics: Arc<Metrics>, capacity: usize) -> (Fanout, Vec<BatchRx>) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..metrics.sinks.len())
            .map(|_| mpsc::channel(capacity))
            .unzip();
        (
            Fanout {
                sinks: txs.into(),
                metrics,
            },
            rxs,
        )
    }

    pub fn publish(&self, batch: SampleBatch) {
        if batch.samples.is_empty() {
            return;
        }
        let batch = Arc::new(batch);
        for (i, tx) in self.sinks.iter().enumerate() {
            if tx.try_send(batch.clone()).is_err() {
                if let Some(m) = self.metrics.sinks.get(i) {
                    m.dropped_queue_full
                        .fetch_add(batch.samples.len() as u64, Relaxed);
                }
            }
        }
    }
}
