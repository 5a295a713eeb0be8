//! The retry budget: retries (and hedges) may be at most a fixed fraction of recent calls,
//! plus a small floor, so that an outage cannot multiply the load on a downstream.
//!
//! The accounting is tower's `TpsBudget`'s (Finagle's retry budget): every call deposits,
//! every retry withdraws, deposits count for a sliding window kept in ten slots, and a
//! reserve of `min_per_sec × window` retries is always there. What differs is the cost.
//! `TpsBudget` locks a mutex and reads the clock on every deposit, which made it the largest
//! single cost of a call through the client stack (a `perf` profile gave it more than the
//! breaker and the bulkhead together). Here a slot is one `AtomicU64` holding its generation
//! and its count, so a deposit is one load and one compare-and-swap, never a lock, and it
//! uses the clock reading the caller already made ([`RetryBudget::deposit_at`]).
//!
//! Under contention a withdrawal checks the balance and then takes from it, so two racing
//! withdrawals may overdraw it by one retry; `TpsBudget` has the same race.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::retry::RetryConfig;

/// Slots per window, as in `TpsBudget`.
const SLOTS: u64 = 10;

/// A retry budget shared by every caller of one downstream (and by hedging); clones share
/// the balance.
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    origin: Instant,
    slot_nanos: u64,
    /// `generation << 32 | count as u32`: the slot's count is valid only for that
    /// generation (the number of slot lengths since `origin`), so a stale slot reads as
    /// empty and is reset by the first write in its new generation, with no sweeping.
    slots: [AtomicU64; SLOTS as usize],
    reserve: i64,
    deposit_amount: i32,
    withdraw_amount: i32,
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("deposit", &self.inner.deposit_amount)
            .field("withdraw", &self.inner.withdraw_amount)
            .field(
                "balance",
                &self.inner.balance(self.inner.generation(Instant::now())),
            )
            .finish()
    }
}

impl RetryBudget {
    /// The budget from validated settings (`budget_percent`, `budget_min_per_sec`,
    /// `budget_window_ms`; see [`RetryConfig`]).
    pub fn new(config: &RetryConfig) -> Self {
        let ratio = config.budget_percent / 100.0;
        // Integer amounts as in TpsBudget: a deposit earns `deposit_amount`, a retry costs
        // `withdraw_amount`, so 20 % is 1 and 5 and 250 % is 1000 and 400.
        let (deposit_amount, withdraw_amount) = if ratio <= 0.0 {
            (0, 1)
        } else if ratio <= 1.0 {
            (1, (1.0 / ratio) as i32)
        } else {
            (1_000, (1_000.0 / ratio) as i32)
        };
        let window = Duration::from_millis(config.budget_window_ms.max(1));
        let reserve = i64::from(config.budget_min_per_sec)
            .saturating_mul(window.as_secs() as i64)
            .saturating_mul(i64::from(withdraw_amount));
        Self {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                slot_nanos: (window.as_nanos() / u128::from(SLOTS)).max(1) as u64,
                slots: std::array::from_fn(|_| AtomicU64::new(0)),
                reserve,
                deposit_amount,
                withdraw_amount,
            }),
        }
    }

    /// Records a call (earns a fraction of a retry).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// [`RetryBudget::deposit`] with a clock reading the caller already has.
    #[inline]
    pub fn deposit_at(&self, now: Instant) {
        let inner = &*self.inner;
        if inner.deposit_amount != 0 {
            inner.add(inner.generation(now), inner.deposit_amount);
        }
    }

    /// Takes a token for one retry or hedge; `false` when none are left.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    /// [`RetryBudget::withdraw`] with a clock reading the caller already has.
    pub fn withdraw_at(&self, now: Instant) -> bool {
        let inner = &*self.inner;
        let generation = inner.generation(now);
        if inner.balance(generation) < i64::from(inner.withdraw_amount) {
            return false;
        }
        inner.add(generation, -inner.withdraw_amount);
        true
    }
}

impl Inner {
    #[inline]
    fn generation(&self, now: Instant) -> u32 {
        let since = now.saturating_duration_since(self.origin);
        // u64 nanoseconds (good for 584 years): a u128 division costs more than the rest of
        // a deposit. The generation wraps after 2^32 slots (13 years at the shortest
        // window); the comparisons are wrapping, so only a slot idle that long is misread.
        let nanos = since
            .as_secs()
            .wrapping_mul(1_000_000_000)
            .wrapping_add(u64::from(since.subsec_nanos()));
        (nanos / self.slot_nanos) as u32
    }

