//! The live connection of the MQTT sinks (`sink/mqtt/`): a client opened with an optional will,
//! its event loop pumped in its own task, publishing a flush and accounting for its PUBACKs,
//! the commands that arrive meanwhile. Its settings (`[sinks.NAME]`'s broker keys) are
//! `settings.rs`; the MQTT source drives its own client in its broker task (`source/mqtt/`).

use super::client::{self, Client, Event, Publish};
use super::settings::BrokerConfig;
use std::collections::HashSet;
use std::time::Duration;

/// A sink's live connection: a client and the events of its loop (run in its own task).
pub(crate) struct Connection {
    pub(crate) client: Client,
    events: tokio::sync::mpsc::Receiver<Result<Event, String>>,
    pump: tokio::task::JoinHandle<()>,
    /// It has a will: dropped without a DISCONNECT, so the broker publishes it (a clean
    /// DISCONNECT discards the will; `publish_and_close` says goodbye itself).
    will: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if !self.will {
            let _ = self.client.try_disconnect();
        }
        self.pump.abort();
    }
}

impl Connection {
    /// Connects (options read on the blocking pool) and waits for the CONNACK; `will` is the
    /// last will for this connection (a Sparkplug NDEATH).
    pub(crate) async fn open(
        broker: &BrokerConfig,
        will: Option<(String, Vec<u8>, u8, bool)>,
    ) -> Result<Connection, String> {
        let cfg = broker.clone();
        let has_will = will.is_some();
        let open = client::Open {
            will,
            ..Default::default()
        };
        let (client, mut events) =
            tokio::task::spawn_blocking(move || client::new(&cfg, open, 1024))
                .await
                .map_err(|e| e.to_string())??;
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let pump = tokio::spawn(async move {
            loop {
                let e = events.poll().await;
                let failed = e.is_err();
                if tx.send(e).await.is_err() || failed {
                    return;
                }
            }
        });
        // Wait for the broker's CONNACK.
        let connected = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(e) = rx.recv().await {
                match e {
                    Ok(Event::ConnAck) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Err("the connection closed".to_string())
        })
        .await
        .map_err(|_| "no CONNACK within 10s".to_string());
        let conn = Connection {
            client,
            events: rx,
            pump,
            will: has_will,
        };
        connected??;
        Ok(conn)
    }

    /// Publishes every message (topic, payload, retain) at `qos`; returns once each was
    /// written (QoS 0) or acknowledged (QoS 1). Incoming messages seen meanwhile (commands)
    /// go to `incoming`.
    pub(crate) async fn publish_all(
        &mut self,
        messages: &[(String, Vec<u8>, bool)],
        qos: u8,
        incoming: &mut (dyn FnMut(Publish) + Send),
    ) -> Result<(), String> {
        let mut sent = 0usize;
        let mut waiting: HashSet<u16> = HashSet::new();
        let mut acked = 0usize;
        let mut next = 0usize;
        // Publish while draining events, so a full request channel never deadlocks.
        while acked < messages.len() {
            if next < messages.len() {
                let (topic, payload, retain) = &messages[next];
                tokio::select! {
                    r = self.client.publish(topic.clone(), qos, *retain, payload.clone()) => {
                        r?;
                        next += 1;
                        continue;
                    }
                    e = self.events.recv() => {
                        account(e, qos, &mut sent, &mut waiting, &mut acked, incoming)?;
                    }
                }
            } else {
                let e = tokio::time::timeout(Duration::from_secs(30), self.events.recv())
                    .await
                    .map_err(|_| "no PUBACK within 30s".to_string())?;
                account(e, qos, &mut sent, &mut waiting, &mut acked, incoming)?;
            }
        }
        Ok(())
    }

    /// Publishes one last message (e.g. a Sparkplug NDEATH), waits for it to be written (QoS 0)
    /// or acknowledged (QoS 1), then disconnects cleanly.
    pub(crate) async fn publish_and_close(
        mut self,
        message: (String, Vec<u8>),
        qos: u8,
    ) -> Result<(), String> {
        let (topic, payload) = message;
        let result = tokio::time::timeout(
            Duration::from_secs(2),
            self.publish_all(&[(topic, payload, false)], qos, &mut |_| {}),
        )
        .await
        .map_err(|_| "not acknowledged within 2 s".to_string())
        .and_then(|r| r);
        let _ = self.client.try_disconnect();
        // The disconnect goes out on the event loop: give it a moment before the pump ends.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(e) = self.events.recv().await {
                if matches!(e, Ok(Event::Disconnected) | Err(_)) {
                    break;
                }
            }
        })
        .await;
        self.will = false;
        result
    }

    /// The next event of the connection (`None` once its loop ended). Cancel safe.
    pub(crate) async fn recv(&mut self) -> Option<Result<Event, String>> {
        self.events.recv().await
    }

    /// Messages that arrived while no flush ran (commands), without waiting.
    pub(crate) fn drain(
        &mut self,
        incoming: &mut (dyn FnMut(Publish) + Send),
    ) -> Result<(), String> {
        loop {
            match self.events.try_recv() {
                Ok(Ok(Event::Publish(p))) => incoming(p),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return Ok(()),
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    return Err("the connection closed".into())
                }
            }
        }
    }
}

/// One event of the connection during a flush: counts publishes written and PUBACKs received.
fn account(
    e: Option<Result<Event, String>>,
    qos: u8,
    sent: &mut usize,
    waiting: &mut HashSet<u16>,
    acked: &mut usize,
    incoming: &mut (dyn FnMut(Publish) + Send),
) -> Result<(), String> {
    match e {
        None => Err("the connection closed".into()),
        Some(Err(e)) => Err(e),
        Some(Ok(Event::Sent(pkid))) => {
            *sent += 1;
            if qos == 0 {
                // QoS 0: delivered once written.
                *acked += 1;
            } else {
                waiting.insert(pkid);
            }
            Ok(())
        }
        Some(Ok(Event::PubAck(pkid))) => {
            if waiting.remove(&pkid) {
                *acked += 1;
            }
            Ok(())
        }
        Some(Ok(Event::BrokerDisconnected)) => Err("the broker disconnected".into()),
        Some(Ok(Event::Publish(p))) => {
            incoming(p);
            Ok(())
        }
        Some(Ok(_)) => Ok(()),
    }
}
