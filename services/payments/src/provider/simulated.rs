//! A provider that keeps real holds: placed by an authorization, turned into a charge by a
//! capture, released by a void, and shown on payments' admin port, so the end-to-end
//! invariants can compare what the provider holds and charged with payments' own books.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use serde::Serialize;
use uuid::Uuid;

use super::faults::Faults;
use super::{
    PaymentProvider, ProviderDecision, ProviderError, ProviderRequest, SettleRequest, Settlement,
};

/// How many keys the simulated provider remembers per kind, oldest forgotten first. Real
/// providers keep keys for a day or so; this bounds the simulation's memory. Open holds are
/// never forgotten.
const REMEMBERED_KEYS: usize = 100_000;

/// A hold still in place: funds reserved for an order, neither captured nor released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenHold {
    /// The order it pays for (the merchant's reference).
    pub order_id: Uuid,
    /// Minor units held.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// First answers by key, the oldest forgotten beyond [`REMEMBERED_KEYS`].
#[derive(Debug)]
struct Remembered<V> {
    by_key: HashMap<String, V>,
    order: VecDeque<String>,
}

impl<V> Default for Remembered<V> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<V: Clone> Remembered<V> {
    fn get(&self, key: &str) -> Option<V> {
        self.by_key.get(key).cloned()
    }

    fn insert(&mut self, key: &str, value: V) {
        if self.by_key.insert(key.to_owned(), value).is_none() {
            self.order.push_back(key.to_owned());
        }
        if self.order.len() > REMEMBERED_KEYS
            && let Some(oldest) = self.order.pop_front()
        {
            self.by_key.remove(&oldest);
        }
    }
}

/// What became of a hold that is no longer open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    Captured,
    Released,
}

#[derive(Debug, Default)]
struct Books {
    decisions: Remembered<ProviderDecision>,
    settlements: Remembered<Settlement>,
    /// Open holds by the key they were placed under.
    open: HashMap<String, OpenHold>,
    closed: Remembered<Closed>,
    captured_minor: BTreeMap<String, i64>,
}

/// How many times each kind of effect happened, counted where it happens: a repeated call
/// that acted again (a key's dedupe broken) shows up as a second effect instead of hiding
/// behind its key.
#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    holds: AtomicU64,
    captures: AtomicU64,
    releases: AtomicU64,
    inherited: AtomicU64,
}

/// A provider that approves every amount up to a limit and declines the rest, so both paths
/// of the saga can be triggered on purpose. Like a real provider it answers a repeated
/// idempotency key with its first answer, and it keeps each hold until a capture charges it
/// or a void releases it.
#[derive(Debug, Default)]
pub struct SimulatedProvider {
    decline_above_minor: i64,
    since_unix_ms: u64,
    books: Mutex<Books>,
    counters: Counters,
    faults: Mutex<Faults>,
}

