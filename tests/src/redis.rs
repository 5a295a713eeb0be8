//! A `redis-server` of a test's own: `faultline-testkit`'s, for tests that stop and restart
//! Redis without disturbing the shared one.

pub use faultline_testkit::RedisServer;
