//! The normalized model (proto/linetap/v1/model.proto) and the catalog that gives every point
//! of a line its numeric id.

#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/linetap.v1.rs"));
}
pub mod catalog;

pub use generated::*;
pub use sample::Value;

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl SampleBatch {
    /// A sample's timestamp: its own, or the batch's when it has none (0).
    #[inline]
    pub fn time_of(&self, s: &Sample) -> i64 {
        if s.timestamp_ns != 0 {
            s.timestamp_ns
        } else {
            self.timestamp_ns
        }
    }

    /// The timestamp to store in a sample taken at `ts`: 0 when it is the batch's (set by the
    /// first sample of the batch).
    #[inline]
    pub fn stamp(&mut self, ts: i64) -> i64 {
        if self.timestamp_ns == 0 {
            self.timestamp_ns = ts;
        }
        if ts == self.timestamp_ns {
            0
        } else {
            ts
        }
    }
}
