//! The time a call has left, handed down the stack and to the next hop.
//!
//! The total-timeout layer fixes a [`Deadline`] when a call starts; every layer below it, and
//! the last hop, reads it back with [`Deadline::current`]: the per-attempt timeout takes the
//! earlier of its own limit and the deadline, retries do not start an attempt that cannot
//! finish in time, and the code that builds the outgoing request turns the remainder into
//! `grpc-timeout` (with tonic: [`Deadline::apply`], feature `tonic`), so the callee gives up
//! when the caller has.
//!
//! The deadline travels in a task-local scope rather than in the request, so it works for
//! any request type without a trait to implement, every retry sees the remaining budget
//! rather than the original one, and nested scopes can only tighten it. The cost is that it
//! does not cross `tokio::spawn` (or `tower::buffer`): capture `Deadline::current()` before
//! spawning and re-enter it with [`Deadline::scope`].
//!
//! The scope is a `Copy` value in a const-initialised thread-local `Cell`, set around each
//! poll of the scoped future (and around the synchronous `Service::call`), rather than
//! tokio's `task_local!`, whose `RefCell` and lazy initialisation cost about as much as the
//! rest of a timeout layer on the per-call benchmark.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;

thread_local! {
    static CURRENT: Cell<Option<Scope>> = const { Cell::new(None) };
}

/// Makes `scope` current until dropped, then restores what was current before (also when
/// the scoped code panics).
struct Entered(Option<Scope>);

#[inline]
fn enter(scope: Scope) -> Entered {
    Entered(CURRENT.with(|current| current.replace(Some(scope))))
}

impl Drop for Entered {
    #[inline]
    fn drop(&mut self) {
        CURRENT.with(|current| current.set(self.0));
    }
}

pin_project! {
    /// A future run with a deadline current while it is polled.
    pub struct Scoped<F> {
        #[pin]
        future: F,
        // Only the deadline: every layer above embeds this future, so its size is paid
        // in moves on every call.
        deadline: Deadline,
    }
}

impl<F> Scoped<F> {
    /// The deadline this future runs under.
    pub fn deadline(&self) -> Deadline {
        self.deadline
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = enter(Scope {
            deadline: *this.deadline,
            now: None,
        });
        this.future.poll(cx)
    }
}

/// What the task-local holds: the deadline, and, while a layer's synchronous `call` runs
/// its inner service's `call`, the instant that layer read, so nested layers called in the
/// same breath do not read the clock again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope {
    deadline: Deadline,
    now: Option<Instant>,
}

