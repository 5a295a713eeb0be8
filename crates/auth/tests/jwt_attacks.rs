//! The JWT attack suite, through a real axum router with the auth layer: every forged,
//! stale, misdirected or oversized token gets `401 invalid_token` as a problem document,
//! never a 5xx and never the handler.

#![allow(clippy::unwrap_used)] // integration tests: a failure should stop loudly

#[path = "support/env.rs"]
mod support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use faultline_auth::TokenError;
use faultline_auth::dev::{SigningKey, TokenSpec};
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::time::Duration;
use support::{Answer, TempDir, bearer, router, send, settings, verifier_for};

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

struct Keys {
    rsa: SigningKey,
    ec: SigningKey,
    ed: SigningKey,
}

fn keys() -> Keys {
    Keys {
        rsa: SigningKey::generate(Algorithm::RS256).unwrap(),
        ec: SigningKey::generate(Algorithm::ES256).unwrap(),
        ed: SigningKey::generate(Algorithm::EdDSA).unwrap(),
    }
}

/// A header as an access token has it (`typ: at+jwt`), for the tests to alter.
fn at_header(algorithm: Algorithm) -> Header {
    let mut header = Header::new(algorithm);
    header.typ = Some("at+jwt".into());
    header
}

fn spec(subject: &str) -> TokenSpec {
    TokenSpec::new(&settings("unused"), subject).scopes(&["orders:read"])
}

fn assert_invalid_token(answer: &Answer, token: &str, case: &str) {
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "{case}: {}",
        answer.body
    );
    assert!(
        answer
            .challenge()
            .starts_with("Bearer realm=\"faultline\", error=\"invalid_token\""),
        "{case}: {}",
        answer.challenge()
    );
    assert_eq!(
        answer.headers[http::header::CONTENT_TYPE],
        "application/problem+json",
        "{case}"
    );
    assert!(
        answer.body.contains("/problems/invalid-token"),
        "{case}: {}",
        answer.body
    );
    if token.len() > 8 {
        assert!(
            !answer.body.contains(token),
            "{case}: the answer echoes the token"
        );
    }
}

