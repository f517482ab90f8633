//! Sample times from the controller's clock: RTDE's `timestamp` counts seconds since the
//! controller started, exactly one period apart; the wall clock at arrival jitters with the
//! network and the gateway's load. A package's time is the controller's timestamp plus an
//! anchor set at the first package, so 500 Hz data keeps the robot's 2 ms spacing. The
//! anchor moves only when the two clocks drift apart by more than `MAX_DRIFT`: at once when
//! the controller's time runs ahead of the wall clock or goes backwards (a restart), and when
//! it lags behind for `LAG_PATIENCE` without a break (a backlog of packages read late drains
//! long before that; a clock that really drifted does not).

/// How far the controller's time may drift from the wall clock before the anchor moves.
pub const MAX_DRIFT_NS: i64 = 50_000_000;
/// How long the controller's time must lag by more than `MAX_DRIFT_NS` before re-anchoring.
pub const LAG_PATIENCE_NS: i64 = 1_000_000_000;

#[derive(Debug, Default, Clone)]
pub struct Clock {
    /// Wall-clock ns at controller time 0.
    anchor: Option<i64>,
    last_controller_ns: i64,
    /// Since when (wall ns) every package lagged by more than `MAX_DRIFT_NS`.
    lagging_since: Option<i64>,
    /// Times the anchor moved after the first.
    pub reanchors: u64,
}

impl Clock {
    /// Forgets the anchor (a new connection: the controller may have restarted).
    pub fn reset(&mut self) {
        self.anchor = None;
        self.lagging_since = None;
    }

    /// The wall-clock time (Unix ns) of a package stamped `controller_s` by the controller,
    /// received at `now_ns`; and how late it arrived (ns, negative when early).
    pub fn stamp(&mut self, controller_s: f64, now_ns: i64) -> (i64, i64) {
        // Seconds since the controller started: a value past ~30 years is not a clock.
        let c = if controller_s.is_finite() && (0.0..1e9).contains(&controller_s) {
            (controller_s * 1e9).round() as i64
        } else {
            self.last_controller_ns
        };
        let anchor = match self.anchor {
            Some(a) if c >= self.last_controller_ns => a,
            Some(_) => self.move_to(now_ns - c),
            None => {
                self.anchor = Some(now_ns - c);
                now_ns - c
            }
        };
        self.last_controller_ns = c;
        let t = anchor + c;
        let late = now_ns - t;
        if late < -MAX_DRIFT_NS {
            let a = self.move_to(now_ns - c);
            return (a + c, 0);
        }
        if late > MAX_DRIFT_NS {
            let since = *self.lagging_since.get_or_insert(now_ns);
            if now_ns - since >= LAG_PATIENCE_NS {
                let a = self.move_to(now_ns - c);
                return (a + c, 0);
            }
        } else {
            self.lagging_since = None;
        }
        (t, late)
    }

    fn move_to(&mut self, anchor: i64) -> i64 {
        self.anchor = Some(anchor);
        self.lagging_since = None;
        self.reanchors += 1;
        anchor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    #[test]
    fn keeps_the_controllers_spacing_through_jitter() {
        let mut c = Clock::default();
        let wall0 = 1_700_000_000_000 * MS;
        let mut times = Vec::new();
        for n in 0..1000i64 {
            // Arrival jitters by up to 30 ms (a burst after a stall), never past 50.
            let jitter = (n * 7919 % 31) * MS;
            let (t, _) = c.stamp(100.0 + n as f64 * 0.002, wall0 + n * 2 * MS + jitter);
            times.push(t);
        }
        assert!(times.windows(2).all(|w| w[1] - w[0] == 2 * MS));
        assert_eq!(c.reanchors, 0);
    }

    #[test]
    fn moves_when_ahead_at_once_and_when_lagging_for_a_second() {
        let mut c = Clock::default();
        let wall0 = 1_700_000_000_000 * MS;
        c.stamp(10.0, wall0);
        // The controller's clock runs 60 ms ahead: moved at once.
        let (t, _) = c.stamp(11.06, wall0 + 1000 * MS);
        assert_eq!(t, wall0 + 1000 * MS);
        assert_eq!(c.reanchors, 1);
        // 80 ms late: kept for a second, then moved.
        let base = wall0 + 1000 * MS;
        let (t, late) = c.stamp(12.06, base + 1080 * MS);
        assert_eq!((t, late), (base + 1000 * MS, 80 * MS));
        let (t, _) = c.stamp(12.56, base + 1580 * MS);
        assert_eq!(t, base + 1500 * MS);
        let (t, _) = c.stamp(13.06, base + 2080 * MS);
        assert_eq!(t, base + 2080 * MS);
        assert_eq!(c.reanchors, 2);
        // A restart: the controller's time goes back.
        let (t, _) = c.stamp(0.5, base + 3000 * MS);
        assert_eq!(t, base + 3000 * MS);
        assert_eq!(c.reanchors, 3);
    }
}