    /// Adds `amount` to the slot of `generation`, resetting it if it still holds an older
    /// generation's count.
    #[inline]
    fn add(&self, generation: u32, amount: i32) {
        let slot = &self.slots[(u64::from(generation) % SLOTS) as usize];
        let mut word = slot.load(Ordering::Acquire);
        loop {
            let (held, count) = unpack(word);
            let ahead = held.wrapping_sub(generation);
            let next = if ahead == 0 {
                pack(generation, count.saturating_add(amount))
            } else if ahead < u32::MAX / 2 {
                // The slot already serves a later generation (this caller read its clock a
                // whole window ago): its amount would be outside that window anyway.
                return;
            } else {
                pack(generation, amount)
            };
            match slot.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }

    /// The reserve plus the counts of the window's slots (the current one and the nine
    /// before it).
    fn balance(&self, generation: u32) -> i64 {
        let counted: i64 = self
            .slots
            .iter()
            .map(|slot| unpack(slot.load(Ordering::Acquire)))
            .filter(|(held, _)| generation.wrapping_sub(*held) < SLOTS as u32)
            .map(|(_, count)| i64::from(count))
            .sum();
        self.reserve.saturating_add(counted)
    }
}

#[inline]
fn pack(generation: u32, count: i32) -> u64 {
    (u64::from(generation) << 32) | u64::from(count as u32)
}

#[inline]
fn unpack(word: u64) -> (u32, i32) {
    ((word >> 32) as u32, word as u32 as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(percent: f64, min_per_sec: u32, window_ms: u64) -> RetryConfig {
        RetryConfig {
            budget_percent: percent,
            budget_min_per_sec: min_per_sec,
            budget_window_ms: window_ms,
            ..RetryConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn twenty_percent_of_calls_may_be_retried() {
        let budget = RetryBudget::new(&config(20.0, 0, 10_000));
        assert!(!budget.withdraw(), "nothing deposited, no reserve");
        for _ in 0..10 {
            budget.deposit();
        }
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw(), "ten calls earn two retries");
    }

    #[tokio::test(start_paused = true)]
    async fn the_reserve_allows_retries_without_traffic() {
        let budget = RetryBudget::new(&config(20.0, 1, 2_000));
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(
            !budget.withdraw(),
            "one per second over a two-second window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_window() {
        let budget = RetryBudget::new(&config(100.0, 0, 1_000));
        budget.deposit();
        budget.deposit();
        tokio::time::advance(Duration::from_millis(950)).await;
        assert!(budget.withdraw(), "still inside the window");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!budget.withdraw(), "the deposits' slot has left the window");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_reused_generations_later_starts_empty() {
        let budget = RetryBudget::new(&config(100.0, 0, 1_000));
        for _ in 0..5 {
            budget.deposit();
        }
        // Exactly one window later the same slot index comes round again.
        tokio::time::advance(Duration::from_millis(1_000)).await;
        budget.deposit();
        assert!(budget.withdraw());
        assert!(
            !budget.withdraw(),
            "the old five are gone, the new one is spent"
        );
    }

    #[test]
    fn concurrent_deposits_are_all_counted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let _guard = rt.enter();
        let budget = RetryBudget::new(&config(100.0, 0, 10_000));
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let budget = budget.clone();
                let now = Instant::now();
                scope.spawn(move || {
                    for _ in 0..10_000 {
                        budget.deposit_at(now);
                    }
                });
            }
        });
        let now = Instant::now();
        assert_eq!(budget.inner.balance(budget.inner.generation(now)), 40_000);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Deposit,
        Withdraw,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Deposit),
            2 => Just(Op::Withdraw),
            1 => (1u64..3_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Against a plain model: a list of (generation, amount) entries, of which those
        /// from the current generation and the nine before it count.
        #[test]
        fn agrees_with_a_model_of_the_window(
            percent in prop_oneof![Just(0.0), Just(20.0), Just(100.0), Just(250.0)],
            min_per_sec in 0u32..3,
            window_ms in 1_000u64..5_000,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let _guard = rt.enter();
            let budget = RetryBudget::new(&config(percent, min_per_sec, window_ms));
            let inner = &budget.inner;
            let mut now = Instant::now();
            let mut entries: Vec<(u32, i64)> = Vec::new();
            for op in ops {
                let generation = inner.generation(now);
                let balance = inner.reserve
                    + entries
                        .iter()
                        .filter(|(g, _)| generation - g < SLOTS as u32)
                        .map(|(_, amount)| amount)
                        .sum::<i64>();
                match op {
                    Op::Deposit => {
                        budget.deposit_at(now);
                        entries.push((generation, i64::from(inner.deposit_amount)));
                    }
                    Op::Withdraw => {
                        let allowed = balance >= i64::from(inner.withdraw_amount);
                        prop_assert_eq!(budget.withdraw_at(now), allowed);
                        if allowed {
                            entries.push((generation, -i64::from(inner.withdraw_amount)));
                        }
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                }
            }
        }
    }
}