#[tokio::test]
async fn valid_tokens_of_every_allowed_algorithm_pass_and_name_the_caller() {
    let dir = TempDir::new("valid");
    let keys = keys();
    let app = router(verifier_for(&dir, &[&keys.rsa, &keys.ec, &keys.ed]).await);
    for key in [&keys.rsa, &keys.ec, &keys.ed] {
        let token = key.mint(&spec("alice")).unwrap();
        let answer = send(&app, "GET", "/v1/whoami", Some(&bearer(&token))).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{:?}: {}",
            key.algorithm(),
            answer.body
        );
        assert_eq!(answer.body, "alice");
    }
    // typ may be the media type, or absent; the scheme is case-insensitive.
    for typ in [Some("application/at+jwt"), None] {
        let mut header = at_header(Algorithm::ES256);
        header.kid = Some(keys.ec.kid().into());
        header.typ = typ.map(str::to_owned);
        let token = keys.ec.sign(&header, &spec("bob").claims()).unwrap();
        let answer = send(&app, "GET", "/v1/whoami", Some(&format!("bearer  {token}"))).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "typ {typ:?}: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn forged_stale_and_misdirected_tokens_are_refused_with_401() {
    let dir = TempDir::new("attacks");
    let keys = keys();
    let verifier = verifier_for(&dir, &[&keys.rsa, &keys.ec]).await;
    let app = router(verifier.clone());
    let good = keys.rsa.mint(&spec("alice")).unwrap();
    let claims = spec("alice").claims();
    let mut cases: Vec<(&str, String, TokenError)> = Vec::new();
    use TokenError::*;

    // alg: none, unsigned, naming a real key.
    let none = json!({"alg": "none", "typ": "at+jwt", "kid": keys.rsa.kid()});
    cases.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(none.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        ),
        Malformed,
    ));

    // Algorithm confusion: HS256 "signed" with the RSA public key as the HMAC secret, in
    // the forms an attacker would try.
    let public = serde_json::to_string(&keys.rsa.public_jwk()).unwrap();
    let modulus = match &keys.rsa.public_jwk().algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::RSA(rsa) => URL_SAFE_NO_PAD.decode(&rsa.n).unwrap(),
        _ => unreachable!(),
    };
    for secret in [public.as_bytes(), &modulus[..]] {
        let mut header = at_header(Algorithm::HS256);
        header.kid = Some(keys.rsa.kid().into());
        header.typ = Some("at+jwt".into());
        let token =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap();
        cases.push(("HS256 with the RSA public key", token, AlgorithmNotAllowed));
    }

    // A token whose alg names RSA but whose kid is the EC key (and the reverse).
    let mut header = at_header(Algorithm::ES256);
    header.kid = Some(keys.rsa.kid().into());
    cases.push((
        "ES256 under an RSA kid",
        keys.ec.sign(&header, &claims).unwrap(),
        KeyAlgorithmMismatch,
    ));
    let mut header = at_header(Algorithm::RS256);
    header.kid = Some(keys.ec.kid().into());
    cases.push((
        "RS256 under an EC kid",
        keys.rsa.sign(&header, &claims).unwrap(),
        KeyAlgorithmMismatch,
    ));

    // Stale tokens: expired an hour ago, valid only in an hour.
    let mut expired = spec("alice");
    expired.backdate = Duration::from_secs(7200);
    cases.push(("expired", keys.rsa.mint(&expired).unwrap(), Expired));
    let mut early = spec("alice");
    early.not_before_in = Duration::from_secs(3600);
    cases.push(("not yet valid", keys.rsa.mint(&early).unwrap(), NotYetValid));

    // Misdirected: another audience, another issuer.
    let mut other_audience = spec("alice");
    other_audience.audience = "payments-admin".into();
    cases.push((
        "wrong aud",
        keys.rsa.mint(&other_audience).unwrap(),
        WrongAudience,
    ));
    let mut other_issuer = spec("alice");
    other_issuer.issuer = "https://evil.example".into();
    cases.push((
        "wrong iss",
        keys.rsa.mint(&other_issuer).unwrap(),
        WrongIssuer,
    ));

    // Tampered: the payload rewritten to another subject, the signature kept.
    let parts: Vec<&str> = good.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["sub"] = "admin".into();
    payload["roles"] = json!(["admin"]);
    cases.push((
        "tampered payload",
        format!(
            "{}.{}.{}",
            parts[0],
            b64(payload.to_string().as_bytes()),
            parts[2]
        ),
        BadSignature,
    ));
    // Tampered signature.
    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    signature[10] ^= 1;
    cases.push((
        "tampered signature",
        format!("{}.{}.{}", parts[0], parts[1], b64(&signature)),
        BadSignature,
    ));

    // Signed by a key the JWKS does not have.
    let stranger = SigningKey::generate(Algorithm::ES256).unwrap();
    cases.push((
        "unknown kid",
        stranger.mint(&spec("alice")).unwrap(),
        UnknownKey,
    ));
    // No kid at all.
    cases.push((
        "no kid",
        keys.ec.sign(&at_header(Algorithm::ES256), &claims).unwrap(),
        MissingKeyId,
    ));

    // Not an access token: an ID token's typ, and a crit header nobody understands.
    let mut header = at_header(Algorithm::ES256);
    header.kid = Some(keys.ec.kid().into());
    header.typ = Some("JWT".into());
    cases.push((
        "typ JWT",
        keys.ec.sign(&header, &claims).unwrap(),
        NotAnAccessToken,
    ));
    let mut header = at_header(Algorithm::ES256);
    header.kid = Some(keys.ec.kid().into());
    header.crit = Some(vec!["exp".into()]);
    cases.push((
        "crit",
        keys.ec.sign(&header, &claims).unwrap(),
        UnsupportedCritical,
    ));

    // Required claims missing, or ill-formed.
    let mut header = at_header(Algorithm::ES256);
    header.kid = Some(keys.ec.kid().into());
    let mut no_sub = claims.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    cases.push((
        "no sub",
        keys.ec.sign(&header, &no_sub).unwrap(),
        MissingClaim,
    ));
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    cases.push((
        "no exp",
        keys.ec.sign(&header, &no_exp).unwrap(),
        MissingClaim,
    ));
    let mut control = claims.clone();
    control["sub"] = "alice\nadmin".into();
    cases.push((
        "control character in sub",
        keys.ec.sign(&header, &control).unwrap(),
        InvalidClaim,
    ));

    // Garbage of every shape.
    cases.push((
        "two parts",
        "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0".into(),
        Malformed,
    ));
    cases.push(("not base64", "a.b.c".into(), Malformed));
    cases.push(("not token68", "abc def".into(), Malformed));

    for (case, token, reason) in &cases {
        // Refused for the reason the case is about, not by accident...
        assert_eq!(verifier.verify(token).await.as_ref(), Err(reason), "{case}");
        // ...and answered as RFC 6750 says, through the real router.
        let answer = send(&app, "GET", "/v1/whoami", Some(&bearer(token))).await;
        assert_invalid_token(&answer, token, case);
    }
}

