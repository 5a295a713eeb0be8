//! Bulkheads: at most N calls in flight per downstream (or per tenant), with a bounded wait.
//!
//! tower's `ConcurrencyLimit` waits for a slot for as long as it takes, in `poll_ready`,
//! and only for one pool. A bulkhead must fail after a bounded wait (a caller holding a
//! request for seconds is an outage of its own) and may partition by key, so it is written
//! here. Slots are an atomic counter (taking and returning one is a single atomic
//! operation; tokio's `Semaphore` locks its waiter list on every release, which showed up
//! as most of this layer's cost), with a tokio `Notify` for the callers that wait. A slot
//! is taken in `call`: when one is free the inner
//! service is called at once; otherwise the future waits up to `max_wait_ms`, then fails
//! with [`ResilienceError::BulkheadFull`]. The slot is held until the response future
//! completes or is dropped.
//!
//! [`KeyedBulkhead`] gives each key (tenant, customer, ...) its own pool of
//! `max_concurrent`, so one tenant's burst cannot take every slot. Idle keys are pruned as
//! the map grows, so memory follows the number of busy keys, not of keys ever seen.

mod keyed;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer, Service};

use crate::error::ResilienceError;
use faultline_settings::{SettingError, positive};

pub use keyed::{KeyedBulkhead, KeyedBulkheadService};

/// Bulkhead settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkheadConfig {
    /// Calls in flight at once (per key, for a keyed bulkhead)
    /// (`..__BULKHEAD__MAX_CONCURRENT`). Default 64.
    pub max_concurrent: u32,
    /// How long a call may wait for a slot; 0 rejects at once
    /// (`..__BULKHEAD__MAX_WAIT_MS`). Default 50.
    pub max_wait_ms: u64,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 64,
            max_wait_ms: 50,
        }
    }
}

impl BulkheadConfig {
    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self, path: &str) -> Result<(), SettingError> {
        positive(path, "MAX_CONCURRENT", u64::from(self.max_concurrent))?;
        Ok(())
    }
}

/// A counting semaphore whose uncontended path is one atomic operation.
#[derive(Debug)]
pub(crate) struct Slots {
    available: AtomicUsize,
    /// Callers waiting in [`Slots::acquire`]; releases notify only when there are some.
    waiting: AtomicUsize,
    notify: Notify,
}

impl Slots {
    fn new(count: usize) -> Arc<Self> {
        Arc::new(Self {
            available: AtomicUsize::new(count),
            waiting: AtomicUsize::new(0),
            notify: Notify::new(),
        })
    }

    #[inline]
    pub(crate) fn try_take(&self) -> bool {
        self.available
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    #[inline]
    pub(crate) fn give_back(&self) {
        // SeqCst on both sides (here and in `acquire`): either this release sees the
        // waiter's registration, or the waiter's retry sees this slot.
        self.available.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
    }

    /// Waits for a slot (cancel by dropping; the timeout lives in the caller).
    pub(crate) async fn acquire(self: Arc<Self>) -> Slot {
        struct Registered<'a>(&'a AtomicUsize);
        impl Drop for Registered<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _registered = {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            Registered(&self.waiting)
        };
        loop {
            let notified = self.notify.notified();
            if self.try_take() {
                break;
            }
            notified.await;
        }
        drop(_registered);
        Slot(self)
    }

    fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        self.try_take().then(|| Slot(self.clone()))
    }
}

/// A taken slot, returned on drop.
pub(crate) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

impl Slots {
    fn available(&self) -> usize {
        self.available.load(Ordering::Relaxed)
    }
}

/// A bulkhead for one downstream; clones (and every service made by its layer) share slots.
#[derive(Debug, Clone)]
pub struct Bulkhead {
    pub(crate) name: Arc<str>,
    pub(crate) slots: Arc<Slots>,
    pub(crate) max_wait: Duration,
}

