//! A client for a running Faultline: the public HTTP API (with bearer tokens) and
//! inventory's gRPC (over mutual TLS, as the operator).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use faultline_proto::common::v1::Money;
use faultline_proto::inventory::v1 as pb;
use faultline_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use faultline_auth::{ClientTls, ServiceId};

use crate::credentials::{Caller, Credentials};

/// A product to load into the catalog.
#[derive(Debug, Clone)]
pub struct ProductSpec {
    pub sku: &'static str,
    pub name: &'static str,
    /// Unit price in euro cents.
    pub price_cents: i64,
    /// Units to add.
    pub stock: i64,
}

/// An HTTP answer: status, content type and the JSON body (or `Null`).
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: StatusCode,
    /// `Content-Type` header.
    pub content_type: String,
    /// `Location` header, if any.
    pub location: Option<String>,
    /// `WWW-Authenticate` header, if any.
    pub www_authenticate: Option<String>,
    /// `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// `Idempotent-Replayed` header, if any.
    pub replayed: Option<String>,
    /// Parsed body.
    pub body: Value,
}

/// Talks to checkout over HTTP as one caller and to inventory over gRPC as the operator.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    checkout_url: String,
    inventory_url: String,
    credentials: Credentials,
    /// Whose token goes with HTTP requests; `None` sends none.
    caller: Option<Caller>,
}

/// The customer a new [`Client`] speaks for.
pub const DEFAULT_CUSTOMER: &str = "customer-1";

