//! Authentication and authorization against the running services: the JWT attack suite and
//! key rotation at checkout's edge, the policy's rules on real orders, mutual TLS refusals
//! at inventory and payments, and logs that never carry credentials.

#![allow(clippy::unwrap_used)] // integration tests: a failure should stop loudly

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use faultline_auth::dev::{DevCa, SigningKey, TokenSpec, write_private};
use faultline_auth::{ClientTls, MtlsSettings, ServiceId};
use faultline_e2e::{Answer, Caller, Client, Options, ProductSpec, Service, System};
use faultline_proto::inventory::v1 as inventory;
use faultline_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use faultline_proto::payments::v1 as payments;
use faultline_proto::payments::v1::payments_service_client::PaymentsServiceClient;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const CATALOG: [ProductSpec; 1] = [ProductSpec {
    sku: "LAMP-01",
    name: "Desk lamp",
    price_cents: 2_490,
    stock: 100,
}];

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `GET /v1/products/LAMP-01` with `authorization` as the header (or none).
async fn catalog_read(system: &System, authorization: Option<&str>) -> Answer {
    let mut request = reqwest::Client::new().get(format!(
        "{}/v1/products/LAMP-01",
        system.client.checkout_url()
    ));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    Answer::read(request.send().await.unwrap()).await.unwrap()
}

fn assert_refused_token(answer: &Answer, case: &str) {
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "{case}: {}",
        answer.body
    );
    assert_eq!(answer.content_type, "application/problem+json", "{case}");
    assert_eq!(answer.body["type"], "/problems/invalid-token", "{case}");
    let challenge = answer.www_authenticate.as_deref().unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer realm=\"faultline\", error=\"invalid_token\""),
        "{case}: {challenge}"
    );
}

