//! The recommended stack as one service: what [`ClientStack`](crate::ClientStack) builds.
//!
//! Composed from the separate layers ([`ClientStack::layered`](crate::ClientStack::layered)),
//! a call goes through seven nested futures, each owning its share of the downstream's
//! state: a slot counter, a copy of the retry policy and of every service beneath it, a
//! breaker guard. On the per-call benchmark that costs about 1.8x tower's stock timeout +
//! retry pair, and `perf` puts the difference in reference counting and in moving a
//! 320-byte nested future around, not in the work itself.
//!
//! This service runs the same steps in the same order with the same parts: the
//! [`Bulkhead`]'s slots, the [`Deadline`] scopes and [`Expiry`] rules of the timeout layers,
//! the retry rules and the [`RetryBudget`](crate::RetryBudget), the [`CircuitBreaker`], the
//! [`AdaptiveThrottle`] and the hedge's latency window. What changes is the shape:
//! - one `Arc` to all of the downstream's parts per call, not one per layer;
//! - the inner service and the request are cloned only when another attempt may follow;
//! - everything off the fast path (waiting for a slot, timers, backoff, hedging, refusals)
//!   lives in one box allocated the first time it is needed, so a call answered on its first
//!   poll allocates nothing, and its future stays small (128 bytes around a 16-byte inner
//!   future, small enough to be copied inline rather than through `memmove`);
//! - the breaker permit is kept as one word.
//!
//! The separate layers stay for stacks of your own; `tests/stack.rs` runs every client
//! scenario through both shapes.
//!
//! One attempt ("copy": a retry is a new copy, a hedge a second one beside it) is throttle
//! admission, breaker admission, the attempt's deadline (the earlier of its own limit and the
//! call's), the call under that deadline's scope, and the breaker's and throttle's
//! bookkeeping on its outcome. Around the attempts: the call's deadline, retry decisions with
//! backoff, and a timer for the deadline while anything else waits.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Service};

use crate::breaker::{CircuitBreaker, Permit, Ticket};
use crate::bulkhead::{Acquire, Bulkhead, Slot};
use crate::classify::{Classifier, classify};
use crate::deadline::{Deadline, Scoped};
use crate::error::ResilienceError;
use crate::hedge::{HedgeLayer, due_spare};
use crate::retry::{Progress, RetryRules, RetrySafety};
use crate::throttle::AdaptiveThrottle;
use crate::timeout::Expiry;

/// What every call through one stack shares.
pub(crate) struct Parts<C, I> {
    pub(crate) bulkhead: Bulkhead,
    pub(crate) total: Duration,
    pub(crate) attempt: Duration,
    pub(crate) retry: RetryRules<C, I>,
    pub(crate) breaker: CircuitBreaker,
    /// `None` when disabled: nothing to count.
    pub(crate) throttle: Option<AdaptiveThrottle>,
    pub(crate) hedge: HedgeLayer<I>,
}

/// The service a [`ClientStack`](crate::ClientStack) makes around `S`: bulkhead → total
/// timeout → retry → hedge → throttle → breaker → attempt timeout, in one future.
pub struct ClientService<S, C, I> {
    inner: S,
    parts: Arc<Parts<C, I>>,
}

impl<S, C, I> ClientService<S, C, I> {
    pub(crate) fn new(inner: S, parts: Arc<Parts<C, I>>) -> Self {
        Self { inner, parts }
    }
}

impl<S: Clone, C, I> Clone for ClientService<S, C, I> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            parts: self.parts.clone(),
        }
    }
}

