//! Serving a service's public HTTP API the one way every HTTP service here does: bound
//! before start-up is declared complete, with each connection's peer address available to
//! the handlers, request heads over [`MAX_REQUEST_HEAD_BYTES`] refused as problem+json, and
//! drained when the lifecycle stops serving.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use faultline_problem::{Problem, ProblemType};

use crate::lifecycle::Lifecycle;

/// The largest request line plus headers a handler is shown: 32 KiB, the total nginx
/// allows by default (four 8 KiB buffers), four times the largest bearer token the edge
/// accepts (8 KiB), so no legitimate request comes near it.
///
/// Beyond it the answer is a 431 problem document. Beyond hyper's own read buffer (about
/// 400 KB) the request never becomes a request: hyper answers a bare 431 and closes the
/// connection, as it does for any head it cannot parse. That line can move (a larger
/// buffer) but not go away, and every byte of buffer is memory an attacker may hold per
/// connection, so it stays where hyper puts it.
pub const MAX_REQUEST_HEAD_BYTES: usize = 32 * 1024;

/// Refuses a request whose head is over [`MAX_REQUEST_HEAD_BYTES`] before anything else
/// reads it (authentication included: a 64 KiB token is not worth verifying).
pub async fn refuse_large_heads(request: Request, next: Next) -> Response {
    let size = head_size(&request);
    if size > MAX_REQUEST_HEAD_BYTES {
        return Problem::new(
            ProblemType::HeadersTooLarge,
            format!(
                "the request line and headers take {size} bytes; at most \
                 {MAX_REQUEST_HEAD_BYTES} are accepted"
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// Bytes of the head as sent on HTTP/1.1: `METHOD target HTTP/1.1\r\n` and `name: value\r\n`
/// per header. Counted from the parts, without rendering the URI: this runs on every request.
fn head_size(request: &Request) -> usize {
    let uri = request.uri();
    let target = uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = request.method().as_str().len() + target + 11;
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + headers
}

/// Why the HTTP server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The server failed while serving.
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Serves `app` on `listen` until [`Lifecycle::serving`] is cancelled and the requests in
/// flight have finished; marks start-up complete once it listens.
pub async fn serve(life: &Lifecycle, listen: SocketAddr, app: Router) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ServeError::Bind(listen, e))?;
    life.started();
    tracing::info!(%listen, "serving HTTP");
    let drain = life.serving();
    let app = app.layer(middleware::from_fn(refuse_large_heads));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { drain.cancelled().await })
    .await
    .map_err(ServeError::Serve)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use http::{Request, StatusCode, header};
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(middleware::from_fn(refuse_large_heads))
    }

    fn with_headers(count: usize, each: usize) -> Request<Body> {
        let mut request = Request::get("/");
        for n in 0..count {
            request = request.header(format!("x-pad-{n}"), "v".repeat(each));
        }
        request.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_head_under_the_limit_reaches_the_handler() {
        let answer = app().oneshot(with_headers(3, 8 * 1024)).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn many_small_headers_over_the_limit_get_a_431_problem() {
        // No single header is large; together they are.
        let answer = app().oneshot(with_headers(40, 1024)).await.unwrap();
        assert_eq!(answer.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(
            answer.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
