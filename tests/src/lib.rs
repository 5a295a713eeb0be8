//! End-to-end test harness (see the tests in `tests/`).
