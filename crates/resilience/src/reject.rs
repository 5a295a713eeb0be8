//! The response future of layers that either pass a call on or refuse it on the spot.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::BoxError;

use crate::error::ResilienceError;

pin_project! {
    /// Either the inner service's future, or an immediate refusal.
    pub struct RejectOr<F> {
        #[pin]
        inner: Option<F>,
        refused: Option<BoxError>,
    }
}

impl<F> RejectOr<F> {
    pub(crate) fn admitted(inner: F) -> Self {
        Self {
            inner: Some(inner),
            refused: None,
        }
    }

    pub(crate) fn rejected(refused: ResilienceError) -> Self {
        Self {
            inner: None,
            refused: Some(refused.boxed()),
        }
    }
}

impl<F, T, E> Future for RejectOr<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(inner) => inner.poll(cx).map_err(Into::into),
            None => {
                // Polled again after completion: report the refusal once, then a generic one.
                let refused = this
                    .refused
                    .take()
                    .unwrap_or_else(|| ResilienceError::Throttled.boxed());
                Poll::Ready(Err(refused))
            }
        }
    }
}
