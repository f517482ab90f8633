//! Self-observation: counters every component updates, logging set-up.
pub mod logging;
pub mod metrics;
