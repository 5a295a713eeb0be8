//! Steady load for the chaos matrix: a small, seeded, open-loop order placer.
//!
//! Open loop because a fault must not slow the arrivals down (a closed-loop client waits
//! out a stall and never sends the orders that would have seen it): send times come from a
//! seeded Poisson schedule fixed in advance, each POST runs in its own task, and its latency
//! counts from the time it was meant to leave. It is not `faultline-load` itself because
//! that crate depends on this one; the schedule is the same idea (exponential gaps from a
//! seeded xoshiro256++), the statistics are just what the chaos table needs.
//!
//! The mix exercises every saga path: mostly lamps (confirmed), some mugs whose stock runs
//! out (rejected by inventory), some televisions above the card limit (declined by
//! payments, so stock is released).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;

use crate::client::ProductSpec;
use crate::credentials::{Caller, Credentials};

/// What the placer orders from: loaded once per run.
pub const CATALOG: [ProductSpec; 3] = [
    ProductSpec {
        sku: "LAMP-01",
        name: "Desk lamp",
        price_cents: 2_490,
        stock: 1_000_000,
    },
    ProductSpec {
        sku: "MUG-04",
        name: "Mug",
        price_cents: 900,
        stock: 150,
    },
    ProductSpec {
        sku: "TV-99",
        name: "Television",
        price_cents: 64_900,
        stock: 1_000_000,
    },
];

/// Customers the orders are spread over, so the edge's per-caller rate limit is not what
/// the matrix measures.
const CUSTOMERS: usize = 32;
/// Longest a POST may take before the client gives up (the edge's own deadline is 5 s).
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// One POST and how it ended.
#[derive(Debug, Clone)]
pub struct Post {
    /// When it was meant to leave.
    pub intended: Instant,
    /// From `intended` to the answer (or to the transport error).
    pub latency: Duration,
    /// The HTTP status; `None` when no answer came (refused, reset, timed out).
    pub status: Option<u16>,
    /// The order's id, with a 202.
    pub order_id: Option<Uuid>,
}

/// A running placer; [`Placer::stop`] ends it and returns every POST.
pub struct Placer {
    stop: watch::Sender<bool>,
    task: JoinHandle<Vec<Post>>,
}

impl Placer {
    /// Starts placing `rate` orders a second at checkout's `base` URL.
    pub fn start(
        base: &str,
        credentials: &Credentials,
        rate: f64,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let tokens = (0..CUSTOMERS)
            .map(|n| credentials.token(&Caller::Customer(format!("chaos-customer-{n}"))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let http = reqwest::Client::builder().timeout(POST_TIMEOUT).build()?;
        let url = format!("{base}/v1/orders");
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let posts = Arc::new(Mutex::new(Vec::new()));
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let mut in_flight = JoinSet::new();
            let started = Instant::now();
            let mut offset = 0.0f64;
            for n in 0usize.. {
                // Exponential gaps with mean 1/rate: a Poisson process.
                offset += -(1.0 - rng.random::<f64>()).ln() / rate;
                let intended = started + Duration::from_secs_f64(offset);
                tokio::select! {
                    _ = stopped.wait_for(|stop| *stop) => break,
                    () = tokio::time::sleep_until(intended.into()) => {}
                }
                let body = order_body(rng.random::<f64>());
                let request = http
                    .post(&url)
                    .bearer_auth(&tokens[n % tokens.len()])
                    .header("content-type", "application/json")
                    .header("idempotency-key", Uuid::new_v4().to_string())
                    .body(body);
                let posts = posts.clone();
                in_flight.spawn(async move {
                    let post = send(request, intended).await;
                    if let Ok(mut posts) = posts.lock() {
                        posts.push(post);
                    }
                });
                while in_flight.try_join_next().is_some() {}
            }
            while in_flight.join_next().await.is_some() {}
            posts.lock().map(|posts| posts.clone()).unwrap_or_default()
        });
        Ok(Self { stop, task })
    }

    /// Stops sending, waits for the POSTs in flight (each bounded by its timeout) and
    /// returns them all.
    pub async fn stop(self) -> anyhow::Result<Vec<Post>> {
        self.stop.send_replace(true);
        Ok(self.task.await?)
    }
}

/// 80 % lamps (one to three), 10 % a mug, 10 % a television; `draw` is uniform in [0, 1).
fn order_body(draw: f64) -> String {
    let (sku, quantity) = match draw {
        d if d < 0.8 => ("LAMP-01", 1 + (d * 10.0) as i64 % 3),
        d if d < 0.9 => ("MUG-04", 1),
        _ => ("TV-99", 1),
    };
    json!({ "items": [{ "sku": sku, "quantity": quantity }] }).to_string()
}

async fn send(request: reqwest::RequestBuilder, intended: Instant) -> Post {
    let mut post = Post {
        intended,
        latency: Duration::ZERO,
        status: None,
        order_id: None,
    };
    if let Ok(response) = request.send().await {
        post.status = Some(response.status().as_u16());
        // Read the body either way, so the connection goes back to the pool.
        let body: Option<serde_json::Value> = response.json().await.ok();
        if post.status == Some(202) {
            post.order_id = body
                .as_ref()
                .and_then(|b| b.get("order_id"))
                .and_then(serde_json::Value::as_str)
                .and_then(|id| Uuid::parse_str(id).ok());
        }
    }
    post.latency = intended.elapsed();
    post
}

/// The `q` quantile (0..=1) of `values`, or `None` if there are none.
pub fn quantile(mut values: Vec<Duration>, q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort();
    let rank = ((values.len() as f64) * q).ceil() as usize;
    values
        .get(rank.saturating_sub(1).min(values.len() - 1))
        .copied()
}
