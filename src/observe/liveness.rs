//! Whether the pipeline makes progress, for the systemd watchdog. Every long-lived task (a
//! bus scheduler, a sink, the buffer writer) has a `Beat`: it marks itself busy when it starts
//! a piece of work and idle when it waits for time, data, a retry or a held-back buffer. A
//! task busy for longer than any piece of its work can take is stuck (a hung write to a file
//! system, a deadlock): then the watchdog stops being fed and systemd restarts the agent. A
//! device that is merely down is not stuck: its poller keeps timing out and going idle.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One task's state: 0 while idle, else when it became busy (ms since the registry's start, + 1).
#[derive(Clone)]
pub struct Beat(Arc<AtomicU64>, Instant);

impl Beat {
    /// A beat that nobody watches (for components built outside an agent, e.g. tests).
    pub fn unwatched() -> Beat {
        Beat(Arc::new(AtomicU64::new(0)), Instant::now())
    }

    pub fn busy(&self) {
        if self.0.load(Relaxed) == 0 {
            self.0
                .store(self.1.elapsed().as_millis() as u64 + 1, Relaxed);
        }
    }

    pub fn idle(&self) {
        self.0.store(0, Relaxed);
    }

    pub fn is_busy(&self) -> bool {
        self.0.load(Relaxed) != 0
    }
}

#[derive(Debug)]
pub struct Liveness {
    start: Instant,
    beats: Mutex<Vec<(String, Arc<AtomicU64>)>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            start: Instant::now(),
            beats: Mutex::new(Vec::new()),
        }
    }
}

impl Liveness {
    /// A beat for the task `name` (e.g. "bus tcp 10.0.3.11:502", "sink central").
    pub fn register(&self, name: &str) -> Beat {
        let b = Arc::new(AtomicU64::new(0));
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), b.clone()));
        Beat(b, self.start)
    }

    /// The tasks busy for longer than `limit`, with how long.
    pub fn stuck(&self, limit: Duration) -> Vec<(String, Duration)> {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        // A task that ended (stopped by a reload) holds its beat no more.
        beats.retain(|(_, b)| Arc::strong_count(b) > 1);
        beats
            .iter()
            .filter_map(|(name, b)| {
                let since = b.load(Relaxed);
                let busy = Duration::from_millis(now.saturating_sub(since));
                (since != 0 && busy > limit).then(|| (name.clone(), busy))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_task_busy_for_too_long_is_stuck() {
        let l = Liveness::default();
        let a = l.register("a");
        let b = l.register("b");
        a.busy();
        b.busy();
        b.idle();
        std::thread::sleep(Duration::from_millis(30));
        let stuck = l.stuck(Duration::from_millis(10));
        assert_eq!(stuck.len(), 1);
        assert_eq!(stuck[0].0, "a");
        assert!(l.stuck(Duration::from_secs(10)).is_empty());
        a.idle();
        assert!(l.stuck(Duration::from_millis(10)).is_empty());
    }
}
