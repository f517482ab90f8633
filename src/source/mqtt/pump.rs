//! The broker's connection: its client set up (retried while a file it reads is missing) and
//! its event loop pumped in a task of its own: reconnects with backoff, the connection's
//! generation, renewal when the buffer refused a QoS 1 message, the Sparkplug STATE will
//! renewed before every CONNECT.

use super::sparkplug_host::HostState;
use crate::backoff::Backoff;
use crate::mqtt::client::{self, Client, Event, EventLoop};
use crate::mqtt::settings::BrokerConfig;
use crate::shutdown::Shutdown;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// The will of a connection of a Sparkplug host: its STATE death, with the timestamp of the
/// CONNECT it goes with.
fn will(w: &HostState) -> (String, Vec<u8>, u8, bool) {
    (w.topic.clone(), w.will(), 1u8, true)
}

/// The client and its event loop. The client reads files (password, certificates): on the
/// blocking pool, retried while a person fixes them; `None` when shutdown came first.
pub(super) async fn open(
    config: &BrokerConfig,
    state_will: Option<&HostState>,
    sparkplug: bool,
    shutdown: &mut Shutdown,
) -> Option<(Client, EventLoop)> {
    loop {
        let cfg = config.clone();
        let open = client::Open {
            will: state_will.map(will),
            manual_acks: true,
            // A Sparkplug host connects with a clean session (Sparkplug 3.0): rebirths, not
            // the session, recover what it missed.
            clean_session: sparkplug.then_some(true),
        };
        match tokio::task::spawn_blocking(move || client::new(&cfg, open, 1024)).await {
            Ok(Ok(c)) => return Some(c),
            Ok(Err(e)) => {
                tracing::error!(broker = %config.name, error = %e, "cannot set up the MQTT connection; retrying");
            }
            Err(e) => tracing::error!(broker = %config.name, error = %e, "MQTT setup failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown.recv() => return None,
        }
    }
}

/// Runs the event loop in its own task, never cancelled mid-packet; its events go to
/// `ev_tx`, a bounded channel (back-pressure: while the handler is busy, nothing more is read
/// from the socket). `generation` counts CONNACKs; `renew` asks for a new connection (a QoS 1
/// message the buffer refused is delivered again by the broker only on a new connection,
/// persistent session); `acked` is set by the acknowledgements, so renewals back off while
/// the buffer keeps refusing.
pub(super) fn spawn(
    mut events: EventLoop,
    state_will: Option<HostState>,
    ev_tx: mpsc::Sender<Result<Event, String>>,
    generation: Arc<AtomicU64>,
    renew: Arc<Notify>,
    acked: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut renew_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            // Cancelling a poll is safe here: the connection it was reading is dropped.
            let polled = tokio::select! {
                p = events.poll() => p,
                _ = renew.notified() => {
                    events.clean();
                    if let Some(w) = &state_will {
                        let (t, p, q, r) = will(w);
                        events.set_will(t, p, q, r);
                    }
                    let e = "renewing the connection: the buffer refused a QoS 1 message".to_string();
                    if ev_tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    if acked.swap(false, Relaxed) {
                        renew_backoff.reset();
                    }
                    tokio::time::sleep(renew_backoff.next_delay()).await;
                    continue;
                }
            };
            match polled {
                Ok(e) => {
                    if matches!(e, Event::ConnAck) {
                        backoff.reset();
                        generation.fetch_add(1, Relaxed);
                    }
                    let done = matches!(e, Event::Disconnected);
                    if ev_tx.send(Ok(e)).await.is_err() || done {
                        return;
                    }
                }
                Err(e) => {
                    if ev_tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    if let Some(w) = &state_will {
                        let (t, p, q, r) = will(w);
                        events.set_will(t, p, q, r);
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    })
}
