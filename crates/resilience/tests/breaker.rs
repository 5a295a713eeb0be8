//! The circuit breaker as callers and operators see it, and a property test against a
//! reference model.

use std::collections::VecDeque;
use std::time::Duration;

use faultline_resilience::{
    AllErrorsTransient, BreakerConfig, CircuitBreaker, Classifier, ErrorClass, ErrorRef, Permit,
    ResilienceError, State, WindowKind,
};
use proptest::prelude::*;
use tokio::time::{Instant, advance};
use tower::{BoxError, Layer, ServiceExt, service_fn};

const MS: Duration = Duration::from_millis(1);

fn small() -> BreakerConfig {
    BreakerConfig {
        window: WindowKind::CountBased,
        window_size: 4,
        minimum_calls: 4,
        failure_rate_threshold: 50.0,
        slow_call_rate_threshold: 100.0,
        slow_call_duration_ms: 1_000,
        open_wait_ms: 5_000,
        half_open_calls: 2,
    }
}

fn call(breaker: &CircuitBreaker, outcome: Option<ErrorClass>) -> Result<(), ResilienceError> {
    let permit = breaker.try_acquire()?;
    breaker.record(permit, outcome);
    Ok(())
}

const FAIL: Option<ErrorClass> = Some(ErrorClass::Transient { retry_after: None });

#[tokio::test(start_paused = true)]
async fn opens_at_the_failure_threshold_and_fails_fast_with_the_wait() {
    let breaker = CircuitBreaker::new("inventory", &small());
    let mut events = breaker.subscribe();
    call(&breaker, None).unwrap();
    call(&breaker, FAIL).unwrap();
    call(&breaker, None).unwrap();
    assert_eq!(
        breaker.state(),
        State::Closed,
        "below the minimum number of calls"
    );
    call(&breaker, FAIL).unwrap();
    assert_eq!(breaker.state(), State::Open, "2 of 4 failed: 50%");

    let change = events.try_recv().unwrap();
    assert_eq!((change.from, change.to), (State::Closed, State::Open));
    assert_eq!(&*change.breaker, "inventory");

    advance(MS * 1_200).await;
    match breaker.try_acquire() {
        Err(ResilienceError::CircuitOpen { name, retry_after }) => {
            assert_eq!(&*name, "inventory");
            assert_eq!(retry_after, MS * 3_800);
        }
        other => panic!("expected an open breaker, got {other:?}"),
    }
    assert_eq!(breaker.metrics().not_permitted, 1);
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_a_bounded_number_of_probes_through_then_closes() {
    let breaker = CircuitBreaker::new("inventory", &small());
    for _ in 0..4 {
        call(&breaker, FAIL).unwrap();
    }
    advance(MS * 5_000).await;
    let first = breaker.try_acquire().unwrap();
    assert_eq!(breaker.state(), State::HalfOpen);
    let second = breaker.try_acquire().unwrap();
    assert!(
        matches!(breaker.try_acquire(), Err(ResilienceError::CircuitOpen { retry_after, .. }) if retry_after.is_zero()),
        "only two probes"
    );
    breaker.record(first, None);
    assert_eq!(breaker.state(), State::HalfOpen, "waits for every probe");
    breaker.record(second, None);
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics().calls, 0, "closing starts a fresh window");
}