impl Bulkhead {
    /// A bulkhead called `name` with validated `config`.
    pub fn new(name: &str, config: &BulkheadConfig) -> Self {
        Self {
            name: name.into(),
            slots: Slots::new(config.max_concurrent as usize),
            max_wait: Duration::from_millis(config.max_wait_ms),
        }
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.slots.available()
    }
}

impl<S> Layer<S> for Bulkhead {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService {
            inner,
            bulkhead: self.clone(),
        }
    }
}

/// The service made by [`Bulkhead`].
#[derive(Debug, Clone)]
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
}

impl<S, Req> Service<Req> for BulkheadService<S>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BulkheadFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let Bulkhead {
            name,
            slots,
            max_wait,
        } = &self.bulkhead;
        enter(&mut self.inner, request, name, slots, *max_wait)
    }
}

/// Calls `inner` now if `slots` has one free, or returns a future that waits for one.
fn enter<S, Req>(
    inner: &mut S,
    request: Req,
    name: &Arc<str>,
    slots: &Arc<Slots>,
    max_wait: Duration,
) -> BulkheadFuture<S, Req>
where
    S: Service<Req> + Clone,
{
    match slots.try_acquire() {
        Some(slot) => BulkheadFuture {
            state: Phase::Running {
                future: inner.call(request),
                _slot: slot,
            },
        },
        None if max_wait.is_zero() => BulkheadFuture {
            state: Phase::Full {
                error: Some(ResilienceError::BulkheadFull {
                    name: name.clone(),
                    waited: Duration::ZERO,
                }),
            },
        },
        None => {
            // `inner` was made ready for this call; take it and leave a clone behind, the
            // usual tower move for a call that must wait before using the service.
            let clone = inner.clone();
            let ready = std::mem::replace(inner, clone);
            BulkheadFuture {
                state: Phase::Waiting {
                    acquire: Box::pin(Arc::clone(slots).acquire()),
                    timer: Box::pin(tokio::time::sleep(max_wait)),
                    started: Instant::now(),
                    name: name.clone(),
                    pending: Some(Box::new((ready, request))),
                },
            }
        }
    }
}

pub(crate) type Acquire = Pin<Box<dyn Future<Output = Slot> + Send>>;

pin_project! {
    /// The response future of the bulkhead services.
    pub struct BulkheadFuture<S, Req> where S: Service<Req> {
        #[pin]
        state: Phase<S, Req>,
    }
}

pin_project! {
    #[project = PhaseProj]
    enum Phase<S, Req> where S: Service<Req> {
        Waiting {
            acquire: Acquire,
            timer: Pin<Box<Sleep>>,
            started: Instant,
            name: Arc<str>,
            // Boxed: the service and request would otherwise make every call's future,
            // fast path included, as large as this rarely taken state.
            pending: Option<Box<(S, Req)>>,
        },
        Running {
            #[pin]
            future: S::Future,
            _slot: Slot,
        },
        Full {
            error: Option<ResilienceError>,
        },
    }
}

impl<S, Req> Future for BulkheadFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                PhaseProj::Running { future, .. } => {
                    return future.poll(cx).map_err(Into::into);
                }
                PhaseProj::Full { error } => {
                    let error = error.take().unwrap_or(ResilienceError::Throttled);
                    return Poll::Ready(Err(error.boxed()));
                }
                PhaseProj::Waiting {
                    acquire,
                    timer,
                    started,
                    name,
                    pending,
                } => {
                    let slot = match acquire.as_mut().poll(cx) {
                        Poll::Ready(slot) => slot,
                        Poll::Pending => {
                            ready!(timer.as_mut().poll(cx));
                            let error = ResilienceError::BulkheadFull {
                                name: name.clone(),
                                waited: started.elapsed(),
                            };
                            this.state.set(Phase::Full { error: Some(error) });
                            continue;
                        }
                    };
                    let Some((mut service, request)) = pending.take().map(|boxed| *boxed) else {
                        return Poll::Ready(Err(ResilienceError::Throttled.boxed()));
                    };
                    let future = service.call(request);
                    this.state.set(Phase::Running {
                        future,
                        _slot: slot,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
