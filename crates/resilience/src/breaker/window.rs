//! The breaker's sliding windows: the last N calls, or the calls of the last N seconds.
//!
//! The count-based window is lock-free: a ring of one-byte outcomes plus running totals.
//! Recording claims the next slot with one `fetch_add`, swaps the outcome in and adjusts
//! only the totals that changed, so a success replacing a success (the steady state of a
//! healthy downstream) is two atomic operations and no threshold check. Under concurrency
//! the totals may briefly lag a racing writer by one call; single-threaded they are exact,
//! which the reference-model property test relies on.
//!
//! The time-based window keeps one bucket per second under a short mutex: expiring buckets
//! must reset counts and totals together, which atomics cannot do without losing calls.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Outcome bits stored per call.
pub(super) const RECORDED: u8 = 0b001;
pub(super) const FAILURE: u8 = 0b010;
pub(super) const SLOW: u8 = 0b100;

/// Calls, failures and slow calls currently in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Tally {
    pub(super) calls: u32,
    pub(super) failures: u32,
    pub(super) slow: u32,
}

impl Tally {
    fn add(&mut self, outcome: u8) {
        self.calls += u32::from(outcome & RECORDED != 0);
        self.failures += u32::from(outcome & FAILURE != 0);
        self.slow += u32::from(outcome & SLOW != 0);
    }

    fn subtract(&mut self, other: Tally) {
        self.calls = self.calls.saturating_sub(other.calls);
        self.failures = self.failures.saturating_sub(other.failures);
        self.slow = self.slow.saturating_sub(other.slow);
    }
}

pub(super) enum Window {
    Count(CountWindow),
    Time(Mutex<TimeWindow>),
}

impl Window {
    pub(super) fn count(size: u32) -> Self {
        Self::Count(CountWindow {
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            next: AtomicUsize::new(0),
            calls: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            slow: AtomicU32::new(0),
        })
    }

    pub(super) fn time(seconds: u32) -> Self {
        Self::Time(Mutex::new(TimeWindow {
            buckets: vec![(0, Tally::default()); seconds as usize],
            totals: Tally::default(),
            head: 0,
        }))
    }

    /// Records `outcome` at second `now_sec`; returns the new tally if it may have raised a
    /// rate (and `None` when nothing changed).
    /// Whether recording needs the current second.
    #[inline]
    pub(super) fn is_timed(&self) -> bool {
        matches!(self, Self::Time(_))
    }

    #[inline]
    pub(super) fn record(&self, outcome: u8, now_sec: u64) -> Option<Tally> {
        match self {
            Self::Count(window) => window.record(outcome),
            Self::Time(window) => {
                let mut window = window.lock().unwrap_or_else(PoisonError::into_inner);
                Some(window.record(outcome, now_sec))
            }
        }
    }

    pub(super) fn tally(&self, now_sec: u64) -> Tally {
        match self {
            Self::Count(window) => window.tally(),
            Self::Time(window) => {
                let mut window = window.lock().unwrap_or_else(PoisonError::into_inner);
                window.advance(now_sec);
                window.totals
            }
        }
    }

    pub(super) fn reset(&self) {
        match self {
            Self::Count(window) => window.reset(),
            Self::Time(window) => {
                let mut window = window.lock().unwrap_or_else(PoisonError::into_inner);
                window.buckets.fill((0, Tally::default()));
                window.totals = Tally::default();
                window.head = 0;
            }
        }
    }
}

pub(super) struct CountWindow {
    slots: Box<[AtomicU8]>,
    next: AtomicUsize,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

impl CountWindow {
    #[inline]
    fn record(&self, outcome: u8) -> Option<Tally> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[index];
        // In a steady state the slot already holds this outcome; a plain load then saves
        // the read-modify-write (the costlier half of recording a call).
        if slot.load(Ordering::Acquire) == outcome {
            return None;
        }
        let old = slot.swap(outcome, Ordering::AcqRel);
        if old == outcome {
            return None;
        }
        for (bit, counter) in [
            (RECORDED, &self.calls),
            (FAILURE, &self.failures),
            (SLOW, &self.slow),
        ] {
            match (old & bit != 0, outcome & bit != 0) {
                (false, true) => {
                    counter.fetch_add(1, Ordering::AcqRel);
                }
                (true, false) => {
                    counter.fetch_sub(1, Ordering::AcqRel);
                }
                _ => {}
            }
        }
        Some(self.tally())
    }

    fn tally(&self) -> Tally {
        Tally {
            calls: self.calls.load(Ordering::Acquire),
            failures: self.failures.load(Ordering::Acquire),
            slow: self.slow.load(Ordering::Acquire),
        }
    }

    fn reset(&self) {
        for slot in &self.slots {
            slot.store(0, Ordering::Relaxed);
        }
        self.next.store(0, Ordering::Relaxed);
        self.calls.store(0, Ordering::Release);
        self.failures.store(0, Ordering::Release);
        self.slow.store(0, Ordering::Release);
    }
}

pub(super) struct TimeWindow {
    /// `(second, tally)` per bucket; bucket `s % len` holds second `s`.
    buckets: Vec<(u64, Tally)>,
    totals: Tally,
    /// The latest second seen; buckets of seconds `(head - len, head]` are live.
    head: u64,
}

impl TimeWindow {
    fn advance(&mut self, now_sec: u64) {
        if now_sec <= self.head {
            return;
        }
        let len = self.buckets.len() as u64;
        let steps = (now_sec - self.head).min(len);
        for sec in now_sec + 1 - steps..=now_sec {
            let index = (sec % len) as usize;
            let (_, expired) = self.buckets[index];
            self.totals.subtract(expired);
            self.buckets[index] = (sec, Tally::default());
        }
        self.head = now_sec;
    }

    fn record(&mut self, outcome: u8, now_sec: u64) -> Tally {
        self.advance(now_sec);
        let len = self.buckets.len() as u64;
        let index = (now_sec % len) as usize;
        self.buckets[index].1.add(outcome);
        self.totals.add(outcome);
        self.totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_window_forgets_the_oldest_call() {
        let w = Window::count(3);
        w.record(RECORDED | FAILURE, 0);
        w.record(RECORDED, 0);
        w.record(RECORDED | SLOW, 0);
        assert_eq!(
            w.tally(0),
            Tally {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(
            w.record(RECORDED, 0),
            Some(Tally {
                calls: 3,
                failures: 0,
                slow: 1
            })
        );
        assert_eq!(
            w.record(RECORDED, 0),
            None,
            "a success replacing a success changes nothing"
        );
        w.reset();
        assert_eq!(w.tally(0), Tally::default());
    }

    #[test]
    fn the_time_window_expires_whole_seconds() {
        let w = Window::time(2);
        w.record(RECORDED | FAILURE, 0);
        w.record(RECORDED, 1);
        assert_eq!(
            w.tally(1),
            Tally {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
        assert_eq!(
            w.tally(2),
            Tally {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        assert_eq!(w.tally(100), Tally::default());
        w.record(RECORDED | SLOW, 100);
        assert_eq!(
            w.tally(101),
            Tally {
                calls: 1,
                failures: 0,
                slow: 1
            }
        );
    }
}
