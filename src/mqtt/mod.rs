//! What the MQTT source and the MQTT sink share: the connection settings and rumqttc options
//! (`connection.rs`), and Sparkplug B's payload and rules (`sparkplug.rs`).

pub mod client;
pub mod connection;
pub mod sparkplug;
