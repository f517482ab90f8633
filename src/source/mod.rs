//! Sources: where readings come from. Each turns what it reads into `SampleBatch`es.
pub mod modbus;
