//! The consumer's watchdog: notices a member that has stopped working and heals it, or says
//! so where a supervisor listens.
//!
//! A Kafka client can end up in a state it never leaves by itself: a group coordinator that
//! evicted it and never reassigned its partitions (tansu does this after a storage stall,
//! `docs/notes/broker.md`), a fetch that never returns, a handler that hangs. From the
//! inside each looks the same: there is work, and nothing happens. So the watchdog looks at
//! two things every few seconds:
//!
//! - **its own work**: records dispatched to its lanes but not finished, or lag on the
//!   partitions it owns. If there is some and no record was finished and no attempt was even
//!   retried for [`StallPolicy::bound`], the member is stalled.
//! - **work nobody does**: partitions of its topics it does *not* own whose group offset is
//!   behind the end of the partition and has not moved for the bound. Another member may
//!   own them and be stuck, or nobody may own them at all; either way a new member forces a
//!   rebalance, which is how the group gets them back.
//!
//! A stall is answered first by replacing the Kafka consumer with a new group member
//! ([`StallPolicy::recreations`] times), then by failing readiness, and one bound later
//! liveness, so that the orchestrator restarts the process. Only a member that itself made
//! no progress escalates past recreating: a replica busy with its own partitions that sees
//! another member's partition stall recreates itself (once per bound) but stays ready,
//! because restarting it would not help. With several replicas a member may own nothing;
//! that is no stall as long as every partition's offset moves or has nothing to read.
//! While the database is unreachable nothing counts as a stall: the lanes are waiting for
//! it on purpose, and readiness already reports it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a consumer may sit on work without making progress, and what follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallPolicy {
    /// Work waiting and nothing happening for this long is a stall. Longer than the
    /// session timeout, so that an ordinary rebalance after a crashed peer is not one.
    pub bound: Duration,
    /// New group members tried, one per bound, before readiness fails.
    pub recreations: u32,
}

impl Default for StallPolicy {
    fn default() -> Self {
        Self {
            bound: Duration::from_secs(45),
            recreations: 1,
        }
    }
}

impl StallPolicy {
    /// How often the watchdog looks: often enough to act within a fifth of the bound.
    pub fn check_every(&self) -> Duration {
        (self.bound / 5).max(Duration::from_millis(100))
    }
}

/// A partition of a subscribed topic: topic and partition number.
pub type PartitionKey = (String, i32);

/// What the watchdog sees on one look.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// [`super::StatsSnapshot::activity`]: grows whenever a lane finished or retried a record.
    pub activity: u64,
    /// Records are waiting in this member's lanes, or its partitions have lag.
    pub own_work: bool,
    /// Partitions this member does not own whose group offset is behind their end, with
    /// that offset.
    pub behind_elsewhere: Vec<(PartitionKey, i64)>,
    /// The database answered; when it does not, waiting is the right thing to do.
    pub database_reachable: bool,
}

/// What the watchdog decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Working, or nothing to do.
    Healthy,
    /// Replace the Kafka consumer with a new group member.
    Recreate(String),
    /// Recreating did not help: fail readiness.
    Unready(String),
    /// Unready for a whole bound: fail liveness too.
    Dead(String),
}

/// The decision logic, apart from the Kafka client so that it can be tested on its own.
#[derive(Debug)]
pub struct Watchdog {
    policy: StallPolicy,
    last_activity: Option<u64>,
    /// Since when there has been work and no activity (or the last reset).
    quiet_since: Instant,
    /// Each unowned, behind partition: its group offset and since when it has not moved.
    elsewhere: HashMap<PartitionKey, (i64, Instant)>,
    recreations: u32,
    unready_since: Option<Instant>,
}

impl Watchdog {
    /// A watchdog that starts counting at `now`.
    pub fn new(policy: StallPolicy, now: Instant) -> Self {
        Self {
            policy,
            last_activity: None,
            quiet_since: now,
            elsewhere: HashMap::new(),
            recreations: 0,
            unready_since: None,
        }
    }

