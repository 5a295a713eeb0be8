//! Shared by the integration tests: temporary directories, keys, verifiers and a router
//! with the auth layer in front of a handler that echoes what it was given.

#![allow(dead_code)] // each test file uses a different part
#![allow(clippy::unwrap_used)] // test helpers: a failure should stop the test loudly

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use faultline_auth::dev::{SigningKey, jwks_json};
use faultline_auth::{AuthLayer, JwtSettings, JwtVerifier, Principal};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// A directory under the system's temporary directory, removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = format!(
            "faultline-auth-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Settings with the JWKS at `jwks`; the rest as services default them.
pub(crate) fn settings(jwks: &str) -> JwtSettings {
    JwtSettings {
        jwks: jwks.to_owned(),
        ..JwtSettings::default()
    }
}

/// A verifier trusting `keys`, published in a JWKS file in `dir`.
pub(crate) async fn verifier_for(dir: &TempDir, keys: &[&SigningKey]) -> JwtVerifier {
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks_json(keys)).unwrap();
    JwtVerifier::new(settings(path.to_str().unwrap()))
        .await
        .unwrap()
}

/// A router whose one route answers `200 <subject>` behind the auth layer.
pub(crate) fn router(verifier: JwtVerifier) -> Router {
    async fn whoami(principal: Principal) -> String {
        principal.subject
    }
    Router::new()
        .route("/v1/whoami", get(whoami))
        .layer(AuthLayer::new(verifier))
}

/// What a request got back.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn challenge(&self) -> &str {
        self.headers
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }
}

/// Sends `GET path` with the given `Authorization` value through `router`.
pub(crate) async fn send(
    router: &Router,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// `Bearer <token>`.
pub(crate) fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