fn access_header(algorithm: Algorithm, kid: &str) -> Header {
    let mut header = Header::new(algorithm);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid.into());
    header
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_and_stale_tokens_get_401_and_keys_rotate_without_a_restart() {
    // JWKS re-reads at most once a second, so the rotation below is quick to observe.
    let env = |name: &str, value: &str| (Service::Checkout, name.to_owned(), value.to_owned());
    let system = System::start(Options {
        extra_env: vec![
            env("CHECKOUT_AUTH__MIN_REFRESH_INTERVAL_SECS", "1"),
            env("CHECKOUT_AUTH__REFRESH_INTERVAL_SECS", "1"),
        ],
        ..Options::default()
    })
    .await
    .unwrap();
    system.client.load_catalog(&CATALOG).await.unwrap();
    let credentials = &system.credentials;
    let key = credentials.signing_key();
    let spec = || TokenSpec::new(credentials.jwt_settings(), "alice").scopes(&["orders:read"]);
    let good = credentials.mint(&spec()).unwrap();
    let answer = catalog_read(&system, Some(&format!("Bearer {good}"))).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    let claims = spec().claims();
    let mut cases: Vec<(&str, String)> = Vec::new();
    let none = json!({"alg": "none", "typ": "at+jwt", "kid": key.kid()});
    cases.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(none.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        ),
    ));
    // Algorithm confusion: HS256 keyed with the published public key.
    let public = serde_json::to_string(&key.public_jwk()).unwrap();
    cases.push((
        "HS256 keyed with the public key",
        jsonwebtoken::encode(
            &access_header(Algorithm::HS256, key.kid()),
            &claims,
            &EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap(),
    ));
    let mut expired = spec();
    expired.backdate = Duration::from_secs(7_200);
    cases.push(("expired", credentials.mint(&expired).unwrap()));
    let mut early = spec();
    early.not_before_in = Duration::from_secs(3_600);
    cases.push(("not yet valid", credentials.mint(&early).unwrap()));
    let mut audience = spec();
    audience.audience = "someone-else".into();
    cases.push(("wrong aud", credentials.mint(&audience).unwrap()));
    let mut issuer = spec();
    issuer.issuer = "https://evil.example".into();
    cases.push(("wrong iss", credentials.mint(&issuer).unwrap()));
    let parts: Vec<&str> = good.split('.').collect();
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["roles"] = json!(["admin"]);
    cases.push((
        "tampered payload",
        format!(
            "{}.{}.{}",
            parts[0],
            b64(payload.to_string().as_bytes()),
            parts[2]
        ),
    ));
    let stranger = SigningKey::generate(Algorithm::ES256).unwrap();
    cases.push(("unknown kid", stranger.mint(&spec()).unwrap()));
    // Correctly signed but padded above the 8 KiB cap (and below the 32 KiB head limit):
    // only the cap refuses it.
    let padded_token = |padding: usize| {
        let mut padded = claims.clone();
        padded["padding"] = "x".repeat(padding).into();
        key.sign(&access_header(key.algorithm(), key.kid()), &padded)
            .unwrap()
    };
    cases.push(("16 KiB token", padded_token(16 * 1024)));
    for (case, token) in &cases {
        let answer = catalog_read(&system, Some(&format!("Bearer {token}"))).await;
        assert_refused_token(&answer, case);
        assert!(
            !answer.body.to_string().contains(token.as_str()),
            "{case}: the answer echoes the token"
        );
    }
    // Above the head limit nothing reads the token at all: a 431 problem document, which
    // names sizes, not what was sent.
    let token = padded_token(64 * 1024);
    let answer = catalog_read(&system, Some(&format!("Bearer {token}"))).await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.body["type"], "/problems/headers-too-large");
    assert!(!answer.body.to_string().contains(&token[..64]));
    // A megabyte of header never becomes a request: hyper stops reading at its buffer
    // (about 400 KB) and answers a bare 431 (`faultline_platform::http`'s docs say why
    // that line stays), which costs the service nothing and is no 5xx.
    let answer = catalog_read(&system, Some(&format!("Bearer {}", "a".repeat(1 << 20)))).await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // No token, another scheme: a plain challenge.
    for authorization in [None, Some("Basic YWxpY2U6c2VjcmV0")] {
        let answer = catalog_read(&system, authorization).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.body["type"], "/problems/unauthenticated");
        assert_eq!(
            answer.www_authenticate.as_deref(),
            Some("Bearer realm=\"faultline\"")
        );
    }

    // Rotation. The provider publishes a new key next to the current one, plus two entries
    // that must never verify anything: an RSA key claiming to be ES256, and an HMAC secret.
    let jwks = credentials.auth_dir().join("jwks.json");
    let next = SigningKey::generate(Algorithm::ES256).unwrap();
    let rsa = SigningKey::generate(Algorithm::RS256).unwrap();
    let mut lying = serde_json::to_value(rsa.public_jwk()).unwrap();
    lying["alg"] = "ES256".into();
    let symmetric = json!({"kty": "oct", "kid": "hmac", "k": b64(b"secret"), "alg": "HS256"});
    let published = json!({"keys": [key.public_jwk(), next.public_jwk(), lying, symmetric]});
    write_private(&jwks, &published.to_string()).unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let fresh = next.mint(&spec()).unwrap();
    let answer = catalog_read(&system, Some(&format!("Bearer {fresh}"))).await;
    assert_eq!(answer.status, StatusCode::OK, "new key during the overlap");
    let answer = catalog_read(&system, Some(&format!("Bearer {good}"))).await;
    assert_eq!(answer.status, StatusCode::OK, "old key during the overlap");
    let mismatched = rsa.mint(&spec()).unwrap();
    let answer = catalog_read(&system, Some(&format!("Bearer {mismatched}"))).await;
    assert_refused_token(&answer, "RSA key published as ES256");
    let hmac = jsonwebtoken::encode(
        &access_header(Algorithm::HS256, "hmac"),
        &claims,
        &EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    let answer = catalog_read(&system, Some(&format!("Bearer {hmac}"))).await;
    assert_refused_token(&answer, "HS256 under a published symmetric key");

    // The old key leaves the set: its tokens stop working (cached verdicts too).
    let published = json!({"keys": [next.public_jwk()]});
    write_private(&jwks, &published.to_string()).unwrap();
    let mut old_refused = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let answer = catalog_read(&system, Some(&format!("Bearer {good}"))).await;
        if answer.status == StatusCode::UNAUTHORIZED {
            assert_refused_token(&answer, "retired key");
            old_refused = true;
            break;
        }
    }
    assert!(
        old_refused,
        "a token of the retired key was still accepted after 10 s"
    );
    let answer = catalog_read(&system, Some(&format!("Bearer {fresh}"))).await;
    assert_eq!(answer.status, StatusCode::OK, "the new key after rotation");

    // Hostile input never made checkout fail, and nothing it logged carries a token.
    let log = system.log(Service::Checkout).unwrap();
    assert!(
        !log.contains("\"level\":\"ERROR\""),
        "checkout logged errors"
    );
    for token in [&good, &fresh, &mismatched, &hmac] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "checkout's log carries a token");
    }
    system.teardown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policy_decides_who_places_and_reads_which_orders() {
    let system = System::start(Options::default()).await.unwrap();
    let client = &system.client;
    client.load_catalog(&CATALOG).await.unwrap();
    let credentials = &system.credentials;

    // A customer places an order for themselves and reads it back.
    let alice = client.as_customer("alice");
    let placed = alice
        .post_order_json(&Client::order_body(&[("LAMP-01", 1)]))
        .await
        .unwrap();
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
    let location = placed.location.clone().unwrap();
    let own = alice.get(&location).await.unwrap();
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    assert_eq!(
        own.body["customer_id"], "alice",
        "the token's subject ordered"
    );

    // Another customer may not read it; an admin may.
    let other = client.as_customer("mallory").get(&location).await.unwrap();
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{}", other.body);
    assert_eq!(other.content_type, "application/problem+json");
    assert_eq!(other.body["type"], "/problems/forbidden");
    assert!(
        other.body["detail"]
            .as_str()
            .unwrap()
            .contains("only their own orders"),
        "{}",
        other.body
    );
    let admin = client
        .as_caller(Caller::Admin)
        .get(&location)
        .await
        .unwrap();
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.body);

    // Without the scopes: 403 naming the missing one, and placing writes nothing.
    let read_only = credentials
        .mint(&TokenSpec::new(credentials.jwt_settings(), "bob").scopes(&["orders:read"]))
        .unwrap();
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/orders", client.checkout_url()))
        .bearer_auth(&read_only)
        .header("content-type", "application/json")
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .body(Client::order_body(&[("LAMP-01", 1)]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let challenge = refused.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("orders:write"),
        "{challenge}"
    );
    let write_only = credentials
        .mint(&TokenSpec::new(credentials.jwt_settings(), "alice").scopes(&["orders:write"]))
        .unwrap();
    let refused = reqwest::Client::new()
        .get(format!("{}{location}", client.checkout_url()))
        .bearer_auth(&write_only)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    let checkout = system.database(Service::Checkout).await.unwrap();
    let (orders, keys): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM idempotency_keys)",
    )
    .fetch_one(&checkout)
    .await
    .unwrap();
    assert_eq!((orders, keys), (1, 1), "only alice's order and its key");

    // Every decision is logged with its policy version and reason, never with the token.
    let log = system.log(Service::Checkout).unwrap();
    let decisions: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "faultline_auth::decision")
        .collect();
    assert!(
        decisions.iter().any(|d| d["allow"] == false
            && d["subject"] == "mallory"
            && d["policy_version"].is_string()),
        "{decisions:?}"
    );
    let denied_bob = decisions
        .iter()
        .any(|d| d["allow"] == false && d["subject"] == "bob");
    assert!(denied_bob, "{decisions:?}");
    // No service logged a credential: not a token (nor its signature alone), not a key.
    let alice_token = credentials
        .token(&Caller::Customer("alice".into()))
        .unwrap();
    let admin_token = credentials.token(&Caller::Admin).unwrap();
    system
        .wait_until_settled(Duration::from_secs(60))
        .await
        .unwrap();
    for service in Service::ALL {
        let log = system.log(service).unwrap();
        for token in [&read_only, &write_only, &alice_token, &admin_token] {
            let signature = token.rsplit('.').next().unwrap();
            assert!(
                !log.contains(signature),
                "{} logged a token",
                service.name()
            );
        }
        for secret in ["PRIVATE KEY", "\"d\":", "bearer ey"] {
            assert!(
                !log.to_lowercase().contains(&secret.to_lowercase()),
                "{} logged {secret:?}",
                service.name()
            );
        }
    }
    system.teardown().await.unwrap();
}

