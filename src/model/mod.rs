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
