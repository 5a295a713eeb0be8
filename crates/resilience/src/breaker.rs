//! A circuit breaker: stop calling a downstream that is failing, probe it, resume.
//!
//! tower has no breaker, and the crates that do either lock on every call or lack slow-call
//! rates, bounded probes and operator overrides, so this one is written here. It follows
//! Resilience4j's model:
//! - **Closed**: calls pass; outcomes go into a sliding window (the last `window_size`
//!   calls, or the calls of the last `window_size` seconds). Once the window holds at least
//!   `minimum_calls`, a failure rate or slow-call rate at or above its threshold opens it.
//! - **Open**: calls fail at once with [`ResilienceError::CircuitOpen`], which says how long
//!   until the breaker lets probes through. After `open_wait_ms` the next call moves it to
//! - **Half-open**: exactly `half_open_calls` probes are let through; when all have
//!   finished, their failure and slow rates decide: open again, or close (with an empty
//!   window). A probe that is cancelled or ends in a caller error hands its slot back.
//! - **Forced open / forced closed**: operator overrides ([`CircuitBreaker::force_open`],
//!   [`CircuitBreaker::force_closed`]); [`CircuitBreaker::reset`] returns to closed.
//!
//! One [`CircuitBreaker`] per downstream, shared by all callers through cheap clones. The hot
//! path takes no lock: admission is one atomic load of the state word (state and a
//! generation), recording is a few atomic operations on the count-based window. Only state
//! changes take a mutex; they bump the generation, so a result from a call admitted under an
//! earlier state is never counted in a later one. Every change is broadcast as a
//! [`StateChange`] ([`CircuitBreaker::subscribe`]), logged, and counted in
//! [`BreakerMetrics`].

mod config;
mod service;
mod state;
mod window;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::classify::ErrorClass;
use crate::error::ResilienceError;
pub use config::{BreakerConfig, WindowKind};
pub use service::{BreakerFuture, BreakerLayer, BreakerService};
pub use state::State;
use state::{decode, encode};
use window::{FAILURE, RECORDED, SLOW, Tally, Window};

/// A state change, as broadcast to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// The state it left.
    pub from: State,
    /// The state it entered.
    pub to: State,
    /// When.
    pub at: Instant,
}

/// A snapshot for metrics and health pages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerMetrics {
    /// The current state.
    pub state: State,
    /// Calls in the closed-state window.
    pub calls: u32,
    /// Failure percentage in the window (0 when empty).
    pub failure_rate: f64,
    /// Slow-call percentage in the window (0 when empty).
    pub slow_call_rate: f64,
    /// Calls refused since creation.
    pub not_permitted: u64,
    /// State changes since creation.
    pub transitions: u64,
}

struct Settings {
    minimum_calls: u32,
    failure_rate_threshold: f64,
    slow_call_rate_threshold: f64,
    slow_call: Duration,
    open_wait: Duration,
    half_open_calls: u32,
}

struct Shared {
    name: Arc<str>,
    settings: Settings,
    origin: Instant,
    state: AtomicU64,
    /// Nanoseconds after `origin` when an open breaker starts probing.
    open_until: AtomicU64,
    probes_left: AtomicU32,
    probe_calls: AtomicU32,
    probe_failures: AtomicU32,
    probe_slow: AtomicU32,
    window: Window,
    transition: Mutex<()>,
    events: broadcast::Sender<StateChange>,
    not_permitted: AtomicU64,
    transitions: AtomicU64,
}

/// A shared circuit breaker for one downstream; clones share state.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish()
    }
}

/// Leave to make one call, handed out by [`CircuitBreaker::try_acquire`]. Give it back with
/// [`CircuitBreaker::record`] (or [`CircuitBreaker::release`] if the call was never made).
#[must_use = "a permit must be recorded or released, or a half-open probe slot is lost"]
#[derive(Debug)]
pub struct Permit {
    generation: u64,
    state: State,
    /// When the call started; `None` until the layer sees it wait (see [`BreakerService`]).
    start: Option<Instant>,
}

