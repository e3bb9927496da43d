//! Scheduled rotation: generators, schedules and the state machine.

pub mod generate;
pub mod machine;
pub mod schedule;
