//! The saga's transitions, one case each, and properties over any sequence of events.

use super::*;
use proptest::prelude::*;

#[test]
fn a_step_that_must_succeed_backs_off_and_one_that_may_fail_does_not() {
    let step = Duration::from_secs(15);
    let completing = |attempts| Saga {
        state: State::Completing {
            stock_committed: false,
            payment_captured: false,
        },
        attempts,
    };
    assert_eq!(completing(1).step_deadline(step), step);
    assert_eq!(completing(2).step_deadline(step), step * 2);
    assert_eq!(completing(4).step_deadline(step), step * 8);
    assert_eq!(completing(60).step_deadline(step), MAX_RESEND_INTERVAL);
    let waiting = Saga {
        state: State::AwaitingPayment,
        attempts: 3,
    };
    assert_eq!(waiting.step_deadline(step), step);
}

const MAX: u32 = 3;

#[test]
fn a_resent_two_part_step_sends_only_what_is_unanswered_void_before_release() {
    let saga = |state| Saga { state, attempts: 1 };
    let resent = |state| {
        saga(state)
            .on(&Event::DeadlinePassed, MAX)
            .unwrap()
            .commands
    };
    let compensating = |stock_released, payment_voided| State::Compensating {
        stock_released,
        payment_voided,
    };
    assert_eq!(
        resent(compensating(false, false)),
        [Command::VoidPayment, Command::ReleaseStock]
    );
    assert_eq!(resent(compensating(false, true)), [Command::ReleaseStock]);
    let completing = |stock_committed, payment_captured| State::Completing {
        stock_committed,
        payment_captured,
    };
    assert_eq!(
        resent(completing(false, false)),
        [Command::CommitStock, Command::CapturePayment]
    );
    assert_eq!(resent(completing(true, false)), [Command::CapturePayment]);
}

/// Feeds `events` to a new saga; returns every transition that happened.
fn run(events: &[Event]) -> (Saga, Vec<Transition>) {
    let (mut saga, _) = Saga::start();
    let mut transitions = vec![];
    for event in events {
        if let Some(t) = saga.on(event, MAX) {
            saga = t.saga;
            transitions.push(t);
        }
    }
    (saga, transitions)
}

fn decisions(transitions: &[Transition]) -> Vec<Decision> {
    transitions
        .iter()
        .filter_map(|t| t.decision.clone())
        .collect()
}

fn commands(transitions: &[Transition]) -> Vec<Command> {
    transitions
        .iter()
        .flat_map(|t| t.commands.clone())
        .collect()
}

#[test]
fn happy_path_confirms_then_commits_and_captures() {
    let (saga, transitions) = run(&[
        Event::StockReserved,
        Event::PaymentAuthorized,
        Event::PaymentCaptured,
        Event::StockCommitted,
    ]);
    assert_eq!(saga.state, State::Completed);
    assert_eq!(decisions(&transitions), vec![Decision::Confirm]);
    assert_eq!(
        commands(&transitions),
        vec![
            Command::AuthorizePayment,
            Command::CommitStock,
            Command::CapturePayment
        ]
    );
}

#[test]
fn out_of_stock_cancels_at_once_with_inventorys_reason() {
    let reason = "insufficient stock: LAMP: 5 requested, 1 available".to_string();
    let (saga, transitions) = run(&[Event::StockRejected {
        reason: reason.clone(),
    }]);
    assert_eq!(saga.state, State::Compensated);
    assert_eq!(
        decisions(&transitions),
        vec![Decision::Cancel {
            code: CancellationCode::OutOfStock,
            reason
        }]
    );
    assert!(commands(&transitions).is_empty());
}

#[test]
fn a_declined_payment_releases_the_stock() {
    let (saga, transitions) = run(&[
        Event::StockReserved,
        Event::PaymentDeclined {
            reason: "over limit".into(),
        },
    ]);
    assert_eq!(
        saga.state,
        State::Compensating {
            stock_released: false,
            payment_voided: true
        }
    );
    assert!(commands(&transitions).contains(&Command::ReleaseStock));
    let (saga, _) = run(&[
        Event::StockReserved,
        Event::PaymentDeclined {
            reason: "over limit".into(),
        },
        Event::StockReleased,
    ]);
    assert_eq!(saga.state, State::Compensated);
}

#[test]
fn a_silent_participant_is_retried_then_compensated() {
    let (saga, transitions) = run(&[Event::DeadlinePassed, Event::DeadlinePassed]);
    assert_eq!(saga.state, State::AwaitingStock);
    assert_eq!(saga.attempts, 3);
    assert_eq!(commands(&transitions), vec![Command::ReserveStock; 2]);

    let (saga, transitions) = run(&vec![Event::DeadlinePassed; 3]);
    assert!(matches!(saga.state, State::Compensating { .. }));
    assert_eq!(commands(&transitions).last(), Some(&Command::ReleaseStock));
    assert!(matches!(
        decisions(&transitions).as_slice(),
        [Decision::Cancel {
            code: CancellationCode::InventoryTimeout,
            ..
        }]
    ));
}

