//! Reading the rest of a request body that the handler did not want.
//!
//! A server that answers before it has read the whole body (a 413 for an oversized upload, a
//! 401 before the body is looked at) leaves unread bytes on the socket. hyper then closes the
//! connection, and a close with unread data makes the kernel send a reset: a client that is
//! still sending sees "connection closed before message completed" instead of the answer it
//! was given. So a refusal that RFC 9457 says must be a problem document reaches the client
//! as a network error, now and then, depending on who wins the race.
//!
//! [`DrainBodyLayer`] hands the service a body that, when dropped unfinished, keeps reading
//! the rest in the background and throws it away, up to [`DrainLimits`]. hyper keeps the
//! connection open while someone reads, writes the answer, and the client reads it. Past the
//! limits the body is dropped and the connection closes as before: an unbounded upload is
//! owed no answer. nginx's "lingering close" does the same job at the socket level; no crate
//! of the tower ecosystem does it for hyper, hence this one.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use http::Request;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tower::{Layer, Service};

/// How much of an unwanted body is read before the connection is given up.
#[derive(Debug, Clone, Copy)]
pub struct DrainLimits {
    /// Bytes read past the point where the handler stopped. Default 1 MiB.
    pub max_bytes: usize,
    /// Time spent reading them. Default 5 s.
    pub max_time: Duration,
}

impl Default for DrainLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            max_time: Duration::from_secs(5),
        }
    }
}

/// Wraps a service in [`DrainBody`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DrainBodyLayer {
    limits: DrainLimits,
}

impl DrainBodyLayer {
    /// Drains unwanted bodies up to `limits`.
    pub fn new(limits: DrainLimits) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for DrainBodyLayer {
    type Service = DrainBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DrainBody {
            inner,
            limits: self.limits,
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct DrainBody<S> {
    inner: S,
    limits: DrainLimits,
}

impl<S> Service<Request<Body>> for DrainBody<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let limits = self.limits;
        self.inner.call(request.map(|body| {
            Body::new(Draining {
                body: Some(body),
                limits,
            })
        }))
    }
}

/// The request body as the service sees it: the real one until it is dropped.
struct Draining {
    body: Option<Body>,
    limits: DrainLimits,
}

impl HttpBody for Draining {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        let Some(body) = self.body.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        // Outside a runtime (a test that builds requests by hand) there is no connection
        // to keep open, so there is nothing to drain for.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(discard(body, self.limits));
        }
    }
}

async fn discard(mut body: Body, limits: DrainLimits) {
    let read_rest = async {
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > limits.max_bytes {
                break;
            }
        }
    };
    if tokio::time::timeout(limits.max_time, read_rest)
        .await
        .is_err()
    {
        tracing::debug!("gave up draining an unread request body");
    }
}
