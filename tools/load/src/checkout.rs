//! The two calls the generator makes to checkout: `POST /v1/orders` as one of a pool of
//! customers, and `GET /v1/orders/{id}` to poll an order's state.
//!
//! Checkout rate-limits per caller, so the load is spread over `--customers` subjects, one
//! access token each, minted once from the dev signing key (as a real client reuses its
//! token). Every order carries a fresh `Idempotency-Key`: each is a new order, never a
//! retry. Nothing is retried here; a refusal is a result to count, not to hide.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use faultline_auth::dev::TokenSpec;
use faultline_e2e::Credentials;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::stats::{Ending, PostOutcome};

/// The answer to one POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// How it ended.
    pub outcome: PostOutcome,
    /// The new order's id, with a 202.
    pub order_id: Option<Uuid>,
}

/// What `GET /v1/orders/{id}` says about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Still PENDING (or not readable right now: polling just tries again).
    Pending,
    /// CONFIRMED or CANCELLED.
    Ended(Ending),
}

/// A client for one checkout.
#[derive(Debug)]
pub struct Checkout {
    http: reqwest::Client,
    base: String,
    tokens: Vec<String>,
    admin_token: String,
    next: AtomicUsize,
    body: String,
}

impl Checkout {
    /// A client for checkout at `base`, ordering `quantity` of `sku` as `customers`
    /// customers with tokens valid for `token_ttl`.
    pub fn new(
        base: &str,
        credentials: &Credentials,
        customers: u32,
        sku: &str,
        quantity: i64,
        timeout: Duration,
        token_ttl: Duration,
    ) -> anyhow::Result<Self> {
        let settings = credentials.jwt_settings();
        let mint = |spec: TokenSpec| {
            credentials.mint(&TokenSpec {
                ttl: token_ttl,
                ..spec
            })
        };
        let tokens = (0..customers)
            .map(|n| {
                let spec = TokenSpec::new(settings, &format!("load-customer-{n}"))
                    .scopes(&["orders:read", "orders:write"]);
                mint(spec)
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .context("minting customer tokens")?;
        let admin = TokenSpec::new(settings, "faultline-load")
            .scopes(&["orders:read"])
            .roles(&["admin"]);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            tokens,
            admin_token: mint(admin).context("minting the admin token")?,
            next: AtomicUsize::new(0),
            body: json!({ "items": [{ "sku": sku, "quantity": quantity }] }).to_string(),
        })
    }

    /// Places one new order as the next customer in turn.
    pub async fn place(&self) -> Placed {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.tokens.len().max(1);
        let token = self
            .tokens
            .get(turn)
            .map(String::as_str)
            .unwrap_or_default();
        let sent = self
            .http
            .post(format!("{}/v1/orders", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("idempotency-key", Uuid::new_v4().to_string())
            .body(self.body.clone())
            .send()
            .await;
        let Ok(response) = sent else {
            return Placed {
                outcome: PostOutcome::Transport,
                order_id: None,
            };
        };
        let status = response.status().as_u16();
        // Read the body either way, so the connection goes back to the pool.
        let body: Option<Value> = response.json().await.ok();
        if status != 202 {
            return Placed {
                outcome: PostOutcome::Status(status),
                order_id: None,
            };
        }
        let order_id = body
            .as_ref()
            .and_then(|b| b.get("order_id"))
            .and_then(Value::as_str)
            .and_then(|id| Uuid::parse_str(id).ok());
        match order_id {
            Some(id) => Placed {
                outcome: PostOutcome::Accepted,
                order_id: Some(id),
            },
            // A 202 we cannot follow is not an order we can count as accepted.
            None => Placed {
                outcome: PostOutcome::Status(202),
                order_id: None,
            },
        }
    }

    /// The order's state as an administrator sees it.
    pub async fn state(&self, id: Uuid) -> State {
        let sent = self
            .http
            .get(format!("{}/v1/orders/{id}", self.base))
            .bearer_auth(&self.admin_token)
            .send()
            .await;
        let Ok(response) = sent else {
            return State::Pending;
        };
        if !response.status().is_success() {
            return State::Pending;
        }
        match response.json::<Value>().await {
            Ok(order) => state_of(&order),
            Err(_) => State::Pending,
        }
    }
}

/// Reads an order document (`docs/api.md`): its status and, when cancelled, the reason.
pub fn state_of(order: &Value) -> State {
    match order.get("status").and_then(Value::as_str) {
        Some("CONFIRMED") => State::Ended(Ending::Confirmed),
        Some("CANCELLED") => {
            let cancellation = order.get("cancellation");
            let field = |name: &str| {
                cancellation
                    .and_then(|c| c.get(name))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let code = field("code");
            State::Ended(Ending::Cancelled {
                timeout: code.ends_with("_timeout"),
                reason: if code.is_empty() {
                    field("reason")
                } else {
                    code
                },
            })
        }
        _ => State::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_document_reads_as_its_state() {
        assert_eq!(state_of(&json!({"status": "PENDING"})), State::Pending);
        assert_eq!(
            state_of(&json!({"status": "CONFIRMED"})),
            State::Ended(Ending::Confirmed)
        );
        let cancelled = json!({"status": "CANCELLED",
            "cancellation": {"code": "payment_timeout", "reason": "payments did not answer in time"}});
        assert_eq!(
            state_of(&cancelled),
            State::Ended(Ending::Cancelled {
                reason: "payment_timeout".into(),
                timeout: true
            })
        );
        assert_eq!(state_of(&json!("garbage")), State::Pending);
    }
}
