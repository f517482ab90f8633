//! A test MQTT publisher / subscriber (rumqttc on its own runtime), for the tests that play a
//! device, an edge node or a consumer against a real Mosquitto.

use super::wait_for;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::time::Duration;

/// Messages a test client received: (topic, payload, retain flag).
pub type Inbox = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>, bool)>>>;

/// A test publisher / subscriber on its own runtime.
pub struct Client {
    pub rt: tokio::runtime::Runtime,
    pub client: AsyncClient,
    received: Inbox,
    /// PUBACKs the broker sent for this client's publishes.
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    published: usize,
}

impl Client {
    pub fn connect(port: u16, id: &str, subscribe: &[&str]) -> Client {
        Self::connect_with(port, id, subscribe, true)
    }

    /// A persistent session: the broker keeps the subscriptions and queues QoS 1 messages for
    /// it across a broker restart.
    pub fn connect_persistent(port: u16, id: &str, subscribe: &[&str]) -> Client {
        Self::connect_with(port, id, subscribe, false)
    }

    pub fn connect_with(port: u16, id: &str, subscribe: &[&str], clean: bool) -> Client {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(clean);
        o.set_keep_alive(Duration::from_secs(30));
        // Large enough for the poison tests (a 2 MB message).
        o.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut events) = AsyncClient::new(o, 10_000);
        let received: Inbox = Default::default();
        let got = received.clone();
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let acks = acked.clone();
        let subs: Vec<String> = subscribe.iter().map(|s| s.to_string()).collect();
        let sub_client = client.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for s in &subs {
                            let _ = sub_client.subscribe(s.clone(), QoS::AtLeastOnce).await;
                        }
                        if subs.is_empty() {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        got.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec(), p.retain));
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("test client connected");
        Client {
            rt,
            client,
            received,
            acked,
            published: 0,
        }
    }

    /// Waits until the broker acknowledged everything this client published.
    pub fn wait_acked(&self) {
        let done = wait_for(Duration::from_secs(30), || {
            (self.acked.load(std::sync::atomic::Ordering::SeqCst) >= self.published).then_some(())
        });
        assert!(
            done.is_some(),
            "the broker did not acknowledge the test's publishes"
        );
    }

    pub fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.published += 1;
        let c = self.client.clone();
        let topic = topic.to_string();
        let payload = payload.into();
        self.rt
            .block_on(async move { c.publish(topic, QoS::AtLeastOnce, false, payload).await })
            .expect("publish");
    }

    /// Publishes a retained QoS 1 message (e.g. a Sparkplug host's STATE).
    pub fn publish_retained(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.published += 1;
        let c = self.client.clone();
        let topic = topic.to_string();
        let payload = payload.into();
        self.rt
            .block_on(async move { c.publish(topic, QoS::AtLeastOnce, true, payload).await })
            .expect("publish");
    }

    pub fn received(&self) -> Vec<(String, Vec<u8>)> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(t, p, _)| (t.clone(), p.clone()))
            .collect()
    }

    /// As `received`, with each message's retain flag.
    pub fn received_retained(&self) -> Vec<(String, Vec<u8>, bool)> {
        self.received.lock().unwrap().clone()
    }
}