#[test]
fn a_payment_timeout_voids_before_releasing() {
    let mut events = vec![Event::StockReserved];
    events.extend(vec![Event::DeadlinePassed; 3]);
    let (_, transitions) = run(&events);
    let sent = commands(&transitions);
    assert_eq!(
        &sent[sent.len() - 2..],
        &[Command::VoidPayment, Command::ReleaseStock]
    );
}

#[test]
fn a_late_authorization_after_cancellation_changes_nothing() {
    let mut events = vec![Event::StockReserved];
    events.extend(vec![Event::DeadlinePassed; 3]);
    events.push(Event::PaymentAuthorized);
    let (_, transitions) = run(&events);
    assert_eq!(decisions(&transitions).len(), 1);
    assert!(!commands(&transitions).contains(&Command::CapturePayment));
}

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::StockReserved),
        Just(Event::StockRejected {
            reason: "no stock".into()
        }),
        Just(Event::StockReleased),
        Just(Event::StockCommitted),
        Just(Event::PaymentAuthorized),
        Just(Event::PaymentDeclined {
            reason: "declined".into()
        }),
        Just(Event::PaymentVoided),
        Just(Event::PaymentCaptured),
        Just(Event::DeadlinePassed),
    ]
}

/// The answer a well-behaved participant eventually gives to each command.
fn answer(command: Command) -> Event {
    match command {
        Command::ReserveStock => Event::StockReserved,
        Command::ReleaseStock => Event::StockReleased,
        Command::CommitStock => Event::StockCommitted,
        Command::AuthorizePayment => Event::PaymentAuthorized,
        Command::VoidPayment => Event::PaymentVoided,
        Command::CapturePayment => Event::PaymentCaptured,
    }
}

proptest! {
    /// Whatever arrives in whatever order (duplicates, late answers, timeouts), the
    /// order is decided at most once, and money and stock only move the way that
    /// decision allows.
    #[test]
    fn decisions_are_final_and_effects_follow_them(events in prop::collection::vec(any_event(), 0..40)) {
        let (mut saga, _) = Saga::start();
        let mut decision: Option<Decision> = None;
        // What the participants hold now, by the answers the saga accepted: a release or a
        // void gives back what a reservation or an authorization took.
        let (mut stock_held, mut funds_held) = (false, false);
        for event in &events {
            let Some(t) = saga.on(event, MAX) else { continue };
            match event {
                Event::StockReserved => stock_held = true,
                Event::StockReleased => stock_held = false,
                Event::PaymentAuthorized => funds_held = true,
                Event::PaymentVoided => funds_held = false,
                _ => {}
            }
            if let Some(d) = &t.decision {
                prop_assert!(decision.is_none(), "decided twice: {:?} then {:?}", decision, d);
                decision = Some(d.clone());
            }
            match &t.decision {
                Some(Decision::Confirm) => prop_assert!(
                    stock_held && funds_held,
                    "confirmed with stock held {} and funds held {}", stock_held, funds_held
                ),
                Some(Decision::Cancel { code, .. }) => {
                    // Whatever a participant may hold is given back, and nothing else.
                    let may_hold_stock = stock_held || *code == CancellationCode::InventoryTimeout;
                    let may_hold_funds = *code == CancellationCode::PaymentTimeout;
                    prop_assert_eq!(t.commands.contains(&Command::ReleaseStock), may_hold_stock);
                    prop_assert_eq!(t.commands.contains(&Command::VoidPayment), may_hold_funds);
                }
                None => {}
            }
            for command in &t.commands {
                match command {
                    Command::CommitStock | Command::CapturePayment =>
                        prop_assert_eq!(&decision, &Some(Decision::Confirm)),
                    Command::ReleaseStock | Command::VoidPayment =>
                        prop_assert!(matches!(decision, Some(Decision::Cancel { .. })), "compensation without a cancellation"),
                    Command::ReserveStock | Command::AuthorizePayment =>
                        prop_assert!(decision.is_none()),
                }
            }
            saga = t.saga;
        }
        if saga.state.is_terminal() {
            for event in &events {
                prop_assert!(saga.on(event, MAX).is_none());
            }
        }
    }

    /// From wherever random events leave it, a saga whose participants answer every
    /// outstanding command (with deadlines passing meanwhile) always finishes.
    #[test]
    fn every_saga_terminates_once_participants_answer(events in prop::collection::vec(any_event(), 0..40)) {
        let (mut saga, _) = run(&events);
        for _ in 0..(2 * MAX + 10) {
            if saga.state.is_terminal() { break; }
            let t = saga.on(&Event::DeadlinePassed, MAX).expect("a live saga always reacts to its deadline");
            saga = t.saga;
            for command in t.commands {
                if let Some(next) = saga.on(&answer(command), MAX) {
                    saga = next.saga;
                }
            }
        }
        prop_assert!(saga.state.is_terminal(), "stuck in {:?}", saga.state);
    }
}
