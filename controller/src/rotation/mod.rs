//! Scheduled rotation: generators, schedules and the state machine.

pub mod consumers;
pub mod driver;
pub mod generate;
pub mod lease;
pub mod machine;
pub mod metrics;
pub mod reconciler;
pub mod retry;
pub mod schedule;
pub mod target;
pub mod validate;
