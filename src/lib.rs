//! linetap: a telemetry edge agent for robot production lines. See docs/ARCHITECTURE.md.
pub mod backoff;
pub mod buffer;
pub mod check;
pub mod check_addresses;
pub mod check_field_types;
pub mod component;
pub mod config;
pub mod model;
pub mod mqtt;
pub mod observe;
pub mod probe;
pub mod run;
pub mod shutdown;
pub mod sim;
pub mod sink;
pub mod source;
pub mod transform;