    /// Takes one look and decides.
    pub fn observe(&mut self, now: Instant, seen: &Observation) -> Verdict {
        let progress = self.last_activity.is_some_and(|last| last != seen.activity);
        self.last_activity = Some(seen.activity);
        if !seen.database_reachable {
            self.restart_clocks(now);
            self.unready_since = None;
            return Verdict::Healthy;
        }
        self.track_elsewhere(now, &seen.behind_elsewhere);
        if progress || !seen.own_work {
            self.quiet_since = now;
        }
        if progress {
            self.recreations = 0;
            self.unready_since = None;
        }
        let bound = self.policy.bound;
        let own_stall = now.duration_since(self.quiet_since) >= bound;
        let stalled_elsewhere: Vec<&PartitionKey> = self
            .elsewhere
            .iter()
            .filter(|(_, (_, since))| now.duration_since(*since) >= bound)
            .map(|(key, _)| key)
            .collect();
        if !own_stall && stalled_elsewhere.is_empty() {
            self.unready_since = None;
            return Verdict::Healthy;
        }
        let reason = if own_stall {
            format!("records waiting and none finished or retried for {bound:?}")
        } else {
            let mut names: Vec<String> = stalled_elsewhere
                .iter()
                .map(|(topic, partition)| format!("{topic}[{partition}]"))
                .collect();
            names.sort();
            format!("{} behind with no progress for {bound:?}", names.join(","))
        };
        if self.recreations < self.policy.recreations {
            self.recreations += 1;
            self.restart_clocks(now);
            return Verdict::Recreate(reason);
        }
        let reason = format!("{reason}, after {} new group member(s)", self.recreations);
        let since = *self.unready_since.get_or_insert(now);
        if now.duration_since(since) >= bound {
            Verdict::Dead(reason)
        } else {
            Verdict::Unready(reason)
        }
    }

    fn track_elsewhere(&mut self, now: Instant, behind: &[(PartitionKey, i64)]) {
        let mut next = HashMap::with_capacity(behind.len());
        for (key, offset) in behind {
            let since = match self.elsewhere.get(key) {
                Some((last, since)) if last == offset => *since,
                _ => now,
            };
            next.insert(key.clone(), (*offset, since));
        }
        self.elsewhere = next;
    }

    /// A new member gets a whole bound before it is judged.
    fn restart_clocks(&mut self, now: Instant) {
        self.quiet_since = now;
        for (_, since) in self.elsewhere.values_mut() {
            *since = now;
        }
    }
}

/// The watchdog's latest verdict, for the readiness and liveness probes. Cheap to share.
#[derive(Debug, Default)]
pub struct ConsumerHealth {
    verdict: Mutex<Option<Verdict>>,
}

impl ConsumerHealth {
    pub(super) fn set(&self, verdict: Verdict) {
        if let Ok(mut current) = self.verdict.lock() {
            *current = Some(verdict);
        }
    }

    /// `Err(reason)` while the consumer is stalled beyond its recreations.
    pub fn readiness(&self) -> Result<(), String> {
        match self.current() {
            Some(Verdict::Unready(reason) | Verdict::Dead(reason)) => Err(reason),
            _ => Ok(()),
        }
    }

    /// `Err(reason)` once the consumer has been unready for a whole bound.
    pub fn liveness(&self) -> Result<(), String> {
        match self.current() {
            Some(Verdict::Dead(reason)) => Err(reason),
            _ => Ok(()),
        }
    }

