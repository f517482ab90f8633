//! What both MQTT sinks (`mod.rs`, `edge_node.rs`) do after an attempt to deliver a flush.

use crate::backoff::Backoff;
use crate::mqtt::settings::BrokerConfig;
use crate::sink::{Outcome, RetryCtl};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// What both MQTT sinks do after an attempt to deliver a flush: count it, log a failure once
/// per kind (and the recovery), and back off before the next attempt.
pub(crate) struct Attempts {
    backoff: Backoff,
    logged: Option<String>,
}

impl Attempts {
    pub(crate) fn new() -> Self {
        Attempts {
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            logged: None,
        }
    }

    /// `Some(outcome)` when the flush is done (delivered `bytes`, or abandoned at shutdown);
    /// `None`: try again (the wait is over).
    pub(crate) async fn outcome(
        &mut self,
        result: Result<usize, String>,
        broker: &BrokerConfig,
        retry: &mut RetryCtl,
    ) -> Option<Outcome> {
        match result {
            Ok(bytes) => {
                self.backoff.reset();
                if self.logged.take().is_some() {
                    tracing::info!(sink = %broker.name, "MQTT sink delivering again");
                }
                retry.metrics.requests.fetch_add(1, Relaxed);
                retry.metrics.bytes_sent.fetch_add(bytes as u64, Relaxed);
                Some(Outcome::Delivered)
            }
            Err(e) => {
                retry.metrics.errors_unavailable.fetch_add(1, Relaxed);
                retry.metrics.retries.fetch_add(1, Relaxed);
                if self.logged.as_deref() != Some(e.as_str()) {
                    tracing::warn!(sink = %broker.name, address = %broker.address(), error = %e, "MQTT sink: not delivered; retrying with backoff (the data stays in the buffer)");
                    self.logged = Some(e);
                }
                if retry.wait(self.backoff.next_delay()).await {
                    None
                } else {
                    Some(Outcome::Abandoned(
                        "the broker did not take the data before the grace period ended".into(),
                    ))
                }
            }
        }
    }
}
