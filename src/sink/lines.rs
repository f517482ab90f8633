//! The line-protocol sinks' shared half: a `Sink` that encodes batches with one `LineEncoder`
//! per catalog version and hands the body to a `LineWriter` (InfluxDB over HTTP, a file).

use super::lineproto::{LineEncoder, Skipped};
use super::{Outcome, RetryCtl, Sink};
use crate::model::{Catalog, SampleBatch};
use bytes::Bytes;
use std::collections::HashMap;

/// Delivers line-protocol bodies somewhere.
pub trait LineWriter: Send + 'static {
    /// Writes `body` (`lines` complete lines), retrying as the destination warrants. It is
    /// `Bytes` so a request can hold it without a copy; the sink uses its memory again for the
    /// next body once the writer has let go of it.
    fn write(
        &mut self,
        body: &Bytes,
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

/// The body's first capacity (it grows to what a batch needs and is kept).
const BODY_CAPACITY: usize = 256 << 10;

pub struct LineSink<W> {
    writer: W,
    encoders: HashMap<u64, LineEncoder>,
    /// Catalog ids in the order their encoders were built (oldest first).
    order: Vec<u64>,
    body: Vec<u8>,
    lines: usize,
    /// The most body bytes a batch took per sample so far (to size the body ahead).
    line_bytes: usize,
}

impl<W: LineWriter> LineSink<W> {
    pub fn new(writer: W) -> Self {
        LineSink {
            writer,
            encoders: HashMap::new(),
            order: Vec::new(),
            body: Vec::with_capacity(BODY_CAPACITY),
            lines: 0,
            line_bytes: 0,
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
                let before = self.body.len();
                // Room for this batch (at the longest line per sample seen so far), grown by
                // at least an eighth instead of doubled: the body's memory is kept for the next
                // request, so doubling would hold up to twice the largest body for good.
                let need = batch.samples.len() * self.line_bytes;
                if self.body.capacity() - before < need {
                    self.body.reserve_exact(need.max(self.body.capacity() / 8));
                }
                let n = enc.encode(batch, &mut self.body, skipped);
                if let Some(per) = (self.body.len() - before).checked_div(batch.samples.len()) {
                    self.line_bytes = self.line_bytes.max(per + 1);
                }
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
        let body = Bytes::from(std::mem::take(&mut self.body));
        let outcome = self.writer.write(&body, self.lines, retry).await;
        // Emptied first, so taking the memory back copies nothing.
        self.body = match body.try_into_mut() {
            Ok(mut b) => {
                b.clear();
                Vec::from(b)
            }
            // Still held (a request not yet dropped): a new one.
            Err(_) => Vec::with_capacity(BODY_CAPACITY),
        };
        self.lines = 0;
        outcome
    }

    fn pending_bytes(&self) -> usize {
        self.body.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{sample::Value, DataType, DeviceDescriptor, PointDescriptor, Sample};
    use std::time::Duration;

    /// Keeps what it was given, as a request would until it is done.
    struct Keeper {
        bodies: Vec<Vec<u8>>,
        hold: Option<Bytes>,
        keep: bool,
    }

    impl LineWriter for Keeper {
        async fn write(&mut self, body: &Bytes, _lines: usize, _retry: &mut RetryCtl) -> Outcome {
            self.bodies.push(body.to_vec());
            self.hold = self.keep.then(|| body.clone());
            Outcome::Delivered
        }
    }

    /// A sink over a `Keeper` that lets go of every body, with `catalog` as version 1.
    fn keeper_sink(catalog: &Catalog) -> LineSink<Keeper> {
        let mut sink = LineSink::new(Keeper {
            bodies: Vec::new(),
            hold: None,
            keep: false,
        });
        sink.catalog(1, catalog);
        sink
    }

    /// The body goes to the writer without a copy, and its memory comes back for the next one
    /// when the writer let go of it (a new buffer when it did not); every body is whole.
    #[tokio::test]
    async fn the_body_is_handed_over_and_taken_back_without_a_copy() {
        let catalog = Catalog {
            line: "l".into(),
            devices: vec![DeviceDescriptor {
                name: "d".into(),
                ..Default::default()
            }],
            points: vec![PointDescriptor {
                measurement: "m".into(),
                name: "v".into(),
                data_type: DataType::Double as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let batch = |x: f64| SampleBatch {
            timestamp_ns: 7,
            samples: vec![Sample {
                value: Some(Value::DoubleValue(x)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut sink = keeper_sink(&catalog);
        let (_trigger, shutdown) = crate::shutdown::channel();
        let mut retry = RetryCtl::new(
            shutdown,
            Duration::from_secs(1),
            Default::default(),
            crate::observe::liveness::Beat::unwatched(),
        );
        let mut skipped = Skipped::default();
        assert_eq!(sink.add(1, &batch(1.5), &mut skipped), 1);
        let memory = sink.body.as_ptr();
        assert_eq!(sink.flush(&mut retry).await, Outcome::Delivered);
        assert_eq!(sink.body.as_ptr(), memory, "the same memory, taken back");
        assert!(sink.body.is_empty() && sink.body.capacity() >= BODY_CAPACITY);
        sink.writer.keep = true;
        sink.add(1, &batch(2.5), &mut skipped);
        assert_eq!(sink.flush(&mut retry).await, Outcome::Delivered);
        assert_ne!(sink.body.as_ptr(), memory, "still held: a new buffer");
        assert!(sink.body.is_empty() && sink.body.capacity() >= BODY_CAPACITY);
        sink.add(1, &batch(3.5), &mut skipped);
        assert_eq!(sink.flush(&mut retry).await, Outcome::Delivered);
        let bodies: Vec<String> = sink
            .writer
            .bodies
            .iter()
            .map(|b| String::from_utf8(b.clone()).unwrap())
            .collect();
        assert_eq!(
            bodies,
            [
                "m,device=d,line=l v=1.5 7\n",
                "m,device=d,line=l v=2.5 7\n",
                "m,device=d,line=l v=3.5 7\n"
            ]
        );
        assert_eq!(sink.writer.hold.as_deref().unwrap(), bodies[2].as_bytes());
    }

    /// A body larger than its first capacity grows by what the batches need, not by doubling
    /// (its memory is kept for the next request): at most an eighth or one batch over.
    #[test]
    fn the_body_grows_by_what_batches_need() {
        let catalog = Catalog {
            line: "line-with-a-name".into(),
            devices: vec![DeviceDescriptor {
                name: "press-brake-07".into(),
                ..Default::default()
            }],
            points: (0..100)
                .map(|i| PointDescriptor {
                    id: i,
                    measurement: "servo".into(),
                    name: format!("v{i}"),
                    data_type: DataType::Float as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let batch = SampleBatch {
            timestamp_ns: 1_733_500_000_123_456_789,
            samples: (0..100)
                .map(|i| Sample {
                    point: i,
                    value: Some(Value::DoubleValue(f64::from(i as f32 * 1.37))),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let mut sink = keeper_sink(&catalog);
        let mut skipped = Skipped::default();
        let mut grown = 0;
        while sink.body.len() < 3 * BODY_CAPACITY {
            let capacity = sink.body.capacity();
            assert_eq!(sink.add(1, &batch, &mut skipped), 100);
            grown += usize::from(sink.body.capacity() != capacity);
        }
        let batch_bytes = sink.body.len() / (sink.lines / 100);
        assert!(
            sink.body.capacity() <= sink.body.len() + (sink.body.len() / 8).max(2 * batch_bytes),
            "{} bytes in {}",
            sink.body.len(),
            sink.body.capacity()
        );
        assert!(grown >= 4, "grew {grown} times");
    }
}