impl<S, C, I> fmt::Debug for ClientService<S, C, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientService")
            .field("breaker", &self.parts.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C, I, Req> Service<Req> for ClientService<S, C, I>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classifier<S::Response>,
    I: RetrySafety<Req>,
    Req: Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ClientFuture<S, C, I, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let parts = self.parts.clone();
        if parts.bulkhead.slots.try_take() {
            let (deadline, expiry, now) = start_clock(parts.total);
            // Built where it is returned and filled in place: the future is large enough
            // that an extra copy of it shows in the per-call benchmark.
            let mut future = ClientFuture {
                primary: None,
                call: Call::new(parts, deadline, expiry),
            };
            future.call.counted_slot = true;
            future.primary = future.call.begin(&mut self.inner, request, now);
            return future;
        }
        // The slow path: no slot free. Not started, so the deadline is fixed later.
        let mut call = Call::new(
            parts,
            Deadline::at(Instant::now()),
            Expiry::Deadline(Duration::ZERO),
        );
        let bulkhead = &call.parts.bulkhead;
        if bulkhead.max_wait.is_zero() {
            let full = ResilienceError::BulkheadFull {
                name: bulkhead.name.clone(),
                waited: Duration::ZERO,
            };
            call.slow().refused = Some(full.boxed());
            call.phase = Phase::Refused;
        } else {
            // `inner` was made ready for this call; take it and leave a clone behind, the
            // usual tower move for a call that must wait before using the service.
            let clone = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, clone);
            let wait = SlotWait {
                acquire: Box::pin(Arc::clone(&bulkhead.slots).acquire()),
                timer: Box::pin(tokio::time::sleep(bulkhead.max_wait)),
                started: Instant::now(),
                pending: Some((ready, request)),
            };
            call.slow().wait = Some(wait);
            call.phase = Phase::WaitingForSlot;
        }
        ClientFuture {
            primary: None,
            call,
        }
    }
}

/// Waiting for a bulkhead slot.
struct SlotWait<S, Req> {
    acquire: Acquire,
    timer: Pin<Box<Sleep>>,
    started: Instant,
    pending: Option<(S, Req)>,
}

/// A hedged attempt's state (only when hedging is enabled).
struct Hedging<S, Req>
where
    S: Service<Req>,
{
    primary_start: Instant,
    /// Fires at the hedging delay; `None` once the hedge is sent or not to be sent.
    timer: Option<Pin<Box<Sleep>>>,
    spare: Option<(S, Req)>,
    /// The hedge in flight, with its permit, attempt timer and what that timer means.
    copy: Option<Pin<Box<Scoped<S::Future>>>>,
    permit: Option<Permit>,
    throttled: bool,
    copy_timer: Option<Pin<Box<Sleep>>>,
    expiry: Expiry,
    hedge_start: Instant,
    /// The first copy's error while the other is still running.
    failed: Option<BoxError>,
}

/// What a call needs only off the fast path, allocated the first time it does: the
/// fast path (a slot free, an answer on the first poll) allocates nothing.
struct Slow<S, Req>
where
    S: Service<Req>,
{
    wait: Option<SlotWait<S, Req>>,
    /// The slot, when it was waited for (the bulkhead's guard gives it back on drop).
    slot: Option<Slot>,
    backoff: Option<Pin<Box<Sleep>>>,
    total_timer: Option<Pin<Box<Sleep>>>,
    /// The primary copy's attempt timer.
    attempt_timer: Option<Pin<Box<Sleep>>>,
    /// When the primary copy was first found waiting (for the breaker's slow-call rate).
    attempt_started: Option<Instant>,
    /// The primary copy's error when it was refused before being sent (throttled,
    /// breaker open), or the bulkhead's refusal.
    refused: Option<BoxError>,
    hedging: Option<Hedging<S, Req>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    WaitingForSlot,
    /// The current attempt's copies are running.
    Attempting,
    /// Waiting out the backoff before the next attempt.
    BackingOff,
    /// Waiting for the inner service to be ready for the next attempt.
    Relaunching,
    /// Refused before it started (bulkhead full).
    Refused,
    Done,
}

/// Everything of a call but its primary copy's future (which is pinned). Kept small: it
/// is moved with the future on every call.
struct Call<S, C, I, Req>
where
    S: Service<Req>,
{
    parts: Arc<Parts<C, I>>,
    /// The primary copy's breaker permit (its start time, once it waits, is in `slow`).
    permit: Option<Ticket>,
    deadline: Deadline,
    /// What the call's deadline passing means.
    expiry: Expiry,
    /// A service to clone for the next attempt and a copy of the request, kept only while
    /// another attempt may be made.
    service: Option<S>,
    request: Option<Req>,
    progress: Progress,
    /// Holds a slot taken on the fast path (a bare count, given back through `parts`).
    counted_slot: bool,
    /// The primary copy was admitted by an enabled throttle, which must hear how it ended.
    throttled: bool,
    phase: Phase,
    slow: Option<Box<Slow<S, Req>>>,
}