impl Permit {
    /// Starts the call's clock if it is not running: called when a call is first found
    /// waiting, so one answered at once costs no clock read and is never slow.
    #[inline]
    pub(crate) fn waiting(&mut self) {
        if self.start.is_none() {
            self.start = Some(Instant::now());
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker called `name` (the downstream's name) with validated `config`.
    pub fn new(name: &str, config: &BreakerConfig) -> Self {
        let window = match config.window {
            WindowKind::CountBased => Window::count(config.window_size.max(1)),
            WindowKind::TimeBased => Window::time(config.window_size.max(1)),
        };
        let (events, _) = broadcast::channel(64);
        Self {
            shared: Arc::new(Shared {
                name: name.into(),
                settings: Settings {
                    minimum_calls: config.minimum_calls.max(1),
                    failure_rate_threshold: config.failure_rate_threshold,
                    slow_call_rate_threshold: config.slow_call_rate_threshold,
                    slow_call: Duration::from_millis(config.slow_call_duration_ms),
                    open_wait: Duration::from_millis(config.open_wait_ms),
                    half_open_calls: config.half_open_calls.max(1),
                },
                origin: Instant::now(),
                state: AtomicU64::new(encode(0, State::Closed)),
                open_until: AtomicU64::new(0),
                probes_left: AtomicU32::new(0),
                probe_calls: AtomicU32::new(0),
                probe_failures: AtomicU32::new(0),
                probe_slow: AtomicU32::new(0),
                window,
                transition: Mutex::new(()),
                events,
                not_permitted: AtomicU64::new(0),
                transitions: AtomicU64::new(0),
            }),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current state. An open breaker whose wait is over still reads `Open` until the
    /// next call moves it to half-open.
    pub fn state(&self) -> State {
        decode(self.shared.state.load(Ordering::Acquire)).1
    }

    /// State changes from now on. A slow subscriber misses the oldest (the channel holds 64)
    /// and is told how many it missed.
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.shared.events.subscribe()
    }

    /// Counters and the window's current rates.
    pub fn metrics(&self) -> BreakerMetrics {
        let tally = self
            .shared
            .window
            .tally(self.shared.now_sec(Instant::now()));
        let rate = |n: u32| {
            if tally.calls == 0 {
                0.0
            } else {
                f64::from(n) * 100.0 / f64::from(tally.calls)
            }
        };
        BreakerMetrics {
            state: self.state(),
            calls: tally.calls,
            failure_rate: rate(tally.failures),
            slow_call_rate: rate(tally.slow),
            not_permitted: self.shared.not_permitted.load(Ordering::Relaxed),
            transitions: self.shared.transitions.load(Ordering::Relaxed),
        }
    }

    /// Asks to make a call. Fails with [`ResilienceError::CircuitOpen`] when open, forced
    /// open, or half-open with every probe slot taken.
    pub fn try_acquire(&self) -> Result<Permit, ResilienceError> {
        self.admit(true)
    }

    /// Admission; `stamp` says whether to read the clock for the call's start now.
    #[inline]
    pub(crate) fn admit(&self, stamp: bool) -> Result<Permit, ResilienceError> {
        let shared = &*self.shared;
        loop {
            let word = shared.state.load(Ordering::Acquire);
            let (generation, state) = decode(word);
            // Built (and, with `stamp`, the clock read) only for an admitted call.
            let permit = || Permit {
                generation,
                state,
                start: stamp.then(Instant::now),
            };
            match state {
                State::Closed | State::ForcedClosed => return Ok(permit()),
                State::ForcedOpen => return Err(shared.refuse(shared.settings.open_wait)),
                State::Open => {
                    let until = shared.open_until.load(Ordering::Acquire);
                    let now_nanos = shared.nanos(Instant::now());
                    if now_nanos < until {
                        return Err(shared.refuse(Duration::from_nanos(until - now_nanos)));
                    }
                    shared.transition(word, State::HalfOpen);
                }
                State::HalfOpen => {
                    let taken = shared.probes_left.fetch_update(
                        Ordering::AcqRel,
                        Ordering::Acquire,
                        |left| left.checked_sub(1),
                    );
                    return match taken {
                        Ok(_) => Ok(permit()),
                        Err(_) => Err(shared.refuse(Duration::ZERO)),
                    };
                }
            }
        }
    }

    /// Records how a permitted call ended: `None` for success, otherwise its class. The
    /// call's duration (for the slow-call rate) is measured from `try_acquire`.
    #[inline]
    pub fn record(&self, permit: Permit, outcome: Option<ErrorClass>) {
        let shared = &*self.shared;
        if permit.state == State::ForcedClosed {
            return;
        }
        let mut bits = RECORDED;
        match outcome {
            None => {}
            Some(class) if class.is_failure() => bits |= FAILURE,
            Some(_) => return self.release(permit),
        }
        // The clock is read only when something needs it: a timed call's duration, or the
        // current second of a time-based window.
        let now = (permit.start.is_some() || shared.window.is_timed()).then(Instant::now);
        if let (Some(start), Some(now)) = (permit.start, now)
            && now.saturating_duration_since(start) >= shared.settings.slow_call
        {
            bits |= SLOW;
        }
        let word = encode(permit.generation, permit.state);
        if shared.state.load(Ordering::Acquire) != word {
            return; // admitted under an earlier state
        }
        match permit.state {
            State::Closed => {
                let now_sec = now.map_or(0, |now| shared.now_sec(now));
                if let Some(tally) = shared.window.record(bits, now_sec)
                    && tally.calls >= shared.settings.minimum_calls
                    && shared.exceeds(tally)
                {
                    shared.transition(word, State::Open);
                }
            }
            State::HalfOpen => {
                if bits & FAILURE != 0 {
                    shared.probe_failures.fetch_add(1, Ordering::AcqRel);
                }
                if bits & SLOW != 0 {
                    shared.probe_slow.fetch_add(1, Ordering::AcqRel);
                }
                let calls = shared.probe_calls.fetch_add(1, Ordering::AcqRel) + 1;
                if calls >= shared.settings.half_open_calls {
                    let tally = Tally {
                        calls,
                        failures: shared.probe_failures.load(Ordering::Acquire),
                        slow: shared.probe_slow.load(Ordering::Acquire),
                    };
                    let next = if shared.exceeds(tally) {
                        State::Open
                    } else {
                        State::Closed
                    };
                    shared.transition(word, next);
                }
            }
            _ => {}
        }
    }

    /// Gives back a permit whose call was never made or was cancelled: a half-open probe
    /// slot becomes free again.
    #[inline]
    pub fn release(&self, permit: Permit) {
        let shared = &*self.shared;
        if permit.state == State::HalfOpen
            && shared.state.load(Ordering::Acquire) == encode(permit.generation, State::HalfOpen)
        {
            shared.probes_left.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Operator override: refuse every call until [`CircuitBreaker::reset`].
    pub fn force_open(&self) {
        self.shared.force(State::ForcedOpen);
    }

    /// Operator override: let every call through, measuring nothing, until
    /// [`CircuitBreaker::reset`].
    pub fn force_closed(&self) {
        self.shared.force(State::ForcedClosed);
    }

    /// Back to closed with an empty window, whatever the state.
    pub fn reset(&self) {
        self.shared.force(State::Closed);
    }

    /// A layer guarding a service with this breaker, judging results with `classifier`.
    pub fn layer<C>(&self, classifier: C) -> BreakerLayer<C> {
        BreakerLayer {
            breaker: self.clone(),
            classifier,
        }
    }
}

impl Shared {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    #[inline]
    fn now_sec(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_secs()
    }

    fn exceeds(&self, tally: Tally) -> bool {
        let calls = f64::from(tally.calls);
        f64::from(tally.failures) * 100.0 >= self.settings.failure_rate_threshold * calls
            || f64::from(tally.slow) * 100.0 >= self.settings.slow_call_rate_threshold * calls
    }

    fn refuse(&self, retry_after: Duration) -> ResilienceError {
        self.not_permitted.fetch_add(1, Ordering::Relaxed);
        ResilienceError::CircuitOpen {
            name: self.name.clone(),
            retry_after,
        }
    }

    /// Moves from the state word `expected` to `to`, unless another caller moved first.
    fn transition(&self, expected: u64, to: State) {
        let _guard = self
            .transition
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.state.load(Ordering::Acquire);
        if current == expected {
            self.enter(current, to);
        }
    }

    fn force(&self, to: State) {
        let _guard = self
            .transition
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.state.load(Ordering::Acquire);
        self.enter(current, to);
    }

    /// Enters `to`; the transition mutex must be held.
    fn enter(&self, current: u64, to: State) {
        let now = Instant::now();
        match to {
            State::Open => {
                let until = self.nanos(now + self.settings.open_wait);
                self.open_until.store(until, Ordering::Release);
            }
            State::HalfOpen => {
                self.probe_calls.store(0, Ordering::Release);
                self.probe_failures.store(0, Ordering::Release);
                self.probe_slow.store(0, Ordering::Release);
                self.probes_left
                    .store(self.settings.half_open_calls, Ordering::Release);
            }
            State::Closed => self.window.reset(),
            State::ForcedOpen | State::ForcedClosed => {}
        }
        let (generation, from) = decode(current);
        self.state
            .store(encode(generation.wrapping_add(1), to), Ordering::Release);
        self.transitions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(breaker = %self.name, ?from, ?to, "circuit breaker state changed");
        // Nobody listening is fine.
        let _ = self.events.send(StateChange {
            breaker: self.name.clone(),
            from,
            to,
            at: now,
        });
    }
}
