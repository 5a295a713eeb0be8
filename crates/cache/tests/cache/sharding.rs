//! Three Redis nodes (our own children): every key lands on the node rendezvous hashing
//! assigns, and a dead node costs only its own keys a trip to the origin.

use faultline_cache::placement::{Placement, Rendezvous};
use faultline_cache::{Cache, KeySpace};
use faultline_resilience::State;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_on_the_node_the_hash_assigns() {
    let servers = [
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    ];
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let name = unique("shards");
    let cache: Cache<Item> = Cache::connect(&name, 1, &config(&urls.join(",")))
        .await
        .unwrap();
    let skus: Vec<String> = (0..300).map(|i| format!("SKU-{i:04}")).collect();
    let origin = Origin::with(&skus.iter().map(|s| item(s, 1)).collect::<Vec<_>>());
    for sku in &skus {
        cache.get_or_load(sku, || origin.load(sku)).await.unwrap();
    }

    // The placement, recomputed independently from the URLs and the stored key.
    let placement = Rendezvous::new(&urls);
    let space = KeySpace::new("faultline", &name, 1, 200);
    let mut expected = [0_u64; 3];
    for sku in &skus {
        let node = placement.node_for(sku.as_bytes());
        assert_eq!(cache.node_for(sku), Some(node));
        expected[node] += 1;
        for (index, url) in urls.iter().enumerate() {
            assert_eq!(
                exists(url, &space.redis_key(sku)).await,
                index == node,
                "{sku} on node {index}"
            );
        }
    }
    assert!(expected.iter().all(|&n| n > 60), "{expected:?}");
    let counted: Vec<u64> = cache
        .keys_per_node()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(counted, expected);
    let text = {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(cache.collector()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    };
    let gauge = format!(
        "faultline_cache_node_keys{{cache=\"{name}\",node=\"{}\"}} {}",
        urls[0], expected[0]
    );
    assert!(text.contains(&gauge), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_sends_only_its_own_keys_to_the_origin() {
    let mut servers = [
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    ];
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let cache: Cache<Item> = Cache::connect(&unique("dead-node"), 1, &config(&urls.join(",")))
        .await
        .unwrap();
    let skus: Vec<String> = (0..60).map(|i| format!("SKU-{i:04}")).collect();
    let origin = Origin::with(&skus.iter().map(|s| item(s, 1)).collect::<Vec<_>>());
    for sku in &skus {
        cache.get_or_load(sku, || origin.load(sku)).await.unwrap();
    }
    servers[1].stop();
    let loads_before = origin.loads();
    let on_dead: usize = skus.iter().filter(|s| cache.node_for(s) == Some(1)).count();
    for sku in &skus {
        assert_eq!(
            cache.get_or_load(sku, || origin.load(sku)).await,
            Ok(Some(item(sku, 1)))
        );
    }
    assert_eq!(origin.loads() - loads_before, on_dead);
    assert_eq!(cache.breaker(0).unwrap().state(), State::Closed);
    assert_eq!(cache.breaker(2).unwrap().state(), State::Closed);
}
