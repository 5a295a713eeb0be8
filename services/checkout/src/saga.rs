//! The order saga as a pure state machine.
//!
//! Checkout orchestrates: it sends a command to one participant at a time and moves on when
//! the answer arrives. This module decides *what* happens; [`crate::orchestrator`] loads and
//! stores the state and sends the commands, in one transaction per event.
//!
//! ```text
//!  AwaitingStock ──StockReserved──▶ AwaitingPayment ──PaymentAuthorized──▶ Completing ──▶ Completed
//!       │  (ReserveStock)                │  (AuthorizePayment)       order CONFIRMED   (CommitStock,
//!       │                                │                                              CapturePayment)
//!  StockRejected ──▶ Compensated    PaymentDeclined ──▶ Compensating ──▶ Compensated
//!  order CANCELLED                   order CANCELLED   (ReleaseStock[, VoidPayment])
//! ```
//!
//! Payment authorization is the pivot: before it every step can be undone, after it every
//! remaining step (commit, capture) is one that must and can succeed, so it is retried
//! rather than compensated. The decision (CONFIRMED or CANCELLED) is taken exactly once and
//! stored in the same transaction as the commands that follow from it, so capture never
//! happens without a confirmed order.
//!
//! Deadlines: a step that gets no answer in time is sent again (participants are idempotent
//! per order) up to `max_attempts` sends, then compensated. Completing and compensating
//! steps are never given up; they are re-sent until answered, each wait twice the last (up
//! to five minutes). The orchestrator does not run a deadline while the step's command is
//! still in the outbox: a deadline measures the participant, not the broker in front of it.
//!
//! Events that do not fit the current state (duplicates, late answers after a timeout) are
//! ignored; the participants' own idempotency makes that safe.

use std::fmt;
use std::time::Duration;

/// Where the saga of one order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// `ReserveStock` sent.
    AwaitingStock,
    /// Stock reserved; `AuthorizePayment` sent.
    AwaitingPayment,
    /// Order confirmed; waiting for `CommitStock` and `CapturePayment` to be done.
    Completing {
        /// `StockCommitted` received.
        stock_committed: bool,
        /// `PaymentCaptured` received.
        payment_captured: bool,
    },
    /// Order cancelled; waiting for the compensations to be done.
    Compensating {
        /// `StockReleased` received.
        stock_released: bool,
        /// `PaymentVoided` received, or no void was needed.
        payment_voided: bool,
    },
    /// Terminal: confirmed, stock sold, payment captured.
    Completed,
    /// Terminal: cancelled, everything undone.
    Compensated,
}

impl State {
    /// No event changes a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated)
    }
}

/// What the saga persists: its state and how often the current step was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Saga {
    /// Current state.
    pub state: State,
    /// Sends of the current step's commands so far (1 after the first send).
    pub attempts: u32,
}

/// Answers from participants, and the clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Inventory reserved every line.
    StockReserved,
    /// Inventory reserved nothing.
    StockRejected {
        /// Inventory's reason.
        reason: String,
    },
    /// Inventory gave the reservation back.
    StockReleased,
    /// Inventory turned the reservation into sold stock.
    StockCommitted,
    /// Payments holds the funds.
    PaymentAuthorized,
    /// Payments refused.
    PaymentDeclined {
        /// The provider's reason.
        reason: String,
    },
    /// Payments released the hold (or had none).
    PaymentVoided,
    /// Payments took the money.
    PaymentCaptured,
    /// The current step's deadline passed without an answer.
    DeadlinePassed,
}

/// Commands the saga sends to participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// To inventory.
    ReserveStock,
    /// To inventory (compensation).
    ReleaseStock,
    /// To inventory.
    CommitStock,
    /// To payments.
    AuthorizePayment,
    /// To payments (compensation).
    VoidPayment,
    /// To payments.
    CapturePayment,
}

/// Why an order was cancelled, as a stable code for machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CancellationCode {
    /// Inventory could not reserve the items.
    OutOfStock,
    /// The payment provider refused.
    PaymentDeclined,
    /// Inventory did not answer in time.
    InventoryTimeout,
    /// Payments did not answer in time.
    PaymentTimeout,
}

impl CancellationCode {
    /// The code as stored and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutOfStock => "out_of_stock",
            Self::PaymentDeclined => "payment_declined",
            Self::InventoryTimeout => "inventory_timeout",
            Self::PaymentTimeout => "payment_timeout",
        }
    }
}

impl fmt::Display for CancellationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The business decision on the order, taken once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The order is CONFIRMED.
    Confirm,
    /// The order is CANCELLED.
    Cancel {
        /// Stable code.
        code: CancellationCode,
        /// Human-readable reason, safe to show to the customer.
        reason: String,
    },
}

/// The result of an event that changed the saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The saga after the event.
    pub saga: Saga,
    /// Commands to send, in order.
    pub commands: Vec<Command>,
    /// The decision taken by this event, if any.
    pub decision: Option<Decision>,
    /// True when a new step (or a re-send) started, so its deadline starts again.
    pub restart_deadline: bool,
}

impl Saga {
    /// A new saga and its first command.
    pub fn start() -> (Self, Command) {
        (
            Self {
                state: State::AwaitingStock,
                attempts: 1,
            },
            Command::ReserveStock,
        )
    }

