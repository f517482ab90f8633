//! QoS 1 acknowledgements after durability: in arrival order, each once what it carried is
//! durable in the buffer. A message the buffer refused stays unacknowledged, and so does every
//! later one of the same connection (acknowledgements go in order); the connection is renewed
//! so the broker delivers them again. An acknowledgement that cannot be sent is left to the
//! broker's redelivery too.

use super::health::LOG_EVERY;
use crate::buffer::{BufferInput, Durability};
use crate::mqtt::client::{self, Client};
use crate::observe::metrics::BrokerMetrics;
use crate::transform::DeviceOutput;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// A QoS 1 message waiting for its acknowledgement: the buffer tickets of what it carried, and
/// the connection it came on.
pub(super) struct Ack {
    /// False when the buffer refused it at once (its queue was full).
    accepted: bool,
    from: u64,
    to: u64,
    generation: u64,
    publish: client::Publish,
}

impl Ack {
    pub(super) fn new(
        from: u64,
        accepted: bool,
        outputs: &[DeviceOutput],
        generation: &AtomicU64,
        publish: client::Publish,
    ) -> Ack {
        Ack {
            accepted,
            from,
            to: input_ticket(outputs),
            generation: generation.load(Relaxed),
            publish,
        }
    }
}

/// The buffer's ticket now (every output shares one buffer input).
pub(super) fn input_ticket(outputs: &[DeviceOutput]) -> u64 {
    outputs.first().map(|o| o.ticket()).unwrap_or(0)
}

/// The task that acknowledges the messages sent to the returned channel, in order, once
/// `input` says they are durable; `generation` is the connection's (see `pump.rs`), `renew`
/// asks the pump for a new connection, `acked` tells it an acknowledgement went out.
pub(super) fn spawn(
    input: BufferInput,
    client: Client,
    generation: Arc<AtomicU64>,
    broker: Arc<BrokerMetrics>,
    renew: Arc<Notify>,
    acked: Arc<AtomicBool>,
    name: String,
) -> (mpsc::UnboundedSender<Ack>, JoinHandle<()>) {
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Ack>();
    let task = tokio::spawn(async move {
        let mut refused_in: Option<u64> = None;
        let mut logged: Option<Instant> = None;
        while let Some(a) = ack_rx.recv().await {
            let durability = match a.accepted {
                true => input.durability(a.from, a.to).await,
                false => Durability::Refused,
            };
            if durability == Durability::Stopped {
                return;
            }
            if refused_in == Some(a.generation) {
                broker.unacked_refused.fetch_add(1, Relaxed);
                continue;
            }
            if generation.load(Relaxed) != a.generation {
                continue;
            }
            if durability == Durability::Refused {
                broker.unacked_refused.fetch_add(1, Relaxed);
                if logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    tracing::warn!(broker = %name, "the buffer refused a QoS 1 message: left unacknowledged, and the connection renewed so the broker delivers it again (logged at most once a minute; counted in linetap_mqtt_unacked_refused_total)");
                    logged = Some(Instant::now());
                }
                refused_in = Some(a.generation);
                renew.notify_one();
                continue;
            }
            match client.ack(&a.publish).await {
                Ok(()) => acked.store(true, Relaxed),
                Err(e) => {
                    tracing::debug!(broker = %name, error = %e, "cannot acknowledge; the broker delivers the message again")
                }
            }
        }
    });
    (ack_tx, task)
}