/// An instant by which a call must have finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// The deadline at `instant`.
    #[inline]
    pub fn at(instant: Instant) -> Self {
        Self(instant)
    }

    /// The deadline `budget` from now.
    pub fn after(budget: Duration) -> Self {
        Self(Instant::now() + budget)
    }

    /// When it passes.
    #[inline]
    pub fn instant(self) -> Instant {
        self.0
    }

    /// Time left, zero once passed.
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether it has passed.
    pub fn is_expired(self) -> bool {
        Instant::now() >= self.0
    }

    /// The deadline of the call being made on this task, if a layer (or [`Deadline::scope`])
    /// set one.
    pub fn current() -> Option<Deadline> {
        CURRENT
            .with(|current| current.get())
            .map(|scope| scope.deadline)
    }

    /// The current deadline and, inside a layer's synchronous `call`, the instant it read.
    #[inline]
    pub(crate) fn current_scope() -> (Option<Deadline>, Option<Instant>) {
        match CURRENT.with(|current| current.get()) {
            Some(scope) => (Some(scope.deadline), scope.now),
            None => (None, None),
        }
    }

    /// This deadline or the current one, whichever is earlier.
    pub fn tightened(self) -> Deadline {
        match Self::current() {
            Some(current) if current < self => current,
            _ => self,
        }
    }

    /// Runs `future` with this deadline (or the current one, if earlier) as
    /// [`Deadline::current`]. It does not enforce it: the timeout layers do.
    pub fn scope<F: Future>(self, future: F) -> Scoped<F> {
        self.tightened().scope_exact(future)
    }

    /// Runs `future` with exactly this deadline (already tightened by the caller).
    #[inline]
    pub(crate) fn scope_exact<F: Future>(self, future: F) -> Scoped<F> {
        Scoped {
            future,
            deadline: self,
        }
    }

    /// Runs `f` with this deadline (or the current one, if earlier) as the current deadline.
    /// Layers use it around `Service::call`, which builds the inner future synchronously.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        let _entered = enter(Scope {
            deadline: self.tightened(),
            now: None,
        });
        f()
    }

    /// [`Deadline::sync_scope`] for a layer that read the clock at `now` (and already
    /// tightened the deadline).
    #[inline]
    pub(crate) fn sync_scope_at<R>(self, now: Instant, f: impl FnOnce() -> R) -> R {
        let _entered = enter(Scope {
            deadline: self,
            now: Some(now),
        });
        f()
    }

    /// The `grpc-timeout` header value for the time left (the gRPC wire format: at most
    /// eight digits and a unit). tonic writes this header itself from
    /// `Request::set_timeout`; this is for other HTTP/2 clients and for tests.
    pub fn grpc_timeout(self) -> String {
        let remaining = self.remaining();
        let micros = remaining.as_micros();
        if micros < 100_000_000 {
            format!("{micros}u")
        } else {
            let millis = remaining.as_millis();
            if millis < 100_000_000 {
                format!("{millis}m")
            } else {
                format!("{}S", remaining.as_secs().min(99_999_999))
            }
        }
    }

    /// Parses a received `grpc-timeout` header (`"250m"`, `"3S"`, ...) into a deadline from
    /// now, so a server can hand its caller's deadline on to its own calls. `None` if the
    /// value is malformed, as the gRPC spec says to treat it.
    pub fn from_grpc_timeout(value: &str) -> Option<Deadline> {
        let split = value.len().checked_sub(1)?;
        // Untrusted input: a multi-byte last character must not make `split_at` panic.
        if !value.is_char_boundary(split) {
            return None;
        }
        let (digits, unit) = value.split_at(split);
        if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        let budget = match unit {
            "H" => Duration::from_secs(n.checked_mul(3_600)?),
            "M" => Duration::from_secs(n.checked_mul(60)?),
            "S" => Duration::from_secs(n),
            "m" => Duration::from_millis(n),
            "u" => Duration::from_micros(n),
            "n" => Duration::from_nanos(n),
            _ => return None,
        };
        Some(Self::after(budget))
    }

    /// Sets `request`'s timeout to the time left, which tonic sends as `grpc-timeout`.
    #[cfg(feature = "tonic")]
    pub fn apply<T>(self, request: &mut tonic::Request<T>) {
        request.set_timeout(self.remaining());
    }

    /// Sets `request`'s timeout from [`Deadline::current`], if there is one: the last hop of
    /// a stack built with [`crate::ClientStack`] calls this on the request it sends.
    #[cfg(feature = "tonic")]
    pub fn propagate<T>(request: &mut tonic::Request<T>) {
        if let Some(deadline) = Self::current() {
            deadline.apply(request);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn nested_scopes_only_tighten() {
        assert_eq!(Deadline::current(), None);
        let outer = Deadline::after(Duration::from_secs(2));
        let seen = outer
            .scope(async {
                let loose = Deadline::after(Duration::from_secs(5));
                let tight = Deadline::after(Duration::from_millis(300));
                let under_loose = loose.scope(async { Deadline::current() }).await;
                let under_tight = tight.scope(async { Deadline::current() }).await;
                (under_loose, under_tight)
            })
            .await;
        assert_eq!(seen.0, Some(outer));
        assert_eq!(
            seen.1.map(Deadline::remaining),
            Some(Duration::from_millis(300))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_timeout_round_trips() {
        let deadline = Deadline::after(Duration::from_millis(1_500));
        assert_eq!(deadline.grpc_timeout(), "1500000u");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(deadline.grpc_timeout(), "1000000u");
        let parsed = Deadline::from_grpc_timeout("250m").unwrap();
        assert_eq!(parsed.remaining(), Duration::from_millis(250));
        assert_eq!(
            Deadline::from_grpc_timeout("2S").unwrap().remaining(),
            Duration::from_secs(2)
        );
        for bad in ["", "m", "12", "123456789m", "-5m", "5x", "5é"] {
            assert_eq!(Deadline::from_grpc_timeout(bad), None, "{bad}");
        }
        let long = Deadline::after(Duration::from_secs(200));
        assert_eq!(long.grpc_timeout(), "200000m");
    }
}
