//! Self-observation: counters every component updates, logging set-up.
pub mod http;
pub mod liveness;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod systemd;
