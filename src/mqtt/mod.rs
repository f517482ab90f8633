//! What the MQTT source and the MQTT sink share: the connection settings and rumqttc options
//! (`connection.rs`).

pub mod connection;
