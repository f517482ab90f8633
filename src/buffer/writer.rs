//! The writer thread: appends queued batches to the log with group commit, starts a segment for
//! each new catalog version, enforces the disk budget, deletes delivered segments, and keeps
//! the buffer gauges current.

use super::input::Entry;
use super::log::{self, LogWriter};
use super::record;
use super::{cursors, now_ms, Shared, TailItem, NOTIFY_BYTES, NOTIFY_EVERY, TICK, WAKE_AT};
use crate::config::{BufferConfig, WhenFull};
use prost::Message;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The writer thread. It wakes every `TICK`, or early when `WAKE_AT` entries wait (never once
/// per batch: a source's `publish` costs no wake-up), appends everything queued as one write,
/// hands the batches to the sinks' in-memory tails, and syncs every `sync_interval`.
pub(super) fn write_loop(
    shared: Arc<Shared>,
    mut writer: LogWriter,
    rx: Receiver<Entry>,
    head_tx: watch::Sender<u64>,
    cfg: BufferConfig,
    mut cat_id: u64,
    ctl: Control,
) {
    let Control { stopping, beat } = ctl;
    let segment_bytes = (cfg.max_bytes / 8).clamp(64 << 10, 64 << 20);
    let seg_dir = shared.segments_dir();
    let mut head = Head {
        tx: head_tx,
        notified: writer.segment.end(),
        at: Instant::now(),
    };
    let mut pending: Vec<u8> = Vec::with_capacity(256 << 10);
    let mut scratch: Vec<u8> = Vec::with_capacity(8 << 10);
    let mut fresh: Vec<TailItem> = Vec::new();
    let mut last_sync = Instant::now();
    let mut last_persist = Instant::now();
    let mut unsynced = false;
    // Batches taken from the queue so far (what `durable` reports once synced).
    let mut taken = 0u64;
    let mut refused_logged = false;
    let mut disconnected = false;
    while !disconnected {
        beat.idle();
        if shared.queued.load(Relaxed) < WAKE_AT {
            std::thread::park_timeout(TICK);
        }
        beat.busy();
        let mut pending_samples = 0u64;
        let mut base = writer.segment.end();
        loop {
            let received = rx.try_recv();
            if received.is_ok() {
                shared.queued.fetch_sub(1, Relaxed);
            }
            let batch = match received {
                Ok(Entry::Batch(b)) => {
                    taken += 1;
                    b
                }
                Ok(Entry::Catalog(v)) => {
                    // What is pending was read under the previous version: write it, then
                    // store the new version and start its segment, before any batch uses it.
                    unsynced |= append(
                        &shared,
                        &mut writer,
                        &mut pending,
                        &mut fresh,
                        pending_samples,
                        &mut head,
                    );
                    pending_samples = 0;
                    if v.id != cat_id {
                        if let Err(e) = shared.catalogs.store(&v) {
                            tracing::error!(error = %e, "buffer: cannot store a new catalog version");
                        }
                        roll(&shared, &mut writer, v.id);
                        cat_id = v.id;
                        tracing::debug!(
                            catalog = format_args!("{:016x}", v.id),
                            points = v.catalog.points.len(),
                            "buffer: catalog version stored"
                        );
                    }
                    base = writer.segment.end();
                    continue;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            };
            // The disk budget, before accepting more.
            let mut over = shared.lock().bytes_on_disk() + pending.len() as u64 >= cfg.max_bytes;
            if over && cfg.when_full == WhenFull::Block && !stopping.load(Relaxed) {
                // Hold the sources back (the queue fills, `publish` waits) until sinks deliver.
                // First make what was accepted so far durable: it must not wait in memory.
                unsynced |= append(
                    &shared,
                    &mut writer,
                    &mut pending,
                    &mut fresh,
                    pending_samples,
                    &mut head,
                );
                pending_samples = 0;
                base = writer.segment.end();
                if unsynced {
                    if let Err(e) = writer.sync() {
                        tracing::error!(error = %e, "buffer: sync failed");
                    }
                    unsynced = false;
                    last_sync = Instant::now();
                    cursors::persist(&shared);
                }
                shared.durable.send_replace(taken - 1);
                // Seal the current segment, so the sinks' deliveries can free all of it: the last
                // segment is never deleted, and a full one would keep the log over budget
                // for good.
                if writer.segment.len > record::SEGMENT_HEADER_LEN {
                    roll(&shared, &mut writer, cat_id);
                    base = writer.segment.end();
                }
                if !refused_logged {
                    tracing::warn!(
                        "buffer full (max_bytes): holding the sources back (when_full = block)"
                    );
                    refused_logged = true;
                }
                // Until the sinks make room, or the agent stops: what is queued then was
                // accepted, and is written even over the budget (at most the queue).
                beat.idle();
                while over && !stopping.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    enforce_budget(&shared, &seg_dir, &cfg);
                    update_gauges(&shared);
                    over = shared.lock().bytes_on_disk() >= cfg.max_bytes;
                }
                beat.busy();
                over = false;
            }
            if over && cfg.when_full == WhenFull::DropNewest {
                shared.drop_for_all(batch.samples.len() as u64, |m| &m.dropped_buffer_full);
                if !refused_logged {
                    tracing::warn!(
                        "buffer full (max_bytes): refusing new data (when_full = drop_newest)"
                    );
                    refused_logged = true;
                }
                continue;
            }
            refused_logged = false;
            scratch.clear();
            if batch.encode(&mut scratch).is_err() {
                continue;
            }
            let start = base + pending.len() as u64;
            let written_ms = now_ms();
            pending_samples += batch.samples.len() as u64;
            record::append_record(
                &mut pending,
                &scratch,
                batch.samples.len() as u32,
                written_ms,
            );
            let end = base + pending.len() as u64;
            fresh.push(TailItem {
                start,
                end,
                catalog: cat_id,
                written_ms,
                batch,
            });
            if pending.len() >= 1 << 20 {
                break;
            }
        }
        unsynced |= append(
            &shared,
            &mut writer,
            &mut pending,
            &mut fresh,
            pending_samples,
            &mut head,
        );
        let now = Instant::now();
        // Someone waits for durability (MQTT QoS 1 acknowledgements): sync now.
        let waited = shared.waiting.load(Relaxed) > 0;
        if unsynced && (waited || now.duration_since(last_sync) >= cfg.sync_interval) {
            if let Err(e) = writer.sync() {
                tracing::error!(error = %e, "buffer: sync failed");
            }
            unsynced = false;
            last_sync = now;
        }
        if !unsynced && *shared.durable.borrow() != taken {
            shared.durable.send_replace(taken);
        }
        // The sinks' positions: less often than the log (each save is an fsync per sink, and a
        // position saved late only means a crash re-delivers a few seconds, idempotently).
        // Deleting a segment saves them first, whatever the time.
        if now.duration_since(last_persist) >= CURSOR_EVERY {
            cursors::persist(&shared);
            last_persist = now;
        }
        if writer.segment.len >= segment_bytes {
            roll(&shared, &mut writer, cat_id);
        }
        enforce_budget(&shared, &seg_dir, &cfg);
        update_gauges(&shared);
    }
    if writer.sync().is_ok() {
        shared.durable.send_replace(taken);
    }
    cursors::persist(&shared);
    beat.idle();
}

/// How often the sinks' read positions are saved (besides before a segment is deleted and at
/// shutdown).
const CURSOR_EVERY: Duration = Duration::from_secs(5);

/// What the writer is told from outside: shutdown has begun (stop holding the sources back),
/// and its beat for the watchdog.
pub(super) struct Control {
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    pub beat: crate::observe::liveness::Beat,
}

/// Seals the current segment and starts the next one, for catalog version `catalog`.
fn roll(shared: &Shared, writer: &mut LogWriter, catalog: u64) {
    match writer.roll(catalog) {
        Ok(_) => shared.lock().segments.push(writer.segment),
        Err(e) => tracing::error!(error = %e, "buffer: cannot start a new segment"),
    }
}

/// Where the sinks were last woken.
struct Head {
    tx: watch::Sender<u64>,
    notified: u64,
    at: Instant,
}

/// Appends what is pending as one write and hands the batches to the sinks' memory tails.
fn append(
    shared: &Shared,
    writer: &mut LogWriter,
    pending: &mut Vec<u8>,
    fresh: &mut Vec<TailItem>,
    pending_samples: u64,
    notify: &mut Head,
) -> bool {
    if pending.is_empty() {
        return false;
    }
    let written = match writer.append(pending) {
        Ok(()) => {
            shared
                .metrics
                .buffer_bytes_written
                .fetch_add(pending.len() as u64, Relaxed);
            let head = writer.segment.end();
            let mut st = shared.lock();
            if let Some(last) = st.segments.last_mut() {
                *last = writer.segment;
            }
            st.head = head;
            // Sinks that are caught up take these from memory instead of the disk.
            let state = &mut *st;
            let active = state.cursors.iter().map(|c| c.active);
            for (tail, _) in state.tails.iter_mut().zip(active).filter(|(_, a)| *a) {
                for item in fresh.iter() {
                    tail.push(item.clone());
                }
            }
            drop(st);
            // Wake waiting sinks when enough has accumulated for a batch, or every quarter
            // second; not at every tick (each wake-up costs CPU).
            if head - notify.notified >= NOTIFY_BYTES || notify.at.elapsed() >= NOTIFY_EVERY {
                let _ = notify.tx.send(head);
                notify.notified = head;
                notify.at = Instant::now();
            }
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "buffer: write failed; these samples are lost");
            shared.drop_for_all(pending_samples, |m| &m.dropped_disk_error);
            false
        }
    };
    pending.clear();
    fresh.clear();
    written
}

