//! Policy decisions in HTTP handlers and routes.
//!
//! Two ways to ask the [`Policy`], for the two kinds of rules:
//!
//! - A rule that needs only the request and the caller ("placing an order needs the scope
//!   `orders:write`") is enforced by [`AuthorizeLayer`] on the route, before the handler and
//!   before anything the handler's other layers do (an idempotency layer claiming a key, say).
//! - A rule that needs the resource ("a customer reads only their own orders") is enforced in
//!   the handler, once it has loaded the resource: take the [`Access`] extractor and call
//!   [`Access::require`] with the resource's owner.
//!
//! A denial answers `403` with an RFC 9457 problem document; when the policy names missing
//! scopes it also carries RFC 6750's `WWW-Authenticate: Bearer error="insufficient_scope"`.
//!
//! The policy's `input.path` is the route axum matched (`/v1/orders/{id}`), not the path
//! requested (`/v1/orders/0190…`): rules are about routes, and the decision for "alice reads
//! her own order" is then the same input, and the same remembered decision, for every one of
//! her orders rather than one evaluation per order id. Without a matched route (a layer
//! outside the router) it is the request's path.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{FromRef, FromRequestParts, MatchedPath};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{Method, Request};
use tower::{Layer, Service};

use crate::Principal;
use crate::edge::{REALM, Unauthenticated, with_challenge};
use crate::policy::{AccessRequest, Decision, Policy, Resource};
use faultline_problem::{Problem, ProblemType};

/// The caller and the policy, for decisions inside a handler. Extract it in any handler
/// behind an [`crate::AuthLayer`] whose state provides the [`Policy`] (`impl FromRef<AppState>
/// for Policy`).
#[derive(Debug, Clone)]
pub struct Access {
    principal: Principal,
    policy: Policy,
    method: Method,
    path: String,
}

impl Access {
    /// Who is asking.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Asks the policy whether this request may access `resource`. The decision is logged.
    pub fn require(&self, resource: &Resource) -> Result<Decision, Forbidden> {
        self.decide(Some(resource))
    }

    /// Asks the policy about this request with no resource (rules on the route alone).
    pub fn require_route(&self) -> Result<Decision, Forbidden> {
        self.decide(None)
    }

    fn decide(&self, resource: Option<&Resource>) -> Result<Decision, Forbidden> {
        let decision = self.policy.decide(&AccessRequest {
            method: self.method.as_str(),
            path: &self.path,
            principal: &self.principal,
            resource,
        });
        if decision.allow {
            Ok(decision)
        } else {
            Err(Forbidden::from(decision))
        }
    }
}

impl<S> FromRequestParts<S> for Access
where
    Policy: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Unauthenticated;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal =
            <Principal as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        Ok(Self {
            principal,
            policy: Policy::from_ref(state),
            method: parts.method.clone(),
            path: policy_path(&parts.extensions, &parts.uri).to_owned(),
        })
    }
}

/// The path the policy sees: the matched route, else the request's path (module docs).
fn policy_path<'a>(extensions: &'a http::Extensions, uri: &'a http::Uri) -> &'a str {
    extensions
        .get::<MatchedPath>()
        .map_or(uri.path(), MatchedPath::as_str)
}

/// A request the policy denied. Answers `403` (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbidden {
    /// The policy's reason, shown as the problem's `detail`.
    pub reason: String,
    /// Scopes the caller lacks, if that is why.
    pub missing_scopes: Vec<String>,
    /// The version of the policy that decided.
    pub policy_version: Arc<str>,
}

impl From<Decision> for Forbidden {
    fn from(decision: Decision) -> Self {
        Self {
            reason: decision.reason,
            missing_scopes: decision.missing_scopes,
            policy_version: decision.policy_version,
        }
    }
}

impl IntoResponse for Forbidden {
    fn into_response(self) -> Response {
        if self.missing_scopes.is_empty() {
            return Problem::new(ProblemType::Forbidden, self.reason).into_response();
        }
        // Scope tokens cannot hold quotes or backslashes (RFC 6749 §3.3); strip any anyway.
        let scopes = self.missing_scopes.join(" ").replace(['"', '\\'], "");
        let challenge = format!(
            "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"the access token lacks a required scope\", scope=\"{scopes}\""
        );
        let response = Problem::new(ProblemType::InsufficientScope, self.reason).into_response();
        with_challenge(response, &challenge)
    }
}

/// Enforces the policy on a route with no resource: put it on routes whose rules need only
/// the request and the caller, inside the [`crate::AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    policy: Policy,
}

impl AuthorizeLayer {
    /// Decides every request with `policy`.
    pub fn new(policy: Policy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = AuthorizeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthorizeService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// See [`AuthorizeLayer`].
#[derive(Debug, Clone)]
pub struct AuthorizeService<S> {
    inner: S,
    policy: Policy,
}

impl<S, B> Service<Request<B>> for AuthorizeService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(principal) = request.extensions().get::<Principal>() else {
            tracing::error!(
                path = request.uri().path(),
                "AuthorizeLayer without an AuthLayer in front"
            );
            return Box::pin(async { Ok(Unauthenticated::Missing.into_response()) });
        };
        let decision = self.policy.decide(&AccessRequest {
            method: request.method().as_str(),
            path: policy_path(request.extensions(), request.uri()),
            principal,
            resource: None,
        });
        if !decision.allow {
            let denied = Forbidden::from(decision).into_response();
            return Box::pin(async { Ok(denied) });
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { inner.call(request).await })
    }
}
