//! What the MQTT source and the MQTT sink share: a connection's settings and rumqttc options
//! (`settings.rs`), the client over rumqttc (`client.rs`), the sinks' live connection
//! (`connection.rs`), and Sparkplug B's payload and rules (`sparkplug.rs`).

pub mod client;
pub mod connection;
pub mod settings;
pub mod sparkplug;