/// Calls inventory's `GetProducts` over `channel`.
async fn get_products(channel: Channel) -> Result<usize, tonic::Status> {
    let answer = InventoryServiceClient::new(channel)
        .get_products(inventory::GetProductsRequest {
            skus: vec!["LAMP-01".into()],
        })
        .await?;
    Ok(answer.into_inner().products.len())
}

/// A call refused during or right after the handshake, before any gRPC reached the server;
/// how the client notices (an alert, a reset, a closed stream, or for plaintext the server's
/// TLS alert read as a broken HTTP/2 frame) depends on timing, so any transport failure
/// counts.
fn refused_by_tls(result: Result<usize, tonic::Status>, case: &str) {
    let status = result.expect_err(case);
    let transport = match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => true,
        Code::Internal => status.message().starts_with("h2 protocol error"),
        _ => false,
    };
    assert!(transport, "{case}: {status:?}");
}

fn address(url: &str) -> SocketAddr {
    url.trim_start_matches("https://").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_admits_only_known_certificates_and_the_right_identities() {
    let system = System::start(Options::default()).await.unwrap();
    system.client.load_catalog(&CATALOG).await.unwrap();
    let credentials = &system.credentials;
    let inventory_url = system.client.inventory_url().to_owned();
    let timeout = |e: Endpoint| e.connect_timeout(Duration::from_secs(5));

    // Checkout's own certificate reads the catalog.
    let checkout = ClientTls::load(
        credentials.mtls("checkout"),
        ServiceId::faultline("inventory").unwrap(),
    )
    .unwrap();
    assert_eq!(
        get_products(checkout.channel(&inventory_url, timeout).unwrap())
            .await
            .unwrap(),
        1
    );

    // A valid certificate of the wrong service: PERMISSION_DENIED, at inventory...
    let payments_cert = ClientTls::load(
        credentials.mtls("payments"),
        ServiceId::faultline("inventory").unwrap(),
    )
    .unwrap();
    let status = get_products(payments_cert.channel(&inventory_url, timeout).unwrap())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // ...and at payments, where only checkout may authorize.
    let inventory_cert = ClientTls::load(
        credentials.mtls("inventory"),
        ServiceId::faultline("payments").unwrap(),
    )
    .unwrap();
    let status = PaymentsServiceClient::new(
        inventory_cert
            .channel(&system.payments_url, timeout)
            .unwrap(),
    )
    .authorize(payments::AuthorizeRequest {
        idempotency_key: "k-1".into(),
        order_id: uuid::Uuid::now_v7().to_string(),
        amount: None,
        customer_id: "alice".into(),
    })
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // The operator reads; only checkout places holds. A well-formed request with the
    // operator's certificate is refused before payments looks at it.
    let operator = credentials.operator_tls("payments").unwrap();
    let answer =
        PaymentsServiceClient::new(operator.channel(&system.payments_url, timeout).unwrap())
            .authorize(payments::AuthorizeRequest {
                idempotency_key: "operator-k-1".into(),
                order_id: uuid::Uuid::now_v7().to_string(),
                amount: Some(faultline_proto::common::v1::Money {
                    amount_minor: 1_000,
                    currency: "EUR".into(),
                }),
                customer_id: "alice".into(),
            })
            .await;
    let status = answer.expect_err("the operator got an authorization");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Checkout may read, not write, the catalog.
    let status = InventoryServiceClient::new(checkout.channel(&inventory_url, timeout).unwrap())
        .upsert_products(inventory::UpsertProductsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // No client certificate: TLS that trusts the server but presents nothing.
    let mut roots = rustls::RootCertStore::empty();
    for certificate in
        CertificateDer::pem_file_iter(credentials.certs_dir().join("ca.pem")).unwrap()
    {
        roots.add(certificate.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut anonymous = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    let anonymous = Arc::new(anonymous);
    let target = address(&inventory_url);
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let config = anonymous.clone();
        async move {
            let tcp = TcpStream::connect(target).await?;
            let name = ServerName::IpAddress(target.ip().into());
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    let no_certificate = Endpoint::from_shared(format!("http://{target}"))
        .unwrap()
        .connect_with_connector_lazy(connector);
    refused_by_tls(get_products(no_certificate).await, "no client certificate");

    // Checkout's name, another CA's signature.
    let intruder_dir = std::env::temp_dir().join(format!("faultline-intruder-{}", system.run_id));
    std::fs::create_dir_all(&intruder_dir).unwrap();
    let intruder_ca = DevCa::generate("Intruder CA").unwrap();
    let forged = intruder_ca.issue("checkout", &[]).unwrap();
    std::fs::write(intruder_dir.join("checkout.pem"), &forged.cert_pem).unwrap();
    write_private(
        &intruder_dir.join("checkout-key.pem"),
        forged.key_pem.expose(),
    )
    .unwrap();
    let forged = ClientTls::load(
        MtlsSettings {
            ca_file: credentials.certs_dir().join("ca.pem"),
            ..MtlsSettings::dev(&intruder_dir, "checkout")
        },
        ServiceId::faultline("inventory").unwrap(),
    )
    .unwrap();
    refused_by_tls(
        get_products(forged.channel(&inventory_url, timeout).unwrap()).await,
        "certificate from another CA",
    );
    let _ = std::fs::remove_dir_all(&intruder_dir);

    // Plaintext HTTP/2 to the TLS port.
    let plaintext = Endpoint::from_shared(format!("http://{target}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    refused_by_tls(get_products(plaintext).await, "plaintext");

    // Inventory logged the refused handshakes, never its key, and carries on.
    assert_eq!(
        get_products(checkout.channel(&inventory_url, timeout).unwrap())
            .await
            .unwrap(),
        1
    );
    let log = system.log(Service::Inventory).unwrap();
    assert!(log.contains("TLS handshake refused"), "{log}");
    assert!(!log.contains("BEGIN PRIVATE KEY"));
    system.teardown().await.unwrap();
}
