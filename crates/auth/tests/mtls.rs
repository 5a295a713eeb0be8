//! Mutual TLS through real tonic servers and clients on loopback, with the gRPC health
//! service standing in for payments: who may connect, who may call, and certificates that
//! change on disk while the server runs.

#![allow(clippy::unwrap_used)] // integration tests: a failure should stop loudly

#[path = "support/env.rs"]
mod support;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use faultline_auth::dev::{DevCa, ServiceCert, write_atomically};
use faultline_auth::{
    AllowedCallers, CallerAuthLayer, ClientTls, MtlsIncoming, MtlsSettings, ServerTls, ServiceId,
};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as Serving;
use tonic_health::pb::health_client::HealthClient;

const CHECK: &str = "/grpc.health.v1.Health/Check";

fn id(service: &str) -> ServiceId {
    ServiceId::faultline(service).unwrap()
}

/// Writes `cert` as `<service>.pem` and `<service>-key.pem` in `dir`.
fn write_cert(dir: &Path, service: &str, cert: &ServiceCert) {
    write_atomically(
        &dir.join(format!("{service}-key.pem")),
        cert.key_pem.expose(),
        true,
    )
    .unwrap();
    write_atomically(&dir.join(format!("{service}.pem")), &cert.cert_pem, false).unwrap();
}

/// A dev CA with certificates for checkout, inventory and payments, on disk.
fn pki(dir: &TempDir) -> DevCa {
    let ca = DevCa::generate("Test CA").unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    for service in ["checkout", "inventory", "payments"] {
        write_cert(dir.path(), service, &ca.issue(service, &[]).unwrap());
    }
    ca
}

