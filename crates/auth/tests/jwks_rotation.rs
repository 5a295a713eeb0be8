//! Key rotation and unknown-`kid` refreshes against a JWKS served over real HTTP by a local
//! server, so the fetch path (client, status, body cap) is the one production uses.

#![allow(clippy::unwrap_used)] // integration tests: a failure should stop loudly

#[path = "support/env.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use faultline_auth::dev::{SigningKey, TokenSpec, jwks_json};
use faultline_auth::{JwtVerifier, TokenError};
use futures_util::future::join_all;
use http::StatusCode;
use jsonwebtoken::Algorithm;
use support::{bearer, router, send, settings};

/// A JWKS endpoint whose document the test changes, counting how often it is read.
struct Provider {
    url: String,
    document: Arc<Mutex<(StatusCode, String)>>,
    reads: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Provider {
    async fn start(keys: &[&SigningKey]) -> Self {
        type Shared = (Arc<Mutex<(StatusCode, String)>>, Arc<AtomicUsize>);
        async fn jwks(State((document, reads)): State<Shared>) -> (StatusCode, String) {
            reads.fetch_add(1, Ordering::SeqCst);
            document.lock().unwrap().clone()
        }
        let document = Arc::new(Mutex::new((StatusCode::OK, jwks_json(keys))));
        let reads = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .with_state((document.clone(), reads.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            document,
            reads,
            server,
        }
    }

    fn publish(&self, keys: &[&SigningKey]) {
        *self.document.lock().unwrap() = (StatusCode::OK, jwks_json(keys));
    }

    fn answer(&self, status: StatusCode, body: &str) {
        *self.document.lock().unwrap() = (status, body.to_owned());
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    /// A verifier reading this provider; an unknown kid may cause one read an hour.
    async fn verifier(&self) -> JwtVerifier {
        let mut settings = settings(&self.url);
        settings.min_refresh_interval_secs = 3600;
        settings.validate("TEST_AUTH").unwrap();
        JwtVerifier::new(settings).await.unwrap()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn token(key: &SigningKey, subject: &str) -> String {
    key.mint(&TokenSpec::new(&settings("unused"), subject))
        .unwrap()
}

fn key() -> SigningKey {
    SigningKey::generate(Algorithm::ES256).unwrap()
}

#[tokio::test]
async fn rotation_accepts_both_keys_during_the_overlap_and_drops_the_old_one_after() {
    let (old, new) = (key(), key());
    let provider = Provider::start(&[&old]).await;
    let verifier = provider.verifier().await;
    let app = router(verifier.clone());
    let (old_token, new_token) = (token(&old, "alice"), token(&new, "bob"));
    assert_eq!(verifier.verify(&old_token).await.unwrap().subject, "alice");

    // The provider starts publishing the new key next to the old one.
    provider.publish(&[&old, &new]);
    verifier.refresh().await.unwrap();
    assert_eq!(verifier.verify(&old_token).await.unwrap().subject, "alice");
    assert_eq!(verifier.verify(&new_token).await.unwrap().subject, "bob");

    // The old key leaves the set: tokens it signed stop verifying at the next refresh, even
    // though the old token was verified (and cached) before.
    provider.publish(&[&new]);
    verifier.refresh().await.unwrap();
    assert_eq!(verifier.key_ids(), vec![new.kid().to_owned()]);
    assert_eq!(
        verifier.verify(&old_token).await,
        Err(TokenError::UnknownKey)
    );
    let answer = send(&app, "GET", "/v1/whoami", Some(&bearer(&old_token))).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = send(&app, "GET", "/v1/whoami", Some(&bearer(&new_token))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "bob");
}

#[tokio::test]
async fn an_unknown_kid_is_fetched_once_when_it_first_appears() {
    let (first, second) = (key(), key());
    let provider = Provider::start(&[&first]).await;
    let verifier = provider.verifier().await;
    assert_eq!(provider.reads(), 1);

    // The provider rotated before our scheduled refresh: the first token with the new kid
    // makes the verifier read the set again, and it verifies.
    provider.publish(&[&first, &second]);
    assert_eq!(
        verifier
            .verify(&token(&second, "carol"))
            .await
            .unwrap()
            .subject,
        "carol"
    );
    assert_eq!(provider.reads(), 2);
    // Known from now on: no more reads.
    verifier.verify(&token(&second, "carol")).await.unwrap();
    assert_eq!(provider.reads(), 2);
}

#[tokio::test]
async fn forged_kids_cause_at_most_one_read_per_interval() {
    let genuine = key();
    let provider = Provider::start(&[&genuine]).await;
    let verifier = provider.verifier().await;
    assert_eq!(provider.reads(), 1);

    // Fifty concurrent tokens, each with a kid nobody published.
    let forgers: Vec<SigningKey> = (0..50).map(|_| key()).collect();
    let tokens: Vec<String> = forgers.iter().map(|k| token(k, "mallory")).collect();
    let results = join_all(tokens.iter().map(|t| verifier.verify(t))).await;
    assert!(results.iter().all(|r| *r == Err(TokenError::UnknownKey)));
    assert_eq!(provider.reads(), 2, "one read for all of them");

    // Within the interval even a genuinely new key waits for the scheduled refresh: that is
    // the price of the limit, and why the schedule exists.
    let rotated = key();
    provider.publish(&[&genuine, &rotated]);
    assert_eq!(
        verifier.verify(&token(&rotated, "dave")).await,
        Err(TokenError::UnknownKey)
    );
    assert_eq!(provider.reads(), 2);
    verifier.refresh().await.unwrap();
    assert_eq!(provider.reads(), 3);
    assert_eq!(
        verifier
            .verify(&token(&rotated, "dave"))
            .await
            .unwrap()
            .subject,
        "dave"
    );
}

#[tokio::test]
async fn a_failing_or_broken_provider_leaves_the_keys_in_force() {
    let genuine = key();
    let provider = Provider::start(&[&genuine]).await;
    let verifier = provider.verifier().await;
    let genuine_token = token(&genuine, "erin");
    for (status, body) in [
        (StatusCode::INTERNAL_SERVER_ERROR, "oops"),
        (StatusCode::OK, "not json"),
        (StatusCode::OK, r#"{"keys": []}"#),
        (
            StatusCode::OK,
            r#"{"keys": [{"kty": "oct", "kid": "x", "k": "c2VjcmV0"}]}"#,
        ),
    ] {
        provider.answer(status, body);
        assert!(verifier.refresh().await.is_err(), "{status} {body}");
        assert_eq!(verifier.key_ids(), vec![genuine.kid().to_owned()]);
        assert_eq!(
            verifier.verify(&genuine_token).await.unwrap().subject,
            "erin"
        );
    }
    // A document over the size cap is refused too.
    provider.answer(StatusCode::OK, &" ".repeat(2 * 1024 * 1024));
    assert!(verifier.refresh().await.is_err());
    assert_eq!(
        verifier.verify(&genuine_token).await.unwrap().subject,
        "erin"
    );
}
