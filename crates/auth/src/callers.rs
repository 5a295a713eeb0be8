//! Which service may call which gRPC method, decided from the caller's certificate.
//!
//! [`CallerAuthLayer`] goes on a tonic server (`Server::builder().layer(...)`) that serves
//! over [`crate::MtlsIncoming`]. For every call it reads the SPIFFE ID of the client
//! certificate the TLS handshake verified, checks it against [`AllowedCallers`], and answers:
//!
//! - `UNAUTHENTICATED` when the connection has no verified client certificate with a service
//!   identity (a plaintext server by mistake, say);
//! - `PERMISSION_DENIED` when the identity may not call the method, or no rule names the
//!   method at all (deny by default);
//! - otherwise the call goes on, with a [`CallContext`] in its extensions.
//!
//! The end user a call is made for travels as metadata ([`ON_BEHALF_OF`]) for audit only: it
//! is logged and handed to the handler in [`CallContext::on_behalf_of`], marked as asserted
//! by the (authenticated) caller, and never used to decide anything here.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::{HeaderName, Request, Response};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::ServiceId;

/// The metadata key naming the end user a call is made for (audit only).
pub static ON_BEHALF_OF: HeaderName = HeaderName::from_static("x-faultline-on-behalf-of");

/// Longest accepted [`ON_BEHALF_OF`] value; longer ones are dropped.
const MAX_ON_BEHALF_OF: usize = 256;

/// Who may call.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Callers {
    /// Any service of the trust domain (health checks).
    AnyService,
    /// Only these.
    Only(BTreeSet<ServiceId>),
}

/// Per-method allow-lists of caller identities. Methods no rule names are denied to all.
#[derive(Debug, Clone, Default)]
pub struct AllowedCallers {
    /// By full method path, `/faultline.payments.v1.PaymentsService/Authorize`.
    methods: HashMap<String, Callers>,
    /// By service name, `faultline.inventory.v1.InventoryService`.
    services: HashMap<String, Callers>,
}

impl AllowedCallers {
    /// Denies every call until rules are added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets `callers` call the method `path` (`/package.Service/Method`). A method rule
    /// overrides a rule for its whole service.
    pub fn method(mut self, path: &str, callers: impl IntoIterator<Item = ServiceId>) -> Self {
        self.methods.insert(
            path.to_owned(),
            Callers::Only(callers.into_iter().collect()),
        );
        self
    }

    /// Lets `callers` call every method of `service` (`package.Service`).
    pub fn service(mut self, service: &str, callers: impl IntoIterator<Item = ServiceId>) -> Self {
        self.services.insert(
            service.to_owned(),
            Callers::Only(callers.into_iter().collect()),
        );
        self
    }

    /// Lets any service of the server's trust domain call every method of `service`: for
    /// `grpc.health.v1.Health`, say.
    pub fn service_for_any_caller(mut self, service: &str) -> Self {
        self.services
            .insert(service.to_owned(), Callers::AnyService);
        self
    }

    /// Whether `caller` may call the method at `path`.
    pub fn allows(&self, path: &str, caller: &ServiceId) -> bool {
        let rule = self.methods.get(path).or_else(|| {
            let service = path.trim_start_matches('/').rsplit_once('/')?.0;
            self.services.get(service)
        });
        match rule {
            Some(Callers::AnyService) => true,
            Some(Callers::Only(callers)) => callers.contains(caller),
            None => false,
        }
    }
}

/// What a handler learns about an authorized call: `request.extensions().get::<CallContext>()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    /// The calling service, from its verified certificate. Trust this.
    pub caller: ServiceId,
    /// The end user the caller says it acts for ([`ON_BEHALF_OF`]). Asserted by the caller,
    /// not verified here: for audit logs, never for decisions.
    pub on_behalf_of: Option<String>,
}

/// Adds the end user a call is made for to an outgoing request (see [`ON_BEHALF_OF`]).
/// Values that are not visible ASCII or are too long are not sent.
pub fn set_on_behalf_of<T>(request: &mut tonic::Request<T>, subject: &str) {
    if subject.len() <= MAX_ON_BEHALF_OF
        && let Ok(value) = subject.parse()
    {
        request.metadata_mut().insert(ON_BEHALF_OF.as_str(), value);
    }
}