/// `linetap_buffer_bytes` and `linetap_buffer_oldest_age_seconds` for every sink, kept current
/// by the writer thread (a sink stuck retrying cannot update its own).
pub(super) fn update_gauges(shared: &Shared) {
    let st = shared.lock();
    let now = now_ms();
    for c in st.cursors.iter().filter(|c| c.active) {
        let m = &c.metrics;
        m.buffer_bytes
            .store(st.head.saturating_sub(c.acked), Relaxed);
        let age = if c.oldest_ms == 0 || c.acked >= st.head {
            0
        } else {
            now.saturating_sub(c.oldest_ms)
        };
        m.buffer_oldest_ms.store(age, Relaxed);
    }
}

/// Deletes sealed segments every sink has delivered; with `drop_oldest`, also the oldest
/// segment while the log is over budget, counting what each sink loses.
fn enforce_budget(shared: &Shared, seg_dir: &Path, cfg: &BufferConfig) {
    loop {
        let (oldest, moved) = {
            let mut st = shared.lock();
            if st.segments.len() < 2 {
                return;
            }
            let oldest = st.segments[0];
            let min_acked = st
                .cursors
                .iter()
                .filter(|c| c.active)
                .map(|c| c.acked)
                .min()
                .unwrap_or(st.head);
            let fully_acked = min_acked >= oldest.end();
            let may_drop =
                st.bytes_on_disk() > cfg.max_bytes && cfg.when_full == WhenFull::DropOldest;
            if !fully_acked && !may_drop {
                return;
            }
            // Sinks that had not delivered this segment lose the rest of it.
            let mut moved = Vec::new();
            for (i, c) in st.cursors.iter_mut().enumerate() {
                if !c.active {
                    // Nothing is kept for a removed sink; it resumes at what is left.
                    c.acked = c.acked.max(oldest.end());
                } else if c.acked < oldest.end() {
                    moved.push((i, c.name.clone(), c.acked));
                    c.acked = oldest.end();
                    c.oldest_ms = 0;
                }
            }
            (oldest, moved)
        };
        for (i, name, from) in moved {
            let lost = log::count_samples(seg_dir, oldest, from, oldest.end());
            if let Some(c) = shared.lock().cursors.get(i) {
                c.metrics.dropped_buffer_full.fetch_add(lost, Relaxed);
            }
            tracing::warn!(sink = %name, samples = lost, "buffer full (max_bytes): dropped the oldest undelivered data");
        }
        // Cursors first, then the data: a crash in between re-reads nothing that is gone.
        cursors::persist(shared);
        let referenced: Vec<u64> = {
            let mut st = shared.lock();
            st.segments.retain(|s| s.base != oldest.base);
            st.segments.iter().map(|s| s.catalog).collect()
        };
        if let Err(e) = std::fs::remove_file(log::segment_path(seg_dir, oldest.base)) {
            tracing::warn!(error = %e, "buffer: cannot remove a delivered segment");
        }
        // A catalog version no segment refers to any more is of no use.
        if !referenced.contains(&oldest.catalog) {
            shared.catalogs.prune(&referenced);
        }
    }
}
