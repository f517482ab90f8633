//! The line-protocol sinks' shared half: a `Sink` that encodes batches with one `LineEncoder`
//! per catalog version and hands the body to a `LineWriter` (InfluxDB over HTTP, a file).

use super::lineproto::{LineEncoder, Skipped};
use super::{Outcome, RetryCtl, Sink};
use crate::model::{Catalog, SampleBatch};
use std::collections::HashMap;

/// Delivers line-protocol bodies somewhere.
pub trait LineWriter: Send + 'static {
    /// Writes `body` (`lines` complete lines), retrying as the destination warrants.
    fn write(
        &mut self,
        body: &[u8],
        lines: usize,
        retry: &mut RetryCtl,
    ) -> impl std::future::Future<Output = Outcome> + Send;

    /// Whether the destination has an unsigned integer type (u64 points written as `5u`).
    fn unsigned(&self) -> bool {
        false
    }
}

/// How many catalog versions' encoders a sink keeps (the least recently built goes first; a
/// version needed again is handed to the sink again).
const ENCODERS: usize = 8;

pub struct LineSink<W> {
    writer: W,
    encoders: HashMap<u64, LineEncoder>,
    /// Catalog ids in the order their encoders were built (oldest first).
    order: Vec<u64>,
    body: Vec<u8>,
    lines: usize,
}

impl<W: LineWriter> LineSink<W> {
    pub fn new(writer: W) -> Self {
        LineSink {
            writer,
            encoders: HashMap::new(),
            order: Vec::new(),
            body: Vec::with_capacity(256 << 10),
            lines: 0,
        }
    }
}

impl<W: LineWriter> Sink for LineSink<W> {
    fn knows(&self, id: u64) -> bool {
        self.encoders.contains_key(&id)
    }

    fn catalog(&mut self, id: u64, catalog: &Catalog) {
        if self.encoders.len() >= ENCODERS {
            let oldest = self.order.remove(0);
            self.encoders.remove(&oldest);
        }
        self.encoders.insert(
            id,
            LineEncoder::new(catalog).with_unsigned(self.writer.unsigned()),
        );
        self.order.push(id);
    }

    fn add(&mut self, catalog: u64, batch: &SampleBatch, skipped: &mut Skipped) -> usize {
        match self.encoders.get(&catalog) {
            Some(enc) => {
                let n = enc.encode(batch, &mut self.body, skipped);
                self.lines += n;
                n
            }
            None => {
                skipped.unknown_point += batch.samples.len() as u64;
                0
            }
        }
    }

    async fn flush(&mut self, retry: &mut RetryCtl) -> Outcome {
        let outcome = self.writer.write(&self.body, self.lines, retry).await;
        self.body.clear();
        self.lines = 0;
        outcome
    }

    fn pending_bytes(&self) -> usize {
        self.body.len()
    }
}