impl<S, C, I, Req> Drop for Call<S, C, I, Req>
where
    S: Service<Req>,
{
    fn drop(&mut self) {
        self.release_all();
    }
}

pin_project! {
    /// The response future of [`ClientService`].
    pub struct ClientFuture<S, C, I, Req> where S: Service<Req> {
        #[pin]
        primary: Option<Scoped<S::Future>>,
        call: Call<S, C, I, Req>,
    }
}

impl<S, C, I, Req> Call<S, C, I, Req>
where
    S: Service<Req>,
{
    #[inline]
    fn new(parts: Arc<Parts<C, I>>, deadline: Deadline, expiry: Expiry) -> Self {
        Self {
            parts,
            permit: None,
            deadline,
            expiry,
            service: None,
            request: None,
            progress: Progress::default(),
            counted_slot: false,
            throttled: false,
            phase: Phase::Done,
            slow: None,
        }
    }

    /// The off-the-fast-path state, allocated on first use.
    fn slow(&mut self) -> &mut Slow<S, Req> {
        self.slow.get_or_insert_with(|| {
            Box::new(Slow {
                wait: None,
                slot: None,
                backoff: None,
                total_timer: None,
                attempt_timer: None,
                attempt_started: None,
                refused: None,
                hedging: None,
            })
        })
    }

    /// Gives back what the call holds: the permits of copies still in flight (their calls
    /// are cancelled) and the slot.
    #[inline]
    fn release_all(&mut self) {
        if let Some(ticket) = self.permit.take() {
            self.parts.breaker.release(ticket.permit(None));
        }
        if std::mem::take(&mut self.counted_slot) {
            self.parts.bulkhead.slots.give_back();
        }
        if let Some(slow) = self.slow.as_deref_mut() {
            slow.slot = None;
            if let Some(permit) = slow.hedging.as_mut().and_then(|h| h.permit.take()) {
                self.parts.breaker.release(permit);
            }
        }
    }

    /// Ends the call with `result`.
    #[inline]
    fn finish<T>(&mut self, result: Result<T, BoxError>) -> Poll<Result<T, BoxError>> {
        self.release_all();
        self.phase = Phase::Done;
        Poll::Ready(result)
    }
}