/// Puts [`CallerAuthService`] in front of a tonic server's routes. See the module docs.
#[derive(Debug, Clone)]
pub struct CallerAuthLayer {
    allowed: Arc<AllowedCallers>,
}

impl CallerAuthLayer {
    /// Authorizes calls by `allowed`.
    pub fn new(allowed: AllowedCallers) -> Self {
        Self {
            allowed: Arc::new(allowed),
        }
    }
}

impl<S> Layer<S> for CallerAuthLayer {
    type Service = CallerAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallerAuthService {
            inner,
            allowed: self.allowed.clone(),
        }
    }
}

/// See [`CallerAuthLayer`].
#[derive(Debug, Clone)]
pub struct CallerAuthService<S> {
    inner: S,
    allowed: Arc<AllowedCallers>,
}

type Refusal<E> = Ready<Result<Response<tonic::body::Body>, E>>;

impl<S, B> Service<Request<B>> for CallerAuthService<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Refusal<S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        let Some(caller) = peer_identity(&request) else {
            tracing::info!(
                method = path,
                "gRPC call without a verified service identity refused"
            );
            let status = Status::unauthenticated(
                "a client certificate carrying a service identity is required",
            );
            return Either::Right(ready(Ok(status.into_http())));
        };
        let on_behalf_of = on_behalf_of(&request);
        if !self.allowed.allows(path, &caller) {
            tracing::info!(method = path, %caller, on_behalf_of = on_behalf_of.as_deref(), "gRPC call denied");
            let status = Status::permission_denied(format!("{caller} may not call {path}"));
            return Either::Right(ready(Ok(status.into_http())));
        }
        tracing::debug!(method = path, %caller, on_behalf_of = on_behalf_of.as_deref(), "gRPC call allowed");
        request.extensions_mut().insert(CallContext {
            caller,
            on_behalf_of,
        });
        Either::Left(self.inner.call(request))
    }
}

/// The SPIFFE ID of the client certificate the TLS handshake verified.
fn peer_identity<B>(request: &Request<B>) -> Option<ServiceId> {
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certificates = info.peer_certs()?;
    ServiceId::from_certificate(certificates.first()?).ok()
}

fn on_behalf_of<B>(request: &Request<B>) -> Option<String> {
    let value = request.headers().get(&ON_BEHALF_OF)?;
    if value.len() > MAX_ON_BEHALF_OF {
        return None;
    }
    let text = value.to_str().ok()?;
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(service: &str) -> ServiceId {
        ServiceId::faultline(service).unwrap()
    }

    #[test]
    fn method_rules_override_service_rules_and_the_rest_is_denied() {
        let allowed = AllowedCallers::new()
            .service(
                "faultline.payments.v1.PaymentsService",
                [id("checkout"), id("ops")],
            )
            .method(
                "/faultline.payments.v1.PaymentsService/Authorize",
                [id("checkout")],
            )
            .service_for_any_caller("grpc.health.v1.Health");
        let authorize = "/faultline.payments.v1.PaymentsService/Authorize";
        assert!(allowed.allows(authorize, &id("checkout")));
        assert!(!allowed.allows(authorize, &id("ops")));
        assert!(allowed.allows("/faultline.payments.v1.PaymentsService/Other", &id("ops")));
        assert!(allowed.allows("/grpc.health.v1.Health/Check", &id("inventory")));
        assert!(!allowed.allows(
            "/faultline.inventory.v1.InventoryService/GetProducts",
            &id("checkout")
        ));
        assert!(!allowed.allows("nonsense", &id("checkout")));
    }

    #[test]
    fn on_behalf_of_is_only_sent_when_well_formed() {
        let mut request = tonic::Request::new(());
        set_on_behalf_of(&mut request, "alice");
        assert_eq!(
            request.metadata().get(ON_BEHALF_OF.as_str()).unwrap(),
            "alice"
        );
        let mut request = tonic::Request::new(());
        set_on_behalf_of(&mut request, "bad\nvalue");
        assert!(request.metadata().get(ON_BEHALF_OF.as_str()).is_none());
    }
}
