//! How a saga's [`State`] is stored: a state name plus the two "done" flags that the
//! completing and compensating states carry. Read back with [`from_columns`]; a name this
//! build does not know is a corrupt row, not a guess.

use sqlx::FromRow;

use super::OrderFacts;
use crate::saga::State;

/// A saga row locked for an update, with the order facts its commands need.
#[derive(Debug, FromRow)]
pub(super) struct SagaRow {
    pub(super) state: String,
    pub(super) stock_done: bool,
    pub(super) payment_done: bool,
    pub(super) attempts: i32,
    #[sqlx(flatten)]
    pub(super) order: OrderFacts,
}

pub(super) fn to_columns(state: State) -> (&'static str, bool, bool) {
    match state {
        State::AwaitingStock => ("awaiting_stock", false, false),
        State::AwaitingPayment => ("awaiting_payment", false, false),
        State::Completing {
            stock_committed,
            payment_captured,
        } => ("completing", stock_committed, payment_captured),
        State::Compensating {
            stock_released,
            payment_voided,
        } => ("compensating", stock_released, payment_voided),
        State::Completed => ("completed", true, true),
        State::Compensated => ("compensated", true, true),
    }
}

pub(super) fn from_columns(state: &str, stock_done: bool, payment_done: bool) -> Option<State> {
    Some(match state {
        "awaiting_stock" => State::AwaitingStock,
        "awaiting_payment" => State::AwaitingPayment,
        "completing" => State::Completing {
            stock_committed: stock_done,
            payment_captured: payment_done,
        },
        "compensating" => State::Compensating {
            stock_released: stock_done,
            payment_voided: payment_done,
        },
        "completed" => State::Completed,
        "compensated" => State::Compensated,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_survives_the_database() {
        let states = [
            State::AwaitingStock,
            State::AwaitingPayment,
            State::Completing {
                stock_committed: true,
                payment_captured: false,
            },
            State::Completing {
                stock_committed: false,
                payment_captured: true,
            },
            State::Compensating {
                stock_released: false,
                payment_voided: true,
            },
            State::Compensating {
                stock_released: true,
                payment_voided: false,
            },
            State::Completed,
            State::Compensated,
        ];
        for state in states {
            let (name, stock, payment) = to_columns(state);
            assert_eq!(from_columns(name, stock, payment), Some(state));
        }
        assert_eq!(from_columns("bogus", false, false), None);
    }
}
