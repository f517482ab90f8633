//! Messages an MQTT device sent that could not be used (malformed, larger than
//! `max_packet_size`, without a usable value) are kept for a person to look at: the first 4 KiB
//! of each, after a line with the time, the topic, the size and the reason, in
//! `data_dir/dead-letter/mqtt-DEVICE.log` (rotated at 16 MiB). One writer task per broker
//! takes them through a bounded queue and writes each burst with one sync, so a flood of bad
//! messages costs the broker task nothing; beyond the queue, the copies (not the counts) are
//! dropped.

use crate::sink::deadletter::DeadLetter;
use std::path::PathBuf;

/// How much of a message is kept.
pub const KEPT: usize = 4096;

/// Copies waiting for the writer.
const QUEUE: usize = 1024;

struct Entry {
    device: usize,
    reason: String,
    text: Vec<u8>,
}

/// The broker task's handle: `keep` never waits.
#[derive(Clone)]
pub struct DeadLetters {
    tx: tokio::sync::mpsc::Sender<Entry>,
}

impl DeadLetters {
    /// Starts the writer for the devices `names` (by index) under `data_dir`.
    pub fn start(data_dir: PathBuf, names: Vec<String>) -> DeadLetters {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Entry>(QUEUE);
        let files: Vec<DeadLetter> = names
            .iter()
            .map(|n| DeadLetter::for_mqtt_device(&data_dir, n))
            .collect();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut burst = vec![first];
                while let Ok(more) = rx.try_recv() {
                    burst.push(more);
                }
                // One write per device file for the burst.
                let mut by_device: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); files.len()];
                for e in burst {
                    if let Some(v) = by_device.get_mut(e.device) {
                        v.push((e.reason, e.text));
                    }
                }
                for (d, entries) in by_device.into_iter().enumerate() {
                    if entries.is_empty() {
                        continue;
                    }
                    if let Err(e) = files[d].write_all(entries).await {
                        tracing::error!(file = %files[d].path().display(), error = %e, "cannot write the MQTT dead-letter file");
                    }
                }
            }
        });
        DeadLetters { tx }
    }

    /// Keeps the first `KEPT` bytes of a message of device `device`, with the reason.
    pub fn keep(&self, device: usize, topic: &str, payload: &[u8], reason: &str) {
        let mut text = payload[..payload.len().min(KEPT)].to_vec();
        if text.last() != Some(&b'\n') {
            text.push(b'\n');
        }
        let reason = format!(
            "{topic} ({} bytes{}): {reason}",
            payload.len(),
            if payload.len() > KEPT {
                ", the first 4 KiB kept"
            } else {
                ""
            }
        );
        let _ = self.tx.try_send(Entry {
            device,
            reason,
            text,
        });
    }
}