    fn current(&self) -> Option<Verdict> {
        self.verdict.lock().ok().and_then(|verdict| verdict.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BOUND: Duration = Duration::from_secs(10);

    fn policy() -> StallPolicy {
        StallPolicy {
            bound: BOUND,
            recreations: 1,
        }
    }

    fn looking(activity: u64, own_work: bool) -> Observation {
        Observation {
            activity,
            own_work,
            behind_elsewhere: Vec::new(),
            database_reachable: true,
        }
    }

    /// Feeds `seen` once per second for `seconds` and returns every verdict.
    fn run(
        watchdog: &mut Watchdog,
        start: Instant,
        seconds: u64,
        seen: &Observation,
    ) -> Vec<Verdict> {
        (1..=seconds)
            .map(|s| watchdog.observe(start + Duration::from_secs(s), seen))
            .collect()
    }

    #[test]
    fn a_member_stuck_on_its_own_work_is_recreated_then_unready_then_dead() {
        let start = Instant::now();
        let mut watchdog = Watchdog::new(policy(), start);
        let verdicts = run(&mut watchdog, start, 40, &looking(7, true));
        let first_not_healthy = verdicts.iter().position(|v| *v != Verdict::Healthy);
        // Seconds are 1-based; the stall is one bound long at second 10.
        assert_eq!(first_not_healthy, Some(9));
        assert!(matches!(verdicts[9], Verdict::Recreate(_)));
        assert!(
            matches!(verdicts[19], Verdict::Unready(_)),
            "{:?}",
            verdicts[19]
        );
        assert!(
            matches!(verdicts[29], Verdict::Dead(_)),
            "{:?}",
            verdicts[29]
        );
    }

    #[test]
    fn an_idle_member_with_nothing_behind_stays_healthy() {
        let start = Instant::now();
        let mut watchdog = Watchdog::new(policy(), start);
        let verdicts = run(&mut watchdog, start, 100, &looking(0, false));
        assert!(verdicts.iter().all(|v| *v == Verdict::Healthy));
    }

    #[test]
    fn a_partition_nobody_consumes_makes_an_idle_member_recreate_and_then_give_up() {
        let start = Instant::now();
        let mut watchdog = Watchdog::new(policy(), start);
        let mut seen = looking(0, false);
        seen.behind_elsewhere = vec![(("orders".into(), 2), 41)];
        let verdicts = run(&mut watchdog, start, 40, &seen);
        // The partition is first seen at second 1, so its bound ends at second 11.
        assert_eq!(
            verdicts.iter().position(|v| *v != Verdict::Healthy),
            Some(10)
        );
        assert!(matches!(&verdicts[10], Verdict::Recreate(r) if r.contains("orders[2]")));
        assert!(matches!(verdicts[20], Verdict::Unready(_)));
        assert!(matches!(verdicts[30], Verdict::Dead(_)));
    }

    #[test]
    fn a_waiting_database_is_not_a_stall() {
        let start = Instant::now();
        let mut watchdog = Watchdog::new(policy(), start);
        let mut seen = looking(3, true);
        seen.database_reachable = false;
        assert!(
            run(&mut watchdog, start, 60, &seen)
                .iter()
                .all(|v| *v == Verdict::Healthy)
        );
    }

    #[test]
    fn the_probes_follow_the_verdict() {
        let health = ConsumerHealth::default();
        assert!(health.readiness().is_ok() && health.liveness().is_ok());
        health.set(Verdict::Recreate("x".into()));
        assert!(health.readiness().is_ok() && health.liveness().is_ok());
        health.set(Verdict::Unready("x".into()));
        assert!(health.readiness().is_err() && health.liveness().is_ok());
        health.set(Verdict::Dead("x".into()));
        assert!(health.readiness().is_err() && health.liveness().is_err());
    }

    proptest! {
        /// A member that finishes something between any two looks never fails a probe, and
        /// recreates itself only because of a partition behind elsewhere.
        #[test]
        fn progress_keeps_a_member_ready(
            gaps in proptest::collection::vec(1u64..8_000, 1..200),
            own_work in proptest::collection::vec(any::<bool>(), 200),
            elsewhere in any::<bool>(),
        ) {
            let start = Instant::now();
            let mut watchdog = Watchdog::new(policy(), start);
            let mut now = start;
            for (i, gap) in gaps.iter().enumerate() {
                now += Duration::from_millis(*gap);
                let mut seen = looking(i as u64 + 1, own_work[i]);
                if elsewhere {
                    seen.behind_elsewhere = vec![(("t".into(), 0), 5)];
                }
                match watchdog.observe(now, &seen) {
                    Verdict::Healthy => {}
                    Verdict::Recreate(_) => prop_assert!(elsewhere),
                    other => prop_assert!(false, "look {i}: {other:?}"),
                }
            }
        }

        /// Whatever the looks, a recreation is followed by a whole bound without another,
        /// and a stalled member is never judged before a bound has passed.
        #[test]
        fn recreations_are_a_bound_apart(
            gaps in proptest::collection::vec(1u64..6_000, 1..300),
            moves in proptest::collection::vec(any::<bool>(), 300),
            work in proptest::collection::vec(any::<bool>(), 300),
        ) {
            let start = Instant::now();
            let mut watchdog = Watchdog::new(policy(), start);
            let (mut now, mut activity) = (start, 0u64);
            let mut last_recreate: Option<Instant> = None;
            for (i, gap) in gaps.iter().enumerate() {
                now += Duration::from_millis(*gap);
                activity += u64::from(moves[i]);
                let verdict = watchdog.observe(now, &looking(activity, work[i]));
                if verdict != Verdict::Healthy {
                    prop_assert!(now.duration_since(start) >= BOUND);
                }
                if let Verdict::Recreate(_) = verdict {
                    if let Some(last) = last_recreate {
                        prop_assert!(now.duration_since(last) >= BOUND);
                    }
                    last_recreate = Some(now);
                }
            }
        }
    }
}
