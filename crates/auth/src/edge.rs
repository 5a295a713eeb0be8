//! The HTTP edge: bearer-token authentication as a tower layer, and the [`Principal`]
//! extractor.
//!
//! [`AuthLayer`] reads `Authorization: Bearer <token>` (RFC 6750 §2.1), verifies the token
//! with a [`JwtVerifier`], and puts the [`Principal`] into the request's extensions, where
//! handlers take it as an extractor (`principal: Principal`) and layers behind this one (an
//! idempotency layer scoping its keys, a rate limiter keying its buckets) read it.
//!
//! Every refusal is an RFC 9457 problem document with an RFC 6750 challenge, and never
//! reveals more than the error code:
//!
//! | request | status | `WWW-Authenticate` | problem `type` |
//! |---|---|---|---|
//! | no `Authorization`, or another scheme | 401 | `Bearer realm="…"` | `/problems/unauthenticated` |
//! | a token that fails verification (any reason, including a header over the size cap) | 401 | `Bearer realm="…", error="invalid_token", error_description="…"` | `/problems/invalid-token` |
//! | several `Authorization` headers | 400 | `Bearer realm="…", error="invalid_request", …` | `/problems/invalid-authorization` |
//!
//! The size cap is checked on the raw header before anything else, so an oversized token is
//! refused without being parsed, decoded or hashed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use faultline_problem::{Problem, ProblemType};
use http::request::Parts;
use http::{HeaderValue, Request, header};
use tower::{Layer, Service};

use crate::Principal;
use crate::jwt::{JwtVerifier, TokenError};

/// The `realm` of the challenges.
pub const REALM: &str = "faultline";

/// Puts [`AuthService`] in front of a service. See the module docs.
///
/// Its challenges name the realm [`REALM`] and its problems come from `faultline-problem`'s
/// catalog, as do the 403s of [`crate::AuthorizeLayer`] and [`crate::Access`], so every
/// refusal of one service reads alike.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: JwtVerifier,
}

impl AuthLayer {
    /// Authenticates every request with `verifier`.
    pub fn new(verifier: JwtVerifier) -> Self {
        Self { verifier }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

/// The response future of [`AuthService`]: verification may read the JWKS, so it is async.
pub type ResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

impl<S, B> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone is the one that was not polled ready; keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            match authenticate(&layer.verifier, request.headers()).await {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(refusal) => {
                    if let Unauthenticated::InvalidToken(reason) = &refusal {
                        tracing::info!(%reason, method = %request.method(), path = request.uri().path(), "access token refused");
                    }
                    Ok(refusal.into_response())
                }
            }
        })
    }
}

/// Finds the bearer token among `headers` and verifies it.
pub(crate) async fn authenticate(
    verifier: &JwtVerifier,
    headers: &http::HeaderMap,
) -> Result<Principal, Unauthenticated> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Unauthenticated::Missing);
    };
    if values.next().is_some() {
        return Err(Unauthenticated::InvalidRequest(
            "the request has several Authorization headers",
        ));
    }
    const SCHEME: &[u8] = b"bearer ";
    // Checked first, on the raw bytes: nothing below runs on an oversized header.
    if value.len() > verifier.settings().max_token_bytes + SCHEME.len() {
        return Err(Unauthenticated::InvalidToken(TokenError::TooLarge));
    }
    let bytes = value.as_bytes();
    if bytes.len() < SCHEME.len() || !bytes[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        // Another scheme (Basic, say) is no bearer credential at all (RFC 6750 §3.1).
        return Err(Unauthenticated::Missing);
    }
    let token = trim_leading_spaces(&bytes[SCHEME.len()..]);
    if !is_token68(token) {
        return Err(Unauthenticated::InvalidToken(TokenError::Malformed));
    }
    // token68 is ASCII, so this cannot fail; the error arm keeps it total anyway.
    let token = std::str::from_utf8(token)
        .map_err(|_| Unauthenticated::InvalidToken(TokenError::Malformed))?;
    verifier
        .verify(token)
        .await
        .map_err(Unauthenticated::InvalidToken)
}

fn trim_leading_spaces(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != b' ').unwrap_or(bytes.len());
    &bytes[start..]
}

/// `token68` of RFC 7235 §2.1, the syntax of a bearer token (RFC 6750 §2.1).
fn is_token68(token: &[u8]) -> bool {
    let body = token.iter().position(|b| *b == b'=').unwrap_or(token.len());
    body > 0
        && token[..body]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(b))
        && token[body..].iter().all(|b| *b == b'=')
}

/// Why a request was not authenticated; answers as described in the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unauthenticated {
    /// No bearer credentials.
    Missing,
    /// The token was refused.
    InvalidToken(TokenError),
    /// The request is malformed (RFC 6750 `invalid_request`).
    InvalidRequest(&'static str),
}

impl IntoResponse for Unauthenticated {
    fn into_response(self) -> Response {
        let (kind, challenge, detail) = match self {
            Self::Missing => (
                ProblemType::Unauthenticated,
                format!("Bearer realm=\"{REALM}\""),
                "send an access token as `Authorization: Bearer <token>`".to_owned(),
            ),
            Self::InvalidToken(reason) => {
                // Expiry is worth telling a client (it should get a new token); other
                // reasons would only help someone probing the verifier.
                let description = if reason == TokenError::Expired {
                    "the access token expired"
                } else {
                    "the access token is invalid"
                };
                (
                    ProblemType::InvalidToken,
                    format!(
                        "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{description}\""
                    ),
                    format!("{description}; get a new one and retry"),
                )
            }
            Self::InvalidRequest(why) => (
                ProblemType::InvalidAuthorization,
                format!(
                    "Bearer realm=\"{REALM}\", error=\"invalid_request\", error_description=\"{why}\""
                ),
                why.to_owned(),
            ),
        };
        with_challenge(Problem::new(kind, detail).into_response(), &challenge)
    }
}

/// `response` with the RFC 6750 `WWW-Authenticate` challenge.
pub(crate) fn with_challenge(mut response: Response, challenge: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Unauthenticated;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            // Only a route outside the AuthLayer gets here: a wiring mistake, refused safely.
            tracing::error!(
                path = parts.uri.path(),
                "a handler wants a Principal but no AuthLayer ran"
            );
            Unauthenticated::Missing
        })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    #[test]
    fn token68_syntax() {
        assert!(is_token68(b"eyJhbGciOi.eyJzdWIi.c2ln"));
        assert!(is_token68(b"abc=="));
        assert!(!is_token68(b""));
        assert!(!is_token68(b"=="));
        assert!(!is_token68(b"a b"));
        assert!(!is_token68(b"a=b"));
        assert!(!is_token68(b"a\"b"));
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        let missing = Unauthenticated::Missing.into_response();
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            missing.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"faultline\""
        );
        let expired = Unauthenticated::InvalidToken(TokenError::Expired).into_response();
        assert_eq!(
            expired.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"faultline\", error=\"invalid_token\", error_description=\"the access token expired\""
        );
        let several = Unauthenticated::InvalidRequest("x").into_response();
        assert_eq!(several.status(), StatusCode::BAD_REQUEST);
    }
}
