//! The bus scheduler's timer, armed one deadline ahead.
//!
//! tokio wakes its I/O driver (an `eventfd` write, and one more turn of `epoll_wait`) whenever
//! a timer is registered for earlier than the earliest one the driver last saw, even when the
//! driver is not asleep but running the very task that registers it (tokio#5207). Pollers
//! started together share their deadlines: when a deadline passes, every poller's timer fires
//! in one turn, none is left in the timer wheel, and each poller registering its next deadline
//! wrote to the `eventfd` — 200 system calls a second for 20 devices at 10 Hz. A `PollTimer`
//! keeps the deadline expected after the current one registered already: when the current one
//! fires, the wheel still holds the next ones, and a poller registering the one after is later
//! than those, so nobody wakes the driver (decision 0025).

use std::future::poll_fn;
use std::future::Future;
use std::pin::Pin;
use tokio::time::{sleep_until, Instant, Sleep};

pub struct PollTimer {
    /// The deadline being waited for.
    current: Pin<Box<Sleep>>,
    /// The one expected to follow it, registered already.
    ahead: Pin<Box<Sleep>>,
}

impl PollTimer {
    /// Needs a tokio runtime with its time driver.
    pub fn new() -> PollTimer {
        let now = Instant::now();
        PollTimer {
            current: Box::pin(sleep_until(now)),
            ahead: Box::pin(sleep_until(now)),
        }
    }

    /// Waits until `at`, with the timer for `then` (the deadline expected after `at`)
    /// registered meanwhile. A wrong guess costs nothing but that early registration.
    pub async fn until(&mut self, at: Instant, then: Instant) {
        if self.ahead.deadline() == at {
            std::mem::swap(&mut self.current, &mut self.ahead);
        } else if self.current.deadline() != at || self.current.is_elapsed() {
            self.current.as_mut().reset(at);
        }
        if then > at && (self.ahead.deadline() != then || self.ahead.is_elapsed()) {
            self.ahead.as_mut().reset(then);
        }
        let ahead = then > at;
        poll_fn(|cx| {
            if ahead {
                // Polled only to be registered; when it fires the task waits for it as
                // `current` already (or, guessed wrong, is reset before then).
                let _ = self.ahead.as_mut().poll(cx);
            }
            self.current.as_mut().poll(cx)
        })
        .await
    }
}

impl Default for PollTimer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_for_each_deadline_whether_guessed_or_not() {
        let mut timer = PollTimer::new();
        let step = Duration::from_millis(15);
        let start = Instant::now();
        // Guessed right: each deadline was armed as the one ahead.
        for k in 1..=4u32 {
            let at = start + step * k;
            timer.until(at, at + step).await;
            assert!(Instant::now() >= at, "deadline {k} came early");
        }
        // Guessed wrong: the next deadline is not the one armed ahead (earlier, then later).
        let at = Instant::now() + Duration::from_millis(5);
        timer.until(at, at + Duration::from_secs(60)).await;
        assert!(Instant::now() >= at);
        let later = Instant::now() + Duration::from_millis(30);
        timer.until(later, later).await;
        assert!(Instant::now() >= later);
        // A deadline already past returns at once, and one armed ahead that passed unwatched is
        // still waited for correctly.
        let past = Instant::now() - Duration::from_millis(1);
        timer.until(past, past + step).await;
        tokio::time::sleep(step * 2).await;
        let at = Instant::now() + step;
        timer.until(at, at + step).await;
        assert!(Instant::now() >= at);
    }

    /// `write` system calls made by this thread so far (an `eventfd` wake-up is one).
    fn writes_by_this_thread() -> Option<u64> {
        let io = std::fs::read_to_string("/proc/thread-self/io").ok()?;
        io.lines()
            .find_map(|l| l.strip_prefix("syscw:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Ten pollers sharing their deadlines, as on a line of devices started together: the
    /// runtime thread's `write`s over 15 cycles, with `PollTimer` or with a plain `sleep_until`.
    fn writes_over_cycles(armed_ahead: bool) -> Option<u64> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let before = writes_by_this_thread()?;
        rt.block_on(async {
            let step = Duration::from_millis(10);
            let start = Instant::now();
            let tasks: Vec<_> = (0..10)
                .map(|_| {
                    tokio::spawn(async move {
                        let mut timer = PollTimer::new();
                        for k in 1..=15u32 {
                            let at = start + step * k;
                            if armed_ahead {
                                timer.until(at, at + step).await;
                            } else {
                                sleep_until(at).await;
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        });
        Some(writes_by_this_thread()? - before)
    }

    #[test]
    fn pollers_sharing_deadlines_do_not_wake_the_driver_each_cycle() {
        let (Some(plain), Some(armed)) = (writes_over_cycles(false), writes_over_cycles(true))
        else {
            eprintln!("no /proc/thread-self/io here: not measured");
            return;
        };
        // Only the first registrations (before the driver has slept once) may wake it: at most
        // two timers per poller, never one per poller per cycle (150).
        assert!(
            armed <= 24,
            "{armed} driver wake-ups with the timer armed ahead ({plain} with plain sleeps)"
        );
    }

    #[tokio::test]
    async fn a_wait_given_up_leaves_the_timer_usable() {
        let mut timer = PollTimer::new();
        let far = Instant::now() + Duration::from_secs(3600);
        let gave_up = tokio::time::timeout(
            Duration::from_millis(10),
            timer.until(far, far + Duration::from_secs(1)),
        )
        .await;
        assert!(gave_up.is_err(), "an hour's deadline passed in 10 ms");
        let at = Instant::now() + Duration::from_millis(10);
        timer.until(at, at + Duration::from_millis(10)).await;
        assert!(Instant::now() >= at);
    }
}