impl<S, C, I, Req> Call<S, C, I, Req>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classifier<S::Response>,
    I: RetrySafety<Req>,
    Req: Clone,
{
    /// Starts the call once it holds a slot and its deadline is fixed (at `now`): sends the
    /// first attempt on `service`, which is ready.
    #[inline]
    fn begin(&mut self, service: &mut S, request: Req, now: Instant) -> Option<Scoped<S::Future>> {
        self.request = self.parts.retry.start(&self.progress, &request, now);
        if self.request.is_some() {
            self.service = Some(service.clone());
        }
        self.phase = Phase::Attempting;
        self.attempt(service, request, now)
    }

    /// Sends an attempt's primary copy at `now` and plans its hedge. `None` (with the
    /// refusal kept) when the copy was refused before being sent.
    #[inline]
    fn attempt(
        &mut self,
        service: &mut S,
        request: Req,
        now: Instant,
    ) -> Option<Scoped<S::Future>> {
        if let Some(slow) = self.slow.as_deref_mut() {
            slow.attempt_timer = None;
            slow.attempt_started = None;
        }
        if self.parts.hedge.is_enabled() {
            self.plan_hedge(service, &request, now);
        }
        match send(&self.parts, service, request, now, self.deadline) {
            Ok(sent) => {
                self.permit = Some(sent.permit.ticket());
                self.throttled = sent.throttled;
                Some(sent.future)
            }
            Err(refused) => {
                self.slow().refused = Some(refused);
                None
            }
        }
    }

    /// Arms the hedge for this attempt: a timer at the hedging delay and a spare copy, if
    /// the request is safe to repeat and the delay is known.
    fn plan_hedge(&mut self, service: &S, request: &Req, now: Instant) {
        let parts = &*self.parts;
        let spare = parts
            .retry
            .safety
            .is_retry_safe(request)
            .then(|| parts.hedge.delay_at(now))
            .flatten()
            .map(|delay| {
                (
                    Box::pin(tokio::time::sleep_until(now + delay)),
                    (service.clone(), request.clone()),
                )
            });
        let (timer, spare) = spare.unzip();
        self.slow().hedging = Some(Hedging {
            primary_start: now,
            timer,
            spare,
            copy: None,
            permit: None,
            throttled: false,
            copy_timer: None,
            expiry: Expiry::Deadline(Duration::ZERO),
            hedge_start: now,
            failed: None,
        });
    }

    /// Polls the current attempt: its primary copy and, when hedging, the hedge. Ready with
    /// the first success, or with an error once no copy is left running.
    #[inline]
    fn poll_attempt(
        &mut self,
        mut primary: Pin<&mut Option<Scoped<S::Future>>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, BoxError>> {
        if let Some(slow) = self.slow.as_deref_mut() {
            if let Some(refused) = slow.refused.take() {
                // Refused before it was sent: nothing to record, nothing to hedge.
                slow.hedging = None;
                return Poll::Ready(Err(refused));
            }
            if let Some(hedging) = slow.hedging.as_mut() {
                send_hedge(&self.parts, hedging, self.deadline, cx);
            }
        }

        if let Some(mut future) = primary.as_mut().as_pin_mut() {
            let polled = match future.as_mut().poll(cx) {
                Poll::Ready(result) => Poll::Ready(result.map_err(Into::into)),
                Poll::Pending => {
                    let deadline = future.deadline();
                    // Bound by its own timeout, or by the call's deadline (not stored per
                    // copy: the future is moved on every call, so every byte counts).
                    let expiry = if deadline < self.deadline {
                        Expiry::Attempt(self.parts.attempt)
                    } else {
                        self.expiry
                    };
                    let timer = &mut self.slow().attempt_timer;
                    match expire(timer, deadline, expiry, cx) {
                        Poll::Ready(expired) => Poll::Ready(Err(expired)),
                        Poll::Pending => {
                            // The call waits: start its clock for the slow-call rate.
                            let started = &mut self.slow().attempt_started;
                            if started.is_none() {
                                *started = Some(Instant::now());
                            }
                            Poll::Pending
                        }
                    }
                }
            };
            if let Poll::Ready(result) = polled {
                primary.set(None);
                let started = self
                    .slow
                    .as_deref_mut()
                    .and_then(|slow| slow.attempt_started.take());
                settle(
                    &self.parts,
                    self.permit.take().map(|ticket| ticket.permit(started)),
                    std::mem::take(&mut self.throttled),
                    &result,
                );
                let Some(slow) = self.slow.as_deref_mut() else {
                    return Poll::Ready(result);
                };
                slow.attempt_timer = None;
                let Some(hedging) = slow.hedging.as_mut() else {
                    return Poll::Ready(result);
                };
                hedging.timer = None;
                hedging.spare = None;
                match result {
                    Ok(response) => {
                        self.parts.hedge.record_since(hedging.primary_start);
                        // The primary won: cancel the hedge.
                        hedging.copy = None;
                        if let Some(permit) = hedging.permit.take() {
                            self.parts.breaker.release(permit);
                        }
                        return Poll::Ready(Ok(response));
                    }
                    Err(error) if hedging.copy.is_some() => hedging.failed = Some(error),
                    Err(error) => return Poll::Ready(Err(error)),
                }
            }
        }

        let Some(hedging) = self.slow.as_deref_mut().and_then(|s| s.hedging.as_mut()) else {
            return Poll::Pending;
        };
        if let Some(future) = hedging.copy.as_mut() {
            let polled = match future.as_mut().poll(cx) {
                Poll::Ready(result) => Poll::Ready(result.map_err(Into::into)),
                Poll::Pending => {
                    let deadline = future.deadline();
                    match expire(&mut hedging.copy_timer, deadline, hedging.expiry, cx) {
                        Poll::Ready(expired) => Poll::Ready(Err(expired)),
                        Poll::Pending => {
                            if let Some(permit) = hedging.permit.as_mut() {
                                permit.waiting();
                            }
                            Poll::Pending
                        }
                    }
                }
            };
            if let Poll::Ready(result) = polled {
                hedging.copy = None;
                hedging.copy_timer = None;
                let throttled = std::mem::take(&mut hedging.throttled);
                settle(&self.parts, hedging.permit.take(), throttled, &result);
                match result {
                    Ok(response) => {
                        self.parts.hedge.record_since(hedging.hedge_start);
                        // The hedge won: cancel the primary.
                        primary.set(None);
                        if let Some(ticket) = self.permit.take() {
                            self.parts.breaker.release(ticket.permit(None));
                        }
                        return Poll::Ready(Ok(response));
                    }
                    Err(error) if primary.is_some() => hedging.failed = Some(error),
                    Err(error) => return Poll::Ready(Err(error)),
                }
            }
        }
        if primary.is_none() && hedging.copy.is_none() {
            let error = hedging
                .failed
                .take()
                .unwrap_or_else(|| "hedged attempt polled after completion".into());
            return Poll::Ready(Err(error));
        }
        Poll::Pending
    }
}

/// Sends the hedge when its timer fires, if the service is ready and the budget allows
/// (the hedge layer's rule, [`due_spare`]).
fn send_hedge<S, C, I, Req>(
    parts: &Parts<C, I>,
    hedging: &mut Hedging<S, Req>,
    deadline: Deadline,
    cx: &mut Context<'_>,
) where
    S: Service<Req>,
{
    let Some((mut service, request)) = due_spare(
        &mut hedging.timer,
        &mut hedging.spare,
        &parts.retry.budget,
        cx,
    ) else {
        return;
    };
    let now = Instant::now();
    hedging.hedge_start = now;
    match send(parts, &mut service, request, now, deadline) {
        Ok(sent) => {
            hedging.copy = Some(Box::pin(sent.future));
            hedging.permit = Some(sent.permit);
            hedging.throttled = sent.throttled;
            hedging.expiry = sent.expiry;
        }
        // Refused before it was sent: it failed while the primary runs.
        Err(refused) => hedging.failed = Some(refused),
    }
}

/// Reads the clock (unless a layer above just did) and fixes the call's deadline: the
/// earlier of `total` from now and the caller's own.
#[inline]
fn start_clock(total: Duration) -> (Deadline, Expiry, Instant) {
    let (inherited, now) = Deadline::current_scope();
    let now = now.unwrap_or_else(Instant::now);
    let (deadline, expiry) = Expiry::plan(inherited, now, total, true);
    (deadline, expiry, now)
}

/// A copy on its way.
struct Sent<F> {
    future: Scoped<F>,
    permit: Permit,
    throttled: bool,
    expiry: Expiry,
}

/// Sends one copy: throttle and breaker admission, then the call under the attempt's
/// deadline (the earlier of the attempt timeout from `now` and `deadline`).
#[inline(always)]
fn send<S, C, I, Req>(
    parts: &Parts<C, I>,
    service: &mut S,
    request: Req,
    now: Instant,
    deadline: Deadline,
) -> Result<Sent<S::Future>, BoxError>
where
    S: Service<Req>,
{
    let throttled = match &parts.throttle {
        Some(throttle) if !throttle.admit() => return Err(ResilienceError::Throttled.boxed()),
        Some(_) => true,
        None => false,
    };
    let permit = match parts.breaker.admit(false) {
        Ok(permit) => permit,
        Err(refused) => {
            // A refusal is the caller's side, not the downstream's: the throttle counts it
            // as accepted, as its layer does.
            if throttled && let Some(throttle) = &parts.throttle {
                throttle.accepted();
            }
            return Err(refused.boxed());
        }
    };
    let (deadline, expiry) = Expiry::plan(Some(deadline), now, parts.attempt, false);
    let future = deadline.sync_scope_at(now, || service.call(request));
    Ok(Sent {
        future: deadline.scope_exact(future),
        permit,
        throttled,
        expiry,
    })
}

/// A waiting copy's attempt timer (created on first use): ready with the timeout's error
/// once it fires.
fn expire(
    timer: &mut Option<Pin<Box<Sleep>>>,
    deadline: Deadline,
    expiry: Expiry,
    cx: &mut Context<'_>,
) -> Poll<BoxError> {
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.instant())));
    ready!(timer.as_mut().poll(cx));
    Poll::Ready(expiry.error().boxed())
}