#[tokio::test]
async fn a_jwks_entry_whose_alg_contradicts_its_key_type_is_never_used() {
    let dir = TempDir::new("mismatch");
    let rsa = SigningKey::generate(Algorithm::RS256).unwrap();
    let ec = SigningKey::generate(Algorithm::ES256).unwrap();
    // The RSA key published as if it were an ES256 key, and a symmetric key.
    let mut lying = serde_json::to_value(rsa.public_jwk()).unwrap();
    lying["alg"] = "ES256".into();
    let symmetric = json!({"kty": "oct", "kid": "hmac", "k": b64(b"secret"), "alg": "HS256"});
    let document = json!({"keys": [lying, symmetric, ec.public_jwk()]});
    let path = dir.join("jwks.json");
    std::fs::write(&path, document.to_string()).unwrap();
    let verifier = faultline_auth::JwtVerifier::new(settings(path.to_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(verifier.key_ids(), vec![ec.kid().to_owned()]);
    let app = router(verifier);

    let rsa_token = rsa.mint(&spec("alice")).unwrap();
    let answer = send(&app, "GET", "/v1/whoami", Some(&bearer(&rsa_token))).await;
    assert_invalid_token(&answer, &rsa_token, "RSA key published as ES256");

    let mut header = at_header(Algorithm::HS256);
    header.kid = Some("hmac".into());
    let hmac = jsonwebtoken::encode(
        &header,
        &spec("alice").claims(),
        &EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    let answer = send(&app, "GET", "/v1/whoami", Some(&bearer(&hmac))).await;
    assert_invalid_token(&answer, &hmac, "HS256 with a published symmetric key");

    let answer = send(
        &app,
        "GET",
        "/v1/whoami",
        Some(&bearer(&ec.mint(&spec("alice")).unwrap())),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn a_one_megabyte_token_is_refused_before_parsing() {
    let dir = TempDir::new("huge");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let verifier = verifier_for(&dir, &[&key]).await;
    // A correctly signed token padded into a megabyte-long claim: only the size limit
    // stands between it and a valid principal, so this fails if the limit goes.
    let mut padded = spec("alice").claims();
    padded["padding"] = "x".repeat(1024 * 1024).into();
    let mut header = at_header(Algorithm::ES256);
    header.kid = Some(key.kid().into());
    let huge_signed = key.sign(&header, &padded).unwrap();
    assert_eq!(
        verifier.verify(&huge_signed).await,
        Err(TokenError::TooLarge)
    );
    let app = router(verifier);
    let answer = send(&app, "GET", "/v1/whoami", Some(&bearer(&huge_signed))).await;
    assert_invalid_token(&answer, &huge_signed, "1 MB token");
}

#[tokio::test]
async fn missing_or_foreign_credentials_get_a_plain_challenge() {
    let dir = TempDir::new("missing");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let app = router(verifier_for(&dir, &[&key]).await);
    for authorization in [
        None,
        Some("Basic YWxpY2U6c2VjcmV0"),
        Some("Bearer"),
        Some(""),
    ] {
        let answer = send(&app, "GET", "/v1/whoami", authorization).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        assert_eq!(
            answer.challenge(),
            "Bearer realm=\"faultline\"",
            "{authorization:?}"
        );
        assert!(
            answer.body.contains("/problems/unauthenticated"),
            "{}",
            answer.body
        );
    }
    // Unknown routes are behind the layer too: nothing is learned without a token.
    let answer = send(&app, "GET", "/v1/secret-admin", None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn several_authorization_headers_are_an_invalid_request() {
    use tower::ServiceExt as _;
    let dir = TempDir::new("several");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let app = router(verifier_for(&dir, &[&key]).await);
    let token = bearer(&key.mint(&spec("alice")).unwrap());
    let request = http::Request::builder()
        .uri("/v1/whoami")
        .header(http::header::AUTHORIZATION, &token)
        .header(http::header::AUTHORIZATION, &token)
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let challenge = response.headers()[http::header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap();
    assert!(
        challenge.contains("error=\"invalid_request\""),
        "{challenge}"
    );
}