impl Client {
    /// A client for checkout at `checkout_url` and inventory at `inventory_url`
    /// (`https://...`), speaking for [`DEFAULT_CUSTOMER`].
    pub fn new(
        checkout_url: impl Into<String>,
        inventory_url: impl Into<String>,
        credentials: Credentials,
    ) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            checkout_url: checkout_url.into(),
            inventory_url: inventory_url.into(),
            credentials,
            caller: Some(Caller::Customer(DEFAULT_CUSTOMER.into())),
        }
    }

    /// The same client speaking for `caller`.
    pub fn as_caller(&self, caller: Caller) -> Self {
        Self {
            caller: Some(caller),
            ..self.clone()
        }
    }

    /// The same client speaking for the customer `subject`.
    pub fn as_customer(&self, subject: &str) -> Self {
        self.as_caller(Caller::Customer(subject.to_owned()))
    }

    /// The same client sending no token at all.
    pub fn anonymous(&self) -> Self {
        Self {
            caller: None,
            ..self.clone()
        }
    }

    /// The credentials this client's tokens and certificates come from.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    fn authorized(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        Ok(match &self.caller {
            Some(caller) => request.bearer_auth(self.credentials.token(caller)?),
            None => request,
        })
    }

    /// Inventory's gRPC endpoint.
    pub fn inventory_url(&self) -> &str {
        &self.inventory_url
    }

    /// Base URL of checkout's API.
    pub fn checkout_url(&self) -> &str {
        &self.checkout_url
    }

    async fn inventory(&self) -> anyhow::Result<InventoryServiceClient<tonic::transport::Channel>> {
        Ok(InventoryServiceClient::new(
            self.grpc_channel("inventory", &self.inventory_url).await?,
        ))
    }

    /// A connected mutual-TLS channel to `server` (`inventory`, `payments`) at `url`, as the
    /// operator.
    pub async fn grpc_channel(
        &self,
        server: &str,
        url: &str,
    ) -> anyhow::Result<tonic::transport::Channel> {
        self.grpc_channel_as(crate::credentials::OPERATOR, server, url)
            .await
    }

    /// A connected mutual-TLS channel to `server` at `url`, with the certificate of `holder`
    /// (a service or the operator): for calls only that identity may make.
    pub async fn grpc_channel_as(
        &self,
        holder: &str,
        server: &str,
        url: &str,
    ) -> anyhow::Result<tonic::transport::Channel> {
        let tls = ClientTls::load(self.credentials.mtls(holder), ServiceId::faultline(server)?)?;
        let endpoint = tls.channel(url, |e| e.connect_timeout(Duration::from_secs(5)))?;
        // The channel connects lazily; one cheap call proves the handshake now.
        let mut health = tonic_health::pb::health_client::HealthClient::new(endpoint.clone());
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .with_context(|| format!("connecting to {server} at {url}"))?;
        Ok(endpoint)
    }

    /// Creates or updates products and adds their stock.
    pub async fn load_catalog(&self, products: &[ProductSpec]) -> anyhow::Result<Vec<pb::Product>> {
        let request = pb::UpsertProductsRequest {
            products: products
                .iter()
                .map(|p| pb::ProductUpsert {
                    sku: p.sku.into(),
                    name: p.name.into(),
                    unit_price: Some(Money {
                        amount_minor: p.price_cents,
                        currency: "EUR".into(),
                    }),
                    add_stock: p.stock,
                })
                .collect(),
            idempotency_key: Uuid::new_v4().to_string(),
        };
        Ok(self
            .inventory()
            .await?
            .upsert_products(request)
            .await?
            .into_inner()
            .products)
    }

    /// The catalog entries for `skus`.
    pub async fn products(&self, skus: &[&str]) -> anyhow::Result<Vec<pb::Product>> {
        let request = pb::GetProductsRequest {
            skus: skus.iter().map(|s| (*s).to_owned()).collect(),
        };
        Ok(self
            .inventory()
            .await?
            .get_products(request)
            .await?
            .into_inner()
            .products)
    }

    /// Sends `body` to `POST /v1/orders` as it is, with `content_type` and an
    /// `Idempotency-Key` if given.
    pub async fn post_order(
        &self,
        body: impl Into<reqwest::Body>,
        content_type: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut request = self.authorized(
            self.http
                .post(format!("{}/v1/orders", self.checkout_url))
                .body(body),
        )?;
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        answer(request.send().await?).await
    }

    /// [`Client::post_order`], retried as a polite client does while the edge answers 429 or
    /// 503 (neither has done anything, so the same key is safe to send again).
    pub async fn post_order_patiently(
        &self,
        body: &str,
        idempotency_key: &str,
    ) -> anyhow::Result<Answer> {
        for _ in 0..100 {
            let answer = self
                .post_order(
                    body.to_owned(),
                    Some("application/json"),
                    Some(idempotency_key),
                )
                .await?;
            if answer.status != StatusCode::TOO_MANY_REQUESTS
                && answer.status != StatusCode::SERVICE_UNAVAILABLE
            {
                return Ok(answer);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("POST /v1/orders kept being refused by the edge")
    }

    /// Sends a JSON body with a fresh `Idempotency-Key`, as a client placing a new order does.
    pub async fn post_order_json(&self, body: &Value) -> anyhow::Result<Answer> {
        let key = Uuid::new_v4().to_string();
        self.post_order(body.to_string(), Some("application/json"), Some(&key))
            .await
    }

    /// The body of an order for `items` (the customer is the token's subject).
    pub fn order_body(items: &[(&str, i64)]) -> Value {
        let items: Vec<Value> = items
            .iter()
            .map(|(sku, quantity)| json!({ "sku": sku, "quantity": quantity }))
            .collect();
        json!({ "items": items })
    }

    /// `GET` of `path` on checkout, once.
    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        let request = self.authorized(self.http.get(format!("{}{path}", self.checkout_url)))?;
        answer(request.send().await?).await
    }

    /// `GET` of `path`, retried as a polite client does while the edge answers 429 or 503.
    pub async fn get_patiently(&self, path: &str) -> anyhow::Result<Answer> {
        for _ in 0..100 {
            let answer = self.get(path).await?;
            if answer.status != StatusCode::TOO_MANY_REQUESTS
                && answer.status != StatusCode::SERVICE_UNAVAILABLE
            {
                return Ok(answer);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("GET {path} kept being refused by the edge")
    }

    /// Places an order as the customer `customer` (with a fresh `Idempotency-Key`) and
    /// returns its id; fails unless checkout answers 202.
    pub async fn place_order(&self, customer: &str, items: &[(&str, i64)]) -> anyhow::Result<Uuid> {
        let answer = self
            .as_customer(customer)
            .post_order_json(&Self::order_body(items))
            .await?;
        if answer.status != StatusCode::ACCEPTED {
            bail!("order refused with {}: {}", answer.status, answer.body);
        }
        let id = answer.body["order_id"]
            .as_str()
            .context("202 without order_id")?;
        Ok(Uuid::parse_str(id)?)
    }

    /// The order as `GET /v1/orders/{id}` shows it to an administrator, who may read any.
    pub async fn order(&self, id: Uuid) -> anyhow::Result<Value> {
        let answer = self
            .as_caller(Caller::Admin)
            .get_patiently(&format!("/v1/orders/{id}"))
            .await?;
        if answer.status != StatusCode::OK {
            bail!("GET order {id} answered {}: {}", answer.status, answer.body);
        }
        Ok(answer.body)
    }

    /// Polls the order until it is CONFIRMED or CANCELLED, for at most `timeout`.
    pub async fn wait_for_outcome(&self, id: Uuid, timeout: Duration) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            let order = self.order(id).await?;
            if order["status"] != "PENDING" {
                return Ok(order);
            }
            if started.elapsed() > timeout {
                bail!("order {id} still PENDING after {timeout:?}: {order}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Answer {
    /// Asserts an RFC 9457 problem: `status`, `application/problem+json`, the type
    /// `/problems/<problem>`, and `status` and `title` in the body.
    pub fn assert_problem(&self, status: StatusCode, problem: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{}",
            self.body
        );
        assert_eq!(
            self.body["type"],
            format!("/problems/{problem}"),
            "{}",
            self.body
        );
        assert_eq!(self.body["status"], status.as_u16(), "{}", self.body);
        assert!(self.body["title"].is_string(), "{}", self.body);
    }

    /// Reads `response`: status, the headers tests look at, and the body as JSON (`Null` if
    /// it is not JSON).
    pub async fn read(response: reqwest::Response) -> anyhow::Result<Self> {
        answer(response).await
    }
}

async fn answer(response: reqwest::Response) -> anyhow::Result<Answer> {
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    let location = header("location");
    let www_authenticate = header("www-authenticate");
    let retry_after = header("retry-after");
    let replayed = header("idempotent-replayed");
    let bytes = response.bytes().await?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        content_type,
        location,
        www_authenticate,
        retry_after,
        replayed,
        body,
    })
}