    /// Applies `event`. `None` means the event does not fit the current state and is
    /// ignored. `max_attempts` bounds the sends of a step that can still be compensated.
    pub fn on(&self, event: &Event, max_attempts: u32) -> Option<Transition> {
        use Command::*;
        use Event::*;
        use State::*;

        let cancel = |code, reason: &str| {
            Some(Decision::Cancel {
                code,
                reason: reason.to_owned(),
            })
        };

        Some(match (self.state, event) {
            (AwaitingStock, StockReserved) => {
                self.step(AwaitingPayment, vec![AuthorizePayment], None)
            }
            (AwaitingStock, StockRejected { reason }) => Transition {
                restart_deadline: false,
                ..self.step(
                    Compensated,
                    vec![],
                    cancel(CancellationCode::OutOfStock, reason),
                )
            },
            (AwaitingStock, DeadlinePassed) if self.attempts < max_attempts => {
                self.resend(vec![ReserveStock])
            }
            // Inventory may still reserve late, so release whatever it might hold.
            (AwaitingStock, DeadlinePassed) => self.step(
                Compensating {
                    stock_released: false,
                    payment_voided: true,
                },
                vec![ReleaseStock],
                cancel(
                    CancellationCode::InventoryTimeout,
                    "inventory did not answer in time",
                ),
            ),

            (AwaitingPayment, PaymentAuthorized) => self.step(
                Completing {
                    stock_committed: false,
                    payment_captured: false,
                },
                vec![CommitStock, CapturePayment],
                Some(Decision::Confirm),
            ),
            (AwaitingPayment, PaymentDeclined { reason }) => self.step(
                Compensating {
                    stock_released: false,
                    payment_voided: true,
                },
                vec![ReleaseStock],
                cancel(CancellationCode::PaymentDeclined, reason),
            ),
            (AwaitingPayment, DeadlinePassed) if self.attempts < max_attempts => {
                self.resend(vec![AuthorizePayment])
            }
            // Payments may still authorize late: void it, then release the stock.
            (AwaitingPayment, DeadlinePassed) => self.step(
                Compensating {
                    stock_released: false,
                    payment_voided: false,
                },
                vec![VoidPayment, ReleaseStock],
                cancel(
                    CancellationCode::PaymentTimeout,
                    "payments did not answer in time",
                ),
            ),

            (
                Completing {
                    stock_committed: false,
                    payment_captured,
                },
                StockCommitted,
            ) => self.progress(completing(true, payment_captured)),
            (
                Completing {
                    stock_committed,
                    payment_captured: false,
                },
                PaymentCaptured,
            ) => self.progress(completing(stock_committed, true)),
            // A step that must succeed in the end: re-send what is still unanswered.
            (Completing { .. } | Compensating { .. }, DeadlinePassed) => {
                self.resend(self.state.outstanding())
            }

            (
                Compensating {
                    stock_released: false,
                    payment_voided,
                },
                StockReleased,
            ) => self.progress(compensating(true, payment_voided)),
            (
                Compensating {
                    stock_released,
                    payment_voided: false,
                },
                PaymentVoided,
            ) => self.progress(compensating(stock_released, true)),
            _ => return None,
        })
    }
}

impl Saga {
    /// A new step: its first send, with a fresh deadline.
    fn step(&self, state: State, commands: Vec<Command>, decision: Option<Decision>) -> Transition {
        Transition {
            saga: Saga { state, attempts: 1 },
            commands,
            decision,
            restart_deadline: true,
        }
    }

    /// The same step sent again, counted.
    fn resend(&self, commands: Vec<Command>) -> Transition {
        Transition {
            saga: Saga {
                state: self.state,
                attempts: self.attempts.saturating_add(1),
            },
            commands,
            decision: None,
            restart_deadline: true,
        }
    }

    /// One answer of a two-part step arrived; the step's deadline runs on.
    fn progress(&self, state: State) -> Transition {
        Transition {
            saga: Saga {
                state,
                attempts: self.attempts,
            },
            commands: vec![],
            decision: None,
            restart_deadline: false,
        }
    }
}

impl State {
    /// The commands of a two-part step still unanswered (void before release, as the
    /// compensation first sends them).
    fn outstanding(self) -> Vec<Command> {
        match self {
            State::Completing {
                stock_committed,
                payment_captured,
            } => [
                (!stock_committed).then_some(Command::CommitStock),
                (!payment_captured).then_some(Command::CapturePayment),
            ],
            State::Compensating {
                stock_released,
                payment_voided,
            } => [
                (!payment_voided).then_some(Command::VoidPayment),
                (!stock_released).then_some(Command::ReleaseStock),
            ],
            _ => [None, None],
        }
        .into_iter()
        .flatten()
        .collect()
    }
}

fn completing(stock_committed: bool, payment_captured: bool) -> State {
    if stock_committed && payment_captured {
        State::Completed
    } else {
        State::Completing {
            stock_committed,
            payment_captured,
        }
    }
}

/// Longest wait between two sends of a step that must succeed in the end.
pub const MAX_RESEND_INTERVAL: Duration = Duration::from_secs(300);

impl Saga {
    /// How long the current step may go unanswered before it is sent again. A step that can
    /// still be compensated waits `step_timeout` each time (its attempts are bounded). A
    /// step that must succeed in the end (completing, compensating) is re-sent for as long
    /// as it takes, so each wait doubles, up to [`MAX_RESEND_INTERVAL`]: a participant that
    /// is down for an hour gets a handful of commands per order, not hundreds.
    pub fn step_deadline(&self, step_timeout: Duration) -> Duration {
        match self.state {
            State::Completing { .. } | State::Compensating { .. } => {
                let doublings = self.attempts.saturating_sub(1).min(16);
                step_timeout
                    .saturating_mul(1u32 << doublings)
                    .min(MAX_RESEND_INTERVAL.max(step_timeout))
            }
            _ => step_timeout,
        }
    }
}

fn compensating(stock_released: bool, payment_voided: bool) -> State {
    if stock_released && payment_voided {
        State::Compensated
    } else {
        State::Compensating {
            stock_released,
            payment_voided,
        }
    }
}

#[cfg(test)]
mod tests;
