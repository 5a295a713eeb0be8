//! Where a breaker is, and the state word that holds it: the state in the low three bits
//! and a generation above them, so that admission is one atomic load and a result from a
//! call admitted under an earlier state can be told apart.

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls pass and are measured.
    Closed,
    /// Calls fail fast.
    Open,
    /// A bounded number of probe calls pass.
    HalfOpen,
    /// An operator holds it open.
    ForcedOpen,
    /// An operator holds it closed; nothing is measured.
    ForcedClosed,
}

impl State {
    const ALL: [State; 5] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::ForcedClosed,
    ];

    pub(super) fn code(self) -> u64 {
        self as u64
    }
}

/// The state word: generation in the high bits, state in the low three.
#[inline]
pub(super) fn encode(generation: u64, state: State) -> u64 {
    (generation << 3) | state.code()
}

#[inline]
pub(super) fn decode(word: u64) -> (u64, State) {
    let state = State::ALL
        .get((word & 0b111) as usize)
        .copied()
        .unwrap_or(State::Closed);
    (word >> 3, state)
}
