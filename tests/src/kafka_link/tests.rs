//! The rewrite on frames built here, for versions a local tansu and librdkafka may never
//! pick: old and flexible (tagged-field) headers, FindCoordinator before and after batching.

use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::MetadataResponseBroker;

use super::*;

const PROXY: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4242);

fn frame<R: Encodable + HeaderVersion>(response: &R, version: i16) -> Vec<u8> {
    let mut header = ResponseHeader::default().with_correlation_id(7);
    header.unknown_tagged_fields.insert(99, vec![1, 2].into());
    let mut out = Vec::new();
    header.encode(&mut out, R::header_version(version)).unwrap();
    response.encode(&mut out, version).unwrap();
    out
}

fn decoded<R: Decodable + HeaderVersion>(frame: &[u8], version: i16) -> (ResponseHeader, R) {
    let mut buf = frame;
    let header = ResponseHeader::decode(&mut buf, R::header_version(version)).unwrap();
    (header, R::decode(&mut buf, version).unwrap())
}

#[test]
fn metadata_advertises_the_link_in_old_and_flexible_versions() {
    let broker = MetadataResponseBroker::default()
        .with_node_id(BrokerId(0))
        .with_host(StrBytes::from_static_str("127.0.0.1"))
        .with_port(9092);
    let response = MetadataResponse::default().with_brokers(vec![broker]);
    for version in [1, 9, 12] {
        let out = rewrite(METADATA, version, &frame(&response, version), PROXY).unwrap();
        let (header, rewritten) = decoded::<MetadataResponse>(&out, version);
        assert_eq!(header.correlation_id, 7);
        let broker = &rewritten.brokers[0];
        assert_eq!(
            (broker.host.as_str(), broker.port),
            ("127.0.0.1", 4242),
            "v{version}"
        );
        assert_eq!(broker.node_id, BrokerId(0));
    }
}

#[test]
fn a_coordinator_is_advertised_as_the_link_but_an_error_is_left_alone() {
    let found = Coordinator::default()
        .with_key(StrBytes::from_static_str("group"))
        .with_host(StrBytes::from_static_str("127.0.0.1"))
        .with_port(9092);
    let missing = Coordinator::default().with_error_code(15).with_port(-1);
    let old = FindCoordinatorResponse::default()
        .with_host(StrBytes::from_static_str("127.0.0.1"))
        .with_port(9092);
    for version in [0, 3] {
        let out = rewrite(FIND_COORDINATOR, version, &frame(&old, version), PROXY).unwrap();
        let (_, old) = decoded::<FindCoordinatorResponse>(&out, version);
        assert_eq!(
            (old.host.as_str(), old.port),
            ("127.0.0.1", 4242),
            "v{version}"
        );
    }
    let response = FindCoordinatorResponse::default().with_coordinators(vec![found, missing]);
    let out = rewrite(FIND_COORDINATOR, 4, &frame(&response, 4), PROXY).unwrap();
    let (_, new) = decoded::<FindCoordinatorResponse>(&out, 4);
    assert_eq!(new.coordinators[0].port, 4242);
    assert_eq!(new.coordinators[1].port, -1);
}

#[test]
fn a_response_that_does_not_decode_cleanly_is_refused_not_mangled() {
    let mut bytes = frame(&MetadataResponse::default(), 12);
    bytes.push(0);
    assert!(rewrite(METADATA, 12, &bytes, PROXY).is_err());
    assert!(rewrite(METADATA, 12, &bytes[..3], PROXY).is_err());
    assert!(rewrite(METADATA, 99, &bytes, PROXY).is_err());
}
