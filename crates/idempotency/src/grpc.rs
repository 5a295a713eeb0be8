//! Idempotency for tonic services whose request message carries the key.
//!
//! Same semantics as the HTTP layer, in gRPC terms: a malformed key is `INVALID_ARGUMENT`,
//! a key reused for another request `FAILED_PRECONDITION`, a key in flight `ABORTED` with
//! the `grpc-retry-pushback-ms` hint of gRPC's retry design, and a completed key replays the
//! stored response message. The fingerprint covers the caller and the encoded request, which
//! prost encodes deterministically for messages without map fields.

use prost::Message;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::fingerprint::Fingerprint;
use crate::key::IdempotencyKey;
use crate::store::{Claim, Lease, Store, StoredResponse};

/// What a gRPC handler does next.
#[derive(Debug)]
pub enum GrpcClaim<R> {
    /// The request completed before: answer with this.
    Replay(R),
    /// The handler owns the key (resuming at [`Lease::recovery_point`]).
    Owned(Lease),
}

/// Claims `key` for `caller` and `request`, fingerprinting the encoded request; see the
/// module docs for the status codes.
pub async fn claim<Req, Res>(
    store: &Store,
    caller: &str,
    key: &str,
    request: &Req,
) -> Result<GrpcClaim<Res>, Status>
where
    Req: Message,
    Res: Message + Default,
{
    let encoded = request.encode_to_vec();
    let fingerprint = Fingerprint::of(&[b"grpc", caller.as_bytes(), &encoded]);
    claim_with(store, caller, key, fingerprint).await
}

/// Like [`claim`] with a fingerprint the service computes itself, for operations that
/// arrive through more than one door (gRPC and a message queue, say) and must count as the
/// same request whatever the envelope.
pub async fn claim_with<Res>(
    store: &Store,
    caller: &str,
    key: &str,
    fingerprint: Fingerprint,
) -> Result<GrpcClaim<Res>, Status>
where
    Res: Message + Default,
{
    let key = IdempotencyKey::parse(key)
        .map_err(|e| Status::invalid_argument(format!("idempotency_key: {e}")))?;
    match store.claim(caller, &key, fingerprint).await {
        Err(error) => {
            tracing::warn!(%error, "idempotency store unavailable");
            Err(Status::unavailable(
                "the idempotency store is unavailable; retry later",
            ))
        }
        Ok(Claim::Owned(lease)) => Ok(GrpcClaim::Owned(lease)),
        Ok(Claim::Completed(stored)) => Res::decode(stored.body.as_slice())
            .map(GrpcClaim::Replay)
            .map_err(|e| Status::internal(format!("stored response is unreadable: {e}"))),
        Ok(Claim::InFlight { lease_left }) => {
            let mut status = Status::aborted(
                "a request with this idempotency key is in progress; retry to get its result",
            );
            let pushback = lease_left.as_millis().clamp(100, 1_000).to_string();
            if let Ok(value) = MetadataValue::try_from(pushback.as_str()) {
                status
                    .metadata_mut()
                    .insert("grpc-retry-pushback-ms", value);
            }
            Err(status)
        }
        Ok(Claim::Mismatch) => Err(Status::failed_precondition(
            "idempotency_key was already used for a different request",
        )),
    }
}

/// The [`StoredResponse`] for a successful gRPC answer.
pub fn stored<Res: Message>(response: &Res) -> StoredResponse {
    StoredResponse {
        status: 0,
        headers: Vec::new(),
        body: response.encode_to_vec(),
    }
}