#[tokio::test(start_paused = true)]
async fn a_failing_probe_reopens_for_another_wait() {
    let breaker = CircuitBreaker::new("inventory", &small());
    for _ in 0..4 {
        call(&breaker, FAIL).unwrap();
    }
    advance(MS * 5_000).await;
    call(&breaker, FAIL).unwrap();
    call(&breaker, None).unwrap();
    assert_eq!(breaker.state(), State::Open, "1 of 2 probes failed: 50%");
    assert!(matches!(
        breaker.try_acquire(),
        Err(ResilienceError::CircuitOpen { retry_after, .. }) if retry_after == MS * 5_000
    ));
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_it_too() {
    let config = BreakerConfig {
        slow_call_rate_threshold: 75.0,
        ..small()
    };
    let breaker = CircuitBreaker::new("inventory", &config);
    for _ in 0..3 {
        let permit = breaker.try_acquire().unwrap();
        advance(MS * 1_000).await;
        breaker.record(permit, None);
    }
    call(&breaker, None).unwrap();
    assert_eq!(breaker.state(), State::Open, "3 of 4 calls took a second");
}

#[tokio::test(start_paused = true)]
async fn caller_errors_do_not_count() {
    let breaker = CircuitBreaker::new("inventory", &small());
    for _ in 0..10 {
        call(&breaker, Some(ErrorClass::CallerError)).unwrap();
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn operators_can_force_and_reset() {
    let breaker = CircuitBreaker::new("psp", &small());
    let mut events = breaker.subscribe();
    breaker.force_open();
    assert!(matches!(
        breaker.try_acquire(),
        Err(ResilienceError::CircuitOpen { .. })
    ));
    breaker.force_closed();
    for _ in 0..10 {
        call(&breaker, FAIL).unwrap();
    }
    assert_eq!(
        breaker.state(),
        State::ForcedClosed,
        "forced closed measures nothing"
    );
    breaker.reset();
    assert_eq!(breaker.state(), State::Closed);
    let seen: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|c| c.to)
        .collect();
    assert_eq!(
        seen,
        [State::ForcedOpen, State::ForcedClosed, State::Closed]
    );
    assert_eq!(breaker.metrics().transitions, 3);
}

#[derive(Clone)]
struct NotFoundIsCallersFault;

impl Classifier<()> for NotFoundIsCallersFault {
    fn classify_error(&self, error: ErrorRef<'_>) -> ErrorClass {
        if error.to_string() == "not found" {
            ErrorClass::CallerError
        } else {
            ErrorClass::Transient { retry_after: None }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn as_a_layer_it_classifies_and_a_cancelled_probe_frees_its_slot() {
    let config = BreakerConfig {
        half_open_calls: 1,
        ..small()
    };
    let breaker = CircuitBreaker::new("inventory", &config);
    let svc =
        breaker
            .layer(NotFoundIsCallersFault)
            .layer(service_fn(|fail: &'static str| async move {
                if fail.is_empty() {
                    Ok::<(), BoxError>(())
                } else if fail == "hang" {
                    std::future::pending().await
                } else {
                    Err(fail.into())
                }
            }));
    for _ in 0..4 {
        let err = svc.clone().oneshot("not found").await.unwrap_err();
        assert_eq!(err.to_string(), "not found");
    }
    assert_eq!(breaker.state(), State::Closed);
    for _ in 0..4 {
        svc.clone().oneshot("unavailable").await.unwrap_err();
    }
    assert_eq!(breaker.state(), State::Open);
    let err = svc.clone().oneshot("").await.unwrap_err();
    assert!(matches!(
        ResilienceError::find(&*err),
        Some(ResilienceError::CircuitOpen { .. })
    ));

    advance(MS * 5_000).await;
    // The one probe hangs and its caller gives up: the slot must come back.
    let probe = tokio::time::timeout(MS * 10, svc.clone().oneshot("hang")).await;
    assert!(probe.is_err());
    svc.clone().oneshot("").await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_time_based_window_forgets_old_seconds() {
    let config = BreakerConfig {
        window: WindowKind::TimeBased,
        window_size: 2,
        minimum_calls: 3,
        ..small()
    };
    let breaker = CircuitBreaker::new("inventory", &config);
    call(&breaker, FAIL).unwrap();
    call(&breaker, FAIL).unwrap();
    advance(MS * 2_000).await;
    call(&breaker, FAIL).unwrap();
    assert_eq!(
        breaker.state(),
        State::Closed,
        "the first two failures have expired"
    );
    call(&breaker, None).unwrap();
    call(&breaker, FAIL).unwrap();
    assert_eq!(
        breaker.state(),
        State::Open,
        "2 of 3 in the last two seconds"
    );
}

#[test]
fn validation_names_the_setting() {
    let cases = [
        (
            BreakerConfig {
                window_size: 10,
                minimum_calls: 20,
                ..BreakerConfig::default()
            },
            "WINDOW_SIZE",
        ),
        (
            BreakerConfig {
                failure_rate_threshold: 0.0,
                ..BreakerConfig::default()
            },
            "FAILURE_RATE_THRESHOLD",
        ),
        (
            BreakerConfig {
                slow_call_rate_threshold: 101.0,
                ..BreakerConfig::default()
            },
            "SLOW_CALL_RATE_THRESHOLD",
        ),
        (
            BreakerConfig {
                open_wait_ms: 0,
                ..BreakerConfig::default()
            },
            "OPEN_WAIT_MS",
        ),
        (
            BreakerConfig {
                half_open_calls: 0,
                ..BreakerConfig::default()
            },
            "HALF_OPEN_CALLS",
        ),
        (
            BreakerConfig {
                slow_call_duration_ms: 0,
                ..BreakerConfig::default()
            },
            "SLOW_CALL_DURATION_MS",
        ),
        (
            BreakerConfig {
                window: WindowKind::TimeBased,
                window_size: 7_200,
                ..BreakerConfig::default()
            },
            "WINDOW_SIZE",
        ),
    ];
    for (config, field) in cases {
        let err = config
            .validate("CHECKOUT_INVENTORY__RESILIENCE__BREAKER")
            .unwrap_err();
        assert_eq!(
            err.setting,
            format!("CHECKOUT_INVENTORY__RESILIENCE__BREAKER__{field}"),
            "{err}"
        );
    }
    // A time window is measured in seconds, so fewer seconds than minimum calls is fine.
    let time = BreakerConfig {
        window: WindowKind::TimeBased,
        window_size: 10,
        minimum_calls: 50,
        ..BreakerConfig::default()
    };
    assert!(time.validate("X").is_ok());
}

// ---------------------------------------------------------------------------------------
// Reference model: the specification, written as plainly as possible.

#[derive(Debug, Clone, Copy, PartialEq)]
enum ModelState {
    Closed,
    Open { until: Duration },
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
struct ModelPermit {
    generation: u64,
    half_open: bool,
    start: Duration,
}

struct Model {
    config: BreakerConfig,
    now: Duration,
    state: ModelState,
    generation: u64,
    /// `(second, failed, slow)` of recorded closed-state calls, oldest first.
    window: VecDeque<(u64, bool, bool)>,
    probes_left: u32,
    probes: Vec<(bool, bool)>,
}

impl Model {
    fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            now: Duration::ZERO,
            state: ModelState::Closed,
            generation: 0,
            window: VecDeque::new(),
            probes_left: 0,
            probes: Vec::new(),
        }
    }

    fn exceeds(&self, calls: usize, failures: usize, slow: usize) -> bool {
        let calls = calls as f64;
        failures as f64 * 100.0 >= self.config.failure_rate_threshold * calls
            || slow as f64 * 100.0 >= self.config.slow_call_rate_threshold * calls
    }

    fn enter(&mut self, to: ModelState) {
        self.generation += 1;
        self.state = to;
        match to {
            ModelState::Closed => self.window.clear(),
            ModelState::HalfOpen => {
                self.probes_left = self.config.half_open_calls;
                self.probes.clear();
            }
            ModelState::Open { .. } => {}
        }
    }

    fn acquire(&mut self) -> Result<ModelPermit, Duration> {
        loop {
            let permit = |half_open| ModelPermit {
                generation: self.generation,
                half_open,
                start: self.now,
            };
            match self.state {
                ModelState::Closed => return Ok(permit(false)),
                ModelState::Open { until } if self.now < until => return Err(until - self.now),
                ModelState::Open { .. } => self.enter(ModelState::HalfOpen),
                ModelState::HalfOpen if self.probes_left > 0 => {
                    self.probes_left -= 1;
                    return Ok(permit(true));
                }
                ModelState::HalfOpen => return Err(Duration::ZERO),
            }
        }
    }

    fn release(&mut self, permit: ModelPermit) {
        if permit.half_open && permit.generation == self.generation {
            self.probes_left += 1;
        }
    }

    fn record(&mut self, permit: ModelPermit, outcome: u8) {
        if outcome == 2 {
            return self.release(permit);
        }
        if permit.generation != self.generation {
            return;
        }
        let failed = outcome == 1;
        let slow =
            self.now - permit.start >= Duration::from_millis(self.config.slow_call_duration_ms);
        let open = ModelState::Open {
            until: self.now + Duration::from_millis(self.config.open_wait_ms),
        };
        if permit.half_open {
            self.probes.push((failed, slow));
            if self.probes.len() as u32 == self.config.half_open_calls {
                let f = self.probes.iter().filter(|p| p.0).count();
                let s = self.probes.iter().filter(|p| p.1).count();
                let next = if self.exceeds(self.probes.len(), f, s) {
                    open
                } else {
                    ModelState::Closed
                };
                self.enter(next);
            }
            return;
        }
        let second = self.now.as_secs();
        self.window.push_back((second, failed, slow));
        let size = u64::from(self.config.window_size);
        match self.config.window {
            WindowKind::CountBased => {
                while self.window.len() as u64 > size {
                    self.window.pop_front();
                }
            }
            WindowKind::TimeBased => self.window.retain(|(s, _, _)| s + size > second),
        }
        let calls = self.window.len();
        let f = self.window.iter().filter(|c| c.1).count();
        let s = self.window.iter().filter(|c| c.2).count();
        if calls as u32 >= self.config.minimum_calls && self.exceeds(calls, f, s) {
            self.enter(open);
        }
    }

    fn state(&self) -> State {
        match self.state {
            ModelState::Closed => State::Closed,
            ModelState::Open { .. } => State::Open,
            ModelState::HalfOpen => State::HalfOpen,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Start,
    /// Finish the in-flight call at this index (modulo), 0 success, 1 failure, 2 caller error.
    Finish(usize, u8),
    Cancel(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Start),
        4 => (any::<usize>(), 0u8..3).prop_map(|(i, o)| Op::Finish(i, o)),
        1 => any::<usize>().prop_map(Op::Cancel),
        3 => prop_oneof![0u64..50, 0u64..3_000].prop_map(Op::Advance),
    ]
}

fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        any::<bool>(),
        1u32..12,
        1u32..12,
        prop_oneof![Just(100.0), Just(50.0), 1.0f64..=100.0],
        prop_oneof![Just(100.0), 20.0f64..=100.0],
        prop_oneof![Just(200u64), 1u64..2_000],
        1u64..4_000,
        1u32..4,
    )
        .prop_map(
            |(time, size, min, fail, slow, slow_ms, wait, probes)| BreakerConfig {
                window: if time {
                    WindowKind::TimeBased
                } else {
                    WindowKind::CountBased
                },
                window_size: size,
                minimum_calls: if time { min } else { min.min(size) },
                failure_rate_threshold: fail,
                slow_call_rate_threshold: slow,
                slow_call_duration_ms: slow_ms,
                open_wait_ms: wait,
                half_open_calls: probes,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn behaves_like_the_reference_model(config in config(), ops in proptest::collection::vec(op(), 1..150)) {
        prop_assert!(config.validate("P").is_ok());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let start = Instant::now();
            let breaker = CircuitBreaker::new("model", &config);
            let mut model = Model::new(config.clone());
            let mut in_flight: Vec<(Permit, ModelPermit)> = Vec::new();
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Start => match (breaker.try_acquire(), model.acquire()) {
                        (Ok(real), Ok(expected)) => in_flight.push((real, expected)),
                        (Err(ResilienceError::CircuitOpen { retry_after, .. }), Err(wait)) => {
                            prop_assert_eq!(retry_after, wait, "step {}", step);
                        }
                        (real, expected) => prop_assert!(false, "step {}: breaker {:?}, model {:?}", step, real, expected),
                    },
                    Op::Finish(i, outcome) if !in_flight.is_empty() => {
                        let (real, expected) = in_flight.remove(i % in_flight.len());
                        let class = match outcome {
                            0 => None,
                            1 => Some(ErrorClass::Permanent),
                            _ => Some(ErrorClass::CallerError),
                        };
                        breaker.record(real, class);
                        model.record(expected, outcome);
                    }
                    Op::Cancel(i) if !in_flight.is_empty() => {
                        let (real, expected) = in_flight.remove(i % in_flight.len());
                        breaker.release(real);
                        model.release(expected);
                    }
                    Op::Advance(ms) => {
                        advance(MS * ms as u32).await;
                        model.now = start.elapsed();
                    }
                    _ => {}
                }
                prop_assert_eq!(breaker.state(), model.state(), "step {}", step);
            }
            Ok(())
        })?;
    }
}

#[tokio::test(start_paused = true)]
async fn as_a_layer_it_times_calls_that_wait() {
    let config = BreakerConfig {
        slow_call_rate_threshold: 50.0,
        ..small()
    };
    let breaker = CircuitBreaker::new("inventory", &config);
    let svc = breaker
        .layer(AllErrorsTransient)
        .layer(service_fn(|delay: Duration| async move {
            tokio::time::sleep(delay).await;
            Ok::<(), BoxError>(())
        }));
    svc.clone().oneshot(MS * 1_500).await.unwrap();
    svc.clone().oneshot(MS * 1_000).await.unwrap();
    svc.clone().oneshot(MS * 999).await.unwrap();
    assert_eq!(breaker.metrics().slow_call_rate, 200.0 / 3.0);
    svc.clone().oneshot(Duration::ZERO).await.unwrap();
    assert_eq!(
        breaker.state(),
        State::Open,
        "2 of 4 calls took a second or more"
    );
}
