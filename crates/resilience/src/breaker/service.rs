//! The breaker as a tower middleware: [`BreakerLayer`], [`BreakerService`] and its
//! [`BreakerFuture`], which records each call's outcome or hands its permit back when the
//! call is dropped unfinished.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

use super::{CircuitBreaker, Permit};
use crate::classify::{Classifier, classify};
use crate::error::ResilienceError;

/// Guards a service with a [`CircuitBreaker`].
#[derive(Debug, Clone)]
pub struct BreakerLayer<C> {
    pub(super) breaker: CircuitBreaker,
    pub(super) classifier: C,
}

impl<S, C: Clone> Layer<S> for BreakerLayer<C> {
    type Service = BreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service made by [`BreakerLayer`].
///
/// A call's duration (for the slow-call rate) is measured from the first time its future
/// is found waiting, not from `call`: the two differ by the work of one poll, and a call
/// answered without waiting (an in-process service, a cache hit) then costs no clock read.
#[derive(Debug, Clone)]
pub struct BreakerService<S, C> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
}

impl<S, C, Req> Service<Req> for BreakerService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classifier<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BreakerFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.breaker.admit(false) {
            Ok(permit) => BreakerFuture {
                inner: Some(self.inner.call(request)),
                refused: None,
                guard: Some(Guard {
                    breaker: self.breaker.clone(),
                    permit: Some(permit),
                    classifier: self.classifier.clone(),
                }),
            },
            Err(refused) => BreakerFuture {
                inner: None,
                refused: Some(refused.boxed()),
                guard: None,
            },
        }
    }
}

/// Records the call's outcome, or releases its permit if the call is dropped unfinished.
struct Guard<C> {
    breaker: CircuitBreaker,
    permit: Option<Permit>,
    classifier: C,
}

impl<C> Drop for Guard<C> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.release(permit);
        }
    }
}

pin_project! {
    /// The response future of [`BreakerService`].
    pub struct BreakerFuture<F, C> {
        #[pin]
        inner: Option<F>,
        refused: Option<BoxError>,
        guard: Option<Guard<C>>,
    }
}

impl<F, C, T, E> Future for BreakerFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classifier<T>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let refused = this
                .refused
                .take()
                .unwrap_or_else(|| ResilienceError::Throttled.boxed());
            return Poll::Ready(Err(refused));
        };
        let result = match inner.poll(cx) {
            Poll::Ready(result) => result.map_err(Into::into),
            Poll::Pending => {
                // The call waits: start its clock. A call answered on its first poll never
                // waited and is not slow, and costs no clock reads.
                if let Some(permit) = this.guard.as_mut().and_then(|g| g.permit.as_mut()) {
                    permit.waiting();
                }
                return Poll::Pending;
            }
        };
        if let Some(guard) = this.guard
            && let Some(permit) = guard.permit.take()
        {
            let outcome = classify(&guard.classifier, result.as_ref().map_err(|e| &**e));
            guard.breaker.record(permit, outcome);
        }
        Poll::Ready(result)
    }
}