/// Tells the breaker and the throttle how a copy ended.
#[inline(always)]
fn settle<C, I, T>(
    parts: &Parts<C, I>,
    permit: Option<Permit>,
    throttled: bool,
    result: &Result<T, BoxError>,
) where
    C: Classifier<T>,
{
    let class = classify(&parts.retry.classifier, result.as_ref().map_err(|e| &**e));
    if let Some(permit) = permit {
        parts.breaker.record(permit, class);
    }
    if throttled
        && let Some(throttle) = &parts.throttle
        && !class.is_some_and(|class| class.is_transient())
    {
        throttle.accepted();
    }
}

impl<S, C, I, Req> Future for ClientFuture<S, C, I, Req>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classifier<S::Response>,
    I: RetrySafety<Req>,
    Req: Clone,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut primary = this.primary;
        let call = this.call;
        loop {
            match call.phase {
                Phase::Attempting => {
                    let mut result = match call.poll_attempt(primary.as_mut(), cx) {
                        Poll::Ready(result) => result,
                        Poll::Pending => break,
                    };
                    if call.request.is_some()
                        && let Some(delay) = call.parts.retry.after(
                            &mut call.progress,
                            &mut result,
                            Some(call.deadline),
                        )
                    {
                        call.slow().backoff = Some(Box::pin(tokio::time::sleep(delay)));
                        call.phase = Phase::BackingOff;
                        continue;
                    }
                    return call.finish(result);
                }
                Phase::BackingOff => {
                    if let Some(backoff) = call.slow().backoff.as_mut()
                        && backoff.as_mut().poll(cx).is_pending()
                    {
                        break;
                    }
                    call.slow().backoff = None;
                    call.phase = Phase::Relaunching;
                }
                Phase::Relaunching => {
                    let Some(service) = call.service.as_mut() else {
                        return call.finish(Err("no service kept for a retry".into()));
                    };
                    match service.poll_ready(cx) {
                        Poll::Pending => break,
                        Poll::Ready(Err(error)) => return call.finish(Err(error.into())),
                        Poll::Ready(Ok(())) => {}
                    }
                    // Call the service that was made ready; keep a clone for the attempt
                    // after this one.
                    let mut ready = service.clone();
                    std::mem::swap(service, &mut ready);
                    let Some(request) = call.request.take() else {
                        return call.finish(Err("no request kept for a retry".into()));
                    };
                    call.request = call.parts.retry.copy(&call.progress, &request);
                    if call.request.is_none() {
                        call.service = None;
                    }
                    call.phase = Phase::Attempting;
                    let launched = call.attempt(&mut ready, request, Instant::now());
                    primary.set(launched);
                }
                Phase::WaitingForSlot => {
                    let Some(wait) = call.slow().wait.as_mut() else {
                        return call.finish(Err("bulkhead wait lost its request".into()));
                    };
                    match wait.acquire.as_mut().poll(cx) {
                        Poll::Ready(slot) => {
                            let pending = wait.pending.take();
                            let slow = call.slow();
                            slow.wait = None;
                            slow.slot = Some(slot);
                            let Some((mut service, request)) = pending else {
                                return call.finish(Err("bulkhead wait lost its request".into()));
                            };
                            let (deadline, expiry, now) = start_clock(call.parts.total);
                            call.deadline = deadline;
                            call.expiry = expiry;
                            let launched = call.begin(&mut service, request, now);
                            primary.set(launched);
                        }
                        Poll::Pending => {
                            ready!(wait.timer.as_mut().poll(cx));
                            let waited = wait.started.elapsed();
                            let full = ResilienceError::BulkheadFull {
                                name: call.parts.bulkhead.name.clone(),
                                waited,
                            };
                            return call.finish(Err(full.boxed()));
                        }
                    }
                }
                Phase::Refused => {
                    let refused = call
                        .slow()
                        .refused
                        .take()
                        .unwrap_or_else(|| ResilienceError::Throttled.boxed());
                    return call.finish(Err(refused));
                }
                Phase::Done => {
                    return Poll::Ready(Err("client call polled after completion".into()));
                }
            }
        }
        // Something waits: the call's deadline bounds it all (as the total timeout layer).
        let deadline = call.deadline;
        let timer = call
            .slow()
            .total_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.instant())));
        ready!(timer.as_mut().poll(cx));
        primary.set(None);
        let expired = call.expiry.error().boxed();
        call.finish(Err(expired))
    }
}
