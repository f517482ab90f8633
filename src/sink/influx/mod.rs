//! The InfluxDB sink: line protocol over the v1 or v2 write API (`writer.rs`: HTTP, gzip,
//! retries, Retry-After, credentials read again after a 401/403, 413 splitting, refused-line
//! isolation; `isolate.rs`: the pure line, series and refusal logic it uses).

pub mod config;
mod isolate;
mod writer;

pub use writer::InfluxWriter;

use super::deadletter::DeadLetter;
use super::lines::LineSink;
use super::BuildContext;
use crate::config::InfluxConfig;

/// The running sink for one `[sinks.NAME]` of `type = "influxdb"`. Fails when its credentials
/// cannot be read now.
pub fn build(cfg: &InfluxConfig, ctx: &BuildContext) -> Result<LineSink<InfluxWriter>, String> {
    let dead_letter = DeadLetter::new(ctx.data_dir, ctx.name);
    Ok(LineSink::new(InfluxWriter::new(cfg, dead_letter)?))
}