/// Payments' gRPC server (the health service) over mutual TLS, where only checkout may call
/// `Check`.
async fn serve(dir: &TempDir) -> (SocketAddr, ServerTls, tokio::task::JoinHandle<()>) {
    let tls = ServerTls::load(MtlsSettings::dev(dir.path(), "payments")).unwrap();
    assert_eq!(tls.identity(), id("payments"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let incoming = MtlsIncoming::new(listener, tls.clone());
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let allowed = AllowedCallers::new().method(CHECK, [id("checkout")]);
    let server = tokio::spawn(async move {
        // The reporter must live as long as the server, or the service reports unknown.
        let _reporter = reporter;
        Server::builder()
            .layer(CallerAuthLayer::new(allowed))
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    (address, tls, server)
}

fn url(address: SocketAddr) -> String {
    format!("https://{address}")
}

/// A channel over mutual TLS with `tls`.
fn channel(tls: &ClientTls, address: SocketAddr) -> Channel {
    tls.channel(&url(address), |endpoint| {
        endpoint
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
    })
    .unwrap()
}

/// Calls `Check`; the answer is the reported status.
async fn check(channel: Channel) -> Result<Serving, tonic::Status> {
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(answer.into_inner().status())
}

/// A call refused during or right after the handshake: the connection never carries it.
/// `because` is the TLS alert or error it must have failed with, when there is one.
fn assert_refused_by_tls(
    result: Result<Serving, tonic::Status>,
    case: &str,
    because: Option<&str>,
) {
    let status = result.expect_err(case);
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Unknown),
        "{case}: {status:?}"
    );
    if let Some(reason) = because {
        assert!(format!("{status:?}").contains(reason), "{case}: {status:?}");
    }
}

#[tokio::test]
async fn only_the_allowed_identity_gets_through() {
    let dir = TempDir::new("mtls-identity");
    pki(&dir);
    let (address, _tls, _server) = serve(&dir).await;

    let checkout =
        ClientTls::load(MtlsSettings::dev(dir.path(), "checkout"), id("payments")).unwrap();
    assert_eq!(
        check(channel(&checkout, address)).await.unwrap(),
        Serving::Serving
    );

    // A valid certificate from the same CA, for a service that may not call this method.
    let inventory =
        ClientTls::load(MtlsSettings::dev(dir.path(), "inventory"), id("payments")).unwrap();
    let denied = check(channel(&inventory, address)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("spiffe://faultline/inventory"),
        "{denied:?}"
    );

    // The client pins the server's identity: payments' certificate is not inventory's.
    let confused =
        ClientTls::load(MtlsSettings::dev(dir.path(), "checkout"), id("inventory")).unwrap();
    assert_refused_by_tls(
        check(channel(&confused, address)).await,
        "server of the wrong identity",
        Some("ApplicationVerificationFailure"),
    );
}

#[tokio::test]
async fn connections_without_a_trusted_client_certificate_are_refused() {
    let dir = TempDir::new("mtls-refused");
    pki(&dir);
    let (address, _tls, _server) = serve(&dir).await;

    // TLS that trusts the server but presents no client certificate.
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
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
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let config = anonymous.clone();
        async move {
            let tcp = TcpStream::connect(address).await?;
            let name = ServerName::IpAddress(address.ip().into());
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    let no_certificate = Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_with_connector_lazy(connector);
    assert_refused_by_tls(
        check(no_certificate).await,
        "no client certificate",
        Some("CertificateRequired"),
    );

    // A certificate for checkout, but issued by another CA.
    let intruder = TempDir::new("mtls-intruder");
    let other_ca = DevCa::generate("Intruder CA").unwrap();
    write_cert(
        intruder.path(),
        "checkout",
        &other_ca.issue("checkout", &[]).unwrap(),
    );
    let settings = MtlsSettings {
        ca_file: dir.join("ca.pem"),
        ..MtlsSettings::dev(intruder.path(), "checkout")
    };
    let forged = ClientTls::load(settings, id("payments")).unwrap();
    assert_refused_by_tls(
        check(channel(&forged, address)).await,
        "certificate from another CA",
        Some("UnknownCA"),
    );

    // Plaintext HTTP/2 to the TLS port.
    let plaintext = Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    // The server reads a TLS record that is not one and drops the connection; how the
    // client notices (reset, broken pipe) depends on timing, so only the refusal is checked.
    assert_refused_by_tls(check(plaintext).await, "plaintext", None);
}

/// The certificate a fresh TLS connection to `address` is served.
async fn served_certificate(tls: &ClientTls, address: SocketAddr) -> CertificateDer<'static> {
    let tcp = TcpStream::connect(address).await.unwrap();
    let name = ServerName::IpAddress(address.ip().into());
    let stream = TlsConnector::from(tls.config())
        .connect(name, tcp)
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn certificates_reload_from_disk_without_a_restart() {
    let dir = TempDir::new("mtls-reload");
    let ca = pki(&dir);
    let (address, server_tls, _server) = serve(&dir).await;
    let checkout =
        ClientTls::load(MtlsSettings::dev(dir.path(), "checkout"), id("payments")).unwrap();
    let original = std::fs::read_to_string(dir.join("payments.pem")).unwrap();
    assert_eq!(served_certificate(&checkout, address).await, der(&original));
    assert!(!server_tls.reload().unwrap(), "nothing changed yet");

    // Payments' certificate is renewed on disk (new key, new serial).
    let renewed = ca.issue("payments", &[]).unwrap();
    write_cert(dir.path(), "payments", &renewed);
    assert!(server_tls.reload().unwrap());
    assert_eq!(
        served_certificate(&checkout, address).await,
        der(&renewed.cert_pem)
    );
    assert_eq!(
        check(channel(&checkout, address)).await.unwrap(),
        Serving::Serving
    );

    // A half-done rotation (the new key without its certificate) is refused; the renewed
    // certificate stays in force.
    let next = ca.issue("payments", &[]).unwrap();
    std::fs::write(dir.join("payments-key.pem"), next.key_pem.expose()).unwrap();
    assert!(server_tls.reload().is_err());
    assert_eq!(
        served_certificate(&checkout, address).await,
        der(&renewed.cert_pem)
    );
    write_cert(dir.path(), "payments", &renewed);

    // The client side reloads too: checkout's files now hold inventory's identity, and the
    // next connection is made (and judged) as inventory.
    write_cert(dir.path(), "checkout", &ca.issue("inventory", &[]).unwrap());
    assert!(checkout.reload().unwrap());
    assert_eq!(checkout.identity(), id("inventory"));
    let denied = check(channel(&checkout, address)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
}