impl SimulatedProvider {
    /// Declines amounts strictly above `decline_above_minor`.
    pub fn new(decline_above_minor: i64) -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            decline_above_minor,
            since_unix_ms: u64::try_from(since.as_millis()).unwrap_or(u64::MAX),
            ..Self::default()
        }
    }

    /// When these books began (Unix milliseconds): they are kept in memory, so they cover
    /// only what happened since payments last started.
    pub fn since_unix_ms(&self) -> u64 {
        self.since_unix_ms
    }

    /// Captures of holds placed before these books began, taken as held.
    pub fn inherited(&self) -> u64 {
        self.counters.inherited.load(Ordering::Relaxed)
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.faults.lock().map(|f| *f).unwrap_or_default()
    }

    /// Changes the faults (already validated).
    pub fn set_faults(&self, faults: Faults) {
        if let Ok(mut current) = self.faults.lock() {
            *current = faults;
        }
    }

    /// Authorization requests received, repeats included.
    pub fn calls(&self) -> u64 {
        self.counters.calls.load(Ordering::Relaxed)
    }

    /// Holds placed, ever: authorizations that approved afresh and so held funds.
    pub fn holds(&self) -> u64 {
        self.counters.holds.load(Ordering::Relaxed)
    }

    /// Captures made, ever: holds turned into charges.
    pub fn captures(&self) -> u64 {
        self.counters.captures.load(Ordering::Relaxed)
    }

    /// Releases made, ever: holds a void gave back.
    pub fn releases(&self) -> u64 {
        self.counters.releases.load(Ordering::Relaxed)
    }

    /// The holds in place now, by order.
    pub fn open_holds(&self) -> Vec<OpenHold> {
        let mut open: Vec<OpenHold> = self
            .books()
            .map(|books| books.open.values().cloned().collect())
            .unwrap_or_default();
        open.sort_by_key(|hold| hold.order_id);
        open
    }

    /// Minor units captured, ever, by currency.
    pub fn captured_minor(&self) -> BTreeMap<String, i64> {
        self.books()
            .map(|books| books.captured_minor.clone())
            .unwrap_or_default()
    }

    fn books(&self) -> Result<MutexGuard<'_, Books>, ProviderError> {
        self.books
            .lock()
            .map_err(|_| ProviderError("simulated provider state poisoned".into()))
    }

    /// Waits out the latency, then maybe fails before acting; says whether to lose the
    /// answer after acting.
    async fn trouble(&self) -> Result<bool, ProviderError> {
        let faults = self.faults();
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        let (fails, after_acting) = {
            let mut rng = rand::rng();
            (
                faults.failure_rate > 0.0 && rng.random::<f64>() < faults.failure_rate,
                rng.random::<bool>(),
            )
        };
        if fails && !after_acting {
            return Err(ProviderError("simulated outage: request refused".into()));
        }
        Ok(fails)
    }

    fn decide(&self, request: ProviderRequest<'_>) -> ProviderDecision {
        if request.amount_minor > self.decline_above_minor {
            ProviderDecision::Declined {
                reason: format!(
                    "amount {} {} exceeds the card's limit of {} {}",
                    two_decimals(request.amount_minor),
                    request.currency,
                    two_decimals(self.decline_above_minor),
                    request.currency
                ),
            }
        } else {
            ProviderDecision::Approved {
                reference: format!("sim-{}", request.idempotency_key),
            }
        }
    }

    fn place(&self, books: &mut Books, request: ProviderRequest<'_>) -> ProviderDecision {
        if let Some(first) = books.decisions.get(request.idempotency_key) {
            return first;
        }
        let decision = self.decide(request);
        if matches!(decision, ProviderDecision::Approved { .. }) {
            self.counters.holds.fetch_add(1, Ordering::Relaxed);
            let hold = OpenHold {
                order_id: request.order_id,
                amount_minor: request.amount_minor,
                currency: request.currency.to_owned(),
            };
            books.open.insert(request.idempotency_key.to_owned(), hold);
        }
        books
            .decisions
            .insert(request.idempotency_key, decision.clone());
        decision
    }

    fn capture_hold(&self, books: &mut Books, request: SettleRequest<'_>) -> Settlement {
        let Some(hold) = books.open.get(request.hold) else {
            return match (
                books.closed.get(request.hold),
                books.decisions.get(request.hold),
            ) {
                (Some(Closed::Captured), _) => refused("the hold is captured already"),
                (Some(Closed::Released), _) => refused("the hold was released"),
                (None, Some(_)) => refused("nothing is held under this key"),
                // Placed before these books began: they live in payments' process, which may
                // have restarted since, while a real provider's would not. Captured as held.
                (None, None) => {
                    self.counters.inherited.fetch_add(1, Ordering::Relaxed);
                    self.charge(books, request)
                }
            };
        };
        if hold.currency != request.currency || hold.amount_minor < request.amount_minor {
            return refused("the capture exceeds the hold");
        }
        self.charge(books, request)
    }

    fn charge(&self, books: &mut Books, request: SettleRequest<'_>) -> Settlement {
        books.open.remove(request.hold);
        books.closed.insert(request.hold, Closed::Captured);
        *books
            .captured_minor
            .entry(request.currency.to_owned())
            .or_default() += request.amount_minor;
        self.counters.captures.fetch_add(1, Ordering::Relaxed);
        Settlement::Done
    }

    fn release_hold(&self, books: &mut Books, request: SettleRequest<'_>) -> Settlement {
        if books.open.remove(request.hold).is_some() {
            books.closed.insert(request.hold, Closed::Released);
            self.counters.releases.fetch_add(1, Ordering::Relaxed);
            return Settlement::Done;
        }
        match books.closed.get(request.hold) {
            Some(Closed::Captured) => refused("the hold is captured"),
            Some(Closed::Released) => Settlement::Done,
            // Nothing was held under the key (the authorization never arrived, or was
            // declined): from now on it is answered as cancelled and holds nothing.
            None => {
                let cancelled = ProviderDecision::Declined {
                    reason: "the authorization was cancelled".into(),
                };
                if books.decisions.get(request.hold).is_none() {
                    books.decisions.insert(request.hold, cancelled);
                }
                Settlement::Done
            }
        }
    }

    /// Runs `act` once per key of `request`, answering repeats with the first answer.
    async fn settle(
        &self,
        request: SettleRequest<'_>,
        act: fn(&Self, &mut Books, SettleRequest<'_>) -> Settlement,
    ) -> Result<Settlement, ProviderError> {
        let lose_answer = self.trouble().await?;
        let settlement = {
            let mut books = self.books()?;
            match books.settlements.get(request.idempotency_key) {
                Some(first) => first,
                None => {
                    let settlement = act(self, &mut books, request);
                    books
                        .settlements
                        .insert(request.idempotency_key, settlement.clone());
                    settlement
                }
            }
        };
        if lose_answer {
            return Err(ProviderError(
                "simulated outage: answer lost after acting".into(),
            ));
        }
        Ok(settlement)
    }
}

fn refused(reason: &str) -> Settlement {
    Settlement::Refused {
        reason: reason.to_owned(),
    }
}

impl PaymentProvider for SimulatedProvider {
    async fn authorize(
        &self,
        request: ProviderRequest<'_>,
    ) -> Result<ProviderDecision, ProviderError> {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let lose_answer = self.trouble().await?;
        let decision = self.place(&mut *self.books()?, request);
        if lose_answer {
            return Err(ProviderError(
                "simulated outage: answer lost after deciding".into(),
            ));
        }
        Ok(decision)
    }

    async fn capture(&self, request: SettleRequest<'_>) -> Result<Settlement, ProviderError> {
        self.settle(request, Self::capture_hold).await
    }

    async fn void(&self, request: SettleRequest<'_>) -> Result<Settlement, ProviderError> {
        self.settle(request, Self::release_hold).await
    }
}

/// Renders minor units with two decimals, as the demo currencies use. Only for messages.
fn two_decimals(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, (minor % 100).abs())
}

#[cfg(test)]
#[path = "simulated_tests.rs"]
mod tests;
